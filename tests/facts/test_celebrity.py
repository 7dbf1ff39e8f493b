"""The celebrity parent/child CSV reader: the real file, path resolution, round trips, errors."""

from __future__ import annotations

import csv
import pathlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from facts import celebrity
from facts.celebrity import (
    COLUMNS,
    COMPLETION_TEMPLATES,
    CSV_ENV,
    QUESTION_TEMPLATES,
    celebrity_csv_path,
    load_celebrity_pairs,
)
from facts.language import TemplateTokenizer, answers_of_kind, controls
from facts.schema import FactError, FactSet
from facts.tokens import tokenize

REAL_CSV = celebrity.DEFAULT_CSV  # the copy shipped as package data
HEADER = ",".join(COLUMNS)


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    """The real SmolLM2 tokenizer (session fixture in tests/conftest.py)."""
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def real() -> FactSet:
    return load_celebrity_pairs(REAL_CSV)


def write_csv(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text, encoding="utf-8")
    return path


def fact_index(facts: FactSet, child: str, relation: str) -> int:
    return next(i for i, f in enumerate(facts) if (f.subject, f.relation) == (child, relation))


# --- the real file ----------------------------------------------------------------------------


def test_real_file_counts(real):
    meta = real.meta
    assert real.world == "celebrity"
    assert meta["rows"] == 1513 and len(real) == 1502  # 1,511 distinct pairs, 9 whose names copy the other's
    assert meta["duplicate_lines"] == [81, 82]  # Rebecca Romijn's two rows, repeated
    assert len(meta["line"]) == len(meta["can_reverse"]) == len(meta["child_prediction"]) == len(real)
    assert sum(meta["can_reverse"]) == 485  # 494 of the 1,511 distinct pairs; 9 of them left out
    assert {f.group for f in real} == {"mother", "father"}
    assert all(f.forward == "heldout" for f in real)
    assert real.count("heldout") == 1502 + 1502 - 19 - 16  # later siblings; second rows of mother-and-father
    assert len(meta["one_to_many"]) == 17 and len(meta["mother_and_father"]) == 16


def test_real_file_facts(real):
    i = fact_index(real, "Jennifer Lawrence", "mother")
    fact = real[i]
    assert (fact.object, fact.inverse_relation, fact.reverse) == ("Karen Lawrence", "mother of", "heldout")
    assert real.meta["line"][i] == 10
    assert real.meta["can_reverse"][i] is True and real.meta["child_prediction"][i] == "Jennifer Lawrence"
    washington = real[fact_index(real, "Denzel Washington", "father")]
    assert washington.object == "Denzel Hayes Washington, Sr."  # a quoted name with a comma


def test_one_parent_with_several_children_keeps_one_reverse(real):
    chris, liam = (real[fact_index(real, name, "mother")] for name in ("Chris Hemsworth", "Liam Hemsworth"))
    assert chris.object == liam.object == "Leonie Hemsworth"
    assert (chris.reverse, liam.reverse) == ("heldout", None)
    kids = ["Chris Hemsworth", "Liam Hemsworth"]
    assert {"parent": "Leonie Hemsworth", "relation": "mother of", "children": kids} in real.meta["one_to_many"]
    children = set(answers_of_kind(real, "reverse"))
    everyone = controls(real, fact_index(real, "Chris Hemsworth", "mother"), "reverse", k=len(children) - 2)
    assert set(everyone) == children - {"Chris Hemsworth", "Liam Hemsworth"}  # a sibling is no control


@pytest.mark.parametrize(
    ("templates", "forward", "reverse"),
    [
        (QUESTION_TEMPLATES, "Q: Who is Jennifer Lawrence's mother?\nA:", "Q: Name a child of Karen Lawrence.\nA:"),
        (COMPLETION_TEMPLATES, "Jennifer Lawrence's mother is", "Karen Lawrence is the mother of"),
    ],
)
def test_real_file_tokenizes_cleanly(tok, real, templates, forward, reverse):
    tokenizer = TemplateTokenizer(tok, templates)
    assert len(tokenize(real, tokenizer)) == real.count("heldout")
    i = fact_index(real, "Jennifer Lawrence", "mother")
    asked, answered = tokenizer.example(real, i, "forward"), tokenizer.example(real, i, "reverse")
    assert tok.decode(list(asked.prompt)) == forward and tok.decode(list(asked.answer)) == " Karen Lawrence"
    assert tok.decode(list(answered.prompt)) == reverse
    assert tok.decode(list(answered.answer)) == " Jennifer Lawrence"


# --- where the file comes from ----------------------------------------------------------------


def test_path_resolution(tmp_path, monkeypatch):
    mine = write_csv(tmp_path / "mine.csv", f"{HEADER}\nAnn,Bea,mother,,False\n")
    monkeypatch.setenv(CSV_ENV, str(mine))
    assert celebrity_csv_path() == mine
    assert load_celebrity_pairs()[0].subject == "Ann"
    other = tmp_path / "other.csv"
    assert celebrity_csv_path(other) == other  # an explicit path beats the environment
    monkeypatch.delenv(CSV_ENV)
    monkeypatch.setattr(celebrity, "DEFAULT_CSV", tmp_path / "absent.csv")
    with pytest.raises(FactError, match=f"pass a path to parent_child_pairs.csv or set {CSV_ENV}"):
        load_celebrity_pairs()


def test_default_path_is_the_packaged_copy(monkeypatch):
    """With no path and no environment variable the reader takes the CSV inside the installed
    package (``facts/data``), found through importlib.resources: no folder beside the project."""
    monkeypatch.delenv(CSV_ENV, raising=False)
    path = celebrity_csv_path().resolve()
    assert path == (pathlib.Path(celebrity.__file__).parent / "data" / "parent_child_pairs.csv").resolve()
    assert path.is_file() and path.is_relative_to(pathlib.Path(celebrity.__file__).resolve().parent)
    assert load_celebrity_pairs().meta["rows"] == 1513


# --- round trips and errors -------------------------------------------------------------------

name = (st.text(st.sampled_from("abcXYZ ,'\"é-."), min_size=1, max_size=12)
        .map(lambda text: " ".join(text.split()))  # in words: a run of spaces inside a name is refused
        .filter(bool))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    people=st.lists(name, min_size=2, max_size=16, unique=True),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_names_with_commas_and_quotes_round_trip(tmp_path, people, flags):
    from facts.celebrity import begins_with

    half = len(people) // 2
    pairs = list(zip(people[:half], people[half : 2 * half]))
    for kind in (people[:half], people[half : 2 * half]):  # two children (or parents) "Y" and "Y." are refused
        assume(not any(begins_with(a, b) for a in kind for b in kind))  # (test_bad_files_name_file_and_line)
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i, (child, parent) in enumerate(pairs):
            writer.writerow([child, parent, "father", child, str(flags[i])])
    kept = [i for i, (c, p) in enumerate(pairs) if not (begins_with(c, p) or begins_with(p, c))]  # a copied name
    if not kept:
        with pytest.raises(FactError, match="is empty"):
            load_celebrity_pairs(path)
        return
    facts = load_celebrity_pairs(path)
    assert [(f.subject, f.object, f.relation) for f in facts] == [(*pairs[i], "father") for i in kept]
    assert facts.meta["can_reverse"] == [flags[i] for i in kept]
    assert facts.meta["child_prediction"] == [pairs[i][0] for i in kept]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("child,parent,parent_type\nAnn,Bea,mother\n", r"missing column\(s\) \['child_prediction', 'can_reverse'\]"),
        ("", "empty file"),
        # a fact file given to check-asymmetry --data: its JSON read as CSV ("field 2 ... space before its quote")
        ('{"world": "people", "meta": {"seed": 0}}\n', r":1: JSON where a celebrity CSV's header \(columns \['child', "
                                                       r".*\) must be; .* looks like JSON or JSONL"),
        (f"{HEADER}\n", "holds no pairs"),
        (f"{HEADER}\nAnn,Bea,mother,,False\n,,,,\n", r":3: child and parent must be non-empty"),
        (f"{HEADER}\nAnn,Bea,mother,,maybe\n", r":2: can_reverse must be True or False, got 'maybe'"),
        (f"{HEADER}\nAnn,Bea,aunt,,False\n", r":2: parent_type must be one of"),
        (f"{HEADER}\nAnn,Bea,mother\n", r":2: expected 5 fields"),
        (f"{HEADER}\nAnn,Bea,mother,,False,extra\n", r":2: expected 5 fields"),
        (f"{HEADER}\nAnn,Bea,mother,,False\nAnn,Cy,mother,,True\n", r":3: 'Ann' has mother 'Cy' here and 'Bea' on line 2"),
        # two children, one's name the other's and more: each would be the other's control
        (f"{HEADER}\nAnn Lee,Bea,mother,,False\nAnn Lee Jr.,Cy,mother,,False\n",
         r":2 and .*:3: .*'Ann Lee Jr\.' \(fact 1\) begins with the subject 'Ann Lee' \(fact 0\)"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, text, message):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(FactError, match=message) as error:
        load_celebrity_pairs(path)
    assert str(path) in str(error.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(FactError, match="no such celebrity CSV"):
        load_celebrity_pairs(tmp_path / "absent.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(f"{HEADER}\nRen\xe9,Bea,mother,,False\n".encode("latin-1"))
    with pytest.raises(FactError, match="not UTF-8"):
        load_celebrity_pairs(latin)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = write_csv(tmp_path / "gaps.csv", f'{HEADER}\n\n"Lee, Ann",Bea,mother,,True\n\nCy,Di,father,Cy,False\n')
    facts = load_celebrity_pairs(path)
    assert [f.subject for f in facts] == ["Lee, Ann", "Cy"] and facts.meta["line"] == [3, 5]


def test_repeated_pairs_count_once(tmp_path):
    text = f"{HEADER}\nAnn,Bea,mother,,False\nAnn,Cy,father,Ann,True\nAnn,Bea,mother,Ann,TRUE\n"
    facts = load_celebrity_pairs(write_csv(tmp_path / "twice.csv", text))
    assert [(f.subject, f.relation, f.object) for f in facts] == [("Ann", "mother", "Bea"), ("Ann", "father", "Cy")]
    assert facts.meta["duplicate_lines"] == [4] and facts.meta["rows"] == 3
    assert facts.meta["can_reverse"] == [False, True] and facts.meta["one_to_many"] == []


def test_one_parent_as_mother_of_one_child_and_father_of_another_is_refused(tmp_path):
    path = write_csv(tmp_path / "clash.csv",
                     f"{HEADER}\nAnn Lee,Pat Lee,mother,,True\nCal Ray,Dee Ray,mother,,True\n"
                     f"Bob Lee,Pat Lee,father,,True\n")
    with pytest.raises(FactError, match=rf"^{path}:2 and {path}:4: 'Pat Lee' is the mother of 'Ann Lee' on line 2 and "
                                        r"the father of 'Bob Lee' on line 4, so the reverse question 'Name a child "
                                        r"of Pat Lee.' would have two different answers"):
        load_celebrity_pairs(path)


def test_one_parent_as_mother_and_father_of_one_child_still_loads(tmp_path, real):
    path = write_csv(tmp_path / "both.csv", f"{HEADER}\nAnn Lee,Pat Lee,mother,,True\nAnn Lee,Pat Lee,father,,True\n")
    facts = load_celebrity_pairs(path)
    # both forward questions are asked; "Name a child of Pat Lee." once (twice, one statement counted twice)
    assert [(f.relation, f.forward, f.reverse) for f in facts] == [("mother", "heldout", "heldout"),
                                                                  ("father", "heldout", None)]
    assert facts.meta["mother_and_father"] == ["Pat Lee"]
    assert len(real) == 1502 and "Tell Schreiber" in real.meta["mother_and_father"]  # the shipped file loads


def test_a_question_whose_answer_begins_the_name_asked_about_is_not_asked(tmp_path, real):
    """log p(" Robert De Niro" | "Name a child of Robert De Niro Sr.") sums the answer's own tokens only, so a model
    that copies the prompt's name is scored right: the question was asked, and counted, for 9 shipped pairs. Then
    the other question was still asked, "Who is Robert De Niro's father?", whose answer is the copied name and a
    suffix against controls that share nothing with the prompt. Such a pair is asked neither way: left out."""
    from facts.celebrity import begins_with

    assert begins_with("Robert De Niro Sr.", "Robert De Niro") and begins_with("Stanley Tucci, Sr.", "Stanley Tucci")
    assert not begins_with("Anna Lee", "Ann") and not begins_with("Ann", "Ann") and not begins_with("Ann", "Ann Lee")
    path = write_csv(tmp_path / "names.csv", f"{HEADER}\nJo Day,Jo Day Sr.,father,,True\nAl Cole Jr.,Al Cole,father,,True\n"
                                             f"Bo Ray,Cy Ray,mother,,True\nCy Ray Jr.,Cy Ray,mother,,True\n")
    facts = load_celebrity_pairs(path)
    assert [(f.subject, f.forward, f.reverse) for f in facts] == [("Bo Ray", "heldout", "heldout")]
    assert facts.meta["answer_in_question"] == [2, 3, 5]
    assert facts.meta["rows"] == 4 and len(facts) == 1  # the pairs left out are still rows of the file
    assert real.meta["answer_in_question"] == [192, 512, 903, 1004, 1065, 1243, 1288, 1309, 1463]
    assert not set(real.meta["answer_in_question"]) & set(real.meta["line"])
    assert not any(begins_with(f.subject, f.object) or begins_with(f.object, f.subject) for f in real)


@pytest.mark.parametrize("templates", [QUESTION_TEMPLATES, COMPLETION_TEMPLATES], ids=["questions", "completions"])
def test_no_two_statements_of_the_shipped_file_are_one_prompt_and_answer(real, templates):
    """Every statement asked is asked once: 1,502 forward questions (the 1,511 distinct pairs less the 9 whose names
    begin with the other's, "Robert De Niro Sr.") and one reverse per parent (1,502 less the 19 later siblings and
    the 16 second rows of a parent recorded as mother and father: 1,467)."""
    from facts.language import render_statement

    asked = [(i, d) for i, fact in enumerate(real) for d in ("forward", "reverse") if fact.split(d) is not None]
    rendered = [render_statement(real, i, d, templates) for i, d in asked]
    assert len({(r.prompt, r.answer) for r in rendered}) == len(asked) == 1502 + 1467


def test_a_field_csv_cannot_read_is_named_with_file_and_line(tmp_path):
    path = write_csv(tmp_path / "huge.csv", f"{HEADER}\nAnn,Bea,mother,,False\n{'C' * 200_000},Di,father,,True\n")
    with pytest.raises(FactError, match=rf"^{path}:3: malformed CSV \(field larger than field limit"):
        load_celebrity_pairs(path)


def test_first_keeps_the_lists_that_are_not_one_entry_per_fact_whole(tmp_path):
    """Two pairs, each repeated once: ``duplicate_lines`` [4, 5] is as long as the facts, and first(1) cut it to
    [4], taking it for one entry per fact; ``line``, ``can_reverse`` and ``child_prediction`` are cut."""
    text = f"{HEADER}\nAnn,Bea,mother,Ann,False\nCy,Di,father,,True\nAnn,Bea,mother,Ann,False\nCy,Di,father,,True\n"
    facts = load_celebrity_pairs(write_csv(tmp_path / "twice.csv", text))
    assert len(facts) == len(facts.meta["duplicate_lines"]) == 2
    assert facts.first(1).meta == {**facts.meta, "line": [2], "can_reverse": [False], "child_prediction": ["Ann"],
                                   "limit": 1}
