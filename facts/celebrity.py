"""Reader for the celebrity parent/child pairs of Berglund et al. (2023), experiment 2.

The CSV has one row per (child, parent) pair with columns ``child, parent, parent_type,
child_prediction, can_reverse`` (names may hold commas, so it is read with :mod:`csv`). Each
row becomes ``Fact(subject=child, relation=parent_type, object=parent,
inverse_relation=f"{parent_type} of", group=parent_type)``, both directions held out (these
facts are only evaluated):

* forward, "mother":   Jennifer Lawrence → Karen Lawrence  ("Who is Jennifer Lawrence's mother?")
* reverse, "mother of": Karen Lawrence → Jennifer Lawrence ("Name a child of Karen Lawrence.")

Relations are specific to the parent type, so a child's mother and father are two questions with
one answer each. How the file's irregularities are handled:

* one parent, several children (17 parents, e.g. the Hemsworth brothers' mother): the reverse
  question "Name a child of P" has several right answers, which a one-answer probe cannot score.
  Every pair keeps its forward question; the reverse stays held out only on the parent's first
  row in the file, later siblings get ``reverse=None``. ``meta["one_to_many"]`` lists them all.
* a repeated pair (same child, parent type and parent; Rebecca Romijn's two rows appear twice):
  the first row counts, the line numbers of later ones are kept in ``meta["duplicate_lines"]``.
* one person recorded as both mother and father of a child (16 cases, errors in the source):
  kept as two facts, named in ``meta["mother_and_father"]``. Both forward questions are asked ("Who is
  C's mother?", "Who is C's father?"), the reverse "Name a child of P." once, on the first of the two
  rows (the second gets ``reverse=None``): asked twice, one statement would count twice.
* one person recorded as the mother of one child and the father of another: refused, naming both
  rows, since "Name a child of P" is asked alike for a mother and a father and would have two
  different answers from the two parent types. Only each type's first child is compared: a later
  sibling is one-to-many, as above (the shipped file's Tell Schreiber, mother and father of Pablo and
  father of Liev, is asked once, answer Pablo, and neither child is drawn as a control for the other).

* a name that begins with the other one ("Robert De Niro Sr.", father of "Robert De Niro"; 9 pairs in the
  shipped file): the pair is asked neither way and left out. Asked about the longer name ("Name a child of
  Robert De Niro Sr."), the answer is the prompt's own name, and an answer's log-probability sums its own tokens
  only, so it counts every continuation, the copied name among them: a model that copies the name it is asked
  about would be scored right. Asked about the shorter ("Who is Robert De Niro's father?"), the answer is the
  copied name and a suffix, against controls that share nothing with the prompt. ``meta["answer_in_question"]``
  lists their lines.

Blank lines are skipped; any other row needs all five fields on one line, non-empty names that
differ (no one is their own parent), a parent type of mother/father and can_reverse True/False
(any case), or :class:`FactError` names file:line. Header names must be distinct. A leading
byte-order mark and CRLF line ends are accepted; names are stripped and NFC-normalised (so
"José" typed with a combining accent is the same person as "José").

``meta["line"][i]``, ``meta["can_reverse"][i]`` (GPT-4 named this child, as recorded) and
``meta["child_prediction"][i]`` (the child GPT-4 named, "" when it failed) belong to fact ``i``
(:data:`facts.schema.PER_FACT_META`: :meth:`facts.schema.FactSet.first` cuts them with the facts, and keeps the
other lists whole).
"""

from __future__ import annotations

import os
import unicodedata
from importlib import resources
from pathlib import Path

from facts.io import checked_answers, located, read_csv_rows
from facts.schema import Fact, FactError, FactSet, begins_with  # begins_with: the rule the schema refuses too

CSV_ENV = "REVLENS_CELEBRITY_CSV"
"""Environment variable that points at a copy of ``parent_child_pairs.csv``."""
DEFAULT_CSV = Path(str(resources.files("facts").joinpath("data/parent_child_pairs.csv")))
"""The copy shipped inside the package as package data (``facts/data/``, see its README for the
source); an installed distribution unpacks it to a real file, so a path is enough."""
COLUMNS: tuple[str, ...] = ("child", "parent", "parent_type", "child_prediction", "can_reverse")
PARENT_TYPES: tuple[str, ...] = ("mother", "father")
_BOOLEANS = {"true": True, "false": False}
_OTHER_PARENT = {"mother": "father", "father": "mother"}

QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "mother": ("Q: Who is {given}'s mother?\nA: {answer}",),
    "father": ("Q: Who is {given}'s father?\nA: {answer}",),
    "mother of": ("Q: Name a child of {given}.\nA: {answer}",),
    "father of": ("Q: Name a child of {given}.\nA: {answer}",),
}
"""Question-and-answer prompts, as Berglund et al. asked them, for either direction."""

COMPLETION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "mother": ("{given}'s mother is {answer}.",),
    "father": ("{given}'s father is {answer}.",),
    "mother of": ("{given} is the mother of {answer}.",),
    "father of": ("{given} is the father of {answer}.",),
}
"""Plain sentences to complete, for base models that do not follow questions."""

TEMPLATES = QUESTION_TEMPLATES
"""The prompts every command asks celebrity facts with (``revlens probe`` and, by default,
``revlens check-asymmetry``), so one fact gets one log-probability whichever command scores it."""


def celebrity_csv_path(path: str | os.PathLike[str] | None = None) -> Path:
    """``path`` if given, else ``$REVLENS_CELEBRITY_CSV``, else the copy shipped in the package."""
    if path is not None:
        return Path(path)
    if os.environ.get(CSV_ENV):
        return Path(os.environ[CSV_ENV])
    if DEFAULT_CSV.is_file():
        return DEFAULT_CSV
    raise FactError(
        f"no celebrity CSV found at {DEFAULT_CSV}; pass a path to parent_child_pairs.csv "
        f"or set {CSV_ENV}"
    )


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` for each data row, every column present, stripped and NFC-normalised.

    ``line`` is where the row starts; a row spanning lines (a quoted field left open) is refused
    (:func:`facts.io.read_csv_rows`)."""
    header, rows = read_csv_rows(path, "celebrity CSV", COLUMNS)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise FactError(f"{path}: missing column(s) {missing}; the header has {header}")
    if not rows:
        raise FactError(f"{path}: holds no pairs")
    return [(line, {c: unicodedata.normalize("NFC", row[c].strip()) for c in COLUMNS})
            for line, row in ((line, dict(zip(header, fields))) for line, fields in rows)]


def load_celebrity_pairs(path: str | os.PathLike[str] | None = None) -> FactSet:
    """The parent/child pairs as a held-out fact set (see the module docstring for the rules)."""
    path = celebrity_csv_path(path)
    facts: list[Fact] = []
    lines: list[int] = []
    can_reverse: list[bool] = []
    predictions: list[str] = []
    parent_of: dict[tuple[str, str], tuple[str, int]] = {}
    children: dict[tuple[str, str], list[str]] = {}
    reverse_answer: dict[str, tuple[str, str, int]] = {}
    duplicates: list[int] = []
    both: list[str] = []
    in_question: list[int] = []
    for line, row in _read_rows(path):
        child, parent, parent_type = row["child"], row["parent"], row["parent_type"]
        if not child or not parent:
            raise FactError(f"{path}:{line}: child and parent must be non-empty, got {child!r} and {parent!r}")
        if child == parent:
            raise FactError(f"{path}:{line}: {child!r} is recorded as their own {parent_type}")
        if parent_type not in PARENT_TYPES:
            raise FactError(f"{path}:{line}: parent_type must be one of {PARENT_TYPES}, got {parent_type!r}")
        if row["can_reverse"].lower() not in _BOOLEANS:
            raise FactError(f"{path}:{line}: can_reverse must be True or False, got {row['can_reverse']!r}")
        known, known_line = parent_of.setdefault((child, parent_type), (parent, line))
        if known != parent:
            raise FactError(
                f"{path}:{line}: {child!r} has {parent_type} {parent!r} here and {known!r} on line {known_line}"
            )
        if known_line != line:
            duplicates.append(line)
            continue
        if parent_of.get((child, _OTHER_PARENT[parent_type]), ("",))[0] == parent:
            both.append(parent)
        siblings = children.setdefault((parent, parent_type), [])
        siblings.append(child)
        reverse = None
        if len(siblings) == 1:  # "Name a child of P." is one prompt for a mother and a father: it needs one answer
            asked, asked_type, asked_line = reverse_answer.setdefault(parent, (child, parent_type, line))
            if asked != child:
                raise FactError(f"{path}:{asked_line} and {path}:{line}: {parent!r} is the {asked_type} of {asked!r} "
                                f"on line {asked_line} and the {parent_type} of {child!r} on line {line}, so the "
                                f"reverse question 'Name a child of {parent}.' would have two different answers; "
                                f"fix the parent type")
            reverse = "heldout" if asked_line == line else None  # asked once, on the parent's first row
        if begins_with(child, parent) or begins_with(parent, child):  # a copy of the name asked about: either way
            in_question.append(line)
            continue
        forward = "heldout"
        try:
            facts.append(Fact(child, parent_type, parent, f"{parent_type} of", forward, reverse, parent_type))
        except FactError as error:
            raise FactError(f"{path}:{line}: {error}") from None
        lines.append(line)
        can_reverse.append(_BOOLEANS[row["can_reverse"].lower()])
        predictions.append(row["child_prediction"])
    one_to_many = [
        {"parent": parent, "relation": f"{parent_type} of", "children": kids}
        for (parent, parent_type), kids in children.items()
        if len(kids) > 1
    ]
    meta = {
        "source": str(path),
        "rows": len(facts) + len(duplicates) + len([line for line in in_question if line not in lines]),
        "line": lines,
        "can_reverse": can_reverse,
        "child_prediction": predictions,
        "duplicate_lines": duplicates,
        "one_to_many": one_to_many,
        "mother_and_father": both,
        "answer_in_question": in_question,
    }
    try:
        return checked_answers(FactSet(tuple(facts), world="celebrity", meta=meta))  # no answer begins with another
    except FactError as error:
        raise located(error, path, lines) from None
