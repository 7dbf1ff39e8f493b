"""Tokenized view of a fact set: (prompt tokens, answer tokens) per direction, batched.

A directed statement becomes one :class:`Example` ``prompt ++ answer``; a batch of them is a
:class:`TokenizedFacts`, right-padded. Right padding is exact for causal models: position p
only attends to positions ≤ p, so pads after the answer never change the answer's logits.

The log-probability of an answer ``a_1..a_m`` after prompt ``c`` is
``Σ_j log p(a_j | c, a_<j)``; the logits predicting token p sit at position p − 1, which is
why :attr:`TokenizedFacts.answer_mask` marks answer *tokens* and consumers shift by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from facts.schema import DIRECTIONS, Direction, FactError, FactSet, Split


@dataclass(frozen=True)
class Example:
    """One directed statement as token ids: the model reads ``prompt`` and must say ``answer``."""

    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    fact: int
    direction: Direction
    split: Split

    def __post_init__(self) -> None:
        if not self.prompt:
            raise FactError(f"fact {self.fact} ({self.direction}): the prompt has no tokens")
        if not self.answer:
            raise FactError(f"fact {self.fact} ({self.direction}): the answer has no tokens")


class FactTokenizer(Protocol):
    """Turns one directed statement of a fact set into an :class:`Example`.

    ``answer`` replaces the statement's true answer entity (a candidate or a control), so
    probes can score any entity in the answer slot of the same prompt. A tokenizer whose answer
    tokens never depend on the prompt before them (a token world's entity ids) says so with a
    true ``answers_read_alone``; without it, probes tokenize each answer after each prompt (a text
    tokenizer reads prompt and answer as one text: :func:`facts.language.encode_pair`).
    """

    def example(self, facts: FactSet, index: int, direction: Direction, answer: str | None = None) -> Example: ...


@dataclass
class TokenizedFacts:
    """A right-padded batch of examples with the bookkeeping probes need.

    ``tokens[i]`` is ``prompt ++ answer ++ pad``; ``answer_mask[i, p]`` is True where
    ``tokens[i, p]`` is an answer token (never at p = 0).
    """

    tokens: Int[Tensor, "n pos"]
    answer_mask: Bool[Tensor, "n pos"]
    fact: Int[Tensor, " n"]
    direction: tuple[Direction, ...]
    split: tuple[Split, ...]
    prompt_len: Int[Tensor, " n"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def answer_len(self) -> Int[Tensor, " n"]:
        return self.answer_mask.sum(dim=1)

    @property
    def target_mask(self) -> Bool[Tensor, "n pos_minus_1"]:
        """Positions whose *next-token* prediction is an answer token (the loss positions)."""
        return self.answer_mask[:, 1:]

    def where(self, *, split: str | None = None, direction: str | None = None) -> "TokenizedFacts":
        """The sub-batch with the given split and/or direction (same order)."""
        keep = [
            i
            for i in range(len(self))
            if (split is None or self.split[i] == split) and (direction is None or self.direction[i] == direction)
        ]
        return self.take(keep)

    def take(self, rows: Sequence[int] | Tensor) -> "TokenizedFacts":
        """The sub-batch of the given row indices, trimmed to its own longest row."""
        index = torch.as_tensor(list(rows) if not isinstance(rows, Tensor) else rows, dtype=torch.long)
        tokens = self.tokens[index]
        answer_mask = self.answer_mask[index]
        width = int((self.prompt_len[index] + answer_mask.sum(1)).max()) if len(index) else 0
        return TokenizedFacts(
            tokens=tokens[:, :width],
            answer_mask=answer_mask[:, :width],
            fact=self.fact[index],
            direction=tuple(self.direction[i] for i in index.tolist()),
            split=tuple(self.split[i] for i in index.tolist()),
            prompt_len=self.prompt_len[index],
        )

    def with_sequence_loss(self) -> "TokenizedFacts":
        """The same rows with every token after the first marked as a loss target (Zhu et al.'s
        ``--loss_whole_sequence``: the loss on the whole sentence, prompt included, not only on the
        answer); padding stays out. For training only: probes read the answer from ``answer_mask``."""
        positions = torch.arange(self.tokens.shape[1])
        inside = positions[None, :] < (self.prompt_len + self.answer_len)[:, None]
        return TokenizedFacts(tokens=self.tokens, answer_mask=inside & (positions[None, :] > 0), fact=self.fact,
                              direction=self.direction, split=self.split, prompt_len=self.prompt_len)

    def to(self, device: torch.device | str) -> "TokenizedFacts":
        return TokenizedFacts(
            tokens=self.tokens.to(device),
            answer_mask=self.answer_mask.to(device),
            fact=self.fact.to(device),
            direction=self.direction,
            split=self.split,
            prompt_len=self.prompt_len.to(device),
        )


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> Int[Tensor, "n width"]:
    """``sequences`` as rows of one tensor, each followed by ``pad_id`` up to the longest. Built in one
    call from Python lists: copying row by row into a tensor cost ~7× as much (43 against 6 µs a row
    on a 2 GHz CPU), paid per candidate answer when thousands are scored."""
    width = max(len(sequence) for sequence in sequences)
    return torch.tensor([list(sequence) + [pad_id] * (width - len(sequence)) for sequence in sequences],
                        dtype=torch.long)


def collate(examples: Sequence[Example], pad_id: int = 0) -> TokenizedFacts:
    """Right-pad examples into one :class:`TokenizedFacts`: row i is ``prompt ++ answer ++ pad`` and
    ``answer_mask[i, p]`` holds for ``len(prompt) ≤ p < len(prompt) + len(answer)``."""
    if not examples:
        raise FactError("no examples to tokenize: the selection of facts is empty")
    tokens = right_padded([e.prompt + e.answer for e in examples], pad_id)
    prompt_len = torch.tensor([len(e.prompt) for e in examples], dtype=torch.long)
    end = prompt_len + torch.tensor([len(e.answer) for e in examples], dtype=torch.long)
    positions = torch.arange(tokens.shape[1])
    return TokenizedFacts(
        tokens=tokens,
        answer_mask=(positions >= prompt_len[:, None]) & (positions < end[:, None]),
        fact=torch.tensor([e.fact for e in examples], dtype=torch.long),
        direction=tuple(e.direction for e in examples),
        split=tuple(e.split for e in examples),
        prompt_len=prompt_len,
    )


def tokenize(facts: FactSet, tokenizer: FactTokenizer, pad_id: int = 0) -> TokenizedFacts:
    """Every directed statement in play (:meth:`FactSet.statements`) as one padded batch."""
    return collate([tokenizer.example(facts, index, direction) for index, direction, _ in facts.statements()], pad_id)


__all__ = ["DIRECTIONS", "Example", "FactTokenizer", "TokenizedFacts", "collate", "right_padded", "tokenize"]
