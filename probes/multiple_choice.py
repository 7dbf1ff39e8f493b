"""Multiple-choice scoring (Lin et al. 2024, "thinking bias"): which option letter a model picks.

A multiple-choice prompt lists K options under letters and ends where the model's next token is its
choice. With l_k the next-token logit of letter k's token (" A", " B", ...) at the last prompt
position, the probability the model gives option k *among the letters* is

    p_k = exp(l_k) / Σ_j exp(l_j),   k, j = 1 … K,

so Σ_k p_k = 1 whatever mass the model puts on other tokens. The score of a question is p_correct, and
its choice argmax_k l_k (correct when it is the right letter); chance is 1 / K for both.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from models.backend import is_hooked
from models.scoring import hooked_readout


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


@torch.no_grad()
def letter_probabilities(model: Any, prompts: Sequence[Sequence[int]], letters: Sequence[int],
                         batch_size: int = 16) -> Float[Tensor, "prompt letter"]:
    """p_k for every prompt (rows in input order) and letter token (columns): the softmax over the
    letters' next-token logits at the last prompt position (see the module docstring). Prompts run in
    groups of one length (no padding), ``batch_size`` at a time. A HookedTransformer unembeds the last
    position only (:func:`models.scoring.hooked_readout`: exactly that row of its full logits)."""
    if not prompts:
        raise ValueError("no multiple-choice prompts to score")
    index = torch.tensor(list(letters), device=model.cfg.device)
    out = torch.empty(len(prompts), len(letters), dtype=torch.float64)
    groups: dict[int, list[int]] = defaultdict(list)
    for row, prompt in enumerate(prompts):
        groups[len(prompt)].append(row)
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            tokens: Int[Tensor, "batch pos"] = torch.tensor([list(prompts[r]) for r in chunk], device=model.cfg.device)
            if is_hooked(model):
                logits = hooked_readout(model, model(tokens, stop_at_layer=model.cfg.n_layers)[:, -1]).double()
            else:
                logits = model(tokens)[:, -1].double()
            out[chunk] = logits[:, index].softmax(-1).cpu()
    return out


__all__ = ["letter_probabilities", "letter_tokens"]
