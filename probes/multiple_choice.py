"""Multiple-choice scoring (Lin et al. 2024, "thinking bias"): which option letter a model picks.

A multiple-choice prompt lists K options under letters and ends where the model's next token is its
choice. With l_k the next-token logit of letter k's token (" A", " B", ...) at the last prompt
position, the probability the model gives option k *among the letters* is

    p_k = exp(l_k) / Σ_j exp(l_j),   k, j = 1 … K,

so Σ_k p_k = 1 whatever mass the model puts on other tokens. The score of a question is p_correct, and
its choice argmax_k l_k (correct when it is the right letter); chance is 1 / K for both.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from models.backend import hooks_attached
from models.scoring import in_eval_mode, kept_logits


def letter_tokens(tokenizer: Any, letters: str) -> tuple[int, ...]:
    """The token of " A", " B", ... (the letter after "Answer:"), one per letter; a tokenizer that splits
    one of them into several tokens is refused (its choice could not be read off one next token)."""
    ids = []
    for letter in letters:
        encoded = tokenizer.encode(f" {letter}", add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer splits option letter {letter!r} (' {letter}') into {len(encoded)} tokens "
                             f"{encoded}; multiple choice reads the choice off one next token")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"option letters {letters!r} share tokens {ids}")
    return tuple(ids)


@in_eval_mode
@torch.no_grad()
def letter_probabilities(model: Any, prompts: Sequence[Sequence[int]], letters: Sequence[int],
                         batch_size: int = 16, stems: Sequence[int] | None = None) -> Float[Tensor, "prompt letter"]:
    """p_k for every prompt (rows in input order) and letter token (columns): the softmax over the
    letters' next-token logits at the last prompt position (see the module docstring). Prompts run in
    groups of one length (no padding), ``batch_size`` at a time, the last position alone unembedded where the
    model allows it (:func:`models.scoring.kept_logits`: exactly that row of its full logits).

    ``stems[i]`` (on a HookedTransformer or TransformerBridge): the first ``stems[i]`` tokens of prompt i
    are a stem other prompts share (a multiple-choice question's, the same in each of its orders), at
    least one token short of the prompt; 0 for none. Each distinct stem runs once and its prompts continue
    from its cached keys and values (:class:`probes.shared_prompt.PrefixCache`): the same logits up to
    float32 rounding (SmolLM2's: bitwise), the stem's positions computed once instead of once per prompt."""
    if not prompts:
        raise ValueError("no multiple-choice prompts to score")
    if stems is not None and len(stems) != len(prompts):
        raise ValueError(f"{len(stems)} stems for {len(prompts)} prompts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    size = model.cfg.d_vocab_out if getattr(model.cfg, "d_vocab_out", 0) and model.cfg.d_vocab_out > 0 \
        else model.cfg.d_vocab
    if len(set(letters)) != len(letters) or any(not 0 <= letter < size for letter in letters):
        raise ValueError(f"letters {list(letters)}: distinct token ids in the model's output vocabulary of {size} "
                         "(a negative id would read a letter from the end, a repeated one split its probability)")
    if stems is not None and any(stems):
        if hooks_attached(model):  # a hook sees every prompt whole, at its own positions, as a forward pass gives it
            stems = None
    index = torch.tensor(list(letters), device=model.cfg.device)
    out = torch.empty(len(prompts), len(letters), dtype=torch.float64)
    whole = [row for row in range(len(prompts)) if stems is None or not stems[row]]
    if len(whole) < len(prompts):
        _shared_stem_letters(model, prompts, stems, index, batch_size, out)
    groups: dict[int, list[int]] = defaultdict(list)
    for row in whole:
        groups[len(prompts[row])].append(row)
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            tokens: Int[Tensor, "batch pos"] = torch.tensor([list(prompts[r]) for r in chunk], device=model.cfg.device)
            last = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
            last[:, -1] = True
            logits = kept_logits(model, last, functools.partial(model, tokens))
            out[chunk] = logits[:, index].cpu().double().softmax(-1)  # float64 on the CPU: MPS has none
    return out


def _shared_stem_letters(model: Any, prompts: Sequence[Sequence[int]], stems: Sequence[int],
                         index: Int[Tensor, " letter"], batch_size: int, out: Float[Tensor, "prompt letter"]) -> None:
    """:func:`letter_probabilities` of the prompts with a stem (``stems[i]`` > 0): each distinct stem runs once
    (stems of one length ``batch_size`` at a time), then every prompt's rest from its stem's cache (rests of
    one length, ``4 · batch_size`` rows a pass), unembedding the last position only; into ``out`` in place."""
    from probes.shared_prompt import PrefixCache

    shared: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for row, (prompt, stem) in enumerate(zip(prompts, stems)):
        if not stem:
            continue
        if not 1 <= stem < len(prompt):
            raise ValueError(f"prompt {row}: a stem of {stem} tokens must leave 1…{len(prompt) - 1} of its "
                             f"{len(prompt)} tokens to continue")
        shared[tuple(prompt[:stem])].append(row)
    by_length: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for stem in shared:
        by_length[len(stem)].append(stem)
    scorer, device = PrefixCache(model), model.cfg.device
    for length, stems_of_length in by_length.items():
        for start in range(0, len(stems_of_length), batch_size):
            chunk = stems_of_length[start : start + batch_size]
            # no letter reads the stem's last logits: its keys and values alone
            _, cache = scorer.prefix(torch.tensor(chunk, device=device), read_out=None)
            rests: dict[int, list[tuple[int, int]]] = defaultdict(list)  # rest length -> (stem in chunk, prompt)
            for position, stem in enumerate(chunk):
                for row in shared[stem]:
                    rests[len(prompts[row]) - length].append((position, row))
            for members in rests.values():
                for first in range(0, len(members), 4 * batch_size):
                    part = members[first : first + 4 * batch_size]
                    tokens = torch.tensor([list(prompts[row][length:]) for _, row in part], device=device)
                    last = torch.zeros(tokens.shape, dtype=torch.bool, device=device)
                    last[:, -1] = True
                    logits = scorer.extend(cache, torch.tensor([s for s, _ in part], device=device), tokens, last)
                    out[[row for _, row in part]] = logits[:, index].cpu().double().softmax(-1)


__all__ = ["letter_probabilities", "letter_tokens"]
