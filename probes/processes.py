"""Score many statements in several processes of one torch thread each: a CPU's cores, data-parallel.

A statement's trie (:func:`probes.shared_prompt.candidate_logprobs_cached`) is a few thousand positions by a
small model's few hundred columns; split over T threads such products run ~1.2× faster than on one, while T
processes of one thread, each scoring its own statements, run ~T× (SmolLM2, 2 cores: ×1.68 the throughput of
one process of two threads; ``benchmarks/README.md``). Here this process and ``count − 1`` others started with
the ``spawn`` method (the same on Linux, macOS and Windows; each loads its own copy of the model with
:attr:`Processes.load`) take units of statements from one queue until none are left:

- a unit is up to :data:`UNIT` statements of one prompt length, scored by
  :func:`~probes.shared_prompt.candidate_logprobs_cached` on one thread, so its numbers do not depend on which
  process scores it or on how many there are (a run is reproducible); they equal one process's run of
  ``batch_size`` statements a chunk to float32 rounding (a matrix product's rows summed in another order);
- each other process is sent a unit before this one starts on its own; they ignore Ctrl-C (this one stops
  them) and end with this one; one that dies (killed for memory, or its ``load`` failed) fails the run with a
  ``RuntimeError`` that says so, never a hang.

Only worth it on a CPU, for more statements than the others' start costs (importing torch, TransformerLens and
transformers and loading the model: ~6.5 CPU s for SmolLM2 from the GGUF cache, while this process scores);
:func:`processes_for` decides, and a model whose copies would not fit in the memory available runs in fewer.
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from facts.tokens import Example
from models.cpu_matmul import float32_matmul
from models.scoring import model_device
from probes.shared_prompt import CandidateScores, candidate_logprobs_cached, check_candidates

UNIT = 16
"""Statements of one prompt length in a unit of work: small enough that the processes end within seconds of
each other (SmolLM2: ~4.5 s a unit on one thread), large enough that each trie pass stays a matrix product of
hundreds of rows."""
MIN_STATEMENTS = 64
"""Fewer statements are scored in this process alone (:func:`processes_for`): the others would still be
starting when it finished."""


@dataclass(frozen=True)
class Processes:
    """How many processes score, and how each of the others gets the model: ``load`` is a picklable callable
    (a module-level function, or a ``functools.partial`` of one) that returns the same model as this
    process's, on the CPU (e.g. ``partial(models.pretrained.load, "smollm2-135m", backend="bridge",
    device="cpu")``)."""

    count: int
    load: Callable[[], Any]


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux's ``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def processes_for(model: Any, n_statements: int, wanted: int) -> int:
    """How many processes to score ``n_statements`` with: ``wanted`` (e.g. the threads asked for) on a CPU,
    for at least :data:`MIN_STATEMENTS` statements, and no more than leaves each other process twice the
    model's parameter bytes of the memory available (its copy and its passes); else 1."""
    if wanted <= 1 or n_statements < MIN_STATEMENTS or model_device(model).type != "cpu":
        return 1
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    free = available_memory()
    affordable = wanted if free is None or weights == 0 else 1 + free // (2 * weights)
    return int(max(1, min(wanted, affordable, n_statements // UNIT)))


def units(candidates: Sequence[Sequence[Example]]) -> list[list[int]]:
    """Statement indices in units of up to :data:`UNIT` of one prompt length, longest prompts first (the
    costliest start first, so the processes end close together)."""
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(candidates):
        by_length.setdefault(len(row[0].prompt), []).append(i)
    return [members[start:start + UNIT] for length in sorted(by_length, reverse=True)
            for members in (by_length[length],) for start in range(0, len(members), UNIT)]


def candidate_logprobs_in_processes(
    model: Any,
    candidates: Sequence[Sequence[Example]],
    processes: Processes | None,
    batch_size: int = 128,
    progress: bool = False,
) -> CandidateScores:
    """:func:`~probes.shared_prompt.candidate_logprobs_cached` of ``model`` on ``candidates``, scored in
    ``processes.count`` processes (this one included); with None or a count of 1, that function itself, on
    this process's threads. The caller's float32 kernel setting (:func:`models.cpu_matmul.float32_matmul`) holds in
    this process; the others choose theirs as it does, for the same CPU."""
    k = check_candidates(model, candidates, batch_size)
    if processes is None or processes.count <= 1 or len(candidates) < 2:
        return candidate_logprobs_cached(model, candidates, batch_size, progress)
    logprob, correct = torch.zeros(len(candidates), k), torch.ones(len(candidates), k, dtype=torch.bool)
    pending, lock, stop, failed = collections.deque(units(candidates)), threading.Lock(), threading.Event(), []
    bar = tqdm(total=len(candidates) * k, unit="answer", desc="scoring", disable=not progress)

    def take() -> list[int] | None:
        with lock:
            return pending.popleft() if pending and not stop.is_set() else None

    def store(unit: list[int], scores: CandidateScores) -> None:
        logprob[unit], correct[unit] = scores.logprob, scores.correct
        bar.update(len(unit) * k)

    def score_here() -> None:
        try:
            while (unit := take()) is not None:
                store(unit, candidate_logprobs_cached(model, [candidates[i] for i in unit], batch_size))
        except BaseException as error:  # re-raised in the calling thread
            failed.append(error)
            stop.set()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # before the thread starts: it reads the count on its first torch call
    here = threading.Thread(target=score_here, name="revlens-scoring", daemon=True)
    pool = ProcessPoolExecutor(processes.count - 1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(processes.load,))
    running: dict[Future, list[int]] = {}

    def send() -> None:
        unit = take()
        if unit is not None:
            running[pool.submit(_score_unit, [candidates[i] for i in unit], batch_size)] = unit

    try:
        for _ in range(processes.count - 1):  # a unit for each other process first: each scores at least one
            send()
        here.start()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                unit = running.pop(future)
                try:
                    store(unit, future.result())
                except BrokenProcessPool:
                    raise RuntimeError(f"a scoring process ended before its statements were scored (killed for "
                                       f"memory, or it could not load the model: see above); rerun with one "
                                       f"process (--processes 1)") from None
                send()
        here.join()
    except BaseException as error:
        stop.set()
        _end_now(pool)
        if not isinstance(error, KeyboardInterrupt):  # Ctrl-C ends at once; else this thread's unit ends first
            here.join()
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        torch.set_num_threads(threads)
        bar.close()
    if failed:
        raise failed[0]
    return CandidateScores(logprob, correct)


def _end_now(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool``'s processes without waiting for the units they are scoring (Ctrl-C, or another failure).
    Python before 3.14 has no ``terminate_workers``: its processes are terminated one by one."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


_WORKER: dict[str, Any] = {}  # in a scoring process: its model


def _start_worker(load: Callable[[], Any]) -> None:
    """A scoring process's start: Ctrl-C is its parent's to handle, one torch thread, the model loaded."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _WORKER["model"] = load()


def _score_unit(rows: Sequence[Sequence[Example]], batch_size: int) -> CandidateScores:
    """One unit's scores in a scoring process, under the float32 kernels this CPU gets."""
    model = _WORKER["model"]
    with float32_matmul(model_device(model)):
        return candidate_logprobs_cached(model, rows, batch_size)
