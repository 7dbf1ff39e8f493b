import json
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
