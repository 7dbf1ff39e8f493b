"""How large the token worlds (:mod:`facts.token_worlds`) can be, checked without torch: the CLI refuses a size
before anything loads or any run folder is touched, with the world builders' own rule.

* A world of ``n`` k-token words per kind over ``n_alphabets`` disjoint alphabets of ``alphabet_size`` tokens
  needs n_alphabets · alphabet_size ≤ the vocabulary's entity tokens and n ≤ alphabet_size^k distinct words.
* A related-token chain (:func:`facts.token_worlds.related_words`) spends three tokens on its kinds' first tokens
  and needs ``n`` distinct second tokens from the rest: n ≤ entity tokens − 3.
"""

from __future__ import annotations

from facts.schema import FactError

N_ENTITY_TOKENS = 800
"""Entity tokens of the token worlds' vocabulary (:class:`facts.token_worlds.TokenVocab`)."""
ALPHABET_SIZE = 200
"""Tokens per kind (alphabet) of the reversal and chain worlds."""
RELATED_KINDS = 3
"""The related-token chain's kinds (x, y, z), each one fixed first token."""


def check_counts(n: int, k: int, n_alphabets: int, alphabet_size: int = ALPHABET_SIZE,
                 n_entity_tokens: int = N_ENTITY_TOKENS) -> None:
    """Refuse ``n`` distinct k-token words per alphabet that ``n_alphabets`` alphabets of ``alphabet_size`` tokens
    out of ``n_entity_tokens`` cannot hold."""
    if k < 1:
        raise FactError(f"entity length k must be ≥ 1, got {k}")
    if n < 1:
        raise FactError(f"the number of pairs must be ≥ 1, got {n}")
    if alphabet_size < 1:
        raise FactError(f"alphabet size must be ≥ 1, got {alphabet_size}")
    if n_alphabets * alphabet_size > n_entity_tokens:
        raise FactError(f"{n_alphabets} disjoint alphabets of {alphabet_size} tokens need "
                        f"{n_alphabets * alphabet_size} entity tokens; the vocabulary has {n_entity_tokens}")
    if n > alphabet_size**k:
        raise FactError(f"{n} distinct {k}-token words cannot be made from an alphabet of {alphabet_size} tokens "
                        f"(at most {alphabet_size ** k})")


def check_related(n: int, n_entity_tokens: int = N_ENTITY_TOKENS) -> None:
    """Refuse ``n`` related-token entities per kind that the vocabulary's second tokens cannot hold."""
    if n < 1:
        raise FactError(f"the number of triples must be ≥ 1, got {n}")
    if n > n_entity_tokens - RELATED_KINDS:
        raise FactError(f"{n} related-token entities per kind need {n} second tokens; the vocabulary has "
                        f"{n_entity_tokens - RELATED_KINDS}")
