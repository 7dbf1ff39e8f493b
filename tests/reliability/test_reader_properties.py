"""Bad input, generated: every fact reader either reads it or says what is wrong and where.

Property for every reader and every generated input: the result is a valid value, or a
:class:`FactError` whose message names the file and, when one line is at fault, that line (a
fact set names the facts). Never an IndexError / KeyError / TypeError / UnicodeDecodeError /
RuntimeError from inside Python, csv, json, datasets or torch.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import unicodedata

import datasets
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from facts.berglund import load_prompt_completion_jsonl, save_prompt_completion_jsonl
from facts.celebrity import COLUMNS, DEFAULT_CSV, load_celebrity_pairs
from facts.io import from_dataset, load_jsonl, save_jsonl, to_dataset
from facts.schema import DIRECTIONS, Fact, FactError, FactSet, check_answer_prefixes
from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import collate, tokenize
from models.scoring import score_answers
from models.training import TrainConfig, train
from models.transformer import build_model

REAL_CSV = DEFAULT_CSV  # the copy shipped as package data
BOM = "\ufeff"
FIELDS = tuple(Fact.__dataclass_fields__)

bounded = settings(max_examples=100, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
few = settings(bounded, max_examples=40)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
"""Any JSON value (NaN and ±inf included, as Python's json reads them)."""

entity_like = st.sampled_from(["e1", "e2", "e3", "Ann Lee", " e1", "e1 ", "", "e\x00", "José", "Jose\u0301"])
split_like = st.sampled_from(["train", "heldout", None, "test", "Train", ""])
field_values = {
    "subject": entity_like | json_values, "object": entity_like | json_values,
    "relation": st.sampled_from(["→", "←", "", "\t"]) | json_values,
    "inverse_relation": st.sampled_from(["←", "→", None, ""]) | json_values,
    "forward": split_like | json_values, "reverse": split_like | json_values,
    "group": st.sampled_from(["", "both"]) | json_values, "context": st.booleans() | json_values,
}
fact_records = st.fixed_dictionaries({}, optional={**field_values, "colour": json_values})
"""JSON objects shaped like facts: any subset of the fields (plus a stray one), values right or wrong."""
header_records = st.fixed_dictionaries({"world": st.just("w") | json_values},
                                       optional={"meta": st.just({"seed": 1}) | json_values, "seed": json_values})
"""JSON objects shaped like the header line, its fields of any type."""

BASE_FACTS = (
    Fact("e10", "→", "e20", "←", "train", "train", "both"),
    Fact("e11", "→", "e21", "←", "train", "heldout", "one-way"),
    Fact("e12", "→", "e22", "←", "heldout", "train", "one-way"),
)
BASE_LINES = [json.dumps({"world": "reversal", "meta": {"seed": 0}})] + [json.dumps(f.to_dict()) for f in BASE_FACTS]


def assert_names(error: FactError, path: pathlib.Path, line: int | None = None) -> None:
    """The message names the file, and the line when one is given."""
    message = str(error)
    assert str(path) in message, message
    if line is not None:
        assert f"{path}:{line}" in message, message


def try_read(read, *args):
    """``read(*args)``, or the :class:`FactError` it raised (any other exception fails the test)."""
    try:
        return read(*args)
    except FactError as error:
        return error


byte_edits = st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "truncate"]), st.integers(0, 10**6),
                               st.binary(min_size=1, max_size=4)), min_size=1, max_size=3)
"""Up to three corruptions of a file: a flipped byte, a cut, inserted bytes, a truncation."""


def corrupted(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, payload in edits:
        at = where % max(len(out), 1)
        if kind == "flip" and out:
            out[at] ^= payload[0] or 1
        elif kind == "cut":
            del out[at : at + len(payload)]
        elif kind == "insert":
            out[at:at] = payload
        elif kind == "truncate":
            del out[at:]
    return bytes(out)


def joined(lines: list[str], line_end: str) -> str:
    return "".join(line + line_end for line in lines)


# --- JSONL fact files -------------------------------------------------------------------------


@bounded
@given(record=fact_records | header_records | json_values, position=st.integers(1, len(BASE_LINES) + 1))
def test_jsonl_any_record_on_any_line_is_read_or_named(tmp_path, record, position):
    lines = list(BASE_LINES)
    lines.insert(position - 1, json.dumps(record))
    path = tmp_path / "facts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = try_read(load_jsonl, path)
    if isinstance(result, FactError) and position == 1 and "a header line may only come first" in str(result):
        assert_names(result, path, 2)  # a fact put before the header: the header, now line 2, is misplaced
    elif isinstance(result, FactError):
        assert_names(result, path, position)
    else:
        assert len(result) in (3, 4) and set(BASE_FACTS) <= set(result)


@bounded
@given(raw=st.text(st.characters(exclude_characters="\r\n", exclude_categories=()), max_size=30),
       position=st.integers(2, len(BASE_LINES) + 1))
def test_jsonl_any_text_line_is_read_or_named(tmp_path, raw, position):
    lines = list(BASE_LINES)
    lines.insert(position - 1, raw)
    path = tmp_path / "facts.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    result = try_read(load_jsonl, path)
    if isinstance(result, FactError):
        assert_names(result, path, position)
    else:
        assert not raw.strip() or set(BASE_FACTS) <= set(result)


@bounded
@given(bom=st.booleans(),
       line_ends=st.lists(st.sampled_from(["\n", "\r\n"]), min_size=8, max_size=8) | st.just(["\r"] * 8),
       blanks=st.lists(st.sampled_from(["", "   ", "\t"]), max_size=3), blank_at=st.integers(1, 4),
       bad=st.sampled_from([None, '{"subject": "e1", "relation": "→"}', b"\xff", b"\xc3(", "{"]))
def test_jsonl_boms_line_ends_and_blank_lines_keep_facts_and_line_numbers(tmp_path, bom, line_ends, blanks,
                                                                         blank_at, bad):
    lines: list[str | bytes] = list(BASE_LINES)
    lines[blank_at:blank_at] = blanks
    if bad is not None:
        lines.append(bad)
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + end.encode()
                    for line, end in zip(lines, line_ends + ["\n"] * len(lines)))
    path = tmp_path / "facts.jsonl"
    path.write_bytes((BOM.encode() if bom else b"") + data)
    result = try_read(load_jsonl, path)
    if bad is None:
        assert result == FactSet(BASE_FACTS, world="reversal", meta={"seed": 0})
    else:
        assert isinstance(result, FactError)
        assert_names(result, path, len(lines))


@bounded
@given(edits=byte_edits)
def test_jsonl_corrupted_bytes_are_read_or_named(tmp_path, edits):
    path = tmp_path / "facts.jsonl"
    path.write_bytes(corrupted(("\n".join(BASE_LINES) + "\n").encode(), edits))
    result = try_read(load_jsonl, path)
    if isinstance(result, FactError):
        assert_names(result, path)
    else:
        assert isinstance(result, FactSet)


@pytest.mark.parametrize("text", ["", "\n", " \r\n\t\n", BOM, BOM + "\n", BASE_LINES[0] + "\n"])
def test_jsonl_without_facts_says_so(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FactError, match="holds no facts") as error:
        load_jsonl(path)
    assert_names(error.value, path)


# --- the fact schema --------------------------------------------------------------------------


@bounded
@given(record=fact_records)
def test_fact_from_any_record_is_a_fact_or_a_fact_error(record):
    try:
        fact = Fact.from_dict(record)
    except FactError:
        return
    assert all(isinstance(getattr(fact, name), str) for name in ("subject", "relation", "object", "group"))
    assert fact.forward in (None, "train", "heldout") and fact.reverse in (None, "train", "heldout")
    assert isinstance(fact.context, bool)


def _fact_or_none(*fields):
    try:
        return Fact(*fields)
    except FactError:
        return None


ENTITIES, RELATIONS, SPLITS = ["e1", "e2", "e3"], ["→", "←"], ["train", "heldout", None]
small_facts = st.builds(_fact_or_none, *[st.sampled_from(v) for v in (ENTITIES, RELATIONS, ENTITIES, RELATIONS[::-1],
                                                                       SPLITS, SPLITS)]).filter(lambda f: f is not None)


def oracle_finds_a_problem(items: list) -> bool:
    """Brute force over every pair of directed statements: a non-fact, a conflict or a repeat."""
    if not items or not all(isinstance(item, Fact) for item in items):
        return True
    stated = [fact.given_and_answer(d) for fact in items for d in DIRECTIONS if fact.split(d)]
    conflict = any(a[:2] == b[:2] and a[2] != b[2] for a in stated for b in stated)
    return conflict or len(set(stated)) < len(stated)


@bounded
@given(items=st.lists(small_facts, max_size=6) | st.lists(small_facts | json_values, max_size=3))
def test_fact_set_refuses_exactly_the_conflicts_and_repeats(items):
    try:
        FactSet(items)
    except FactError as error:
        assert oracle_finds_a_problem(items), error
        assert all(0 <= i < len(items) for i in error.facts)
        return
    assert not oracle_finds_a_problem(items)


@st.composite
def facts_with_a_duplicate(draw):
    """Three distinct one-way facts, then a copy of one statement: same split, other split, or reversed."""
    base = list(BASE_FACTS)
    index = draw(st.integers(0, 2))
    fact = base[index]
    kind = draw(st.sampled_from(["same", "resplit", "reversed", "conflict"]))
    if kind == "same":
        extra = fact
    elif kind == "resplit":
        extra = Fact(fact.subject, fact.relation, fact.object, fact.inverse_relation,
                     "heldout" if fact.forward == "train" else "train", None)
    elif kind == "reversed":
        extra = Fact(fact.object, fact.inverse_relation, fact.subject, forward=fact.reverse)
    else:
        extra = Fact(fact.subject, fact.relation, "e99")
    position = draw(st.integers(0, 3))
    base.insert(position, extra)
    first = index if position > index else index + 1
    return base, sorted((first, position)), kind


@bounded
@given(case=facts_with_a_duplicate())
def test_repeated_and_conflicting_statements_are_named_by_line(tmp_path, case):
    facts, (first, second), kind = case
    with pytest.raises(FactError, match="conflict" if kind == "conflict" else "repeated|both trained and held out"):
        FactSet(facts)
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in facts), encoding="utf-8")
    with pytest.raises(FactError) as error:
        load_jsonl(path)
    assert f"{path}:{first + 1} and {path}:{second + 1}" in str(error.value)


names = st.text(st.characters(exclude_categories=()), min_size=1, max_size=8)
"""Any Unicode name: combining marks, emoji, right-to-left text, control characters, lone surrogates."""


@bounded
@given(pairs=st.lists(st.tuples(names, names), min_size=1, max_size=4))
@example(pairs=[("Ann Lee", "Bo Kim"), ("José", "北京")])  # names a fact accepts: the round trip always runs
@example(pairs=[("Ann", "Bo"), ("Ann Lee", "Cy")])  # two subjects, one the other and more: refused by both
def test_any_name_a_fact_accepts_survives_jsonl(tmp_path, pairs):
    try:
        facts = FactSet(tuple(Fact(a, "is the parent of", b, "is the child of", "train", "heldout") for a, b in pairs))
        check_answer_prefixes(facts)  # what a reader refuses beyond FactSet: "Ann" and "Ann Lee" as two answers
    except FactError:
        return
    assert load_jsonl(save_jsonl(facts, tmp_path / "facts.jsonl")) == facts


@few
@given(pairs=st.lists(st.tuples(names, names), min_size=1, max_size=3))
@example(pairs=[("Ann Lee", "Bo Kim"), ("José", "北京")])  # names a fact accepts: the round trip always runs
def test_any_name_a_fact_accepts_survives_a_dataset(pairs):
    try:
        facts = FactSet(tuple(Fact(a, "p2d", b, "d2p", "train", "heldout") for a, b in pairs), world="w", meta={"n": 1})
        check_answer_prefixes(facts)
    except FactError:
        return
    assert from_dataset(to_dataset(facts)) == facts


def test_names_that_only_differ_in_normalisation_are_refused_naming_both_lines(tmp_path):
    """The refusal named neither fact, so no reader could name the lines, and showed both names alike."""
    with pytest.raises(FactError, match=r"entities 'Jos\\xe9' \(fact 0\) and 'Jose\\u0301' \(fact 1\) differ only in "
                                        r"Unicode normalisation"):
        FactSet((Fact("José", "→", "e1"), Fact("Jose\u0301", "→", "e2")))
    from facts.questions import load_fact_csv

    (tmp_path / "facts.csv").write_text("subject,relation,object\nAnn,r,Bo\nJosé,r,e1\nJose\u0301,r,e2\n")
    with pytest.raises(FactError, match=r"facts.csv:3 and .*facts.csv:4: .*differ only in Unicode normalisation"):
        load_fact_csv(tmp_path / "facts.csv")


column_values = {
    "str": st.sampled_from(["e1", "e2", "→", "←", "train", "heldout", ""]),
    "int": st.integers(-2, 2), "bool": st.booleans(), "float": st.floats(), "none": st.none(),
}


@st.composite
def datasets_with_odd_columns(draw):
    columns = draw(st.lists(st.sampled_from([*FIELDS, "colour"]), unique=True, max_size=6))
    kinds = {c: draw(st.sampled_from(sorted(column_values))) for c in columns}
    n = draw(st.integers(1, 3))
    rows = [{c: draw(column_values[kinds[c]]) for c in columns} for _ in range(n)]
    try:
        return datasets.Dataset.from_list(rows)
    except Exception:  # a table arrow cannot build is no input to our reader
        assume(False)


@few
@given(dataset=datasets_with_odd_columns())
def test_datasets_with_odd_columns_are_read_or_named(dataset):
    try:
        facts = from_dataset(dataset)
    except FactError as error:
        assert "dataset" in str(error)
        return
    assert len(facts) == dataset.num_rows


@pytest.mark.parametrize("thing", [None, [{"subject": "e1"}], "facts.jsonl", datasets.DatasetDict()])
def test_things_that_are_not_a_dataset_are_named(thing):
    with pytest.raises(FactError, match="expected a datasets.Dataset"):
        from_dataset(thing)


# --- the celebrity CSV ------------------------------------------------------------------------

GOOD_ROWS = [["Ann Lee", "Bea Lee", "mother", "", "False"], ["Cy Dunn", "Di Dunn", "father", "Cy Dunn", "True"]]
csv_text = st.text(st.sampled_from("ab AB,\"'é\u0301\n\r\x00\t\ufeff-"), max_size=8)
csv_fields = {
    "child": csv_text | st.sampled_from(["Ann Lee", "Eve Ray"]),
    "parent": csv_text | st.sampled_from(["Bea Lee", "Di Dunn", "Ann Lee"]),
    "parent_type": st.sampled_from(["mother", "father", "Mother", "aunt", "", " father "]),
    "child_prediction": csv_text,
    "can_reverse": st.sampled_from(["True", "false", "TRUE", "yes", "", "1"]),
}


def write_rows(path: pathlib.Path, header, rows, line_end: str = "\r\n", bom: bool = False) -> pathlib.Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes((BOM if bom else "").encode() + buffer.getvalue().encode("utf-8", "surrogatepass"))
    return path


@bounded
@given(row=st.fixed_dictionaries(csv_fields), extra=st.lists(csv_text, max_size=2), drop=st.integers(0, 5))
def test_celebrity_any_row_is_read_or_named(tmp_path, row, extra, drop):
    fields = [row[c] for c in COLUMNS] + extra
    if drop:
        del fields[drop - 1]
    path = write_rows(tmp_path / "pairs.csv", COLUMNS, GOOD_ROWS + [fields])
    result = try_read(load_celebrity_pairs, path)
    if isinstance(result, FactError):
        assert_names(result, path, len(GOOD_ROWS) + 2)
    else:
        assert len(result) == 3 or result.meta["duplicate_lines"] == [4]
        last = result[len(result) - 1]
        assert unicodedata.is_normalized("NFC", last.subject) and last.subject == last.subject.strip()


@bounded
@given(order=st.permutations(list(COLUMNS) + ["source", "notes"]), line_end=st.sampled_from(["\n", "\r\n", "\r"]),
       bom=st.booleans(), drop=st.sampled_from([None, *COLUMNS]), repeat=st.sampled_from([None, *COLUMNS]))
def test_celebrity_columns_in_any_order_with_extras_boms_and_line_ends(tmp_path, order, line_end, bom, drop, repeat):
    header = [c for c in order if c != drop] + ([repeat] if repeat else [])
    rows = [[dict(zip(COLUMNS, good)).get(c, "x") for c in header] for good in GOOD_ROWS]
    path = write_rows(tmp_path / "pairs.csv", header, rows, line_end, bom)
    result = try_read(load_celebrity_pairs, path)
    missing = [c for c in COLUMNS if c not in header]
    if len(set(header)) < len(header):
        assert isinstance(result, FactError) and "more than once" in str(result)
        assert_names(result, path, 1)
    elif missing:
        assert isinstance(result, FactError) and f"missing column(s) {missing}" in str(result)
        assert_names(result, path)
    else:
        canonical = load_celebrity_pairs(write_rows(tmp_path / "plain.csv", COLUMNS, GOOD_ROWS))
        assert tuple(result) == tuple(canonical) and result.meta["line"] == [2, 3]


@pytest.fixture(scope="module")
def real_csv_head() -> bytes:
    """The first ~30 rows of the real celebrity file (the packaged copy)."""
    return REAL_CSV.read_bytes()[:2000].rsplit(b"\n", 1)[0] + b"\n"


@bounded
@given(edits=byte_edits)
def test_celebrity_corrupted_bytes_are_read_or_named(tmp_path, real_csv_head, edits):
    path = tmp_path / "pairs.csv"
    path.write_bytes(corrupted(real_csv_head, edits))
    result = try_read(load_celebrity_pairs, path)
    if isinstance(result, FactError):
        assert_names(result, path)
    else:
        assert len(result) >= 1


def test_the_real_csv_with_a_bom_and_crlf_reads_the_same(tmp_path, real_csv_head):
    real = load_celebrity_pairs(REAL_CSV)
    path = tmp_path / "excel.csv"
    path.write_bytes(BOM.encode() + REAL_CSV.read_bytes().replace(b"\n", b"\r\n"))
    again = load_celebrity_pairs(path)
    assert tuple(again) == tuple(real)
    del again.meta["source"], real.meta["source"]
    assert again.meta == real.meta


@pytest.mark.parametrize(("text", "message"), [
    ('{h}\nAnn,Bea,mother,,True\n"Cy,Di,father,,True\nEd,Flo,mother,,False\n', ":3: a quoted field opened on this"),
    ("{h}\nAnn,Ann,mother,,True\n", ":2: 'Ann' is recorded as their own mother"),
    ("{h}\nAnn\x00,Bea,mother,,True\n", ":2: .*invisible character U\\+0000"),
    ("child,child,parent,parent_type,child_prediction,can_reverse\nA,X,B,mother,,True\n", ":1: column.*more than once"),
])
def test_celebrity_rows_the_csv_module_would_take_silently(tmp_path, text, message):
    path = tmp_path / "pairs.csv"
    path.write_text(text.format(h=",".join(COLUMNS)), encoding="utf-8")
    with pytest.raises(FactError, match=message):
        load_celebrity_pairs(path)


# --- Berglund prompt/completion JSONL ---------------------------------------------------------

PAIRS = [("Daphne Barrington, known far and wide for being", " the director of 'Glass Meridian'."),
         ("Known for being the composer of 'Paper Tide',", " Isolde Whitlock")]


@bounded
@given(record=st.fixed_dictionaries({}, optional={"prompt": json_values, "completion": json_values,
                                                  "source": json_values}) | json_values,
       position=st.integers(1, 3), bom=st.booleans(), line_end=st.sampled_from(["\n", "\r\n"]))
def test_berglund_any_record_on_any_line_is_read_or_named(tmp_path, record, position, bom, line_end):
    lines = [json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS]
    lines.insert(position - 1, json.dumps(record))
    path = tmp_path / "prompts.jsonl"
    path.write_bytes((BOM if bom else "").encode() + joined(lines, line_end).encode())
    result = try_read(load_prompt_completion_jsonl, path)
    if isinstance(result, FactError):
        assert_names(result, path, position)
    else:
        assert [pair for i, pair in enumerate(result) if i != position - 1] == PAIRS


@bounded
@given(pairs=st.lists(st.tuples(names, names), min_size=1, max_size=4), bom=st.booleans())
def test_berglund_any_text_round_trips(tmp_path, pairs, bom):
    try:
        path = save_prompt_completion_jsonl(pairs, tmp_path / "pairs.jsonl")
    except FactError as error:
        assert "lone surrogate" in str(error)
        assert any(unicodedata.category(ch) == "Cs" for pair in pairs for text in pair for ch in text)
        return
    if bom:
        path.write_bytes(BOM.encode() + path.read_bytes())
    assert load_prompt_completion_jsonl(path) == pairs


@bounded
@given(junk=st.binary(min_size=1, max_size=4).filter(lambda b: b"\n" not in b and b"\r" not in b),
       line=st.integers(1, 2))
def test_berglund_bytes_that_are_not_utf8_are_named_by_line(tmp_path, junk, line):
    assume(not _is_utf8(junk))
    lines = [json.dumps({"prompt": p, "completion": c}).encode() for p, c in PAIRS]
    lines[line - 1] = lines[line - 1][:-1] + junk + b"}"
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(FactError) as error:
        load_prompt_completion_jsonl(path)
    assert_names(error.value, path, line)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- token worlds: spelling, vocabulary, token ids at the model ----------------------------------

SMALL = TokenVocab(n_entity_tokens=20)


@bounded
@given(entity=st.text(st.sampled_from("e0123456789 ²٣x"), max_size=8))
def test_token_entities_have_one_spelling(entity):
    try:
        ids = SMALL.entity_ids(entity)
    except FactError as error:
        assert repr(entity) in str(error)
        return
    assert all(len(SMALL.relations) <= i < SMALL.d_vocab for i in ids)
    assert " ".join(SMALL.token_name(i) for i in ids) == entity


@bounded
@given(pairs=st.lists(st.tuples(st.sampled_from(["e1", "e5 e6", "e19", "e20", "e3 e400", "x", "e007"]),
                                st.sampled_from(["e2", "e7", "e8 e9", "e25", "e٣"])),
                      min_size=1, max_size=4, unique=True),
       relation=st.sampled_from(["→", "⇝", "is"]))
def test_token_worlds_tokenize_or_name_the_entity(pairs, relation):
    try:
        facts = FactSet(tuple(Fact(a, relation, b, "←", "train", "heldout") for a, b in pairs))
    except FactError:
        return
    try:
        batch = tokenize(facts, SMALL)
    except FactError as error:
        assert "entity" in str(error) or "relation" in str(error)
        assert "fact " in str(error)
        return
    assert int(batch.tokens.max()) < SMALL.d_vocab and int(batch.tokens.min()) >= 0


@pytest.fixture(scope="module")
def small_model():
    return build_model("tiny", SMALL.d_vocab, seed=0).eval()


@bounded
@given(rows=st.lists(st.lists(st.integers(-3, SMALL.d_vocab + 3), min_size=3, max_size=5), min_size=1, max_size=4))
def test_token_ids_outside_the_vocabulary_are_named_before_torch_sees_them(small_model, rows):
    from facts.tokens import Example

    batch = collate([Example(tuple(r[:-1]), (r[-1],), i, "forward", "train") for i, r in enumerate(rows)])
    outside = [i for i, r in enumerate(rows) if any(not 0 <= t < SMALL.d_vocab for t in r)]
    if not outside:
        scores = score_answers(small_model, batch)
        assert torch.isfinite(scores.logprob).all() and (scores.logprob <= 0).all()
        return
    for run in (lambda: score_answers(small_model, batch),
                lambda: train(small_model, batch, TrainConfig(steps=1, progress=False))):
        with pytest.raises(ValueError, match=f"fact {outside[0]} \\(forward\\) has token id -?\\d+, outside"):
            run()


def test_a_world_written_for_a_bigger_vocabulary_is_named(tmp_path):
    path = save_jsonl(reversal_world(n_pairs=5, seed=0), tmp_path / "world.jsonl")
    with pytest.raises(FactError, match="fact \\d+ \\((forward|reverse)\\): entity 'e\\d+': token 'e\\d+' is outside"):
        tokenize(load_jsonl(path), SMALL)
