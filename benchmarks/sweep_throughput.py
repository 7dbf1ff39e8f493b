"""Sweep throughput: the same trials on Ray (2 workers × 1 thread) against one after another in
one process, side by side in one run.

The trials are ``revlens reproduce reversal`` runs (default: the tiny model, 8 seeds). The
sequential side calls the command (:func:`analyses.cli.main`) for each trial in this process,
torch on one thread; the Ray side is ``revlens sweep`` in a fresh process into a fresh folder (Ray
started and stopped inside, workers importing torch cold; its wall time includes that process's
start). Calling ``run_sweep`` from this process instead, after the sequential side, measured every
Ray trial 2× slower (12 s against 6 s warm; not understood, not seen from the command). Both write the same run folders.

Printed, for each number of trials given (``--trials 8 30``: both, side by side in one run):
wall time of each side, the speed-up (goal ≥ 1.7× on 2 cores), the load average, Ray's overhead per
trial = Ray wall × workers / trials − mean trial time inside the workers (Ray's start-up,
scheduling, result transfer and the idle tail; a cold worker's imports count inside its trial),
and CPU seconds per trial of each side, which do not depend on what else the machine runs: the
sequential side's is this process's CPU time; the Ray side's is every process of the sweep's tree
(the command, Ray's daemons, the workers), read from ``/proc`` every 0.2 s until each exits
(``psutil``), also given by process kind, so Ray's own share is seen apart from the trials'.

Run: ``.venv/bin/python benchmarks/sweep_throughput.py [--trials 8 30] [--model tiny] [--steps 80]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analyses.cli import main  # noqa: E402
from analyses.sweep import make_sweep  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def kind(process: psutil.Process) -> str:
    """What a process of the sweep's tree is: the command, a Ray worker, or a Ray daemon by name."""
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    if "analyses.cli" in line:
        return "revlens sweep (driver)"
    if "default_worker.py" in line:
        return "Ray workers (the trials)"
    for name in ("raylet", "gcs_server", "dashboard/agent", "runtime_env/agent", "log_monitor", "monitor.py",
                 "dashboard.py"):
        if name in line:
            return f"Ray {name.split('/')[0].removesuffix('.py')}"
    return "other: " + (process.name() or "?")


def tree_cpu(command: list[str]) -> tuple[float, dict[str, float]]:
    """Run ``command``; the CPU seconds (user + system) of it and of every process it started, by
    kind (``kind ×N`` where N processes of that kind ran)."""
    process = psutil.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, tuple[str, float]] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                family = [process, *process.children(recursive=True)]
            except psutil.Error:
                family = []
            for member in family:
                try:
                    times = member.cpu_times()
                    label = seen[member.pid][0] if member.pid in seen else kind(member)
                    seen[member.pid] = (label, times.user + times.system)
                except psutil.Error:
                    pass
            time.sleep(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, stderr = process.communicate()
    done.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(stderr.decode()[-2000:])
    by_kind: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for label, cpu in seen.values():
        by_kind[label] += cpu
        count[label] += 1
    return sum(by_kind.values()), {f"{k} ×{count[k]}": v for k, v in by_kind.items()}


def run(trials: int, model: str, steps: int, workers: int) -> None:
    sweep = make_sweep("reversal", f"0-{trials - 1}", [f"model={model}", f"steps={steps}"])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print(f"{trials} trials of reproduce reversal --model {model} --steps {steps}; {os.cpu_count()} cores; "
              f"load before: {load()}")
        began, began_cpu = time.perf_counter(), time.process_time()
        sequential = []
        for trial in sweep.trials():
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(trial.argv("reversal", folder / "sequential" / trial.name, 1)) == 0
            sequential.append(time.perf_counter() - start)
        sequential_wall, sequential_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        print(f"one process, one after another: {sequential_wall:.1f} s (per trial: median "
              f"{statistics.median(sequential):.1f} s); {sequential_cpu / trials:.2f} CPU s per trial; load {load()}")

        began = time.perf_counter()
        grid = [token for key, values in sweep.grid.items() for token in ("--grid", f"{key}={values[0]}")]
        ray_cpu, by_kind = tree_cpu([sys.executable, "-m", "analyses.cli", "sweep", "reversal", "--out",
                                     str(folder / "ray"), "--seeds", f"0-{trials - 1}", *grid, "--workers",
                                     str(workers)])
        ray_wall = time.perf_counter() - began
        summary = json.loads((folder / "ray" / "summary.json").read_text())
        inside = [r["seconds"] for r in summary["trials"] if r.get("seconds") is not None]
        print(f"Ray, {workers} workers × 1 thread: {ray_wall:.1f} s (per trial inside the workers: median "
              f"{statistics.median(inside):.1f} s, first two {inside[0]:.1f} s {inside[1]:.1f} s: cold imports); "
              f"load {load()}")
        in_trials = sum(r.get("cpu_seconds") or 0.0 for r in summary["trials"])
        print(f"Ray side: {ray_cpu / trials:.2f} CPU s per trial (sequential {sequential_cpu / trials:.2f}); inside "
              f"the trials {in_trials / trials:.2f}; by process: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
        print(f"speed-up: {sequential_wall / ray_wall:.2f}× (goal ≥ 1.7× on 2 cores)")
        overhead = ray_wall * workers / trials - statistics.mean(inside)
        print(f"Ray overhead per trial (start-up, scheduling, idle tail; cold imports count inside the trials): "
              f"{overhead:.2f} s")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 30])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for trials in args.trials:
        run(trials, args.model, args.steps, args.workers)


if __name__ == "__main__":
    cli()
