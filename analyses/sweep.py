"""`revlens sweep`: one experiment across seeds and a grid of its own options, on Ray.

A sweep is an experiment (any ``reproduce`` experiment or ``finetune-facts``,
:mod:`analyses.experiments`), a list of seeds and a grid ``{option: values}``; its trials are the
product grid × seeds. Each trial is the command itself, ``revlens <command> --out
DIR/trials/<key=value,...,seed=S>/ --seed S --<key> <value> ...``, run by :func:`analyses.cli.main`
inside a Ray actor (:class:`TrialRunner`: one per trial run at once, each importing the toolkit
once), so its folder is an ordinary run folder (summary, tables, figures and the ``manifest.json``
of :mod:`analyses.runfolder`) that ``report`` and ``compare`` read as they read any other.

The sweep folder ``DIR`` holds (and is locked while a sweep writes it):

* ``sweep.toml``: the experiment, seeds, grid and GPUs per trial, so ``revlens sweep --out DIR`` (or ``revlens sweep
  EXPERIMENT --out DIR``) reruns it exactly, reserving what its first run reserved (:func:`sweep_for`,
  :func:`reserved`); a sweep that extends it (more seeds, more values) takes its place, reusing its finished trials,
  and one that leaves out some of its trials is refused, naming what (:func:`check_folder`);
* ``trials/<name>/``: one run folder per trial;
* ``failures.jsonl``: one line per trial that failed in the latest sweep (its error), in the sweep's trial order;
* ``aggregate.csv``: one row per grid point: ``n_seeds`` (its finished trials) and, for every measured number
  of the trials' ``summary.json`` (settings, counts, timings and seeds left out: :data:`NOT_MEASURED`; rows read
  from another run's folder too), the seeds with a value (``.n``: a NaN is left out) and over those
  its mean, sample sd and Student-t 95% interval (:func:`metric_statistics`);
* ``.records.json``: each trial's record (:data:`RECORDS`), which a rerun keeps for the trials it finds finished;
* ``sweep.png`` (the headline metrics per grid point, mean with its interval and each seed as a
  dot) and ``summary.json`` (written last), which make ``DIR`` one section of ``revlens report``.

Resumable and fault tolerant: a trial whose folder holds a complete manifest matching its
command line (:func:`finished`) is skipped; a runner that dies (killed, node lost) is restarted
by Ray and its trial retried (``max_restarts``, ``max_task_retries``), and a resumable experiment (``reproduce reversal``) continues from
its folder's checkpoints (``--resume``); a trial whose command fails is recorded in
``failures.jsonl`` and the others go on; only folders with a complete, matching manifest are
aggregated.

Resources: each runner reserves ``threads`` Ray CPUs (and ``gpus`` GPUs) and runs torch with that many threads
(``--threads``, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the worker's environment); at most
``workers`` runners, so trials, run at once (default: the cores, or the cluster's CPUs, over ``threads``).
Without ``--address`` Ray starts on this machine and stops with the sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import math
import os
import socket
import sys
import time
import tomllib
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

from analyses.experiments import EXPERIMENTS, grid_options

SWEEP_FILE = "sweep.toml"
TRIALS = "trials"
FAILURES = "failures.jsonl"
AGGREGATE = "aggregate.csv"
FIGURE = "sweep.png"
SUMMARY = "summary.json"
RUNNING = ".running"
"""Per running trial, ``<name>.pid`` holds the Ray worker's process id (for a person, or a test, to find it)."""
RECORDS = ".records.json"
"""Each trial's record (seconds, CPU seconds, host, the run it made), rewritten as each trial ends: the sweep's
outputs are removed when it starts again, so a rerun cut short would lose the records of the trials run before."""
MAX_TRIALS = 10_000
"""The most trials one sweep may hold (seeds × grid points): more is a typo (``--seeds 0-99999999``), and
its ``sweep.toml`` and trial folders would fill the disk."""
SWEEP_OUTPUTS = (SUMMARY, AGGREGATE, FIGURE, FAILURES)
VOLATILE = {"out", "quiet", "debug", "force", "argv", "threads", "resume"}
"""Command-line fields that do not change a trial's numbers (left out when manifests are compared)."""


class SweepError(ValueError):
    """A sweep cannot start (bad experiment, grid, seeds, file, address); the message says what to do."""


# --- the sweep and its trials --------------------------------------------------------------------

@dataclass(frozen=True)
class Trial:
    """One grid point at one seed."""

    point: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def name(self) -> str:
        """``key=value,...,seed=S``; characters a folder name should not hold are %-escaped."""
        return ",".join(f"{key}={quote(_shown(value), safe='.-+_')}" for key, value in self.point) + (
            "," if self.point else "") + f"seed={self.seed}"

    def argv(self, experiment: str, out: Path, threads: int) -> list[str]:
        """The ``revlens`` command line of this trial. An experiment whose run trains n consecutive seeds
        (:meth:`Experiment.seeds_per_run`) starts at ``seed · n``: trials of seeds 0, 1, … train 0…n−1, n…2n−1, …,
        never one seed twice (their statistics would count one run as two)."""
        options = [f"--{key}" if value is True else f"--{key}={value}"  # one token: a value may start with "-"
                   for key, value in self.point if value is not False]  # an off flag is left out
        first = self.seed * EXPERIMENTS[experiment].seeds_per_run(dict(self.point))
        return [*EXPERIMENTS[experiment].command, "--out", str(out), "--seed", str(first), *options,
                "--quiet", "--threads", str(threads)]


def _shown(value: Any) -> str:
    """A grid value as a trial's name and the printed table show it: an on/off flag (a bool, or numpy's from a
    table) as on or off."""
    return ("on" if value else "off") if type(value).__name__ in ("bool", "bool_") else str(value)


@dataclass(frozen=True)
class Sweep:
    """An experiment, its seeds and a grid of its options (values typed as its parser types them), and the GPUs each
    of its trials reserves (``--gpus-per-trial``; 0: none), kept so that a rerun reserves them too."""

    experiment: str
    seeds: tuple[int, ...]
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    gpus_per_trial: float = 0.0

    def points(self) -> list[tuple[tuple[str, Any], ...]]:
        keys = list(self.grid)
        return [tuple(zip(keys, values)) for values in itertools.product(*(self.grid[k] for k in keys))]

    def trials(self) -> list[Trial]:
        return [Trial(point, seed) for point in self.points() for seed in self.seeds]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``0-4``, ``0,3,7`` or ``0-2,10`` → the seeds, in order, without repeats."""
    from analyses.experiments import seed as check_seed

    if not text.strip():
        raise SweepError("--seeds '': no seeds given; write them like 0-4, 0,3,7 or 0-2,10 (or leave --seeds out "
                         "for 0-4)")
    seeds: dict[int, None] = {}
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            chosen = range(check_seed(first), check_seed(last) + 1) if dash else [check_seed(first)]
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise SweepError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range like 0-4 ({error})") from None
        if dash and not chosen:
            raise SweepError(f"--seeds {text!r}: the range {part.strip()} is empty; write it low-high, e.g. 0-4")
        if len(seeds) + len(chosen) > MAX_TRIALS:
            raise SweepError(f"--seeds {text!r}: more than {MAX_TRIALS} seeds; a sweep holds at most {MAX_TRIALS} "
                             f"trials")
        seeds.update(dict.fromkeys(chosen))
    return tuple(seeds)


FLAG_VALUES = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
"""How a grid gives an on/off flag's value (``--grid freeze-embeddings=on,off``); it is kept as a bool."""


def _typed(experiment: str, key: str, value: Any, where: str) -> Any:
    """``value`` for option ``key`` as the command's parser reads it (its type and choices; an on/off flag as a
    bool)."""
    options = grid_options(experiment)
    if key not in options:
        raise SweepError(f"{where}: {experiment} has no option --{key}; its grid keys are "
                         f"{', '.join(options) or 'none (only seeds vary)'}")
    action = options[key]
    if isinstance(action, argparse._StoreTrueAction):  # an on/off flag: on passes it, off leaves it out
        switch = value if isinstance(value, bool) else FLAG_VALUES.get(str(value).strip().lower())
        if switch is None:
            raise SweepError(f"{where}: --{key} {value!r}: an on/off flag; give on or off (e.g. {key}=on,off)")
        return switch
    try:
        typed = action.type(str(value)) if action.type else str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise SweepError(f"{where}: --{key} {value!r}: {error}") from None
    if action.choices is not None and typed not in action.choices:
        raise SweepError(f"{where}: --{key} {value!r}: choose from {', '.join(map(str, action.choices))}")
    return typed if isinstance(typed, (int, float, str)) else str(typed)


def parse_grid(experiment: str, items: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """``["model=one-layer,tiny", "steps=40"]`` → ``{"model": ("one-layer", "tiny"), "steps": (40,)}``."""
    grid: dict[str, tuple[Any, ...]] = {}
    for item in items:
        key, equals, values = item.partition("=")
        key = key.strip().lstrip("-")
        if not equals or not key:
            raise SweepError(f"--grid {item!r}: write key=value1,value2 (e.g. --grid model=one-layer,tiny)")
        if key in grid:
            raise SweepError(f"--grid {item!r}: {key} is given twice; list all its values in one --grid")
        listed = [v.strip() for v in values.split(",")]
        if not values.strip() or not all(listed):
            raise SweepError(f"--grid {item!r}: empty value; list the values of {key}, e.g. {key}=a,b")
        grid[key] = tuple(dict.fromkeys(_typed(experiment, key, v, f"--grid {item}") for v in listed))
    return grid


def check_size(sweep: Sweep, where: str = "the sweep") -> Sweep:
    """Refuse a sweep of more than :data:`MAX_TRIALS` trials (seeds × grid points)."""
    n_trials = len(sweep.seeds) * math.prod(len(values) for values in sweep.grid.values())
    if n_trials > MAX_TRIALS:
        points = n_trials // len(sweep.seeds)
        raise SweepError(f"{where}: {len(sweep.seeds)} seeds × {points} grid points = {n_trials} "
                         f"trials, more than the {MAX_TRIALS} a sweep may hold; sweep fewer seeds or values")
    return sweep


def make_sweep(experiment: str, seeds: str, grid: Sequence[str], fixed: dict[str, Any] | None = None) -> Sweep:
    """The sweep of ``experiment`` over ``seeds`` (as ``--seeds`` writes them) and ``grid`` (``--grid`` items, whose
    values are split at commas). ``fixed``: options of one value each, taken whole and typed and checked as a grid's
    (``reproduce all --seeds``'s ``--finetuned`` folder: a folder whose name holds a comma is one value, not two)."""
    if experiment not in EXPERIMENTS:
        raise SweepError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    typed = parse_grid(experiment, grid)
    for key, value in (fixed or {}).items():
        if key in typed:
            raise SweepError(f"--{key} {value}: also given as --grid {key}=...; give it once")
        typed[key] = (_typed(experiment, key, value, f"--{key} {value}"),)
    return check_size(Sweep(experiment, parse_seeds(seeds), typed))


def sweep_for(out: Path, experiment: str | None, seeds: str | None, grid: Sequence[str]) -> Sweep:
    """The sweep ``revlens sweep [EXPERIMENT] [--seeds S] [--grid KEY=V1,V2 ...] --out DIR`` runs. Where ``DIR`` holds
    a sweep (its ``sweep.toml``) and no other EXPERIMENT is named, what is left out is that sweep's: its experiment,
    its seeds, its whole grid (when no ``--grid`` is given) and the GPUs its trials reserve; so ``revlens sweep --out
    DIR`` and ``revlens sweep EXPERIMENT --out DIR`` rerun it as saved, its unfinished trials only. Elsewhere the seeds
    are 0-4 and the grid empty. A sweep given that leaves out some of the trials of the one ``DIR`` holds is refused
    by :func:`check_folder`."""
    saved_file = out / SWEEP_FILE
    saved = read_sweep_file(saved_file) if saved_file.is_file() else None
    experiment = experiment or (saved.experiment if saved else None)
    if experiment is None:
        raise SweepError(f"name the EXPERIMENT to sweep (or give --file; {saved_file} does not exist to rerun)")
    if saved is None or saved.experiment != experiment:
        return make_sweep(experiment, "0-4" if seeds is None else seeds, grid)
    return check_size(Sweep(experiment, saved.seeds if seeds is None else parse_seeds(seeds),
                            parse_grid(experiment, grid) if grid else saved.grid, saved.gpus_per_trial))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def sweep_toml(sweep: Sweep) -> str:
    """The sweep as TOML (read back by :func:`read_sweep_file`); ``gpus_per_trial`` only where its trials reserve
    GPUs."""
    lines = ["# revlens sweep: rerun with `revlens sweep --file sweep.toml --out DIR`",
             f"experiment = {_toml_value(sweep.experiment)}",
             f"seeds = [{', '.join(map(str, sweep.seeds))}]"]
    lines += [f"gpus_per_trial = {_toml_value(float(sweep.gpus_per_trial))}"] if sweep.gpus_per_trial else []
    lines += ["", "[grid]"]
    lines += [f"{json.dumps(key)} = [{', '.join(map(_toml_value, values))}]" for key, values in sweep.grid.items()]
    return "\n".join(lines) + "\n"


def read_sweep_file(path: Path) -> Sweep:
    """A ``sweep.toml``: ``experiment``, ``seeds`` (a list, or a string like ``"0-4"``), optionally
    ``gpus_per_trial`` (the GPUs each trial reserves, 0 to 1, as ``--gpus-per-trial`` gives them) and a
    ``[grid]`` table of value lists; every key and value is checked as ``--grid`` checks it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SweepError(f"{path}: not valid TOML ({error})") from None
    unknown = set(data) - {"experiment", "seeds", "gpus_per_trial", "grid"}
    if unknown or not isinstance(data.get("experiment"), str):
        raise SweepError(f"{path}: a sweep file holds experiment = \"NAME\", seeds = [...], optionally "
                         f"gpus_per_trial = G, and a [grid] table"
                         + (f"; unknown keys: {', '.join(sorted(unknown))}" if unknown else ""))
    gpus = data.get("gpus_per_trial", 0.0)
    if not (type(gpus) in (int, float) and 0 <= gpus <= 1):  # a bool is no number of GPUs; NaN fails both bounds
        raise SweepError(f"{path}: gpus_per_trial = {gpus!r}: give the GPUs each trial reserves, a number from 0 to 1 "
                         f"(as --gpus-per-trial)")
    experiment = data["experiment"]
    if experiment not in EXPERIMENTS:
        raise SweepError(f"{path}: unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    seeds = data.get("seeds", "0-4")
    if not (isinstance(seeds, str) or isinstance(seeds, list) and all(type(s) is int for s in seeds)):
        raise SweepError(f"{path}: seeds = {seeds!r}: give a list of integers (seeds = [0, 1]) or a string "
                         f"(seeds = \"0-4\")")
    seeds = parse_seeds(seeds if isinstance(seeds, str) else ",".join(map(str, seeds)))
    grid = data.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError(f"{path}: [grid] maps each option to a non-empty list of values")
    typed = {key: tuple(dict.fromkeys(_typed(experiment, key, v, f"{path}: grid.{key}") for v in values))
             for key, values in grid.items()}
    return check_size(Sweep(experiment, seeds, typed, float(gpus)), str(path))


# --- one trial ---------------------------------------------------------------------------------

@functools.cache
def _parser() -> argparse.ArgumentParser:
    """``revlens``'s parser, built once per process (8 ms a build; a sweep parses each trial's
    command up to three times)."""
    from analyses.cli import build_parser

    return build_parser()


def config_of(argv: list[str]) -> dict[str, Any] | None:
    """The config a run of the command line ``argv`` records in its manifest (:func:`analyses.cli.recorded_config`),
    volatile fields left out; None for options revlens refuses together (no run of them can exist)."""
    from analyses.cli import recorded_config
    from analyses.runfolder import _jsonable

    try:
        recorded = recorded_config(_parser().parse_args(argv))
    except ValueError:
        return None
    return _without_volatile(_jsonable(recorded))


def expected_config(experiment: str, trial: Trial, out: Path) -> dict[str, Any] | None:
    """:func:`config_of` the trial's command line."""
    return config_of(trial.argv(experiment, out, 1))


def trial_finished(experiment: str, trial: Trial, folder: Path) -> bool:
    """:func:`finished` for the trial's own command line; its config (:func:`expected_config`, which imports the
    experiment's module: torch and pandas, ~2 CPU s; not TransformerLens, which its probes import where they run) is
    made only for a folder holding a summary."""
    return (folder / SUMMARY).is_file() and finished(folder, expected_config(experiment, trial, folder))


def _without_volatile(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in VOLATILE}


def finished(folder: Path, expected: dict[str, Any] | None) -> bool:
    """Whether ``folder`` holds a whole run (complete manifest, every file as it lists) of this config, its random
    draws made as this code makes them (:data:`analyses.runfolder.RANDOM_DRAWS`), from inputs (facts, templates,
    run folders it read) that still hash as they did."""
    from analyses.runfolder import RANDOM_DRAWS, RunFolderError, check_run, inputs_unchanged

    if expected is None or not (folder / SUMMARY).is_file():
        return False
    try:
        manifest = check_run(folder)
    except RunFolderError:
        return False
    config = (manifest or {}).get("config", {})
    return (manifest is not None and _without_volatile(config) == expected
            and manifest.get("draws") == RANDOM_DRAWS and inputs_unchanged(manifest))


def run_trial(argv: list[str], folder: str, running: str, resumable: bool) -> dict[str, Any]:
    """Run one trial's command in this process (the body of :meth:`TrialRunner.run`).

    On a retry after a worker died, a resumable experiment continues from the folder's
    checkpoints: the folder's manifest then says the run did not finish. A run left unfinished by another
    command line or another revlens (other options, random draws made otherwise) is run afresh: resuming it is
    refused, and the trial would fail on every rerun.
    """
    from analyses.cli import main
    from analyses.runfolder import RANDOM_DRAWS, read_manifest

    began, began_cpu = time.perf_counter(), time.process_time()
    marker = Path(running) / f"{Path(folder).name}.pid"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    manifest = read_manifest(Path(folder)) if Path(folder).is_dir() else None
    resumed = bool(resumable and manifest is not None and manifest.get("complete") is False
                   and manifest.get("draws") == RANDOM_DRAWS
                   and _without_volatile(manifest.get("config", {})) == config_of(argv))
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, "--resume"] if resumed else argv)
    marker.unlink(missing_ok=True)
    return {"exit_code": code, "error": stderr.getvalue().strip().splitlines()[-1:] or None,
            "resumed": resumed, "pid": os.getpid(), "host": socket.gethostname(), "node": _node_id(),
            "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - began_cpu}


def _node_id() -> str | None:
    """The Ray node this process runs on; None outside a Ray session (a trial run in this process), where asking
    Ray would start one (``ray.get_runtime_context`` connects first: to the cluster this machine started last, if
    any, else to a new local Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


# --- the sweep on Ray --------------------------------------------------------------------------

WARM_MODULES = ("analyses.cli", "analyses.reproduce", "probes.circuits", "probes.logits", "matplotlib.figure",
                "matplotlib.backends.backend_agg")
"""What a trial runner imports when it starts, before its first trial: torch, TransformerLens (through the probes:
an experiment's own module imports them where they run), pandas, circuitsvis and matplotlib (~5 CPU s cold, the
bulk of a cold trial's extra cost)."""


class TrialRunner:
    """One trial slot: a long-lived Ray actor that imports the toolkit once, when Ray starts it
    (:data:`WARM_MODULES`; a no-op where the worker preloaded them, :data:`PRELOAD`), then runs
    trials (:func:`run_trial`) one after another as method calls, and a sweep's :func:`aggregate`
    with pandas and matplotlib already imported."""

    def __init__(self) -> None:
        from importlib import import_module

        for module in WARM_MODULES:
            import_module(module)

    def run(self, argv: list[str], folder: str, running: str, resumable: bool) -> dict[str, Any]:
        return run_trial(argv, folder, running, resumable)

    def aggregate(self, sweep: Sweep, out: str, records: dict[str, Any], failures: list[dict[str, Any]],
                  seconds: float) -> dict[str, Any]:
        return aggregate(sweep, Path(out), records, failures, seconds)


@dataclass(frozen=True)
class Resources:
    """Where and how wide a sweep runs."""

    address: str | None = None
    workers: int | None = None
    threads: int = 1
    gpus: float = 0.0
    retries: int = 3


def check_address(address: str) -> None:
    """Refuse, before anything starts, an address nothing answers at (``auto`` is left to Ray)."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise SweepError(f"--address {address}: a ray:// (Ray Client) address needs `pip install \"ray[client]\"`; "
                             f"or run the sweep on the cluster's head node with --address auto")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r}: give host:port (the head's GCS port, e.g. 10.0.0.1:6379), "
                         f"ray://host:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise SweepError(f"--address {address}: nothing answers at {host}:{port} ({error.strerror or error}); "
                         f"start the head with `ray start --head --port {port}` or check the address") from None


def _worker_env(threads: int) -> dict[str, str]:
    """Environment of the Ray workers: thread counts, and this checkout first on the import path."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}


MEMORY_MONITOR = "RAY_memory_monitor_refresh_ms"
PRELOAD = "RAY_preload_python_modules"
"""Ray's setting (``preload_python_modules``, comma-separated here) of what a worker process imports as
soon as it has connected to its raylet, before it serves any task."""
PRESTART = "RAY_enable_worker_prestart"
"""Ray's setting that makes a raylet start its workers (one per CPU) as soon as it starts, not
when the first driver connects (its default): a local session's runners then begin their imports
while ``ray.init`` still waits on Ray's agents (measured, load 3-4.5: 1.3-1.7 s after the raylet's
start against 3.1 s; a job with a ``runtime_env`` could not use such workers, and a local sweep
gives none)."""
NICENESS = "RAY_worker_niceness"
"""Ray's setting of how many ``nice`` steps below its raylet (so below the sweep's process) a worker
runs: 15 by default; 0 gives the workers the sweep's own priority (checked: a driver at nice 5 gets
runners at 5)."""


@contextlib.contextmanager
def _local_ray_environment(threads: int):
    """The environment the Ray daemons started on this machine copy when they start (and pass to
    their workers), restored right after: the workers' (:func:`_worker_env`; given here rather than
    as a ``runtime_env``, so the workers Ray starts with the node serve the trials and no second
    set is started for the job's environment) and Ray's memory monitor off
    (``RAY_memory_monitor_refresh_ms=0``) unless the user set it. The monitor kills Ray workers when
    the whole machine's memory passes 95%, whoever uses it: on a shared 24 GiB machine it killed
    trials of 0.4 GB each while other programs held the memory (each kill a retry, and a page of
    Ray's report in the terminal). And the workers preload :data:`WARM_MODULES` (:data:`PRELOAD`),
    started by the raylet (one per CPU) as soon as it is up (:data:`PRESTART`, unless the user set
    it), while ``ray.init`` is still waiting for Ray's other daemons, so the runners' imports (~7
    CPU s each) overlap Ray's start instead of following it. The workers run at this process's CPU
    priority (:data:`NICENESS` 0, unless the user set it), not Ray's default 15 steps lower: the
    trials are the sweep's work, and at nice 15 every other program on the machine, Ray's own
    daemons included, came before them (the trials took a share of the cores far below two under
    other users' load, while the same trials run one after another at the user's priority did not)."""
    wanted = {**_worker_env(threads), MEMORY_MONITOR: os.environ.get(MEMORY_MONITOR, "0"),
              NICENESS: os.environ.get(NICENESS, "0"), PRESTART: os.environ.get(PRESTART, "1"),
              PRELOAD: ",".join(filter(None, (os.environ.get(PRELOAD), *WARM_MODULES)))}
    before = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Runners:
    """``workers`` :class:`TrialRunner` actors, each reserving one trial's CPUs (``threads``) and
    GPUs for the session, created (so importing) as soon as Ray is up; :meth:`run` hands them
    ``revlens`` commands. Ray restarts a runner whose process dies (``max_restarts=-1``: its
    constructor runs again) and retries the trial it was running (``max_task_retries`` =
    ``resources.retries``); a trial's retry finds its folder's checkpoints. (``ray.util.ActorPool``
    does the same dispatch but cannot say which job a Ray error belongs to.) ``nodes``: the Ray
    node each runner (by index) last ran a trial on."""

    def __init__(self, resources: Resources, workers: int) -> None:
        import ray

        self.workers, self.nodes = workers, {}
        self._runner = ray.remote(TrialRunner).options(**runner_options(resources))
        self.actors = [self._runner.remote() for _ in range(workers)]

    def run(self, jobs: Sequence[tuple[Any, list[str], Path, bool]], running_dir: Path):
        """Run ``revlens`` commands, one per free runner, in the order given; yields ``(key,
        result)`` as each finishes (``result``: :func:`run_trial`'s, or the Ray error of a trial
        whose runner died more often than ``retries``). ``jobs``: ``(key, argv, folder, resumable)``;
        ``running_dir`` holds a ``<folder name>.pid`` per running trial. When the caller stops (an
        error, ^C), the runners still busy are killed and replaced."""
        import ray

        pending, idle, running = list(jobs), list(self.actors), {}

        def dispatch() -> None:
            while pending and idle:
                key, argv, folder, resumable = pending.pop(0)
                actor = idle.pop(0)
                running[actor.run.remote(argv, str(folder), str(running_dir), resumable)] = (key, actor)

        try:
            while pending or running:
                dispatch()
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)  # a ^C lands within a second
                for ref in done:
                    key, actor = running.pop(ref)
                    idle.append(actor)
                    dispatch()  # the freed runner starts its next trial before the caller checks this one
                    try:
                        result = ray.get(ref)
                        self.nodes[self.actors.index(actor)] = result.get("node")
                    except ray.exceptions.RayError as error:  # the runner died more often than max_task_retries,
                        result = {"exit_code": None, "error": [_ray_error_text(error)]}  # or could not start
                    yield key, result
        finally:
            for _, actor in running.values():
                ray.kill(actor, no_restart=True)
                index = self.actors.index(actor)
                self.actors[index] = self._runner.remote()
                self.nodes.pop(index, None)

    def aggregate(self, sweep: Sweep, out: Path, records: dict[str, Any], failures: list[dict[str, Any]],
                  seconds: float) -> dict[str, Any]:
        """:func:`aggregate` by a runner on this process's node, which sees the same disk and has
        pandas, matplotlib and torch (which ``sweep.png``'s writer imports) imported already (~3 CPU s
        this process never spends); else, or if that fails or its ``summary.json`` is not seen
        here, in this process."""
        import ray

        here = ray.get_runtime_context().get_node_id()
        local = [index for index, node in self.nodes.items() if node == here]
        if local:
            try:
                summary = ray.get(self.actors[local[0]].aggregate.remote(sweep, str(out.absolute()), records,
                                                                          failures, seconds))
                if (out / SUMMARY).is_file():
                    return summary
            except ray.exceptions.RayError:  # the runner died, or aggregate raised: rerun here, for its own error
                pass
        return aggregate(sweep, out, records, failures, seconds)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def runner_options(resources: Resources) -> dict[str, Any]:
    """What Ray is asked for each :class:`TrialRunner` (``ray.remote(TrialRunner).options``): ``threads`` CPUs and
    ``gpus`` GPUs, held while it lives (Ray shows a runner only the GPUs it reserved: with none, a trial on cuda finds
    no device); brought back whenever its process dies, its trial retried ``retries`` times."""
    return {"num_cpus": resources.threads, "num_gpus": resources.gpus, "max_restarts": -1,
            "max_task_retries": resources.retries}


def _ray_error_text(error: Exception) -> str:
    """A Ray error in one line: its kind, its first line and its last (a runner whose constructor
    failed ends with the exception it raised, e.g. ``ModuleNotFoundError: No module named ...``)."""
    import re

    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    text = lines[0][:240] + (f" … {lines[-1][:240]}" if len(lines) > 1 else "") if lines else "no message"
    return f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def ray_session(resources: Resources, jobs: int | None = None):
    """Ray started on this machine (no address; stopped after) or joined at ``address``; yields
    the session's :class:`Runners` (one per trial to run at once, and no more than ``jobs``, the
    trials to run, when given), created as soon as Ray is up. On this machine the workers import
    the toolkit while Ray starts (:data:`PRELOAD`), and Ray starts without its API server and
    monitors (:func:`_lean_local_head`). Inside a Ray session already open, that
    session is used (with runners of its own)."""
    import logging

    import ray

    def width(cpus: float) -> int:
        return min(resources.workers or max(1, int(cpus) // resources.threads), jobs or math.inf)

    if ray.is_initialized():
        runners = Runners(resources, min(width(ray.cluster_resources().get("CPU", 1)), _placeable(resources)))
        try:
            yield runners
        finally:
            runners.close()
        return
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    cores = os.cpu_count() or 1
    if resources.address is None:
        workers = width(cores)
        check_resources(resources)
        gpus = local_gpus() if resources.gpus else None
        with _local_ray_environment(resources.threads), _lean_local_head():
            ray.init(address="local", num_cpus=workers * resources.threads, num_gpus=gpus, **common)
    else:
        try:
            ray.init(address=resources.address, runtime_env={"env_vars": _worker_env(resources.threads)}, **common)
        except (ConnectionError, RuntimeError) as error:
            raise SweepError(f"--address {resources.address}: cannot join the Ray cluster ({error})") from None
        workers = width(ray.cluster_resources().get("CPU", 1))
    try:
        workers = min(workers, _placeable(resources))
    except SweepError:
        ray.shutdown()
        raise
    try:
        yield Runners(resources, workers)
    finally:
        ray.shutdown()


def _placeable(resources: Resources) -> int:
    """How many runners the session's nodes hold at once: on each live node, its CPUs ÷ a trial's threads and, with
    GPUs per trial, its GPUs ÷ those (a runner keeps what it reserves while it lives, so a runner past these would
    never be placed and its trials would wait forever), summed. None fits: refused, naming the largest node."""
    import ray

    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    fits = [min(int(have.get("CPU", 0) // resources.threads),
                int(have.get("GPU", 0) // resources.gpus) if resources.gpus else math.inf) for have in nodes]
    if sum(fits) == 0:
        largest = max(nodes, key=lambda have: (have.get("CPU", 0), have.get("GPU", 0)), default={})
        needs = f"{resources.threads} CPU(s)" + (f" and {resources.gpus:g} GPU(s)" if resources.gpus else "")
        raise SweepError(f"no node of the Ray session can hold a trial of {needs} (the largest has "
                         f"{largest.get('CPU', 0):g} CPU(s) and {largest.get('GPU', 0):g} GPU(s)); lower "
                         f"--threads-per-trial or --gpus-per-trial")
    return int(sum(fits))


@contextlib.contextmanager
def _lean_local_head():
    """While it is open, a Ray head that ``ray.init`` starts on this machine starts without the
    three daemons a local sweep has no use for, each a Python process: the API server
    (``dashboard.py``; with ``include_dashboard=False`` it serves only usage statistics, yet
    ``ray.init`` waits for it to report its address before it even starts the raylet, so the
    workers' imports began 3-4 s later at load 6; not measured quiet), the autoscaler monitor
    (nothing to scale; it made ``ray.shutdown`` wait 1 s) and the log monitor (it polls the log
    folder 10×/s to copy the workers' output to the driver, which ``log_to_driver=False`` drops).
    ``ray start`` has switches for the two monitors (``--no-monitor``, ``--include-log-monitor``)
    but ``ray.init`` passes neither on, and none for the API server; so this sets them on the
    parameters of the node ``ray.init`` creates (``ray._private.node.Node``) and skips its
    ``start_api_server`` when the dashboard is off. With a Ray whose node lacks these, nothing is
    changed (the daemons then start, as Ray does by default)."""
    try:
        from ray._private.node import Node

        create, api_server = Node.__init__, Node.start_api_server
    except (ImportError, AttributeError):
        yield
        return

    def __init__(self, ray_params, *args, **kwargs):
        if getattr(ray_params, "no_monitor", None) is False:
            ray_params.no_monitor = True
        if getattr(ray_params, "include_log_monitor", False) is None:
            ray_params.include_log_monitor = False
        create(self, ray_params, *args, **kwargs)

    def start_api_server(self, *, include_dashboard, raise_on_failure):
        if include_dashboard:
            api_server(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    Node.__init__, Node.start_api_server = __init__, start_api_server
    try:
        yield
    finally:
        Node.__init__, Node.start_api_server = create, api_server


def reserved(sweep: Sweep, resources: Resources) -> Resources:
    """The resources ``sweep`` runs on: each trial reserves the GPUs given (``--gpus-per-trial``), else those the sweep
    recorded when it ran before (:attr:`Sweep.gpus_per_trial`, from its ``sweep.toml``). That run set its trials to
    ``device=cuda`` (:func:`with_resources`), and Ray shows a trial that reserves no GPU none (:func:`runner_options`):
    a rerun reserves what the first run reserved, or every trial fails."""
    return replace(resources, gpus=resources.gpus or sweep.gpus_per_trial)


def with_resources(sweep: Sweep, resources: Resources) -> Sweep:
    """The sweep as it runs on these resources, recording the GPUs each trial reserves (for a rerun: :func:`reserved`):
    with GPUs, ``device=cuda`` joins the grid of an experiment that has --device (Ray gives each trial its GPUs as
    ``cuda:0``…)."""
    grid = sweep.grid
    if resources.gpus and "device" in grid_options(sweep.experiment) and "device" not in grid:
        grid = {**grid, "device": ("cuda",)}
    return replace(sweep, grid=grid, gpus_per_trial=resources.gpus)


def check_devices(sweep: Sweep, resources: Resources) -> None:
    """Refuse, before Ray starts, a grid that runs trials on CUDA (``device=cuda``, ``cuda:N``) whose trials reserve no
    GPU: Ray hides every GPU from a task or actor that reserves none (it sets ``CUDA_VISIBLE_DEVICES`` to nothing),
    so each such trial would fail on its own once started, one after another."""
    cuda = [value for value in sweep.grid.get("device", ()) if str(value).startswith("cuda")]
    if cuda and not resources.gpus:
        raise SweepError(f"--grid device={_shown(cuda[0])}: a trial that reserves no GPU sees none under Ray, so it "
                         "would fail; give --gpus-per-trial (1: a GPU each; 0.5: two trials share one)")


def local_gpus() -> int:
    """The CUDA devices torch sees on this machine (0 without CUDA)."""
    import torch

    return torch.cuda.device_count()


def check_resources(resources: Resources, options: tuple[str, str] = ("--workers", "--threads-per-trial")) -> None:
    """Refuse, before the sweep folder is touched, resources this machine (or any) cannot give; ``options``: the
    command's names for the workers and each one's threads (``reproduce all``: ``--workers``, ``--threads``)."""
    if resources.retries < 0:
        raise SweepError(f"--retries {resources.retries}: must be ≥ 0")
    if not (math.isfinite(resources.gpus) and resources.gpus >= 0):
        raise SweepError(f"--gpus-per-trial {resources.gpus}: must be a finite number ≥ 0")
    if resources.gpus and resources.address is None:
        local = local_gpus()
        if resources.gpus > local:  # Ray would hold every trial pending forever
            raise SweepError(f"--gpus-per-trial {resources.gpus:g}: more than the {local} CUDA device(s) of this "
                             "machine" + (" (or torch built without CUDA)" if local == 0 else ""))
    if resources.gpus > 1:  # `with_resources` runs each trial on cuda, the first of the GPUs Ray gives it
        raise SweepError(f"--gpus-per-trial {resources.gpus:g}: a trial runs on one GPU, so the others reserved for "
                         "it would sit idle; give at most 1 (a fraction such as 0.5 runs trials side by side on one GPU)")
    cores = os.cpu_count() or 1
    if resources.address is None and (resources.workers or 1) * resources.threads > cores:
        raise SweepError(f"{options[0]} {resources.workers or 1} × {options[1]} {resources.threads} > the {cores} cores "
                         f"of this machine: they would thrash; lower one (default: cores / threads workers)")


def _write_failures(out: Path, failures: list[dict[str, Any]]) -> None:
    from facts.io import write_text_atomic

    if failures:
        write_text_atomic(out / FAILURES, "".join(json.dumps(f) + "\n" for f in failures))
    else:
        (out / FAILURES).unlink(missing_ok=True)


def dropped(saved: Sweep, given: Sweep) -> list[str]:
    """What ``given`` leaves out of the ``saved`` sweep, one item each: another experiment, a seed, a grid key or a
    value of one that it does not run, a grid key the saved sweep has not (its trials' folders do not name it), or
    the grid's keys in another order (which names the trials' folders). Empty where ``given`` extends ``saved``
    (more seeds, more values of its keys): every trial of the saved sweep is one of the given sweep's. The GPUs a
    trial reserves change no number of it, so they are not compared."""
    def shown(values) -> str:
        return ", ".join(map(_shown, values))

    if saved.experiment != given.experiment:
        return [f"experiment {saved.experiment}, given {given.experiment}"]
    found = [f"seeds {shown(s for s in saved.seeds if s not in given.seeds)} not given"] if set(saved.seeds) - set(
        given.seeds) else []
    for key in dict.fromkeys([*saved.grid, *given.grid]):
        if key not in given.grid:
            found.append(f"grid {key} {shown(saved.grid[key])}, given not set")
        elif key not in saved.grid:
            why = (" (--gpus-per-trial runs every trial on cuda, a grid key of its own, which renames every trial's "
                   "folder)" if key == "device" and given.gpus_per_trial and not saved.gpus_per_trial else "")
            found.append(f"grid {key} not set, given {shown(given.grid[key])}{why}")
        elif set(saved.grid[key]) - set(given.grid[key]):
            found.append(f"grid {key} {shown(v for v in saved.grid[key] if v not in given.grid[key])} not given")
    if not found and list(saved.grid) != list(given.grid):
        found.append(f"grid keys in the order {', '.join(saved.grid)}, given {', '.join(given.grid)}")
    return found


def check_folder(sweep: Sweep, out: Path) -> None:
    """Refuse ``out`` where it holds a sweep (its ``sweep.toml``) of which ``sweep`` leaves something out
    (:func:`dropped`), or files but no ``sweep.toml`` (no sweep folder). A sweep folder describes every trial in it:
    a sweep that extends the saved one (more seeds, more values) takes its place and reuses its finished trials; one
    that dropped some would leave trials the folder no longer describes, with nothing said of the change."""
    saved = out / SWEEP_FILE
    if saved.is_file():
        left_out = dropped(read_sweep_file(saved), sweep)
        if left_out:
            raise SweepError(f"{out}: holds another sweep, of which this one leaves out some trials (its {SWEEP_FILE}: "
                             f"{'; '.join(left_out)}); a sweep folder keeps every trial of the sweep it was made for: "
                             f"rerun that one (revlens sweep --out {out}), extend it (more seeds or values of its "
                             f"keys) or choose another --out")
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise SweepError(f"{out}: holds files but no {SWEEP_FILE}, so it is not a sweep folder; choose an empty or "
                         f"new --out")


def prepare(sweep: Sweep, out: Path) -> None:
    """Check ``out`` may hold this sweep (:func:`check_folder`), write its ``sweep.toml``; remove the sweep's own
    outputs (a sweep cut short never leaves an aggregate, or a list of failures, of an earlier one behind)."""
    from facts.io import write_text_atomic

    check_folder(sweep, out)
    write_text_atomic(out / SWEEP_FILE, sweep_toml(sweep))
    for name in (SUMMARY, AGGREGATE, FIGURE, FAILURES):
        (out / name).unlink(missing_ok=True)
    (out / TRIALS).mkdir(exist_ok=True)


def run_sweep(sweep: Sweep, out: Path, resources: Resources = Resources(), log=None,
              runners: Runners | None = None) -> dict[str, Any]:
    """Run the sweep's unfinished trials on Ray (on ``runners`` of a session already open, else in
    a session of its own), then aggregate; returns the sweep's summary.

    A session of its own opens before the trials whose folders hold a summary are checked, when some trial's
    folder holds none (so it surely runs; the session holds one runner per such trial at most): checking a trial
    makes its config, which imports the experiment's module (~2 CPU s; ~6 when it imported TransformerLens), and that
    import then overlaps the runners' own. Measured on 2 cores, a local sweep of two 2-step trials, one finished before: 10.9-11.0 → 7.9 s."""
    from analyses.runfolder import locked

    log = log or (lambda line: print(line, flush=True))
    began = time.perf_counter()
    with locked(out, parent=True), contextlib.ExitStack() as session:
        earlier = _earlier_records(out)
        prepare(sweep, out)
        trials = sweep.trials()
        unsummarised = [trial for trial in trials if not (out / TRIALS / trial.name / SUMMARY).is_file()]
        if runners is None and unsummarised:
            runners = session.enter_context(ray_session(resources, len(unsummarised)))
        todo, records = [], {}
        for trial in trials:
            folder = out / TRIALS / trial.name
            if trial_finished(sweep.experiment, trial, folder):  # its run's record kept
                made = _run_id(folder)
                kept = earlier.get(trial.name, {})
                kept = kept if kept.get("run_id", made) == made else {}  # another run's record: not this one's
                records[trial.name] = {**kept, "trial": trial.name, "status": "finished before", "run_id": made}
            else:
                todo.append(trial)
        _save_records(out, records)
        log(f"sweep {sweep.experiment}: {len(trials)} trials, {len(trials) - len(todo)} finished before, "
            f"{len(todo)} to run")
        failures: list[dict[str, Any]] = []
        if runners is None and todo:  # every folder held a summary, and some trial's run is not this sweep's
            runners = session.enter_context(ray_session(resources, len(todo)))
        if todo:
            if isinstance(runners, Runners):  # Ray is up (imported here first): this process only waits now
                meanwhile(lambda: expected_config(sweep.experiment, todo[0], out / TRIALS / todo[0].name))
            log(f"Ray: {runners.workers} trial(s) at once, {resources.threads} thread(s) each"
                + (f", {resources.gpus} GPU(s) each" if resources.gpus else ""))
            _run_on_ray(sweep, out, todo, resources, runners, records, failures, log)
        order = {trial.name: index for index, trial in enumerate(trials)}
        failures.sort(key=lambda failure: order[failure["trial"]])  # trials finish in any order
        _write_failures(out, failures)
        summary = (runners.aggregate if runners else aggregate)(sweep, out, records, failures,
                                                                time.perf_counter() - began)
    return summary


def meanwhile(work: Callable[[], Any]) -> None:
    """Run ``work`` in a background thread, its errors dropped (whoever needs its result makes it again and meets
    them there): for the imports this process would otherwise make only after Ray's runners have finished their first
    job, made while it waits on the runners. Called once Ray is up, so that this thread has imported Ray's modules
    before the other imports anything (two threads importing at once can each meet a module the other has half
    imported). :func:`run_sweep` makes the first trial's config (:func:`expected_config`, whose import of the
    experiment's module, torch and pandas, is ~2 CPU s; ~6 when it imported TransformerLens); measured on 2 cores,
    with that import at ~6 CPU s: a local sweep of one 2-step trial 12.2 → 7.8-8.2 s, of two on two runners
    12.3 → 10.3-10.7 s. ``reproduce all`` imports the experiments' formatters so: chain and embeddings at once
    13.0-13.3 → 11.6-12.2 s."""
    import threading

    def run() -> None:
        with contextlib.suppress(Exception):
            work()

    threading.Thread(target=run, daemon=True, name="revlens-meanwhile").start()


def _earlier_records(out: Path) -> dict[str, dict[str, Any]]:
    """The records (seconds, CPU seconds, host, ...) of the trials an earlier run of this sweep ran or found finished,
    by trial, from its :data:`RECORDS`, or, in a folder an earlier revlens wrote, from its ``summary.json``'s trials
    (none where it has neither or they cannot be read), so that a rerun keeps them."""
    for read in (lambda: json.loads((out / RECORDS).read_text(encoding="utf-8")),
                 lambda: json.loads((out / SUMMARY).read_text(encoding="utf-8")).get("trials", [])):
        try:
            trials = read()
            return {r["trial"]: r for r in trials
                    if isinstance(r, dict) and r.get("status") in ("ran", "finished before")}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue
    return {}


def _save_records(out: Path, records: dict[str, dict[str, Any]]) -> None:
    from facts.io import write_text_atomic

    write_text_atomic(out / RECORDS, json.dumps(list(records.values()), indent=1) + "\n")


def _run_id(folder: Path) -> str | None:
    """The id of the run a trial's folder holds (its manifest's), which a record names."""
    from analyses.runfolder import read_manifest

    return (read_manifest(folder) or {}).get("run_id")


def _run_on_ray(sweep: Sweep, out: Path, todo: list[Trial], resources: Resources, runners: Runners,
                records: dict[str, Any], failures: list[dict[str, Any]], log) -> None:
    experiment = EXPERIMENTS[sweep.experiment]
    out = out.absolute()  # a trial runs in its runner's folder, on any node: a relative --out would be written there
    jobs = [(trial, trial.argv(sweep.experiment, out / TRIALS / trial.name, resources.threads),
             out / TRIALS / trial.name, experiment.resumable) for trial in todo]
    for trial, result in runners.run(jobs, out / RUNNING):
        folder = out / TRIALS / trial.name
        ok = result["exit_code"] == 0
        if ok and not trial_finished(sweep.experiment, trial, folder):
            ok, result["error"] = False, [f"{folder}: the trial reported success but its folder is not one "
                                          f"whole run from here (is DIR on a file system every node shares?)"]
        record = {"trial": trial.name, "status": "ran" if ok else "failed",
                  **{k: result.get(k) for k in ("seconds", "cpu_seconds", "resumed", "host", "node", "pid")},
                  "run_id": _run_id(folder) if ok else None}
        records[trial.name] = record
        _save_records(out, records)
        if not ok:
            failures.append({"trial": trial.name, "seed": trial.seed, **dict(trial.point),
                             "error": " ".join(result.get("error") or ["no error message"])})
            _write_failures(out, failures)
        done_count = sum(r["status"] != "finished before" for r in records.values())
        log(f"  [{done_count}/{len(todo)}] {trial.name}: "
            + (f"{result['seconds']:.1f} s" + (" (resumed from its checkpoints)" if result.get("resumed")
                                               else "") if ok else f"FAILED: {failures[-1]['error']}"))


# --- aggregation -------------------------------------------------------------------------------

def numbers(summary: dict[str, Any], prefix: str = "") -> dict[str, float | bool]:
    """Every number of a summary by dotted key (settings, counts, timings and captions left out, at any
    depth: :data:`NOT_MEASURED`; a boolean kept one, a verdict (:func:`metric_statistics`); a list of records keyed
    by :func:`record_label`, else its index).
    A ``seed`` is an identity, not a measurement: it labels its record and is never a number of its own; so are a
    record's ``d`` and ``layer``, and a ``peak_layer`` (where a peak is: its mean over seeds would be a layer that
    is none of theirs). A record with a ``source`` (a fine-tuned run's row that ``compare`` or ``mitigations`` read
    from its folder) is left out: every seed's trial reads the same folder, and its copies would stand as seeds that
    agree exactly. Two numbers under one key (records a label cannot tell apart) are refused, never one kept
    in place of the other."""
    found: dict[str, float | bool] = {}

    def add(more: dict[str, float | bool]) -> None:
        clash = next((key for key in more if key in found), None)
        if clash is not None:
            raise ValueError(f"two numbers of one summary under the key {clash!r}: their records need a "
                             f"field that tells them apart (analyses.sweep.record_label)")
        found.update(more)

    for key, value in summary.items():
        if not_measured(key):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            add({name: value})  # kept a bool: a verdict, whose share over seeds is a rate (probes.stats.interval95)
        elif isinstance(value, (int, float)):
            add({name: float(value)})
        elif isinstance(value, dict):
            add(numbers(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, record in enumerate(value):
                if "source" in record:  # a row read from another run's folder: that run's number, once, not a seed's
                    continue
                measured = {k: v for k, v in record.items() if k not in ("d", "layer")}  # in its label, as a seed
                add(numbers(measured, f"{name}.{record_label(record, index)}."))
    return found


NOT_MEASURED = ("seed", "seconds", "seconds_per_statement", "captions", "peak_layer",
                "config", "lora", "steps", "k", "layers", "freeze_embeddings", "num_train", "train_sentences",
                "variants", "n_samples", "n", "n_*", "*_n", "statements", "children", "facts", "options")
"""Summary keys (``fnmatch`` patterns) :func:`numbers` leaves out wherever they sit: identities (a seed, the layer a
peak is at), timings, captions; the settings a summary repeats (the config, the adapters' ``lora``, the steps, a
multi-token run's ``k``, a Zhu setting's ``layers`` and ``freeze_embeddings``, a chain size's ``num_train``), and
counts of what was asked or trained (``n_train``, ``heldout_n``, a variant's training sequences): a setting's mean
over seeds with an interval of width 0 (or, for a yes/no setting, Wilson's) would read as a measurement."""


def not_measured(key: str) -> bool:
    """A summary key :func:`numbers` leaves out (:data:`NOT_MEASURED`)."""
    return any(fnmatchcase(key, pattern) for pattern in NOT_MEASURED)
NAMING_FIELDS = ("run", "name", "model", "d", "circuit")
"""A record's first field among these names it in its list (``positional``'s runs, the bilinear model's
dimensions, dynamics' models, a fine-tune's circuits)."""
TELLING_FIELDS = ("variant", "test", "circuit", "role", "layer")
"""Fields that tell apart records of one name (the identity bridge's variants and tests; dynamics' circuits,
roles and layers), added to the label where present."""


def record_label(record: dict[str, Any], index: int) -> str:
    """A record's key among its list's: its first :data:`NAMING_FIELDS` field (else ``layer=L`` where it has a
    layer: the same key whatever the record's place in its list; else its index), then
    ``/value`` of each :data:`TELLING_FIELDS` field it has (``/layer=L`` for a layer), and ``/seed=S`` where it has a
    seed (the identity bridge's per-seed rows: one key per seed, not the last seed's under all). Measurements
    that are strings (a most asymmetric circuit, a verdict) name nothing."""
    named = next((k for k in NAMING_FIELDS if k in record), "layer" if "layer" in record else None)
    label = (f"layer={record['layer']}" if named == "layer" else str(record[named])) if named else str(index)
    for k in TELLING_FIELDS:
        if k in record and k != named and str(record[k]) != label:  # a variant named as its run: once
            label += f"/layer={record[k]}" if k == "layer" else f"/{record[k]}"
    return label + (f"/seed={record['seed']}" if "seed" in record else "")


def headline(metrics: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The metrics matching the experiment's headline patterns, in pattern order (all, when none)."""
    if not patterns:
        return list(metrics)
    return list(dict.fromkeys(m for p in patterns for m in metrics if fnmatchcase(m, p)))


PROBABILITY_METRICS = ("*accuracy", "*accuracy_debiased", "*accuracy.mean", "*accuracy_by_link.*", "*top1",
                       "*top1_rate", "*_rate", "*.rate", "*exact_match", "*_prob", "*.prob", "*p_correct",
                       "*p_debiased")
"""Summary metrics whose values are probabilities, accuracies or rates (by their dotted key, :func:`numbers`):
their mean over seeds lies in [0, 1], and so does its interval (a mitigation's ``….accuracy.mean`` over its own
seeds is one; its ``.sd`` is not)."""
DIFFERENCE_METRICS = ("*peak_effect",)
"""Metrics that are a difference of two probabilities (tracing's indirect effect): in [−1, 1]."""


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take, by its key: [0, 1] for :data:`PROBABILITY_METRICS`, [−1, 1] for
    :data:`DIFFERENCE_METRICS`, else unbounded (a log-probability, a margin, a rank, a z-score)."""
    if any(fnmatchcase(metric, pattern) for pattern in PROBABILITY_METRICS):
        return (0.0, 1.0)
    if any(fnmatchcase(metric, pattern) for pattern in DIFFERENCE_METRICS):
        return (-1.0, 1.0)
    return (-math.inf, math.inf)


def metric_statistics(metric: str, values: Any) -> dict[str, float]:
    """One metric's columns of ``aggregate.csv`` over a grid point's finished seeds: ``.n``, the seeds with a value
    (not NaN; ``n_seeds`` counts the trials), and over those values the ``.mean``, sample ``.sd`` and 95% interval
    ``.ci95_low``/``.ci95_high``: Student's t cut to the :func:`metric_range` (NaN for fewer than two), or Wilson's
    for a verdict (yes/no), whose mean is the share of seeds that say yes (:func:`probes.stats.interval95`)."""
    import pandas as pd

    from probes.stats import interval95

    values = pd.Series(list(values), dtype=object)
    numbers = values.astype(float)
    bounds = metric_range(metric)
    outside = numbers[(numbers < bounds[0]) | (numbers > bounds[1])]
    if len(outside):  # a name read as a probability's that is not one: its interval must not be cut to [0, 1]
        raise ValueError(f"metric {metric!r} reads as lying in [{bounds[0]:g}, {bounds[1]:g}] "
                         f"(analyses.sweep.PROBABILITY_METRICS, DIFFERENCE_METRICS) but a seed has {outside.iloc[0]!r}")
    low, high = interval95(values, bounds)
    return {f"{metric}.n": int(numbers.count()), f"{metric}.mean": float(numbers.mean()),
            f"{metric}.sd": float(numbers.std()), f"{metric}.ci95_low": low, f"{metric}.ci95_high": high}


def aggregate(sweep: Sweep, out: Path, records: dict[str, Any] | None = None,
              failures: Sequence[dict[str, Any]] = (), seconds: float = 0.0) -> dict[str, Any]:
    """Write ``aggregate.csv`` (one row per grid point, in the sweep's order: ``n_seeds`` 0 and no statistics where
    no trial finished), ``sweep.png`` and (last) ``summary.json`` from the finished trials."""
    import pandas as pd

    from facts.io import atomic_write, write_text_atomic

    rows = []
    for trial in sweep.trials():
        folder = out / TRIALS / trial.name
        if trial_finished(sweep.experiment, trial, folder):
            summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
            try:
                found = numbers(summary)
            except ValueError as error:
                raise ValueError(f"{folder / SUMMARY}: {error}") from None
            rows.append({**found, **dict(trial.point), "seed": trial.seed})  # a grid key names its column
    keys = list(sweep.grid)
    table = pd.DataFrame(rows)
    metrics = [c for c in table.columns if c not in keys and c != "seed"]
    chosen = headline(metrics, EXPERIMENTS[sweep.experiment].headline)
    per_point = []
    groups = table.groupby(keys, sort=False, dropna=False) if keys and len(table) else (
        [((), table)] if len(table) else [])
    for point, part in groups:
        point = point if isinstance(point, tuple) else (point,)
        row: dict[str, Any] = {**dict(zip(keys, point)), "n_seeds": len(part)}
        for metric in metrics:
            try:
                row |= metric_statistics(metric, part[metric])
            except ValueError as error:
                raise ValueError(f"{out}: grid point {dict(zip(keys, point)) or 'of every trial'}, seeds "
                                 f"{part['seed'].tolist()}: {error}") from None
        per_point.append(row)
    found = {tuple(row[k] for k in keys): row for row in per_point}  # a point none of whose trials finished: n_seeds 0
    per_point = [found.get(tuple(v for _, v in point), {**dict(point), "n_seeds": 0}) for point in sweep.points()]
    aggregated = pd.DataFrame(per_point)
    atomic_write(out / AGGREGATE, lambda temporary: aggregated.to_csv(temporary, index=False))
    figures = []
    plotted = [m for m in chosen if not m.startswith("chance_")]  # chance is drawn on its metric's panel
    if len(table) and plotted:
        from analyses.figures import sweep_figure
        from probes.views import save_png

        empty = [point for point in per_point if not point["n_seeds"]]
        save_png(sweep_figure(table, keys, plotted, title=f"{sweep.experiment}: mean and 95% interval across "
                                                             f"seeds (dots: seeds)" + (
                                  f"; {len(empty)} grid point(s) with no finished trial not shown" if empty else ""),
                              ranges={m: metric_range(m) for m in plotted},
                              varying=[key for key, values in sweep.grid.items() if len(values) > 1]), out / FIGURE)
        figures.append(FIGURE)
    n_trials = len(sweep.trials())
    summary = {
        "experiment": "sweep", "swept": sweep.experiment, "command": " ".join(EXPERIMENTS[sweep.experiment].command),
        "config": {"seeds": list(sweep.seeds), "grid": {k: list(v) for k, v in sweep.grid.items()}},
        "n_trials": n_trials, "n_finished": len(rows), "n_failed": len(failures),
        "headline": chosen,
        "rows": [{**{k: r[k] for k in keys}, "n_seeds": r["n_seeds"],
                  **{m: _interval(r, m) for m in chosen}} for r in per_point],
        "failures": list(failures),
        "trials": list((records or {}).values()),
        "figures": figures,
        "seconds": seconds,
    }
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def _interval(row: dict[str, Any], metric: str) -> str:
    """A cell of the printed table: mean ± half-width over the seeds that have the metric, with their count where it
    is fewer than the grid point's finished seeds (a seed's NaN, a stage it did not run); n/a where none has it."""
    if f"{metric}.mean" not in row or not row.get(f"{metric}.n"):  # no finished trial, or none with this metric
        return "n/a"
    mean, low, high = row[f"{metric}.mean"], row[f"{metric}.ci95_low"], row[f"{metric}.ci95_high"]
    if math.isnan(high):
        cell = f"{mean:.4g}"
    elif math.isclose(high - mean, mean - low, rel_tol=1e-9, abs_tol=1e-12):
        cell = f"{mean:.4g} ± {(high - low) / 2:.2g}"
    else:  # Wilson's interval of a share of seeds is not symmetric
        cell = f"{mean:.4g} [{low:.2g}, {high:.2g}]"
    return cell + (f" (n={row[f'{metric}.n']})" if row[f"{metric}.n"] < row["n_seeds"] else "")


def format_sweep(summary: dict[str, Any]) -> str:
    """One screen: per grid point, each headline metric as mean ± 95% half-width across seeds."""
    keys = list(summary["config"]["grid"])
    seeds = summary["config"]["seeds"]
    lines = [f"sweep of {summary['command']}: {summary['n_finished']} of {summary['n_trials']} trials finished "
             f"({len(seeds)} seeds: {', '.join(map(str, seeds))}); mean ± 95% t-interval half-width across seeds (a yes/no: "
             f"the share of seeds saying yes [Wilson's 95% interval])"]
    columns = [*keys, "n", *summary["headline"]]
    cells = [[_shown(r[k]) for k in keys] + [str(r["n_seeds"])] + [r[m] for m in summary["headline"]]
             for r in summary["rows"]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    for failure in summary["failures"]:
        lines.append(f"FAILED {failure['trial']}: {failure['error']}")
    return "\n".join(lines)
