"""Reader and writer for the prompt/completion JSONL files of Berglund et al. (2023).

Their experiment-1 data (``p2d_prompts_train.jsonl``, ``d2p_reverse_prompts_test.jsonl``, ...)
holds one JSON object per line, ``{"prompt": "...", "completion": "..."}``; the completion
carries its leading space (``" Daphne Barrington"``). Which fact and direction a pair states is
not recorded, so the caller says which split and direction a whole file is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from facts.io import read_json_lines, write_text_atomic
from facts.language import TextTokenizer, bos_prefix, encode_pair, in_words
from facts.schema import DIRECTIONS, SPLITS, Direction, Fact, FactError, FactSet, Split
from facts.tokens import Example

Pair = tuple[str, str]
"""``(prompt, completion)``."""
KEYS: tuple[str, ...] = ("prompt", "completion")


def load_prompt_completion_jsonl(path: str | os.PathLike[str]) -> list[Pair]:
    """Every ``(prompt, completion)`` of a JSONL file, in order; blank lines are skipped.

    Malformed JSON, a missing key or a non-string value raise :class:`FactError` naming file:line.
    """
    path = Path(path)
    pairs = []
    for number, record in read_json_lines(path, "prompt/completion"):
        if not isinstance(record, dict):
            raise FactError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in KEYS if key not in record]
        if missing:
            raise FactError(f"{path}:{number}: missing key(s) {missing}")
        for key in KEYS:
            if not isinstance(record[key], str):
                raise FactError(f"{path}:{number}: {key!r} must be a string, got {type(record[key]).__name__}")
        pairs.append((record["prompt"], record["completion"]))
    if not pairs:
        raise FactError(f"{path}: holds no prompt/completion pairs")
    return pairs


def save_prompt_completion_jsonl(pairs: Sequence[Pair], path: str | os.PathLike[str]) -> Path:
    """Write ``pairs`` in the same format, atomically (temporary file, then rename).

    Text UTF-8 cannot store (a lone surrogate) raises :class:`FactError` naming the pair.
    """
    path = Path(path)
    lines = []
    for index, (prompt, completion) in enumerate(pairs):
        line = json.dumps({"prompt": prompt, "completion": completion}, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as error:
            raise FactError(f"{path}: pair {index} holds U+{ord(error.object[error.start]):04X}, a lone surrogate "
                            f"that UTF-8 cannot store") from None
        lines.append(line)
    return write_text_atomic(path, "".join(line + "\n" for line in lines))


def examples_from_pairs(
    pairs: Sequence[Pair],
    tokenizer: TextTokenizer,
    split: Split,
    direction: Direction,
    prefix: tuple[int, ...] | None = None,
) -> list[Example]:
    """One :class:`Example` per pair, ``fact`` = its position; the completion is the answer.

    Prompt and completion are tokenized jointly and split at the boundary, trailing prompt
    spaces moving to the completion (:func:`~facts.language.encode_pair`). ``prefix`` ids go
    before every prompt, by default :func:`~facts.language.bos_prefix` (BOS exactly when the
    tokenizer adds it itself).
    """
    prefix = bos_prefix(tokenizer) if prefix is None else prefix
    if split not in SPLITS:
        raise FactError(f"split must be one of {SPLITS}, got {split!r}")
    if direction not in DIRECTIONS:
        raise FactError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    examples = []
    for index, (prompt, completion) in enumerate(pairs):
        prompt_ids, answer_ids = encode_pair(tokenizer, prompt, completion, f"pair {index} ({prompt!r})")
        examples.append(Example(prefix + prompt_ids, answer_ids, index, direction, split))
    return examples


GROUPS: tuple[str, ...] = ("p2d", "d2p", "both")
"""Berglund et al.'s fact groups: trained person → description, description → person, both ways."""
REVERSED_GROUPS: tuple[str, ...] = ("p2d", "d2p")
"""The groups with a held-out reverse (``both`` trains both directions)."""


def experiment_files(group: str) -> dict[str, str]:
    """The experiment-1 file names of one group, as Berglund et al. publish them."""
    names = {"train": f"{group}_prompts_train.jsonl", "test": f"{group}_prompts_test.jsonl"}
    if group in REVERSED_GROUPS:
        names |= {"reverse": f"{group}_reverse_prompts_test.jsonl",
                  "randomized": f"{group}_reverse_prompts_test_randomized.jsonl"}
    return names


def is_experiment_folder(path: str | os.PathLike[str]) -> bool:
    """A folder holding at least one of the experiment-1 file names."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for g in GROUPS for name in experiment_files(g).values())


def _entity_in(prompt: str, entities: Sequence[str]) -> list[str]:
    """The entities ``prompt`` contains, longest first, none contained in a longer one found."""
    found: list[str] = []
    for entity in sorted(entities, key=len, reverse=True):
        if entity in prompt and not any(entity in longer for longer in found):
            found.append(entity)
    return found


def load_experiment_folder(folder: str | os.PathLike[str], paraphrases: int | None = None):
    """Training pairs and test questions (:class:`facts.questions.QuestionSet`) of a folder in
    Berglund et al.'s experiment-1 layout; any subset of the groups may be present.

    Per group g: the prompts of ``g_prompts_train.jsonl`` are grouped into trained statements by
    their completion (one description, or one name, per statement), keeping the first
    ``paraphrases`` of each (all when None); ``g_prompts_test.jsonl`` asks them in held-out words
    (linked by completion); ``g_reverse_prompts_test.jsonl`` asks the reverse, linked to the
    statement whose completion its prompt names, and once more after that statement's first
    training sentence (in context); ``g_reverse_prompts_test_randomized.jsonl`` gives, for the same
    prompt, a wrong name used as a control. Controls are drawn from answers of the same group and
    file kind: trained completions for the forward settings, reverse completions for the reverse
    ones (in the ``both`` group trained completions mix names and descriptions: the file does not
    say which is which). A question's ``fact``, the unit its numbers are averaged over, is its statement's key, but
    in the ``both`` group a person's two statements (name → description, description → name) are one fact, as the
    built-in world's are (:func:`_people_of`: statements whose prompts name one another's completion).

    Refused with :class:`FactError` naming file (and line), before anything loads: no training
    file, a test file of a group without one, a test line matching no trained statement (or two),
    a held-out or reverse prompt that is a training prompt of any group (compared in words,
    :func:`facts.language.in_words`), a statement with fewer than ``paraphrases``, an empty
    completion, a training line repeated (in words: it is no second paraphrase, not de-duplicated, refused), a
    prompt of a randomized file given twice with different completions (an exact repeat is accepted), a randomized
    prompt that is no reverse question (its control would be dropped) or a randomized file without its reverse file,
    completions differing only in surrounding whitespace, reverse questions of one statement
    with different answers (in p2d: two people with one description, whom grouping by completion
    would merge) or, in p2d, with an answer that no training prompt of the statement names (not the
    statement's person), one answer to the reverse questions of two statements (one person with two descriptions,
    two people with one), and, in p2d, a held-out paraphrase naming another statement's person (or none) where the
    reverse file says who each statement's person is. Without a reverse file two people with one description
    cannot be told from two paraphrases of one person.
    """
    from facts.questions import Question, QuestionSet, TrainPair

    if paraphrases is not None and paraphrases < 1:
        raise FactError(f"paraphrases must be ≥ 1, got {paraphrases}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FactError(f"{folder}: not a folder in Berglund et al.'s experiment-1 layout")
    train: list[TrainPair] = []
    questions: list[Question] = []
    present = [g for g in GROUPS if (folder / experiment_files(g)["train"]).is_file()]
    trained_at: dict[str, str] = {}  # every group's kept training prompt (in words) → its file:line
    for group in GROUPS:
        files = {kind: folder / name for kind, name in experiment_files(group).items()}
        if group not in present:
            stray = [path.name for kind, path in files.items() if path.is_file()]
            if stray:
                raise FactError(f"{folder / stray[0]}: test file of group {group!r}, but {files['train'].name} is "
                                f"missing, so it names no trained fact")
            continue
        by_completion, line_of = _training_statements(files["train"])
        base = len({pair.key for pair in train})
        keys = {completion: base + number for number, completion in enumerate(by_completion)}
        fact_of = _people_of(by_completion, keys) if group not in REVERSED_GROUPS else {k: k for k in keys.values()}
        for number, (completion, pairs) in enumerate(by_completion.items()):
            if paraphrases is not None and len(pairs) < paraphrases:
                raise FactError(f"{files['train']}: {completion.strip()!r} has {len(pairs)} training prompt(s), "
                                f"fewer than the {paraphrases} paraphrases asked for")
            kept = pairs[:paraphrases] if paraphrases is not None else pairs
            train.extend(TrainPair(base + number, p, prompt, completion) for p, (prompt, _) in enumerate(kept))
            trained_at.update((in_words(prompt), f"{files['train']}:{line_of[in_words(prompt)]}") for prompt, _ in kept)
            questions.append(Question(base + number, group, "forward_trained_paraphrase", kept[0][0], completion,
                                      f"{group}/trained", fact_of[base + number], "forward", "train",
                                      f"{files['train']}:{line_of[in_words(kept[0][0])]}"))
        held_out = []
        if files["test"].is_file():
            for line, (prompt, completion) in _answered(files["test"]):
                if completion not in keys:
                    raise FactError(f"{files['test']}:{line}: completion {completion.strip()!r} matches no trained "
                                    f"statement of {files['train'].name}")
                held_out.append(Question(keys[completion], group, "forward_heldout_paraphrase", prompt, completion,
                                         f"{group}/trained", fact_of[keys[completion]], "forward", "train",
                                         f"{files['test']}:{line}"))
            questions.extend(held_out)
        if group not in REVERSED_GROUPS or not files["reverse"].is_file():
            if group in REVERSED_GROUPS and files["randomized"].is_file():
                raise FactError(f"{files['randomized']}: controls of reverse questions, but {files['reverse'].name} "
                                f"is missing, so it controls no question")
            continue
        randomized = _controls(files["randomized"]) if files["randomized"].is_file() else {}
        entities = {completion.strip(): completion for completion in keys}  # one per stripped text: checked on reading
        asked_in_context, answered, answering, asked = set(), {}, {}, set()
        for line, (prompt, completion) in _answered(files["reverse"]):
            named = _entity_in(prompt, list(entities))
            if len(named) != 1:
                raise FactError(f"{files['reverse']}:{line}: the prompt names "
                                + (f"{len(named)} trained statements' answers {named}" if named else
                                   f"no trained statement's answer from {files['train'].name}"))
            key = keys[entities[named[0]]]
            answer = completion.strip()
            if group == "p2d" and not any(answer in prompt for prompt, _ in by_completion[entities[named[0]]]):
                raise FactError(f"{files['reverse']}:{line}: the answer {answer!r} is not the person of the trained "
                                f"statement {named[0]!r}: no prompt of {files['train'].name} with that completion "
                                f"names them")
            first_answer, first_line = answered.setdefault(key, (answer, line))
            if first_answer != answer:
                raise FactError(f"{files['reverse']}:{first_line} and {files['reverse']}:{line}: two answers, "
                                f"{first_answer!r} and {answer!r}, to the reverse of the trained statement "
                                f"{named[0]!r} of {files['train'].name}: "
                                + ("two people with one description are merged into one fact (training prompts are "
                                   "grouped by their completion); give each person their own description"
                                   if group == "p2d" else "a person has one description; keep one"))
            owner, owner_line = answering.setdefault(answer, (key, line))
            if owner != key:
                raise FactError(f"{files['reverse']}:{owner_line} and {files['reverse']}:{line}: the answer {answer!r} "
                                f"is the reverse of two trained statements of {files['train'].name}: "
                                + ("one person with two descriptions" if group == "p2d" else
                                   "two people with one description")
                                + ", each a wrong-answer control of the other's question though both are right; "
                                  "keep one statement")
            extra = randomized.get(prompt, (None, 0))[0]
            extras = (extra,) if extra is not None and extra.strip() != completion.strip() else ()
            where = f"{files['reverse']}:{line}"
            asked.add(prompt)
            questions.append(Question(key, group, "reverse", prompt, completion, f"{group}/reverse", key, "reverse",
                                      "heldout", where, extras))
            if key not in asked_in_context:
                asked_in_context.add(key)
                first = next(pair for pair in train if pair.key == key)
                stated = (first.prompt + first.completion).strip()
                questions.append(Question(key, group, "in_context_reverse", f"{stated} {prompt}", completion,
                                          f"{group}/reverse", key, "reverse", "heldout", where, extras))
        unasked = next(((line, prompt) for prompt, (_, line) in randomized.items() if prompt not in asked), None)
        if unasked is not None:
            raise FactError(f"{files['randomized']}:{unasked[0]}: prompt {unasked[1]!r} is no question of "
                            f"{files['reverse'].name}, so its control would be dropped; write it as the question is")
        if group == "p2d":  # a held-out paraphrase names the person of its statement, known from the reverse file
            people = {key: answer for key, (answer, _) in answered.items()}
            for question in held_out:
                named = _entity_in(question.prompt, list(people.values()))
                if question.key in people and named != [people[question.key]]:
                    raise FactError(f"{question.source}: the prompt names {named or 'no trained person'}, not "
                                    f"{people[question.key]!r}, whose statement its completion "
                                    f"{question.completion.strip()!r} is")
    for question in questions:  # a prompt trained in any group, in the same words, is not held out
        if question.setting in ("forward_heldout_paraphrase", "reverse") and in_words(question.prompt) in trained_at:
            raise FactError(f"{question.source}: prompt {question.prompt!r} is also a training prompt "
                            f"({trained_at[in_words(question.prompt)]}), so it is not held out")
    if not present:
        raise FactError(f"{folder}: no training file; expected at least one of "
                        f"{[experiment_files(g)['train'] for g in GROUPS]}")
    return QuestionSet(tuple(train), tuple(questions), f"berglund:{folder}", from_folder=True)


def _people_of(statements: dict[str, list[Pair]], keys: dict[str, int]) -> dict[int, int]:
    """The fact of each trained statement of a ``both`` group (``statements``: :func:`_training_statements`'s,
    ``keys``: each completion's statement key): the key of the first statement of its person. A person's
    statements are linked by the prompts: a prompt of one names (whole, in words: :func:`facts.questions.names_entity`)
    the completion of another, as "Ann Lee, known for being" → " the author of 'X'" names the completion of
    "Known for being the author of 'X'," → " Ann Lee"; the statements linked directly or through others are one
    person's. A statement whose prompts name no other statement's completion, nor is named by one, is a fact of its
    own (a folder whose both group states a person one way only)."""
    from facts.questions import names_entity

    completions = list(statements)
    texts = {c: [in_words(prompt) for prompt, _ in statements[c]] for c in completions}
    joined = {c: "\n".join(prompts) for c, prompts in texts.items()}
    parent = {c: c for c in completions}

    def root(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for completion in completions:
        for other in completions:
            name = in_words(other)
            if other == completion or not name or name not in joined[completion]:
                continue
            if any(names_entity(prompt, name) for prompt in texts[completion]):
                first, second = sorted((root(completion), root(other)), key=keys.__getitem__)
                parent[second] = first
    return {keys[c]: keys[root(c)] for c in completions}


def _answered(path: Path) -> list[tuple[int, Pair]]:
    """:func:`_numbered`, a completion that is empty or only whitespace refused naming file:line."""
    numbered = _numbered(path)
    for line, (_, completion) in numbered:
        if not completion.strip():
            raise FactError(f"{path}:{line}: the completion {completion!r} is empty: it states no answer")
    return numbered


def _controls(path: Path) -> dict[str, tuple[str, int]]:
    """The control completion of each prompt of a ``*_randomized`` file (:func:`_answered`), with its first line.

    A prompt given twice with different completions is refused naming file and both lines (a dict
    would keep the last silently). An exact repeat is accepted, as an exact repeat in the reverse file
    it mirrors is (asked again, with the same control); only a training file refuses one, where it
    would count as a second paraphrase."""
    controls: dict[str, tuple[str, int]] = {}
    for line, (prompt, completion) in _answered(path):
        first, first_line = controls.setdefault(prompt, (completion, line))
        if first != completion:
            raise FactError(f"{path}:{first_line} and {path}:{line}: prompt {prompt!r} has two completions, "
                            f"{first!r} and {completion!r}; keep one (the second would silently replace the first)")
    return controls


def _training_statements(path: Path) -> tuple[dict[str, list[Pair]], dict[str, int]]:
    """The pairs of a training file grouped into trained statements by their completion, in order, and the first
    line of each prompt (in words, :func:`facts.language.in_words`).

    Refused naming file:line (:func:`_answered` too): a line repeating an earlier one (it would count
    as a second paraphrase), completions differing only in surrounding whitespace (they would be
    two statements of one answer), and a prompt trained with two different completions (two people of one
    description in d2p, one person of two descriptions in p2d: each answer would be a wrong-answer control of the
    other's question, though both are right)."""
    statements: dict[str, list[Pair]] = {}
    written: dict[str, tuple[str, int]] = {}
    seen: dict[Pair, int] = {}
    answer_of: dict[str, tuple[str, int]] = {}
    for line, pair in _answered(path):
        first = seen.setdefault((in_words(pair[0]), pair[1].strip()), line)
        if first != line:
            raise FactError(f"{path}:{line}: repeats line {first} ({pair[0]!r} → {pair[1]!r}); keep one, a repeated "
                            f"line is no second paraphrase")
        answer, answer_line = answer_of.setdefault(in_words(pair[0]), (pair[1], line))
        if answer.strip() != pair[1].strip():
            raise FactError(f"{path}:{answer_line} and {path}:{line}: the prompt {pair[0]!r} is trained with two "
                            f"answers, {answer!r} and {pair[1]!r}: each would be a wrong-answer control of the "
                            f"other's question though both are right; give each statement prompts of its own")
        completion, completion_line = written.setdefault(pair[1].strip(), (pair[1], line))
        if completion != pair[1]:
            raise FactError(f"{path}:{line}: completion {pair[1]!r} differs from {completion!r} on line "
                            f"{completion_line} only in surrounding whitespace; write both the same way")
        statements.setdefault(pair[1], []).append(pair)
    return statements, {prompt: line for prompt, (_, line) in answer_of.items()}


def _numbered(path: Path) -> list[tuple[int, Pair]]:
    """``(line, (prompt, completion))`` of a prompt/completion file (errors as its reader's)."""
    load_prompt_completion_jsonl(path)  # validates every line, naming file:line
    return [(number, (record["prompt"], record["completion"]))
            for number, record in read_json_lines(path, "prompt/completion")]


def _relation(group: str, key: int) -> str:
    """The relation of the fact :func:`experiment_facts` makes of trained statement ``key`` of ``group``."""
    return f"{group}:{key}"


def in_fact_terms(questions: Sequence["Question"], facts: "FactSet") -> tuple["Question", ...]:
    """A Berglund folder's ``questions`` numbered and directed as its ``facts`` number and direct them (the caller
    knows the questions are a folder's, :attr:`facts.questions.QuestionSet.from_folder`: a fact file whose world is
    named "berglund", a run's ``facts.jsonl``, has questions in its facts' terms already). A folder's questions
    number the trained statements (``key``) and call the trained direction "forward"; its fact set
    (:func:`experiment_facts`, fact ``{group}:{key}``) holds the p2d and d2p facts with a reverse
    question only, as name → description, so a d2p question asked the way it was trained (description → name) is
    the fact's reverse. Its questions of no fact there (the ``both`` group's) are left out."""
    index = {fact.relation: i for i, fact in enumerate(facts)}  # experiment_facts' relation of each statement
    placed = []
    for question in questions:
        i = index.get(_relation(question.group, question.key))
        if i is None:
            continue
        trained = "forward" if facts[i].forward == "train" else "reverse"
        other = "reverse" if trained == "forward" else "forward"
        direction = trained if question.direction == "forward" else other
        placed.append(dataclasses.replace(question, fact=i, direction=direction))
    return tuple(placed)


def experiment_facts(experiment) -> tuple["FactSet", dict[str, tuple[str, ...]]]:
    """The facts of a Berglund folder's question set (:func:`load_experiment_folder`) as a fact set,
    with one sentence template per direction of each fact, for the probes.

    A fact is a person (subject, a name) and a description (object), from a trained statement of
    the p2d or d2p group that has a reverse question: p2d trains name → description (forward),
    d2p description → name (reverse). The forward template is the prompt that names the person
    (p2d: the first training prompt; d2p: the first reverse question), the person's name replaced
    by ``{given}``; the reverse template likewise the prompt that states the description. Facts
    of the ``both`` group, or without a reverse question, name only one side and are left out.
    A prompt that does not contain the other side's text verbatim is refused, naming its file; a fact the schema
    refuses (:class:`facts.schema.Fact`: a name with a run of spaces, a name that begins with its description),
    facts a fact set refuses (entities differing only in Unicode normalisation) and two answers of a kind of which
    one begins with the other (:func:`facts.schema.check_answer_prefixes`) are refused naming the lines of the
    questions they come from (:func:`_fact_from`, :func:`_fact_set_from`)."""
    by_key: dict[int, dict[str, object]] = {}
    for question in experiment.questions:
        if question.group in REVERSED_GROUPS and question.setting in ("forward_trained_paraphrase", "reverse"):
            by_key.setdefault(question.key, {}).setdefault(question.setting, question)
    facts, templates, lines = [], {}, []
    for key, asked in by_key.items():
        if "reverse" not in asked:
            continue
        trained, back = asked["forward_trained_paraphrase"], asked["reverse"]
        p2d = trained.group == "p2d"
        name = (back.completion if p2d else trained.completion).strip()
        description = (trained.completion if p2d else back.completion).strip()
        naming, stating = (trained, back) if p2d else (back, trained)  # the prompt holding the name, the description

        def template(question, given: str, answer: str) -> str:
            if given not in question.prompt:
                raise FactError(f"{question.source}: prompt {question.prompt!r} does not contain {given!r} verbatim, "
                                f"so no sentence template follows from it")
            lead = answer[: len(answer) - len(answer.lstrip())]
            return question.prompt.replace(given, "{given}") + lead + "{answer}"

        relation = _relation(trained.group, key)
        templates[relation] = (template(naming, name, naming.completion),)
        templates[f"{relation}:reverse"] = (template(stating, description, stating.completion),)
        forward, reverse = ("train", "heldout") if p2d else ("heldout", "train")
        where = (trained.source, back.source)  # the lines that name the person and the description
        facts.append(_fact_from(where, name, relation, description, f"{relation}:reverse", forward, reverse,
                                trained.group))
        lines.append(where)
    if not facts:
        raise FactError(f"{experiment.source}: no fact of the p2d or d2p group has a reverse question, so none names "
                        f"both its person and its description")
    meta = {"source": experiment.source, "line": [statement for statement, _ in lines]}
    return _fact_set_from(lines, tuple(facts), world="berglund", meta=meta), templates


def _fact_from(where: tuple[str, str], *fields) -> Fact:
    """``Fact(*fields)``, a :class:`FactError` restated with the lines of ``where`` (the file:line of the fact's
    trained statement and of its reverse question), as the other readers name the line of a fact they refuse."""
    try:
        return Fact(*fields)
    except FactError as error:
        raise FactError(f"{' and '.join(where)}: {error}") from None


def _fact_set_from(lines: Sequence[tuple[str, str]], facts: tuple[Fact, ...], **fields) -> FactSet:
    """``FactSet(facts, **fields)`` with no answer that begins with another of its kind (as the other fact readers
    return, :func:`facts.io.checked_answers`), a :class:`FactError` restated with the lines (``lines[i]``: as
    :func:`_fact_from`'s ``where``) of the facts it names (:attr:`FactError.facts`)."""
    from facts.io import checked_answers

    try:
        return checked_answers(FactSet(facts, **fields))
    except FactError as error:
        where = dict.fromkeys(place for index in dict.fromkeys(error.facts) for place in lines[index])
        raise FactError(f"{' and '.join(where) or fields['meta']['source']}: {error}", error.facts) from None


def save_experiment_folder(facts, folder: str | os.PathLike[str], train_templates, test_templates,
                           paraphrases: int | None = None) -> Path:
    """Write a fact set of people (groups p2d, d2p, both; relation and inverse relation named as
    the templates' keys) as a folder in Berglund et al.'s experiment-1 layout, which
    :func:`load_experiment_folder` reads back: per group, training prompts of every trained direction
    in its first ``paraphrases`` train templates (all when None), held-out paraphrases in every test
    template of those relations, and (p2d, d2p) the reverse questions in every test template of the
    held-out relation, with a randomized twin naming the next fact's answer of the group."""
    from facts.language import GROUP_SPLITS, render

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = False
    for group in GROUPS:
        members = [f for f in facts if f.group == group]
        if not members:
            continue
        wrong = [f for f in members if (f.forward, f.reverse) != GROUP_SPLITS[group] or f.inverse_relation is None]
        if wrong:
            raise FactError(f"{wrong[0].subject!r} ({group}): splits {wrong[0].forward}/{wrong[0].reverse}; Berglund's "
                            f"layout states a {group} fact only as {GROUP_SPLITS[group]} with an inverse relation")

        def pair(template: str, given: str, answer: str) -> Pair:
            rendered = render(template, given, answer)
            return rendered.prompt, rendered.answer

        def sides(fact, direction: str) -> tuple[str, str, str]:
            return ((fact.relation, fact.subject, fact.object) if direction == "forward"
                    else (fact.inverse_relation, fact.object, fact.subject))

        trained = [d for d, split in zip(("forward", "reverse"), GROUP_SPLITS[group]) if split == "train"]
        train, test = [], []
        for fact in members:
            for direction in trained:
                relation, given, answer = sides(fact, direction)
                train += [pair(t, given, answer) for t in train_templates[relation][:paraphrases]]
                test += [pair(t, given, answer) for t in test_templates.get(relation, ())]
        names = experiment_files(group)
        save_prompt_completion_jsonl(train, folder / names["train"])
        if test:
            save_prompt_completion_jsonl(test, folder / names["test"])
        if group in REVERSED_GROUPS:
            held = "reverse" if trained == ["forward"] else "forward"
            reverse, randomized = [], []
            for number, fact in enumerate(members):
                relation, given, answer = sides(fact, held)
                other = sides(members[(number + 1) % len(members)], held)[2]
                for template in test_templates.get(relation, ()):
                    reverse.append(pair(template, given, answer))
                    randomized.append(pair(template, given, other))
            if reverse:
                save_prompt_completion_jsonl(reverse, folder / names["reverse"])
                save_prompt_completion_jsonl(randomized, folder / names["randomized"])
        written = True
    if not written:
        raise FactError(f"{folder}: no fact of the groups {list(GROUPS)} to write")
    return folder
