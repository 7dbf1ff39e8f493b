"""The paper's token-level worlds (Zhu et al. 2024, section 5; docs/SCIENCE.md section 4).

Vocabulary: a few reserved relation tokens followed by ``n_entity_tokens`` entity tokens.
Entity token ``e17`` has id ``len(RELATIONS) + 17``; a k-token entity is written as its
tokens joined by spaces (``"e17 e250"``), so a fact set saved as JSONL is self-describing.

* :func:`reversal_world`: pairs (x_i, y_i) of k-token words over two disjoint alphabets;
  sentences "x_i → y_i" (forward) and "y_i ← x_i" (reverse). 70% of pairs train both
  directions; each other pair trains one random direction and holds out the other.
* :func:`chain_world`: triples with "x → y", "y → z" always trained and "x ⇝ z" trained for
  70% of triples, held out for the rest.
* :func:`in_context_world`: "x → y <-> y ← x" over every (x, y) in a 100 × 10 grid, loss on
  the last x; 70% of sequences train, 30% are held out (reversal from context).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from facts.schema import Direction, Fact, FactError, FactSet
from facts.tokens import Example
from facts.world_sizes import ALPHABET_SIZE, N_ENTITY_TOKENS, check_counts, check_related

FORWARD, BACKWARD, LEADS_TO, RESTATE = "→", "←", "⇝", "<->"
RELATIONS: tuple[str, ...] = (FORWARD, BACKWARD, LEADS_TO, RESTATE)
_ENTITY_TOKEN = re.compile(r"e(?:0|[1-9][0-9]*)")
TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class TokenVocab:
    """Maps entity and relation names of token worlds to ids: relations first, then entities."""

    answers_read_alone: ClassVar[bool] = True  # an entity's ids are the same after any prompt
    n_entity_tokens: int = N_ENTITY_TOKENS
    relations: tuple[str, ...] = RELATIONS

    @property
    def d_vocab(self) -> int:
        return len(self.relations) + self.n_entity_tokens

    def entity_token(self, index: int) -> str:
        return f"e{index}"

    @functools.lru_cache(maxsize=65536)
    def entity_ids(self, entity: str) -> tuple[int, ...]:
        """Ids of an entity written as tokens ``e<index>`` joined by single spaces (cached).

        Only that spelling is accepted (ASCII digits, no leading zeros, no stray spaces), so each
        token sequence has one name: "e7" and "e007" cannot pass as two different entities.
        """
        ids = []
        for piece in entity.split(" "):
            if not _ENTITY_TOKEN.fullmatch(piece):
                raise FactError(f"entity {entity!r}: token {piece!r} is not of the form e<index> "
                                f"(e0, e1, ...; tokens joined by single spaces)")
            index = int(piece[1:])
            if index >= self.n_entity_tokens:
                raise FactError(
                    f"entity {entity!r}: token {piece!r} is outside the vocabulary of "
                    f"{self.n_entity_tokens} entity tokens"
                )
            ids.append(len(self.relations) + index)
        return tuple(ids)

    def relation_id(self, relation: str) -> int:
        try:
            return self.relations.index(relation)
        except ValueError:
            raise FactError(f"relation {relation!r} is not one of the reserved tokens {self.relations}") from None

    def token_name(self, token_id: int) -> str:
        """Readable name of any id (for axis labels)."""
        if token_id < len(self.relations):
            return self.relations[token_id]
        return self.entity_token(token_id - len(self.relations))

    def example(self, facts: FactSet, index: int, direction: Direction, answer: str | None = None) -> Example:
        """``given relation`` → ``answer``; in-context facts restate "s r o <->" first.

        An entity or relation outside the vocabulary raises :class:`FactError` naming the fact.
        """
        fact = facts[index]
        given, relation, true_answer = fact.given_and_answer(direction)
        answer = true_answer if answer is None else answer
        try:
            prompt = self.entity_ids(given) + (self.relation_id(relation),)
            if fact.context:
                restated = self.entity_ids(fact.subject) + (self.relation_id(fact.relation),)
                prompt = restated + self.entity_ids(fact.object) + (self.relation_id(RESTATE),) + prompt
            answer_ids = self.entity_ids(answer)
        except FactError as error:
            raise FactError(f"fact {index} ({direction}): {error}", (index,)) from None
        split = fact.split(direction)
        if split is None:  # an assert would let split=None through under python -O
            raise FactError(f"fact {index} ({direction}): this direction is not in play (neither trained nor held "
                            f"out), so it has no statement to score", (index,))
        return Example(prompt, answer_ids, index, direction, split)


def _words(alphabet: list[int], n: int, k: int, generator: torch.Generator, vocab: TokenVocab) -> list[str]:
    """``n`` distinct k-token words over ``alphabet`` (k = 1: a permutation of the alphabet)."""
    if k == 1:
        order = torch.randperm(len(alphabet), generator=generator)[:n].tolist()
        return [vocab.entity_token(alphabet[i]) for i in order]
    words: dict[tuple[int, ...], None] = {}
    while len(words) < n:
        draw = torch.randint(len(alphabet), (k,), generator=generator).tolist()
        words.setdefault(tuple(alphabet[i] for i in draw), None)
    return [" ".join(vocab.entity_token(t) for t in word) for word in words]


def _alphabets(count: int, size: int, generator: torch.Generator, vocab: TokenVocab) -> list[list[int]]:
    tokens = torch.randperm(vocab.n_entity_tokens, generator=generator).tolist()
    return [sorted(tokens[i * size : (i + 1) * size]) for i in range(count)]


def _n_trained(n: int) -> int:
    return math.floor(TRAIN_FRACTION * n + 0.5)


def reversal_world(
    n_pairs: int = 200, k: int = 1, seed: int = 0, alphabet_size: int = ALPHABET_SIZE, vocab: TokenVocab = TokenVocab()
) -> FactSet:
    """The reversal task: forward "x → y", reverse "y ← x"; 70% both trained, 30% one held out.

    With the defaults (200 pairs, k = 1): 340 trained sentences and 60 held-out ones.
    """
    check_counts(n_pairs, k, 2, alphabet_size, vocab.n_entity_tokens)
    generator = torch.Generator().manual_seed(seed)
    x_alphabet, y_alphabet = _alphabets(2, alphabet_size, generator, vocab)
    xs = _words(x_alphabet, n_pairs, k, generator, vocab)
    ys = _words(y_alphabet, n_pairs, k, generator, vocab)
    n_both = _n_trained(n_pairs)
    order = torch.randperm(n_pairs, generator=generator).tolist()
    both = set(order[:n_both])
    trained_direction = torch.randint(2, (n_pairs,), generator=generator).tolist()
    facts = []
    for i in range(n_pairs):
        if i in both:
            forward, reverse, group = "train", "train", "both"
        elif trained_direction[i] == 0:
            forward, reverse, group = "train", "heldout", "one-way"
        else:
            forward, reverse, group = "heldout", "train", "one-way"
        facts.append(Fact(xs[i], FORWARD, ys[i], BACKWARD, forward, reverse, group))
    meta = {"n_pairs": n_pairs, "k": k, "seed": seed, "alphabet_size": alphabet_size}
    return FactSet(tuple(facts), world="reversal", meta=meta)


def related_words(n: int, generator: torch.Generator, vocab: TokenVocab) -> list[list[str]]:
    """Three kinds of ``n`` two-token entities "K t" for :func:`chain_world`'s ``related`` option:
    each kind's first token K is one fixed token (the kind's, shared by all its entities), the second
    ``n`` distinct tokens drawn from every other entity token, independently per kind (so a second
    token may recur in another kind, told apart by K)."""
    check_related(n, vocab.n_entity_tokens)
    tokens = torch.randperm(vocab.n_entity_tokens, generator=generator).tolist()
    kinds, pool = tokens[:3], tokens[3:]
    return [[f"{vocab.entity_token(kind)} {vocab.entity_token(pool[i])}"
             for i in torch.randperm(len(pool), generator=generator)[:n].tolist()] for kind in kinds]


def chain_world(
    n_triples: int = 200, k: int = 1, seed: int = 0, alphabet_size: int = ALPHABET_SIZE,
    vocab: TokenVocab = TokenVocab(),
    n_heldout: int | None = None, related: bool = False,
) -> FactSet:
    """The chain task: "x → y" and "y → z" trained; "x ⇝ z" trained for 70%, held out for 30%.

    ``n_heldout``: exactly that many triples hold "x ⇝ z" out, the other ``n_triples − n_heldout``
    train it (Zhu et al.'s ``num_train``). ``related``: Zhu et al.'s related-token variant
    (``train_chain_related_tokens.py``): entities of two tokens whose first is fixed per kind
    (:func:`related_words`; ``k`` and ``alphabet_size`` unused).
    """
    if n_heldout is not None and not 0 < n_heldout < n_triples:
        raise FactError(f"n_heldout must be in 1…{n_triples - 1} (n_triples − 1), got {n_heldout}")
    generator = torch.Generator().manual_seed(seed)
    if related:
        xs, ys, zs = related_words(n_triples, generator, vocab)
        k = 2
    else:
        check_counts(n_triples, k, 3, alphabet_size, vocab.n_entity_tokens)
        alphabets = _alphabets(3, alphabet_size, generator, vocab)
        xs, ys, zs = (_words(a, n_triples, k, generator, vocab) for a in alphabets)
    order = torch.randperm(n_triples, generator=generator).tolist()
    trained = set(order[: _n_trained(n_triples) if n_heldout is None else n_triples - n_heldout])
    facts = []
    for i in range(n_triples):
        group = "chain-trained" if i in trained else "chain-heldout"
        facts.append(Fact(xs[i], FORWARD, ys[i], group=group))
        facts.append(Fact(ys[i], FORWARD, zs[i], group=group))
        facts.append(Fact(xs[i], LEADS_TO, zs[i], forward="train" if i in trained else "heldout", group=group))
    meta = {"n_triples": n_triples, "k": k, "seed": seed, "alphabet_size": alphabet_size}
    if n_heldout is not None:
        meta["n_heldout"] = n_heldout
    if related:
        meta = {"n_triples": n_triples, "k": k, "seed": seed, "related": True, **(
            {"n_heldout": n_heldout} if n_heldout is not None else {})}
    return FactSet(tuple(facts), world="chain", meta=meta)


def in_context_world(
    n_x: int = 100, n_y: int = 10, seed: int = 0, vocab: TokenVocab = TokenVocab()
) -> FactSet:
    """In-context reversal: "x → y <-> y ← x" for every (x, y); 70% train, 30% held out.

    Each x appears with many different y, so memorising pairs cannot solve the task: the
    model must learn to copy x from the context.
    """
    if n_x < 1 or n_y < 1:
        raise FactError(f"in-context world needs n_x ≥ 1 and n_y ≥ 1, got {n_x} and {n_y}")
    if n_x + n_y > vocab.n_entity_tokens:
        raise FactError(f"{n_x} + {n_y} entity tokens requested; the vocabulary has {vocab.n_entity_tokens}")
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randperm(vocab.n_entity_tokens, generator=generator).tolist()
    xs = [vocab.entity_token(t) for t in tokens[:n_x]]
    ys = [vocab.entity_token(t) for t in tokens[n_x : n_x + n_y]]
    pairs = [(x, y) for x in xs for y in ys]
    order = torch.randperm(len(pairs), generator=generator).tolist()
    trained = set(order[: _n_trained(len(pairs))])
    facts = tuple(
        Fact(x, FORWARD, y, BACKWARD, forward=None, reverse="train" if i in trained else "heldout",
             group="in-context", context=True)
        for i, (x, y) in enumerate(pairs)
    )
    return FactSet(facts, world="in-context", meta={"n_x": n_x, "n_y": n_y, "seed": seed})


WORLDS = {"reversal": reversal_world, "chain": chain_world, "in-context": in_context_world}
