"""Ranking multi-token answers of a token world: positions computed against the floor's, and CPU time.

The workload is ``revlens reproduce reversal --k K``'s final table's largest part: every statement of a K-token
reversal world (``--pairs`` pairs, both directions in play) with every entity of its answer's kind as a candidate
(:func:`probes.logits.answer_table`'s default ranking), scored by :func:`probes.shared_prompt.candidate_logprobs_cached`
on an untrained model of ``--model``'s size (training changes the numbers, not the work). It runs by trie, statements
as rows of a pass, a statement wider than the model's context as several tries (since 2026-12-07, a model with rotary
positions under TransformerLens 3.9 since later that day; before, from its prefix cache under 3.9 and teacher-forced
under 4.x). Run it with ``.venv-tl4/bin/python`` for 4.x.

The *floor* counts the positions that must be computed: every prompt once, and each statement's trie of its
candidates' fed tokens (every distinct ``answer[:d]``, 1 ≤ d < K) once. The positions the model computes are
counted by a forward hook on its last MLP (every position of every pass runs through it once). The floor's time is
that of the model's own forward over as many positions, in plain causal rows of its whole context (``n_ctx``
tokens, 64 rows a pass), with a log-softmax at every position: one bare pass over the floor's work. The positions
computed count a trie pass's padding and each prompt once per trie of its statement. Printed: both counts and their
ratio, and CPU seconds of the scoring and of the floor pass (``time.process_time``, one torch thread unless
``--threads``), medians of ``--rounds``, scoring first in each round. The script runs on an older checkout too
(``PYTHONPATH`` at a ``git worktree``), so the same workload times two versions side by side.

Run: ``.venv/bin/python benchmarks/token_world_scoring.py [--model paper --k 2 --positional absolute --pairs 200
--rounds 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from facts.token_worlds import TokenVocab, reversal_world
from models.transformer import build_model
from probes.logits import kind_candidates
from probes.shared_prompt import candidate_logprobs_cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="paper")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--positional", default="absolute", choices=["absolute", "rotary"])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vocab = TokenVocab()
    world = reversal_world(n_pairs=args.pairs, k=args.k, seed=0)
    model = build_model(args.model, vocab.d_vocab, positional=args.positional, seed=0).eval()
    among = kind_candidates(world)
    rows = [[vocab.example(world, i, d, answer) for answer in among[d]] for i, d, _ in world.statements()]
    floor = sum(len(row[0].prompt) + len({e.answer[:depth] for e in row for depth in range(1, args.k)})
                for row in rows)
    seen: list[int] = []
    model.blocks[-1].mlp.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].shape[:-1].numel()))
    n_ctx = model.cfg.n_ctx
    plain = torch.randint(0, vocab.d_vocab, (-(-floor // n_ctx), n_ctx), generator=torch.Generator().manual_seed(0))
    seconds, walls, floor_seconds = [], [], []
    for _ in range(args.rounds):
        seen.clear()
        start, wall = time.process_time(), time.perf_counter()
        candidate_logprobs_cached(model, rows)
        seconds.append(time.process_time() - start)
        walls.append(time.perf_counter() - wall)
        computed = sum(seen)
        start = time.process_time()
        with torch.no_grad():
            for batch in plain.split(64):
                model(batch).log_softmax(-1)
        floor_seconds.append(time.process_time() - start)
    cpu, floor_cpu = statistics.median(seconds), statistics.median(floor_seconds)
    print(f"{args.model} ({args.positional} positions), k={args.k}, {len(rows)} statements × {len(rows[0])} candidates, "
          f"{args.threads} thread(s)")
    print(f"positions computed {computed:,}, floor {floor:,}: ×{computed / floor:.3f}")
    print(f"CPU s {cpu:.1f} (rounds {', '.join(f'{s:.1f}' for s in seconds)}; wall "
          f"{', '.join(f'{w:.1f}' for w in walls)}); {floor / cpu:,.0f} floor positions per CPU s")
    print(f"floor pass ({plain.numel():,} positions in rows of {n_ctx}) CPU s {floor_cpu:.1f} (rounds "
          f"{', '.join(f'{s:.1f}' for s in floor_seconds)}): scoring ×{cpu / floor_cpu:.2f} the floor")


if __name__ == "__main__":
    main()
