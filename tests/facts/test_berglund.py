"""Berglund et al. prompt/completion JSONL: reading, writing, errors, and tokenized examples."""

from __future__ import annotations

import json
import pathlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facts.berglund import examples_from_pairs, load_prompt_completion_jsonl, save_prompt_completion_jsonl
from facts.language import TEST_TEMPLATES, TemplateTokenizer, people_world, prompts
from facts.schema import FactError
from facts.tokens import collate

PAIRS = [
    ("Daphne Barrington, known far and wide for being", " the director of the film 'Glass Meridian'."),
    ("Known for being the first person to row across Lake Veshtar,", " Uriah Hawthorne now lives a quiet life."),
    ('Q: Who is "the composer of the opera \'Paper Tide\'"? A:', " Isolde Whitlock"),
]


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    """The real SmolLM2 tokenizer (session fixture in tests/conftest.py)."""
    return smollm2_tokenizer


def write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_reads_their_format(tmp_path):
    lines = [json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS]
    path = write_lines(tmp_path / "p2d_prompts_train.jsonl", [lines[0], "", lines[1], "   ", lines[2]])
    assert load_prompt_completion_jsonl(path) == PAIRS


def test_extra_keys_are_ignored(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [json.dumps({"prompt": "a", "completion": " b", "source": 3})])
    assert load_prompt_completion_jsonl(path) == [("a", " b")]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.text(), st.text()), min_size=1, max_size=8))
def test_save_load_round_trip(tmp_path, pairs):
    path = save_prompt_completion_jsonl(pairs, tmp_path / "sub" / "pairs.jsonl")
    assert load_prompt_completion_jsonl(path) == pairs
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "completion": " b"}', '{"prompt": "a", '], r":2: not valid JSON"),
        (['{"prompt": "a"}'], r":1: missing key\(s\) \['completion'\]"),
        (['{"completion": " b"}'], r":1: missing key\(s\) \['prompt'\]"),
        (['{"prompt": "a", "completion": 3}'], r":1: 'completion' must be a string, got int"),
        (['{"prompt": null, "completion": " b"}'], r":1: 'prompt' must be a string, got NoneType"),
        (['["a", " b"]'], r":1: expected a JSON object, got list"),
        (["", "  "], "holds no prompt/completion pairs"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(FactError, match=message) as error:
        load_prompt_completion_jsonl(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(FactError, match="no such prompt/completion file"):
        load_prompt_completion_jsonl(tmp_path / "absent.jsonl")


def test_examples_from_pairs(tok):
    examples = examples_from_pairs(PAIRS, tok, split="heldout", direction="reverse")
    assert [(e.fact, e.split, e.direction) for e in examples] == [(i, "heldout", "reverse") for i in range(3)]
    for example, (prompt, completion) in zip(examples, PAIRS):
        assert tok.decode(list(example.prompt)) == prompt
        assert tok.decode(list(example.answer)) == completion
    batch = collate(examples)
    assert len(batch) == 3 and batch.answer_len.tolist() == [len(e.answer) for e in examples]


def test_trailing_prompt_space_moves_to_the_answer(tok):
    bos = tok.bos_token_id
    (example,) = examples_from_pairs([("Q: Who? A: ", "Daphne")], tok, "train", "forward", prefix=(bos,))
    assert example.prompt[0] == bos
    assert tok.decode(list(example.prompt[1:])) == "Q: Who? A:" and tok.decode(list(example.answer)) == " Daphne"


def test_examples_agree_with_the_template_tokenizer(tok, tmp_path):
    world = people_world(n_per_group=4)
    held_out = prompts(world, TEST_TEMPLATES)
    pairs = [(s.rendered.prompt, s.rendered.answer) for s in held_out]
    path = save_prompt_completion_jsonl(pairs, tmp_path / "reverse_prompts_test.jsonl")
    from_file = examples_from_pairs(load_prompt_completion_jsonl(path), tok, "heldout", "reverse")
    for example, statement in zip(from_file, held_out, strict=True):
        tokenizer = TemplateTokenizer(tok, TEST_TEMPLATES, statement.template)
        direct = tokenizer.example(world, statement.fact, statement.direction)
        assert (example.prompt, example.answer) == (direct.prompt, direct.answer)


@pytest.mark.parametrize(
    ("pairs", "split", "direction", "message"),
    [
        ([("a", " b")], "test", "forward", "split must be one of"),
        ([("a", " b")], "train", "sideways", "direction must be one of"),
        ([("Ann says wor", "ld")], "train", "forward", r"pair 0 \('Ann says wor'\): .* do not tokenize apart"),
        ([("a", "")], "train", "forward", "the answer has no tokens"),
    ],
)
def test_examples_from_pairs_errors(tok, pairs, split, direction, message):
    with pytest.raises(FactError, match=message):
        examples_from_pairs(pairs, tok, split, direction)


def write_folder(folder: pathlib.Path, files: dict[str, list[tuple[str, str]]]) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in files.items():
        write_lines(folder / name, [json.dumps({"prompt": p, "completion": c}) for p, c in pairs])
    return folder


TWO_PEOPLE = [("Tom Lee is", " the painter"), ("Bo Ray is", " the baker")]
REVERSE = "p2d_reverse_prompts_test.jsonl"
RANDOMIZED = "p2d_reverse_prompts_test_randomized.jsonl"


@pytest.mark.parametrize("files, message", [
    ({"p2d_prompts_train.jsonl": [("Tom Lee is", " the painter"), ("Ann Cole is", " the painter")],
      REVERSE: [("Who is the painter?", " Tom Lee"), ("Name the painter:", " Ann Cole")]},
     rf"{REVERSE}:1 and .*{REVERSE}:2: two answers, 'Tom Lee' and 'Ann Cole', to the reverse of the trained "
     r"statement 'the painter' of p2d_prompts_train.jsonl: two people with one description"),
    ({"p2d_prompts_train.jsonl": [("Tom Lee is", " the painter"), ("Tom Lee was", "the painter")],
      REVERSE: [("Who is the painter?", " Tom Lee")]},
     r"p2d_prompts_train.jsonl:2: completion 'the painter' differs from ' the painter' on line 1 only in "
     r"surrounding whitespace"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE,
      REVERSE: [("Who is the painter?", " Tom Lee"), ("Name the painter:", " Bo Ray"),
                ("Who is the baker?", " Bo Ray")]},
     rf"{REVERSE}:2: the answer 'Bo Ray' is not the person of the trained statement 'the painter'"),
    ({"p2d_prompts_train.jsonl": [*TWO_PEOPLE, ("Tom Lee is", " the painter")]},
     r"p2d_prompts_train.jsonl:3: repeats line 1 .*; keep one, a repeated line is no second paraphrase"),
    ({"p2d_prompts_train.jsonl": [("Tom Lee is", "")], REVERSE: [("Who?", " Tom Lee")]},
     r"p2d_prompts_train.jsonl:1: the completion '' is empty"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, REVERSE: [("Who is the painter?", "  ")]},
     rf"{REVERSE}:1: the completion '  ' is empty"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, REVERSE: [("Who is the painter?", " Tom Lee")],
      RANDOMIZED: [("Who is the painter?", " Bo Ray"), ("Who is the baker?", " Tom Lee"),
                   ("Who is the painter?", " Cy Fox")]},
     rf"{RANDOMIZED}:1 and .*{RANDOMIZED}:3: prompt 'Who is the painter\?' has two completions, ' Bo Ray' and "
     r"' Cy Fox'; keep one"),
    ({"d2p_prompts_train.jsonl": [("Known for the painting,", " Tom Lee"), ("Known for the painting,", " Bo Ray")]},
     r"d2p_prompts_train.jsonl:1 and .*d2p_prompts_train.jsonl:2: the prompt 'Known for the painting,' is trained with "
     r"two answers, ' Tom Lee' and ' Bo Ray'"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, "p2d_prompts_test.jsonl": [("Bo Ray, known as", " the painter")],
      REVERSE: [("Who is the painter?", " Tom Lee"), ("Who is the baker?", " Bo Ray")]},
     r"p2d_prompts_test.jsonl:1: the prompt names \['Bo Ray'\], not 'Tom Lee', whose statement its completion "
     r"'the painter' is"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, REVERSE: [("Who is the painter?", " Tom Lee")],
      "both_prompts_train.jsonl": [("Who is the painter?", " Tom Lee")]},
     rf"{REVERSE}:1: prompt 'Who is the painter\?' is also a training prompt \(.*both_prompts_train.jsonl:1\), so "
     r"it is not held out"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, "p2d_prompts_test.jsonl": [("Tom Lee  is ", " the painter")]},
     r"p2d_prompts_test.jsonl:1: prompt 'Tom Lee  is ' is also a training prompt \(.*p2d_prompts_train.jsonl:1\)"),
    ({"p2d_prompts_train.jsonl": [*TWO_PEOPLE, ("Tom Lee is ", " the painter")]},
     r"p2d_prompts_train.jsonl:3: repeats line 1 "),
    ({"p2d_prompts_train.jsonl": [("Tom Lee is", " the painter"), ("Tom Lee, known as", " the baker")],
      REVERSE: [("Who is the painter?", " Tom Lee"), ("Who is the baker?", " Tom Lee")]},
     rf"{REVERSE}:1 and .*{REVERSE}:2: the answer 'Tom Lee' is the reverse of two trained statements of "
     r"p2d_prompts_train.jsonl: one person with two descriptions"),
    ({"d2p_prompts_train.jsonl": [("Known for the painting,", " Tom Lee"), ("Known for the picture,", " Bo Ray")],
      "d2p_reverse_prompts_test.jsonl": [("Tom Lee is known for", " the painting"),
                                         ("Bo Ray is known for", " the painting")]},
     r"d2p_reverse_prompts_test.jsonl:1 and .*:2: the answer 'the painting' is the reverse of two trained statements "
     r"of d2p_prompts_train.jsonl: two people with one description"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, REVERSE: [("Who is the painter?", " Tom Lee")],
      RANDOMIZED: [("Who is the painter? ", " Bo Ray")]},
     rf"{RANDOMIZED}:1: prompt 'Who is the painter\? ' is no question of {REVERSE}, so its control would be dropped"),
    ({"p2d_prompts_train.jsonl": TWO_PEOPLE, RANDOMIZED: [("Who is the painter?", " Bo Ray")]},
     rf"{RANDOMIZED}: controls of reverse questions, but {REVERSE} is missing"),
])
def test_folder_that_would_merge_misread_or_double_count_statements_is_refused(tmp_path, files, message):
    from facts.berglund import load_experiment_folder

    with pytest.raises(FactError, match=message):
        load_experiment_folder(write_folder(tmp_path / "folder", files))


def test_folder_with_one_person_per_description_still_reads(tmp_path):
    from facts.berglund import load_experiment_folder

    folder = write_folder(tmp_path / "folder", {
        "p2d_prompts_train.jsonl": [*TWO_PEOPLE, ("Tom Lee was", " the painter")],
        REVERSE: [("Who is the painter?", " Tom Lee"), ("Name the painter:", " Tom Lee"),
                  ("Who is the baker?", " Bo Ray")],
        RANDOMIZED: [("Who is the painter?", " Bo Ray"), ("Who is the painter?", " Bo Ray")]})  # an exact repeat
    questions = load_experiment_folder(folder)
    assert [q.extra_controls for q in questions.questions if q.setting == "reverse"] == [(" Bo Ray",), (), ()]
    from analyses.finetune import draw_controls  # a randomized name is spaced as the right answer is

    unspaced = write_folder(tmp_path / "unspaced", {"p2d_prompts_train.jsonl": TWO_PEOPLE,
                                                    REVERSE: [("Who is the painter?", " Tom Lee")],
                                                    RANDOMIZED: [("Who is the painter?", "Bo Ray")]})
    assert draw_controls(load_experiment_folder(unspaced), 0, seed=0)[-1] == [" Bo Ray"]
    assert [(pair.key, pair.prompt) for pair in questions.train] == [(0, "Tom Lee is"), (0, "Tom Lee was"),
                                                                      (1, "Bo Ray is")]
    assert [(q.key, q.completion) for q in questions.questions if q.setting == "reverse"] == [
        (0, " Tom Lee"), (0, " Tom Lee"), (1, " Bo Ray")]
    with pytest.raises(FactError, match="paraphrases must be ≥ 1, got 0"):
        load_experiment_folder(folder, paraphrases=0)


def test_a_statement_its_probes_cannot_read_a_template_from_is_named_with_its_line(tmp_path):
    """experiment_facts refuses a trained prompt that does not hold the description its reverse question answers
    verbatim (no sentence template follows from it); the refusal named the training file alone."""
    from facts.berglund import experiment_facts, load_experiment_folder

    folder = write_folder(tmp_path / "folder", {
        "d2p_prompts_train.jsonl": [("Known for the painting,", " Tom Lee"), ("Famed for the bread,", " Bo Ray")],
        "d2p_reverse_prompts_test.jsonl": [("Tom Lee is known for", " the painting"),
                                           ("Bo Ray is known for", " his bread")]})
    with pytest.raises(FactError, match=r"d2p_prompts_train.jsonl:2: prompt 'Famed for the bread,' does not contain "
                                        r"'his bread' verbatim"):
        experiment_facts(load_experiment_folder(folder))


NFD_JOSE = "Jose\u0301 Ruiz"  # "José Ruiz" with a combining accent


@pytest.mark.parametrize("files, message", [
    ({"p2d_prompts_train.jsonl": [("Tom  Lee is", " the painter")], REVERSE: [("Who is the painter?", " Tom  Lee")]},
     rf"p2d_prompts_train.jsonl:1 and .*{REVERSE}:1: fact \('Tom  Lee' .*\): subject holds a run of spaces"),
    ({"p2d_prompts_train.jsonl": [("José Ruiz is", " the painter")], REVERSE: [("Who is the painter?", " José Ruiz")],
      "d2p_prompts_train.jsonl": [("Known for the bread,", f" {NFD_JOSE}")],
      "d2p_reverse_prompts_test.jsonl": [(f"{NFD_JOSE} is known for", " the bread")]},
     rf"p2d_prompts_train.jsonl:1 and .*{REVERSE}:1 and .*d2p_prompts_train.jsonl:1 and "
     r".*d2p_reverse_prompts_test.jsonl:1: fact set 'berglund': entities .* differ only in Unicode normalisation"),
    ({"p2d_prompts_train.jsonl": [("Tom Lee is", " the clock maker"), ("Ann Bo is", " the clock maker of Bern")],
      REVERSE: [("Who is the clock maker?", " Tom Lee"), ("Who is the clock maker of Bern?", " Ann Bo")]},
     rf"p2d_prompts_train.jsonl:1 and .*{REVERSE}:1 and .*p2d_prompts_train.jsonl:2 and .*{REVERSE}:2: .*the object "
     r"'the clock maker of Bern' \(fact 1\) begins with the object 'the clock maker' \(fact 0\)"),
])
def test_a_fact_the_schema_refuses_is_named_with_the_lines_it_comes_from(tmp_path, files, message):
    """experiment_facts built its facts and fact set unguarded: a name the schema refuses, or two people whose names
    differ only in Unicode normalisation, were refused without a file or line; and two descriptions one of which
    begins with the other (each the other's control), which the other fact readers refuse, were accepted."""
    from facts.berglund import experiment_facts, load_experiment_folder

    with pytest.raises(FactError, match=message):
        experiment_facts(load_experiment_folder(write_folder(tmp_path / "folder", files)))


def test_a_person_the_both_group_trains_both_ways_is_one_fact(tmp_path):
    """A both-group person's name → description and description → name statements were two facts (fact = key), so
    each person counted twice in every interval over facts (up to √2 too narrow), where the built-in world's both
    group counts them once. They are one fact now, found by the prompts naming one another's completion; a statement
    that names no other's is a fact of its own, and the one-way groups keep a fact per statement."""
    from berglund_folder import write_experiment_folder
    from facts.berglund import load_experiment_folder

    # what `make-facts people --format berglund --size 4` writes
    folder = write_experiment_folder(tmp_path / "data", people=4)
    questions = load_experiment_folder(folder)
    both = [q for q in questions.questions if q.group == "both"]
    assert len({q.key for q in both}) == 8 and len({q.fact for q in both}) == 4
    world = people_world(n_per_group=4, groups=("p2d", "d2p", "both"))
    people = [{fact.subject, fact.object} for fact in world if fact.group == "both"]
    for fact in {q.fact for q in both}:
        trained = {q.completion.strip() for q in both if q.fact == fact and q.setting == "forward_trained_paraphrase"}
        assert trained in people  # its person's description and name
        assert {q.key for q in both if q.fact == fact} == {q.key for q in both if q.fact == fact and q.setting ==
                                                           "forward_heldout_paraphrase"}  # held-out ones follow
    one_way = [q for q in questions.questions if q.group != "both"]
    assert all(q.fact == q.key for q in one_way) and not {q.fact for q in one_way} & {q.fact for q in both}
    alone = write_folder(tmp_path / "alone", {"both_prompts_train.jsonl": [
        ("Tom Lee is", " the painter"), ("Known as the painter,", " Tom Lee"), ("Bo Ray is", " the baker")]})
    assert [q.fact for q in load_experiment_folder(alone).questions] == [0, 0, 2]
