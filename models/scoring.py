"""Answer log-probabilities: the one number the trainer optimises and every probe reads.

For a right-padded batch (``facts.tokens.TokenizedFacts``) the answer log-probability of
row i is ``Σ_{p : answer_mask[i, p]} log softmax(logits[i, p − 1])[tokens[i, p]]``, and the
answer is *greedy-correct* when ``argmax logits[i, p − 1] = tokens[i, p]`` at every answer
position: teacher forcing with the true prefix, which is exactly whether greedy decoding writes the answer's
tokens first (what it writes after them is not looked at: an answer that is a prefix of the greedy text counts).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from facts.tokens import TokenizedFacts

Model = Callable[[Int[Tensor, "batch pos"]], Float[Tensor, "batch pos d_vocab"]]

LOGIT_BUDGET = 2**24
"""Logits (positions × d_vocab floats, 64 MiB) one forward pass may produce: :func:`score_answers` cuts its
batches to fit, cached scoring its continuation passes (:mod:`probes.shared_prompt`; scoring by trie holds no
whole logits: :func:`unembedded_logprobs`); their log-softmax is read a slice at a time
(:func:`chosen_logprobs`). Gemma 3's 262,144-token vocabulary makes it 64
positions, SmolLM2's 341. (2**25 and a full-size log-softmax beside the logits made check-asymmetry on
Gemma 3 270M peak 0.35 GiB above the loaded model.)"""


PLAIN_HEAD_MODEL_TYPES = frozenset({"gpt2", "gpt_neox", "qwen2", "llama", "mistral", "gemma", "gemma2", "gemma3_text",
                                    "olmo2"})
"""transformers ``model_type``s whose causal LM's logits are its output embedding (a ``Linear``) applied to the
last hidden state, then ``config.final_logit_softcapping`` where set: the :class:`Unembedding` that
:func:`model_unembedding` reads (checked against each one's own logits by scoring a tiny model of each by trie and by
teacher forcing: tests/probes/test_shared_prompt.py). Another type's head may scale its logits (Cohere's
``logit_scale``, Granite's ``logits_scaling``), so it is not read this way."""

ACTIVATION_BUDGET = 2**22
"""Floats of a pass's widest activation (positions × the MLP's width, 16 MiB) where no whole logits are held:
:func:`score_answers`' chunks where :func:`answer_scores` reads the final hidden state, and cached scoring's passes
(:mod:`probes.shared_prompt`). One thread, a transformers SmolLM2 teacher-forcing 384 sequences of 26 positions
(2026-12-06): 13 rows a chunk (their logits within :data:`LOGIT_BUDGET`) ~17.7 CPU s, 105 rows (this budget) ~16.6 s,
all 384 at once ~20 s."""

Reader = TypeVar("Reader", bound=Callable[..., Any])


def in_eval_mode(reader: Reader) -> Reader:
    """``reader(model, ...)`` run with every module of ``model`` in eval mode, each module's mode put back after: a
    score, a cache or an attribution is the model's, not one draw of its dropout (a transformers GPT-2, or a bridge
    over it, left in training mode drops a tenth of its activations at random; a training run hands its callbacks
    the model in training mode). A HookedTransformer has no dropout, so nothing changes for it. A TransformerBridge
    runs modules of the transformers model it wraps that are not its own submodules (GPT-2's embedding dropout):
    those are set too."""

    @functools.wraps(reader)
    def read(model: Any, *args: Any, **kwargs: Any) -> Any:
        with evaluating(model):
            return reader(model, *args, **kwargs)

    return read  # type: ignore[return-value]


@contextlib.contextmanager
def evaluating(*models: Any) -> Iterator[None]:
    """Within the block, every module of each of ``models`` (and of the transformers model a bridge wraps) in eval
    mode; each module's own mode put back after (:func:`in_eval_mode`)."""
    trees = [tree for model in models for tree in (model, getattr(model, "original_model", None))
             if isinstance(tree, torch.nn.Module)]
    training = list({id(module): module for tree in trees for module in tree.modules() if module.training}.values())
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a parameter-free module)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def vocab_size(model: torch.nn.Module) -> int | None:
    """``d_vocab`` of a HookedTransformer, TransformerBridge or bilinear model (None if unknown)."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "d_vocab", None):
        return int(cfg.d_vocab)
    size = getattr(model, "d_vocab", None)
    return int(size) if size is not None else None


def hooked_readout(model: torch.nn.Module, residual: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
    """A HookedTransformer's forward after its blocks, on chosen residual rows only:
    ``softcap(ln_final(x) W_U + b_U)``. Each step is per position, so these are exactly those rows
    of the full logits, at the cost of the rows kept (the trainer and cached scoring unembed only
    the positions they read)."""
    from models.backend import apply_softcap

    return apply_softcap(model.unembed(hooked_final_norm(model, residual)[None]), model.cfg.output_logits_soft_cap)[0]


def hooked_final_norm(model: torch.nn.Module, residual: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
    """A HookedTransformer's ``ln_final`` on chosen residual rows (the rows as they are where it has none)."""
    if model.cfg.normalization_type is None:
        return residual
    return model.ln_final(residual[None])[0]  # [1, n, d_model]: the module's own shape, so its hooks fire as always


def check_causal(model: object) -> None:
    """Refuse a model whose attention is not causal (a TransformerLens ``attention_dir`` of
    "bidirectional", or a transformers model, or a bridge over one, whose config sets
    ``use_bidirectional_attention`` or ``is_causal = False``): every answer log-probability here is read from one pass over prompt and answer,
    log p(a_j | c, a_<j) at the position before a_j, which is that conditional only when no position
    sees the tokens after it (a bidirectional model's answer positions would read the answer itself,
    and padding would change the numbers)."""
    direction = getattr(getattr(model, "cfg", None), "attention_dir", "causal")
    if direction != "causal":
        raise ValueError(f"the model's attention is {direction!r}, not causal: an answer's log-probability given "
                         "its prompt is not one pass over prompt and answer, so it is not scored")
    config = _hf_config(model)
    setting = None if config is None else bidirectional_setting(config)
    if setting is not None:
        name = getattr(getattr(model, "cfg", None), "model_name", None) or getattr(config, "name_or_path", "") \
            or type(model).__name__
        raise ValueError(f"{name}: its transformers config sets {setting}, so its attention is not causal (a "
                         "TransformerLens attention_dir of 'causal' notwithstanding): every position would see the "
                         "answer tokens after it, so an answer's log-probability given its prompt is not scored")


_CAUSAL_UNDER_EAGER = ("gemma", "gemma2")
"""Model types whose ``use_bidirectional_attention`` only sets the attention modules' ``is_causal`` flag, which eager
attention ignores (their mask stays causal); Gemma 3's mask reads it."""


def _hf_config(model: object) -> object | None:
    """The transformers config of a transformers model or of the one a TransformerBridge or a
    :class:`models.hf_training.CausalLM` wraps (None otherwise)."""
    for holder in (model, getattr(model, "original_model", None), getattr(model, "model", None)):
        config = getattr(holder, "config", None)
        if config is not None and hasattr(config, "to_dict") and hasattr(config, "model_type"):
            return config
    return None


def bidirectional_setting(config: object, eager: bool | None = None) -> str | None:
    """``"field = value"`` where a transformers config makes its model's attention bidirectional, else None.
    ``eager``: whether the model runs eager attention (default: what the config says; the toolkit's own loads
    always do, so :func:`models.pretrained.hooked_conversion_gaps` asks with ``eager=True``)."""
    if getattr(config, "is_causal", None) is False:
        return "is_causal = False"
    if getattr(config, "use_bidirectional_attention", None):
        eager = getattr(config, "_attn_implementation", None) == "eager" if eager is None else eager
        if not (eager and getattr(config, "model_type", None) in _CAUSAL_UNDER_EAGER):
            return f"use_bidirectional_attention = {config.use_bidirectional_attention!r}"
    return None


def check_token_ids(model: torch.nn.Module, batch: TokenizedFacts, where: str = "batch") -> None:
    """Refuse token ids outside the model's vocabulary, and answer ids outside its output vocabulary
    (``cfg.d_vocab_out``, where a model predicts fewer tokens than it reads), naming the first offending fact."""
    size = vocab_size(model)
    if size is None or len(batch) == 0:
        return
    out = getattr(getattr(model, "cfg", None), "d_vocab_out", None)
    checks = [((batch.tokens < 0) | (batch.tokens >= size), "token id", f"vocabulary of {size}")]
    if isinstance(out, int) and 0 < out < size:
        checks.append((batch.answer_mask & (batch.tokens >= out), "answer token id", f"output vocabulary of {out}"))
    for bad, what, vocabulary in checks:
        if bad.any():
            row = int(bad.any(1).nonzero()[0])
            value = int(batch.tokens[row][bad[row]][0])
            raise ValueError(f"{where}: fact {int(batch.fact[row])} ({batch.direction[row]}) has {what} {value}, "
                             f"outside the model's {vocabulary}")


def token_logprobs(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], answer_mask: Bool[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "batch pos_minus_1"], Bool[Tensor, "batch pos_minus_1"]]:
    """Per-position ``log p(tokens[p] | tokens[<p])`` (0 off the answer) and greedy hits.

    Only the answer positions go through log-softmax, so a 49k-vocabulary model costs
    O(answer tokens · d_vocab), not O(batch · pos · d_vocab).
    """
    return answer_token_logprobs(logits[:, :-1][answer_mask[:, 1:]], tokens, answer_mask)


def answer_token_logprobs(
    logits: Float[Tensor, "n_answer d_vocab"], tokens: Int[Tensor, "batch pos"], answer_mask: Bool[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "batch pos_minus_1"], Bool[Tensor, "batch pos_minus_1"]]:
    """:func:`token_logprobs` from the logits of the answer-predicting positions alone, row-major (what
    ``logits[:, :-1][answer_mask[:, 1:]]`` selects)."""
    return _per_position(*chosen_logprobs(logits, tokens[:, 1:][answer_mask[:, 1:]]), answer_mask)


def _per_position(
    logprob: Float[Tensor, " n_answer"], hit: Bool[Tensor, " n_answer"], answer_mask: Bool[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "batch pos_minus_1"], Bool[Tensor, "batch pos_minus_1"]]:
    """Answer positions' values (row-major) put at their places: 0 and True off the answer."""
    target_mask = answer_mask[:, 1:].to(logprob.device)
    per_position = torch.zeros(target_mask.shape, dtype=logprob.dtype, device=logprob.device)
    per_position[target_mask] = logprob
    hits = torch.ones(target_mask.shape, dtype=torch.bool, device=logprob.device)
    hits[target_mask] = hit
    return per_position, hits


def answer_scores(
    model: Model, tokens: Int[Tensor, "batch pos"], answer_mask: Bool[Tensor, "batch pos"]
) -> tuple[Float[Tensor, "batch pos_minus_1"], Bool[Tensor, "batch pos_minus_1"]]:
    """:func:`token_logprobs` of ``model(tokens)``, read by :func:`unembedded_logprobs` (a slice of the vocabulary at a
    time: what scoring by trie reads) from the final-normed hidden state at the answer-predicting positions alone
    where the model allows it: a HookedTransformer with no hook attached (its last residual stream through
    ``ln_final``), and a transformers causal LM of :data:`PLAIN_HEAD_MODEL_TYPES`, as a
    :class:`models.hf_training.CausalLM` or under a TransformerBridge with no hook attached (its head's input,
    :func:`head_reads`). Any other model: of :func:`answer_logits`."""
    from models.backend import is_hooked

    reads = final_hidden_of(model)
    if reads is None:
        return answer_token_logprobs(answer_logits(model, tokens, answer_mask), tokens, answer_mask)
    check_causal(model)
    inputs, predicting = answer_inputs(tokens, answer_mask)
    if is_hooked(reads):
        final = hooked_final_norm(reads, reads(inputs, stop_at_layer=reads.cfg.n_layers)[predicting])
    else:
        kept: list[Tensor] = []
        with head_reads(reads.get_output_embeddings(), predicting, kept):
            reads(input_ids=inputs)
        final = kept[0]
    chosen = tokens[:, 1:][answer_mask[:, 1:]].to(final.device)
    return _per_position(*unembedded_logprobs(final, model_unembedding(reads), chosen), answer_mask)


def final_hidden_of(model: Any) -> torch.nn.Module | None:
    """The model whose final-normed hidden state :func:`answer_scores` reads out itself: a HookedTransformer with no
    hook attached, or the transformers causal LM of :data:`PLAIN_HEAD_MODEL_TYPES` of a
    :class:`models.hf_training.CausalLM` or of a TransformerBridge with no hook attached (a hook on the unembedding
    must see the logits); None for any other model."""
    from models.backend import hooks_attached, is_hooked

    if is_hooked(model):
        return None if hooks_attached(model) else model
    if hasattr(model, "logits_at"):  # a CausalLM
        inner = model.model
    elif hasattr(model, "hook_dict") and not hooks_attached(model):
        inner = getattr(model, "original_model", None)
    else:
        return None
    return inner if isinstance(inner, torch.nn.Module) and _plain_head(inner) is not None else None


def widest_activation(model: torch.nn.Module) -> int:
    """Floats a position holds at once inside ``model``'s blocks: the wider of d_model and the MLP's hidden width."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return max(cfg.d_model, getattr(cfg, "d_mlp", None) or 0)
    hidden = model.config.hidden_size
    return max(hidden, getattr(model.config, "intermediate_size", None) or getattr(model.config, "n_inner", None)
               or 4 * hidden)


UNEMBED_ROWS = 512
UNEMBED_SLICE = 1024
""":func:`unembedded_logprobs` multiplies at most :data:`UNEMBED_ROWS` residual rows by :data:`UNEMBED_SLICE` columns
of the unembedding at a time (a 2 MiB float32 block of logits). One thread of a 2-core AMX Xeon (2026-12-06, MKL)
took 2.5 ms a row for Gemma 3's 640 × 262,144 unembedding and its log-softmax so, against 4.8 ms in 64-row blocks of
whole-vocabulary logits (the same product streams the 671 MB matrix once per block of rows), and SmolLM2's
576 × 49,152 0.48 against 0.64 ms; rows of 128 or 2,048, or slices of 512 or 2,048 columns, were slower."""


@dataclass(frozen=True)
class Unembedding:
    """A model's logits from its final-normed residual stream: ``softcap(x · weight + bias)`` with
    ``softcap(z) = c · tanh(z / c)`` (none where ``softcap`` is None)."""

    weight: Float[Tensor, "d_model d_vocab"]
    bias: Float[Tensor, " d_vocab"] | None
    softcap: float | None


def chosen_logprobs(
    logits: Float[Tensor, "n d_vocab"], chosen: Int[Tensor, "n *k"]
) -> tuple[Float[Tensor, "n *k"], Bool[Tensor, "n *k"]]:
    """``log softmax(logits[i])[chosen[i]]`` and whether that token is the argmax, row by row
    (``chosen[i]`` one token id or k of them), read in float32: :func:`_chosen_by_slices` over slices of the
    given logits, with no second full-size tensor beside them (Gemma 3: 1 MiB a row)."""
    logprob, hit = _chosen_by_slices(lambda first, last: logits[:, first:last].float(), logits.shape[-1],
                                     chosen.reshape(len(chosen), -1), owned=False)
    return logprob.view(chosen.shape), hit.view(chosen.shape)


@torch.no_grad()
def unembedded_logprobs(
    residual: Float[Tensor, "n d_model"], unembedding: Unembedding, chosen: Int[Tensor, "n *k"]
) -> tuple[Float[Tensor, "n *k"], Bool[Tensor, "n *k"]]:
    """:func:`chosen_logprobs` of the logits ``z = softcap(residual · W + b)`` (``unembedding``), without
    holding them: the product runs a slice of :data:`UNEMBED_SLICE` columns at a time (rows in even blocks of at
    most :data:`UNEMBED_ROWS`), each slice's logits read by :func:`_chosen_by_slices` as they come. A block of
    logits then fits a core's cache, and the matrix is read once per block of rows. Logits are computed in the
    unembedding's dtype, soft-capped there, and read in float32, as :func:`chosen_logprobs` reads them. Scores, not
    a loss: no gradient flows through them."""
    weight, bias, cap = unembedding.weight, unembedding.bias, unembedding.softcap
    picked = chosen.reshape(len(chosen), -1)
    logprob = torch.empty(picked.shape, dtype=torch.float32, device=residual.device)
    hit = torch.empty(picked.shape, dtype=torch.bool, device=residual.device)
    blocks = max(1, -(-len(picked) // UNEMBED_ROWS))
    per_block = max(1, -(-len(picked) // blocks))  # 700 rows: two blocks of 350
    for start in range(0, len(picked), per_block):
        rows = residual[start : start + per_block].to(weight.dtype)
        block = torch.empty(len(rows), UNEMBED_SLICE, dtype=weight.dtype, device=rows.device)

        def logits_of(first: int, last: int) -> Float[Tensor, "r w"]:
            columns = weight[:, first:last]
            logits = torch.mm(rows, columns, out=block if columns.shape[1] == UNEMBED_SLICE else None)
            if bias is not None:
                logits += bias[first:last]
            return (cap * torch.tanh(logits / cap) if cap else logits).float()

        logprob[start : start + len(rows)], hit[start : start + len(rows)] = _chosen_by_slices(
            logits_of, weight.shape[1], picked[start : start + len(rows)], owned=True)
    return logprob.view(chosen.shape), hit.view(chosen.shape)


def _chosen_by_slices(
    logits_of: Callable[[int, int], Float[Tensor, "r w"]], vocab: int, chosen: Int[Tensor, "r k"], owned: bool
) -> tuple[Float[Tensor, "r k"], Bool[Tensor, "r k"]]:
    """``log softmax(z_i)[t] = (z_it − m_i) − log Σ_v exp(z_iv − m_i)``, m_i = max_v z_iv, and whether t is
    ``argmax z_i`` (the lowest id among tied maxima, as ``argmax``), for each chosen t, from the logits' columns
    ``[first, last)`` (``logits_of``, float32) :data:`UNEMBED_SLICE` at a time. Over the slices so far each row
    keeps its maximum m and ``s = Σ exp(z_v − m)`` (a new maximum m' rescales s by ``exp(m − m')``), the first
    index of its maximum, and the chosen tokens' logits as their slice passes. Summing a slice at a time is
    also the more exact float32 sum: SmolLM2's 49,152 terms one after another (PyTorch's ``log_softmax`` on the
    CPU) were up to 1.9e-5 from float64, slices of 1,024 then their 48 sums up to 8.7e-6 (2026-12-06). ``owned``:
    whether the slices ``logits_of`` gives may be overwritten."""
    n = len(chosen)
    top = torch.full((n,), -torch.inf, device=chosen.device)
    total = torch.zeros(n, device=chosen.device)
    best = torch.zeros(n, dtype=torch.long, device=chosen.device)
    at = torch.zeros(chosen.shape, device=chosen.device)
    for first in range(0, vocab, UNEMBED_SLICE):
        logits = logits_of(first, min(first + UNEMBED_SLICE, vocab))
        width = logits.shape[1]
        inside = (chosen >= first) & (chosen < first + width)
        at = torch.where(inside, logits.gather(-1, (chosen - first).clamp(0, width - 1)), at)
        slice_top, slice_best = logits.max(-1)
        best = torch.where(slice_top > top, slice_best + first, best)
        new_top = torch.maximum(top, slice_top)
        shifted = logits.sub_(new_top[:, None]) if owned else logits - new_top[:, None]
        total = total * torch.exp(top - new_top) + shifted.exp_().sum(-1)
        top = new_top
    return (at - top[:, None]) - total.log()[:, None], best[:, None] == chosen


def model_unembedding(model: torch.nn.Module) -> Unembedding:
    """The :class:`Unembedding` a HookedTransformer (``W_U``, ``b_U``, ``cfg.output_logits_soft_cap``) or a
    transformers causal LM (its output embedding, a ``Linear``, and ``config.final_logit_softcapping``) applies
    after its final norm. Under a TransformerBridge the output embedding is the bridge's wrapper, whose forward is
    the ``Linear`` it holds (with the zero bias the bridge gives it) between two hooks: that ``Linear`` is read."""
    from models.backend import is_hooked

    if is_hooked(model):
        cap = model.cfg.output_logits_soft_cap
        return Unembedding(model.W_U, model.b_U, cap if cap is not None and cap > 0 else None)
    head = _plain_head(model)
    if head is None:
        kind = getattr(getattr(model, "config", None), "model_type", None)
        raise TypeError(f"a {type(model).__name__}{f' ({kind})' if kind else ''}'s unembedding is not read here: a "
                        f"HookedTransformer's W_U and b_U, or the output embedding (a Linear) of a transformers causal "
                        f"LM of {sorted(PLAIN_HEAD_MODEL_TYPES)} are")
    return Unembedding(head.weight.T, head.bias, getattr(model.config, "final_logit_softcapping", None) or None)


def _plain_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The ``Linear`` a transformers causal LM of :data:`PLAIN_HEAD_MODEL_TYPES` (or a ``peft`` model around one)
    applies to its last hidden state (under a TransformerBridge's wrapper, the one the wrapper holds); None for any
    other model or head."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if not hasattr(model, "get_output_embeddings"):
        return None
    head = model.get_output_embeddings()
    head = getattr(head, "original_component", head)  # a bridge's wrapper runs the transformers Linear it holds
    return head if isinstance(head, torch.nn.Linear) else None


@contextlib.contextmanager
def head_reads(head: torch.nn.Module, positions: Bool[Tensor, "batch pos"],
               kept: list[Tensor] | None = None) -> Iterator[None]:
    """Within the block, ``head`` (a causal LM's output embedding) sees only the hidden states at ``positions``, as
    one [1, n, d] row (row-major). With ``kept``: those rows are appended to it and the head sees none ([batch, 0,
    d]: the model's logits come back empty), for the caller to read out itself."""

    def gather(module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        if kept is None:
            return (args[0][positions][None], *args[1:])
        kept.append(args[0][positions])
        return (args[0][:, :0], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def kept_logits(model: torch.nn.Module, positions: Bool[Tensor, "batch pos"], forward: Callable[..., Tensor]
                ) -> Float[Tensor, "n d_vocab"]:
    """``forward()[positions]`` (row-major), where ``forward(**options)`` runs ``model`` on a batch of that shape,
    unembedded at those positions alone where :func:`final_hidden_of` allows it (no hook of its own): a
    HookedTransformer stops after its blocks (``forward(stop_at_layer=n_layers)``) and reads those rows out
    (:func:`hooked_readout`); a TransformerBridge over a plain ``Linear`` head runs its head (and soft cap) on them
    (:func:`head_reads`). The same rows either way. Any other model gives its whole logits, indexed, and so does a
    forward that reaches the logits without calling that head (they come back whole). ``forward`` may attach hooks
    of its own (``run_with_hooks``): the model is checked before."""
    from models.backend import is_hooked

    reads = final_hidden_of(model)
    if reads is None:
        return forward()[positions]
    if is_hooked(reads):
        return hooked_readout(reads, forward(stop_at_layer=reads.cfg.n_layers)[positions])
    with head_reads(reads.get_output_embeddings(), positions):
        logits = forward()
    return logits[positions] if logits.shape[:2] == positions.shape else logits[0]


def answer_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], answer_mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy over the answer tokens (prompt tokens carry no loss):
    −(1/|A|) Σ_{(i,p) ∈ A} log softmax(logits[i, p − 1])[tokens[i, p]]."""
    target_mask = answer_mask[:, 1:].to(logits.device)
    targets = tokens[:, 1:].to(logits.device)[target_mask]
    return torch.nn.functional.cross_entropy(logits[:, :-1][target_mask].float(), targets)


def answer_inputs(
    tokens: Int[Tensor, "batch pos"], answer_mask: Bool[Tensor, "batch pos"]
) -> tuple[Int[Tensor, "batch n"], Bool[Tensor, "batch n"]]:
    """The columns a causal model must read to predict every answer token, ``tokens[:, :n]``, and
    which of their positions predict one, ``answer_mask[:, 1:n + 1]``; n is the last answer column
    (n = 1 when there is none).

    Position p's logits depend on tokens ≤ p alone, so ``forward(tokens[:, :n])[predicting]`` are
    ``forward(tokens)[:, :-1][answer_mask[:, 1:]]``: the last answer token is a target, never an
    input, and the padding after it is read by nothing. A token-world statement "x → y" runs on
    two of its three tokens.
    """
    answered = answer_mask[:, 1:].any(0).nonzero()
    n = int(answered[-1]) + 1 if len(answered) else 1
    predicting = answer_mask[:, 1 : n + 1]
    return tokens[:, :n], torch.nn.functional.pad(predicting, (0, n - predicting.shape[1]))


def answer_logits(
    model: Model, tokens: Int[Tensor, "batch pos"], answer_mask: Bool[Tensor, "batch pos"]
) -> Float[Tensor, "n_answer d_vocab"]:
    """``logits[i, p − 1]`` for every answer position (i, p), row-major: what :func:`answer_loss` and
    :func:`token_logprobs` read of ``model(tokens)``, computed on the columns of :func:`answer_inputs`
    alone, and unembedded only at the answer-predicting positions where the model allows it: a model
    with ``logits_at(inputs, positions)`` (:class:`models.hf_training.CausalLM`) gives those rows
    itself; a ``HookedTransformer``'s final norm and W_U are per position, so they run on those rows
    of its last residual stream (:func:`hooked_readout`); any other model (a TransformerBridge, whose
    ``stop_at_layer`` at the last layer still unembeds; the bilinear model) gives its full logits."""
    from models.backend import is_hooked

    check_causal(model)
    inputs, predicting = answer_inputs(tokens, answer_mask)
    if hasattr(model, "logits_at"):
        return model.logits_at(inputs, predicting)
    if is_hooked(model):
        return hooked_readout(model, model(inputs, stop_at_layer=model.cfg.n_layers)[predicting])
    return model(inputs)[predicting]


@dataclass
class AnswerScores:
    """Per-example answer log-probability and greedy correctness."""

    logprob: Float[Tensor, " n"]
    correct: Bool[Tensor, " n"]


@in_eval_mode
@torch.no_grad()
def score_answers(model: Model, batch: TokenizedFacts, batch_size: int = 512) -> AnswerScores:
    """Answer log-probabilities and greedy correctness of every row, in chunks of ``batch_size`` rows, fewer where
    their logits would pass :data:`LOGIT_BUDGET` (at least one row a chunk; where :func:`answer_scores` holds no
    logits, where their widest activation, positions × the MLP's width, would pass :data:`ACTIVATION_BUDGET`). Each
    chunk is read as :func:`answer_scores` reads it: the logits the trainer's loss reads (:func:`answer_logits`: the
    full logits' numbers, without the last answer column, an input to nothing, and, for a HookedTransformer or a
    :class:`models.hf_training.CausalLM`, without the unembedding of the prompt and padding positions; SmolLM2
    evaluation sets: a fifth of a pass), a slice of the vocabulary at a time where :func:`answer_scores` reads the
    final hidden state (a HookedTransformer, a transformers causal LM, a bridge; none with a hook attached)."""
    device = model_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    if isinstance(model, torch.nn.Module):
        check_token_ids(model, batch)
        reads = final_hidden_of(model)
        per_position = widest_activation(reads) if reads is not None else vocab_size(model) or 1
        budget = LOGIT_BUDGET if reads is None else ACTIVATION_BUDGET
        batch_size = max(1, min(batch_size, budget // (max(1, batch.tokens.shape[1]) * per_position)))
    logprobs, correct = [], []
    for start in range(0, len(batch), batch_size):
        chunk = batch.take(range(start, min(start + batch_size, len(batch)))).to(device)
        per_position, hits = answer_scores(model, chunk.tokens, chunk.answer_mask)
        logprobs.append(per_position.sum(1).cpu())
        correct.append(hits.all(1).cpu())
    return AnswerScores(torch.cat(logprobs), torch.cat(correct))
