"""Readers refuse what they used to take silently (issue #19), each with file:line."""

from __future__ import annotations

import json

import pytest

from facts.celebrity import COLUMNS, load_celebrity_pairs
from facts.io import load_jsonl
from facts.schema import FactError

FACT = {"subject": "Ann Smith", "relation": "is the mother of", "object": "Bea Smith",
        "inverse_relation": "is the child of", "forward": "train", "reverse": "heldout"}


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


@pytest.mark.parametrize("lines, message", [
    ([_line({"world": "people", "meta": []}), _line(FACT)], r":1: the header's meta must be a JSON object, got list"),
    ([_line({"world": "people", "meta": None}), _line(FACT)], r":1: the header's meta must be a JSON object"),
    ([_line(FACT), '{"subject": "Cy", "subject": "Di", "relation": "r", "object": "Ed"}'],
     r":2: key\(s\) \['subject'\] appear more than once"),
    ([_line({**FACT, "subject": "Ann\u200bSmith"})], r":1: .*invisible character U\+200B at position 3"),
    ([_line({**FACT, "object": "Bea\u00a0Smith"})], r":1: .*space-like character U\+00A0 at position 3"),
    ([_line({**FACT, "object": "Bea Smith\u2060"})], r":1: .*invisible character U\+2060"),
])
def test_jsonl_reader_refuses(tmp_path, lines, message):
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(FactError, match=f"facts.jsonl{message}"):
        load_jsonl(path)


def test_a_joiner_inside_a_name_is_accepted(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(_line({**FACT, "subject": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"}) + "\n",
                    encoding="utf-8")  # Persian needs the zero-width non-joiner
    assert load_jsonl(path)[0].subject.count("\u200c") == 1


@pytest.mark.parametrize("row, message", [
    ('"Ann "Smith",Mary,mother,,True', r":2: malformed CSV \(',' expected after '\"'\)"),
    ("Ann\u200b Smith,Mary,mother,,True", r":2: .*invisible character U\+200B"),
])
def test_celebrity_reader_refuses(tmp_path, row, message):
    path = tmp_path / "pairs.csv"
    path.write_text(",".join(COLUMNS) + "\n" + row + "\n", encoding="utf-8")
    with pytest.raises(FactError, match=f"pairs.csv{message}"):
        load_celebrity_pairs(path)
