"""Causal tracing throughput: the statements ``finetune-facts`` traces, two ways side by side.

The workload is :class:`analyses.finetune_tracing.FinetuneTracing`'s on the pretrained model: the first
``--facts`` facts of the people world's p2d group, forward (trained) and reverse (held out), in the first
training paraphrase; components ``resid_post`` and ``mlp_out`` at every layer and prompt position, 2 noise
samples. Two ways of running the restored rows:

* ``default`` (:func:`probes.tracing.trace_sites`): passes of ``RESTORED_ROWS`` rows, sites in
  order of position, each pass from its first restored position with the earlier positions' keys and values
  read from the corrupted run;
* ``every position``: ``earlier_from_cache=False`` with passes of 64 rows, every position of every row (the
  way before; sites before the given entity are skipped in both).

Each is timed on the same statements in one process, rounds alternating (every other round in reverse order), one
torch thread unless ``--threads``, in CPU seconds of the process (``time.process_time``; the wall time beside); the
largest log-probability difference between the two is printed (float32 rounding). An older checkout without
``earlier_from_cache`` runs its one way only (``every position`` is then its default), so the same script times
main's code beside a branch.

Run: ``.venv/bin/python benchmarks/tracing_throughput.py [--model smollm2-135m --facts 2 --rounds 2 --threads 1]``.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

from facts.language import TRAIN_TEMPLATES, TemplateTokenizer, people_world
from models.pretrained import load
from probes import tracing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load(args.model, device="cpu")  # a CPU benchmark, on a machine with a GPU too
    facts = people_world(n_per_group=30, seed=0, groups=("p2d",))
    statements = TemplateTokenizer(model.tokenizer, TRAIN_TEMPLATES)
    tested = [i for i, f in enumerate(facts) if f.forward == "train" and f.reverse == "heldout"][: args.facts]
    chosen = [(i, d) for i in tested for d in ("forward", "reverse")]
    lengths = [(len(e.prompt), len(e.answer)) for e in (statements.example(facts, i, d) for i, d in chosen)]
    print(f"{args.model}: {len(chosen)} statements (prompt, answer tokens: {lengths}), components resid_post and "
          f"mlp_out, 2 samples, {args.threads} thread(s)")

    default_sites = tracing.trace_sites
    ways = {"default": (default_sites, getattr(tracing, "RESTORED_ROWS", 64))}
    if "earlier_from_cache" in inspect.signature(default_sites).parameters:
        ways["every position"] = (lambda *a, **k: default_sites(*a, earlier_from_cache=False, **k), 64)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    tables = {}
    for round_number in range(args.rounds):
        order = list(ways.items())  # reversed every other round: neither way always runs first
        for name, (trace_sites, rows) in (order if round_number % 2 == 0 else reversed(order)):
            tracing.trace_sites = trace_sites  # what tracing.trace calls
            cpu, wall = time.process_time(), time.perf_counter()
            tables[name] = tracing.trace_facts(model, facts, statements, chosen, components=("resid_post", "mlp_out"),
                                               n_samples=2, seed=0, batch_size=rows)
            seconds[name].append(time.process_time() - cpu)
            tracing.trace_sites = default_sites
            print(f"round {round_number + 1} {name:>15}: {seconds[name][-1]:7.1f} CPU s "
                  f"({seconds[name][-1] / len(chosen):5.1f} a statement), {time.perf_counter() - wall:7.1f} s wall",
                  flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, median in medians.items():
        print(f"median {name:>15}: {median:7.1f} CPU s, {median / len(chosen):5.1f} a statement"
              + (f", ×{median / medians['every position']:.2f} of every position" if "every position" in medians
                 else ""))
    if len(tables) == 2:
        gap = (tables["default"].logprob - tables["every position"].logprob).abs().max()
        print(f"largest |Δ log p| between the two: {gap:.2e}")


if __name__ == "__main__":
    main()
