"""Sweep throughput: the same trials on Ray (2 workers × 1 thread) against one after another in
one process, side by side in one run.

The trials are ``revlens reproduce reversal`` runs (default: the tiny model, 8 seeds). The
sequential side calls the command (:func:`analyses.cli.main`) for each trial in this process,
torch on one thread; the Ray side is ``revlens sweep`` in a fresh process into a fresh folder (Ray
started and stopped inside, workers importing torch cold; its wall time includes that process's
start). Calling ``run_sweep`` from this process instead, after the sequential side, measured every
Ray trial 2× slower (12 s against 6 s warm; not understood, not seen from the command). Both write the same run folders.

Printed: wall time of each side, the speed-up (goal ≥ 1.7× on 2 cores), the load average, and
Ray's overhead per trial = Ray wall × workers / trials − mean trial time inside the workers (Ray's
start-up, scheduling, result transfer and the idle tail; a cold worker's imports count inside its trial).

Run: ``.venv/bin/python benchmarks/sweep_throughput.py [--trials 8] [--model tiny] [--steps 80]``.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analyses.cli import main  # noqa: E402
from analyses.sweep import make_sweep  # noqa: E402


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def run(trials: int, model: str, steps: int, workers: int) -> None:
    sweep = make_sweep("reversal", f"0-{trials - 1}", [f"model={model}", f"steps={steps}"])
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print(f"{trials} trials of reproduce reversal --model {model} --steps {steps}; {os.cpu_count()} cores; "
              f"load before: {load()}")
        began = time.perf_counter()
        sequential = []
        for trial in sweep.trials():
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(trial.argv("reversal", folder / "sequential" / trial.name, 1)) == 0
            sequential.append(time.perf_counter() - start)
        sequential_wall = time.perf_counter() - began
        print(f"one process, one after another: {sequential_wall:.1f} s (per trial: median "
              f"{statistics.median(sequential):.1f} s); load {load()}")

        began = time.perf_counter()
        grid = [token for key, values in sweep.grid.items() for token in ("--grid", f"{key}={values[0]}")]
        subprocess.run([sys.executable, "-m", "analyses.cli", "sweep", "reversal", "--out", str(folder / "ray"),
                        "--seeds", f"0-{trials - 1}", *grid, "--workers", str(workers)], cwd=ROOT, check=True,
                       capture_output=True)
        ray_wall = time.perf_counter() - began
        summary = json.loads((folder / "ray" / "summary.json").read_text())
        inside = [r["seconds"] for r in summary["trials"] if r.get("seconds") is not None]
        print(f"Ray, {workers} workers × 1 thread: {ray_wall:.1f} s (per trial inside the workers: median "
              f"{statistics.median(inside):.1f} s, first two {inside[0]:.1f} s {inside[1]:.1f} s: cold imports); "
              f"load {load()}")
        print(f"speed-up: {sequential_wall / ray_wall:.2f}× (goal ≥ 1.7× on 2 cores)")
        overhead = ray_wall * workers / trials - statistics.mean(inside)
        print(f"Ray overhead per trial (start-up, scheduling, idle tail; cold imports count inside the trials): "
              f"{overhead:.2f} s")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    run(args.trials, args.model, args.steps, args.workers)


if __name__ == "__main__":
    cli()
