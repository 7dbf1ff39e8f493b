"""A GGUF model read once: its float32 transformers model and tokenizer kept on disk for later loads.

Reading a GGUF file means parsing its metadata (every vocabulary entry becomes Python objects),
building a tokenizer from them and dequantising every tensor: ``load_hf`` on one 2 GHz core took 6.3 s
for SmolLM2-135M and 26.5 s for Gemma 3 270M. The first load of a file writes what it read as a Hugging
Face folder (``save_pretrained``: the float32 weights as safetensors, the config, whose ``architectures``
names the class, and the tokenizer) with ``revlens-gguf.json`` (the file's SHA-256 and its
BOS rule, which the loaders otherwise read from the file's metadata); later
loads read that folder instead: 1.0 s and 4.9 s. The weights, the config and every token id are the
ones the file gives (tested on both models: the weights bitwise).

An entry is keyed by the file's SHA-256, the versions of transformers, gguf and safetensors that read it,
and the source of this toolkit's modules that read it (:func:`reading_code`), so an edited file, or a
file read by other code (another release of these libraries, or of ours), never meets an entry it did
not write. An entry is written into a temporary folder and renamed into place, so a reader finds a whole
entry or none; one that cannot be read is removed and the file is read again. Writing is best
effort: a full or read-only disk leaves the load as it was, without an entry (and with a warning).
A model whose float32 weights exceed :data:`MAX_BYTES` is not kept, nor one that would leave less
than that free.

Where: ``$REVLENS_GGUF_CACHE`` when set (``off`` turns the cache off), else
``$XDG_CACHE_HOME/reversal-lens/gguf`` (``~/.cache/reversal-lens/gguf``). Each file keeps its
:data:`KEPT` most recently written entries (SmolLM2-135M's is 0.52 GB, Gemma 3 270M's 1.1 GB).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from models.tensor_file import write_safetensors

READING_MODULES = ("gguf_cache.py", "gguf_weights.py", "pretrained.py", "tensor_file.py")
"""The modules of this package whose code decides what an entry holds: this one, the weights' reader, the loader and
the weights' writer."""
MARKER = "revlens-gguf.json"
"""In every entry: the metadata the loaders read from the file, and the file's SHA-256."""
MAX_BYTES = 2 << 30
"""The largest float32 model kept (2 GiB: ~500 M parameters); larger ones are read from their file each time."""
KEPT = 2
"""Entries kept per GGUF file name (the most recently written): another transformers, another entry."""
SWITCH = "REVLENS_GGUF_CACHE"


@dataclass(frozen=True)
class Entry:
    """A whole entry: the Hugging Face folder and the file metadata the loaders read."""

    folder: Path
    declared_bos: tuple[bool, str] | None
    """Whether every encoding starts with BOS, and why (the GGUF's ``tokenizer.ggml.add_bos_token``, else llama.cpp's
    default for its vocabulary), as the loaders read it from the file; None where neither says."""


def root() -> Path | None:
    """The cache folder, or None when ``$REVLENS_GGUF_CACHE`` is ``off``."""
    chosen = os.environ.get(SWITCH)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reversal-lens" / "gguf"


@functools.cache
def reading_code() -> str:
    """The SHA-256 of the source of :data:`READING_MODULES`, one after the other: any change to how a file is read
    or an entry written (a refusal added, a tensor read otherwise) gives new keys, with no number to bump by hand."""
    digest = hashlib.sha256()
    for name in READING_MODULES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def entry_name(path: Path, sha256: str) -> str:
    """``<file stem>-<16 hex digits>``: the file's SHA-256 with the versions and the code that read it."""
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "gguf", "safetensors")}
    key = hashlib.sha256(json.dumps({"sha256": sha256, "reading_code": reading_code(), **versions},
                                    sort_keys=True).encode())
    return f"{path.name.removesuffix('.gguf')}-{key.hexdigest()[:16]}"


def find(path: Path, sha256: str) -> Entry | None:
    """The whole entry of the GGUF file ``path`` (content ``sha256``), or None (none yet, or the cache is off)."""
    folder = root()
    if folder is None:
        return None
    folder = folder / entry_name(path, sha256)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("sha256") != sha256:
        return None
    declared = marker.get("declared_bos")
    return Entry(folder, None if declared is None else (bool(declared[0]), str(declared[1])))


def discard(entry: Entry) -> None:
    """Remove an entry that could not be read (the file is then read again, and the entry written anew)."""
    shutil.rmtree(entry.folder, ignore_errors=True)


def keep(path: Path, sha256: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
         declared_bos: tuple[bool, str] | None) -> None:
    """Write the entry of ``path`` from the model and tokenizer just read from it, unless the cache is off, the
    model too large or the disk too full. A write that fails (a read-only or full disk) leaves no entry and a
    warning; where another process wrote the same entry first, that one stays."""
    folder = root()
    if folder is None:
        return
    size = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    target = folder / entry_name(path, sha256)
    partial = folder / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if size > MAX_BYTES or shutil.disk_usage(folder).free < size + MAX_BYTES:
            return
        with no_progress_bars(), _weights_written_in_pieces():
            model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        marker = {"gguf": str(path), "sha256": sha256, "declared_bos": declared_bos,
                  "reading_code": reading_code()}
        (partial / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    except (OSError, RuntimeError, ValueError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        warnings.warn(f"the read of {path} was not kept in {folder} ({error}); the next load reads the file again",
                      stacklevel=2)
        return
    try:
        partial.rename(target)
    except OSError:  # another process renamed its own entry of this file into place first
        shutil.rmtree(partial, ignore_errors=True)
        return
    _prune(folder, path)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off within the block, as they were after: ``save_pretrained`` and
    ``from_pretrained`` draw one over a model's weight files and weights ("Loading weights: 272/272"), on standard
    error even where a command was asked for none (``--quiet``)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


@contextlib.contextmanager
def _weights_written_in_pieces() -> Iterator[None]:
    """transformers' ``save_pretrained`` writing each weights file by :func:`models.tensor_file.write_safetensors`
    (the same bytes, in small writes from the weights' memory), as it was after. Gemma 3 270M's first load, on a
    VM that hands free memory back to its host (``benchmarks/load_pretrained.py``, two rounds): as a
    HookedTransformer 21.1-21.4 s with transformers' ``save_file`` (12.2-12.4 s of it the kernel's), 10.3-11.2 s
    with this (1.5-1.9 s); as a bridge 16.1-16.4 s, then 9.9-11.1 s; the same peak memory. A transformers that
    writes through another function keeps its own."""
    from transformers import modeling_utils

    own = getattr(modeling_utils, "safe_save_file", None)
    if own is not save_file:
        yield
        return
    modeling_utils.safe_save_file = write_safetensors
    try:
        yield
    finally:
        modeling_utils.safe_save_file = own


def _prune(folder: Path, path: Path) -> None:
    """Keep the :data:`KEPT` most recently written entries of the file name of ``path``."""
    stem = path.name.removesuffix(".gguf")
    entries = [e for e in folder.glob(f"{stem}-*") if len(e.name) == len(stem) + 17 and (e / MARKER).is_file()]
    entries.sort(key=lambda e: (e / MARKER).stat().st_mtime_ns, reverse=True)
    for old in entries[KEPT:]:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
