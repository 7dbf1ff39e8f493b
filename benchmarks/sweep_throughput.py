"""Sweep throughput: the same trials on Ray (2 workers × 1 thread) against one after another in
one process, side by side, over several rounds.

The trials are ``revlens reproduce reversal`` runs (default: the tiny model, 80 steps, 30 seeds;
``--trials 8 30`` for two sizes). The sequential side calls the command (:func:`analyses.cli.main`)
for each trial in one fresh process, torch on one thread, so every round starts it cold, imports
included. The Ray side is ``revlens sweep`` in a fresh process into a fresh folder (Ray started and
stopped inside, its runners importing torch cold). Both walls run from the process's launch to its
exit (the speed-up). Until 2026-12-01 17:55 the sequential wall was the loop's only (from before the
first trial to after the last: its interpreter's start, its imports before the loop and its exit left
out, 2.3-2.9 s at load 5-7, while the Ray side's wall counted its own); that speed-up is still printed
("loop only") beside the other. ``--baseline DIR`` also runs the Ray side of another checkout (the
code before a change) on the same trials, in the same rounds. ``--no-ray`` also runs the trials
without Ray in two plain processes at once, half each (each importing in its first trial, not while
Ray starts). Calling ``run_sweep`` from this process instead, after the sequential side, measured
every Ray trial 2× slower (12 s against 6 s warm; not understood, not seen from the command), hence
the fresh process.

Rounds (``--rounds``, default 3): each runs every side once, one after another, the order
reversed every other round (sequential first, then Ray first, ...), so neither side always meets
the colder disk cache or the same moment of the machine's load; ``uptime`` is recorded before and
after each side. The speed-up is reported per round and as the median over the rounds with its
minimum and maximum.

Printed, for each round, and at the end as Markdown tables: wall time of each side, the speed-up
(goal ≥ 1.7× on 2 cores), the load average, the Ray side's timeline (from the sweep's own output:
Ray up, first and last trial done, exit), the fixed wall time (the first trial's finish less a
median trial, plus everything after the last trial), Ray's overhead per trial = Ray wall × workers
/ trials − mean trial time inside the workers (start-up, scheduling, the idle tail, and the
runners' imports where they import before their first trial), and CPU seconds per trial of each
side, which do not depend on what else the machine runs: the sequential side's is its process's
CPU time; the Ray side's is every process of the sweep's tree (the command, Ray's daemons, the
workers), read from ``/proc`` every 0.2 s until each exits (``psutil``), also given by process
kind, so Ray's own share is seen apart from the trials'.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/sweep_throughput.py [--trials 30] [--rounds 3]
[--model tiny] [--steps 80] [--baseline DIR] [--no-ray]``.
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
    if "default_worker.py" in line or line.startswith("ray::"):  # before the driver's test: a worker's command line names the modules it preloads
        return "Ray workers (the trials)"
    if "analyses.cli" in line:
        return "revlens sweep (driver)"
    for names, label in ((("raylet",), "raylet"), (("gcs_server",), "GCS"),
                         (("dashboard/agent", "DashboardAgent"), "dashboard agent"),
                         (("runtime_env/agent", "RuntimeEnvAgent"), "runtime env agent"),
                         (("log_monitor",), "log monitor"), (("monitor.py",), "autoscaler monitor"),
                         (("dashboard.py",), "API server (dashboard.py)")):
        if any(name in line for name in names):
            return f"Ray {label}"
    return "other: " + (line[:60] or process.name() or "?")


def forked(process: psutil.Process) -> bool:
    """Whether ``process`` still shows its parent's command line: a child seen between its fork and
    its exec, whose kind is not known yet (it is read again at the next poll)."""
    try:
        return process.cmdline() == process.parent().cmdline()
    except (psutil.Error, AttributeError):
        return True


def tree_cpu(command: list[str], cwd: Path) -> tuple[float, dict[str, float], list[tuple[float, str]]]:
    """Run ``command`` in ``cwd``; the CPU seconds (user + system) of it and of every process it
    started, by kind (``kind ×N (a + b ...)``: N processes of that kind ran, each's CPU), and its output lines, each
    with the seconds since the start at which it was printed."""
    began = time.perf_counter()
    process = psutil.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[str, float, bool]] = {}  # pid: kind, CPU seconds, whether the kind is known for good
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
                    label = seen[member.pid][0] if member.pid in seen and seen[member.pid][2] else kind(member)
                    seen[member.pid] = (label, times.user + times.system, label != "gone" and not forked(member))
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
    for label, cpu, _ in seen.values():
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
    return {"wall": wall, "cpu": cpu / trials, "median": statistics.median(inside),
            "overhead": wall * workers / trials - statistics.mean(inside),
            "fixed": first - statistics.median(inside) + wall - last, "load": load(),
            "phases": (ray_up, max(started, ray_up), wall - last)}


def sequential_child(out: Path, seeds: str, model: str, steps: int) -> None:
    """The sequential side's body (this script run with ``--sequential-child``): the trials'
    commands one after another in this process, torch on one thread; prints one JSON line: the
    loop's wall and CPU seconds (the interpreter's start and ``analyses.cli``'s import left out, as
    when the loop ran inside the benchmark's own process) and each trial's seconds."""
    sweep = make_sweep("reversal", seeds, [f"model={model}", f"steps={steps}"])
    began, began_cpu = time.perf_counter(), time.process_time()
    seconds = []
    for trial in sweep.trials():
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(trial.argv("reversal", out / trial.name, 1)) == 0
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"wall": time.perf_counter() - began, "cpu": time.process_time() - began_cpu,
                      "seconds": seconds}), flush=True)


def _child(out: Path, seeds: str, model: str, steps: int) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--sequential-child", str(out), "--seeds", seeds,
                             "--model", model, "--steps", str(steps)], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, text=True)


def _result(child: subprocess.Popen) -> dict:
    output, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the sequential side exited with {child.returncode}")
    return json.loads(output.strip().splitlines()[-1])


def sequential_side(trials: int, model: str, steps: int, out: Path) -> dict:
    """The trials one after another in one fresh process (the same process state every round,
    where a loop in this process would be warm from the second round on)."""
    began = time.perf_counter()
    measured = _result(_child(out, f"0-{trials - 1}", model, steps))
    wall = time.perf_counter() - began
    per_trial = measured["seconds"]
    print(f"  one process, one after another: {wall:.1f} s from launch to exit, {measured['wall']:.1f} s the loop "
          f"only (per trial: median {statistics.median(per_trial):.1f} s, first {per_trial[0]:.1f} s); "
          f"{measured['cpu'] / trials:.2f} CPU s per trial; load {load()}", flush=True)
    return {"wall": wall, "loop": measured["wall"], "cpu": measured["cpu"] / trials,
            "median": statistics.median(per_trial), "load": load()}


def no_ray_side(trials: int, model: str, steps: int, out: Path) -> dict:
    """No Ray: two fresh processes at once, each running half the trials one after another (wall
    from their start to the last one's exit, interpreters' starts included): two trials at once
    sharing the cores' caches and memory bandwidth, both processes importing the toolkit, none of
    Ray's costs. Its trials' median against the sequential side's says how much slower two trials
    side by side run with no scheduler at all."""
    half = (trials + 1) // 2
    began = time.perf_counter()
    children = [_child(out / "a", f"0-{half - 1}", model, steps),
                _child(out / "b", f"{half}-{trials - 1}", model, steps)]
    measured = [_result(child) for child in children]
    wall = time.perf_counter() - began
    per_trial = [s for m in measured for s in m["seconds"][1:]] or [s for m in measured for s in m["seconds"]]
    print(f"  no Ray, two processes × half the trials: {wall:.1f} s (trials after each's first: median "
          f"{statistics.median(per_trial):.1f} s); load {load()}", flush=True)
    return {"wall": wall, "median": statistics.median(per_trial), "load": load()}


def run(trials: int, model: str, steps: int, workers: int, rounds: int, baseline: Path | None,
        no_ray: bool) -> list[dict]:
    """``rounds`` rounds of one size; each runs the sequential side and the Ray side (and the
    baseline's, and two plain processes without Ray, when asked) one after another, the order reversed every
    other round, so that neither side always meets the colder disk cache or the same moment of
    the machine's load. Returns one row per round."""
    sweep = make_sweep("reversal", f"0-{trials - 1}", [f"model={model}", f"steps={steps}"])
    grid = [token for key, values in sweep.grid.items() for token in ("--grid", f"{key}={values[0]}")]
    sides = ["sequential", "this checkout"] + (["baseline"] if baseline else []) + (["no Ray"] if no_ray else [])
    rows = []
    for index in range(rounds):
        order = sides if index % 2 == 0 else sides[::-1]
        print(f"{trials} trials of reproduce reversal --model {model} --steps {steps}; {os.cpu_count()} cores; "
              f"round {index + 1} of {rounds}: {', '.join(order)}; uptime: {uptime()}", flush=True)
        row: dict = {"trials": trials, "round": index + 1, "order": order, "uptime": [uptime()]}
        with tempfile.TemporaryDirectory() as folder:
            for side in order:
                out = Path(folder) / side.replace(" ", "-")
                if side == "sequential":
                    row[side] = sequential_side(trials, model, steps, out)
                elif side == "no Ray":
                    row[side] = no_ray_side(trials, model, steps, out)
                else:
                    row[side] = ray_side(side, ROOT if side == "this checkout" else baseline, trials, grid,
                                         workers, out)
                row["uptime"].append(uptime())
        for side in sides[1:]:
            print(f"  speed-up ({side}): {row['sequential']['wall'] / row[side]['wall']:.2f}× "
                  f"(goal ≥ 1.7× on 2 cores; the sequential loop only: "
                  f"{row['sequential']['loop'] / row[side]['wall']:.2f}×)", flush=True)
        rows.append(row)
    return rows


def uptime() -> str:
    """``uptime``'s line: the time and the 1-, 5- and 15-minute load averages."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def spread(values: list[float]) -> str:
    return f"**{statistics.median(values):.2f}×** (min {min(values):.2f}, max {max(values):.2f}, n {len(values)})"


def table(rows: list[dict]) -> str:
    """The measurements as the Markdown tables of ``benchmarks/README.md``: each round, then each
    size's median speed-up and its spread over the rounds."""
    lines = ["| trials | round | order | one process, one after another: launch to exit / the loop only (median "
             "trial) | Ray, 2 workers × 1 thread (median trial inside) | speed-up (the loop only) | CPU s per trial "
             "(seq / Ray) | Ray overhead per trial | fixed wall | Ray up / first trial begins / after the last trial | "
             "other sides | load average before → after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sequential, ray = r["sequential"], r["this checkout"]
        others = "; ".join(f"{side}: {r[side]['wall']:.1f} s ({sequential['wall'] / r[side]['wall']:.2f}×)"
                           for side in ("baseline", "no Ray") if side in r) or "—"
        averages = [line.rsplit("load average:", 1)[-1].strip() for line in r["uptime"]]
        lines.append(f"| {r['trials']} | {r['round']} | {' → '.join(r['order'])} | {sequential['wall']:.1f} s / "
                     f"{sequential['loop']:.1f} s ({sequential['median']:.2f} s) | {ray['wall']:.1f} s "
                     f"({ray['median']:.2f} s) | **{sequential['wall'] / ray['wall']:.2f}×** "
                     f"({sequential['loop'] / ray['wall']:.2f}×) | {sequential['cpu']:.2f} / {ray['cpu']:.2f} | "
                     f"{ray['overhead']:.2f} s | {ray['fixed']:.1f} s | "
                     f"{' / '.join(f'{p:.1f} s' for p in ray['phases'])} | {others} | "
                     f"{averages[0]} → {averages[-1]} |")
    lines += ["", "| trials | side | speed-up over the rounds: median (min, max, n) |", "|---|---|---|"]
    for trials in dict.fromkeys(r["trials"] for r in rows):
        sized = [r for r in rows if r["trials"] == trials]
        for side in ("this checkout", "baseline", "no Ray"):
            if side in sized[0]:
                lines.append(f"| {trials} | {side} | "
                             f"{spread([r['sequential']['wall'] / r[side]['wall'] for r in sized])}; the sequential "
                             f"loop only: {spread([r['sequential']['loop'] / r[side]['wall'] for r in sized])} |")
    return "\n".join(lines)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[30])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size, the sides' order reversed "
                                                              "every other round (default 3)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. `git worktree add DIR main`) "
                                                      "whose `revlens sweep` runs beside this one's, same trials")
    parser.add_argument("--no-ray", action="store_true", help="also run the trials in two plain processes "
                                                              "at once, half each, without Ray")
    parser.add_argument("--sequential-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sequential_child:
        sequential_child(args.sequential_child, args.seeds, args.model, args.steps)
        return
    rows = [row for trials in args.trials
            for row in run(trials, args.model, args.steps, args.workers, args.rounds, args.baseline, args.no_ray)]
    print("\n" + table(rows))


if __name__ == "__main__":
    cli()
