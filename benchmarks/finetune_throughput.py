"""Fine-tuning throughput on SmolLM2-135M: the HookedTransformer against transformers' own model.

Every variant trains on the same batches of ``revlens finetune-facts --people 30``'s sentences
(p2d people, answer-only loss, AdamW at the default lr) for the same number of steps, from the
same weights:

* ``bare``: the transformers model (``LlamaForCausalLM``, eager attention) in a hand-written
  loop, forward with ``labels`` (−100 on prompt and padding) → ``loss.backward()`` → ``step()``, with the
  trainer's optimizer (fused AdamW, :func:`models.training.make_optimizer`), every column of the batch and full
  logits;
* ``trainer/hf``: :func:`models.training.train` on that transformers model seen as ``tokens → logits`` (full
  logits, each batch cut after its last answer column, :func:`models.scoring.answer_inputs`);
* ``trainer/hooked``: the trainer on the HookedTransformer converted from the same weights (what
  ``finetune-facts`` trained before): the batch cut the same way, its final norm and unembedding run at the
  answer-predicting rows alone (:func:`models.scoring.hooked_readout`);
* ``finetune-facts``: the trainer on :class:`models.hf_training.CausalLM` (what it trains now): the transformers
  model, the batch cut and the unembedding run at the answer-predicting rows alone, as ``trainer/hooked``.

So ``trainer/hooked`` against ``finetune-facts`` is the same work on the two implementations (TransformerLens's
cost); ``bare`` and ``trainer/hf`` do more (every column and full logits, and full logits), and their ratios
to the others are not overhead alone. Each round copies every variant's model before its timer starts.

Rounds alternate the variants (one uncounted warm-up round first; the order reversed every round) so machine
noise hits all of them; each figure is a median over rounds. Both wall time and the process's CPU time are
taken: on a shared machine the CPU time of a one-thread run is the steadier of the two. Throughput counts
the padded batch (27 tokens a row), the same for every variant.

``--profile`` prints torch.profiler's top operators of one forward + backward step of the
HookedTransformer and of the transformers model, and times the optimizer step (AdamW
foreach/fused). ``--check`` trains two steps the way ``finetune-facts`` does and compares the
trained transformers model with its HookedTransformer conversion (max |Δ log p|).

Run: ``.venv/bin/python benchmarks/finetune_throughput.py [--steps 4 --rounds 3 --threads 1]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from analyses.finetune import FinetuneConfig, padding_id, read_questions, training_examples
from models.hf_training import CausalLM
from models.pretrained import load_hf, to_hooked
from models.scoring import answer_loss
from models.training import TrainConfig, batch_rows, make_optimizer, train


class LogitsOf(torch.nn.Module):
    """A transformers causal LM seen as ``tokens → logits`` (full logits), the trainer's model interface."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens).logits


def bare_loop(model, sentences, train_config: TrainConfig) -> None:
    """A minimal transformers fine-tuning loop, with the trainer's optimizer."""
    optimizer, steps = make_optimizer(model, train_config), train_config.steps
    batch_size, seed = train_config.batch_size, train_config.seed
    for step in range(steps):
        rows = batch_rows(len(sentences), step, batch_size, seed)
        tokens = sentences.tokens[rows]
        labels = tokens.masked_fill(~sentences.answer_mask[rows], -100)
        loss = model(input_ids=tokens, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed(run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def setup():
    config = FinetuneConfig(people=30, n_controls=16)  # the workload the table's numbers were measured on
    hf_model, tokenizer = load_hf(config.model, device="cpu", keep=False)
    questions = read_questions(config)
    pad = padding_id(tokenizer)
    sentences = training_examples(questions, config, tokenizer, pad)
    hooked = to_hooked(hf_model, tokenizer, config.model, device="cpu")
    return config, hf_model, tokenizer, questions, pad, sentences, hooked


def throughput(args, config, hf_model, sentences, hooked) -> None:
    train_config = TrainConfig(steps=args.steps, lr=config.lr, weight_decay=0.0, batch_size=config.batch_size,
                               eval_every=args.steps, seed=config.seed, progress=False)
    tokens_per_run = sentences.tokens.shape[1] * sum(
        len(batch_rows(len(sentences), s, config.batch_size, config.seed)) for s in range(args.steps))
    variants = {  # name: (a fresh copy of its model, made before the timer starts; what is timed)
        "bare": (lambda: copy.deepcopy(hf_model).train(), lambda model: bare_loop(model, sentences, train_config)),
        "trainer/hf": (lambda: LogitsOf(copy.deepcopy(hf_model)), lambda model: train(model, sentences, train_config)),
        "trainer/hooked": (lambda: copy.deepcopy(hooked), lambda model: train(model, sentences, train_config)),
        "finetune-facts": (lambda: CausalLM(copy.deepcopy(hf_model)),
                           lambda model: train(model, sentences, train_config)),
    }
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for round_ in range(-1, args.rounds):  # round -1 warms the allocator and kernels up and is not counted
        line = []
        for name in list(variants)[:: 1 if round_ % 2 else -1]:
            fresh, run = variants[name]
            model = fresh()
            wall, cpu = timed(lambda: run(model))
            del model
            if round_ >= 0:
                seconds[name].append((wall, cpu))
            line.append(f"{name} {tokens_per_run / cpu:,.0f} tok/CPU-s ({wall:.1f} s wall)")
        print(f"{'warm-up' if round_ < 0 else f'round {round_ + 1}'}: " + ", ".join(line), flush=True)
    median = {name: [statistics.median(t[i] for t in times) for i in (0, 1)] for name, times in seconds.items()}
    print(f"\nSmolLM2-135M fine-tuning, batch {config.batch_size} × {sentences.tokens.shape[1]} tokens, {args.steps} "
          f"steps, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}; median of "
          f"{args.rounds} rounds: seconds per step (wall, CPU) and throughput ÷ the bare loop's (by CPU time)")
    for name, (wall, cpu) in median.items():
        print(f"  {name:16s} {wall / args.steps:6.2f} s  {cpu / args.steps:6.2f} s   ×{median['bare'][1] / cpu:.3f}")
    ratio = median["finetune-facts"][1] / median["trainer/hooked"][1]
    print(f"  hooked ÷ transformers (the same trainer and work: the answer rows unembedded): ×{ratio:.3f}")


def profile(config, hf_model, sentences, hooked) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = batch_rows(len(sentences), 0, config.batch_size, config.seed)
    tokens, mask = sentences.tokens[rows], sentences.answer_mask[rows]
    steps = {"hooked": lambda m: answer_loss(m(tokens), tokens, mask),
             "transformers": lambda m: answer_loss(m(input_ids=tokens).logits, tokens, mask)}
    models = {"hooked": copy.deepcopy(hooked).train(), "transformers": copy.deepcopy(hf_model).train()}
    for name in steps:  # warm-up
        steps[name](models[name]).backward()
    for name in steps:
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiled:
            steps[name](models[name]).backward()
        print(f"\n{name}: one forward + backward, batch {tuple(tokens.shape)}")
        print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    for fused in (False, True):
        model = copy.deepcopy(hf_model).train()
        steps["transformers"](model).backward()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=fused)
        optimizer.step()  # creates the state
        spent = [timed(optimizer.step)[1] for _ in range(3)]
        print(f"AdamW step over {sum(p.numel() for p in model.parameters()):,} parameters, fused={fused}: "
              f"{statistics.median(spent):.3f} CPU-s")


def conversion_check(config, hf_model, tokenizer, questions, sentences) -> None:
    """Train the transformers model a few steps the way finetune-facts does, convert it, compare."""
    from models.pretrained import check_equivalence

    model = CausalLM(copy.deepcopy(hf_model))
    train(model, sentences, TrainConfig(steps=2, lr=config.lr, weight_decay=0.0, batch_size=config.batch_size,
                                        eval_every=2, seed=config.seed, progress=False))
    trained = model.model.eval()
    converted = to_hooked(trained, tokenizer, config.model, device="cpu")
    prompts = [q.prompt + q.completion for q in questions.questions[:: len(questions.questions) // 8]]
    print(f"after 2 steps, max |Δ log p| over the vocabulary, {len(prompts)} questions: trained transformers model vs "
          f"its HookedTransformer conversion {check_equivalence(converted, trained, prompts, tokenizer):.2e}; "
          f"vs the untrained model {check_equivalence(converted, hf_model, prompts, tokenizer):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="operator profile of one step, optimizer step")
    parser.add_argument("--check", action="store_true", help="trained transformers model vs its hooked conversion")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, hf_model, tokenizer, questions, pad, sentences, hooked = setup()
    if args.profile:
        profile(config, hf_model, sentences, hooked)
    elif args.check:
        conversion_check(config, hf_model, tokenizer, questions, sentences)
    else:
        throughput(args, config, hf_model, sentences, hooked)


if __name__ == "__main__":
    main()
