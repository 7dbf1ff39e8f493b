"""Score many answers after one shared prompt with a prefix (key/value) cache.

For statement i with prompt c_i and candidate answers a_i1..a_ik (the truth and its controls),
``log p(a_ij | c_i) = Σ_t log p(a_ij[t] | c_i, a_ij[<t])``. The prompt runs once and its keys
and values are reused by all k answers, so an answer of m tokens costs m − 1 more positions
instead of len(c_i) + m; the numbers equal teacher forcing every (prompt, answer) sequence with
:func:`models.scoring.score_answers` (|Δ| ≲ 1e-4 in float32). Works on HookedTransformer and
TransformerBridge.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float, Int
from packaging.version import Version
from torch import Tensor
from tqdm.auto import tqdm

from facts.tokens import Example
from models.backend import (
    HOOKED_HINT,
    TLModel,
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
    is_hooked,
)
from models.memory import release_freed_memory
from models.scoring import LOGIT_BUDGET, chosen_logprobs, hooked_readout, model_device


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

    The unembedding (d_model × d_vocab, a fifth of SmolLM2's work per position) runs only where a
    next token is scored: the last prompt position and the valid continuation positions. On a
    HookedTransformer the blocks run through its own forward (``stop_at_layer=n_layers``, hooks
    fire), then ``ln_final`` and ``x W_U + b_U`` (and the logit soft-cap where the model has one)
    on the kept rows: the same operations as its forward on those positions. On a
    TransformerBridge the prompt pass asks transformers for the last position's logits only
    (``logits_to_keep=1``).
    """

    def __init__(self, model: TLModel):
        self.model = model
        self.hooked = is_hooked(model)
        import transformers  # the current module object (the TransformerLens 4.3 venv replaced it after import)

        if not self.hooked and Version(transformers.__version__) >= Version("5.24"):
            # the pin in pyproject.toml, checked where a forced upgrade would give silently wrong numbers
            raise RuntimeError(
                f"transformers {transformers.__version__} passes attention its key/value cache as `cache=`, which "
                "TransformerBridge (transformer-lens 3.9 and 4.3) does not read: cached scores would ignore the "
                f"prompt. Install transformers<5.24, or {HOOKED_HINT}.")

    def prefix(self, tokens: Int[Tensor, "s pos"]) -> tuple[Float[Tensor, "s d_vocab"], Any]:
        if self.hooked:
            cache = TransformerLensKeyValueCache.init_cache(self.model.cfg, tokens.device, len(tokens))
            residual = self.model(tokens, attention_mask=torch.ones_like(tokens), past_kv_cache=cache,
                                  stop_at_layer=self.model.cfg.n_layers)
            return hooked_readout(self.model, residual[:, -1]), cache
        logits, cache = self.model(tokens, return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
        return logits[:, -1], cache

    def extend(
        self, cache: Any, rows: Int[Tensor, " r"], tokens: Int[Tensor, "r pos"], positions: Bool[Tensor, "r pos"]
    ) -> Float[Tensor, "n_kept d_vocab"]:
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
            return hooked_readout(self.model, residual[positions])
        picked = copy.deepcopy(cache)
        picked.reorder_cache(rows)
        return self.model(tokens, past_key_values=picked, use_cache=True)[positions]


@torch.no_grad()
def candidate_logprobs_cached(
    model: TLModel,
    candidates: Sequence[Sequence[Example]],
    batch_size: int = 128,
    progress: bool = False,
) -> CandidateScores:
    """log p(answer | prompt) and greedy success for every candidate of every statement.

    ``candidates[i]`` are examples that share one prompt (e.g. the truth and its controls);
    every row must have the same number k of them. Log-probabilities sum over answer tokens:
    ``Σ_j log p(a_j | c, a_<j)``. Prompts are grouped by length and run ``batch_size`` at a time;
    continuations (answer tokens but the last) are grouped by length, so no pass holds padding, and
    run from the prompts' cached keys and values (:data:`models.scoring.LOGIT_BUDGET` bounds a pass: up to
    ``LOGIT_BUDGET // d_vocab`` positions (at least one row) of answers of one length and ``4 · batch_size`` rows,
    each row carrying a copy of its prompt's keys and values; 2**27 made Gemma 3's passes hold 1 GiB of logits and
    log-probabilities at once). The progress
    bar counts answers.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    widths = {len(row) for row in candidates}
    if len(widths) > 1 or 0 in widths:
        raise ValueError(f"every statement needs the same, non-zero number of answers, got {sorted(widths)}")
    for row in candidates:
        if any(e.prompt != row[0].prompt for e in row):
            raise ValueError(f"fact {row[0].fact} ({row[0].direction}): its answers do not share one prompt")
    n, k = len(candidates), (widths.pop() if widths else 0)
    _check_ids(candidates, getattr(model.cfg, "d_vocab", None))
    logprob = torch.zeros(n, k)
    correct = torch.ones(n, k, dtype=torch.bool)
    if n == 0:
        return CandidateScores(logprob, correct)
    device = model_device(model)
    scorer = PrefixCache(model)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(candidates):
        by_length.setdefault(len(row[0].prompt), []).append(i)
    bar = tqdm(total=n * k, unit="answer", desc="scoring", disable=not progress)
    for length in sorted(by_length):
        members = by_length[length]
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
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
    """Score one chunk of statements whose prompts have one length, in place."""
    prompts = torch.tensor([row[0].prompt for row in rows])
    first_logits, cache = scorer.prefix(prompts.to(device))
    first_ids = torch.tensor([[e.answer[0] for e in row] for row in rows])
    first, first_hit = chosen_logprobs(first_logits, first_ids.to(first_logits.device))
    del first_logits
    logprob[index] = first.cpu()
    correct[index] = first_hit.cpu()
    bar.update(sum(1 for row in rows for e in row if len(e.answer) == 1))
    by_width: dict[int, list[tuple[int, int]]] = {}
    for s, row in enumerate(rows):
        for j, e in enumerate(row):
            if len(e.answer) > 1:
                by_width.setdefault(len(e.answer) - 1, []).append((s, j))
    positions = max(1, LOGIT_BUDGET // (getattr(scorer.model.cfg, "d_vocab", None) or 1))
    per_pass = {width: max(1, min(positions // width, 4 * batch_size)) for width in by_width}
    passes = [group[start : start + per_pass[width]]
              for width, group in sorted(by_width.items()) for start in range(0, len(group), per_pass[width])]
    for batch in passes:  # one width per pass: no padding
        answers = [rows[s][j].answer for s, j in batch]
        fed = torch.tensor([a[:-1] for a in answers])
        targets = torch.tensor([a[1:] for a in answers])
        valid = torch.ones(fed.shape, dtype=torch.bool)
        statement = torch.tensor([s for s, _ in batch])
        out = scorer.extend(cache, statement.to(device), fed.to(device), valid.to(device))
        lp, hit = chosen_logprobs(out, targets[valid].to(device))
        del out
        token_lp = torch.zeros(valid.shape)
        token_lp[valid] = lp.cpu()
        token_hit = torch.ones(valid.shape, dtype=torch.bool)
        token_hit[valid] = hit.cpu()
        where = index[statement], torch.tensor([j for _, j in batch])
        logprob[where] += token_lp.sum(1)
        correct[where] &= token_hit.all(1)
        bar.update(len(batch))
        release_freed_memory(collect=False)  # the pass's freed tensors, before the next one allocates


def _check_ids(candidates: Sequence[Sequence[Example]], d_vocab: int | None) -> None:
    """Refuse token ids outside the vocabulary, naming the fact, instead of an index error later."""
    if d_vocab is None:
        return
    for row in candidates:
        for example in row:
            ids = example.prompt + example.answer
            if min(ids) < 0 or max(ids) >= d_vocab:
                bad = next(t for t in ids if not 0 <= t < d_vocab)
                raise ValueError(
                    f"fact {example.fact} ({example.direction}) has token id {bad}, outside the model's "
                    f"vocabulary of {d_vocab}: is the tokenizer the model's own?"
                )
