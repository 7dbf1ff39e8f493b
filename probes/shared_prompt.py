"""Score many answers after one shared prompt: each prompt once, each answer's continuation once.

For statement i with prompt c_i and candidate answers a_i1..a_ik (the truth and its controls),
``log p(a_ij | c_i) = Σ_t log p(a_ij[t] | c_i, a_ij[<t])``. The prompt runs once and all k answers
reuse it, so an answer of m tokens costs m − 1 more positions instead of len(c_i) + m; the numbers
equal teacher forcing every (prompt, answer) sequence with :func:`models.scoring.score_answers`
(|Δ| ≲ 1e-4 in float32). Two ways:

- by trie: each statement is one sequence, its prompt then the trie of its answers' prefixes
  (:func:`answer_trie`: answers sharing a first token share that position), with explicit position ids
  and a mask in which a trie node sees the prompt and its own ancestors only (:func:`_score_chunk_tree`):
  exactly the positions that must be computed, in one pass (the floor of
  ``benchmarks/scoring_throughput.py``). A transformers causal LM, or a TransformerBridge over one, runs
  passes of statements as rows through transformers' layers with a 4D mask, and so do a bridge over
  TransformerLens 4's own model (a token-world model there) through its own layers and a HookedTransformer
  (converted from a checked architecture, or a token-world model under 3.9) through its own forward
  (:mod:`models.hooked_tree`), those two a statement wider than the model's context (or sliding window) as several
  tries of its answers (:func:`answer_tries`);
- from a prefix cache: the prompts run once, then the continuations from their cached keys and values
  (:class:`PrefixCache`), one continuation row for a statement's answers fed the same tokens (all but their
  last: for two-token answers, one row per distinct first token, the trie's nodes). A TransformerLens model
  whose architecture the trie is not checked on (:func:`scores_by_tree`), and statements whose answers after one
  first token alone are wider than a HookedTransformer's context or sliding window run so (a transformers model's
  statements wider than its sliding window are teacher-forced, and so is a statement a bridge over TransformerLens
  4's own model, which keeps no cache, cannot fit in its context); a transformers model the trie cannot run is
  refused.

A TransformerLens model with a hook on a hook point (an edit, :func:`probes.hooks.editing`) is teacher-forced,
every (prompt, answer) sequence at its own positions, as :func:`probes.logits.answer_table` scores the truth: the
trie's or a prefix cache's layout would move a hook's positions.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from packaging.version import Version
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from facts.tokens import Example
from models.backend import (
    HOOKED_HINT,
    POST_NORM_ARCHITECTURES,
    TLModel,
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
    has_kv_cache,
    hooks_attached,
    is_hooked,
    is_native_bridge,
)
from models.hooked_tree import hooked_tree_residual, hooked_tree_width
from models.memory import heap_kept
from models.scoring import (
    ACTIVATION_BUDGET, LOGIT_BUDGET, PLAIN_HEAD_MODEL_TYPES, UNEMBED_ROWS, check_causal, chosen_logprobs,
    hooked_final_norm, hooked_readout, in_eval_mode, kept_logits, model_device, model_unembedding, unembedded_logprobs,
    widest_activation,
)

SMALL_PRODUCT = 4
"""Passes of fewer positions run alone: BLAS multiplies matrices of 1-3 rows with other kernels (MKL on
this project's CPUs sums them in another order), so inside a bundle their rows would differ from
``extend``'s in the last bits; from 4 rows on, a row's product does not depend on the other rows."""

MLP_BLOCK = ACTIVATION_BUDGET
"""Floats of one MLP activation (positions × d_mlp) a bundle of continuation passes, or a bridge's trie pass, may
hold at once (:meth:`PrefixCache.extend_bundle`; 16 MiB: 2,730 positions of SmolLM2, 2,048 of Gemma 3)."""

ReadOut = Literal["logits", "scores"]
"""What :class:`PrefixCache` gives at the positions it reads: logits, or what :meth:`PrefixCache.scores` reads."""

TREE_ARCHITECTURES = PLAIN_HEAD_MODEL_TYPES
"""transformers ``model_type``s whose bridge scores by trie (:func:`scores_by_tree`): their causal-LM head is
``lm_head`` then the config's ``final_logit_softcapping`` (none elsewhere; all of
:data:`models.scoring.PLAIN_HEAD_MODEL_TYPES`), and their attention reads a 4D mask and position ids as given (checked
against teacher forcing on a tiny model of each and on SmolLM2 and Gemma 3 270M: tests/probes/test_shared_prompt.py)."""


@dataclass
class CandidateScores:
    """``logprob[i, j]`` = log p(answer j | prompt i); ``correct[i, j]``: greedy decoding yields it."""

    logprob: Float[Tensor, "n k"]
    correct: Bool[Tensor, "n k"]


class PrefixCache:
    """Run prompts once, then continue any row of them with more tokens, for either backend.

    ``prefix`` returns the next-token logits after each prompt and a cache of its keys and
    values; ``extend`` runs ``tokens[r]`` after prompt ``rows[r]`` from that cache and returns the
    logits at ``positions`` (a boolean mask over ``tokens``) only. Prompts in one call have one
    length (no padding inside the cache); continuations are right-padded, which never changes the
    logits of earlier positions in a causal model.

    The unembedding (d_model × d_vocab, a fifth of SmolLM2's work per position, more than half of
    Gemma 3's) runs only where a next token is scored: the last prompt position and the valid continuation
    positions. On a HookedTransformer the blocks run through its own forward (``stop_at_layer=n_layers``,
    hooks fire), then ``ln_final`` and ``x W_U + b_U`` (and the logit soft-cap where the model has one) on
    the kept rows: the same operations as its forward on those positions. On a TransformerBridge the prompt
    pass asks transformers for the last position's logits only (``logits_to_keep=1``), and a continuation pass
    runs its head on the kept positions alone where it can (:func:`models.scoring.kept_logits`).

    Scoring asks both with ``read_out="scores"``: what :meth:`scores` reads, the final residual stream
    (before ``ln_final``) of a HookedTransformer, whose unembedding is then read a slice of the vocabulary at
    a time and never held whole (:func:`models.scoring.unembedded_logprobs`), or a TransformerBridge's logits.

    ``extend_bundle`` runs several continuation passes of one cache at once on a HookedTransformer
    without hooks (:meth:`bundles`): layer by layer, each pass's attention on its own (its own shapes,
    so the same operations as ``extend``) and the position-wise rest of the block (the MLP and its
    norms) on all their positions together. A linear layer's row does not depend on the other rows of
    its input (from :data:`SMALL_PRODUCT` rows on), so its final residual stream is ``extend``'s (bitwise on
    SmolLM2 and Gemma 3 here); what it saves is the fixed cost of each pass's matrix products (~0.1 CPU s a
    SmolLM2 pass whatever its size).
    """

    def __init__(self, model: TLModel):
        self.model = model
        self.hooked = is_hooked(model)
        if not self.hooked:
            _check_bridge_transformers()

    def prefix(
        self, tokens: Int[Tensor, "s pos"], read_out: ReadOut | None = "logits"
    ) -> tuple[Float[Tensor, "s d"] | None, Any]:
        """The last position's logits (``read_out="logits"``), or what :meth:`scores` reads there (``"scores"``),
        and the cache. ``read_out=None``: the cache alone (a HookedTransformer then skips the last position's
        unembedding, which a TransformerBridge computes anyway)."""
        if self.hooked:
            cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, tokens.device, len(tokens))
            residual = self.model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache,
                                  stop_at_layer=self.model.cfg.n_layers)
            return self._read_out(residual[:, -1], read_out), cache
        logits, cache = self.model(tokens, return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
        return (logits[:, -1] if read_out else None), cache

    def scores(
        self, out: Float[Tensor, "n d"], chosen: Int[Tensor, "n *k"]
    ) -> tuple[Float[Tensor, "n *k"], Bool[Tensor, "n *k"]]:
        """log p of the ``chosen`` tokens and whether each is the argmax, from what :meth:`prefix`, :meth:`extend`
        (``read_out="scores"``) or :meth:`extend_bundle` gave: a HookedTransformer's final residual stream through
        ``ln_final`` and :func:`models.scoring.unembedded_logprobs`, a TransformerBridge's logits through
        :func:`models.scoring.chosen_logprobs`."""
        if self.hooked:
            return unembedded_logprobs(hooked_final_norm(self.model, out), model_unembedding(self.model),
                                       chosen.to(out.device))
        return chosen_logprobs(out, chosen.to(out.device))

    def _read_out(self, residual: Float[Tensor, "n d_model"], read_out: ReadOut | None) -> Float[Tensor, "n d"] | None:
        """A HookedTransformer's final residual rows as ``read_out`` asks: their logits, themselves, or nothing."""
        if read_out == "logits":
            return hooked_readout(self.model, residual)
        return residual if read_out == "scores" else None

    def extend(
        self, cache: Any, rows: Int[Tensor, " r"], tokens: Int[Tensor, "r pos"], positions: Bool[Tensor, "r pos"],
        read_out: ReadOut = "logits",
    ) -> Float[Tensor, "n_kept d"]:
        if self.hooked:
            picked = TransformerLensKeyValueCache(
                entries=[
                    TransformerLensKeyValueCacheEntry(e.past_keys[rows], e.past_values[rows], frozen=True)
                    for e in cache.entries
                ],
                previous_attention_mask=cache.previous_attention_mask[rows],
                frozen=True,
            )
            residual = self.model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=picked,
                                  stop_at_layer=self.model.cfg.n_layers)
            return self._read_out(residual[positions], read_out)
        picked = copy.deepcopy(cache)
        picked.reorder_cache(rows)
        return kept_logits(self.model, positions,
                           functools.partial(self.model, tokens, past_key_values=picked, use_cache=True))

    def bundles(self) -> bool:
        """Whether :meth:`extend_bundle` runs this model: a HookedTransformer without hooks whose blocks
        are ``x + attn(ln1 x)`` then ``+ mlp(ln2 ·)`` (optionally with post-norms, as Gemma's); any other
        block layout, or a hook that would see the bundle's shapes, runs pass by pass (``extend``)."""
        if not self.hooked:
            return False
        cfg = self.model.cfg
        if (cfg.use_attn_in or cfg.use_split_qkv_input or cfg.attn_only or cfg.parallel_attn_mlp
                or cfg.use_hook_mlp_in or cfg.original_architecture in POST_NORM_ARCHITECTURES
                or cfg.positional_embedding_type == "shortformer"):
            return False
        return not hooks_attached(self.model)

    def extend_bundle(
        self, cache: Any, parts: Sequence[tuple[Int[Tensor, " r"], Int[Tensor, "r pos"]]]
    ) -> Float[Tensor, "n d_model"]:
        """The final residual stream (before ``ln_final``) at every position of every part
        ``(rows, tokens)``, parts in order, each row-major: ``extend``'s blocks for each part, layer by
        layer, with the MLPs of all parts in one product. Read it out with :func:`hooked_readout`."""
        model = self.model
        d_model = model.cfg.d_model
        residuals, masks = [], []
        for rows, tokens in parts:
            first = cache.entries[0]
            shape_only = TransformerLensKeyValueCacheEntry(  # input_to_embed reads the cache's batch and length only
                first.past_keys[:1].expand(len(rows), *first.past_keys.shape[1:]),
                first.past_values[:1].expand(len(rows), *first.past_values.shape[1:]), frozen=True)
            picked = TransformerLensKeyValueCache(entries=[shape_only], frozen=True,
                                                  previous_attention_mask=cache.previous_attention_mask[rows])
            residual, _, _, mask = model.input_to_embed(tokens, attention_mask=torch.ones_like(tokens),
                                                         past_kv_cache=picked)
            residuals.append(residual)
            masks.append(mask)
        sizes = [r.shape[0] * r.shape[1] for r in residuals]
        for layer, block in enumerate(model.blocks):
            entry, mids, on = cache.entries[layer], [], model_device(block)  # the block's device, as forward moves it
            for (rows, _), residual, mask in zip(parts, residuals, masks):
                # TransformerBlock.forward up to resid_mid, for this part alone (its keys and values)
                resid_pre = block.hook_resid_pre(residual.to(on))
                normalized = block.ln1(resid_pre)
                attn_out = block.attn(
                    query_input=normalized + 0.0, key_input=normalized + 0.0, value_input=normalized,
                    past_kv_cache_entry=TransformerLensKeyValueCacheEntry(
                        entry.past_keys[rows], entry.past_values[rows], frozen=True),
                    attention_mask=mask)
                if model.cfg.use_normalization_before_and_after:
                    attn_out = block.ln1_post(attn_out)
                mids.append(block.hook_resid_mid(resid_pre + block.hook_attn_out(attn_out)).reshape(-1, d_model))
            # and the rest of it, position by position, on every part's positions at once
            resid_mid = torch.cat(mids)[None]
            del mids
            resid_post = block.hook_resid_post(resid_mid + block.apply_mlp(block.ln2(resid_mid)))[0]
            residuals = [part.view(r.shape) for part, r in zip(resid_post.split(sizes), residuals)]
        return torch.cat([r.reshape(-1, d_model) for r in residuals])


class _Readout:
    """Readout rows of several passes read out together. The unembedding streams through memory once per block
    of rows it reads (:func:`models.scoring.unembedded_logprobs`), and one pass holds few rows: a
    HookedTransformer's trie pass ~180 of Gemma 3's, read at 3.2 ms a row, against 2.8 ms in blocks of
    :data:`~models.scoring.UNEMBED_ROWS` (one thread, 2026-12-06); its prefix-cache passes 64, at 4.9 ms.
    :meth:`add` keeps a pass's rows (what ``read`` takes), the token ids to read at each (k a row, k may differ
    between passes) and what to do with their log-probabilities and hits; they are read once ``at_once`` rows
    wait (1: each pass at once, as a bridge's logits must be), and at :meth:`flush`."""

    def __init__(self, read: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], at_once: int = UNEMBED_ROWS):
        self.read, self.at_once = read, at_once
        self.waiting: list[tuple[Tensor, Int[Tensor, "r k"], Callable[[Tensor, Tensor], None]]] = []

    def add(self, rows: Float[Tensor, "r d"], chosen: Int[Tensor, "r k"],
            done: Callable[[Float[Tensor, "r k"], Bool[Tensor, "r k"]], None]) -> None:
        self.waiting.append((rows, chosen, done))
        if sum(len(r) for r, _, _ in self.waiting) >= self.at_once:
            self.flush()

    def flush(self) -> None:
        """Read every waiting row, each row's ids padded to the widest with its first (read twice, used once),
        and hand each pass its own (on the CPU)."""
        if not self.waiting:
            return
        width = max(chosen.shape[1] for _, chosen, _ in self.waiting)
        chosen = torch.cat([torch.cat([ids, ids[:, :1].expand(-1, width - ids.shape[1])], 1)
                            for _, ids, _ in self.waiting])
        rows = self.waiting[0][0] if len(self.waiting) == 1 else torch.cat([r for r, _, _ in self.waiting])
        lp, hit = self.read(rows, chosen)
        lp, hit = lp.cpu(), hit.cpu()
        start = 0
        for part, ids, done in self.waiting:
            done(lp[start : start + len(part), : ids.shape[1]], hit[start : start + len(part), : ids.shape[1]])
            start += len(part)
        self.waiting = []


def _check_bridge_transformers() -> None:
    """Refuse a bridge under the transformers this project pins below (pyproject.toml), where a forced
    upgrade would give silently wrong numbers."""
    import transformers  # the current module object (the TransformerLens 4.3 venv replaced it after import)

    if Version(transformers.__version__) >= Version("5.24"):
        raise RuntimeError(
            f"transformers {transformers.__version__} passes attention its key/value cache as `cache=`, which "
            "TransformerBridge (transformer-lens 3.9 and 4.3) does not read: cached scores would ignore the "
            f"prompt. Install transformers<5.24, or {HOOKED_HINT}.")


def scores_by_tree(model: TLModel | PreTrainedModel) -> bool:
    """Whether :func:`candidate_logprobs_cached` runs ``model`` by trie (:func:`_score_chunk_tree`): a
    transformers model of :data:`TREE_ARCHITECTURES` (``finetune-facts`` asks its trained model so), a
    TransformerBridge over one, or a HookedTransformer converted from one of
    :data:`models.hooked_tree.HOOKED_TREE_ARCHITECTURES` or built from a config (a token-world model), with rotary
    or absolute positions (:func:`models.hooked_tree.hooked_tree_width`), the last two with no hook on any of their hook
    points (a hook would see the trie's layout, not the statements'; the bridge's own capture hooks on
    transformers' modules feed those points). So does a bridge over TransformerLens 4's own model without hooks
    (a token-world model: a 4D mask and position ids through its own layers, checked against teacher forcing with
    both positional kinds). Statements that reach a sliding window run cached, or on a transformers model
    teacher-forced, instead (:func:`_tree_fits`); so are those of the last that do not fit its context."""
    if is_native_bridge(model):
        return not hooks_attached(model)
    if is_hooked(model):
        return hooked_tree_width(model) > 0 and not hooks_attached(model)
    hf = _transformers_model(model)
    if getattr(getattr(hf, "config", None), "model_type", None) not in TREE_ARCHITECTURES:
        return False
    return hf is model or not hooks_attached(model)


def _transformers_model(model: TLModel | PreTrainedModel) -> PreTrainedModel | None:
    """``model`` if it is a transformers model, the one a TransformerBridge wraps, else None."""
    if isinstance(model, PreTrainedModel):
        return model
    wrapped = None if is_hooked(model) else getattr(model, "original_model", None)
    return wrapped if isinstance(wrapped, PreTrainedModel) else None


def _row_width(model: TLModel | PreTrainedModel) -> int | None:
    """How wide a statement's trie may be where ``model`` runs tries as rows of a pass no wider than its context, a
    wider statement as several tries (:func:`answer_tries`): TransformerLens 4's own model's context, and a
    HookedTransformer's context or sliding window (:func:`models.hooked_tree.hooked_tree_width`); None elsewhere (a
    statement is one trie)."""
    if is_native_bridge(model):
        return model.cfg.n_ctx
    return hooked_tree_width(model) if is_hooked(model) else None


def _tree_fits(model: TLModel | PreTrainedModel, width: int) -> bool:
    """A trie layout of ``width`` positions (position ids below ``width``) stays inside the model's sliding
    window, where a given mask and the model's own windowed one agree, and inside its context (where rows are at
    most :func:`_row_width` wide: a HookedTransformer, TransformerLens 4's own model, which does not run past it)."""
    room = _row_width(model)
    if room is not None:
        return width <= room
    window = getattr(_transformers_model(model).config, "sliding_window", None)
    return not window or width <= window


@dataclass
class AnswerTrie:
    """One statement laid out for a single pass: ``tokens`` (the prompt, then one position per distinct
    answer prefix ``a[:d]``, 1 ≤ d < len(a), parents first, holding ``a[d − 1]``), their ``positions``
    (a node of depth d sits at len(prompt) − 1 + d, where teacher forcing puts that token), each node's
    ``parent`` (-1: the prompt), and ``reads[j]``: the rows of the readout (0: the last prompt position;
    1 + n: node n) whose next-token distributions score ``answers[j]``'s tokens, one row a token; ``columns[j]``:
    which of the statement's candidates ``answers[j]`` is."""

    tokens: list[int]
    positions: list[int]
    parent: list[int]
    answers: list[tuple[int, ...]]
    reads: list[list[int]]
    columns: list[int]

    @property
    def prompt_length(self) -> int:
        return len(self.tokens) - len(self.parent)


def answer_trie(row: Sequence[Example], columns: Sequence[int] | None = None) -> AnswerTrie:
    """:class:`AnswerTrie` of a statement's candidates (one shared prompt), ``columns`` their places among all of
    the statement's (default: 0, 1, …)."""
    prompt = list(row[0].prompt)
    node: dict[tuple[int, ...], int] = {}
    parent: list[int] = []
    answers = [tuple(example.answer) for example in row]
    reads = []
    for example in row:
        answer = tuple(example.answer)
        for d in range(1, len(answer)):
            if answer[:d] not in node:
                node[answer[:d]] = len(parent)
                parent.append(node[answer[: d - 1]] if d > 1 else -1)
        reads.append([0] + [1 + node[answer[:d]] for d in range(1, len(answer))])
    tokens = prompt + [prefix[-1] for prefix in node]
    positions = list(range(len(prompt))) + [len(prompt) - 1 + len(prefix) for prefix in node]
    return AnswerTrie(tokens, positions, parent, answers, reads, list(columns or range(len(row))))


def answer_tries(row: Sequence[Example], width: int) -> list[AnswerTrie]:
    """The statement's :func:`answer_trie`, or where that is wider than ``width`` positions, the tries of consecutive
    groups of its answers, whole first-token subtrees (answers of different first tokens share no node), each group
    with the prompt again, each at most ``width`` wide where one first token's answers fit (a wider group alone).
    A 2-token world's statement ranked among 200 entities (~130 positions) runs in a 64-token context as 3 tries,
    each with its ~4 prompt tokens."""
    whole = answer_trie(row)
    if len(whole.tokens) <= width:
        return [whole]
    by_first: dict[int, list[int]] = {}
    for j, example in enumerate(row):
        by_first.setdefault(example.answer[0], []).append(j)
    groups: list[list[int]] = []
    nodes: list[int] = []
    for columns in by_first.values():
        size = len({row[j].answer[:d] for j in columns for d in range(1, len(row[j].answer))})
        if groups and whole.prompt_length + nodes[-1] + size <= width:
            groups[-1] += columns
            nodes[-1] += size
        else:
            groups.append(list(columns))
            nodes.append(size)
    return [answer_trie([row[j] for j in columns], columns) for columns in groups]


def _tree_batch(
    tries: Sequence[AnswerTrie],
) -> tuple[Int[Tensor, "b width"], Int[Tensor, "b width"], Bool[Tensor, "b width width"]]:
    """Token ids, position ids and which positions each position sees, for statements right-padded to one
    width: a prompt position sees the prompt up to itself, a node the prompt and its ancestors and itself,
    a padding position itself only (no empty softmax row; nothing reads it)."""
    width = max(len(t.tokens) for t in tries)
    ids = torch.zeros(len(tries), width, dtype=torch.long)
    positions = torch.zeros(len(tries), width, dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(tries), 1, 1)
    for b, trie in enumerate(tries):
        length, n = trie.prompt_length, len(trie.parent)
        ids[b, : len(trie.tokens)] = torch.tensor(trie.tokens)
        positions[b, : len(trie.tokens)] = torch.tensor(trie.positions)
        allowed[b, :length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
        allowed[b, length : length + n, :length] = True
        for node, up in enumerate(trie.parent):  # a node sees what its parent sees (parents come first)
            if up >= 0:
                allowed[b, length + node] |= allowed[b, length + up]
    return ids, positions, allowed


@in_eval_mode
@torch.no_grad()
def candidate_logprobs_cached(
    model: TLModel | PreTrainedModel,
    candidates: Sequence[Sequence[Example]],
    batch_size: int = 128,
    progress: bool = False,
) -> CandidateScores:
    """log p(answer | prompt) and greedy success for every candidate of every statement.

    ``candidates[i]`` are examples that share one prompt (e.g. the truth and its controls);
    every row must have the same number k of them. Log-probabilities sum over answer tokens:
    ``Σ_j log p(a_j | c, a_<j)``. Prompts are grouped by length and run ``batch_size`` at a time;
    continuations (answer tokens but the last; answers of one statement fed the same tokens share one) are grouped
    by length, so no pass holds padding, and run from the prompts' cached keys and values
    (:data:`models.scoring.LOGIT_BUDGET` bounds a pass: up to
    ``LOGIT_BUDGET // d_vocab`` positions (at least one row) of answers of one length and ``4 · batch_size`` rows,
    each row carrying a copy of its prompt's keys and values; 2**27 made Gemma 3's passes hold 1 GiB of logits and
    log-probabilities at once). On a HookedTransformer without hooks, consecutive passes of one chunk run
    together (:meth:`PrefixCache.extend_bundle`, up to :data:`MLP_BLOCK` floats of MLP activation): the same
    numbers, fewer matrix products. A HookedTransformer's answers are read from its final residual stream a
    slice of the vocabulary at a time (:meth:`PrefixCache.scores`), a bridge's from the logits of a pass.
    A TransformerBridge or a HookedTransformer runs by trie instead where :func:`scores_by_tree` and
    :func:`_tree_fits` say so (statements of one prompt length sorted by width, as rows of passes of up to
    :data:`MLP_BLOCK` floats of MLP activation); so does a transformers causal LM, whose statements wider than its
    sliding window are teacher-forced (:func:`models.scoring.score_answers`), and one the trie cannot run at all is
    refused. The progress bar counts answers. A TransformerLens model with a hook attached is teacher-forced, and so
    are the statements that a bridge over TransformerLens 4's own model cannot fit in its context as
    :func:`answer_tries` (the module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    check_causal(model)
    widths = {len(row) for row in candidates}
    if len(widths) > 1 or 0 in widths:
        raise ValueError(f"every statement needs the same, non-zero number of answers, got {sorted(widths)}")
    for row in candidates:
        if any(e.prompt != row[0].prompt for e in row):
            raise ValueError(f"fact {row[0].fact} ({row[0].direction}): its answers do not share one prompt")
    n, k = len(candidates), (widths.pop() if widths else 0)
    if not isinstance(model, PreTrainedModel) and not hasattr(model, "hook_dict"):
        raise TypeError(f"candidate_logprobs_cached scores a TransformerLens model (HookedTransformer, "
                        f"TransformerBridge) or a transformers PreTrainedModel, not a {type(model).__name__}; score "
                        f"another model by teacher forcing (models.scoring.score_answers)")
    tree, hf, native = scores_by_tree(model), _transformers_model(model), is_native_bridge(model)
    runs = model if is_hooked(model) or native else hf  # what a trie pass runs
    split = _row_width(runs) if tree else None
    if hf is model and not tree:
        raise ValueError(f"a {type(model).__name__} ({hf.config.model_type}) is scored by trie only on "
                         f"{sorted(TREE_ARCHITECTURES)}: convert it (models.pretrained.to_hooked) or load it as a "
                         f"TransformerLens model")
    _check_ids(candidates, *((hf.config.vocab_size,) * 2 if hf is model else
                             (getattr(model.cfg, "d_vocab", None), getattr(model.cfg, "d_vocab_out", None))))
    logprob = torch.zeros(n, k)
    correct = torch.ones(n, k, dtype=torch.bool)
    if n == 0:
        return CandidateScores(logprob, correct)
    device = model_device(model)
    from models.hf_training import CausalLM

    # A hook sees each (prompt, answer) sequence teacher-forced, as it sees the truth's in answer_table, not a
    # prefix cache's continuations (their positions start again at 0, their batch rows are (statement, answer)s);
    # a bridge over TransformerLens 4's own model keeps no cache to continue from.
    forced = (CausalLM(hf) if hf is model else model if hooks_attached(model) or not has_kv_cache(model)
              else None)
    scorer = None if forced is not None else PrefixCache(model)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(candidates):
        by_length.setdefault(len(row[0].prompt), []).append(i)
    bar = tqdm(total=n * k, unit="answer", desc="scoring", disable=not progress)
    with heap_kept():  # pass after pass of tensors of the same sizes: their freed memory is the next pass's
        for length in sorted(by_length):
            members = by_length[length]
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                # where rows are as wide as a context at most, a wider statement runs as several tries
                owned = ([(i, trie) for i in chunk for trie in answer_tries(candidates[i], split)] if split
                         else [(i, answer_trie(candidates[i])) for i in chunk] if tree else [])
                if tree and _tree_fits(runs, max(len(trie.tokens) for _, trie in owned)):
                    _score_chunk_tree(runs, [trie for _, trie in owned], torch.tensor([i for i, _ in owned]), logprob,
                                      correct, device, bar)
                elif scorer is None:  # each (prompt, answer) sequence teacher-forced
                    _score_chunk_teacher_forced(forced, [candidates[i] for i in chunk], torch.tensor(chunk),
                                                logprob, correct, bar)
                else:
                    _score_chunk(scorer, [candidates[i] for i in chunk], torch.tensor(chunk), logprob, correct,
                                 batch_size, device, bar)
    bar.close()
    return CandidateScores(logprob, correct)


def _score_chunk(
    scorer: PrefixCache,
    rows: Sequence[Sequence[Example]],
    index: Int[Tensor, " s"],
    logprob: Float[Tensor, "n k"],
    correct: Bool[Tensor, "n k"],
    batch_size: int,
    device: torch.device,
    bar: tqdm,
) -> None:
    """Score one chunk of statements whose prompts have one length, in place. A statement's answers fed the same
    tokens (``answer[:-1]``) share one continuation row, read at each position for each of them. A HookedTransformer's
    readout rows (each prompt's last position, then every continuation position) are read out together
    (:class:`_Readout`)."""
    readout = _Readout(scorer.scores, UNEMBED_ROWS if scorer.hooked else 1)
    prompts = torch.tensor([row[0].prompt for row in rows])
    first_out, cache = scorer.prefix(prompts.to(device), read_out="scores")

    def first_read(lp: Float[Tensor, "s k"], hit: Bool[Tensor, "s k"]) -> None:
        logprob[index], correct[index] = lp, hit
        bar.update(sum(1 for row in rows for e in row if len(e.answer) == 1))

    readout.add(first_out, torch.tensor([[e.answer[0] for e in row] for row in rows], device=first_out.device),
                first_read)
    del first_out  # read before the continuations (a flush hands out rows in the order they came), which add to it
    # each statement's answers fed the same tokens (all but their last) share one continuation row
    sharing: dict[tuple[int, tuple[int, ...]], list[int]] = {}  # (statement, fed tokens) → the answers fed them
    for s, row in enumerate(rows):
        for j, e in enumerate(row):
            if len(e.answer) > 1:
                sharing.setdefault((s, tuple(e.answer[:-1])), []).append(j)
    by_width: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for key in sharing:
        by_width.setdefault(len(key[1]), []).append(key)
    positions = max(1, LOGIT_BUDGET // (getattr(scorer.model.cfg, "d_vocab", None) or 1))
    per_pass = {width: max(1, min(positions // width, 4 * batch_size)) for width in by_width}
    passes = [group[start : start + per_pass[width]]
              for width, group in sorted(by_width.items()) for start in range(0, len(group), per_pass[width])]
    sizes = [len(batch) * len(batch[0][1]) for batch in passes]
    # passes that run together (one pass: PrefixCache.extend, as it always did): consecutive passes of at least
    # SMALL_PRODUCT positions, up to MLP_BLOCK floats of MLP activation
    bundles = (_runs(sizes, max(positions, MLP_BLOCK // scorer.model.cfg.d_mlp), alone=SMALL_PRODUCT)
               if scorer.bundles() else [[p] for p in range(len(passes))])
    for bundle in bundles:
        fed = [torch.tensor([key[1] for key in passes[p]]) for p in bundle]
        statements = [torch.tensor([s for s, _ in passes[p]]) for p in bundle]
        most = max(len(sharing[key]) for p in bundle for key in passes[p])

        def scored(key: tuple[int, tuple[int, ...]], most: int = most) -> list[Sequence[int]]:
            """The tokens each answer fed ``key``'s tokens is scored on, one answer a column, padded to ``most``
            columns with the first's (read and not used)."""
            answers = [rows[key[0]][j].answer[1:] for j in sharing[key]]
            return answers + answers[:1] * (most - len(answers))

        targets = torch.cat([torch.tensor([scored(key) for key in passes[p]]).transpose(1, 2).reshape(-1, most)
                             for p in bundle])  # a row per fed position, in the order of the passes' positions
        if len(bundle) == 1:
            out = scorer.extend(cache, statements[0].to(device), fed[0].to(device),
                                torch.ones(fed[0].shape, dtype=torch.bool, device=device), read_out="scores")
        else:  # every pass's final residual stream at once
            out = scorer.extend_bundle(cache, [(s.to(device), f.to(device)) for s, f in zip(statements, fed)])

        def continuation_read(lp: Float[Tensor, "n most"], hit: Bool[Tensor, "n most"],
                              bundle: list[int] = bundle, fed: list[Tensor] = fed) -> None:
            for p, tokens, lp_part, hit_part in zip(bundle, fed, lp.split([f.numel() for f in fed]),
                                                        hit.split([f.numel() for f in fed])):
                cells = [(r, column, s, j) for r, (s, f) in enumerate(passes[p])
                         for column, j in enumerate(sharing[s, f])]
                r, column, s, j = (torch.tensor(c) for c in zip(*cells))
                where = index[s], j
                logprob[where] += lp_part.view(*tokens.shape, -1).sum(1)[r, column]
                correct[where] &= hit_part.view(*tokens.shape, -1).all(1)[r, column]
                bar.update(len(cells))

        readout.add(out, targets.to(out.device), continuation_read)
        del out
    readout.flush()


def _score_chunk_teacher_forced(
    model: torch.nn.Module,
    rows: Sequence[Sequence[Example]],
    index: Int[Tensor, " s"],
    logprob: Float[Tensor, "n k"],
    correct: Bool[Tensor, "n k"],
    bar: tqdm,
) -> None:
    """Score one chunk of statements by teacher forcing every (prompt, answer) sequence on ``model`` (a transformers
    model as :class:`models.hf_training.CausalLM`, or a TransformerLens model with hooks attached;
    :func:`models.scoring.score_answers`, the answer positions' logits alone), in place."""
    from facts.tokens import collate
    from models.scoring import score_answers

    scores = score_answers(model, collate([e for row in rows for e in row], 0))
    logprob[index] = scores.logprob.view(len(rows), -1)
    correct[index] = scores.correct.view(len(rows), -1)
    bar.update(scores.logprob.numel())


def _score_chunk_tree(
    model: TLModel | PreTrainedModel,
    tries: Sequence[AnswerTrie],
    index: Int[Tensor, " s"],
    logprob: Float[Tensor, "n k"],
    correct: Bool[Tensor, "n k"],
    device: torch.device,
    bar: tqdm,
) -> None:
    """Score one chunk of tries in place, trie s the candidates ``columns`` of statement ``index[s]``. A transformers
    model (a bridge's: its layers are the bridge's own modules) runs passes of statements (narrowest first) through
    its body with position ids and a 4D additive mask, then ``lm_head`` (and the soft-cap where the config has one:
    what the causal LM's forward does) on the readout rows alone; TransformerLens 4's own model runs such passes
    through its whole forward (a boolean mask; its logits at every position, a token world's vocabulary of a few
    hundred being a sliver of its work), read at the readout rows; a HookedTransformer runs such passes through its
    own forward (:func:`models.hooked_tree.hooked_tree_residual`), then ``ln_final`` and its unembedding on the
    readout rows.
    Each readout row's log-softmax is read at every token an answer continues with there, a slice of the vocabulary
    at a time (:func:`models.scoring.unembedded_logprobs`: the whole logits are never held), the rows of several
    passes together (:class:`_Readout`)."""
    hooked, native = is_hooked(model), is_native_bridge(model)
    passes = _tree_passes(tries, max(widest_activation(model), model.cfg.d_vocab if native else 0))
    if native:
        readout = _Readout(chosen_logprobs)
    else:
        unembedding = model_unembedding(model)
        readout = _Readout(lambda rows, chosen: unembedded_logprobs(rows, unembedding, chosen))
    for group in passes:
        ids, position_ids, allowed = _tree_batch([tries[s] for s in group])
        if hooked:
            hidden = hooked_tree_residual(model, ids, position_ids, allowed)
        elif native:  # its logits (True in its mask: not seen)
            hidden = model.original_model(ids.to(device), attention_mask=~allowed[:, None].to(device),
                                          position_ids=position_ids.to(device))
        else:
            dtype = next(model.parameters()).dtype
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
            hidden = model.base_model(input_ids=ids.to(device), position_ids=position_ids.to(device),
                                      attention_mask=mask.to(device), use_cache=False).last_hidden_state
        rows = torch.cat([hidden[b, tries[s].prompt_length - 1 : len(tries[s].tokens)] for b, s in enumerate(group)])
        del hidden
        # the tokens read at each readout row, and where each answer's tokens sit among them
        wanted: list[dict[int, int]] = [{} for _ in range(len(rows))]
        where: list[tuple[int, int, list[tuple[int, int]]]] = []
        offset = 0
        for s in group:
            trie = tries[s]
            for j, (answer, read) in enumerate(zip(trie.answers, trie.reads)):
                cells = [(offset + r, wanted[offset + r].setdefault(t, len(wanted[offset + r])))
                         for r, t in zip(read, answer)]
                where.append((s, j, cells))
            offset += 1 + len(trie.parent)
        width = max(len(w) for w in wanted)
        targets = torch.tensor([list(w) + [next(iter(w))] * (width - len(w)) for w in wanted], device=rows.device)

        def place(lp: Float[Tensor, "r w"], hit: Bool[Tensor, "r w"], where: list = where, group: list[int] = group
                  ) -> None:
            for s, j, cells in where:
                at = tuple(torch.tensor(axis) for axis in zip(*cells))
                logprob[index[s], tries[s].columns[j]] = lp[at].sum()
                correct[index[s], tries[s].columns[j]] = bool(hit[at].all())
            bar.update(sum(len(tries[s].reads) for s in group))

        readout.add(hooked_final_norm(model, rows) if hooked else rows, targets, place)
        del rows
    readout.flush()


def _tree_passes(tries: Sequence[AnswerTrie], d_mlp: int) -> list[list[int]]:
    """Statements (indices of ``tries``) grouped into passes, widths ascending, each pass holding up to
    :data:`MLP_BLOCK` floats of MLP activation, padding included (a pass's width is its last statement's)."""
    room = max(1, MLP_BLOCK // d_mlp)
    passes: list[list[int]] = []
    for s in sorted(range(len(tries)), key=lambda s: len(tries[s].tokens)):
        if passes and (len(passes[-1]) + 1) * len(tries[s].tokens) <= room:
            passes[-1].append(s)
        else:
            passes.append([s])
    return passes


def _runs(sizes: Sequence[int], room: int, alone: int = 0) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped so that each group sums to at most ``room`` (a larger
    size alone); a size below ``alone`` is always a group of its own."""
    groups: list[list[int]] = []
    for i, size in enumerate(sizes):
        if (groups and size >= alone and sizes[groups[-1][-1]] >= alone
                and sum(sizes[q] for q in groups[-1]) + size <= room):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _check_ids(candidates: Sequence[Sequence[Example]], d_vocab: int | None, d_vocab_out: int | None = None) -> None:
    """Refuse token ids outside the vocabulary, and answer ids outside the output vocabulary (``d_vocab_out``,
    where a model predicts fewer tokens than it reads), naming the fact, instead of an index error later."""
    if d_vocab is None:
        return
    narrower = isinstance(d_vocab_out, int) and 0 < d_vocab_out < d_vocab
    for row in candidates:
        for example in row:
            checks = [(example.prompt + example.answer, d_vocab, "vocabulary")]
            if narrower:
                checks.append((example.answer, d_vocab_out, "output vocabulary"))
            for ids, size, what in checks:
                if min(ids) < 0 or max(ids) >= size:
                    bad = next(t for t in ids if not 0 <= t < size)
                    raise ValueError(
                        f"fact {example.fact} ({example.direction}) has token id {bad}, outside the model's "
                        f"{what} of {size}: is the tokenizer the model's own?"
                    )
