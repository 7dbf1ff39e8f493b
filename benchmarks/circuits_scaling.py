"""Circuit probe cost on SmolLM2-135M: restricted entities vs a full-vocabulary FactoredMatrix.

For N = 10 … 10,000 random single-token facts, ``probes.circuits.circuit_table`` computes
the direct path and all 270 OV and 270 QK heads (30 layers × 9 heads) with 32 controls per
entry. Each measurement runs in a fresh subprocess.

Peak memory is the process's high-water mark during the measurement minus its resident memory
just before it (Linux: the mark is reset through ``/proc/self/clear_refs``, so the model
loader's own transient peak does not hide a small measurement).

Side by side, for ONE OV head (layer 0, head 0) and the same N facts:
* ``restricted-head``: our probe restricted to that head;
* ``full-head``: the textbook route, the full d_vocab × d_vocab product
  ``FactoredMatrix((W_E ⊙ w_ln1) W_V, W_O (w_final ⊙ W_U)).AB`` (9 GiB for SmolLM2), then the
  entries [A,B] and [B,A] read off it. The script checks that they equal the probe's entries.
  Doing all 541 circuits this way would take 541 × its time.

Run: ``.venv/bin/python benchmarks/circuits_scaling.py [--sizes 10 100 1000 10000] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings

N_CONTROLS = 32
ONE_HEAD = dict(kinds=("ov",), layers=[0], heads=[0])


def _memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB."""
    status = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def _reset_peak() -> float:
    """Reset the peak resident memory to the current one and return it (MiB)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _memory_mib("VmRSS")


def _facts(n: int, d_vocab: int):
    import torch

    from facts.schema import Fact, FactSet

    ids = torch.randperm(d_vocab - 1000, generator=torch.Generator().manual_seed(0))[: 2 * n] + 1000
    pairs = ids.view(n, 2).tolist()
    return FactSet(tuple(Fact(f"t{a}", "r", f"t{b}", "r'", "train", "heldout") for a, b in pairs))


def _token(entity: str) -> list[int]:
    return [int(entity[1:])]


def _full_head_entries(model, facts):
    """Entries [A,B] and [B,A] of OV head (0, 0), read off the full-vocabulary product."""
    import torch
    from models.backend import FactoredMatrix

    with torch.no_grad():
        full = FactoredMatrix((model.W_E * model.blocks[0].ln1.w) @ model.W_V[0, 0],
                              model.W_O[0, 0] @ (model.ln_final.w[:, None] * model.W_U)).AB
        a = torch.tensor([_token(f.subject)[0] for f in facts])
        b = torch.tensor([_token(f.object)[0] for f in facts])
        return full[a, b].clone(), full[b, a].clone()


def measure(mode: str, n: int, threads: int) -> dict:
    """One measurement in this process: ``restricted`` (all circuits), ``restricted-head`` or
    ``full-head`` (one OV head, our probe vs the full-vocabulary product)."""
    warnings.filterwarnings("ignore")
    import torch

    from models.pretrained import load
    from probes.circuits import circuit_table

    torch.set_num_threads(threads)
    model = load("smollm2-135m", backend="hooked", device="cpu")  # a CPU benchmark, on a machine with a GPU too
    facts = _facts(n, model.cfg.d_vocab)
    baseline = _reset_peak()
    began = time.perf_counter()
    if mode == "restricted":
        rows = len(circuit_table(model, facts, _token, n_controls=N_CONTROLS))
    elif mode == "restricted-head":
        rows = len(circuit_table(model, facts, _token, n_controls=N_CONTROLS, **ONE_HEAD))
    else:
        entries_ab, entries_ba = _full_head_entries(model, facts)
        rows = len(entries_ab)
    seconds, peak = time.perf_counter() - began, _memory_mib("VmHWM") - baseline
    result = {"mode": mode, "n": n, "threads": threads, "seconds": seconds, "peak_mib": peak, "rows": rows}
    if mode == "full-head":  # the same entries as the probe's, or the comparison means nothing
        probe = circuit_table(model, facts, _token, n_controls=N_CONTROLS, **ONE_HEAD)
        scale = float(entries_ab.abs().max())
        result["max_difference"] = max(float((torch.tensor(probe.entry_ab.to_numpy()) - entries_ab).abs().max()),
                                       float((torch.tensor(probe.entry_ba.to_numpy()) - entries_ba).abs().max()))
        if result["max_difference"] > 1e-4 * scale:
            raise AssertionError(f"full-vocabulary entries differ from the probe's by {result['max_difference']}")
    return result


def _run(mode: str, n: int, threads: int) -> dict:
    run = subprocess.run([sys.executable, __file__, "--one", mode, str(n), "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"{mode:>16s}  N={n:>6d}  {result['seconds']:8.2f} s  peak +{result['peak_mib']:8.0f} MiB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--full-n", type=int, default=1000, help="N for the one-head side-by-side comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every measurement (default 1)")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.threads)))
        return
    scaling = [_run("restricted", n, args.threads) for n in args.sizes]
    head = _run("restricted-head", args.full_n, args.threads)
    full = _run("full-head", args.full_n, args.threads)
    print(f"\n{args.threads} thread(s); all 541 circuits (direct + 270 OV + 270 QK), {N_CONTROLS} controls per entry:")
    for before, after in zip(scaling, scaling[1:]):
        time_ratio = after["seconds"] / before["seconds"]
        memory_ratio = after["peak_mib"] / max(before["peak_mib"], 1)
        print(f"N {before['n']:>6d} → {after['n']:>6d} (×{after['n'] / before['n']:.0f}): time ×{time_ratio:.1f}, "
              f"peak memory ×{memory_ratio:.1f}")
    print(f"\none OV head, N = {args.full_n} (entries agree to {full['max_difference']:.1e}):")
    print(f"full-vocabulary FactoredMatrix.AB: {full['seconds']:.2f} s, +{full['peak_mib']:.0f} MiB; "
          f"restricted: {head['seconds']:.3f} s, +{head['peak_mib']:.0f} MiB "
          f"({full['seconds'] / head['seconds']:,.0f}× faster, "
          f"{full['peak_mib'] / max(head['peak_mib'], 1):,.0f}× less memory)")
    for r in scaling:
        print(f"N={r['n']:>6d}: all 541 circuits in {r['seconds']:.2f} s, "
              f"{541 * full['seconds'] / r['seconds']:,.0f}× faster than 541 full-vocabulary products would be")


if __name__ == "__main__":
    main()
