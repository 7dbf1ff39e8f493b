"""Figures built from a training history (``models.training.TrainResult.history``)."""

from __future__ import annotations

import itertools
import math
import textwrap
from typing import Any, Mapping, Sequence

_STYLE = {
    "train": dict(color="#1f77b4", linestyle="-"),
    "heldout": dict(color="#d62728", linestyle="-"),
}


def logprob_curves(history: Sequence[dict[str, Any]], chance_logprob: float | Mapping[str, float] | None = None,
                   title: str = ""):
    """Mean answer log-probability of every evaluation set over training steps.

    Sets named ``train…`` are blue, ``heldout…`` red; per-direction sets dashed (forward), dotted (reverse) or, for
    other directions (a chain's links), a dash pattern each.
    The horizontal line is chance, −log(number of candidate entities); runs of different worlds in one figure
    (``chance_logprob`` a mapping, run → its chance) get one line each, labelled with the run.
    """
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    names = list(history[0]["eval"]) if history else []
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axis = figure.subplots()
    # forward dashed, reverse dotted; other directions (a chain's x→y, y→z, x⇝z) a dash pattern each, in order
    patterns = iter(("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2))))
    dashes = {"forward": next(patterns), "reverse": next(patterns)}
    for name in names:
        split, _, direction = name.partition("/")
        style = dict(_STYLE.get(split, {}))
        if direction:
            if direction not in dashes:
                dashes[direction] = next(patterns, ":")
            style.update(linestyle=dashes[direction], linewidth=1.2, alpha=0.8)
        else:
            style.update(linewidth=2.2)
        axis.plot(steps, [h["eval"][name]["logprob"] for h in history], label=name, **style)
    chances = chance_logprob if isinstance(chance_logprob, Mapping) else {"": chance_logprob}
    for (run, chance), line in zip(chances.items(), itertools.cycle(("-.", (0, (1, 3)), "--", (0, (5, 1, 1, 1))))):
        if chance is not None and math.isfinite(chance):
            axis.axhline(chance, color="grey", linewidth=1, linestyle=line,
                         label=f"chance ({run}: {chance:.2f})" if run else "chance")
    axis.set_xlabel("training step")
    axis.set_ylabel("mean log p(answer)")
    axis.set_title(title or "Train vs held-out answer log-probability")
    axis.legend(fontsize=8, loc="best")
    axis.grid(alpha=0.3)
    return figure


def circuit_asymmetry_bars(summary_rows: Sequence[dict[str, Any]], title: str = "",
                           bars: Sequence[tuple[str, str]] = (("z_trained", "trained direction"),
                                                              ("z_heldout", "held-out direction"))):
    """Per circuit, the mean z-score of the entry in the trained direction and in the held-out one
    (or, with ``bars`` = ((key, label), (key, label)), of any two directions).

    ``summary_rows`` come from :func:`analyses.probe.circuit_summary` (one per circuit).
    """
    from matplotlib.figure import Figure

    labels = [r["circuit"] for r in summary_rows]
    (first_key, first_label), (second_key, second_label) = bars
    figure = Figure(figsize=(max(4.0, 0.45 * len(labels) + 2), 3.6), layout="constrained")
    axis = figure.subplots()
    positions = range(len(labels))
    axis.bar([p - 0.2 for p in positions], [r[first_key] for r in summary_rows], width=0.4, color="#1f77b4",
             label=first_label)
    axis.bar([p + 0.2 for p in positions], [r[second_key] for r in summary_rows], width=0.4, color="#d62728",
             label=second_label)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(list(positions), labels, rotation=60 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                    fontsize=8)
    axis.set_ylabel("z-score of entry vs controls")
    axis.set_title(title or "Effective weights of one-way facts")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    return figure


def margin_bars(table, title: str = ""):
    """Mean log-prob margin over random controls per (split, direction), with 95% intervals."""
    from matplotlib.figure import Figure

    from probes.stats import ci95_half_width

    groups = table.groupby(["split", "direction"]).margin
    means, errors = groups.mean(), groups.agg(ci95_half_width)  # NaN (one fact): no whisker, not one of length 0
    figure = Figure(figsize=(5.0, 3.4), layout="constrained")
    axis = figure.subplots()
    labels = [f"{s}\n{d}" for s, d in means.index]
    colours = ["#1f77b4" if s == "train" else "#d62728" for s, _ in means.index]
    axis.bar(labels, means.values, yerr=errors.values, color=colours, capsize=4)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel("log p(answer) − mean log p(control)")
    axis.set_title(title or "Margin over random answers of the same kind")
    axis.grid(alpha=0.3, axis="y")
    return figure


def curse_bars(rows: Sequence[dict[str, Any]], title: str = ""):
    """Per run, mean log p(answer) of trained sentences and of the held-out reverse, with chance.

    ``rows`` are headline rows of reversal runs (``analyses.paper.reversal_sweep``); chance is
    −log(number of candidate entities), drawn as a grey tick over each run.
    """
    from matplotlib.figure import Figure

    labels = [r["run"] for r in rows]
    figure = Figure(figsize=(max(4.0, 1.3 * len(labels) + 2), 3.6), layout="constrained")
    axis = figure.subplots()
    positions = range(len(labels))
    for offset, key, split, label in ((-0.2, "train_logprob", "train", "trained sentences"),
                                      (0.2, "heldout_reverse_logprob", "heldout", "held-out reverse")):
        bars = axis.bar([p + offset for p in positions], [r[key] for r in rows], width=0.4,
                        color=_STYLE[split]["color"], label=label)
        axis.bar_label(bars, fmt="%.2f", fontsize=7)
    for p, row in zip(positions, rows):
        axis.hlines(row["chance_logprob"], p - 0.45, p + 0.45, color="grey", linestyle="-.",
                    label="chance" if p == 0 else None)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("mean log p(answer)")
    axis.set_title(title or "Trained vs held-out reverse log-probability")
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    axis.grid(alpha=0.3, axis="y")
    return figure


def cosine_histogram(paired, unpaired, title: str = ""):
    """Histograms of embedding cosines cos(W_E[A_i], W_E[B_j]): paired (j = i) against unpaired (j ≠ i).

    Both are normalised to density, so the two shapes compare whatever the counts.
    """
    from matplotlib.figure import Figure

    paired, unpaired = paired.numpy(), unpaired.numpy()
    low, high = min(paired.min(), unpaired.min()), max(paired.max(), unpaired.max())
    bins = [low + (high - low) * i / 25 for i in range(26)]
    figure = Figure(figsize=(5.6, 3.6), layout="constrained")
    axis = figure.subplots()
    axis.hist(unpaired, bins=bins, density=True, alpha=0.5, color="grey", label=f"unpaired A_i, B_j ({len(unpaired)})")
    axis.hist(paired, bins=bins, density=True, histtype="step", linewidth=2, color="#2ca02c",
              label=f"paired A_i, B_i ({len(paired)})")
    axis.axvline(float(paired.mean()), color="#2ca02c", linestyle=":", linewidth=1)
    axis.axvline(float(unpaired.mean()), color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("cosine similarity of embeddings")
    axis.set_ylabel("density")
    axis.set_title(title or "Embedding cosine similarity: paired vs unpaired", fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def finetune_bars(summary: dict[str, Any], title: str = ""):
    """Margin over same-kind controls (mean, 95% interval) before and after fine-tuning, one bar
    pair per (group, setting) of ``analyses.finetune``'s summary: forward on held-out and on the
    trained paraphrase, reverse (held out), reverse with the fact in context."""
    from matplotlib.figure import Figure

    cells = [(group, setting, row) for group, settings in summary["groups"].items() for setting, row in settings.items()]
    figure = Figure(figsize=(max(6.0, 1.3 * len(cells)), 3.8), layout="constrained")
    axis = figure.subplots()
    for offset, stage, colour in ((-0.2, "before", "#9e9e9e"), (0.2, "after", "#1f77b4")):
        means = [row[stage]["margin"]["mean"] for _, _, row in cells]
        errors = [(row[stage]["margin"]["ci95"][1] - row[stage]["margin"]["ci95"][0]) / 2 for _, _, row in cells]
        bars = axis.bar([p + offset for p in range(len(cells))], means, width=0.4, yerr=errors, capsize=4,
                        color=colour, label=f"{stage} fine-tuning")
        axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(cells)), [f"{group}\n{setting.replace('_', ' ').replace(' paraphrase', '')}"
                                        for group, setting, _ in cells], fontsize=7)
    axis.set_ylabel("log p(answer) − mean log p(control)")
    axis.set_title(title or f"{summary['config']['model']}: margin over answers of the same kind")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    return figure


_ROLE_STYLE = {
    "trained": dict(color="#1f77b4", linestyle="-"),
    "held-out reverse": dict(color="#d62728", linestyle="-"),
    "both": dict(color="#2ca02c", linestyle="--"),
}


def dynamics_figure(frame, title: str = ""):
    """Head-averaged z-score of the effective-weight entries over training, one panel per
    (circuit, model, layer); lines per role, bands ±1 std over statements.

    ``frame`` is ``analyses.dynamics`` ``dynamics.csv`` (rows with an empty ``head`` are drawn).
    """
    from matplotlib.figure import Figure

    layers = frame[frame["head"].isna()]
    columns = list(dict.fromkeys(zip(layers.model, layers.layer)))
    circuits = list(dict.fromkeys(layers.circuit))
    figure = Figure(figsize=(3.2 * len(columns) + 0.6, 2.8 * len(circuits) + 0.6), layout="constrained")
    axes = figure.subplots(len(circuits), len(columns), squeeze=False, sharex="col")
    names = {"ov": "OV (Y)", "qk": "QK (Z)"}
    for row, circuit in enumerate(circuits):
        for column, (model, layer) in enumerate(columns):
            axis = axes[row][column]
            panel = layers[(layers.circuit == circuit) & (layers.model == model) & (layers.layer == layer)]
            for role, part in panel.groupby("role", sort=False):
                part = part.sort_values("step")
                style = _ROLE_STYLE.get(role, {})
                axis.plot(part.step, part.z_mean, label=role, **style)
                axis.fill_between(part.step, part.z_mean - part.z_std, part.z_mean + part.z_std,
                                  color=style.get("color"), alpha=0.15, linewidth=0)
            axis.axhline(0, color="black", linewidth=0.6, zorder=0)  # beneath the curves (a reverse at z ≈ 0 too)
            axis.set_title(f"{model}, {names.get(circuit, circuit)} layer {layer}", fontsize=9)
            axis.grid(alpha=0.3)
            if column == 0:
                axis.set_ylabel("z of M[given, answer]\nvs controls (mean of heads)", fontsize=8)
            if row == len(circuits) - 1:
                axis.set_xlabel("training step")
    handles, labels = axes[0][0].get_legend_handles_labels()  # below the panels: inside, it covered the rise
    figure.legend(handles, labels, fontsize=7, loc="outside lower center", ncol=min(len(labels), 5))
    figure.suptitle(title or "Effective weights over training", fontsize=10)
    return figure


def compare_bars(rows: Sequence[dict[str, Any]], title: str = ""):
    """Per model (``analyses.compare`` rows): margin over controls and accuracy of the trained
    A → B and the held-out B → A, and the z-scores of Y[A,B] and Y[B,A]."""
    from matplotlib.figure import Figure

    labels = [textwrap.fill(r["model"], 16) for r in rows]
    figure = Figure(figsize=(max(9.0, 3.2 * len(rows)), 3.8), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (("margin", "log p(answer) − mean log p(control)"), ("accuracy", "greedy accuracy"))
    for axis, (metric, ylabel) in zip(axes, panels):
        for offset, split, label in ((-0.2, "train", "trained A → B"), (0.2, "heldout", "held-out B → A")):
            bars = axis.bar([p + offset for p in range(len(rows))], [r[f"{split}_{metric}"] for r in rows], width=0.4,
                            color=_STYLE[split]["color"], label=label)
            axis.bar_label(bars, fmt="%.2f", fontsize=7)
        axis.set_ylabel(ylabel)
    for offset, key, split, label in ((-0.2, "z_trained", "train", "Y[A,B] (trained)"),
                                      (0.2, "z_heldout", "heldout", "Y[B,A] (held out)")):
        bars = axes[2].bar([p + offset for p in range(len(rows))], [r[key] for r in rows], width=0.4,
                           color=_STYLE[split]["color"], label=label)
        axes[2].bar_label(bars, fmt="%.2f", fontsize=7)
    axes[2].set_ylabel("z-score vs control entries (OV heads / Θ)")
    for axis in axes:
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(rows)), labels, fontsize=7)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7)
    figure.suptitle(title or "Theory and trained models, same probes (one-way facts)", fontsize=10)
    return figure


def _distinct_colours(n: int) -> list[Any]:
    """``n`` colours, no two alike: matplotlib's ten-colour cycle, then tab20's and further shades of viridis."""
    from matplotlib import colormaps

    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def mitigation_bars(rows: Sequence[dict[str, Any]], title: str = ""):
    """Per mitigation test (``analyses.mitigations`` rows), one bar per model: held-out reverse
    accuracy, its margin over controls, and the z-score of the OV entry Y[B,A]."""
    from matplotlib.figure import Figure

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    tests = sorted(dict.fromkeys((r["variant"], r["test"]) for r in rows), key=lambda vt: variants.index(vt[0]))
    models = list(dict.fromkeys(r["model"] for r in rows))
    by_key = {(r["model"], r["variant"], r["test"]): r for r in rows}
    width = 0.8 / len(models)
    figure = Figure(figsize=(max(9.0, 1.8 * len(tests)), 4.6), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (("heldout_accuracy", "held-out reverse accuracy"), ("heldout_margin", "held-out reverse margin"),
              ("z_heldout", "z of OV entry Y[B,A]"))
    colours = _distinct_colours(len(models))
    for axis, (key, ylabel) in zip(axes, panels):
        for m, model in enumerate(models):
            values = [by_key[model, v, t][key] if (model, v, t) in by_key else math.nan for v, t in tests]
            positions = [p - 0.4 + width * (m + 0.5) for p in range(len(tests))]
            axis.bar(positions, values, width=width, color=colours[m], label=model)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(tests)), [f"{v}:\n{textwrap.fill(t, 22)}" for v, t in tests], rotation=60,
                        ha="right", fontsize=6)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    figure.suptitle(title or "Mitigations: what each buys back on the held-out reverse", fontsize=10)
    return figure


def _chance_column(metric: str, table) -> str | None:
    """The column of ``metric``'s chance level: ``chance_<kind>`` beside it in its summary (``groups.p2d.reverse.after.
    chance_top1`` for ``….top1``), else at the summary's top, for a log-probability, accuracy, top-1 rate or mean
    rank; None for a chance level itself or a metric of another kind."""
    prefix, _, name = metric.rpartition(".")
    kind = next((k for k in ("logprob", "accuracy", "top1", "mean_rank") if name.endswith(k)), None)
    if kind is None or name.startswith("chance"):
        return None
    return next((c for c in (f"{prefix}.chance_{kind}" if prefix else None, f"chance_{kind}") if c in table), None)


def sweep_figure(table, keys: Sequence[str], metrics: Sequence[str], title: str = "",
                 ranges: Mapping[str, tuple[float, float]] | None = None, varying: Sequence[str] | None = None):
    """One panel per metric: per grid point (x, the varying grid keys named below it), every seed's value (dots)
    and the mean with its 95% interval across seeds (error bar; Student's t cut to the metric's ``ranges`` entry,
    or Wilson's for a yes/no verdict, :func:`probes.stats.interval95`); chance, where the summary has it
    (:func:`_chance_column`), as a grey tick. ``varying``: the grid keys the sweep varies (default: those whose
    values differ in ``table``; a sweep whose other points finished no trial passes its own, so its one point is
    named, not called "all")."""
    from matplotlib.figure import Figure

    from probes.stats import interval95

    groups = list(table.groupby(list(keys), sort=False)) if keys else [((), table)]
    varying = [i for i, key in enumerate(keys) if (key in varying if varying is not None else  # labels name these
                                                   table[key].nunique() > 1)]
    labels = ["\n".join(str((p if isinstance(p, tuple) else (p,))[i]) for i in varying) or "all" for p, _ in groups]
    columns = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(max(3.2, 0.7 * len(groups) + 1.6) * columns, 3.0 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, metric in zip(axes, metrics):
        for x, (_, part) in enumerate(groups):
            values = part[metric].astype(float)
            axis.plot([x] * len(values), values, "o", color="#999999", markersize=3, alpha=0.7)
            low, high = interval95(part[metric], (ranges or {}).get(metric, (-math.inf, math.inf)))
            mean = values.mean()
            axis.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="s", color="#1f77b4", capsize=4,
                          markersize=5)  # one seed: NaN, no whisker (a capped one of length 0 would read as certain)
            chance = _chance_column(metric, part)
            if chance:
                axis.hlines(part[chance].mean(), x - 0.35, x + 0.35, color="grey", linestyle="-.")
        axis.set_xticks(range(len(groups)), labels, fontsize=7)
        axis.set_xlabel(" / ".join(keys[i] for i in varying), fontsize=7)
        axis.set_title(textwrap.fill(metric, 34), fontsize=8)
        axis.grid(alpha=0.3, axis="y")
    for axis in axes[len(metrics):]:
        axis.set_visible(False)
    figure.suptitle(title or "Sweep: mean and 95% interval across seeds", fontsize=10)
    return figure
