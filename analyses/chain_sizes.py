"""`revlens reproduce chain-sizes`: Zhu et al.'s related-token chain over the training-set size.

Zhu et al. (2024)'s ``train_chain_related_tokens.py``: the chain task ("x → y", "y → z" trained,
"x ⇝ z" trained for some triples and held out for others; ``reproduce chain``) with entities of two
tokens whose first token is fixed per kind (every x starts with the same token, every y with another,
every z with a third: :func:`facts.token_worlds.related_words`), so entities of a kind share part of
their representation. Their ``num_train`` sweep: 10, 20, 50, 100, 200, 500 triples with "x ⇝ z"
trained; here each against the same number (50) of held-out triples, one :func:`analyses.paper.reproduce_chain`
run per size into ``out/num_train=<n>/``.

Per size: the held-out x ⇝ z log-probability (summed over its two tokens) against chance
(−log of the number of candidate z's, the answer's kind), its greedy accuracy (the argmax over the
whole vocabulary) and mean rank among the z's, at chance or not by :func:`analyses.reproduce.at_chance`,
the two-step chain x → ŷ → ẑ, and
the OV circuit's mean z-score of Y[x, z] (each entity read as the mean of its two tokens,
:mod:`probes.circuits`) for trained and for held-out "x ⇝ z" facts. The paper shows curves of
held-out probability, not a table; does the curse weaken as more x ⇝ z pairs are trained?
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from analyses import paper
from analyses.experiments import CHAIN_SIZES_HELDOUT as HELDOUT
from analyses.experiments import recorded_settings
from analyses.reproduce import _write_json, at_chance
from probes.views import save_png

SIZES = (10, 20, 50, 100, 200, 500)
KEYS = ("train_prob", "heldout_logprob", "chance_logprob", "heldout_accuracy", "chance_accuracy",
        "heldout_mean_rank", "chance_mean_rank", "two_step_accuracy", "ov_z_trained", "ov_z_heldout", "seconds")
CAPTIONS = {
    "chain_sizes.png": "Related-token chain (Zhu et al.'s train_chain_related_tokens): per number of triples with "
                       "x ⇝ z trained (num_train, log scale), left: held-out x ⇝ z log p (summed over its two "
                       "tokens) against chance (dashed) and the two-step chain's accuracy; right: mean z over heads "
                       "of the OV entry Y[x, z] for trained and held-out x ⇝ z facts.",
}


@dataclass(frozen=True)
class ChainSizesConfig:
    """The chain run of every size (``n_triples``/``n_heldout``/``related`` set per size)."""

    chain: paper.ChainConfig = field(default_factory=lambda: paper.ChainConfig(eval_every=20))
    sizes: tuple[int, ...] = SIZES
    n_heldout: int = HELDOUT

    def recorded(self) -> dict[str, Any]:
        """The settings as the runs used them (the summary's and the run folder's manifest's ``config``): each
        size's chain run is related-token, of ``size + n_heldout`` triples with ``n_heldout`` held out (its own
        ``num_train=<size>/summary.json`` records them), so the chain settings keep no ``n_triples``/``n_heldout``
        of their own and say ``related``."""
        settings = asdict(self)
        chain = {key: value for key, value in settings["chain"].items() if key not in ("n_triples", "n_heldout")}
        return {**settings, "chain": {**chain, "related": True}}


def reproduce_chain_sizes(out: str | Path, config: ChainSizesConfig = ChainSizesConfig(), progress: bool = True
                          ) -> dict[str, Any]:
    """One related-token chain run per size; ``chain_sizes.png`` and ``summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows = {}
    for size in config.sizes:
        run = replace(config.chain, n_triples=size + config.n_heldout, n_heldout=config.n_heldout, related=True)
        summary = paper.reproduce_chain(out / f"num_train={size}", run, progress)
        rows[str(size)] = {"num_train": size, "n_triples": run.n_triples, "n_heldout": summary["n_heldout"],
                           **{k: summary[k] for k in KEYS}}
    save_png(sizes_figure(rows), out / "chain_sizes.png")
    summary = {"experiment": "chain-sizes", "config": recorded_settings(config), "sizes": rows, "captions": CAPTIONS,
               "seconds": time.perf_counter() - began}
    _write_json(out / "summary.json", summary)
    return summary


def config_from_args(args) -> ChainSizesConfig:
    """The settings of ``revlens reproduce chain-sizes``: ``--seed``, ``--sizes``, ``--steps``."""
    defaults = ChainSizesConfig()
    chain = replace(defaults.chain, seed=args.seed, steps=getattr(args, "steps", defaults.chain.steps))
    return replace(defaults, chain=chain, sizes=tuple(getattr(args, "sizes", SIZES)))


def sizes_figure(rows: dict[str, dict[str, Any]]):
    from matplotlib.figure import Figure

    sizes = [r["num_train"] for r in rows.values()]
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    logp, ov = figure.subplots(1, 2)
    logp.plot(sizes, [r["heldout_logprob"] for r in rows.values()], "o-", color="#d62728", label="held-out x ⇝ z")
    logp.plot(sizes, [r["chance_logprob"] for r in rows.values()], "--", color="grey", label="chance")
    logp.set_ylabel("log p(z | x ⇝)")
    twin = logp.twinx()
    twin.plot(sizes, [r["two_step_accuracy"] for r in rows.values()], "s:", color="#2ca02c", label="two-step accuracy")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("two-step chain accuracy")
    ov.plot(sizes, [r["ov_z_trained"] for r in rows.values()], "o-", color="#1f77b4", label="z Y[x,z], trained x ⇝ z")
    ov.plot(sizes, [r["ov_z_heldout"] for r in rows.values()], "o-", color="#d62728", label="z Y[x,z], held out")
    ov.axhline(0, color="black", linewidth=0.8)
    ov.set_ylabel("mean z over heads")
    for axis in (logp, ov):
        axis.set_xscale("log")
        axis.set_xlabel("num_train (triples with x ⇝ z trained)")
        axis.grid(alpha=0.3)
    # legends below the panels, where they cover no point (inside, they hid the lowest held-out ones)
    handles, labels = (sum(pair, []) for pair in zip(logp.get_legend_handles_labels(), twin.get_legend_handles_labels()))
    logp.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    ov.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    figure.suptitle("Related-token chain over the training-set size", fontsize=10)
    return figure


def format_chain_sizes(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    lines = [f"related-token chain, {cfg['chain']['model']} model, {cfg['chain']['steps']} steps, seed "
             f"{cfg['chain']['seed']}, {cfg['n_heldout']} held-out triples per size", "",
             f"  {'num_train':>9s}{'train p':>9s}{'log p x⇝z':>11s}{'chance':>8s}{'acc x⇝z':>9s}{'two-step':>10s}"
             f"{'z Y trained':>13s}{'z Y held out':>14s}{'s':>6s}"]
    for r in summary["sizes"].values():
        lines.append(f"  {r['num_train']:9d}{r['train_prob']:9.4f}{r['heldout_logprob']:11.2f}{r['chance_logprob']:8.2f}"
                     f"{r['heldout_accuracy']:9.3f}{r['two_step_accuracy']:10.3f}{r['ov_z_trained']:13.2f}"
                     f"{r['ov_z_heldout']:14.2f}{r['seconds']:6.0f}")
    cursed = [r for r in summary["sizes"].values() if at_chance(
        r["heldout_logprob"], r["chance_logprob"], r["heldout_accuracy"], r.get("n_heldout", cfg["n_heldout"]),
        r["chance_accuracy"], r.get("heldout_mean_rank", math.nan), r.get("chance_mean_rank", math.nan))]
    lines += ["", f"held-out x ⇝ z at or below chance at {len(cursed)} of {len(summary['sizes'])} sizes "
                  f"(log p, accuracy and mean rank against the z's) in {summary['seconds']:.0f} s"]
    return "\n".join(lines)
