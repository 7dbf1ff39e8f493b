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
batches to fit, cached scoring its continuation passes (:mod:`probes.shared_prompt`); their log-softmax is
taken a block of rows at a time (:func:`chosen_logprobs`). Gemma 3's 262,144-token vocabulary makes it 64
positions, SmolLM2's 341. (2**25 and a full-size log-softmax beside the logits made check-asymmetry on
Gemma 3 270M peak 0.35 GiB above the loaded model.)"""


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

    residual = residual[None]  # [1, n, d_model]: the modules' own shapes, so their hooks fire as in a forward
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    return apply_softcap(model.unembed(residual), model.cfg.output_logits_soft_cap)[0]


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
    target_mask = answer_mask[:, 1:]
    logprob, hit = chosen_logprobs(logits, tokens[:, 1:][target_mask])
    per_position = torch.zeros(target_mask.shape, dtype=logprob.dtype, device=logits.device)
    per_position[target_mask] = logprob
    hits = torch.ones(target_mask.shape, dtype=torch.bool, device=logits.device)
    hits[target_mask] = hit
    return per_position, hits


LOG_SOFTMAX_BLOCK = 2**22
"""Floats of log-softmax :func:`chosen_logprobs` holds at once (16 MiB: 16 rows of Gemma 3's vocabulary)."""


def chosen_logprobs(
    logits: Float[Tensor, "n d_vocab"], chosen: Int[Tensor, "n *k"]
) -> tuple[Float[Tensor, "n *k"], Bool[Tensor, "n *k"]]:
    """``log softmax(logits[i])[chosen[i]]`` and whether that token is the argmax, row by row
    (``chosen[i]`` one token id or k of them).

    Log-softmax is computed per row, so it runs over blocks of rows (at most :data:`LOG_SOFTMAX_BLOCK`
    floats): the same numbers as over all rows at once, without a second full-size tensor beside the
    logits (Gemma 3: 1 MiB a row). Logits are read in float32.
    """
    picked = chosen.reshape(len(chosen), -1)
    rows = max(1, LOG_SOFTMAX_BLOCK // max(1, logits.shape[-1]))
    logprob = torch.empty(picked.shape, dtype=torch.float32, device=logits.device)
    hit = torch.empty(picked.shape, dtype=torch.bool, device=logits.device)
    for start in range(0, len(picked), rows):
        block, ids = logits[start : start + rows].float(), picked[start : start + rows]
        logprob[start : start + rows] = block.log_softmax(-1).gather(-1, ids)
        hit[start : start + rows] = block.argmax(-1, keepdim=True) == ids
    return logprob.view(chosen.shape), hit.view(chosen.shape)


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
    """Answer log-probabilities and greedy correctness of every row, in chunks of ``batch_size`` rows,
    fewer where their logits would pass :data:`LOGIT_BUDGET` (at least one row a chunk). Each chunk's
    logits are :func:`answer_logits`, as the trainer's loss reads them: the same numbers as the full
    logits, without the last answer column (an input to nothing) and, for a HookedTransformer or a
    :class:`models.hf_training.CausalLM`, without the unembedding of the prompt and padding positions
    (SmolLM2 evaluation sets: a fifth of a pass)."""
    device = model_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    if isinstance(model, torch.nn.Module):
        check_token_ids(model, batch)
        positions = max(1, batch.tokens.shape[1]) * (vocab_size(model) or 1)
        batch_size = max(1, min(batch_size, LOGIT_BUDGET // positions))
    logprobs, correct = [], []
    for start in range(0, len(batch), batch_size):
        chunk = batch.take(range(start, min(start + batch_size, len(batch)))).to(device)
        logits = answer_logits(model, chunk.tokens, chunk.answer_mask)
        per_position, hits = answer_token_logprobs(logits, chunk.tokens, chunk.answer_mask)
        logprobs.append(per_position.sum(1).cpu())
        correct.append(hits.all(1).cpu())
    return AnswerScores(torch.cat(logprobs), torch.cat(correct))
