"""`revlens reproduce zhu-settings`: the reversal experiment under Zhu et al.'s other settings.

Zhu et al. (2024)'s code (``train_reverse.py``) has flags beyond the positional encoding and the
entity length (``reproduce positional``, ``reproduce multi-token``): the loss on the last entity
only (default) or on the whole sequence (``--loss_whole_sequence``), trainable or frozen token and
position embeddings (``--freeze_wte_wpe``), and the depth (``--n_layers``). Each is an option of
``revlens reproduce reversal`` (``--loss sequence``, ``--freeze-embeddings``, ``--layers N``); this
experiment runs the grid: the reversal run (tiny model, its defaults) as is, with the loss on every
token, with frozen embeddings, and at depth 1, 2, 4 and 8 (the tiny model's widths; depth 2 is the
default run, not trained twice). Each setting's full reversal run lands in ``out/<setting>/``.

Per setting: trained-sentence probability, held-out reverse log-probability and accuracy against
chance, and the OV circuit's mean z of Y[A, B] (trained) and Y[B, A] (held out) over every head
(:func:`analyses.reproduce.ov_asymmetry`; for layers > 0 these are first-order, embedding-to-head
circuits, so deeper models spread the asymmetry over more heads and paths than this reads).

The paper reports the curse in every setting of its token experiments (held-out reverse at or
below chance); it gives curves, not a table of numbers, so the comparison here is qualitative.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from analyses.reproduce import ReversalConfig, _write_json, curse_holds, reproduce_reversal
from probes.views import save_png

DEPTHS = (1, 2, 4, 8)
KEYS = ("train_prob", "heldout_reverse_logprob", "heldout_reverse_accuracy", "chance_logprob", "ov_z_trained",
        "ov_z_heldout", "ov_asymmetry", "seconds")
CAPTIONS = {
    "zhu_settings.png": "The reversal run under Zhu et al.'s other settings (tiny model unless the depth is "
                        "changed): left, the trained sentences' log of their mean p and the held-out reverse's mean log p "
                        "against chance (dashed); "
                        "right, mean z-score over heads of the OV entries Y[A,B] (trained direction) and Y[B,A] "
                        "(held out). The curse holds where the held-out bar sits at or below chance.",
}


@dataclass(frozen=True)
class ZhuSettingsConfig:
    """The base reversal run and the depths tried."""

    run: ReversalConfig = field(default_factory=lambda: ReversalConfig(eval_every=20))
    depths: tuple[int, ...] = DEPTHS


def settings(config: ZhuSettingsConfig) -> dict[str, ReversalConfig]:
    """Setting name → its reversal config; the base run's own depth is named once ("default")."""
    from models.transformer import SPECS

    base = config.run
    default_depth = base.layers or SPECS[base.model].n_layers
    out = {"default": base, "loss on whole sequence": replace(base, loss="sequence"),
           "frozen embeddings": replace(base, freeze_embeddings=True)}
    for depth in config.depths:
        if depth != default_depth:
            out[f"{depth} layer{'s' if depth > 1 else ''}"] = replace(base, layers=depth)
    return out


def folder_name(setting: str) -> str:
    return setting.replace(" ", "-")


def reproduce_zhu_settings(out: str | Path, config: ZhuSettingsConfig = ZhuSettingsConfig(),
                           progress: bool = True) -> dict[str, Any]:
    """One reversal run per setting into ``out/<setting>/``; ``zhu_settings.png`` and ``summary.json``."""
    from models.transformer import SPECS

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows = {}
    for name, run in settings(config).items():
        summary = reproduce_reversal(out / folder_name(name), run, progress=progress)
        rows[name] = {"layers": run.layers or SPECS[run.model].n_layers, "loss": run.loss,
                      "freeze_embeddings": run.freeze_embeddings, **{k: summary[k] for k in KEYS},
                      "curse_holds": curse_holds(summary)}
    save_png(settings_figure(rows, config.run), out / "zhu_settings.png")
    summary = {"experiment": "zhu-settings", "config": asdict(config), "settings": rows, "captions": CAPTIONS,
               "seconds": time.perf_counter() - began}
    _write_json(out / "summary.json", summary)
    return summary


def config_from_args(args) -> ZhuSettingsConfig:
    """The settings of ``revlens reproduce zhu-settings``: ``--seed``, ``--steps``, ``--depths``."""
    defaults = ZhuSettingsConfig()
    run = replace(defaults.run, seed=args.seed, steps=getattr(args, "steps", defaults.run.steps))
    return ZhuSettingsConfig(run=run, depths=tuple(getattr(args, "depths", DEPTHS)))


def settings_figure(rows: dict[str, dict[str, Any]], run: ReversalConfig):
    """Two panels per setting: log p trained vs held-out reverse (chance dashed); OV z trained vs held out."""
    import math

    from matplotlib.figure import Figure

    names = list(rows)
    x = range(len(names))
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    logp, ov = figure.subplots(1, 2)
    logp.bar([i - 0.2 for i in x], [math.log(r["train_prob"]) for r in rows.values()], width=0.4,
             label="trained sentences (log mean p)", color="#1f77b4")
    logp.bar([i + 0.2 for i in x], [r["heldout_reverse_logprob"] for r in rows.values()], width=0.4,
             label="held-out reverse", color="#d62728")
    logp.axhline(next(iter(rows.values()))["chance_logprob"], color="grey", linestyle="--", label="chance")
    logp.set_ylabel("log p(answer)")
    ov.bar([i - 0.2 for i in x], [r["ov_z_trained"] for r in rows.values()], width=0.4, label="z Y[A,B] (trained)",
           color="#1f77b4")
    ov.bar([i + 0.2 for i in x], [r["ov_z_heldout"] for r in rows.values()], width=0.4, label="z Y[B,A] (held out)",
           color="#d62728")
    ov.set_ylabel("mean z over heads")
    for axis in (logp, ov):
        axis.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7)
    figure.suptitle(f"Zhu et al.'s settings on the reversal world ({run.model} model, {run.steps} steps, seed "
                    f"{run.seed})", fontsize=10)
    return figure


def format_zhu_settings(summary: dict[str, Any]) -> str:
    """One screen: per setting, trained p, held-out reverse against chance, OV z's, the verdict."""
    cfg = summary["config"]["run"]
    lines = [f"reversal world ({cfg['n_pairs']} pairs), {cfg['model']} model, {cfg['steps']} steps, seed {cfg['seed']}",
             "", f"  {'setting':24s}{'layers':>7s}{'train p':>9s}{'log p B→A':>11s}{'acc B→A':>9s}{'z Y[A,B]':>10s}"
                 f"{'z Y[B,A]':>10s}{'curse':>7s}{'s':>6s}"]
    for name, r in summary["settings"].items():
        lines.append(f"  {name:24s}{r['layers']:7d}{r['train_prob']:9.4f}{r['heldout_reverse_logprob']:11.2f}"
                     f"{r['heldout_reverse_accuracy']:9.3f}{r['ov_z_trained']:10.2f}{r['ov_z_heldout']:10.2f}"
                     f"{'yes' if r['curse_holds'] else 'no':>7s}{r['seconds']:6.0f}")
    chance = next(iter(summary["settings"].values()))["chance_logprob"]
    held = sum(r["curse_holds"] for r in summary["settings"].values())
    lines += ["", f"chance log p {chance:.2f} (the answer's kind); curse: trained p > 0.99, held-out reverse log p ≤ "
                  f"chance + 0.5, its accuracy not above chance and its mean rank at least half of chance's",
              f"THE CURSE HOLDS IN {held} OF {len(summary['settings'])} SETTINGS in {summary['seconds']:.0f} s"]
    return "\n".join(lines)
