"""The one fact schema every layer speaks.

A :class:`Fact` is a relation between two entities, stated in up to two directions:

* forward:  ``subject  relation          object``   ("Tom is the parent of John")
* reverse:  ``object   inverse_relation  subject``  ("John is the child of Tom")

Each direction carries a :data:`Split`: ``"train"`` (the model sees it), ``"heldout"``
(evaluated, never trained) or ``None`` (not part of the experiment). The reversal curse is
the gap between a trained forward direction and its held-out reverse.

A :class:`FactSet` is an ordered, validated collection of facts plus the name of the world
that made it and free-form metadata (generator parameters, seed).
"""

from __future__ import annotations

import operator
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal

Split = Literal["train", "heldout"]
Direction = Literal["forward", "reverse"]
SPLITS: tuple[str, ...] = ("train", "heldout")
DIRECTIONS: tuple[Direction, ...] = ("forward", "reverse")


class FactError(ValueError):
    """A fact or fact set is malformed; the message names the offending fact.

    ``facts`` holds the positions of the offending facts in their fact set, when known, so a
    reader can translate them into file lines.
    """

    def __init__(self, message: str, facts: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.facts = facts


def text_problem(value: object) -> str | None:
    """Why ``value`` cannot name an entity or relation (None when it can).

    A name must be a non-empty string without leading or trailing whitespace (" Tom" would be a
    second entity beside "Tom" that reads the same), a run of spaces inside it ("Ann  Lee" beside
    "Ann Lee": prompts are compared in words, runs of whitespace as one space,
    :func:`facts.language.in_words`), control characters, invisible format
    characters (zero-width spaces, byte-order marks, bidirectional marks; not the joiners
    :data:`JOINERS`), space-like characters but the plain space, line or paragraph separators, or
    lone surrogates (which cannot be written as UTF-8).
    """
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-empty string, got {value!r}"
    if value != value.strip():
        return f"has leading or trailing whitespace: {value!r}"
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and char not in JOINERS):
            return f"holds the invisible character U+{ord(char):04X} at position {position}: {value!r}"
        if category == "Zs" and char != " ":
            return f"holds the space-like character U+{ord(char):04X} at position {position}: {value!r}; use a plain space"
    run = value.find("  ")
    if run >= 0:
        in_words = " ".join(value.split())
        return (f"holds a run of spaces at position {run}: {value!r}; names are compared in words (a run of "
                f"whitespace reads as one space), so it would be a second name that reads as {in_words!r}; "
                f"write one space")
    return None


def begins_with(name: str, other: str) -> bool:
    """Whether ``name`` begins with the whole of ``other`` and goes on after a word's end: "Robert De Niro Sr."
    and "Stanley Tucci, Sr." begin with "Robert De Niro" and "Stanley Tucci", "e1 e5" with "e1"; "Anna Lee" does
    not begin with "Ann", nor "e12" with "e1" (a token world's two tokens), nor a name with itself."""
    return len(name) > len(other) and name.startswith(other) and not name[len(other)].isalnum()


JOINERS = ("\u200c", "\u200d")
"""Zero-width (non-)joiners: format characters that some scripts (Persian, Devanagari) and emoji
need inside a name; every other format character (U+200B zero-width space, U+2060 word joiner,
U+00AD soft hyphen, U+FEFF, bidirectional marks) is refused, as it makes two names that read the
same."""

PER_FACT_META: tuple[str, ...] = ("line", "can_reverse", "child_prediction")
"""The meta keys that hold one entry per fact, in fact order, which :meth:`FactSet.first` cuts with the facts: the
file line each fact was read from (``line``: :func:`facts.celebrity.load_celebrity_pairs`,
:func:`facts.questions.load_fact_csv`, :func:`facts.berglund.experiment_facts`) and the celebrity file's two
columns that are no part of a fact (``can_reverse``, ``child_prediction``). Every other meta list (a world's
``groups``, the celebrity reader's ``duplicate_lines``) is about the set as a whole, whatever its length."""

IDENTITY_GROUP = "identity"
"""The group of an Identity Bridge statement "A r A" (:func:`analyses.mitigations.identity_statements`): the one
fact whose subject and object may be the same entity (:meth:`Fact.names_problem`)."""


@dataclass(frozen=True)
class Fact:
    """One relation between two entities and which of its directions are trained / held out.

    ``context`` marks an in-context fact: the reverse prompt restates the forward statement
    before asking the reverse question ("A → B <-> B ← ?"), so the answer can be copied.

    Subject and object must be two entities that are told apart (:meth:`names_problem`).
    """

    subject: str
    relation: str
    object: str
    inverse_relation: str | None = None
    forward: Split | None = "train"
    reverse: Split | None = None
    group: str = ""
    context: bool = False

    def __post_init__(self) -> None:
        for name in ("subject", "relation", "object", "inverse_relation"):
            value = getattr(self, name)
            problem = None if value is None and name == "inverse_relation" else text_problem(value)
            if problem:
                raise FactError(f"fact {self._label()}: {name} {problem}")
        problem = self.names_problem()
        if problem:
            raise FactError(f"fact {self._label()}: {problem}")
        if not isinstance(self.group, str):
            raise FactError(f"fact {self._label()}: group must be a string, got {self.group!r}")
        if not isinstance(self.context, bool):
            raise FactError(f"fact {self._label()}: context must be true or false, got {self.context!r}")
        for name in ("forward", "reverse"):
            value = getattr(self, name)
            if value is not None and value not in SPLITS:
                raise FactError(
                    f"fact {self._label()}: {name} split must be one of {SPLITS} or null, got {value!r}"
                )
        if self.reverse is not None and not self.inverse_relation:
            raise FactError(f"fact {self._label()}: a reverse split needs an inverse_relation")
        if self.forward is None and self.reverse is None:
            raise FactError(f"fact {self._label()}: neither direction is trained or held out")
        if self.context and self.reverse is None:
            raise FactError(f"fact {self._label()}: an in-context fact needs a reverse direction")

    def _label(self) -> str:
        return f"({self.subject!r} {self.relation!r} {self.object!r})"

    def names_problem(self) -> str | None:
        """Why subject and object cannot be told apart (None when they can).

        Refused: the same entity on both sides (its questions' answer is the name asked about, which a model that
        copies from the prompt gets right), except in an Identity Bridge statement (group :data:`IDENTITY_GROUP`),
        which states exactly that; and one name beginning with the other (:func:`begins_with`: "Robert De Niro Sr."
        and "Robert De Niro"), whose answer is the name asked about, or that name and more. The celebrity reader
        leaves such pairs out (:mod:`facts.celebrity`)."""
        if self.subject == self.object:
            if self.group == IDENTITY_GROUP:
                return None
            return (f"subject and object are the same entity, so its answer is the name it asks about; only an "
                    f"Identity Bridge statement (group {IDENTITY_GROUP!r}) names one entity twice")
        for longer, shorter in ((self.subject, self.object), (self.object, self.subject)):
            if begins_with(longer, shorter):
                return (f"{longer!r} begins with {shorter!r}, so one side's answer is the name asked about (or "
                        f"that name and more); name them apart")
        return None

    def split(self, direction: Direction) -> Split | None:
        """The split of one direction (``None`` when that direction is not in play)."""
        return self.forward if direction == "forward" else self.reverse

    def given_and_answer(self, direction: Direction) -> tuple[str, str, str]:
        """``(given entity, relation, answer entity)`` as the sentence of ``direction`` reads."""
        if direction == "forward":
            return self.subject, self.relation, self.object
        if self.inverse_relation is None:
            raise FactError(f"fact {self._label()} has no inverse relation, so no reverse direction")
        return self.object, self.inverse_relation, self.subject

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, in declaration order (what ``dataclasses.asdict`` gives for these flat fields,
        without its recursive copy: a fact file of thousands of facts is written, and hashed, per run)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Fact":
        """Build a fact from a JSON-like mapping; unknown or missing keys raise :class:`FactError`."""
        if not isinstance(record, dict):
            raise FactError(f"a fact must be a JSON object, got {type(record).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(key) for key in set(record) - known)
        if unknown:
            raise FactError(f"unknown fact field(s) {unknown}; expected a subset of {sorted(known)}")
        missing = [k for k in ("subject", "relation", "object") if k not in record]
        if missing:
            raise FactError(f"fact is missing required field(s) {missing}")
        return cls(**record)


@dataclass(frozen=True)
class FactSet:
    """An ordered, non-empty, conflict-free collection of facts.

    Refused, with both facts named (:attr:`FactError.facts`):

    * a conflict: the same (given entity, relation) leads to different answers in directions
      that are in play (trained or held out): a model could not fit both, and a probe scoring
      "the" answer would report nonsense. In-context facts are exempt, since their answer
      comes from the prompt;
    * a repeated statement: one directed statement ("e2 ← e1") stated by two facts, or by both
      directions of one fact. Trained in one place and held out in another, the held-out
      statement would be trained; in the same split, it would count twice;
    * two entities that differ only in Unicode normalisation ("José" in NFC and in NFD): they
      read the same but tokenize differently.
    """

    facts: tuple[Fact, ...]
    world: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "facts", tuple(self.facts))
        except TypeError:
            raise FactError(f"a fact set needs a sequence of facts, got {type(self.facts).__name__}") from None
        if not isinstance(self.world, str):
            raise FactError(f"a fact set's world must be a string, got {self.world!r}")
        if not isinstance(self.meta, dict):
            raise FactError(f"fact set {self.world!r}: meta must be a mapping, got {type(self.meta).__name__}")
        if not self.facts:
            raise FactError(f"fact set {self.world!r} is empty")
        answers: dict[tuple[str, str], tuple[int, str]] = {}
        statements: dict[tuple[str, ...], tuple[int, Direction, Split]] = {}
        for index, fact in enumerate(self.facts):
            if not isinstance(fact, Fact):
                raise FactError(f"fact set {self.world!r}: item {index} is a {type(fact).__name__}, not a Fact",
                                (index,))
            for direction in DIRECTIONS:
                split = fact.split(direction)
                if split is None:
                    continue
                given, relation, answer = fact.given_and_answer(direction)
                restated = (fact.subject, fact.relation, fact.object) if fact.context else ()
                statement = (*restated, given, relation, answer)
                if statement in statements:
                    self._repeated(statement, statements[statement], (index, direction, split))
                statements[statement] = (index, direction, split)
                if fact.context:
                    continue
                other, known = answers.setdefault((given, relation), (index, answer))
                if known != answer:
                    raise FactError(
                        f"fact set {self.world!r}: facts {other} and {index} conflict: "
                        f"{given!r} {relation!r} leads to both {known!r} and {answer!r}",
                        (other, index),
                    )
        self._check_normalisation()

    def _repeated(self, statement: tuple[str, ...], first: tuple[int, Direction, Split],
                  second: tuple[int, Direction, Split]) -> None:
        words = " ".join(repr(part) for part in statement)
        where = (f"fact {first[0]} states it in both directions" if first[0] == second[0]
                 else f"facts {first[0]} ({first[1]}) and {second[0]} ({second[1]}) both state it")
        if first[2] != second[2]:
            raise FactError(
                f"fact set {self.world!r}: statement {words} is both trained and held out ({where}): "
                f"the held-out statement would be trained",
                (first[0], second[0]),
            )
        raise FactError(f"fact set {self.world!r}: statement {words} is repeated ({where}); "
                        f"keep one", (first[0], second[0]))

    def _check_normalisation(self) -> None:
        seen: dict[str, tuple[str, int]] = {}
        for index, fact in enumerate(self.facts):
            for entity in (fact.subject, fact.object):
                first, at = seen.setdefault(unicodedata.normalize("NFC", entity), (entity, index))
                if first != entity:
                    raise FactError(
                        f"fact set {self.world!r}: entities {ascii(first)} (fact {at}) and {ascii(entity)} (fact "
                        f"{index}) differ only in Unicode normalisation (NFC vs NFD); write both the same way",
                        (at, index),
                    )

    def __len__(self) -> int:
        return len(self.facts)

    def __iter__(self) -> Iterator[Fact]:
        return iter(self.facts)

    def __getitem__(self, index: int) -> Fact:
        """Fact number ``index`` (0 to ``len − 1``; any integer type, such as a table's numpy column). A negative
        index, which a tuple reads from the end (-1: the last fact), and one past the last fact are refused with
        :class:`FactError` naming it and the count: a fact number given from outside that is wrong would else
        answer for another fact."""
        try:
            number = operator.index(index)
        except TypeError:
            raise FactError(f"fact set {self.world!r}: a fact index is an integer, got {index!r}") from None
        if not 0 <= number < len(self.facts):
            raise FactError(f"fact set {self.world!r}: no fact {number} among its {len(self.facts)} (numbered 0 to "
                            f"{len(self.facts) - 1})")
        return self.facts[number]

    def statements(self) -> Iterable[tuple[int, Direction, Split]]:
        """Every ``(fact index, direction, split)`` in play, in a fixed order."""
        for index, fact in enumerate(self.facts):
            for direction in DIRECTIONS:
                split = fact.split(direction)
                if split is not None:
                    yield index, direction, split

    def first(self, n: int) -> "FactSet":
        """The first ``n`` facts (every fact if there are fewer), for a quick look at a large set.

        ``meta`` is kept with ``meta["limit"] = n``; its lists of one entry per fact (:data:`PER_FACT_META`) are cut
        to the facts kept, and one of those that is no list of one entry per fact is refused (it could not be cut to
        the facts kept).
        """
        if n < 1:
            raise FactError(f"limit must be ≥ 1, got {n}")
        kept = self.facts[:n]
        meta = {key: self._per_fact(key)[: len(kept)] if key in PER_FACT_META else value
                for key, value in self.meta.items()}
        return FactSet(kept, world=self.world, meta={**meta, "limit": n})

    def _per_fact(self, key: str) -> list[Any]:
        """``meta[key]``, a key of :data:`PER_FACT_META`, or :class:`FactError` unless it holds one entry per fact."""
        value = self.meta[key]
        if not isinstance(value, list) or len(value) != len(self.facts):
            held = f"{len(value)} entries" if isinstance(value, list) else f"a {type(value).__name__}"
            raise FactError(f"fact set {self.world!r}: meta {key!r} holds {held} for {len(self.facts)} facts; it "
                            f"holds one entry per fact (PER_FACT_META): remove it from the header if the facts were "
                            f"edited since it was written")
        return value

    def check_per_fact_meta(self) -> None:
        """Refuse, with :class:`FactError`, a meta list of :data:`PER_FACT_META` that does not hold one entry per
        fact (a file's facts edited by hand after its header was written): what reads it (:meth:`first`, a line
        named in an error) would read another fact's entry, or fail late."""
        for key in PER_FACT_META:
            if key in self.meta:
                self._per_fact(key)

    def count(self, split: Split) -> int:
        """Number of directed statements in ``split``."""
        return sum(1 for _, _, s in self.statements() if s == split)

    def entities(self) -> list[str]:
        """All distinct entities, in order of first appearance."""
        return list(dict.fromkeys(e for f in self.facts for e in (f.subject, f.object)))


def check_answer_prefixes(facts: FactSet) -> None:
    """Raise :class:`FactError` naming both facts (:attr:`FactError.facts`) where one answer begins with another
    answer of its kind (:func:`begins_with`: "Lee Club House" and "Lee Club").

    An answer's kind is its slot, as controls are drawn (:func:`facts.language.answers_of_kind`): every object where a
    forward statement is in play, every subject where a reverse one is. Each answer of a kind is a control of the
    others' questions, and a model's log-probability of "Lee Club" counts " House" among its continuations, so
    the two would be scored each as the other. Readers of user fact files call this (:func:`facts.io.load_jsonl`,
    :func:`facts.questions.load_fact_csv`); the built-in worlds never hold such a pair (a token world's "e1" and
    "e12" are two tokens, not a name and more)."""
    for direction in DIRECTIONS:
        if any(fact.split(direction) is not None for fact in facts):
            _check_kind_prefixes(facts, direction)


def _check_kind_prefixes(facts: FactSet, direction: Direction) -> None:
    """:func:`check_answer_prefixes` for the answers of ``direction``: sorted, the names that begin with one
    follow it at once, so each is compared with those only."""
    kind = "object" if direction == "forward" else "subject"
    first: dict[str, int] = {}
    for index, fact in enumerate(facts):
        first.setdefault(getattr(fact, kind), index)
    ordered = sorted(first)
    for position, shorter in enumerate(ordered):
        for longer in ordered[position + 1:]:
            if not longer.startswith(shorter):
                break
            if begins_with(longer, shorter):
                raise FactError(
                    f"fact set {facts.world!r}: the {kind} {longer!r} (fact {first[longer]}) begins with the {kind} "
                    f"{shorter!r} (fact {first[shorter]}): answers of one kind are each other's controls, and the "
                    f"log-probability of {shorter!r} counts {longer!r} as one of its continuations; name them apart",
                    tuple(sorted((first[shorter], first[longer]))),
                )
