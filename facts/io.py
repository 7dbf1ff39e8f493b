"""Fact sets on disk: JSONL (one fact per line after a header line) and Hugging Face datasets.

JSONL layout::

    {"world": "reversal", "meta": {...}}          # header: the only line without "subject"
    {"subject": "e12", "relation": "→", "object": "e301", "inverse_relation": "←", ...}

A file without a header is accepted (world "custom"). Every error names the file and line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from facts.schema import Fact, FactError, FactSet, check_answer_prefixes


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


class RepeatedKey(ValueError):
    """A JSON object names one key twice (``json`` would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses a repeated key."""
    record = dict(pairs)
    if len(record) != len(pairs):
        repeated = sorted({key for key, _ in pairs if sum(k == key for k, _ in pairs) > 1})
        raise RepeatedKey(f"key(s) {repeated} appear more than once in one JSON object; keep one")
    return record


def read_json_lines(path: Path, what: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of a JSONL file.

    A missing file, bytes that are not UTF-8, a line that is not JSON or an object with a repeated
    key raise :class:`FactError` naming file and line. A leading byte-order mark and CRLF line ends are
    accepted: lines end at ``\\n``, ``\\r\\n`` or ``\\r``, none of which a JSON string holds raw.
    """
    for number, line in enumerate(io.StringIO(read_text(path, what), newline=None), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_unique_keys)
        except RepeatedKey as error:
            raise FactError(f"{path}:{number}: {error}") from None
        except json.JSONDecodeError as error:
            csv_hint = "; a fact file not named .csv is read as JSON lines" if what == "fact" and Path(
                path).suffix.lower() not in (".jsonl", ".json") else ""
            raise FactError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno}){csv_hint}") from None
        except (ValueError, RecursionError) as error:  # a 5,000-digit number, brackets nested 10⁵ deep
            raise FactError(f"{path}:{number}: JSON that Python cannot read ({error})") from None
        yield number, value


def read_csv_rows(path: Path, what: str, columns: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header, [(line, fields), ...])`` of a CSV file (the ``what`` file, with ``columns``),
    header names stripped, blank lines skipped; ``line`` is where a row starts.

    Refused with :class:`FactError` naming file and line: no header, a JSON first line (a JSONL file given where a
    CSV is read), a column named twice, a row spanning lines (a quoted field left open), a quote after a field's
    leading space (:func:`quote_after_space`), a row with more or fewer fields than the header, and anything
    :mod:`csv` cannot read in strict mode (a quote after a quoted field, a field over :func:`csv.field_size_limit`).
    The caller checks which columns it needs or accepts.
    """
    lines = list(io.StringIO(read_text(path, what), newline=""))  # as csv reads them: ends \n, \r\n or \r kept
    reader = csv.reader(lines, strict=True)  # "Ann "Smith" refused
    end = 0
    try:
        first = next(reader, None)
        header = [name.strip() for name in first or []]
        if first is None:
            raise FactError(f"{path}: empty file, expected a header with columns {list(columns)}")
        if not any(header):
            raise FactError(f"{path}:1: a blank line where the header (columns {list(columns)}) must be; "
                            f"the header comes first")
        if lines[0].lstrip().startswith(("{", "[")):  # else read as CSV: "field 2 has a space before its quote"
            raise FactError(f"{path}:1: JSON where a {what}'s header (columns {list(columns)}) must be; this reads "
                            f"a {what}, and the file looks like JSON or JSONL (a fact file's .jsonl?)")
        _refuse_quote_after_space(path, 1, first, "".join(lines[: reader.line_num]))
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise FactError(f"{path}:1: column(s) {repeated} appear more than once in the header")
        rows, end = [], reader.line_num
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if end > start:
                raise FactError(f"{path}:{start}: a quoted field opened on this line runs to line {end}; "
                                f"is a closing quote missing?")
            _refuse_quote_after_space(path, start, fields, lines[start - 1])
            if len(fields) != len(header):
                raise FactError(f"{path}:{start}: expected {len(header)} fields, got {len(fields)}")
            rows.append((start, fields))
    except csv.Error as error:
        if "unexpected end of data" in str(error):  # strict mode: a quote left open to the end of the file
            raise FactError(f"{path}:{end + 1}: a quoted field opened on this line runs to the end of the file; "
                            f"is a closing quote missing?") from None
        raise FactError(f"{path}:{end + 1}: malformed CSV ({error})") from None
    return header, rows


def written_fields(row: str, fields: Sequence[str]) -> list[str]:
    """How each of ``fields`` is written in ``row``, the text :mod:`csv` (its default dialect, strict) read them from.

    A field written with a quote first is quoted: that quote, the text with each quote doubled, a closing quote (2 +
    len + quotes characters); any other is written as it reads (len characters). A comma follows each but the last.
    """
    written, start = [], 0
    for field in fields:
        length = len(field) + field.count('"') + 2 if row.startswith('"', start) else len(field)
        written.append(row[start : start + length])
        start += length + 1
    return written


def quote_after_space(written: str) -> bool:
    """Whether a CSV field is written with whitespace and then a quote first (``Ann, "Amber, Tide"``): :mod:`csv`
    opens a quoted field only right after the comma, so it reads this quote as a character of the text and ends the
    field at the next comma (``' "Amber'``, ``' Tide"'``). A field quoted right after its comma is read as quoted,
    whatever its text opens with (``," ""Amber"" Tide"``: ``' "Amber" Tide'``); ``written`` is the field as the file
    writes it (:func:`written_fields`), which tells the two apart where the text read does not."""
    stripped = written.lstrip()
    return stripped != written and stripped.startswith('"')


def _refuse_quote_after_space(path: Path, line: int, fields: Sequence[str], row: str) -> None:
    """Raise :class:`FactError` naming file, line and field where a field of a CSV row (``row``: its text in the file)
    is written as :func:`quote_after_space` tells."""
    number = next((number for number, written in enumerate(written_fields(row, fields), 1)
                   if quote_after_space(written)), None)
    if number is not None:
        raise FactError(f"{path}:{line}: field {number} ({fields[number - 1]!r}) has a space before its opening quote, "
                        f"so CSV reads the quote as text (and a comma inside it as the end of the field); put the "
                        f"quote right after the comma")


TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
"""Name of a temporary file of :func:`atomic_write`: ``.<target name>.<writer's pid>.<random>.tmp``."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


WRITE_PIECE = 64 << 10
"""The largest single ``write`` of :func:`write_in_pieces` (64 KiB)."""


def write_in_pieces(path: str | os.PathLike[str], parts: Iterable[bytes | memoryview]) -> None:
    """``parts`` one after another into ``path`` (created or emptied), by writes of at most :data:`WRITE_PIECE` bytes.

    One large ``write`` can cost far more than its bytes. Linux 6.x caches an ext4 file in folios as large as
    each write asks (up to 2 MiB); a virtual machine whose balloon reports free memory to its host (free page
    reporting, in blocks of 2 MiB) has handed exactly such blocks back, so every page of a large folio is first
    touched through a fault on the host, inside the copy into the cache. Measured on such a VM (Linux 6.18,
    Firecracker): a GiB written in one write per 64 MiB took 7.8-14.7 s of kernel time, in writes of 1 MiB
    7.1-12.1 s, and in writes of 64 or 256 KiB 0.26-0.28 s. On other machines small writes cost no more.
    """
    with open(path, "wb") as handle:
        for part in parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), WRITE_PIECE):
                handle.write(view[start : start + WRITE_PIECE])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], target: str | None = None,
                             recursive: bool = True) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` that a dead process left in ``folder``
    (only those of ``target``'s name if given; subfolders too if ``recursive``); returns them.

    A temporary whose writer is still running is left alone, so two processes never delete each
    other's work in progress.
    """
    folder = Path(folder)
    removed = []
    walk = os.walk(folder, followlinks=False) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, names in walk:
        for name in names:
            match = TEMPORARY.match(name)
            if match and (target is None or match["target"] == target) and not _alive(int(match["pid"])):
                path = Path(root, name)
                if path.is_file() or path.is_symlink():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """``write(temporary)``, flush it to disk and rename it over ``path``; returns ``path``.

    The temporary is created exclusively (``O_CREAT | O_EXCL``: never through a symbolic link
    planted there) in ``path``'s folder under a unique name holding this process's id, removed on
    every error (and KeyboardInterrupt); one a killed process left is removed by the next write of
    ``path`` (:func:`remove_stale_temporaries`). The rename replaces ``path`` itself, a link
    included, never a link's target. A reader sees the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name, recursive=False)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    temporary = Path(name)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 → what open() would give
        os.close(handle)
        write(temporary)
        with temporary.open("rb") as done:
            os.fsync(done.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write` and return the path."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def jsonl_text(facts: FactSet) -> str:
    """The JSONL text of ``facts``: a header line, then one line per fact."""
    lines = [json.dumps({"world": facts.world, "meta": facts.meta}, ensure_ascii=False)]
    lines += [json.dumps(f.to_dict(), ensure_ascii=False) for f in facts]
    return "\n".join(lines) + "\n"


def facts_sha256(facts: FactSet) -> str:
    """SHA-256 of :func:`jsonl_text`: equal exactly for equal worlds (facts, order, header)."""
    return hashlib.sha256(jsonl_text(facts).encode("utf-8")).hexdigest()


def save_jsonl(facts: FactSet, path: str | os.PathLike[str]) -> Path:
    """Write ``facts`` atomically (:func:`write_text_atomic`) and return the path."""
    return write_text_atomic(path, jsonl_text(facts))


HEADER_FIELDS = ("world", "meta")


def _header(path: Path, number: int, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(world, meta)`` of a header line, each of the right type, or :class:`FactError`."""
    unknown = sorted(set(record) - set(HEADER_FIELDS))
    if unknown:
        raise FactError(f"{path}:{number}: unknown header field(s) {unknown}; a header holds {list(HEADER_FIELDS)}")
    world, meta = record["world"], record.get("meta", {})
    if not isinstance(world, str):
        raise FactError(f"{path}:{number}: the header's world must be a string, got {world!r}")
    if not isinstance(meta, dict):
        raise FactError(f"{path}:{number}: the header's meta must be a JSON object, got {type(meta).__name__}")
    return world, meta


def _is_header(record: Any) -> bool:
    """A header line: an object with a ``world`` and no ``subject``."""
    return isinstance(record, dict) and "subject" not in record and "world" in record


def fact_from_record(record: Any, where: str) -> Fact:
    """The fact a JSON-like record states (:meth:`Fact.from_dict`), or :class:`FactError` naming ``where``.

    The one path from a record to a fact for :func:`load_jsonl` and :func:`from_dataset`."""
    try:
        return Fact.from_dict(record)
    except (FactError, TypeError) as error:
        raise FactError(f"{where}: {error}") from None


def load_jsonl(path: str | os.PathLike[str]) -> FactSet:
    """Read a fact set written by :func:`save_jsonl` (or any JSONL of fact objects).

    Errors name the file and line: malformed JSON, a bad record, a header line after a fact or a
    second header line, facts the :class:`FactSet` refuses (conflicting or repeated
    statements: both lines are named), an answer that begins with another of its kind
    (:func:`facts.schema.check_answer_prefixes`: both lines are named) and a header's meta list of one entry per
    fact that does not hold one per fact (:meth:`facts.schema.FactSet.check_per_fact_meta`: the header's line).
    """
    path = Path(path)
    world, meta, facts, lines, header_line = "custom", {}, [], [], None
    for number, record in read_json_lines(path, "fact"):
        if _is_header(record):
            if facts:
                raise FactError(f"{path}:{number}: a header line may only come first")
            if header_line is not None:
                raise FactError(f"{path}:{header_line} and {path}:{number}: two header lines; keep one "
                                f"(the second would silently replace the first)")
            world, meta = _header(path, number, record)
            header_line = number
            continue
        facts.append(fact_from_record(record, f"{path}:{number}"))
        lines.append(number)
    if not facts:
        raise FactError(f"{path}: holds no facts")
    try:
        fact_set = checked_answers(FactSet(tuple(facts), world=world, meta=meta))
    except FactError as error:
        raise located(error, path, lines) from None
    try:
        fact_set.check_per_fact_meta()
    except FactError as error:
        raise FactError(f"{path}:{header_line}: {error}") from None
    return fact_set


def checked_answers(facts: FactSet) -> FactSet:
    """``facts``, once :func:`facts.schema.check_answer_prefixes` finds no answer that begins with another of its
    kind: what every reader of a user's fact file returns."""
    check_answer_prefixes(facts)
    return facts


def fact_line(path: str | os.PathLike[str], index: int) -> str:
    """``"path:line"`` of fact ``index`` (0-based, the header not counted) of a JSONL fact file."""
    path = Path(path)
    seen = -1
    for number, record in read_json_lines(path, "fact"):
        if _is_header(record):
            continue
        seen += 1
        if seen == index:
            return f"{path}:{number}"
    return str(path)


def to_dataset(facts: FactSet):
    """A Hugging Face ``datasets.Dataset`` with one row per fact; world and meta in ``info``."""
    import datasets

    rows = [f.to_dict() for f in facts]
    description = json.dumps({"world": facts.world, "meta": facts.meta})
    return datasets.Dataset.from_list(rows, info=datasets.DatasetInfo(description=description))


def from_dataset(dataset) -> FactSet:
    """Read a fact set back from :func:`to_dataset` (or any dataset with the fact columns).

    World and meta come from a JSON description holding them (what :func:`to_dataset` writes); any
    other description is ignored. Each row becomes a fact exactly as a line of :func:`load_jsonl`
    does (:func:`fact_from_record`), with one difference a table forces: it cannot leave a value
    out (``datasets`` fills a key a row lacks with null), so in a dataset not written by
    :func:`to_dataset` a null means "not given" and the field takes its schema default (``forward``
    ``"train"``, ``group`` ``""``), as in a JSONL line without it. In a dataset from
    :func:`to_dataset` every field was written, so a null is the value null (a direction not in play).
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
    written_whole = isinstance(header, dict) and isinstance(header.get("world"), str)
    if written_whole:
        world, meta = header["world"], header.get("meta") or {}
    facts = []
    for number, row in enumerate(dataset):
        record = dict(row) if written_whole else {key: value for key, value in row.items() if value is not None}
        facts.append(fact_from_record(record, f"dataset row {number}"))
    if not facts:
        raise FactError("the dataset holds no facts")
    try:
        fact_set = checked_answers(FactSet(tuple(facts), world=world, meta=meta))
        fact_set.check_per_fact_meta()
    except FactError as error:
        raise FactError(f"dataset: {error}", error.facts) from None
    return fact_set
