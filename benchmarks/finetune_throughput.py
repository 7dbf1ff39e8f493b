"""Fine-tuning throughput on SmolLM2-135M: the project's path against a bare transformers loop.

All three train on the same batches of the default ``revlens finetune-facts`` sentences (p2d
people, answer-only loss, AdamW, lr 1e-4) for the same number of steps:

* ``bare``: the transformers model (``LlamaForCausalLM``) in a hand-written loop, forward with
  ``labels`` (−100 on prompt and padding) → ``loss.backward()`` → ``optimizer.step()``;
* ``trainer/hf``: :func:`models.training.train` on that same transformers model, read through a
  three-line module that returns ``.logits`` (the trainer's cost alone);
* ``trainer/hooked``: :func:`models.training.train` on the HookedTransformer that
  ``revlens finetune-facts`` fine-tunes (the trainer plus TransformerLens's model).

After one uncounted warm-up round, rounds alternate so machine noise hits all three; figures are medians over rounds of
tokens/s ÷ the bare loop's tokens/s (padding tokens included, the same for all).

Run: ``.venv/bin/python benchmarks/finetune_throughput.py [--steps 6 --rounds 3 --threads 2]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from analyses.finetune import DEFAULT_PARAPHRASES, FinetuneConfig, training_sentences
from facts.language import people_world
from models.pretrained import load, load_hf
from models.training import TrainConfig, batch_rows, train


class LogitsOf(torch.nn.Module):
    """A transformers causal LM seen as ``tokens → logits``, the trainer's model interface."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens).logits


def bare_loop(model, sentences, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """A minimal transformers fine-tuning loop; returns seconds."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    began = time.perf_counter()
    for step in range(steps):
        rows = batch_rows(len(sentences), step, batch_size, seed)
        tokens = sentences.tokens[rows]
        labels = tokens.masked_fill(~sentences.answer_mask[rows], -100)
        loss = model(input_ids=tokens, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = FinetuneConfig()
    hf_model, tokenizer = load_hf(config.model, device="cpu")
    facts = people_world(n_per_group=config.people, seed=config.seed, groups=("p2d",))
    paraphrases = config.templates or DEFAULT_PARAPHRASES
    sentences = training_sentences(facts, tokenizer, paraphrases, tokenizer.pad_token_id or 0)
    tokens_per_run = sum(len(batch_rows(len(sentences), s, config.batch_size, config.seed)) for s in range(args.steps))
    tokens_per_run *= sentences.tokens.shape[1]
    hooked = load(config.model, backend="hooked", device="cpu")
    train_config = TrainConfig(steps=args.steps, lr=config.lr, weight_decay=0.0, batch_size=config.batch_size,
                               eval_every=args.steps, seed=config.seed, progress=False)
    ratios: dict[str, list[float]] = {"trainer/hf": [], "trainer/hooked": []}
    for round_ in range(-1, args.rounds):  # round -1 warms the allocator and kernels up and is not counted
        bare = bare_loop(copy.deepcopy(hf_model).train(), sentences, args.steps, config.batch_size, config.lr,
                         config.seed)
        seconds = {
            "trainer/hf": train(LogitsOf(copy.deepcopy(hf_model)), sentences, train_config).seconds,
            "trainer/hooked": train(copy.deepcopy(hooked), sentences, train_config).seconds,
        }
        line = [f"bare {tokens_per_run / bare:,.0f} tok/s"]
        for name, spent in seconds.items():
            if round_ >= 0:
                ratios[name].append(bare / spent)
            line.append(f"{name} {tokens_per_run / spent:,.0f} tok/s (×{bare / spent:.2f})")
        print(f"{'warm-up' if round_ < 0 else f'round {round_ + 1}'}: " + ", ".join(line))
    print(f"\nSmolLM2-135M fine-tuning, batch {config.batch_size}, {args.steps} steps, {torch.get_num_threads()} "
          f"threads; throughput ÷ bare transformers loop, median of {args.rounds} rounds:")
    for name, values in ratios.items():
        print(f"  {name:16s} {statistics.median(values):.3f}")


if __name__ == "__main__":
    main()
