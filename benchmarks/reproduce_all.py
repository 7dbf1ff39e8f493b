"""`revlens reproduce all`, experiment by experiment: wall and CPU seconds of each, in one process.

Each experiment ``reproduce all`` runs (:data:`analyses.experiments.REPRODUCE_ALL`, or those ``--only`` names)
runs as ``revlens reproduce NAME --out DIR/NAME --seed S --quiet --threads 1`` through
:func:`analyses.cli.main` in this process (torch on one thread, whatever ``OMP_NUM_THREADS`` says), so the first one also pays the
imports (printed apart: the cost of importing torch, TransformerLens and the toolkit before the
first experiment). CPU seconds (``time.process_time``: user + system of this process) do not
depend on what else the machine runs; wall seconds do, so the load average is printed beside them.

``--json FILE`` also writes each experiment's headline numbers (its registry entry's
``headline``, :func:`analyses.sweep.headline`) and the times, to compare two versions of the
code side by side (``--compare A.json B.json``: every headline number of B against A).

Run: ``.venv/bin/python benchmarks/reproduce_all.py [--seed 0] [--only NAME ...] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def run(seed: int, only: list[str] | None) -> dict:
    began_wall, began_cpu = time.perf_counter(), time.process_time()
    import torch

    torch.set_num_threads(1)
    from analyses.cli import main
    from analyses.experiments import EXPERIMENTS, REPRODUCE_ALL
    from analyses.sweep import headline, numbers

    import models.backend  # noqa: F401  (TransformerLens: imported by the first experiment otherwise)

    result = {"seed": seed, "load_before": load(), "experiments": {},
              "imports": {"wall": time.perf_counter() - began_wall, "cpu": time.process_time() - began_cpu}}
    print(f"imports: {result['imports']['wall']:.1f} s wall, {result['imports']['cpu']:.1f} s CPU; load {load()}")
    with tempfile.TemporaryDirectory() as folder:
        for name in only or REPRODUCE_ALL:
            out = Path(folder) / name
            wall, cpu = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["reproduce", name, "--out", str(out), "--seed", str(seed), "--quiet", "--threads", "1"]) == 0
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            summary = json.loads((out / "summary.json").read_text())
            found = numbers(summary)
            values = {key: found[key] for key in headline(list(found), EXPERIMENTS[name].headline)}
            result["experiments"][name] = {"wall": wall, "cpu": cpu, "load": load(), "headline": values}
            print(f"{name:12s} {wall:7.1f} s wall {cpu:7.1f} s CPU   load {load()}", flush=True)
    experiments = result["experiments"].values()
    result["total"] = {"wall": sum(e["wall"] for e in experiments), "cpu": sum(e["cpu"] for e in experiments)}
    print(f"{'all':12s} {result['total']['wall']:7.1f} s wall {result['total']['cpu']:7.1f} s CPU "
          f"(+ imports {result['imports']['cpu']:.1f} s CPU)")
    return result


def compare(before: dict, after: dict) -> None:
    """Per experiment: CPU before → after, and each headline number before → after."""
    for name, a in after["experiments"].items():
        b = before["experiments"].get(name)
        if b is None:
            continue
        print(f"{name}: CPU {b['cpu']:.1f} → {a['cpu']:.1f} s ({a['cpu'] / b['cpu']:.2f}×)")
        for key, value in a["headline"].items():
            old = b["headline"].get(key)
            print(f"    {key:55s} {old if old is None else f'{old:9.4f}'} → {value:9.4f}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", default=None, help="these experiments only")
    parser.add_argument("--json", type=Path, default=None, help="also write the times and headline numbers here")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                        help="print two --json files side by side instead of running")
    args = parser.parse_args()
    if args.compare:
        compare(*(json.loads(p.read_text()) for p in args.compare))
        return
    result = run(args.seed, args.only)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    cli()
