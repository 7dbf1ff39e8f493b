"""Fine-tuning data and test questions in Berglund et al.'s protocol, from any fact source.

A :class:`QuestionSet` is what ``revlens finetune-facts`` trains on and asks:

* ``train``: prompt/completion pairs, each a paraphrase of one *trained statement* (a fact in the
  direction it is trained), in paraphrase order, so "the first N paraphrases" is well defined;
* ``questions``: one per test prompt, in one of four settings (:data:`SETTINGS`):

  - ``forward_trained_paraphrase``: the statement's first training paraphrase (memorisation);
  - ``forward_heldout_paraphrase``: the trained direction in words never trained on;
  - ``reverse``: the other direction (held out);
  - ``in_context_reverse``: the reverse question after the statement's trained sentence.

Each question carries its ``pool``: the answers of the same kind it is compared with (random
controls are drawn from the other answers of that pool: names for a name, descriptions for a
description), and ``extra_controls``, controls that come with the data (the name of Berglund's
``*_randomized`` file for the same prompt).

Sources: a :class:`~facts.schema.FactSet` with sentence templates (:func:`questions_from_facts`:
the built-in people world, a fact JSONL, a CSV from :func:`load_fact_csv`), or Berglund et al.'s
experiment-1 folder (:func:`facts.berglund.load_experiment_folder`). Templates files
(:func:`load_templates`) are JSONL, one ``{"relation", "split", "template"}`` per line.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from facts.io import checked_answers, located, read_csv_rows, read_json_lines
from facts.language import GROUP_SPLITS, in_words, prompt_problem, render
from facts.schema import Fact, FactError, FactSet

SETTINGS: tuple[str, ...] = (
    "forward_heldout_paraphrase", "forward_trained_paraphrase", "reverse", "in_context_reverse")


@dataclass(frozen=True)
class TrainPair:
    """One training prompt/completion of trained statement ``key`` (its ``paraphrase``-th)."""

    key: int
    paraphrase: int
    prompt: str
    completion: str


@dataclass(frozen=True)
class Question:
    """One test prompt about trained statement ``key``; ``completion`` is the right answer.

    ``fact``/``direction``/``split`` place it in a fact set's terms when there is one (else
    ``fact`` = ``key``, but one fact for both statements of a person a Berglund folder's ``both`` group trains both
    ways, and ``direction`` is relative to training: "forward" the trained one)."""

    key: int
    group: str
    setting: str
    prompt: str
    completion: str
    pool: str
    fact: int
    direction: str
    split: str
    source: str
    extra_controls: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuestionSet:
    """Training pairs and test questions (see the module docstring); ``facts``: the fact set they are about,
    for the circuits, causal tracing and the weight change (a Berglund folder's: the facts of its p2d and d2p
    groups whose reverse is asked, :func:`facts.berglund.experiment_facts`), and ``sentence_templates``, the
    templates its statements are read in where they are not the run's training templates (that folder's own
    prompts). ``from_folder``: the questions are a Berglund folder's own
    (:func:`facts.berglund.load_experiment_folder`), numbered by trained statement and directed relative to
    training, not in ``facts``' terms; a fact file whose world is named "berglund" (a run's ``facts.jsonl`` written
    from a folder) is asked in its facts' terms."""

    train: tuple[TrainPair, ...]
    questions: tuple[Question, ...]
    source: str
    facts: FactSet | None = None
    sentence_templates: Templates | None = None
    from_folder: bool = False

    def pool_answers(self) -> dict[str, list[str]]:
        """Every pool's distinct answers, in order of first appearance, without the leading space a template
        puts before an answer (" Ann Lee" after "was", "Ann Lee" after a quote: one answer). A control taken
        from a pool is spaced as the question's own answer (:func:`spaced_like`)."""
        pools: dict[str, dict[str, None]] = {}
        for question in self.questions:
            pools.setdefault(question.pool, {})[question.completion.strip()] = None
        return {pool: list(answers) for pool, answers in pools.items()}

    def right_answers(self) -> list[set[str]]:
        """Per question, every answer the set gives its prompt (compared in words: whitespace runs as one space,
        :func:`facts.language.in_words`), its own and another question's or training pair's (a parent's other
        child; two relations whose sentences read alike), each without its leading space: answers no control or
        wrong option may be, as they are right too."""
        right: dict[str, set[str]] = {}
        for prompt, completion in ([(q.prompt, q.completion) for q in self.questions]
                                   + [(pair.prompt, pair.completion) for pair in self.train]):
            right.setdefault(in_words(prompt), set()).add(completion.strip())
        return [right[in_words(question.prompt)] for question in self.questions]

    def given_entities(self) -> list[set[str]]:
        """Per question, the entity its prompt asks about, without its leading space: no control or wrong option
        may be it, as a model that copies from the prompt would rank it high (Bo, child of Ann and parent of Cy, is
        an answer of the "is the parent of" pool and the given of "Bo is the child of"; check-asymmetry and the
        circuits leave it out too).

        A question of a fact set (:func:`questions_from_facts`) has its fact's given entity in the direction asked.
        A Berglund folder's questions (:attr:`from_folder`) are not in their facts' terms (``facts`` is None or the
        folder's :func:`facts.berglund.experiment_facts`, as :func:`facts.berglund.in_fact_terms` tells them), and a
        ``both`` question has no fact at all: theirs, and those of a set without facts, are the answers of its pool
        its published prompt names (:func:`names_entity`; a ``both`` pool holds names and descriptions, the
        question's own among them)."""
        if self.facts is not None and not self.from_folder:
            return [{self.facts[q.fact].given_and_answer(q.direction)[0]} for q in self.questions]
        pools = self.pool_answers()
        return [{a for a in pools[q.pool] if names_entity(q.prompt, a)} for q in self.questions]

    def wrong_answers(self) -> list[list[str]]:
        """Per question, the answers of its pool (:meth:`pool_answers`) that may stand as wrong: every one but the
        right answers of its prompt (:meth:`right_answers`) and the entity it asks about (:meth:`given_entities`).
        A control and a multiple-choice option are drawn from these."""
        pools = self.pool_answers()
        return [[a for a in pools[q.pool] if a not in right and a not in given]
                for q, right, given in zip(self.questions, self.right_answers(), self.given_entities())]

    def groups(self) -> list[str]:
        return list(dict.fromkeys(question.group for question in self.questions))


def names_entity(prompt: str, entity: str) -> bool:
    """Whether ``prompt`` names ``entity`` whole, compared in words (:func:`facts.language.in_words`): not as part of
    a longer word ("Ann" is not named in "Anne Lee")."""
    text, name = in_words(prompt), in_words(entity)
    start = text.find(name) if name else -1
    while start >= 0:
        end = start + len(name)
        if (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return True
        start = text.find(name, start + 1)
    return False


def spaced_like(answer: str, completion: str) -> str:
    """``answer`` (a pool's answer, :meth:`QuestionSet.pool_answers`) with the leading whitespace of the
    question's own ``completion``, so a control is read after the prompt as the right answer is."""
    return completion[: len(completion) - len(completion.lstrip())] + answer.strip()


PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
"""A ``{name}`` in a template; only ``{given}`` and ``{answer}`` are filled, any other would be left as is."""


def check_template(template: str, where: str) -> None:
    """Raise :class:`FactError` naming ``where`` unless ``template`` has one ``{answer}``, a ``{given}``,
    no doubled brace ``{{`` or ``}}`` (slots are filled by plain replacement, not :meth:`str.format`, so
    an escape stays doubled and ``{{given}}`` puts braces around the given), no other ``{placeholder}``
    (it would be rendered literally) and words before the answer, a ``{given}`` among them."""
    if not isinstance(template, str) or template.count("{answer}") != 1 or "{given}" not in template:
        raise FactError(f"{where}: template {template!r} needs one {{answer}} slot and at least one {{given}} slot")
    doubled = [brace for brace in ("{{", "}}") if brace in template]
    if doubled:
        raise FactError(f"{where}: template {template!r} holds the doubled brace(s) {doubled}: slots are filled by "
                        f"plain replacement, not str.format, so '{{{{given}}}}' would put braces around the given "
                        f"and an escaped brace would stay doubled; write no doubled braces")
    unknown = sorted({f"{{{name}}}" for name in PLACEHOLDER.findall(template)} - {"{given}", "{answer}"})
    if unknown:
        raise FactError(f"{where}: template {template!r} has the unknown placeholder(s) {unknown}; a template fills "
                        f"only {{given}} and {{answer}}")
    problem = prompt_problem(template)
    if problem:
        raise FactError(f"{where}: template {template!r} {problem}")


class Templates(dict[str, tuple[str, ...]]):
    """Sentence templates per relation, in paraphrase order; ``source``: the templates file they
    were read from (:func:`load_templates`), named by the errors they lead to (None: built in code)."""

    source: str | None = None


def _from(templates: Mapping[str, Sequence[str]]) -> str:
    """``"<templates file>: "`` when ``templates`` were read from one, else ``""``."""
    source = getattr(templates, "source", None)
    return f"{source}: " if source else ""


def load_templates(path: str | os.PathLike[str]) -> tuple[Templates, Templates]:
    """(train, test) templates per relation from a JSONL file, one object per line:
    ``{"relation": "p2d", "split": "train" | "test", "template": "{given} is {answer}."}``.

    Refused with :class:`FactError` naming file:line: a template without its slots, with a doubled
    brace (``{{given}}``) or with another placeholder (:func:`check_template`), an unknown split or
    key, a template given twice for one relation and split, and a test template that is also a
    training template of its relation (the "held-out" paraphrase would be trained)."""
    path = Path(path)
    found: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    seen: dict[tuple[str, str, str], int] = {}
    for number, record in read_json_lines(path, "templates"):
        where = f"{path}:{number}"
        if not isinstance(record, dict) or set(record) != {"relation", "split", "template"}:
            raise FactError(f"{where}: expected an object with keys relation, split, template, got {record!r}")
        split, relation, template = record["split"], record["relation"], record["template"]
        if split not in found:
            raise FactError(f"{where}: split must be 'train' or 'test', got {split!r}")
        if not isinstance(relation, str) or not relation:
            raise FactError(f"{where}: relation must be a non-empty string, got {relation!r}")
        check_template(template, where)
        for other in found:
            first = seen.get((other, relation, template))
            if first is None:
                continue
            if other == split:
                raise FactError(f"{where}: {split} template {template!r} of relation {relation!r} is repeated "
                                f"(first on line {first}); keep one")
            raise FactError(f"{where}: template {template!r} of relation {relation!r} is both a train and a test "
                            f"template (line {first}): the held-out paraphrase would be a trained one")
        seen[(split, relation, template)] = number
        found[split].setdefault(relation, []).append(template)
    if not found["train"]:
        raise FactError(f"{path}: holds no training templates (split 'train')")
    train, test = (Templates({relation: tuple(ts) for relation, ts in found[split].items()})
                   for split in ("train", "test"))
    train.source = test.source = str(path)
    return train, test


CSV_COLUMNS: tuple[str, ...] = ("subject", "relation", "object")
"""Required columns of a fact CSV; ``inverse_relation`` and ``group`` (p2d, d2p or both) are optional."""
CSV_OPTIONAL_COLUMNS: tuple[str, ...] = ("inverse_relation", "group")
"""The optional columns of a fact CSV; any other column is refused (a typo would drop what it holds)."""


def load_fact_csv(path: str | os.PathLike[str]) -> FactSet:
    """Facts from a CSV with columns subject, relation, object (+ inverse_relation, group).

    ``group`` sets which directions are trained (:data:`facts.language.GROUP_SPLITS`; default
    ``p2d``: forward trained, reverse held out; without an ``inverse_relation`` column, and then without a
    ``group`` one, the reverse is not asked; with one, every row names its inverse relation: a blank cell is
    refused). Rows whose fields are all empty are skipped. A missing, repeated, unnamed or
    unknown column (a typo such as ``inverse relation``, or ``forward``/``reverse``: a CSV states
    splits only through ``group``), a malformed row (:func:`facts.io.read_csv_rows`), a bad fact or an
    answer that begins with another of its kind (:func:`facts.schema.check_answer_prefixes`: both lines) raises
    :class:`FactError` naming file (and line)."""
    path = Path(path)
    accepted = CSV_COLUMNS + CSV_OPTIONAL_COLUMNS
    header, rows = read_csv_rows(path, "fact CSV", accepted)
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        raise FactError(f"{path}:1: missing column(s) {missing}; the header has {header}")
    unknown = [column or f"(column {number} has no name)" for number, column in enumerate(header, 1)
               if column not in accepted]
    if unknown:
        raise FactError(f"{path}:1: unknown column(s) {unknown}; a fact CSV has the columns {list(CSV_COLUMNS)} "
                        f"and optionally {list(CSV_OPTIONAL_COLUMNS)} (splits follow from group)")
    if "group" in header and "inverse_relation" not in header:
        raise FactError(f"{path}:1: a group column needs an inverse_relation column (a group trains or holds out the "
                        f"reverse, which needs its relation's name); the header has {header}")
    facts, lines = [], []
    for number, fields in rows:
        if not any(field.strip() for field in fields):
            continue
        row = {name: value.strip() for name, value in zip(header, fields)}
        group = row.get("group") or "p2d"
        if group not in GROUP_SPLITS:
            raise FactError(f"{path}:{number}: group must be one of {sorted(GROUP_SPLITS)}, got {group!r}")
        forward, reverse = GROUP_SPLITS[group]
        inverse = row.get("inverse_relation")
        if inverse == "":
            raise FactError(f"{path}:{number}: inverse_relation is blank; name the reverse relation (a fact asked "
                            f"forward only belongs in a CSV without that column)")
        if inverse is None:
            reverse = None  # no inverse relation column (nor a group one): trained forward, and asked only so
        try:
            facts.append(Fact(row["subject"], row["relation"], row["object"], inverse, forward, reverse, group))
        except FactError as error:
            raise FactError(f"{path}:{number}: {error}") from None
        lines.append(number)
    if not facts:
        raise FactError(f"{path}: holds no facts")
    try:
        return checked_answers(FactSet(tuple(facts), world="csv", meta={"source": str(path), "line": lines}))
    except FactError as error:
        raise located(error, path, lines) from None


def save_fact_csv(facts: FactSet, path: str | os.PathLike[str]) -> Path:
    """Write ``facts`` as the CSV :func:`load_fact_csv` reads back to the same facts: columns subject,
    relation, object, inverse_relation, group. A fact whose splits its group cannot state
    (:data:`facts.language.GROUP_SPLITS`: p2d, d2p, both), or a context fact, is refused, naming it:
    write JSONL for those."""
    from facts.io import write_text_atomic

    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + ("inverse_relation", "group"))
    for index, fact in enumerate(facts):
        if fact.context or GROUP_SPLITS.get(fact.group) != (fact.forward, fact.reverse) or fact.inverse_relation is None:
            raise FactError(f"fact {index} ({fact.subject!r} {fact.relation!r} {fact.object!r}, group {fact.group!r}, "
                            f"splits {fact.forward}/{fact.reverse}): a fact CSV states only the groups "
                            f"{sorted(GROUP_SPLITS)} with their splits and an inverse relation; write JSONL instead")
        writer.writerow((fact.subject, fact.relation, fact.object, fact.inverse_relation, fact.group))
    return write_text_atomic(path, text.getvalue())


def _pick(templates: Mapping[str, Sequence[str]], relation: str, what: str, facts: FactSet, index: int
          ) -> Sequence[str]:
    options = templates.get(relation, ())
    if not options:
        fact = facts[index]
        raise FactError(f"{_from(templates)}fact {index} ({fact.subject!r} {fact.relation!r} {fact.object!r}): no "
                        f"{what} template for relation {relation!r} (templates cover {sorted(templates)})"
                        + ("" if _from(templates) else "; give sentences for your relations with --templates-file"),
                        (index,))
    return options


def questions_from_facts(facts: FactSet, train_templates: Mapping[str, Sequence[str]],
                         test_templates: Mapping[str, Sequence[str]], paraphrases: int) -> QuestionSet:
    """Training pairs and questions of a fact set, every sentence rendered and checked first.

    Each trained statement is trained in its relation's first ``paraphrases`` train templates and
    asked in its first (``forward_trained_paraphrase``) and in every test template
    (``forward_heldout_paraphrase``); a held-out reverse is asked in every test template of the
    inverse relation (``reverse``) and, after the trained sentence, in the first
    (``in_context_reverse``). Pools: the group with the answer's kind (``p2d/object``), and the fact's relation where
    the group holds several (``p2d/object of founded``: a club's controls are no cities, which a model that knows only
    what kind of answer a prompt wants would already rank below it).

    Refused with :class:`FactError` (naming the templates file when they came from one): a bad
    template (:func:`check_template`), a relation without templates, fewer training templates than
    ``paraphrases``, a held-out question whose prompt (in words, :func:`facts.language.in_words`) is a training
    prompt, of its statement or another's, a training prompt given two answers (relations whose sentences read
    alike), a fact that
    states its pair in the prompt (``context``, the in-context world's): it would be trained without it, and a fact
    neither of whose directions is trained (a chain world's held-out x ⇝ z): nothing here would ask it, and it
    would drop out of every number unsaid."""
    if paraphrases < 1:
        raise FactError(f"paraphrases must be ≥ 1, got {paraphrases}")
    stated = next((index for index, fact in enumerate(facts) if fact.context), None)
    if stated is not None:
        fact = facts[stated]
        raise FactError(f"fact {stated} ({fact.subject!r} {fact.relation!r} {fact.object!r}): states its pair in the "
                        f"prompt (context), which a sentence trained here would leave out; give facts without it",
                        (stated,))
    untrained = next((index for index, fact in enumerate(facts) if "train" not in (fact.forward, fact.reverse)), None)
    if untrained is not None and any("train" in (fact.forward, fact.reverse) for fact in facts):
        fact = facts[untrained]
        raise FactError(f"fact {untrained} ({fact.subject!r} {fact.relation!r} {fact.object!r}): neither direction "
                        f"is trained, so no question asks it (each asks a trained statement, in held-out "
                        f"paraphrases, or its reverse); train one direction, or leave the fact out", (untrained,))
    for templates, what in ((train_templates, "train"), (test_templates, "test")):
        for relation, options in templates.items():
            for number, template in enumerate(options):
                check_template(template, f"{_from(templates)}{what} template {number} of relation {relation!r}")
    train, questions = [], []
    relations: dict[str, set[str]] = {}
    for fact in facts:
        relations.setdefault(fact.group, set()).add(fact.relation)
    for index, direction, split in facts.statements():
        if split != "train":
            continue
        fact = facts[index]
        given, relation, answer = fact.given_and_answer(direction)
        kind = "object" if direction == "forward" else "subject"
        options = _pick(train_templates, relation, "train", facts, index)
        if paraphrases > len(options):
            raise FactError(f"{_from(train_templates)}{paraphrases} training paraphrases asked; relation {relation!r} "
                            f"has {len(options)} (--train-paraphrases {len(options)} trains on those)")
        key = len({pair.key for pair in train})
        trained_prompts = {}
        for number in range(paraphrases):
            rendered = render(options[number], given, answer)
            train.append(TrainPair(key, number, rendered.prompt, rendered.answer))
            trained_prompts.setdefault(in_words(rendered.prompt), options[number])
        label = f"fact {index} ({direction})"

        def ask(setting: str, prompt: str, completion: str, pool_kind: str, asked_direction: str,
                asked_split: str) -> None:
            pool = f"{fact.group}/{pool_kind}" + (f" of {fact.relation}" if len(relations[fact.group]) > 1 else "")
            questions.append(Question(key, fact.group, setting, prompt, completion, pool, index, asked_direction,
                                      asked_split, label))

        first = render(options[0], given, answer)
        ask("forward_trained_paraphrase", first.prompt, first.answer, kind, direction, "train")
        for template in _pick(test_templates, relation, "test", facts, index):
            rendered = render(template, given, answer)
            if in_words(rendered.prompt) in trained_prompts:
                raise FactError(f"{_from(test_templates)}{label}: test template {template!r} of relation {relation!r} "
                                f"gives the prompt {rendered.prompt!r} of training template "
                                f"{trained_prompts[in_words(rendered.prompt)]!r}, so it is no held-out paraphrase",
                                (index,))
            ask("forward_heldout_paraphrase", rendered.prompt, rendered.answer, kind, direction, "train")
        other = "reverse" if direction == "forward" else "forward"
        if fact.split(other) != "heldout":
            continue
        back_given, back_relation, back_answer = fact.given_and_answer(other)
        back_kind = "subject" if kind == "object" else "object"
        for number, template in enumerate(_pick(test_templates, back_relation, "test", facts, index)):
            rendered = render(template, back_given, back_answer)
            ask("reverse", rendered.prompt, rendered.answer, back_kind, other, "heldout")
            if number == 0:
                ask("in_context_reverse", f"{first.text} {rendered.prompt}", rendered.answer, back_kind, other,
                    "heldout")
    if not train:
        raise FactError(f"{facts.world} facts: no statement is trained")
    answer_of: dict[str, TrainPair] = {}
    for pair in train:  # two relations whose sentences read alike would train one prompt toward two answers
        first = answer_of.setdefault(in_words(pair.prompt), pair)
        if first.completion.strip() != pair.completion.strip():
            raise FactError(f"{_from(train_templates)}the training prompt {pair.prompt!r} is trained with two answers, "
                            f"{first.completion.strip()!r} and {pair.completion.strip()!r} (statements {first.key} and "
                            f"{pair.key}): each would be a control of the other's question though both are right; "
                            f"give the relations sentences that differ")
    for question in questions:  # another statement's training prompt: no held-out question
        if question.setting in ("forward_heldout_paraphrase", "reverse") and answer_of.get(
                in_words(question.prompt), question).key != question.key:
            raise FactError(f"{_from(test_templates)}{question.source}: its {question.setting} question "
                            f"{question.prompt!r} is a training prompt of another statement, so it is not held out; "
                            f"give the relations sentences that differ")
    return QuestionSet(tuple(train), tuple(questions), facts.world, facts)


__all__: Sequence[str] = ("Question", "QuestionSet", "SETTINGS", "TrainPair", "load_fact_csv", "load_templates",
                          "questions_from_facts", "save_fact_csv")


LETTERS = "ABCD"
"""Option letters of a multiple-choice question (Lin et al. 2024 ask with four options)."""


@dataclass(frozen=True)
class MultipleChoice:
    """One question asked as multiple choice: ``prompt`` lists ``options`` under ``letters``, and the
    right answer sits at ``correct`` (an index into ``options`` and ``letters``)."""

    prompt: str
    options: tuple[str, ...]
    letters: str
    correct: int


def multiple_choice_prompt(stem: str, options: Sequence[str], letters: str = LETTERS) -> str:
    """The sentence ``stem`` to complete, then one option per line under its letter, then "Answer:"
    (the model's next token is read as its choice: " A", " B", ...)::

        Complete the sentence: Known for being the author of 'X', ___
        A. Ann Lee
        B. Tom Hardy
        Answer:
    """
    if not 2 <= len(options) <= len(letters):
        raise ValueError(f"a multiple-choice question needs 2…{len(letters)} options, got {len(options)}")
    lines = [f"Complete the sentence: {stem.strip()} ___"]
    lines += [f"{letter}. {option.strip()}" for letter, option in zip(letters, options)]
    return "\n".join(lines + ["Answer:"])


def multiple_choice_orders(question: Question, distractors: Sequence[str], seed: int, letters: str = LETTERS
                           ) -> list[MultipleChoice]:
    """``question`` as multiple choice with its right answer and ``distractors`` (K − 1 other answers of its
    pool), shuffled with ``seed``, then in every cyclic rotation of that order: K prompts, the right answer
    once under each letter, so a bias towards one letter cannot raise the mean score above chance."""
    options = [question.completion, *distractors]
    if len(set(o.strip() for o in options)) != len(options):
        raise ValueError(f"{question.source}: the options of a multiple-choice question must differ, got {options}")
    order = list(range(len(options)))
    random.Random(f"{seed}:{question.source}:{question.prompt}").shuffle(order)
    asked = []
    for shift in range(len(options)):
        rotated = order[shift:] + order[:shift]
        chosen = tuple(options[i] for i in rotated)
        asked.append(MultipleChoice(multiple_choice_prompt(question.prompt, chosen, letters), chosen,
                                    letters[: len(chosen)], rotated.index(0)))
    return asked
