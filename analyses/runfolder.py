"""A run folder holds one run: a lock while it is written, a manifest once it is whole.

Every ``revlens`` command that writes a folder does so inside :func:`run_folder`:

1. it takes ``OUT/.revlens.lock`` (:mod:`filelock`, not waiting): a second writer is refused;
2. it reads the old ``manifest.json``: a folder holding another kind of run (or files no
   manifest lists) is refused unless ``force``; a folder without a manifest holding files of the kinds a run
   writes (:data:`WRITTEN_SUFFIXES`, ``checkpoints/``: a run written by the Python API) is refused even so, as
   the run would write over them or delete them; then it *invalidates* the manifest, rewriting it
   atomically as ``{"complete": false, ...}`` that still lists the old run's files (a command refused or
   stopped before it writes or deletes a file puts the old manifest back: ``--resume`` of a checkpoint that
   does not match leaves a finished run finished);
3. a fresh run (not ``resume``) deletes the files the old run wrote, and nothing else: those its
   complete manifest lists, or, after a run that was killed or failed (``complete: false``),
   every file but the ``kept`` ones; files no run wrote are never deleted, they are recorded
   as ``kept`` (and left out of reports);
4. the command writes its files; on success the manifest is written last, atomically:
   ``{"complete": true, "draws", "run_id", "command", "kind", "config", "inputs": {absolute path: sha256},
   "files": {relative path: sha256}, "kept": [...]}``; ``files`` is every file under the folder
   but the lock, the manifest and the ``kept`` ones.

A command killed or failing half-way leaves the ``complete: false`` manifest, so readers
(:func:`check_run`: ``report``, ``compare --finetuned``, ``reproduce mitigations --finetuned``,
``probe --model``) refuse the folder instead of mixing the old run's files with the new one's;
the next fresh run of that folder removes what the unfinished run left and what the run before
it wrote, never the ``kept`` files; ``resume`` keeps them all (its checkpoints are needed).

Folders written through the Python API without :func:`run_folder` carry no manifest; readers
accept them as they are (no promise is made about them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from facts.io import file_sha256 as sha256
from facts.io import remove_stale_temporaries, write_text_atomic

MANIFEST = "manifest.json"
LOCK = ".revlens.lock"
FORMAT = 1
RANDOM_DRAWS = 6
"""How a run's random draws follow from its seed, recorded in its manifest (``draws``); bumped whenever they change,
so that a sweep never counts a trial drawn otherwise as finished (:func:`analyses.sweep.finished`) and no run
resumes another's checkpoints (2: epochs' batch orders and causal tracing's noise from streams of their own,
``finetune-facts``' circuit controls from the run's seed; 3: the people world's groups drawn one after another,
so a group's people do not depend on the groups after it; 4: a training step's draws (dropout) from a stream of their
own, not the one that ordered the epoch of the same number; controls never another right answer of their prompt, nor,
in check-asymmetry, the person the question names; a fact file's pools by relation where a group holds several; the
mitigations' fact-in-prompt questions scored against the plain questions' controls; 5: controls never the entity a
question asks about, in probe and finetune-facts too, and finetune-facts' in-context questions scored against their
plain reverse question's controls; bumped with it, so that no sweep averages them with a trial made before: ranks and
chance among the answer's own kind, not every entity; 6: the controls of a fact file whose world is named "berglund"
(a run's facts.jsonl written from a Berglund folder) leave out its facts' given entities, as any fact file's do)."""


class RunFolderError(ValueError):
    """A folder cannot be written as, or read as, one whole run; the message says what to do."""


def _files(folder: Path) -> dict[str, Path]:
    """Every regular file under ``folder`` by relative POSIX path, lock and manifest left out.

    Symbolic links are not followed (a link is listed as a file of its own, never walked), so
    a folder linking to itself cannot loop.
    """
    found: dict[str, Path] = {}
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if relative not in (LOCK, MANIFEST):
                found[relative] = path
    return found


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder/manifest.json`` as a dict, None if there is none; a clear error if it is unreadable."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: unreadable run manifest ({error}); the run is broken: rerun it "
                             f"(add --force to write over it)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise RunFolderError(f"{path}: not a revlens run manifest; rerun with --force to write over it")
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def check_out_path(out: Path, option: str = "--out") -> None:
    """Refuse an output path that cannot be a folder: empty, a file, or under a file."""
    if str(out) in ("", "."):
        raise RunFolderError(f"{option} {str(out)!r}: give a folder to write (not the current folder)")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{option} {out}: is a file, not a folder; choose a folder to write the run into")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunFolderError(f"{option} {out}: {parent} is a file, so no folder can be made under it")
            break


@contextmanager
def locked(folder: str | os.PathLike[str], parent: bool = False) -> Iterator[Path]:
    """Hold ``folder/.revlens.lock`` (created with the folder) while the block runs; refused at once,
    with :class:`RunFolderError`, when another process holds it. ``parent``: the folder holds runs
    (``reproduce all``), so it must not itself be, or be inside, a run folder."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    check_out_path(folder)
    inside = is_inside_run(folder / "x") if parent else None
    if inside is not None:
        what = "holds a run" if inside == folder.absolute() else f"is inside the run folder {inside}"
        raise RunFolderError(f"{folder}: {what}; a run {'of runs ' if parent else ''}cannot be written there "
                             f"(its manifest would no longer match); choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderError(f"{folder}: another revlens process is writing this folder (it holds {folder / LOCK}); "
                             f"wait for it to finish or choose another --out") from None
    try:
        yield folder
    finally:
        lock.release()


def _describe(manifest: Mapping[str, Any]) -> str:
    return f"a {manifest.get('kind')!r} run ({manifest.get('command', '?')})"


@contextmanager
def run_folder(out: str | os.PathLike[str], kind: str,
               config: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
               inputs: Mapping[str, str | os.PathLike[str]] | None = None, force: bool = False,
               resume: bool = False, command: str | None = None) -> Iterator[Path]:
    """Write one run into ``out`` (see the module docstring); yields the folder.

    ``kind`` names what runs here (``"reproduce reversal"``, ``"probe"``); ``config``: what the manifest records of
    the run's settings, or a function that makes it, called once the folder is locked (a command's settings may
    import torch: a refusal of the lock answers before that); ``inputs`` are files or run folders whose hashes the
    manifest records; ``resume`` keeps the old run's files.
    """
    out = Path(out)
    check_out_path(out)
    inside = is_inside_run(out)
    if inside is not None:
        raise RunFolderError(f"{out}: inside the run folder {inside}; a run written there would break that run's "
                             f"manifest; choose another --out")
    with locked(out):
        old = read_manifest(out)
        present = _files(out)
        if old is None:
            clashing = {name: path for name, path in present.items() if _may_be_written(name)}
            if clashing:  # --force or not: a run would write over them, or delete them (a fresh run's checkpoints/)
                raise RunFolderError(
                    f"{out}: holds files no revlens run manifest lists ({_few(clashing)}), of the kinds a run writes "
                    f"({' '.join('*' + suffix for suffix in WRITTEN_SUFFIXES)} checkpoints/), which it could write over "
                    f"or delete{'; --resume: no manifest says how their random draws were made' if resume else ''}; "
                    f"move them out of {out} (or delete them), or choose an empty or new --out")
            if present and not force:
                raise RunFolderError(f"{out}: holds files no revlens run manifest lists ({_few(present)}); "
                                     f"choose an empty or new --out, or add --force to write beside them (they are "
                                     f"kept, never deleted)")
            known, kept = [], sorted(present)
        else:
            if old.get("kind") != kind and not force:
                raise RunFolderError(f"{out}: holds {_describe(old)}, not a {kind!r} run; choose another --out, or add "
                                     f"--force to replace it (the files its manifest lists are deleted)")
            kept = [name for name in old.get("kept", []) if name in present]
            if old.get("complete") is True:  # files added after it finished are no run's: kept
                known = sorted(set(old.get("files", {})) | set(old.get("previous", [])))
                kept = sorted(set(kept) | (set(present) - set(known)))
            else:  # a run killed or failed in a locked folder: what it left is its own
                known = sorted((set(present) | set(old.get("previous", []))) - set(kept))
        if resume and old is not None and old.get("kind") != kind:
            raise RunFolderError(f"{out}: holds {_describe(old)}; cannot resume a {kind!r} run there")
        if resume and old is not None and old.get("draws") != RANDOM_DRAWS:
            raise RunFolderError(f"{out}: holds a run whose random draws follow from its seed otherwise (written by an "
                                 f"earlier revlens); resuming it would mix two runs' batches; rerun without --resume")
        if not resume:
            _refuse_deleted_inputs(out, inputs or {}, set(known) - set(kept))
        if callable(config):
            config = config()
        run_id = uuid.uuid4().hex
        header = {"format": FORMAT, "draws": RANDOM_DRAWS, "run_id": run_id, "kind": kind,
                  "command": command or _command(), "config": _jsonable(config or {}),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        original = {name: _stamp(path) for name, path in present.items()}
        old_text = (out / MANIFEST).read_text(encoding="utf-8") if old is not None else None
        _write_manifest(out, {**header, "complete": False, "previous": known, "kept": kept, "files": {}})
        try:
            if not resume:
                for name in known:
                    path = out / name
                    if name not in kept and _plainly_inside(out, name) and (path.is_file() or path.is_symlink()):
                        path.unlink()
            remove_stale_temporaries(out)
            before = {name: _stamp(present[name]) for name in kept}
            input_hashes = {_input_key(p): _input_hash(Path(p)) for p in (inputs or {}).values() if p is not None}
            yield out
        except BaseException:
            # Refused or stopped before it wrote or deleted anything (a --resume whose checkpoint does not match):
            # the folder is as it was, so is its manifest (a finished run stays finished, readable as before).
            if _untouched(out, original):
                if old_text is None:
                    (out / MANIFEST).unlink(missing_ok=True)
                else:
                    write_text_atomic(out / MANIFEST, old_text)
            raise
        now = _files(out)
        kept = sorted(name for name in kept if name in now and _stamp(now[name]) == before[name])
        files = {name: sha256(path) for name, path in sorted(now.items())
                 if name not in kept and not path.is_symlink()}
        _write_manifest(out, {**header, "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "inputs": input_hashes, "files": files, "kept": kept})


WRITTEN_SUFFIXES = (".json", ".jsonl", ".csv", ".png", ".html", ".safetensors", ".toml")
"""The kinds of file a revlens run writes (a run's own names are many, and some are made from its options:
``history-d8.jsonl``, ``tracing_before.png``); with ``checkpoints*/``, which a fresh run empties, what a folder
without a manifest may not hold for a run to be written beside its files (:func:`run_folder`)."""


def _may_be_written(name: str) -> bool:
    """Whether a run could write over, or delete, the file ``name`` (a relative POSIX path) of its folder."""
    return name.split("/")[0].startswith("checkpoints") or Path(name).suffix.lower() in WRITTEN_SUFFIXES


def _untouched(folder: Path, stamps: Mapping[str, tuple[int, int, int]]) -> bool:
    """Whether ``folder`` holds exactly the files of ``stamps`` (relative path → :func:`_stamp`), none changed."""
    try:
        return {name: _stamp(path) for name, path in _files(folder).items()} == stamps
    except OSError:
        return False


def _refuse_deleted_inputs(out: Path, inputs: Mapping[str, str | os.PathLike[str]], deleted: set[str]) -> None:
    """Refuse an input that is, or holds, a file of the old run in ``out`` that this run deletes before it reads
    it (``finetune-facts --facts R/facts.jsonl --out R``: the old run would be lost and the new one fail)."""
    root = out.resolve()
    for option, given in inputs.items():
        if given is None:
            continue
        try:
            inside = Path(given).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        if any(inside == "." or name == inside or name.startswith(inside + "/") for name in deleted):
            flag = "--" + option.split("[")[0].replace("_", "-")
            raise RunFolderError(f"{out}: {flag} {given} is the run there, or one of its files, which this run "
                                 f"replaces (it deletes them before it starts); copy it out of {out}, or choose "
                                 f"another --out")


def _plainly_inside(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` lies inside ``folder`` without ``..``, an absolute path or a linked
    folder on the way (a manifest's names are never trusted to delete anything else)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        return False
    return not any((folder.joinpath(*parts[:i])).is_symlink() for i in range(1, len(parts)))


def _few(files: Mapping[str, Any], at_most: int = 4) -> str:
    names = sorted(files)
    return ", ".join(names[:at_most]) + (f" and {len(names) - at_most} more" if len(names) > at_most else "")


def _command() -> str:
    return " ".join(["revlens", *sys.argv[1:]])


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config), default=str))


HASHED_FOLDER_BYTES = 64 << 20
"""A folder input (a Berglund experiment folder, a model folder) is hashed whole up to this size; of a larger one
(a model's weights) the files up to :data:`HASHED_FILE_BYTES` are hashed (its config, its tokenizer), the others
stand by their size and modification time (a model retrained or replaced there changes them)."""
HASHED_FILE_BYTES = 1 << 20


def _input_hash(path: Path) -> str | None:
    """A file's SHA-256; a run folder's manifest's; a folder's files' (names and hashes, up to
    :data:`HASHED_FOLDER_BYTES`; above it, the larger files by size and modification time); None for a name that
    is no local path (a model name)."""
    if path.is_file():
        return sha256(path)
    if (path / MANIFEST).is_file():
        return sha256(path / MANIFEST)
    if path.is_dir():
        files = sorted(_files(path).items())
        whole = sum(f.stat().st_size for _, f in files if f.is_file()) <= HASHED_FOLDER_BYTES

        def of(f: Path) -> str:
            if not f.is_file():
                return "link"
            if whole or f.stat().st_size <= HASHED_FILE_BYTES:
                return sha256(f)
            info = f.stat()
            return f"size {info.st_size} modified {info.st_mtime_ns}"

        listing = "".join(f"{name}\0{of(f)}\n" for name, f in files)
        return hashlib.sha256(listing.encode()).hexdigest()
    return None


def _input_key(given: str | os.PathLike[str]) -> str:
    """How a manifest names an input: a local file or folder by its absolute path (so that it is checked, from any
    folder, as the file that was read), anything else (a model name) as given."""
    path = Path(given)
    return str(path.resolve()) if path.exists() else str(given)


def inputs_unchanged(manifest: dict[str, Any]) -> bool:
    """Whether every input a run's manifest records (``inputs``: path → hash) still hashes as it did."""
    return all(_input_hash(Path(path)) == recorded for path, recorded in manifest.get("inputs", {}).items())


def changed_inputs(manifest: dict[str, Any]) -> list[str]:
    """The inputs a run's manifest records that are there now and hash otherwise (a checkpoint retrained, a fact
    file edited since): the run's numbers are of what they were. An input gone since (a deleted checkpoint) or one
    with no hash (a model name) cannot be checked, and is not listed."""
    changed = []
    for path, recorded in manifest.get("inputs", {}).items():
        if recorded is not None and Path(path).exists() and _input_hash(Path(path)) != recorded:
            changed.append(path)
    return changed


def find_run_root(path: str | os.PathLike[str], levels: int = 2) -> Path | None:
    """The folder holding a manifest among ``path`` and its ``levels`` nearest parents, or None."""
    path = Path(path).absolute()
    for folder in [path, *path.parents][: levels + 1]:
        if (folder / MANIFEST).is_file():
            return folder
    return None


def check_run(folder: str | os.PathLike[str], what: str = "run folder", inputs: bool = False) -> dict[str, Any] | None:
    """Check that ``folder`` holds one whole run: a complete manifest, every file it lists with
    that hash, and no other file (but the ``kept`` ones); returns the manifest (None: no manifest). A folder
    without a manifest inside a run's folder (a run nested in another, such as positional's ``absolute/``) is
    as whole as the run that holds it: that run is checked. With ``inputs``, a run whose recorded inputs have
    changed since it ran (:func:`changed_inputs`) is refused too: its numbers are of the inputs as they were, and
    a reader that shows them under the inputs' names now (``compare``, ``report``) would show them as today's.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        enclosing = is_inside_run(folder)  # a part of a run (positional's absolute/): the whole run is checked
        if enclosing is not None:
            check_run(enclosing, f"the run that holds {folder}", inputs)
        return None
    if manifest.get("complete") is not True:
        raise RunFolderError(f"{folder}: {what} is incomplete (its manifest says the run {manifest.get('command')!r} "
                             f"did not finish: killed, failed or still running); rerun it")
    listed, kept = manifest.get("files", {}), set(manifest.get("kept", []))
    present = _files(folder)
    missing = sorted(set(listed) - set(present))
    extra = sorted(set(present) - set(listed) - kept)
    changed = sorted(name for name in set(listed) & set(present) if sha256(present[name]) != listed[name])
    for problem, names in (("missing", missing), ("changed since the run wrote them", changed),
                           ("not written by this run", extra)):
        if names:
            raise RunFolderError(f"{folder}: {what} does not match its manifest: {_few(dict.fromkeys(names))} "
                                 f"{problem}; rerun it (or remove the files it did not write)")
    stale = changed_inputs(manifest) if inputs else []
    if stale:
        raise RunFolderError(f"{folder}: {what} was made from {_few(dict.fromkeys(stale))}, changed since the run "
                             f"read them (its numbers are of what they were); rerun {manifest.get('command')!r}")
    return manifest


def is_inside_run(path: str | os.PathLike[str]) -> Path | None:
    """The run folder (a folder with a manifest) that ``path`` is in or names, or None."""
    path = Path(path).absolute()
    for folder in path.parents:
        if (folder / MANIFEST).is_file():
            return folder
    return None
