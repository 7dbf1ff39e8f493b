"""Attribution patching against exact activation patching: agreement (Pearson r) and speed-up.

Workloads (one fact pair at a time, as ``revlens probe --attribution-patching`` runs it):

* ``token``: the token world's trained two-layer ``tiny`` model (40 AdamW steps), the first 15 facts,
  forward prompt clean, reverse prompt corrupted, the forward answer scored; resid_pre at every
  layer and position and every head's hook_z;
* ``smollm2``: SmolLM2-135M on the built-in people world (prior knowledge), forward prompt clean,
  reverse prompt corrupted, log p of the whole reverse answer scored, resid_pre at every layer and
  aligned position; and heads (every layer × head) between the reverse prompts of two people whose
  prompts have one length (a head is patched at every position).

Exact patching runs one forward pass per site; attribution patching one clean forward and one
corrupted forward + backward pass for all of them. Times are wall-clock, one torch thread.

Run: ``.venv/bin/python benchmarks/attribution_patching.py [--workload token smollm2] [--facts 3]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from probes.attribution import attribution_patch, forward_reverse_pairs, patch_heads, patch_residual


def compare(model, clean, corrupt, targets, sites) -> tuple[list[np.ndarray], list[np.ndarray], float, float]:
    began = time.perf_counter()
    estimates = attribution_patch(model, clean, corrupt, sites=sites, targets=targets)
    fast = time.perf_counter() - began
    began = time.perf_counter()
    exact = {"resid_pre": (lambda: patch_residual(model, clean, corrupt, targets=targets)),
             "z": (lambda: patch_heads(model, clean, corrupt, targets=targets))}
    truths = {site: exact[site]() for site in sites}
    slow = time.perf_counter() - began
    return ([(estimates[s].metric - estimates[s].corrupt).flatten().numpy() for s in sites],
            [(truths[s].metric - truths[s].corrupt).flatten().numpy() for s in sites], fast, slow)


def report(name: str, per_site: dict[str, tuple[list, list]], fast: float, slow: float) -> None:
    for site, (estimated, exact) in per_site.items():
        x, y = np.concatenate(estimated), np.concatenate(exact)
        print(f"{name} {site}: {len(x)} sites, Pearson r {np.corrcoef(x, y)[0, 1]:.3f}, "
              f"max |error| {np.abs(x - y).max():.2f} nats (largest exact change {np.abs(y).max():.2f})")
    print(f"{name}: attribution {fast:.2f} s, exact {slow:.2f} s: {slow / fast:.1f}× faster")


def token_world(n_facts: int) -> None:
    from facts.token_worlds import TokenVocab, reversal_world
    from facts.tokens import tokenize
    from models.training import TrainConfig, train
    from models.transformer import build_model

    vocab = TokenVocab()
    batch = tokenize(reversal_world(seed=0, vocab=vocab), vocab)
    model = build_model("tiny", vocab.d_vocab, seed=0, device="cpu")
    train(model, batch.where(split="train"), TrainConfig(steps=40, lr=1e-2, eval_every=40, progress=False))
    model.eval()
    clean, corrupt = forward_reverse_pairs(batch.take(range(2 * n_facts)))
    per_site, fast, slow = {"resid_pre": ([], []), "z": ([], [])}, 0.0, 0.0
    for forward, reverse in zip(clean, corrupt):
        estimated, exact, f, s = compare(model, [forward], [reverse], None, ("resid_pre", "z"))
        for site, x, y in zip(("resid_pre", "z"), estimated, exact):
            per_site[site][0].append(x)
            per_site[site][1].append(y)
        fast, slow = fast + f, slow + s
    report("token world tiny", per_site, fast, slow)


def smollm2(n_facts: int) -> None:
    from analyses.probe import pretrained_probed
    from facts.language import people_world
    from models.pretrained import load, load_tokenizer

    model = load("smollm2-135m", backend="hooked", device="cpu")  # a CPU benchmark, on a machine with a GPU too
    probed = pretrained_probed(model, load_tokenizer("smollm2-135m"), "people", {})
    facts = people_world(n_per_group=n_facts, seed=1)
    both = [i for i, f in enumerate(facts) if f.forward is not None and f.reverse is not None][:n_facts]
    residual, fast, slow = ([], []), 0.0, 0.0
    for index in both:
        forward = probed.statements.example(facts, index, "forward")
        reverse = probed.statements.example(facts, index, "reverse")
        estimated, exact, f, s = compare(model, [forward], [reverse], [reverse.answer], ("resid_pre",))
        residual[0].append(estimated[0])
        residual[1].append(exact[0])
        fast, slow = fast + f, slow + s
    report("SmolLM2 forward → reverse", {"resid_pre": residual}, fast, slow)
    # one reverse prompt per fact (statements() lists a fact once per direction: two equal prompts
    # would make a pair whose patching changes nothing)
    reverse = [probed.statements.example(facts, i, "reverse") for i in dict.fromkeys(i for i, _, _ in facts.statements())]
    by_length: dict[int, list] = {}
    for example in reverse:
        by_length.setdefault(len(example.prompt), []).append(example)
    pairs = [group[:2] for group in by_length.values() if len(group) >= 2][:n_facts]
    heads, fast, slow = ([], []), 0.0, 0.0
    for clean, corrupt in pairs:
        estimated, exact, f, s = compare(model, [clean], [corrupt], [clean.answer], ("z",))
        heads[0].append(estimated[0])
        heads[1].append(exact[0])
        fast, slow = fast + f, slow + s
    report(f"SmolLM2 reverse prompt of person A → of person B ({len(pairs)} pairs)", {"z": heads}, fast, slow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", nargs="+", choices=("token", "smollm2"), default=["token", "smollm2"])
    parser.add_argument("--facts", type=int, default=3, help="fact pairs per SmolLM2 workload (token world: 15)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "token" in args.workload:
        token_world(15)
    if "smollm2" in args.workload:
        smollm2(args.facts)


if __name__ == "__main__":
    main()
