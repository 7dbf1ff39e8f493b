"""`revlens reproduce bilinear`: Zhu et al.'s Theorem 1 measured on the bilinear model.

For each embedding dimension d, Θ is trained from 0 by full-batch gradient descent on the
reversal world's training sentences, and every few steps we record the training loss L(t),
the held-out reverse loss L_rev(t) and Θ's asymmetry ‖Θ − Θᵀ‖/‖Θ‖. The theorem says

    L_rev(t) / L_rev(0)  ≥  (L(t) / L(0))^ε,    ε → 0 as d grows.

Along a run the smallest ε for which the bound holds is ε̂ = max_t max(0, log y_t / log x_t)
with x = L/L(0) < 1, y = L_rev/L_rev(0): ε̂ should shrink towards 0 as d grows. Where the reverse loss only
rises (y ≥ 1 throughout, as at the default step size) ε̂ is 0 for every d, and the d-dependence is in y itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from analyses.reproduce import _write_history, _write_json
from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import tokenize
from models.bilinear import BilinearModel, bilinear_card
from models.training import TrainConfig, train
from probes.views import save_png


@dataclass(frozen=True)
class BilinearConfig:
    """Dimensions to compare and the gradient-descent settings (SGD, full batch, no decay)."""

    dims: tuple[int, ...] = (64, 128, 256, 512)
    steps: int = 400
    lr: float = 100.0
    eval_every: int = 10
    seed: int = 0


def smallest_epsilon(train_ratio: Sequence[float], reverse_ratio: Sequence[float]) -> float:
    """ε̂ = max_t max(0, log y_t / log x_t) over the points with x_t < 1 (see module docstring)."""
    candidates = [max(0.0, math.log(y) / math.log(x)) for x, y in zip(train_ratio, reverse_ratio) if 0 < x < 1]
    return max(candidates, default=0.0)


def _trained_pairs(world, vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (A, B) of the one-way facts whose forward A → B alone was trained."""
    facts = [f for f in world if f.group == "one-way" and f.forward == "train"]
    a = torch.tensor([vocab.entity_ids(f.subject)[0] for f in facts])
    b = torch.tensor([vocab.entity_ids(f.object)[0] for f in facts])
    return a, b


def reproduce_bilinear(out: str | Path, config: BilinearConfig = BilinearConfig(), progress: bool = True
                       ) -> dict[str, Any]:
    """Train Θ for each d, write history, figures and summary; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    vocab = TokenVocab()
    world = reversal_world(seed=config.seed, vocab=vocab)
    batch = tokenize(world, vocab)
    sets = {"train": batch.where(split="train"), "heldout": batch.where(split="heldout")}
    a, b = _trained_pairs(world, vocab)
    runs: dict[int, dict[str, Any]] = {}
    for d in config.dims:
        model = BilinearModel(vocab.d_vocab, d, seed=config.seed)
        result = train(
            model, sets["train"],
            TrainConfig(steps=config.steps, lr=config.lr, optimizer="sgd", weight_decay=0.0,
                        eval_every=config.eval_every, seed=config.seed, progress=progress),
            eval_sets=sets, callbacks=[lambda step, m: {"theta_asymmetry": m.asymmetry()}],
            checkpoint_dir=out / f"checkpoints-d{d}", model_card=bilinear_card(vocab.d_vocab, d, config.seed),
        )
        history = result.history
        loss0, reverse0 = -history[0]["eval"]["train"]["logprob"], -history[0]["eval"]["heldout"]["logprob"]
        x = [-h["eval"]["train"]["logprob"] / loss0 for h in history]
        y = [-h["eval"]["heldout"]["logprob"] / reverse0 for h in history]
        with torch.no_grad():
            forward = ((model.U[a] @ model.theta) * model.U[b]).sum(1)
            reverse = ((model.U[b] @ model.theta) * model.U[a]).sum(1)
        runs[d] = {"history": history, "x": x, "y": y, "forward": forward, "reverse": reverse,
                   "summary": {
                       "d": d, "final_train_loss_ratio": x[-1], "final_reverse_loss_ratio": y[-1],
                       "min_reverse_loss_ratio": min(y), "epsilon_hat": smallest_epsilon(x, y),
                       "theta_asymmetry": history[-1]["theta_asymmetry"],
                       "train_accuracy": history[-1]["eval"]["train"]["accuracy"],
                       "heldout_accuracy": history[-1]["eval"]["heldout"]["accuracy"],
                       "mean_score_trained_ab": float(forward.mean()), "mean_score_reverse_ba": float(reverse.mean()),
                   }}
        _write_history(out / f"history-d{d}.jsonl", history)
    summary = {"experiment": "bilinear", "config": asdict(config), "chance_logprob": -math.log(vocab.d_vocab),
               "per_d": [runs[d]["summary"] for d in config.dims], "seconds": time.perf_counter() - began}
    save_png(loss_ratio_figure(runs), out / "loss_ratios.png")
    save_png(asymmetry_figure(runs), out / "theta_asymmetry.png")
    save_png(score_figure(runs[max(config.dims)], max(config.dims)), out / "scores.png")
    _write_json(out / "summary.json", summary)
    return summary


def format_bilinear(summary: dict[str, Any]) -> str:
    """One line per d: final L/L0 and L_rev/L_rev0, the smallest ε of Theorem 1 that holds, Θ's
    asymmetry, mean u_AᵀΘu_B (trained) and u_BᵀΘu_A (held-out reverse), accuracies."""
    lines = [f"{'d':>5s}{'L/L0':>9s}{'Lrev/Lrev0':>12s}{'ε̂':>8s}{'asym(Θ)':>9s}{'uAΘuB':>8s}{'uBΘuA':>8s}"
             f"{'train acc':>10s}{'rev acc':>8s}"]
    for row in summary["per_d"]:
        lines.append(f"{row['d']:5d}{row['final_train_loss_ratio']:9.4f}{row['final_reverse_loss_ratio']:12.4f}"
                     f"{row['epsilon_hat']:8.4f}{row['theta_asymmetry']:9.2f}{row['mean_score_trained_ab']:8.2f}"
                     f"{row['mean_score_reverse_ba']:8.2f}{row['train_accuracy']:10.3f}{row['heldout_accuracy']:8.3f}")
    if all(row["epsilon_hat"] == 0 for row in summary["per_d"]):
        lines.append("ε̂ = 0 for every d: the held-out reverse loss never fell below its start (Theorem 1's bound "
                     "holds with ε = 0), so ε̂ cannot show the trend in d; Lrev/Lrev0 does")
    return "\n".join(lines)


def loss_ratio_figure(runs: dict[int, dict[str, Any]]):
    """L_rev(t)/L_rev(0) against L(t)/L(0) for each d, with the bound x^ε for a few ε."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axis = figure.subplots()
    for d, run in runs.items():
        axis.plot(run["x"], run["y"], marker=".", label=f"d = {d} (ε̂ = {run['summary']['epsilon_hat']:.3f})")
    low = min(min(r["x"]) for r in runs.values())
    grid = [low * (1 / low) ** (i / 99) for i in range(100)]
    for epsilon in (0.01, 0.05, 0.2):
        axis.plot(grid, [g**epsilon for g in grid], color="grey", linestyle=":", linewidth=1)
        axis.annotate(f"x^{epsilon}", (grid[0], grid[0] ** epsilon), fontsize=7, color="grey")
    axis.set_xscale("log")
    axis.invert_xaxis()
    axis.set_xlabel("training loss ratio L(t)/L(0)  (training →)")
    axis.set_ylabel("held-out reverse loss ratio L_rev(t)/L_rev(0)")
    axis.set_title("Theorem 1: reverse loss stays put while training loss → 0")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def asymmetry_figure(runs: dict[int, dict[str, Any]]):
    """‖Θ − Θᵀ‖/‖Θ‖ over training for each d, from step 0 (Θ = 0: drawn as 0) to the last evaluation."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.6, 3.6), layout="constrained")
    axis = figure.subplots()
    for d, run in runs.items():
        axis.plot([h["step"] for h in run["history"]], [h["theta_asymmetry"] for h in run["history"]], "o-",
                  markersize=2.5, label=f"d = {d}")
    first = min((h["step"] for run in runs.values() for h in run["history"] if h["step"] > 0), default=None)
    axis.set_xlabel("gradient step")
    axis.set_ylabel("‖Θ − Θᵀ‖ / ‖Θ‖")
    axis.set_title("Θ: zero at step 0, asymmetric" + (f" by the first evaluation (step {first})" if first else ""))
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def score_figure(run: dict[str, Any], d: int):
    """u_Aᵀ Θ u_B against u_Bᵀ Θ u_A for the facts trained only as A → B."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.4, 4.0), layout="constrained")
    axis = figure.subplots()
    axis.scatter(run["forward"].numpy(), run["reverse"].numpy(), s=14)
    top = float(max(run["forward"].max(), run["reverse"].max()))
    bottom = float(min(run["forward"].min(), run["reverse"].min(), 0))
    axis.plot([bottom, top], [bottom, top], color="grey", linestyle=":", linewidth=1, label="symmetric")
    axis.set_xlabel("u_Aᵀ Θ u_B (trained A → B)")
    axis.set_ylabel("u_Bᵀ Θ u_A (held-out B → A)")
    axis.set_title(f"Scores of one-way facts, d = {d}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure
