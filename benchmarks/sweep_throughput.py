"""Sweep throughput: the same trials on Ray (2 workers × 1 thread) against one after another in
one process, side by side in one run.

The trials are ``revlens reproduce reversal`` runs (default: the tiny model, 80 steps, 8 then 30
seeds). The sequential side calls the command (:func:`analyses.cli.main`) for each trial in this
process, torch on one thread; the Ray side is ``revlens sweep`` in a fresh process into a fresh
folder (Ray started and stopped inside, its runners importing torch cold; its wall time includes
that process's start). ``--baseline DIR`` also runs the Ray side of another checkout (the code
before a change) on the same trials, right after (before, for an odd number of trials) this one's,
so both meet the same load. Calling ``run_sweep`` from this process instead, after the sequential
side, measured every Ray trial 2× slower (12 s against 6 s warm; not understood, not seen from the
command), hence the fresh process.

Printed, for each number of trials given, and at the end as one Markdown table: wall time of each
side, the speed-up (goal ≥ 1.7× on 2 cores), the load average, the Ray side's timeline (from the
sweep's own output: Ray up, first and last trial done, exit), the fixed wall time (the first
trial's finish less a median trial, plus everything after the last trial), Ray's overhead per
trial = Ray wall × workers / trials − mean trial time inside the workers (start-up, scheduling, the
idle tail, and the runners' imports where they import before their first trial), and CPU seconds
per trial of each side, which do not depend on what else the machine runs: the sequential side's
is this process's CPU time; the Ray side's is every process of the sweep's tree (the command,
Ray's daemons, the workers), read from ``/proc`` every 0.2 s until each exits (``psutil``), also
given by process kind, so Ray's own share is seen apart from the trials'.

Run: ``.venv/bin/python benchmarks/sweep_throughput.py [--trials 8 30] [--model tiny] [--steps 80]
[--baseline DIR]``.
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
    if "default_worker.py" in line:  # before the driver's test: a worker's command line names the modules it preloads
        return "Ray workers (the trials)"
    if "analyses.cli" in line:
        return "revlens sweep (driver)"
    for name in ("raylet", "gcs_server", "dashboard/agent", "runtime_env/agent", "log_monitor", "monitor.py",
                 "dashboard.py"):
        if name in line:
            return f"Ray {name.split('/')[0].removesuffix('.py')}"
    return "other: " + (process.name() or "?")


def tree_cpu(command: list[str], cwd: Path) -> tuple[float, dict[str, float], list[tuple[float, str]]]:
    """Run ``command`` in ``cwd``; the CPU seconds (user + system) of it and of every process it
    started, by kind (``kind ×N (a + b ...)``: N processes of that kind ran, each's CPU), and its output lines, each
    with the seconds since the start at which it was printed."""
    began = time.perf_counter()
    process = psutil.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[str, float]] = {}
    lines: list[tuple[float, str]] = []
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

    def read() -> None:
        for line in process.stdout:
            lines.append((time.perf_counter() - began, line.rstrip()))

    watcher, reader = threading.Thread(target=poll, daemon=True), threading.Thread(target=read, daemon=True)
    watcher.start()
    reader.start()
    stderr = process.stderr.read()
    process.wait()
    reader.join()
    done.set()
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(stderr[-2000:])
    by_kind: dict[str, list[float]] = defaultdict(list)
    for label, cpu in seen.values():
        by_kind[label].append(cpu)
    return sum(map(sum, by_kind.values())), {
        f"{k} ×{len(v)}" + (f" ({' + '.join(f'{c:.1f}' for c in v)})" if len(v) > 1 else ""): sum(v)
        for k, v in by_kind.items()}, lines


def ray_side(label: str, checkout: Path, trials: int, grid: list[str], workers: int, out: Path) -> dict:
    """``revlens sweep`` of ``checkout``'s code in a fresh process: wall, CPU, the timeline."""
    began = time.perf_counter()
    cpu, by_kind, lines = tree_cpu([sys.executable, "-m", "analyses.cli", "sweep", "reversal", "--out", str(out),
                                    "--seeds", f"0-{trials - 1}", *grid, "--workers", str(workers)], checkout)
    wall = time.perf_counter() - began
    summary = json.loads((out / "summary.json").read_text())
    inside = [r["seconds"] for r in summary["trials"] if r.get("seconds") is not None]
    seconds = {r["trial"]: r["seconds"] for r in summary["trials"]}
    stamp = lambda text: next((t, line) for t, line in lines if text in line)  # noqa: E731
    (ray_up, _), (first, first_line), (last, _) = stamp("Ray: "), stamp(f"[1/{trials}]"), stamp(f"[{trials}/{trials}]")
    started = first - seconds[first_line.split("] ", 1)[1].rsplit(": ", 1)[0]]  # the first trial to finish began
    in_trials = sum(r.get("cpu_seconds") or 0.0 for r in summary["trials"])
    phases = {"start → Ray up": ray_up, "Ray up → first trial begins (runners' imports)": max(0.0, started - ray_up),
              "trials": last - max(started, ray_up), "last trial → exit (aggregate, figure, shutdown)": wall - last}
    print(f"  Ray ({label}), {workers} workers × 1 thread: {wall:.1f} s; load {load()}\n"
          f"    timeline: Ray up at {ray_up:.1f} s, first trial began at {started:.1f} s, done at {first:.1f} s, "
          f"last at {last:.1f} s, exit at {wall:.1f} s\n"
          f"    phases (s, share of the wall): " + ", ".join(f"{k} {v:.1f} ({v / wall:.0%})" for k, v in phases.items())
          + "\n"
          f"    per trial inside the workers: median {statistics.median(inside):.1f} s, first two {inside[0]:.1f} s "
          f"{inside[1]:.1f} s\n"
          f"    {cpu / trials:.2f} CPU s per trial (inside the trials {in_trials / trials:.2f}); by process: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])), flush=True)
    return {"wall": wall, "cpu": cpu / trials, "overhead": wall * workers / trials - statistics.mean(inside),
            "fixed": first - statistics.median(inside) + wall - last, "load": load(),
            "phases": (ray_up, max(started, ray_up), wall - last)}


def run(trials: int, model: str, steps: int, workers: int, baseline: Path | None) -> list[dict]:
    """One size: the sequential side, then the Ray side of this checkout (and of ``baseline``,
    alternating which goes first with the size); rows for the table."""
    sweep = make_sweep("reversal", f"0-{trials - 1}", [f"model={model}", f"steps={steps}"])
    grid = [token for key, values in sweep.grid.items() for token in ("--grid", f"{key}={values[0]}")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print(f"{trials} trials of reproduce reversal --model {model} --steps {steps}; {os.cpu_count()} cores; "
              f"load before: {load()}", flush=True)
        began, began_cpu = time.perf_counter(), time.process_time()
        sequential = []
        for trial in sweep.trials():
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(trial.argv("reversal", folder / "sequential" / trial.name, 1)) == 0
            sequential.append(time.perf_counter() - start)
        wall, cpu = time.perf_counter() - began, (time.process_time() - began_cpu) / trials
        print(f"  one process, one after another: {wall:.1f} s (per trial: median {statistics.median(sequential):.1f} "
              f"s, first {sequential[0]:.1f} s); {cpu:.2f} CPU s per trial; load {load()}", flush=True)
        sides = [("this checkout", ROOT)] + ([("baseline", baseline)] if baseline else [])
        if trials % 2:
            sides.reverse()
        rows = []
        for label, checkout in sides:
            measured = ray_side(label, checkout, trials, grid, workers, folder / label.replace(" ", "-"))
            rows.append({"trials": trials, "code": label, "sequential": wall, "sequential_cpu": cpu, **measured})
            print(f"  speed-up ({label}): {wall / measured['wall']:.2f}× (goal ≥ 1.7× on 2 cores)", flush=True)
        return rows


def table(rows: list[dict]) -> str:
    """The measurements as the Markdown table of ``benchmarks/README.md``."""
    lines = ["| trials | code | one process, one after another | Ray, 2 workers × 1 thread | speed-up | CPU s per "
             "trial (seq / Ray) | Ray overhead per trial | fixed wall (until the first trial starts + after the last) | "
             "Ray up / first trial begins / after the last trial | load average after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['trials']} | {r['code']} | {r['sequential']:.1f} s | {r['wall']:.1f} s | "
              f"**{r['sequential'] / r['wall']:.2f}×** | {r['sequential_cpu']:.2f} / {r['cpu']:.2f} | "
              f"{r['overhead']:.2f} s | {r['fixed']:.1f} s | {' / '.join(f'{p:.1f} s' for p in r['phases'])} | "
              f"{r['load']} |" for r in rows]
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[8, 30])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. `git worktree add DIR main`) "
                                                      "whose `revlens sweep` runs beside this one's, same trials")
    args = parser.parse_args()
    rows = [row for trials in args.trials for row in run(trials, args.model, args.steps, args.workers, args.baseline)]
    print("\n" + table(rows))


if __name__ == "__main__":
    cli()
