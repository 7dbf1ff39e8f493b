"""Scoring throughput: answers after a shared prompt, against the floor of the work.

The workload is ``revlens check-asymmetry``'s: the first N celebrity pairs asked both ways, each
question with its true answer and K = 31 controls (question templates, the model's BOS rule).

The *floor* is one bare transformers forward pass over exactly the token positions that must
be computed: every prompt once, and every candidate's continuation tokens (its answer but the
last token) once, candidates of one prompt sharing their common prefixes (a trie). It runs
each statement as one sequence ``prompt ++ trie nodes`` with explicit position ids (a node at
depth j sits at position len(prompt) − 1 + j) and a 4D tree mask (a node sees the prompt and
its ancestors), the final norm and unembedding only where a next token is scored (the last
prompt position and every node). Its log-probabilities are checked against plain teacher
forcing before anything is timed. Statements of one width (prompt and trie nodes) run together, up to
16 to a pass, so no pass holds padding: its blocks run exactly the positions the floor counts. (Until
2026-12-05 they ran 16 to a pass in the workload's order, right-padded to the widest: 2,032 positions for
the 1,670 counted at 8 pairs, 22% more, which made every ratio to the floor look better than it was.)

Each path is timed on the same statements in one process, rounds alternating (every other round in reverse order),
one torch thread unless ``--threads``, in CPU seconds of the process (user + system, ``time.process_time``: on a shared
machine the wall time follows the load) with the wall time beside them: tokens/s = floor positions ÷
CPU seconds (the same numerator for all, so the ratios are time ratios).

``--onednn`` adds the floor and both trie paths with float32 products on oneDNN's kernels
(:func:`models.cpu_matmul.float32_matmul`, what ``check-asymmetry`` uses on a CPU where MKL's are the slower
float32 ones): each is compared with the floor run the same way, and all with the default floor's numbers.

``--bfloat16`` adds the hooked path with bfloat16 weights and activations, timed the same way, and its
largest log-probability difference from float32 (the goal allows 1e-2), after this CPU's matrix product
speed in both dtypes (the unembedding's shape).

``--bfloat16-inputs`` adds the floor with float32 products under ``fp32_precision = "bf16"`` (oneDNN's
kernels, which round the inputs to bfloat16 on a CPU with AMX and accumulate in float32), timed the same way, and
its largest log-probability difference from the float32 floor's.

``--compile`` adds the floor with the transformers model under ``torch.compile`` (inductor, dynamic shapes: every
pass has its own width), timed the same way once a warm-up pass over all statements has compiled it; the warm-up's
seconds are printed apart (the compilation's cost, against what the compiled passes save).

Run: ``.venv/bin/python benchmarks/scoring_throughput.py [--pairs 40 --rounds 3 --threads 1 --onednn --bfloat16
--bfloat16-inputs --compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Sequence

import torch

from analyses.asymmetry import TEMPLATE_FAMILIES, DEFAULT_TEMPLATES, draw_controls
from facts.celebrity import load_celebrity_pairs
from facts.language import TemplateTokenizer
from facts.tokens import Example, collate
from models.pretrained import load, load_hf
from models.scoring import score_answers


def workload(tokenizer, pairs: int, n_controls: int = 31) -> list[list[Example]]:
    """check-asymmetry's candidate rows for the first ``pairs`` celebrity pairs."""
    facts = load_celebrity_pairs()
    statements = [(i, d) for i, d, _ in facts.statements() if i < pairs]
    drawn = draw_controls(facts, statements, n_controls)
    asked = TemplateTokenizer(tokenizer, TEMPLATE_FAMILIES[DEFAULT_TEMPLATES])
    return [[asked.example(facts, i, d)] + [asked.example(facts, i, d, answer=a) for a in wrong]
            for (i, d), wrong in zip(statements, drawn)]


def trie_nodes(row: Sequence[Example]) -> list[tuple[int, ...]]:
    """The distinct fed prefixes (answer[:j], 1 ≤ j < len(answer)) of a row's candidates, parents first."""
    nodes: dict[tuple[int, ...], None] = {}
    for example in row:
        for j in range(1, len(example.answer)):
            nodes.setdefault(example.answer[:j], None)
    return list(nodes)


def floor_positions(rows: Sequence[Sequence[Example]]) -> int:
    return sum(len(row[0].prompt) + len(trie_nodes(row)) for row in rows)


def width(row: Sequence[Example]) -> int:
    """Positions of a statement's layout: its prompt and its trie nodes."""
    return len(row[0].prompt) + len(trie_nodes(row))


def unpadded_chunks(rows: Sequence[Sequence[Example]], batch: int) -> list[list[int]]:
    """Row indices in passes of up to ``batch`` statements of one width (no padding)."""
    by_width: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_width.setdefault(width(row), []).append(i)
    return [group[start : start + batch] for _, group in sorted(by_width.items())
            for start in range(0, len(group), batch)]


@torch.no_grad()
def floor_pass(hf, rows: Sequence[Sequence[Example]], batch: int = 16, body=None) -> torch.Tensor:
    """log p(candidate | prompt) for every row and candidate from one tree-masked pass per statement, statements of
    one width together (:func:`unpadded_chunks`; ``body``: what runs the transformer blocks, by default
    ``hf.model``)."""
    body = hf.model if body is None else body
    out = torch.zeros(len(rows), len(rows[0]))
    lm_head = hf.get_output_embeddings()
    for indices in unpadded_chunks(rows, batch):
        chunk = [rows[i] for i in indices]
        layouts = []
        for row in chunk:
            nodes = trie_nodes(row)
            layouts.append((list(row[0].prompt), nodes, {node: n for n, node in enumerate(nodes)}))
        size = width(chunk[0])  # every statement of the pass has it
        ids = torch.zeros(len(chunk), size, dtype=torch.long)
        positions = torch.zeros(len(chunk), size, dtype=torch.long)
        allowed = torch.zeros(len(chunk), 1, size, size, dtype=torch.bool)
        for b, (prompt, nodes, index) in enumerate(layouts):
            length = len(prompt)
            ids[b, :length] = torch.tensor(prompt)
            positions[b, :length] = torch.arange(length)
            allowed[b, 0, :length, :length] = torch.ones(length, length, dtype=torch.bool).tril()
            for n, node in enumerate(nodes):
                at = length + n
                ids[b, at], positions[b, at] = node[-1], length - 1 + len(node)
                allowed[b, 0, at, :length] = True
                for depth in range(1, len(node) + 1):
                    allowed[b, 0, at, length + index[node[:depth]]] = True
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        hidden = body(input_ids=ids, position_ids=positions, attention_mask=mask).last_hidden_state
        for b, (prompt, nodes, index) in enumerate(layouts):
            length = len(prompt)
            logprobs = lm_head(hidden[b, length - 1 : length + len(nodes)]).float().log_softmax(-1)
            for j, example in enumerate(chunk[b]):
                at = [0] + [1 + index[example.answer[:d]] for d in range(1, len(example.answer))]
                out[indices[b], j] = logprobs[at, list(example.answer)].sum()
    return out


def teacher_forced(model, rows) -> torch.Tensor:
    flat = [e for row in rows for e in row]
    return score_answers(model, collate(flat, 0), batch_size=64).logprob.view(len(rows), -1)


def prefix_cached(model, rows) -> torch.Tensor:
    """A model's scores the way they were computed before the trie (prompt passes, then continuations from
    the cached keys and values), for the side-by-side ratio."""
    from probes import shared_prompt

    by_tree = shared_prompt.scores_by_tree
    shared_prompt.scores_by_tree = lambda model: False
    try:
        return shared_prompt.candidate_logprobs_cached(model, rows).logprob
    finally:
        shared_prompt.scores_by_tree = by_tree


def timed(function, *args) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds of this process (user + system, ``time.process_time``) and the result."""
    began, began_cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - began, time.process_time() - began_cpu, result


def alternating_rounds(paths: dict, rounds: int, width: int = 38
                       ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, object]]:
    """Run every path once a round, ``rounds`` times, the order reversed every other round (machine noise, a warm
    cache and the allocator's state hit all of them alike, not the first or the last most), printing each run;
    return each path's CPU seconds and wall seconds per round and its last result."""
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    results = {}
    for round_ in range(rounds):
        order = list(paths.items())
        for name, path in (order if round_ % 2 == 0 else reversed(order)):
            elapsed, used, results[name] = timed(path)
            cpu[name].append(used)
            wall[name].append(elapsed)
            print(f"  round {round_ + 1} {name:{width}s} {used:7.2f} CPU s {elapsed:7.2f} s wall", flush=True)
    return cpu, wall, results


FLOOR = "floor (transformers, tree mask)"
FLOOR_TOLERANCE = 1e-3
"""How far the floor's numbers may be from the command's before no ratio to it is printed (float32: ~1e-5)."""


def print_against_floor(cpu: dict[str, list[float]], wall: dict[str, list[float]], results: dict[str, torch.Tensor],
                        positions: int, floor_of=lambda name: FLOOR, width: int = 38) -> None:
    """Per path (medians over the rounds): CPU seconds, floor positions per CPU second, the ratio to its floor
    (``floor_of(name)``, by default :data:`FLOOR`) and the largest difference of its numbers from :data:`FLOOR`'s."""
    for name in cpu:
        median, floor = statistics.median(cpu[name]), statistics.median(cpu[floor_of(name)])
        delta = (results[name] - results[FLOOR]).abs().max()
        print(f"{name:{width}s} {median:7.2f} CPU s  {positions / median:7.1f} tok/CPU s  ×{median / floor:.2f} floor  "
              f"(wall {statistics.median(wall[name]):7.2f} s)  max |Δ| vs the default floor {delta:.1e}")


def product_gflops(inner: int, outer: int, dtype: torch.dtype, rows: int = 64, repeats: int = 3) -> float:
    """GFLOP/s of this CPU's ``[rows × inner] @ [inner × outer]`` in ``dtype`` (CPU seconds)."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, outer, dtype=dtype)
    a @ b
    began = time.process_time()
    for _ in range(repeats):
        a @ b
    return 2 * rows * inner * outer * repeats / (time.process_time() - began) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bfloat16", action="store_true", help="also the hooked path in bfloat16 (time and max |Δ|)")
    parser.add_argument("--onednn", action="store_true",
                        help="also the floor and both trie paths with float32 products on oneDNN's kernels "
                             "(models.cpu_matmul), each against the floor run the same way")
    parser.add_argument("--bfloat16-inputs", action="store_true",
                        help="also the floor with float32 products whose inputs oneDNN may round to bfloat16 "
                             "(fp32_precision = 'bf16': it does on a CPU with AMX; time and max |Δ|)")
    parser.add_argument("--compile", action="store_true",
                        help="also the floor on torch.compile(model) (the warm-up that compiles it timed apart)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from probes.shared_prompt import candidate_logprobs_cached

    hf, tokenizer = load_hf(args.model, device="cpu")
    hooked = load(args.model, backend="hooked", device="cpu")
    bridge = load(args.model, backend="bridge", device="cpu")
    rows = workload(tokenizer, args.pairs)
    positions = floor_positions(rows)
    fed = sum(len(row[0].prompt) + sum(len(e.answer) - 1 for e in row) for row in rows)
    passes = unpadded_chunks(rows, 16)
    assert sum(len(chunk) * width(rows[chunk[0]]) for chunk in passes) == positions  # no padding anywhere
    print(f"{len(rows)} statements × {len(rows[0])} answers; floor positions {positions} "
          f"(prompts {sum(len(r[0].prompt) for r in rows)}, trie nodes {positions - sum(len(r[0].prompt) for r in rows)}); "
          f"without sharing prefixes {fed}; the floor runs them in {len(passes)} unpadded passes")
    reference = teacher_forced(hooked, rows[:8])
    floor_check = (floor_pass(hf, rows[:8]) - reference).abs().max()
    print(f"floor vs teacher forcing (hooked), first 8 statements: max |Δ log p| {floor_check:.2e}")
    if not floor_check < FLOOR_TOLERANCE:
        raise SystemExit(f"the floor's log-probabilities are {floor_check:.2e} from teacher forcing (more than "
                         f"{FLOOR_TOLERANCE:g}): it does not compute what the command does, and no ratio to it means "
                         f"anything")
    paths = {
        FLOOR: lambda: floor_pass(hf, rows),
        "hooked (by trie, now)": lambda: candidate_logprobs_cached(hooked, rows).logprob,
        "hooked, prefix cache (before)": lambda: prefix_cached(hooked, rows),
        "bridge (by trie, the default)": lambda: candidate_logprobs_cached(bridge, rows).logprob,
        "bridge, prefix cache (before)": lambda: prefix_cached(bridge, rows),
    }
    if args.onednn:
        from models.cpu_matmul import ONEDNN, float32_matmul

        def on_onednn(path):
            def run():
                with float32_matmul("cpu") as kernels:
                    if kernels != ONEDNN:
                        raise SystemExit(f"--onednn: this CPU keeps PyTorch's default kernels ({kernels})")
                    return path()
            return run

        for name in (FLOOR, "hooked (by trie, now)", "bridge (by trie, the default)"):
            paths[f"{name.split(' (')[0]} by trie, oneDNN"] = on_onednn(paths[name])
    if args.bfloat16:
        print(f"matrix products {hooked.cfg.d_model} × {hooked.cfg.d_vocab}: "
              + ", ".join(f"{dtype} {product_gflops(hooked.cfg.d_model, hooked.cfg.d_vocab, dtype):.1f} GFLOP/s"
                          for dtype in (torch.float32, torch.bfloat16)))
        hooked_bf16 = load(args.model, backend="hooked", device="cpu", dtype=torch.bfloat16)
        paths["hooked, bfloat16"] = lambda: candidate_logprobs_cached(hooked_bf16, rows).logprob.float()
    if args.bfloat16_inputs:
        from models.cpu_matmul import onednn_products

        def rounded_inputs():
            with onednn_products():
                return floor_pass(hf, rows)

        paths["floor, bfloat16 inputs (oneDNN)"] = rounded_inputs
    if args.compile:
        body = torch.compile(hf.model, dynamic=True)
        compiled = lambda rows: floor_pass(hf, rows, body=body)  # noqa: E731
        elapsed, used, _ = timed(compiled, rows)
        print(f"torch.compile: the warm-up pass over all {len(rows)} statements (compiling) {used:.1f} CPU s, "
              f"{elapsed:.1f} s wall")
        paths["floor, torch.compile"] = lambda: compiled(rows)
    cpu, seconds, results = alternating_rounds(paths, args.rounds)
    # a oneDNN path against the floor on oneDNN, the others against the default floor
    print_against_floor(cpu, seconds, results, positions,
                        lambda name: "floor by trie, oneDNN" if name.endswith("oneDNN") else FLOOR)

if __name__ == "__main__":
    main()
