"""Fact sets on disk: JSONL (one fact per line after a header line) and Hugging Face datasets.

JSONL layout::

    {"world": "reversal", "meta": {...}}          # header: the only line without "subject"
    {"subject": "e12", "relation": "→", "object": "e301", "inverse_relation": "←", ...}

A file without a header is accepted (world "custom"). Every error names the file and line.
"""

from __future__ import annotations

import codecs
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from facts.schema import Fact, FactError, FactSet


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file (a leading byte-order mark dropped), for line-based readers.

    A missing file, or bytes that are not UTF-8, raise :class:`FactError` naming file and line.
    """
    if not path.is_file():
        raise FactError(f"{path}: no such {what} file")
    data = path.read_bytes()
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[skip : skip + error.start].decode("utf-8")
        line = before.count("\n") + before.count("\r") - before.count("\r\n") + 1  # \n, \r\n or \r end a line
        raise FactError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {skip + error.start})") from None


def located(error: FactError, path: Path, lines: Sequence[int]) -> FactError:
    """``error`` restated with the file lines of the facts it names (``lines[i]``: fact i's line)."""
    where = " and ".join(f"{path}:{lines[i]}" for i in dict.fromkeys(error.facts)) or str(path)
    return FactError(f"{where}: {error}", error.facts)


def read_json_lines(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of a JSONL file.

    A missing file, bytes that are not UTF-8 or a line that is not JSON raise
    :class:`FactError` naming file and line. A leading byte-order mark and CRLF line ends are
    accepted: lines end at ``\\n``, ``\\r\\n`` or ``\\r``, none of which a JSON string holds raw.
    """
    for number, line in enumerate(io.StringIO(read_text(path, what), newline=None), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise FactError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
        except (ValueError, RecursionError) as error:  # a 5,000-digit number, brackets nested 10⁵ deep
            raise FactError(f"{path}:{number}: JSON that Python cannot read ({error})") from None
        yield number, value


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``<path>.tmp`` and a rename, and return the path.

    A reader sees the old file or the new one, never half of one. The temporary name is fixed, so
    a write killed half-way leaves ``<path>.tmp`` only until the next write of ``path`` (a resumed
    run) renames it away: no stray files accumulate in a run folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def save_jsonl(facts: FactSet, path: str | os.PathLike[str]) -> Path:
    """Write ``facts`` atomically (:func:`write_text_atomic`) and return the path."""
    lines = [json.dumps({"world": facts.world, "meta": facts.meta}, ensure_ascii=False)]
    lines += [json.dumps(f.to_dict(), ensure_ascii=False) for f in facts]
    return write_text_atomic(path, "\n".join(lines) + "\n")


HEADER_FIELDS = ("world", "meta")


def _header(path: Path, number: int, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(world, meta)`` of a header line, each of the right type, or :class:`FactError`."""
    unknown = sorted(set(record) - set(HEADER_FIELDS))
    if unknown:
        raise FactError(f"{path}:{number}: unknown header field(s) {unknown}; a header holds {list(HEADER_FIELDS)}")
    world, meta = record["world"], record.get("meta") or {}
    if not isinstance(world, str):
        raise FactError(f"{path}:{number}: the header's world must be a string, got {world!r}")
    if not isinstance(meta, dict):
        raise FactError(f"{path}:{number}: the header's meta must be a JSON object, got {type(meta).__name__}")
    return world, meta


def load_jsonl(path: str | os.PathLike[str]) -> FactSet:
    """Read a fact set written by :func:`save_jsonl` (or any JSONL of fact objects).

    Errors name the file and line: malformed JSON, a bad record, a misplaced header, and facts
    the :class:`FactSet` refuses (conflicting or repeated statements: both lines are named).
    """
    path = Path(path)
    world, meta, facts, lines = "custom", {}, [], []
    for number, record in read_json_lines(path, "fact"):
        if isinstance(record, dict) and "subject" not in record and "world" in record:
            if facts:
                raise FactError(f"{path}:{number}: a header line may only come first")
            world, meta = _header(path, number, record)
            continue
        try:
            facts.append(Fact.from_dict(record))
        except (FactError, TypeError) as error:
            raise FactError(f"{path}:{number}: {error}") from None
        lines.append(number)
    if not facts:
        raise FactError(f"{path}: holds no facts")
    try:
        return FactSet(tuple(facts), world=world, meta=meta)
    except FactError as error:
        raise located(error, path, lines) from None


def to_dataset(facts: FactSet):
    """A Hugging Face ``datasets.Dataset`` with one row per fact; world and meta in ``info``."""
    import datasets

    rows = [f.to_dict() for f in facts]
    description = json.dumps({"world": facts.world, "meta": facts.meta})
    return datasets.Dataset.from_list(rows, info=datasets.DatasetInfo(description=description))


def from_dataset(dataset) -> FactSet:
    """Read a fact set back from :func:`to_dataset` (or any dataset with the fact columns).

    World and meta come from a JSON description holding them; any other description is ignored.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        hint = "; pick one split, e.g. dataset['train']" if isinstance(dataset, datasets.DatasetDict) else ""
        raise FactError(f"expected a datasets.Dataset, got {type(dataset).__name__}{hint}")
    world, meta = "custom", {}
    try:
        header = json.loads(dataset.info.description or "")
    except json.JSONDecodeError:
        header = None
    if isinstance(header, dict) and isinstance(header.get("world"), str):
        world, meta = header["world"], header.get("meta") or {}
    facts = []
    for number, row in enumerate(dataset):
        try:
            facts.append(Fact.from_dict(dict(row)))
        except (FactError, TypeError) as error:
            raise FactError(f"dataset row {number}: {error}") from None
    if not facts:
        raise FactError("the dataset holds no facts")
    try:
        return FactSet(tuple(facts), world=world, meta=meta)
    except FactError as error:
        raise FactError(f"dataset: {error}", error.facts) from None
