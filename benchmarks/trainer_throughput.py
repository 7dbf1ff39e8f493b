"""Trainer throughput as a ratio to a bare PyTorch loop, measured side by side in one run.

Both train the same freshly built HookedTransformer (same seed) on the same batches of the
reversal world with the trainer's optimizer (fused AdamW, :func:`models.training.make_optimizer`); the bare loop
is forward → cross-entropy → backward → step and nothing else, on the same work as the trainer's step: the
batch cut after its last answer column and the unembedding at the answer-predicting rows
(:func:`models.scoring.answer_logits`), so the ratio is the trainer's own cost (schedule, history, checks).
Both run on the CPU. A warm-up round of both, not counted, comes first; then each round runs both, the order
reversed every other round (trainer then bare, bare then trainer, …), so that machine noise and a warm cache hit both
alike; the figure is the median over rounds of trainer tokens/s ÷ bare tokens/s.

``--compile`` then times the bare loop once more on ``torch.compile(model)`` (inductor, static shapes): a first
run that compiles, then a second against an eager run of the same work (the whole forward's logits: a compiled
model is read out as a plain module), and the largest difference of the compiled model's logits from the eager
one's on the same weights.

Goal: ≥ 0.95. Run: ``.venv/bin/python benchmarks/trainer_throughput.py [--model tiny] [--compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import tokenize
from models.scoring import answer_logits
from models.training import TrainConfig, batch_rows, make_optimizer, train
from models.transformer import build_model


def bare_loop(model, train_set, config: TrainConfig) -> float:
    """The reference: the minimum a hand-written loop does for the trainer's work under ``config``. Returns
    seconds."""
    optimizer = make_optimizer(model, config)
    began = time.perf_counter()
    for step in range(config.steps):
        rows = batch_rows(len(train_set), step, config.batch_size, config.seed)
        tokens, mask = train_set.tokens[rows], train_set.answer_mask[rows]
        loss = F.cross_entropy(answer_logits(model, tokens, mask), tokens[:, 1:][mask[:, 1:]])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - began


class WholeForward(torch.nn.Module):
    """A model seen as ``tokens → logits`` and nothing else (no HookedTransformer readout at the answer rows):
    what ``torch.compile`` of it runs, so its eager twin does the same work."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)


def compiled_bare_loop(args: argparse.Namespace, config: TrainConfig, d_vocab: int, train_set,
                       tokens_per_step: int) -> None:
    """The bare loop on ``torch.compile(model)`` twice: the first run compiles (every batch shape: the last batch
    of an epoch is smaller), the second is timed, against the eager bare loop on the same work (the whole forward's
    logits at the answer rows: a compiled model is no HookedTransformer to read out at those rows alone); and the
    compiled forward's largest logit difference from the eager one's on the same weights."""
    eager = bare_loop(WholeForward(build_model(args.model, d_vocab, seed=0)), train_set, config)
    model = build_model(args.model, d_vocab, seed=0)
    compiled = torch.compile(model)
    first = bare_loop(compiled, train_set, config)  # compiles every batch shape
    seconds = bare_loop(compiled, train_set, config)
    with torch.no_grad():
        tokens = train_set.tokens[batch_rows(len(train_set), 0, args.batch_size, 0)]
        delta = (compiled(tokens) - model(tokens)).abs().max().item()
    tps = args.steps * tokens_per_step / seconds
    print(f"torch.compile: {args.steps} steps {first:.1f} s with compilation, {seconds:.1f} s compiled: "
          f"{tps:,.0f} tok/s = ×{eager / seconds:.2f} the eager loop of the same work ({eager:.1f} s); logits max "
          f"|Δ| {delta:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: two threads thrash when the 2-core machine is shared)")
    parser.add_argument("--compile", action="store_true",
                        help="also the bare loop on torch.compile(model): compilation seconds, tokens/s, logits' max |Δ|")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vocab = TokenVocab()
    train_set = tokenize(reversal_world(), vocab).where(split="train")
    tokens_per_step = args.batch_size * train_set.tokens.shape[1]
    config = TrainConfig(steps=args.steps, lr=1e-2, batch_size=args.batch_size, eval_every=args.steps, progress=False)
    ratios = []

    def trainer() -> float:
        return train(build_model(args.model, vocab.d_vocab, seed=0, device="cpu"), train_set, config).seconds

    def bare() -> float:
        model = build_model(args.model, vocab.d_vocab, seed=0, device="cpu")
        torch.use_deterministic_algorithms(True, warn_only=True)  # the same kernels the trainer uses
        try:
            return bare_loop(model, train_set, config)
        finally:
            torch.use_deterministic_algorithms(False)

    trainer(), bare()  # warm-up, not counted
    for round_ in range(args.rounds):
        if round_ % 2 == 0:
            trainer_seconds, bare_seconds = trainer(), bare()
        else:
            bare_seconds = bare()
            trainer_seconds = trainer()
        trainer_tps = args.steps * tokens_per_step / trainer_seconds
        bare_tps = args.steps * tokens_per_step / bare_seconds
        ratios.append(trainer_tps / bare_tps)
        print(f"round {round_ + 1}: trainer {trainer_tps:,.0f} tok/s, bare loop {bare_tps:,.0f} tok/s, "
              f"ratio {ratios[-1]:.3f}")
    if args.compile:
        compiled_bare_loop(args, config, vocab.d_vocab, train_set, tokens_per_step)
    print(f"\ntrainer / bare-loop throughput ({args.model}, batch {args.batch_size}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads): median ratio {statistics.median(ratios):.3f} (goal ≥ 0.95)")


if __name__ == "__main__":
    main()
