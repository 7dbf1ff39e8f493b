"""Handing freed memory back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from typing import Iterator

import torch

COLLECT_ABOVE_BYTES = 1 << 26
"""A model whose parameters take less than this (64 MiB) is read and converted without a full garbage
collection: what its read can leave in reference cycles is as small, and in a process holding many
Python objects (a test session, a notebook) the collection costs 0.1-0.5 CPU s per load."""


def release_freed_memory(collect: bool = True) -> None:
    """Hand the C heap's free pages back to the operating system (glibc's ``malloc_trim(0)``; nothing
    where the C library is not glibc), after collecting garbage (``collect``; a full collection costs
    ~0.1 s over a loaded model's Python objects).

    glibc keeps freed blocks below its mmap threshold (which rises to 32 MiB after the first large
    free) in its heap for reuse, so a process that reads a model (the GGUF reader's metadata, the
    dequantising buffers) or scores in many passes of mid-sized tensors carries freed memory in its
    resident set, and the next allocations set the peak on top of it: Gemma 3 270M's hooked load left
    0.23 GiB of it. Numbers are untouched: only free pages go.
    """
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL(None).malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (``malloc.h``)."""

KEPT_HEAP_BYTES = 1 << 30
"""Free memory at the top of glibc's heap it keeps for reuse within :func:`heap_kept` (1 GiB)."""

MMAP_THRESHOLD_MAX = 32 << 20
"""glibc's largest mmap threshold on 64 bits (``DEFAULT_MMAP_THRESHOLD_MAX``, 32 MiB), where its dynamic threshold
settles after the first large free."""


@contextlib.contextmanager
def heap_kept() -> Iterator[None]:
    """Within the block, glibc keeps freed memory in its heap for the next allocation (blocks below 32 MiB from
    the heap, :data:`KEPT_HEAP_BYTES` of free heap top kept); after it, the freed heap goes back once
    (:func:`release_freed_memory` without a collection). Nothing where the C library is not glibc.

    Scoring in many passes frees and allocates tensors of the same sizes pass after pass. Handed back between
    passes, their pages come again through page faults, each first touch zeroing a page (and, on a VM whose
    balloon hands free memory to its host, a fault on the host): SmolLM2's ``check-asymmetry`` over 150 pairs,
    one thread, took 88.3 s with 1.7 M faults trimming after each pass and 83.8 s with 0.2 M keeping the heap,
    at the same peak (1.33 GB; 2026-12-06, a 2-core AMX Xeon VM, the two side by side). glibc's thresholds stay
    set after the block, where its own dynamic ones settle (mmap :data:`MMAP_THRESHOLD_MAX`, trim twice that):
    ``mallopt`` has no way to read them back, and setting one turns their adjustment off."""
    global _heap_kept_depth
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # None where the C library has none (macOS)
    except (OSError, TypeError):  # no C library to open by name (Windows)
        mallopt = None
    if mallopt is not None and _heap_kept_depth == 0:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        mallopt(M_TRIM_THRESHOLD, KEPT_HEAP_BYTES)
    _heap_kept_depth += 1
    try:
        yield
    finally:
        _heap_kept_depth -= 1
        if mallopt is not None and _heap_kept_depth == 0:
            mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_MAX)
            release_freed_memory(collect=False)


_heap_kept_depth = 0
"""How many :func:`heap_kept` blocks are open: the outermost sets glibc's thresholds and puts them back."""


def release_after_loading(model: torch.nn.Module) -> None:
    """:func:`release_freed_memory` after a model is read or converted, collecting garbage only for a
    model of at least :data:`COLLECT_ABOVE_BYTES` of parameters (the trim alone is cheap)."""
    size = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    release_freed_memory(collect=size >= COLLECT_ABOVE_BYTES)


@contextlib.contextmanager
def numpy_without_huge_pages() -> Iterator[None]:
    """Within the block, numpy allocates its arrays on ordinary pages (``_set_madvise_hugepage(False)``; the
    setting before is restored after).

    numpy asks the kernel to back every array of 4 MiB or more with transparent huge pages
    (``madvise(MADV_HUGEPAGE)``, its default on Linux). On a VM whose balloon reports free memory to its host
    (free page reporting, in blocks of 2 MiB: the host takes their memory back), a huge page is such a block, and
    each of its pages is first touched through a fault on the host: a 1 GiB ``np.ones`` took 14.1 s there with
    huge pages and 0.43 s without, with no compaction counted (``compact_stall``). Dequantising a GGUF makes
    arrays of a whole tensor several times over (Gemma 3 270M's 262,144 × 640 embedding: 671 MB each): on that
    2-core VM (2026-12-06) that one tensor took 8.4 s with huge pages, most of it the kernel's, and 1.1 s
    without; Gemma 3's whole first read 29.6 → ~20 s, SmolLM2's 3.7 → 2.3 s. The arrays' values are the same
    either way: only the pages behind them differ. A numpy without the switch is left as it is."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        yield
        return
    before = switch(False)
    try:
        yield
    finally:
        switch(before)
