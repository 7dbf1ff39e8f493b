"""`revlens report`: run folders → one self-contained HTML page.

A *run folder* is any folder holding a ``summary.json``. One a ``revlens`` command wrote also
holds a ``manifest.json`` (:mod:`analyses.runfolder`): it must be complete and list exactly the
folder's files with their hashes, else the run is refused (a killed or failed rerun never renders
its new files beside the old ones); files the manifest marks ``kept`` (no run wrote them) are
not shown. A folder without a summary whose subfolders are runs (``revlens reproduce all --out
OUT`` writes ``OUT/<name>/``) is expanded into them, and runs nested inside a run (the sweeps'
``OUT/k2/``, ``OUT/rotary/``) follow their parent. Symbolic links to folders are never followed,
and the report is never written inside a run folder (:func:`run_holding`): one with a manifest, or a sweep's
folder (its ``sweep.toml``; it has no manifest, and its every file is read as the sweep's).

What a run shows is read from its files, so new kinds of run render without code changes:

* a title and what the paper predicts, for the kinds in :data:`analyses.experiments.KINDS`
  (``summary["experiment"]``, or ``"probe"`` for ``revlens probe`` folders: every experiment's
  registry entry, and one per other command); the command's own one-screen text where it has
  a formatter;
* ``summary.json`` as tables: its scalars (nested dicts flattened to ``a.b`` keys), each list of
  records and each dict of records as a table of its own, the config folded away;
* every ``*.png`` (inlined as a base64 ``data:`` URI), ``*.csv`` (first ``max_rows`` rows) and
  ``*.html`` circuitsvis view (written by :func:`probes.views.save_html`; inlined as an
  ``<iframe srcdoc>``), each with a caption: ``summary["captions"][file]`` if the run gives one,
  else the kind's own caption of that file name, else the shared one (:data:`CAPTIONS`), else a
  generic line.

The page references nothing outside itself (no URL, CDN or web font) and is written atomically
(temporary file, then rename). A folder that does not exist, is empty or is half-written
(no or unreadable ``summary.json``, a figure that the summary or the kind names missing, a
truncated PNG, an unreadable CSV, a view that would load from the network), and a run reached twice
(a folder given twice, or with a folder that holds it) raise :class:`ReportError` naming the folder
and what is wrong, before anything is written.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analyses.experiments import KINDS, TRACING_CAPTION
from analyses.runfolder import MANIFEST, RunFolderError, check_run, is_inside_run, read_manifest
from analyses.sweep import SWEEP_FILE
from facts.io import write_text_atomic
from probes.views import remote_references

SUMMARY = "summary.json"
MAX_ROWS = 20
VIEW_HEIGHT_PX = 640
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
_NAMED_FILE = re.compile(r"^[\w.-]+\.(?:png|html)$")


class ReportError(ValueError):
    """A run folder cannot be reported; the message names the folder and what is missing."""


CAPTIONS = {
    "tracing.png": TRACING_CAPTION + ".",
    "tracing.csv": "One row per (statement, component, layer, position; and stage, before or after, in a fine-tuned "
                   "run): restored, clean and corrupted "
                   "p(answer) and log p, the indirect effect and the fraction recovered.",
    "curves.png": "Mean log-probability of the answer over training for trained (blue) and held-out (red) "
                  "statements, chance in grey. Paper: the trained curve climbs to 0 (p > 0.99) while the held-out "
                  "reverse stays at or below chance.",
    "heatmap.png": "log p(candidate | given entity) of the first 20 facts per panel: rows are given entities, "
                   "columns candidate answers, the diagonal is the truth. Paper: a bright diagonal for "
                   "train-forward, train-backward and the held-out pairs' trained direction, none for their "
                   "untrained one (the reverse of a fact trained forward, the forward of one trained in reverse).",
    "circuits.png": "Per circuit (direct path, and OV and QK per head), the mean z-score of the entry in the "
                    "trained direction (blue) and in the held-out direction (red) of one-way facts, against "
                    "random controls of the same row. Paper: the OV entry Y[A, B] grows for trained A → B while "
                    "Y[B, A] stays near 0.",
    "margins.png": "Mean log-probability margin of the true answer over random answers of the same kind, per "
                   "split and direction, with 95% intervals. Paper: large for trained directions, ≈ 0 for the "
                   "held-out reverse.",
    "comparison.png": "Per setting, mean log p of trained sentences and of the held-out reverse, chance as a grey "
                      "tick. Paper: the curse holds in every setting.",
    "logits.csv": "One row per fact direction: log-probability of the answer, its rank among the candidates, "
                  "greedy correctness (and the margin over random controls where scored).",
    "circuits.csv": "One row per (fact, circuit): the entries M[A, B] and M[B, A], their z-scores against random "
                    "controls and the asymmetry index z[A, B] − z[B, A].",
    "multiple_choice.csv": "One row per question and option order (Lin et al. 2024): the question asked as multiple "
                           "choice, its right answer among K options of the same kind, once under each letter; p of "
                           "each letter among the K letters, p(right letter), the most likely letter, the option "
                           "under each letter (from which the summary's debiased scores average each option over "
                           "the K orders, cancelling a letter preference). Chance 1 / K.",
}
"""Captions of the files that several kinds of run write; a kind's own files are captioned in its
entry of :data:`analyses.experiments.KINDS`."""
ATTENTION_CAPTION = ("circuitsvis attention patterns, one panel per head (interactive: hover over tokens, pick "
                     "heads). Paper (Z, the QK circuit): the last position attends to the entity it answers from.")
VIEW_CAPTION = "Interactive circuitsvis view written by the run."
FALLBACK_CAPTION = "Written by the run; no caption is known for this file name."


@dataclass
class Run:
    """One run folder, read and checked: its summary and the files the report shows."""

    folder: Path
    label: str
    kind: str
    summary: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    views: list[Path] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


# --- finding and checking runs -------------------------------------------------------------------

def find_runs(folders: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """The runs of each folder given (the folder itself, or its subfolders), nested runs after their parent;
    a run reached twice (a folder given twice, or given with a folder that holds it; resolved paths) is
    refused, naming it: its section would appear twice."""
    if not folders:
        raise ReportError("no run folder given")
    runs: list[Run] = []
    given: dict[Path, Path] = {}  # each run's resolved folder → the folder given that holds it
    for folder in map(Path, folders):
        for run in _runs_of(folder):
            resolved = run.folder.resolve()
            if resolved in given:
                first = given[resolved]
                how = ("given twice to --runs" if first.resolve() == folder.resolve() else
                       f"in the report twice, from --runs {first} and {folder} (one holds the other)")
                raise ReportError(f"{run.folder}: {how}; its section would appear twice, identical: give it once")
            given[resolved] = folder
            runs.append(run)
    return runs


def _runs_of(folder: Path) -> list[Run]:
    """The runs of one folder given to :func:`find_runs`."""
    if not folder.exists():
        raise ReportError(f"{folder}: no such run folder")
    if not folder.is_dir():
        raise ReportError(f"{folder}: not a folder (give the folder a revlens command wrote)")
    if (folder / SUMMARY).exists():
        manifest, root = _whole_run(folder)
        return _run_tree(folder if root == folder else folder.absolute(), str(folder), manifest, root)
    entries = _entries(folder)
    if not entries:
        raise ReportError(f"{folder}: empty folder, not a run (a finished run has a {SUMMARY})")
    linked = next((e for e in entries if e.is_symlink() and e.is_dir() and (e / SUMMARY).exists()), None)
    if linked is not None:  # never followed (a loop would recurse), and never dropped from the page unsaid
        raise ReportError(f"{linked}: a link to a run folder, which the report does not follow; give "
                          f"{linked.resolve()} itself, or copy the run into {folder}")
    subfolders = [e for e in entries if e.is_dir() and not e.is_symlink()]
    if not any((s / SUMMARY).exists() for s in subfolders):
        raise ReportError(f"{folder}: no {SUMMARY}, so the run did not finish (half-written?); found "
                          f"{_listing(entries)}")
    runs: list[Run] = []
    for sub in subfolders:
        if not (sub / SUMMARY).exists():
            raise ReportError(f"{sub}: no {SUMMARY}, so this run of {folder} did not finish (half-written?); "
                              f"found {_listing(_entries(sub)) or 'nothing'}; if it is no run, give --runs the "
                              f"run folders beside it instead of {folder}")
        manifest, root = _whole_run(sub)
        runs += _run_tree(sub if root == sub else sub.absolute(), str(sub), manifest, root)
    return runs


def _whole_run(folder: Path) -> tuple[dict[str, Any] | None, Path]:
    """:func:`analyses.runfolder.check_run`, its refusal as a :class:`ReportError`; returns the manifest that
    governs ``folder`` and the folder it lies in: its own, or, for a part of a run (zhu-settings' ``default/``), the
    enclosing run's, whose ``kept`` files (another run's, left by a rerun) are then left out here too. A folder that
    is itself one of those kept files is refused: it is no part of the run it lies in."""
    try:
        manifest = check_run(folder, inputs=True)
    except RunFolderError as error:
        raise ReportError(str(error)) from None
    enclosing = None if manifest is not None else is_inside_run(folder)
    if enclosing is None:
        return manifest, folder
    manifest = read_manifest(enclosing) or {}
    if (folder / SUMMARY).absolute() in {enclosing / name for name in manifest.get("kept", [])}:
        raise ReportError(f"{folder}: files a rerun of {enclosing} kept in place (no run there wrote them), so not a "
                          f"run of its own; give a folder revlens wrote")
    return manifest, enclosing


def _entries(folder: Path) -> list[Path]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    for path in entries:
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            raise ReportError(f"{folder}: the file name {os.fsencode(path.name)!r} is not UTF-8; rename it "
                              f"(a report names every file)") from None
    return entries


def _listing(entries: Sequence[Path], at_most: int = 8) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _run_tree(folder: Path, label: str, manifest: dict[str, Any] | None, root: Path | None = None) -> list[Run]:
    """The run in ``folder`` and the runs nested in it (never through a symbolic link, so a link
    loop cannot recurse); ``manifest`` is the outermost run's (its ``kept`` files are left out, and so is a
    kept folder's run: another run's files, which a rerun left in place)."""
    root = root or folder
    kept = {root / name for name in (manifest or {}).get("kept", [])}
    runs = [read_run(folder, label, kept)]
    for sub in _entries(folder):
        if sub.is_dir() and not sub.is_symlink() and (sub / SUMMARY).exists() and sub / SUMMARY not in kept:
            runs += _run_tree(sub, f"{label}/{sub.name}", manifest, root)
    return runs


def read_summary(folder: Path) -> dict[str, Any]:
    """``folder/summary.json`` as a dict; a clear error if it is not valid JSON or not an object."""
    path = folder / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                          f"the run may have been interrupted while writing it") from error
    except UnicodeDecodeError as error:
        raise ReportError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    if not isinstance(summary, dict):
        raise ReportError(f"{path}: expected a JSON object of results, got a {type(summary).__name__}")
    return summary


def run_kind(summary: dict[str, Any]) -> str:
    """``summary["experiment"]``, or ``"probe"`` for a ``revlens probe`` summary (``"probe-prior"`` for a
    model probed on facts it was not trained on), or ``"run"``."""
    if isinstance(summary.get("experiment"), str):
        return summary["experiment"]
    if "logits" in summary and "circuits" in summary:
        return "probe-prior" if "prior_knowledge" in summary else "probe"
    return "run"


def _named_files(value: Any) -> set[str]:
    """Bare figure / view file names (``*.png``, ``*.html``) anywhere in a summary."""
    if isinstance(value, str):
        return {value} if _NAMED_FILE.match(value) else set()
    if isinstance(value, dict):
        return set().union(*map(_named_files, value.values()), *map(_named_files, value))
    if isinstance(value, list):
        return set().union(*map(_named_files, value))
    return set()


def read_run(folder: Path, label: str, kept: set[Path] = frozenset()) -> Run:
    """Read one run folder and check that everything it should hold is there and readable
    (its manifest, lock and the ``kept`` files no run wrote are not shown)."""
    summary = read_summary(folder)
    kind = run_kind(summary)
    written = KINDS[kind].files if kind in KINDS else ()
    named = sorted(_named_files(summary))
    for names, why in ((written, f"every {kind!r} run writes it"), (named, "summary.json names it")):
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise ReportError(f"{folder}: {', '.join(missing)} missing ({why}); the run is half-written")
    run = Run(folder, label, kind, summary)
    known_order = {name: i for i, name in enumerate(written)}
    shown = [p for p in _entries(folder) if p.name != MANIFEST and p not in kept]
    for path in sorted(shown, key=lambda p: (known_order.get(p.name, len(known_order)), p.name)):
        if path.is_symlink():
            run.others.append(path.name + " (link)")
            continue
        suffix = path.suffix.lower() if path.is_file() else ""
        if suffix == ".png":
            _check_png(path)
            run.figures.append(path)
        elif suffix == ".csv":
            run.tables.append(path)
        elif suffix == ".html":
            _check_view(path)
            run.views.append(path)
        elif path.name != SUMMARY and not (path.is_dir() and (path / SUMMARY).exists()):
            run.others.append(path.name + ("/" if path.is_dir() else ""))
    return run


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ReportError(f"{path}: not a PNG image")
    if not data.rstrip(b"\0").endswith(PNG_END):
        raise ReportError(f"{path}: truncated PNG (no end chunk); the run may have been interrupted")


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ReportError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _check_view(path: Path) -> None:
    remote = remote_references(_utf8(path))
    if remote:
        raise ReportError(f"{path}: the page loads from the network ({remote[:3]}); write views with "
                          f"probes.views.save_html")


# --- rendering -----------------------------------------------------------------------------------

def caption(run: Run, name: str) -> str:
    """The run's own caption for a file, else the known one for its kind and name, else a generic line."""
    own = run.summary.get("captions")
    if isinstance(own, dict) and isinstance(own.get(name), str):
        return own[name]
    kind = KINDS.get(run.kind)
    known = (kind.captions.get(name) if kind else None) or CAPTIONS.get(name)
    if known:
        return known
    if name.endswith(".html"):
        return ATTENTION_CAPTION if name.startswith("attention") else VIEW_CAPTION
    return FALLBACK_CAPTION


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(_format, value))
    return str(value)


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a.b`` keys."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_records(value: Any) -> bool:
    return bool(value) and all(isinstance(v, dict) for v in (value if isinstance(value, list) else value.values()))


def _records_table(value: list[dict[str, Any]] | dict[str, dict[str, Any]], max_rows: int) -> str:
    rows = ([_flatten(r) for r in value] if isinstance(value, list)
            else [{"": name, **_flatten(r)} for name, r in value.items()])
    columns = list(dict.fromkeys(c for row in rows for c in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in columns) + "</tr>"
                   for row in rows[:max_rows])
    note = (f'<p class="note">first {max_rows} of {len(rows)} rows (all in summary.json)</p>'
            if len(rows) > max_rows else "")
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>{note}'


def _key_values(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_format(v))}</td></tr>" for k, v in values.items())
    return f'<table class="kv">{rows}</table>'


def summary_tables(summary: dict[str, Any], max_rows: int = MAX_ROWS) -> str:
    """The summary as HTML: a table of its scalars, one table per list or dict of records, the config folded."""
    scalars, parts = {}, []
    for key, value in summary.items():
        if key in ("config", "captions"):
            continue
        if isinstance(value, (list, dict)) and _is_records(value):
            parts.append(f"<h4>{html.escape(key)}</h4>{_records_table(value, max_rows)}")
        elif isinstance(value, dict):
            scalars.update(_flatten(value, f"{key}."))
        else:
            scalars[key] = value
    out = [_key_values(scalars)] if scalars else []
    if isinstance(summary.get("config"), dict):
        out.append(f"<details><summary>config</summary>{_key_values(_flatten(summary['config']))}</details>")
    return "".join(out + parts)


def one_screen_text(run: Run) -> str | None:
    """The text the command printed for this run (its kind's formatter), or None if it has none."""
    kind = KINDS.get(run.kind)
    if kind is None or kind.formatter is None:
        return None
    module, name = kind.formatter.split(":")
    try:
        return getattr(import_module(module), name)(run.summary)
    except KeyError as error:
        raise ReportError(f"{run.folder / SUMMARY}: lacks {error} that a {run.kind!r} run writes "
                          f"(half-written, or from another version?)") from error
    except (TypeError, ValueError) as error:  # a value of another type than a run writes ("n/a" for a number)
        raise ReportError(f"{run.folder / SUMMARY}: holds a value a {run.kind!r} run does not write "
                          f"({type(error).__name__}: {error}; edited by hand, or from another version?)") from error


def csv_table(path: Path, max_rows: int = MAX_ROWS) -> str:
    """The first ``max_rows`` rows of a CSV file as an HTML table, with a note when rows are left out."""
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: unreadable CSV ({error})") from error
    shown = table.head(max_rows).to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}", na_rep="—")
    note = (f'<p class="note">first {max_rows} of {len(table)} rows; the whole table is {path.name} in the run '
            f"folder</p>" if len(table) > max_rows else f'<p class="note">{len(table)} rows</p>')
    return f'<div class="wide">{shown}</div>{note}'


def _png_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _view_tag(path: Path) -> str:
    page = html.escape(_utf8(path), quote=True)
    return (f'<iframe sandbox="allow-scripts" srcdoc="{page}" title="{html.escape(path.name)}" '
            f'style="height:{VIEW_HEIGHT_PX}px"></iframe>')


def _title(run: Run) -> str:
    kind = KINDS.get(run.kind)
    return (kind.title if kind else "") or run.kind.replace("-", " ").replace("_", " ").capitalize()


def render_run(run: Run, anchor: str, max_rows: int = MAX_ROWS) -> tuple[str, list[tuple[str, str]]]:
    """One run's section and its table-of-contents entries (anchor, text)."""
    kind = KINDS.get(run.kind)
    parts = [f'<section id="{anchor}"><h2>{html.escape(_title(run))} <span class="where">'
             f"{html.escape(run.label)}</span></h2>"]
    if kind and kind.prediction:
        parts.append(f'<p class="prediction"><b>What the paper predicts.</b> {html.escape(kind.prediction)}</p>')
    text = one_screen_text(run)
    if text:
        parts.append(f"<pre>{html.escape(text)}</pre>")
    parts.append(f"<h3>Numbers (summary.json)</h3>{summary_tables(run.summary, max_rows)}")
    entries: list[tuple[str, str]] = []
    for index, path in enumerate(run.figures + run.views + run.tables):
        item = f"{anchor}-{index}"
        entries.append((item, path.name))
        body = (_png_tag(path) if path in run.figures else _view_tag(path) if path in run.views
                else csv_table(path, max_rows))
        parts.append(f'<figure id="{item}"><figcaption><b>{html.escape(path.name)}</b>: '
                     f"{html.escape(caption(run, path.name))}</figcaption>{body}</figure>")
    if run.others:
        parts.append(f'<p class="note">Also in this folder: {html.escape(", ".join(run.others))}</p>')
    return "".join(parts) + "</section>", entries


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1150px; margin: 0 auto; padding: 1em 2em; line-height: 1.45; background: #fff; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.where { font-size: 0.6em; color: #666; font-weight: normal; font-family: monospace; }
nav ol { columns: 2; font-size: 0.9em; } nav li { break-inside: avoid; }
nav ol ol { columns: 1; font-size: 0.95em; color: #555; }
a { color: #234; }
.prediction { background: #f4f4f0; border-left: 4px solid #999; padding: 0.5em 0.8em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.82em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 0.15em 0.5em; text-align: right; }
.kv th { text-align: left; background: #fafafa; } th { background: #f0f0f0; }
.wide { overflow-x: auto; } .note { color: #666; font-size: 0.85em; }
figure { margin: 1.2em 0; } figcaption { margin-bottom: 0.4em; font-size: 0.92em; }
figure img { max-width: 100%; border: 1px solid #eee; }
iframe { width: 100%; border: 1px solid #ddd; }
"""


def render_report(runs: Sequence[Run], max_rows: int = MAX_ROWS, title: str = "reversal-lens report") -> str:
    """The whole page: header, table of contents, one section per run."""
    sections, contents = [], []
    for number, run in enumerate(runs, 1):
        section, entries = render_run(run, f"run-{number}", max_rows)
        sections.append(section)
        items = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in entries)
        contents.append(f'<li><a href="#run-{number}">{html.escape(_title(run))}</a> '
                        f'<span class="where">{html.escape(run.label)}</span><ol>{items}</ol></li>')
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f'<p class="note">{len(runs)} run{"s" if len(runs) != 1 else ""}, written {stamp} by revlens report. '
        f"Self-contained: figures and views are inlined, nothing is loaded from the network.</p>\n"
        f"<nav><h2>Contents</h2><ol>{''.join(contents)}</ol></nav>\n{''.join(sections)}\n</body>\n</html>\n"
    )
    remote = remote_references(page)
    if remote:
        raise ReportError(f"the report would load from the network ({remote[:3]}); not written")
    return page


def run_holding(path: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``path`` whose files are a run's, and the file that says so, or None: a manifest
    (:func:`analyses.runfolder.is_inside_run`) or a ``sweep.toml`` (a sweep's folder, which has no manifest and
    whose every file, a report written there too, the report reads as the sweep's). A ``summary.json`` alone says
    nothing: another tool's may sit in any folder above."""
    for folder in Path(path).absolute().parents:
        marker = next((name for name in (MANIFEST, SWEEP_FILE) if (folder / name).is_file()), None)
        if marker is not None:
            return folder, marker
    return None


def write_report(folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                 max_rows: int = MAX_ROWS) -> list[Run]:
    """Check every run folder, render the page, then write it to ``out`` atomically; returns the runs."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out}: is a folder; give the HTML file to write, e.g. {out / 'report.html'}")
    inside = run_holding(out)
    if inside is not None:
        folder, marker = inside
        raise ReportError(f"{out}: inside the run folder {folder} (it holds {marker}), whose files are the run's own "
                          f"(a report there would replace them or be read as part of the run); write the report "
                          f"elsewhere")
    runs = find_runs(folders)
    page = render_report(runs, max_rows)
    write_text_atomic(out, page)
    return runs
