import json
import re
import subprocess
import sys

import pytest

from facts.io import from_dataset, load_jsonl, save_jsonl, to_dataset
from facts.schema import Fact, FactError, FactSet
from facts.token_worlds import chain_world, in_context_world


@pytest.mark.parametrize("make", [lambda w: w, lambda _: chain_world(n_triples=20), lambda _: in_context_world(10, 3)])
def test_jsonl_round_trip(make, world, tmp_path):
    facts = make(world)
    path = save_jsonl(facts, tmp_path / "facts.jsonl")
    assert load_jsonl(path) == facts


def test_a_write_killed_half_way_leaves_nothing_once_the_file_is_written_again(world, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".facts.jsonl.{int(dead.stdout)}.k1ll3d00.tmp"  # what a SIGKILL mid-write leaves
    left.write_text('{"world": "reversal", "me')
    save_jsonl(world, tmp_path / "facts.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts.jsonl"]
    assert load_jsonl(tmp_path / "facts.jsonl") == world


def test_dataset_round_trip(world):
    dataset = to_dataset(world)
    assert dataset.num_rows == len(world)
    assert set(dataset.column_names) >= {"subject", "relation", "object", "forward", "reverse"}
    assert from_dataset(dataset) == world


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"subject": "e1", "relation": "→", "object": "e2"})
    path.write_text(good + "\n" + '{"subject": "e3", "relation": \n')
    with pytest.raises(FactError, match=r"bad.jsonl:2: not valid JSON"):
        load_jsonl(path)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"subject": "e1", "relation": "→"}, "missing required field"),
        ({"subject": "e1", "relation": "→", "object": "e2", "colour": "red"}, "unknown fact field"),
        ({"subject": "", "relation": "→", "object": "e2"}, "subject must be a non-empty string"),
        ({"subject": 3, "relation": "→", "object": "e2"}, "subject must be a non-empty string"),
        ({"subject": "e1", "relation": "→", "object": "e2", "forward": "test"}, "split must be one of"),
        ({"subject": "e1", "relation": "→", "object": "e2", "reverse": "train"}, "needs an inverse_relation"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_fact_records_are_named_with_their_line(record, message, tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"subject": "e1", "relation": "→", "object": "e9"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(FactError, match=message) as error:
        load_jsonl(path)
    assert "facts.jsonl:2" in str(error.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(FactError, match="holds no facts"):
        load_jsonl(empty)
    with pytest.raises(FactError, match="no such fact file"):
        load_jsonl(tmp_path / "absent.jsonl")


def test_a_csv_not_named_csv_is_read_as_json_lines_and_says_so(tmp_path):
    text = "subject,relation,object\nAnn,r,Bob\n"
    (tmp_path / "facts.txt").write_text(text)
    with pytest.raises(FactError, match=r"facts.txt:1: not valid JSON \(.*\); a fact file not named .csv is read as "
                                        r"JSON lines$"):
        load_jsonl(tmp_path / "facts.txt")
    (tmp_path / "facts.jsonl").write_text(text)
    with pytest.raises(FactError, match=r"facts.jsonl:1: not valid JSON \([^)]*\)$"):
        load_jsonl(tmp_path / "facts.jsonl")


def test_conflicting_facts_are_refused():
    with pytest.raises(FactError, match="facts 0 and 1 conflict"):
        FactSet((Fact("e1", "→", "e2"), Fact("e1", "→", "e3")))
    with pytest.raises(FactError, match="is empty"):
        FactSet(())


def test_a_second_header_line_is_refused_not_used(tmp_path):
    path = tmp_path / "facts.jsonl"
    fact = json.dumps({"subject": "e1", "relation": "→", "object": "e2"})
    path.write_text('{"world": "a", "meta": {"x": 1}}\n\n{"world": "b"}\n' + fact + "\n")
    with pytest.raises(FactError, match=rf"^{path}:1 and {path}:3: two header lines; keep one"):
        load_jsonl(path)


def test_a_dataset_row_is_read_as_its_jsonl_line(tmp_path):
    import datasets

    rows = [{"subject": "A", "relation": "r", "object": "B", "inverse_relation": "q", "forward": "train",
             "reverse": "heldout", "group": "p2d"},
            {"subject": "C", "relation": "r", "object": "D", "inverse_relation": "q", "reverse": "heldout"}]
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    from_file = load_jsonl(path)
    assert [(f.forward, f.group) for f in from_file] == [("train", "p2d"), ("train", "")]
    assert from_dataset(datasets.Dataset.from_list(rows)) == from_file  # row 2 leaves forward and group out


def test_a_dataset_from_to_dataset_keeps_a_direction_not_in_play():
    facts = FactSet((Fact("e1", "→", "e2", "←", None, "heldout"), Fact("e3", "→", "e4")), world="w")
    assert from_dataset(to_dataset(facts)) == facts


def _write_facts(path, *records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_answers_that_begin_with_another_of_their_kind_are_refused_in_a_fact_file_naming_both_lines(tmp_path):
    """load_jsonl and from_dataset read "Lee Club" beside "Lee Club House" (each the other's control, the first's
    log-probability counting the second's " House"); every world the toolkit builds still reads back."""
    import datasets

    from facts.celebrity import load_celebrity_pairs
    from facts.language import people_world
    from facts.token_worlds import reversal_world

    records = [{"subject": "Ann", "relation": "founded", "object": "Lee Club"},
               {"subject": "Cy", "relation": "founded", "object": "Tide"},
               {"subject": "Bo", "relation": "founded", "object": "Lee Club, Ltd"}]
    path = _write_facts(tmp_path / "facts.jsonl", {"world": "clubs"}, *records)
    with pytest.raises(FactError, match=rf"^{path}:2 and {path}:4: fact set 'clubs': the object 'Lee Club, Ltd' "
                                        r"\(fact 2\) begins with the object 'Lee Club' \(fact 0\)"):
        load_jsonl(path)
    with pytest.raises(FactError, match=r"^dataset: fact set 'custom': the object 'Lee Club, Ltd' \(fact 2\)"):
        from_dataset(datasets.Dataset.from_list(records))
    from analyses.mitigations import copy_facts, identity_statements

    tokens = reversal_world(n_pairs=40, k=2)
    built = [tokens, reversal_world(n_pairs=150), chain_world(n_triples=60), chain_world(n_triples=60, related=True),
             in_context_world(12, 4), people_world(), load_celebrity_pairs(),
             FactSet(tokens.facts + identity_statements(tokens) + copy_facts(tokens, 2, 0), world="bridged")]
    objects = [fact.object for fact in built[1]]
    assert any(a != b and b.startswith(a) for a in objects for b in objects)  # "e1" and "e12": two tokens, read
    for number, facts in enumerate(built):
        assert load_jsonl(save_jsonl(facts, tmp_path / f"{number}.jsonl")) == facts


@pytest.mark.parametrize("subject, obj, message", [
    ("Ann", "Ann", r"subject and object are the same entity, so its answer is the name it asks about; only an "
                   r"Identity Bridge statement \(group 'identity'\)"),
    ("Robert De Niro Sr.", "Robert De Niro", r"'Robert De Niro Sr.' begins with 'Robert De Niro'"),
    ("e1", "e1 e5", r"'e1 e5' begins with 'e1'"),
    ("Ann  Lee", "Bo", r"subject holds a run of spaces at position 3: 'Ann  Lee'; names are compared in words"),
    ("Ann", "Bo   Ray", r"object holds a run of spaces at position 2"),
])
def test_a_fact_whose_names_cannot_be_told_apart_is_refused_naming_its_line(tmp_path, subject, obj, message):
    """Subject and object the same, one beginning with the other (its question answered by a copy of the name asked
    about), or a name that reads as another in words ("Ann  Lee": prompts are compared in words), were accepted;
    the celebrity reader alone refused the first two."""
    path = _write_facts(tmp_path / "facts.jsonl", {"subject": "e1", "relation": "→", "object": "e9"},
                        {"subject": subject, "relation": "r", "object": obj})
    with pytest.raises(FactError, match=rf"^{path}:2: fact .*: {message}"):
        load_jsonl(path)
    assert Fact("Ann", "r", "Ann", group="identity").object == "Ann"  # the Identity Bridge's "A r A"
    assert Fact("e1", "→", "e12").object == "e12" and Fact("Ann", "r", "Anna").object == "Anna"


def test_first_cuts_only_the_per_fact_meta_lists():
    """people_world with one person per group holds three facts and the list of its three groups: first(2) cut the
    groups to two, as it cut every meta list as long as the facts, taking it for one entry per fact."""
    from facts.language import people_world

    world = people_world(n_per_group=1)
    assert len(world) == len(world.meta["groups"]) == 3
    assert world.first(2).meta == {**world.meta, "limit": 2}


def test_first_cuts_the_declared_per_fact_lists_and_refuses_one_not_of_one_entry_per_fact():
    """The meta keys :data:`facts.schema.PER_FACT_META` hold one entry per fact: first cuts them with the facts. One
    of another length cannot be cut to the facts kept, so it is refused, naming the key and both lengths."""
    from facts.schema import PER_FACT_META

    facts = (Fact("e1", "→", "e2"), Fact("e3", "→", "e4"), Fact("e5", "→", "e6"))
    meta = {"source": "f.csv", "line": [2, 3, 5], "notes": ["a", "b", "c"]}
    assert "line" in PER_FACT_META and "notes" not in PER_FACT_META
    assert FactSet(facts, meta=meta).first(2).meta == {"source": "f.csv", "line": [2, 3], "notes": ["a", "b", "c"],
                                                       "limit": 2}
    with pytest.raises(FactError, match=r"meta 'line' holds 2 entries for 3 facts.*one entry per fact"):
        FactSet(facts, world="w", meta={"line": [2, 3]}).first(2)


@pytest.mark.parametrize("index", [-1, -3, 3, 7])
def test_a_fact_index_outside_the_facts_is_refused_naming_it_and_the_count(index):
    """facts[-1] was the last fact (a tuple reads a negative index from the end) and facts[3] an IndexError that
    named neither the fact set nor its size."""
    facts = FactSet((Fact("e1", "→", "e2"), Fact("e3", "→", "e4"), Fact("e5", "→", "e6")), world="w")
    with pytest.raises(FactError, match=rf"^fact set 'w': no fact {index} among its 3 \(numbered 0 to 2\)$"):
        facts[index]
    assert [facts[i] for i in range(3)] == list(facts)


def test_a_fact_index_that_is_no_integer_is_refused():
    import numpy as np

    facts = FactSet((Fact("e1", "→", "e2"), Fact("e3", "→", "e4")), world="w")
    assert facts[np.int64(1)] == facts.facts[1]  # a table's column of fact numbers
    for index in (slice(0, 1), 1.0, "1"):
        refusal = rf"^fact set 'w': a fact index is an integer, got {re.escape(repr(index))}$"
        with pytest.raises(FactError, match=refusal):
            facts[index]


def test_a_header_whose_per_fact_list_no_longer_matches_its_facts_is_refused_at_once(tmp_path):
    """A run's facts.jsonl keeps each fact's file line in its header (meta "line"); a fact deleted by hand left that
    list one entry longer, which was read without a word and refused only when a command later cut the facts
    (`probe --tracing`, after the model had loaded). The reader refuses it, naming the header's line; a dataset's the
    same."""
    facts = FactSet((Fact("Ann Lee", "parent_of", "Bo Kim"), Fact("Cy Park", "parent_of", "Di Ross")),
                    world="custom", meta={"line": [2, 3]})
    path = tmp_path / "facts.jsonl"
    save_jsonl(facts, path)
    assert load_jsonl(path).meta["line"] == [2, 3]
    header, first, _ = path.read_text(encoding="utf-8").splitlines()
    path.write_text(f"{header}\n{first}\n", encoding="utf-8")
    with pytest.raises(FactError, match=rf"{path}:1: fact set 'custom': meta 'line' holds 2 entries for 1 facts"):
        load_jsonl(path)
    edited = FactSet(facts.facts[:1], world="custom", meta={"line": [2, 3]})
    with pytest.raises(FactError, match=r"dataset: fact set 'custom': meta 'line' holds 2 entries for 1 facts"):
        from_dataset(to_dataset(edited))
