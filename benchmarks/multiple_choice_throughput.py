"""Multiple-choice throughput: ``finetune-facts``' questions asked as multiple choice, against the floor.

The workload is the multiple choice of ``revlens finetune-facts --people 30 --controls 16 --multiple-choice 4``
(SmolLM2-135M): each forward held-out paraphrase and reverse question in its K = 4 cyclic orders
(:func:`analyses.multiple_choice.multiple_choice_prompts`). A question's orders share their stem
("Complete the sentence: … ___"); the options after it differ from the first one on, so nothing more is
shared (attention is causal: a token's keys depend on everything before it).

The *floor* is one bare transformers forward pass over exactly the positions that must be computed:
each question's stem once and each order's rest once, laid out as one sequence ``stem ++ rest_1 ++ … ++
rest_K`` with explicit position ids (rest_k's positions follow the stem's) and a 4D mask (a rest sees the
stem and itself), questions of one width up to 8 to a pass (no padding: until 2026-12-05 they were right-padded
8 to a pass in order, which ran positions the floor does not count), and the unembedding at the K last positions
only.
Its probabilities are checked against the command's before anything is timed.

Against it: :func:`probes.multiple_choice.letter_probabilities` on the HookedTransformer conversion, as
``finetune-facts`` asks it (each stem once, then every order from its cached keys and values; the last
position unembedded), and the same without stems (every prompt whole), for what the stems save.

Each path runs on the same prompts in one process, rounds alternating (every other round in reverse order), one
torch thread unless ``--threads``, timed in CPU seconds of the process (the wall time beside them); tokens/s = floor
positions ÷ CPU seconds, so the ratios are time ratios.

Run: ``.venv/bin/python benchmarks/multiple_choice_throughput.py [--questions 40 --rounds 3 --threads 1]``.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import torch

from analyses.finetune import FinetuneConfig, read_questions
from analyses.multiple_choice import multiple_choice_prompts
from models.pretrained import load_hf, to_hooked
from probes.multiple_choice import letter_probabilities, letter_tokens
from scoring_throughput import FLOOR, FLOOR_TOLERANCE, alternating_rounds, print_against_floor


def by_question(prompts: Sequence[Sequence[int]], stems: Sequence[int]) -> list[tuple[list[int], list[list[int]]]]:
    """(stem, the rests after it) per run of consecutive prompts with one stem (a question's orders), in
    order: the rows of :func:`floor_pass` are the prompts'."""
    grouped: list[tuple[list[int], list[list[int]]]] = []
    for prompt, stem in zip(prompts, stems):
        if not grouped or grouped[-1][0] != list(prompt[:stem]):
            grouped.append((list(prompt[:stem]), []))
        grouped[-1][1].append(list(prompt[stem:]))
    return grouped


@torch.no_grad()
def floor_pass(hf, questions: Sequence[tuple[list[int], list[list[int]]]], letters: Sequence[int],
               batch: int = 8) -> torch.Tensor:
    """p_k (softmax over the letters' next-token logits after each order) from one tree-masked pass per question,
    questions of one width together (no padding), in the questions' order."""
    out: list[torch.Tensor | None] = [None] * len(questions)
    lm_head, index = hf.get_output_embeddings(), torch.tensor(list(letters))
    by_width: dict[int, list[int]] = {}
    for q, (stem, rests) in enumerate(questions):
        by_width.setdefault(len(stem) + sum(map(len, rests)), []).append(q)
    passes = [(width, group[start : start + batch]) for width, group in sorted(by_width.items())
              for start in range(0, len(group), batch)]
    for width, indices in passes:
        chunk = [questions[q] for q in indices]
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        positions = torch.zeros(len(chunk), width, dtype=torch.long)
        allowed = torch.zeros(len(chunk), width, width, dtype=torch.bool)
        ends = []
        for b, (stem, rests) in enumerate(chunk):
            length = len(stem)
            ids[b, :length], positions[b, :length] = torch.tensor(stem), torch.arange(length)
            allowed[b, :length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
            at = length
            for rest in rests:
                span = slice(at, at + len(rest))
                ids[b, span], positions[b, span] = torch.tensor(rest), torch.arange(length, length + len(rest))
                allowed[b, span, :length] = True
                allowed[b, span, span] = torch.ones(len(rest), len(rest), dtype=torch.bool).tril()
                at += len(rest)
                ends.append((b, at - 1))
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
        hidden = hf.model(input_ids=ids, position_ids=positions, attention_mask=mask).last_hidden_state
        last = hidden[[b for b, _ in ends], [p for _, p in ends]]
        probabilities = lm_head(last)[:, index].double().softmax(-1)
        rows = torch.tensor([b for b, _ in ends])
        for b, q in enumerate(indices):
            out[q] = probabilities[rows == b]
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=40,
                        help="the first N questions (0: all; the Berglund-scale run, --people 30, asks 180)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = FinetuneConfig(people=30, n_controls=16, multiple_choice=4)  # the Berglund-scale run's questions
    hf, tokenizer = load_hf(config.model, device="cpu")
    hooked = to_hooked(hf, tokenizer, config.model, device="cpu")
    asked = multiple_choice_prompts(read_questions(config), tokenizer, config.multiple_choice, config.seed)
    k = len(asked.letters)
    rows = len(asked.prompts) if not args.questions else k * args.questions
    prompts, stems, letters = asked.prompts[:rows], asked.stems[:rows], letter_tokens(tokenizer, asked.letters)
    questions = by_question(prompts, stems)
    positions = sum(len(stem) + sum(map(len, rests)) for stem, rests in questions)
    print(f"{len(questions)} questions × {k} orders; floor positions {positions} (stems "
          f"{sum(len(s) for s, _ in questions)}, rests {positions - sum(len(s) for s, _ in questions)}); "
          f"every prompt whole {sum(map(len, prompts))}")
    check = (floor_pass(hf, questions[:4], letters)
             - letter_probabilities(hooked, prompts[: 4 * k], letters, stems=stems[: 4 * k])).abs().max()
    print(f"floor vs the command (hooked, stems), first 4 questions: max |Δp| {check:.2e}")
    if not check < FLOOR_TOLERANCE:
        raise SystemExit(f"the floor's probabilities are {check:.2e} from the command's (more than {FLOOR_TOLERANCE:g}): "
                         f"it does not compute what the command does, and no ratio to it means anything")
    paths = {
        FLOOR: lambda: floor_pass(hf, questions, letters),
        "hooked, stems cached (the command)": lambda: letter_probabilities(hooked, prompts, letters, stems=stems),
        "hooked, every prompt whole": lambda: letter_probabilities(hooked, prompts, letters),
    }
    print_against_floor(*alternating_rounds(paths, args.rounds, width=36), positions, width=36)


if __name__ == "__main__":
    main()
