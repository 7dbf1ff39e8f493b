"""`revlens reproduce identity-bridge`: Ma et al. 2026 (arXiv 2602.02470) on the token world.

The Identity Bridge adds "A → A" statements ("The name of Alice is Alice") to one-way facts and,
the paper proves, lets even a one-layer transformer answer the reverse; the evidence is in the
OV weights gradient descent learns. Here: the reversal world (docs/SCIENCE.md §4; 70% of pairs
trained both ways, 30% one way) with and without the bridge of
:func:`analyses.mitigations.identity_statements`, "x ← x" for every subject and "y → y" for every
object: each entity answers itself under the relation whose statements answer its kind, so the
held-out question "y ←" (asking for a subject) meets a relation trained to answer subjects.

Why it can work (the paper's argument, in our terms). A one-layer model answers "g r" with
roughly Y[g, ·] + Y[r, ·] (attention mixes the two OV rows). Without the bridge the smallest Y
that fits "x → y" is Y[x, y] alone: Y[y, x] has no gradient and the reverse stays at chance.
With the bridge, "x ← x" must also be fitted; one low-norm solution serving every statement
writes the *pair* direction from either member (Y[x, ·] = Y[y, ·] ∝ e_x + e_y) and lets the
relation row pick the kind (Y[←, ·] lowers the objects, Y[→, ·] the subjects). That solution
answers "y ←" with x: the held-out reverse, never trained. The OV entry Y[B, A] of the held-out
direction (z-scored against the same row's other answers of A's kind,
:func:`probes.circuits.circuit_table`) is where this shows.

For each seed, model (one-layer: the theory's attention-only model; tiny: two layers with
MLPs) and variant (baseline, identity-bridge), a fresh model is trained with the reversal run's
settings and measured on the baseline's held-out reverse statements with
:func:`analyses.mitigations.measure` (the numbers ``reproduce mitigations`` reports, where the
bridge is one more variant; each answer ranked among its own kind). The source gives no token-world numbers to compare
with; its fine-tuned 1B model reaches 40% (v1) / 50% (v2) reversal success against ≈ 0% without
the bridge.

Chance is the answer's own kind's (:mod:`probes.logits`): a held-out "y ←" asks for one of the 200 subjects,
so accuracy 1/200 and log p −log 200. The verdict (:func:`bridge_breaks_the_curse`) is per seed: the bridge
breaks the curse for a model when its held-out reverse accuracy is above chance in every seed, each seed's own
exact binomial test over that seed's held-out statements, and the baseline's in none.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from analyses.mitigations import make_variant, measure
from analyses.reproduce import ReversalConfig, _write_json, train_run, write_csv
from facts.schema import FactSet
from facts.token_worlds import TokenVocab, reversal_world
from probes.stats import above_chance
from probes.views import save_png

VARIANTS = ("baseline", "identity-bridge")
METRICS = ("heldout_accuracy", "heldout_margin", "heldout_logprob", "z_heldout", "z_trained", "train_accuracy")
SOURCE = ("Ma, Huang, Zhu, Sojoudi 2026, 'Breaking the Reversal Curse in Autoregressive Language Models via "
          "Identity Bridge' (arXiv 2602.02470): a one-layer transformer provably breaks the curse with the bridge; "
          "a fine-tuned 1B LLM reaches 40% (v1) / 50% (v2) reversal success vs ≈ 0% without it. "
          "No token-world numbers are given to compare with.")
CAPTIONS = {
    "identity_bridge.png": "Held-out reverse (B → A of the one-way pairs) without and with the Identity Bridge "
                           "('x ← x', 'y → y' added): greedy accuracy (the right answer the argmax over the whole vocabulary), margin over 16 same-kind controls "
                           "(nats), and the z-score of the OV entry Y[B, A] against the same row's other answers; "
                           "bars: mean over seeds, dots: each seed. Bridge bars above the baseline's ≈ 0 mean the "
                           "reverse was inferred, never trained.",
}


@dataclass(frozen=True)
class IdentityBridgeConfig:
    """Models, the reversal run each trains (``model`` and ``seed`` replaced), and how many seeds."""

    models: tuple[str, ...] = ("one-layer", "tiny")
    run: ReversalConfig = field(default_factory=lambda: ReversalConfig(eval_every=20))
    seeds: int = 3

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be ≥ 1, got {self.seeds}")


def _mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sample sd (n − 1) of one metric over seeds; the sd of one seed is undefined: NaN."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else math.nan}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per model and variant, mean and sd across seeds of each of :data:`METRICS`."""
    out: dict[str, dict[str, Any]] = {}
    for (model, variant), part in pd.DataFrame(rows).groupby(["model", "variant"], sort=False):
        out.setdefault(model, {})[variant] = {m: _mean_sd([float(v) for v in part[m]]) for m in METRICS}
    return out


def heldout_chance_accuracy(world: FactSet) -> float:
    """The chance accuracy of ``world``'s held-out statements: the mean over them of 1 / the size of their answer's
    kind (:func:`probes.logits.kind_candidates`), 1/200 in the reversal world of 200 pairs."""
    from probes.logits import kind_candidates

    kinds = kind_candidates(world)
    return statistics.fmean(1 / len(kinds[d]) for _, d, split in world.statements() if split == "heldout")


def reproduce_identity_bridge(out: str | Path, config: IdentityBridgeConfig = IdentityBridgeConfig(),
                              progress: bool = True) -> dict[str, Any]:
    """Train every (seed, model, variant) into ``out/<model>/<variant>/seed-<s>/``; write
    ``identity_bridge.csv`` (one row each), ``identity_bridge.png`` and ``summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    vocab = TokenVocab()
    rows = []
    for seed in range(config.run.seed, config.run.seed + config.seeds):
        run = replace(config.run, seed=seed)
        world = reversal_world(n_pairs=run.n_pairs, k=run.k, seed=seed, vocab=vocab)
        for model_name in config.models:
            for name in VARIANTS:
                variant = make_variant(name, world)
                model, _ = train_run(variant.training, vocab, replace(run, model=model_name),
                                     out / model_name / name / f"seed-{seed}", progress)
                row = measure(model, model_name, world, variant, vocab)[0]  # the plain held-out reverse
                rows.append({"seed": seed, **row})
    write_csv(pd.DataFrame(rows), out / "identity_bridge.csv")
    save_png(identity_bridge_bars(rows), out / "identity_bridge.png")
    world = reversal_world(n_pairs=config.run.n_pairs, k=config.run.k, seed=config.run.seed, vocab=vocab)
    summary = {"experiment": "identity-bridge", "config": asdict(config),
               "n_bridge_statements": len(world.entities()),
               "n_heldout_reverse": rows[0]["heldout_n"], "chance_logprob": rows[0]["chance_logprob"],
               "chance_accuracy": heldout_chance_accuracy(world),
               "by_model": aggregate(rows), "rows": rows, "source": SOURCE, "captions": CAPTIONS,
               "seconds": time.perf_counter() - began}
    _write_json(out / "summary.json", summary)
    return summary


def config_from_args(args) -> IdentityBridgeConfig:
    """The settings of ``revlens reproduce identity-bridge``: ``--seed``, ``--n-seeds``, ``--steps``."""
    defaults = IdentityBridgeConfig()
    run = replace(defaults.run, seed=args.seed, steps=getattr(args, "steps", defaults.run.steps))
    return replace(defaults, run=run, seeds=getattr(args, "n_seeds", defaults.seeds))


def identity_bridge_bars(rows: list[dict[str, Any]]):
    """Three panels (held-out reverse accuracy, its margin, z of Y[B, A]); per model a bar per
    variant at the mean over seeds, each seed a dot."""
    from matplotlib.figure import Figure

    table = pd.DataFrame(rows)
    models = list(dict.fromkeys(table.model))
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    panels = (("heldout_accuracy", "held-out reverse accuracy"), ("heldout_margin", "margin over controls (nats)"),
              ("z_heldout", "z of OV entry Y[B, A]"))
    colours = {"baseline": "#7f7f7f", "identity-bridge": "#2ca02c"}
    for axis, (key, label) in zip(figure.subplots(1, 3), panels):
        for v, variant in enumerate(VARIANTS):
            for m, model in enumerate(models):
                values = table[(table.model == model) & (table.variant == variant)][key]
                x = m + (v - 0.5) * 0.4
                axis.bar(x, values.mean(), width=0.4, color=colours[variant], label=variant if m == 0 else None)
                axis.plot([x] * len(values), values, "k.", markersize=4)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(models)), models)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3, axis="y")
    figure.axes[0].legend(fontsize=8)
    figure.suptitle("Identity Bridge (Ma et al. 2026) on the reversal world: held-out B → A", fontsize=10)
    return figure


def bridge_breaks_the_curse(rows: list[dict[str, Any]], chance: float) -> bool:
    """The verdict of one model from its summary ``rows`` (one per seed and variant: ``seed``, ``variant``,
    ``heldout_accuracy`` over ``heldout_n`` statements): with the bridge its held-out reverse answers are above
    chance in every seed, without it in none, each seed by its own exact binomial test over its own statements
    (:func:`probes.stats.above_chance`, 5%). A model with no seed of either variant does not break it.
    (Pooled, the seeds' mean accuracy times all their statements, one seed at 6 of 60 and two at 0 had read as a
    broken curse; and before that ten times chance had been enough: 2.5%, 5 of 180 statements, and one lucky
    baseline answer in 180 had counted as the baseline answering.)"""
    def above(row: dict[str, Any]) -> bool:
        n = int(row["heldout_n"])
        return above_chance(round(row["heldout_accuracy"] * n), n, chance)

    bridge = [above(row) for row in rows if row["variant"] == "identity-bridge"]
    baseline = [above(row) for row in rows if row["variant"] == "baseline"]
    return bool(bridge) and bool(baseline) and all(bridge) and not any(baseline)


def format_identity_bridge(summary: dict[str, Any]) -> str:
    """One screen: per model, the held-out reverse and Y[B, A] without and with the bridge."""
    cfg = summary["config"]
    first = cfg["run"]["seed"]
    lines = [f"reversal world, {cfg['run']['n_pairs']} pairs, {summary['n_heldout_reverse']} held-out reverse "
             f"statements; identity bridge: {summary['n_bridge_statements']} statements 'A r A'; "
             f"{cfg['run']['steps']} steps, seeds {first}…{first + cfg['seeds'] - 1} (mean ± sd)", "",
             f"  {'model':11s}{'variant':17s}{'acc B→A':>15s}{'margin B→A':>16s}{'z Y[B,A]':>15s}{'z Y[A,B]':>15s}"
             f"{'train acc':>11s}"]

    def cell(stats: dict[str, float], digits: int) -> str:
        """mean ± sd; "± n/a" where the sd is undefined (one seed)."""
        spread = "n/a" if math.isnan(stats["sd"]) else f"{stats['sd']:.{digits}f}"
        return f"{stats['mean']:.{digits}f} ± {spread}"

    for model, variants in summary["by_model"].items():
        for variant, m in variants.items():
            lines.append(f"  {model:11s}{variant:17s}{cell(m['heldout_accuracy'], 3):>15s}"
                         f"{cell(m['heldout_margin'], 2):>16s}{cell(m['z_heldout'], 2):>15s}"
                         f"{cell(m['z_trained'], 2):>15s}{m['train_accuracy']['mean']:11.3f}")
    broken = [model for model in summary["by_model"]
              if bridge_breaks_the_curse([r for r in summary["rows"] if r["model"] == model],
                                         summary["chance_accuracy"])]
    rule = ("held-out reverse accuracy above chance in every seed with the bridge and in none without "
            "(each seed's exact binomial test over its own statements, 5%)")
    lines += ["", f"chance (the answer's kind): accuracy {summary['chance_accuracy']:.4f}, "
                  f"log p {summary['chance_logprob']:.2f}",
              f"source: {summary['source']}", "",
              (f"IDENTITY BRIDGE BREAKS THE CURSE for {', '.join(broken)}: {rule}" if broken else
               f"the bridge did not break the curse here (see numbers); breaking it needs {rule}")
              + f" in {summary['seconds']:.1f} s"]
    return "\n".join(lines)
