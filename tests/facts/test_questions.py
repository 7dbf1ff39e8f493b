"""Fact sources for fine-tuning: Berglund's experiment-1 folder, a fact CSV, a templates file."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from berglund_folder import write_experiment_folder
from facts.berglund import load_experiment_folder
from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, people_world
from facts.questions import load_fact_csv, load_templates, names_entity, questions_from_facts
from facts.schema import FactError


def test_berglund_folder_links_every_test_prompt_to_its_trained_fact(tmp_path):
    folder = write_experiment_folder(tmp_path, people=3, paraphrases=3)
    world = people_world(n_per_group=3, groups=("p2d", "d2p", "both"))
    questions = load_experiment_folder(folder, paraphrases=2)
    assert Counter(pair.key for pair in questions.train) == {key: 2 for key in range(12)}  # 3 + 3 + 2 × 3
    counts = Counter((q.group, q.setting) for q in questions.questions)
    assert counts == {("p2d", "forward_trained_paraphrase"): 3, ("p2d", "forward_heldout_paraphrase"): 9,
                      ("p2d", "reverse"): 9, ("p2d", "in_context_reverse"): 3,
                      ("d2p", "forward_trained_paraphrase"): 3, ("d2p", "forward_heldout_paraphrase"): 9,
                      ("d2p", "reverse"): 9, ("d2p", "in_context_reverse"): 3,
                      ("both", "forward_trained_paraphrase"): 6, ("both", "forward_heldout_paraphrase"): 18}
    trained = {pair.key: pair.completion for pair in questions.train}
    by_description = {f.object: f for f in world}
    for question in questions.questions:
        if question.setting == "reverse" and question.group == "p2d":  # description → the fact's own name
            fact = by_description[trained[question.key].strip()]
            assert question.completion == " " + fact.subject and fact.object in question.prompt
            assert len(question.extra_controls) == 1 and question.extra_controls[0] != question.completion
        if question.setting.startswith("forward"):
            assert question.completion == trained[question.key]
        if question.setting == "forward_heldout_paraphrase":
            assert question.prompt not in {pair.prompt for pair in questions.train}
    assert len(load_experiment_folder(folder).train) == 12 * 3  # all paraphrases by default


def test_berglund_folder_with_fewer_paraphrases_than_asked_is_refused(tmp_path):
    folder = write_experiment_folder(tmp_path, people=2, groups=("p2d",), paraphrases=2)
    with pytest.raises(FactError, match=r"p2d_prompts_train.jsonl: .* has 2 training prompt\(s\), fewer than the 3"):
        load_experiment_folder(folder, paraphrases=3)


def test_a_folder_without_a_training_file_is_refused(tmp_path):
    with pytest.raises(FactError, match=r"no training file; expected at least one of \['p2d_prompts_train.jsonl'"):
        load_experiment_folder(tmp_path)


def test_heldout_prompt_that_is_also_trained_is_refused(tmp_path):
    folder = write_experiment_folder(tmp_path, people=2, groups=("p2d",))
    first = (folder / "p2d_prompts_train.jsonl").read_text().splitlines()[0]
    (folder / "p2d_prompts_test.jsonl").write_text(first + "\n")
    with pytest.raises(FactError, match=r"p2d_prompts_test.jsonl:1: prompt .* is also a training prompt"):
        load_experiment_folder(folder)


def test_fact_csv_with_templates_file_gives_the_same_questions_as_the_world(tmp_path):
    world = people_world(n_per_group=3, groups=("p2d",))
    csv = tmp_path / "facts.csv"
    csv.write_text("subject,relation,object,inverse_relation\n"
                   + "".join(f'{f.subject},p2d,"{f.object}",d2p\n' for f in world))
    templates = tmp_path / "templates.jsonl"
    templates.write_text("".join(json.dumps({"relation": r, "split": split, "template": t}) + "\n"
                                 for split, table in (("train", TRAIN_TEMPLATES), ("test", TEST_TEMPLATES))
                                 for r, ts in table.items() for t in ts))
    facts = load_fact_csv(csv)
    assert tuple(facts) == tuple(world) and facts.meta["line"] == [2, 3, 4]
    train, test = load_templates(templates)
    assert (train, test) == ({r: tuple(t) for r, t in TRAIN_TEMPLATES.items()},
                             {r: tuple(t) for r, t in TEST_TEMPLATES.items()})
    ours, theirs = (questions_from_facts(f, train, test, 2) for f in (facts, world))
    assert ours.train == theirs.train and ours.questions == theirs.questions


@pytest.mark.parametrize("text, message", [
    ("subject,object\nA,B\n", r"facts.csv:1: missing column\(s\) \['relation'\]"),
    ("subject,relation,object\nA,r,B\nC,r\n", r"facts.csv:3: expected 3 fields, got 2"),
    ("subject,relation,object,inverse_relation,group\nA,r,B,q,sideways\n", r"facts.csv:2: group must be one of"),
    # a group trains or holds out the reverse: without its relation's name every row had been refused, one by one
    ("subject,relation,object,group\nA,r,B,both\n", r"facts.csv:1: a group column needs an inverse_relation column"),
    # a blank inverse had made the row forward-only without a group column and refused it with one
    ("subject,relation,object,inverse_relation\nAnn,founded,X,was founded by\nBo,founded,Y,\n",
     r"facts.csv:3: inverse_relation is blank; name the reverse relation"),
    # repeated and unknown columns are refused rather than dropped (a typo would drop a direction)
    ("subject,relation,object,object\nTom,p2d,x,y\n", r"facts.csv:1: column\(s\) \['object'\] appear more than once"),
    ("subject,relation,object,inverse relation,group\nTom,p2d,x,d2p,p2d\n",
     r"facts.csv:1: unknown column\(s\) \['inverse relation'\]; .*\['inverse_relation', 'group'\]"),
    ("subject,relation,object,inverse_relation,forward,reverse\nTom,p2d,x,d2p,heldout,train\n",
     r"facts.csv:1: unknown column\(s\) \['forward', 'reverse'\]"),
    ("subject,relation,object,\nTom,p2d,x,\n", r"facts.csv:1: unknown column\(s\) \['\(column 4 has no name\)'\]"),
    # a blank first line had been read as an empty file
    ("\nsubject,relation,object\nA,r,B\n", r"facts.csv:1: a blank line where the header \(columns .*\) must be"),
    ("", r"facts.csv: empty file, expected a header"),
    # a JSONL fact file's first line had been read as CSV: "field 2 (' \"relation\": ...') has a space before its
    # opening quote"
    ('{"subject": "A", "relation": "r", "object": "B"}\n', r"facts.csv:1: JSON where a fact CSV's header \(columns "
                                                          r".*\) must be; .* looks like JSON or JSONL"),
])
def test_bad_fact_csvs_are_named_with_file_and_line(tmp_path, text, message):
    (tmp_path / "facts.csv").write_text(text)
    with pytest.raises(FactError, match=message):
        load_fact_csv(tmp_path / "facts.csv")


@pytest.mark.parametrize("record, message", [
    ({"relation": "r", "split": "train", "template": "{given} is nice."}, "needs one {answer} slot"),
    ({"relation": "r", "split": "train", "template": "It is {answer}."}, "at least one {given} slot"),
    # the given after the answer alone: every fact asked one prompt ("People say"), held out or trained
    ({"relation": "r", "split": "test", "template": "People say {answer} works with {given}."},
     "names the given entity only after the answer, so every fact would be asked the same prompt 'People say'"),
    ({"relation": "r", "split": "dev", "template": "{given} is {answer}."}, "split must be 'train' or 'test'"),
    ({"relation": "r", "template": "{given} is {answer}."}, "expected an object with keys relation, split"),
])
def test_a_template_without_its_slots_is_named_with_file_and_line(tmp_path, record, message):
    good = {"relation": "r", "split": "train", "template": "{given} is {answer}."}
    path = tmp_path / "templates.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(FactError, match=f"templates.jsonl:2: .*{message}".replace("{", r"\{").replace("}", r"\}")
                       .replace("(", r"\(").replace(")", r"\)")):
        load_templates(path)


def test_csv_without_inverse_relation_is_asked_forward_only(tmp_path):
    (tmp_path / "facts.csv").write_text("subject,relation,object\nAnn Lee,founded,the Glass Harbour Club\n"
                                        "Bo Kim,founded,the Amber Tide Club\n")
    templates = {"founded": ("{given} founded {answer}.",)}
    questions = questions_from_facts(load_fact_csv(tmp_path / "facts.csv"), templates,
                                     {"founded": ("Q: What did {given} found? A: {answer}",)}, 1)
    assert Counter(q.setting for q in questions.questions) == {"forward_trained_paraphrase": 2,
                                                              "forward_heldout_paraphrase": 2}
    assert [pair.prompt for pair in questions.train] == ["Ann Lee founded", "Bo Kim founded"]


@pytest.mark.parametrize("text, message", [
    ("subject,relation,object\nAnn,r,B\n" + "T" * 200_000 + ",r,x\n",
     r"facts.csv:3: malformed CSV \(field larger than field limit"),
    ('subject,relation,object\nAnn,r,B\n"Tom,r,x\nBea,r,y\n',
     r"facts.csv:3: a quoted field opened on this line runs to the end of the file; is a closing quote missing\?"),
    ('subject,relation,object\n"Tom,r,x\nBea",r,y\nCy,r,z\n',
     r"facts.csv:2: a quoted field opened on this line runs to line 3; is a closing quote missing\?"),
])
def test_fact_csv_that_csv_cannot_read_is_named_with_file_and_line(tmp_path, text, message):
    (tmp_path / "facts.csv").write_text(text)
    with pytest.raises(FactError, match=message):
        load_fact_csv(tmp_path / "facts.csv")


def write_templates(path, *records):
    path.write_text("".join(json.dumps(dict(zip(("relation", "split", "template"), r))) + "\n" for r in records))
    return path


@pytest.mark.parametrize("records, message", [
    ([("p2d", "train", "{given} is {answer}."), ("p2d", "test", "{given} is {answer}.")],
     r"templates.jsonl:2: template '\{given\} is \{answer\}.' of relation 'p2d' is both a train and a test "
     r"template \(line 1\)"),
    ([("p2d", "test", "{given} is {answer}."), ("p2d", "train", "{given} is {answer}.")],
     r"templates.jsonl:2: .* is both a train and a test template \(line 1\)"),
    ([("p2d", "train", "{given} is {answer}."), ("p2d", "train", "{given} is {answer}.")],
     r"templates.jsonl:2: train template .* is repeated \(first on line 1\)"),
    ([("p2d", "train", "{given}, called {name}, is {answer}.")],
     r"templates.jsonl:1: template .* has the unknown placeholder\(s\) \['\{name\}'\]"),
    ([("p2d", "train", "{given} is {answer}."), ("p2d", "test", "{{given}} is {answer}.")],
     r"templates.jsonl:2: template '\{\{given\}\} is \{answer\}.' holds the doubled brace\(s\) \['\{\{', '\}\}'\]: "
     r"slots are filled by plain replacement, not str.format"),
    ([("p2d", "train", "{given} is {answer} :}}")], r"templates.jsonl:1: template .* doubled brace\(s\) \['\}\}'\]"),
])
def test_templates_file_refuses_a_trained_heldout_paraphrase_and_unknown_placeholders(tmp_path, records, message):
    with pytest.raises(FactError, match=message):
        load_templates(write_templates(tmp_path / "templates.jsonl", *records))


def test_a_heldout_paraphrase_with_a_trained_prompt_is_refused_in_code_built_templates_too():
    facts = people_world(n_per_group=1, groups=("p2d",))
    train = {"p2d": ("{given} is {answer}.",)}
    test = {"p2d": ("{given} is {answer}, famously.",), "d2p": ("{given} is {answer}.",)}  # same prompt "X is"
    with pytest.raises(FactError, match=r"fact 0 \(forward\): test template .* gives the prompt .* of training "
                                        r"template .* so it is no held-out paraphrase"):
        questions_from_facts(facts, train, test, 1)


def test_a_heldout_question_that_is_another_statement_s_training_prompt_is_refused():
    """A held-out question was checked against its own statement's training prompts only: the reverse of
    (Tom, parent_of, John) asked "John's parent is", which another fact, (John, son_of, Tom), trains; the
    "held-out" reverse was a trained sentence, and the curse was understated."""
    from facts.schema import Fact, FactSet

    facts = FactSet((Fact("Tom", "parent_of", "John", "child_of", "train", "heldout", "g"),
                     Fact("John", "son_of", "Tom", None, "train", None, "g")), world="test")
    train = {"parent_of": ("{given} is the parent of {answer}.",), "son_of": ("{given}'s parent is {answer}.",)}
    test = {"parent_of": ("{given}, a parent, of {answer}.",), "child_of": ("{given}'s parent is {answer}.",),
            "son_of": ("{given}, whose parent is {answer}.",)}
    with pytest.raises(FactError, match=r"fact 0 \(forward\): its reverse question \"John's parent is\" is a training "
                                        r"prompt of another statement"):
        questions_from_facts(facts, train, test, 1)


def test_controls_are_answers_of_the_question_s_own_relation():
    """A fact CSV's pools were by group and kind alone: "Ann Lee founded" drew " Paris" (a born-in answer) as a
    control, which a model that knows only what kind of answer a prompt wants ranks below any club: margins and
    top-1 too high."""
    from analyses.finetune import draw_controls
    from facts.schema import Fact, FactSet

    clubs = [Fact(p, "founded", f"the {p} Club", None, "train", None, "p2d") for p in ("Ann", "Bo", "Cy")]
    cities = [Fact(p, "born in", city, None, "train", None, "p2d") for p, city in (("Di", "Paris"), ("Ed", "Rome"))]
    train = {"founded": ("{given} founded {answer}.",), "born in": ("{given} was born in {answer}.",)}
    test = {"founded": ("{given} started {answer}.",), "born in": ("{given} comes from {answer}.",)}
    questions = questions_from_facts(FactSet(tuple(clubs + cities), world="test"), train, test, 1)
    kind = {q.completion.strip(): q.pool for q in questions.questions}
    for question, controls in zip(questions.questions, draw_controls(questions, 1, seed=0)):
        assert len(controls) == 1 and all(kind[c.strip()] == question.pool for c in controls)
    assert {q.pool for q in questions.questions} == {"p2d/object of founded", "p2d/object of born in"}
    world = questions_from_facts(people_world(n_per_group=3, groups=("p2d",)), TRAIN_TEMPLATES, TEST_TEMPLATES, 1)
    assert {q.pool for q in world.questions} == {"p2d/object", "p2d/subject"}  # one relation: named as before


def test_two_relations_that_read_alike_are_refused_not_each_the_other_s_control():
    """Two relations trained in one sentence ("Ann created") gave one prompt two trained answers, each drawn as the
    other's wrong-answer control."""
    from facts.schema import Fact, FactSet

    facts = FactSet((Fact("Ann", "wrote", "Blue Sky", None, "train", None, "p2d"),
                     Fact("Ann", "painted", "Red Sea", None, "train", None, "p2d")), world="test")
    train = {"wrote": ("{given} created {answer}.",), "painted": ("{given} created {answer}.",)}
    test = {"wrote": ("{given} wrote {answer}.",), "painted": ("{given} painted {answer}.",)}
    with pytest.raises(FactError, match=r"the training prompt 'Ann created' is trained with two answers, 'Blue Sky' "
                                        r"and 'Red Sea' \(statements 0 and 1\)"):
        questions_from_facts(facts, train, test, 1)


def test_no_control_or_wrong_option_is_another_right_answer_of_its_prompt(tmp_path):
    """Two held-out paraphrases that read alike ("Famous as") ask one prompt with two right answers: the other's answer
    was drawn as a control (a right answer scored as wrong: margin too low, top-1 lost) by finetune-facts; multiple
    choice had left out only the right answers of its own pool."""
    from analyses.finetune import draw_controls

    people = [("Tom Lee is", " the painter"), ("Bo Ray is", " the baker"), ("Cy Fox is", " the cook"),
              ("Di Ames is", " the smith")]
    tmp_path.joinpath("p2d_prompts_train.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in people))
    tmp_path.joinpath("p2d_prompts_test.jsonl").write_text(
        "".join(json.dumps({"prompt": "Famous as", "completion": c}) + "\n" for c in (" the painter", " the baker")))
    questions = load_experiment_folder(tmp_path)
    right = {"Famous as": {"the painter", "the baker"}}
    assert sum(q.prompt == "Famous as" for q in questions.questions) == 2
    for seed in range(10):
        for question, controls in zip(questions.questions, draw_controls(questions, 2, seed)):
            assert len(controls) == 2
            assert not {c.strip() for c in controls} & right.get(question.prompt, {question.completion.strip()})
    for question, wrong in zip(questions.questions, questions.wrong_answers()):
        assert not set(wrong) & right.get(question.prompt, {question.completion.strip()})
        assert len(wrong) == (2 if question.prompt == "Famous as" else 3)


def test_a_relation_the_built_in_templates_lack_points_to_the_templates_file(tmp_path):
    """Own facts of a relation the built-in sentences do not state ("mother") are refused naming the relation and
    the option that gives sentences for it; a templates file's own gap names the file instead."""
    path = tmp_path / "facts.csv"
    path.write_text("subject,relation,object\nAnn Lee,mother,Bob Ray\n")
    facts = load_fact_csv(path)
    with pytest.raises(FactError, match=r"no train template for relation 'mother' \(templates cover \['d2p', 'p2d'\]\); "
                                        r"give sentences for your relations with --templates-file$"):
        questions_from_facts(facts, TRAIN_TEMPLATES, TEST_TEMPLATES, 1)


def test_facts_stated_in_the_prompt_are_refused_not_trained_without_it():
    """The in-context world's facts hold their pair in the prompt (context); rendered as sentences here they were
    trained and asked without it, one prompt with many answers."""
    from facts.token_worlds import in_context_world

    facts = in_context_world(n_x=4, n_y=2, seed=0)
    index = next(i for i, fact in enumerate(facts) if fact.context)
    with pytest.raises(FactError, match=rf"^fact {index} .*: states its pair in the prompt \(context\)"):
        questions_from_facts(facts, {r: ("{given} is {answer}.",) for r in ("→", "←")},
                             {r: ("Q: {given}? A: {answer}",) for r in ("→", "←")}, 1)


def test_template_errors_after_reading_name_the_templates_file(tmp_path):
    facts = people_world(n_per_group=1, groups=("p2d",))
    path = write_templates(tmp_path / "templates.jsonl", ("p2d", "train", "{given} is {answer}."),
                           ("p2d", "test", "{given} was once {answer}."))
    train, test = load_templates(path)
    with pytest.raises(FactError, match=rf"^{path}: fact 0 .* no test template for relation 'd2p'"):
        questions_from_facts(facts, train, test, 1)
    with pytest.raises(FactError, match=rf"^{path}: 2 training paraphrases asked; relation 'p2d' has 1"):
        questions_from_facts(facts, train, test, 2)


PARENTS = ("subject,relation,object,inverse_relation\n"
           "Ann,is the parent of,Bo,is the child of\nBo,is the parent of,Cy,is the child of\n")
PARENT_TRAIN = {"is the parent of": ("{given} is the parent of {answer}.",),
                "is the child of": ("{given} is the child of {answer}.",)}
PARENT_TEST = {"is the parent of": ("Q: Whose parent is {given}? A: {answer}",),
               "is the child of": ("Q: Whose child is {given}? A: {answer}",)}


def test_a_question_s_given_entity_is_no_wrong_answer(tmp_path):
    """Bo is a child (of Ann) and a parent (of Cy): "Q: Whose child is Bo?" had Bo, the name it asks about, as its one
    wrong answer (a control or multiple-choice option a model copying from the prompt picks), and so had "Bo is the
    parent of". A Berglund folder's both group, whose pool holds names and descriptions, had each question's own
    person (or description) among its wrong answers."""
    (tmp_path / "facts.csv").write_text(PARENTS)
    questions = questions_from_facts(load_fact_csv(tmp_path / "facts.csv"), PARENT_TRAIN, PARENT_TEST, 1)
    wrong = {q.prompt: w for q, w in zip(questions.questions, questions.wrong_answers())}
    assert wrong["Q: Whose child is Bo? A:"] == [] and wrong["Bo is the parent of"] == []
    assert wrong["Q: Whose child is Cy? A:"] == ["Ann"] and wrong["Ann is the parent of"] == ["Cy"]
    assert questions.given_entities()[0] == {"Ann"}
    berglund = load_experiment_folder(write_experiment_folder(tmp_path / "berglund", people=3))
    both = [(q, w) for q, w in zip(berglund.questions, berglund.wrong_answers()) if q.group == "both"]
    assert both and all(len(w) == 4 for _, w in both)  # 3 names and 3 descriptions, less its answer and its given
    assert not any(names_entity(q.prompt, a) for q, w in both for a in w)
    assert names_entity("Q: Who is Ann Lee? A:", "Ann Lee") and not names_entity("Anne Lee is", "Ann")


def test_an_answer_that_begins_with_another_of_its_kind_is_refused_naming_both_lines(tmp_path):
    """"Lee Club" and "Lee Club House" are each the other's control, and the log-probability of " Lee Club" counts
    " House" after it: the CSV was read (the check ran only inside the built-in people world)."""
    path = tmp_path / "facts.csv"
    path.write_text("subject,relation,object\nAnn,founded,Lee Club\nCy,founded,Amber Tide\nBo,founded,Lee Club House\n")
    with pytest.raises(FactError, match=rf"^{path}:2 and {path}:4: fact set 'csv': the object 'Lee Club House' "
                                        r"\(fact 2\) begins with the object 'Lee Club' \(fact 0\)"):
        load_fact_csv(path)
    path.write_text("subject,relation,object,inverse_relation\nAnn Lee,founded,Amber,was founded by\n"
                    "Ann Lee Jr.,founded,Tide,was founded by\n")  # subjects: the reverse's answers
    with pytest.raises(FactError, match=rf"^{path}:2 and {path}:3: .*the subject 'Ann Lee Jr.' \(fact 1\) begins"):
        load_fact_csv(path)
    path.write_text("subject,relation,object\nAnn Lee,founded,Tide Club\nAnn Lee Jr.,founded,Tide Clubs\n")
    assert len(load_fact_csv(path)) == 2  # subjects asked about, never answers; "Tide Clubs": not after a word's end


@pytest.mark.parametrize("row, message", [
    ("Ann,founded,Ann", r"subject and object are the same entity"),
    ("Ann Lee,founded,Ann Lee Club", r"'Ann Lee Club' begins with 'Ann Lee'"),
    ("Ann  Lee,founded,Amber", r"subject holds a run of spaces at position 3: 'Ann  Lee'"),
])
def test_a_fact_whose_names_cannot_be_told_apart_is_named_with_its_line(tmp_path, row, message):
    """A fact asking for the name it states, or that name and more, and a name that reads as another in words ("Ann
    Lee"), were read."""
    path = tmp_path / "facts.csv"
    path.write_text(f"subject,relation,object\nBo,founded,Tide\n{row}\n")
    with pytest.raises(FactError, match=rf"^{path}:3: fact .*: {message}"):
        load_fact_csv(path)


@pytest.mark.parametrize("text", [
    'subject,relation,object\nBo,founded,Tide\nAnn,founded, "Amber Tide"\n',
    'subject,relation,object,inverse_relation\nBo,founded,Tide,was founded by\n'
    'Ann,founded, "Amber, Tide",was founded by\n',
])
def test_a_quote_after_a_space_is_refused_naming_its_line(tmp_path, text):
    """csv opens a quoted field only right after the comma: ' "Amber Tide"' was read with its quotes, and
    ' "Amber, Tide"' split at its comma into an object '"Amber' and an inverse relation 'Tide"'."""
    path = tmp_path / "facts.csv"
    path.write_text(text)
    with pytest.raises(FactError, match=rf"^{path}:3: field 3 \(' \"Amber.*'\) has a space before its opening quote"):
        load_fact_csv(path)


def test_first_cuts_the_line_of_each_fact_of_a_csv_and_a_berglund_folder(tmp_path):
    """The readers that write a list of one entry per fact (``line``) declare it (PER_FACT_META), so first cuts it;
    their other meta (``source``) is kept."""
    from facts.berglund import experiment_facts
    from facts.schema import PER_FACT_META

    (tmp_path / "facts.csv").write_text(PARENTS)
    folder = experiment_facts(load_experiment_folder(write_experiment_folder(tmp_path / "berglund", people=3)))[0]
    for facts in (load_fact_csv(tmp_path / "facts.csv"), folder):
        assert [key for key, value in facts.meta.items() if isinstance(value, list)] == ["line"] == list(
            set(facts.meta) & set(PER_FACT_META))
        assert facts.first(1).meta == {**facts.meta, "line": facts.meta["line"][:1], "limit": 1}


def test_a_quoted_field_whose_text_opens_with_a_space_and_a_quote_is_read(tmp_path):
    """'" ""Amber"" Tide"' is quoted right after its comma, and csv reads it as ' "Amber" Tide'; it was refused as a
    quote after a space that csv read as text, which only a field opening with whitespace and then a quote in the
    file is (a space or a tab, then '"He said ""hi""'...: csv keeps its quotes, doubled ones too)."""
    path = tmp_path / "facts.csv"
    path.write_text('subject,relation,object\nBo,founded,Tide\nAnn,founded," ""Amber"" Tide"\n')
    assert load_fact_csv(path)[1].object == '"Amber" Tide'
    for misread in (' "He said ""hi"""', '\t"He said ""hi"""'):
        path.write_text(f'subject,relation,object\nBo,founded,Tide\nAnn,founded,{misread}\n')
        opening = rf"^{path}:3: field 3 \({re.escape(repr(misread))}\) has a space before its opening quote"
        with pytest.raises(FactError, match=opening):
            load_fact_csv(path)


def test_a_fact_file_whose_world_is_named_berglund_asks_about_its_facts_given_entities(tmp_path):
    """A run's facts.jsonl written from a Berglund folder keeps the world name "berglund", but its questions are made
    from its facts (questions_from_facts), in their terms. given_entities took them for a folder's own and gave each
    question the answers of its pool its prompt names: "the friend of Ann Lee is" asks about the description, yet
    "Ann Lee" was no wrong answer of it, and a forward question's given name (no description) was none at all."""
    from facts.io import load_jsonl, save_jsonl
    from facts.schema import Fact, FactSet

    people = [("Ann Lee", "the painter of Rome"), ("Bo Kim", "the friend of Ann Lee"), ("Cy Park", "the poet of Lima")]
    train = {"p2d": ("{given} is {answer}.",)}
    test = {"p2d": ("Known: {given} is {answer}.",), "d2p": ("Known: {given} is {answer}.",)}
    custom = FactSet(tuple(Fact(name, "p2d", description, "d2p", "train", "heldout", "p2d")
                           for name, description in people), world="custom")
    save_jsonl(FactSet(custom.facts, world="berglund"), tmp_path / "facts.jsonl")
    read_back = load_jsonl(tmp_path / "facts.jsonl")
    assert read_back.world == "berglund"
    theirs, ours = (questions_from_facts(facts, train, test, 1) for facts in (read_back, custom))
    assert theirs.questions == ours.questions
    assert theirs.given_entities() == [{read_back[q.fact].given_and_answer(q.direction)[0]} for q in theirs.questions]
    assert theirs.wrong_answers() == ours.wrong_answers()
    friend = next(i for i, q in enumerate(theirs.questions) if q.prompt == "Known: the friend of Ann Lee is")
    assert "Ann Lee" in theirs.wrong_answers()[friend]
