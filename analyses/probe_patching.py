"""`revlens probe`'s optional patching views: exact head patching (``--head-patching``), attribution
patching beside exact patching (``--attribution-patching``) and the logit lens (``--logit-lens``).

Patching reads the representative fact of :func:`analyses.probe.attribution_figures`: its forward
prompt is the clean run, its reverse prompt the corrupted one, and the metric is log p of the
reverse answer (all its tokens) after the reverse prompt, as in ``patching.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from analyses.reproduce import write_csv
from facts.schema import FactSet
from facts.tokens import Example, FactTokenizer
from probes.attribution import Patching, attribution_patch, logit_lens, patch_heads
from probes.views import logit_lens_lines, patching_grid, patching_heatmap, save_png

CAPTIONS = {
    "head_patching.png": "log p of the reverse answer (all its tokens) after the reverse prompt, when one head's "
                         "output (hook_z, every position) is taken from the forward run, per layer and head.",
    "attribution_patching.png": "Attribution patching (first-order estimate from one forward and one backward "
                                "pass: (a_forward − a_reverse) · ∂ log p / ∂a at the reverse run) beside exact "
                                "activation patching of the same sites: change of log p of the reverse answer per "
                                "layer and position (resid_pre) and per layer and head (hook_z); Pearson r and the "
                                "speed-up in the title.",
    "attribution_patching.csv": "One row per patched site (resid_pre at a layer and position counted from the end, "
                                "or a head's hook_z at a layer): exact and estimated change of log p of the reverse "
                                "answer after the reverse prompt, patched from the forward run.",
    "logit_lens.png": "Logit lens: mean log p of each statement's answer (first token) read off the residual stream "
                      "before each layer and after the last (through the final norm and the unembedding), per "
                      "split and direction.",
    "logit_lens.csv": "One row per statement and stage: log p and rank of the answer's first token read off the "
                      "residual stream at the last prompt position.",
}


def _change(patching: Patching) -> torch.Tensor:
    return patching.metric - patching.corrupt


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Pearson r of two equal-length samples; None (undefined) with fewer than 3 points or no spread."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _frame(exact: Patching, estimate: Patching, labels: Sequence[str]) -> pd.DataFrame:
    sites = exact.to_frame()  # its layer and its position from the end (or head) of every site
    return pd.DataFrame({
        "site": exact.site, "layer": sites.layer, "index": sites[exact.axis],
        "what": np.tile(list(labels), len(exact.layers)),
        "exact_change": _change(exact).reshape(-1).numpy(), "estimated_change": _change(estimate).reshape(-1).numpy(),
    })


def write_patching_extras(model: Any, forward: Example, reverse: Example, residual: Patching, residual_seconds: float,
                          name: str, label: Callable[[int], str], answer: str, out: Path,
                          layers: Sequence[int] | None, head_patching: bool, attribution: bool) -> dict[str, Any]:
    """Exact head patching (``head_patching``) and attribution patching checked against the exact
    patching of the same sites (``attribution``) of one fact; ``residual`` is the exact resid_pre
    patching already run for patching.png, ``residual_seconds`` its time, ``answer`` the reverse answer's
    text. Heads need forward and reverse prompts of one length (a head is patched at every position);
    otherwise they are left out and the entry says why. Returns the summary entries and the files written."""
    entry: dict[str, Any] = {"figures": []}
    heads, heads_seconds, heads_skipped = None, 0.0, None
    began = time.perf_counter()
    if len(forward.prompt) == len(reverse.prompt):
        heads = patch_heads(model, [forward], [reverse], layers=layers, targets=[reverse.answer])
    else:  # a head is patched at every position; any other refusal is an error, not a skip
        heads_skipped = (f"the forward prompt has {len(forward.prompt)} tokens and the reverse one "
                         f"{len(reverse.prompt)}: a head is patched at every position, so both need one length")
    heads_seconds = time.perf_counter() - began
    head_labels = [f"H{h}" for h in range(model.cfg.n_heads)]
    if head_patching:
        if heads is None:
            entry["head_patching"] = {"skipped": heads_skipped}
        else:
            figure = patching_heatmap(heads.metric, [f"L{layer}" for layer in heads.layers], head_labels,
                                      title=f"Forward → reverse head patching (hook_z, all positions), {name}\n"
                                            f"unpatched {heads.corrupt:.2f}, after the forward prompt {heads.clean:.2f}",
                                      value_label=f"log p({answer!r})", xlabel="head")
            save_png(figure, out / "head_patching.png")
            best = int(torch.argmax(heads.metric))
            entry["head_patching"] = {
                "clean_logprob": heads.clean, "corrupted_logprob": heads.corrupt, "seconds": heads_seconds,
                "best_head": f"L{heads.layers[best // heads.metric.shape[1]]}H{best % heads.metric.shape[1]}",
                "best_logprob": float(heads.metric.max())}
            entry["figures"].append("head_patching.png")
    if attribution:
        sites = ("resid_pre",) if heads is None else ("resid_pre", "z")
        began = time.perf_counter()
        estimates = attribution_patch(model, [forward], [reverse], sites=sites, layers=layers, targets=[reverse.answer])
        seconds = time.perf_counter() - began
        width = residual.metric.shape[1]
        columns = [f"{label(f)!r} / {label(r)!r}" for f, r in zip(forward.prompt[-width:], reverse.prompt[-width:])]
        frames = [_frame(residual, estimates["resid_pre"], columns)]
        rows = [("resid_pre", [("exact", _change(residual)), ("attribution", _change(estimates["resid_pre"]))],
                 [f"L{layer}" for layer in residual.layers], columns, "position from the end (forward / reverse)")]
        exact_seconds = residual_seconds
        if heads is not None:
            frames.append(_frame(heads, estimates["z"], head_labels))
            rows.append(("heads (hook_z)", [("exact", _change(heads)), ("attribution", _change(estimates["z"]))],
                         [f"L{layer}" for layer in heads.layers], head_labels, "head"))
            exact_seconds += heads_seconds
        table = pd.concat(frames, ignore_index=True)
        write_csv(table, out / "attribution_patching.csv")
        correlation = {site: pearson(part.exact_change, part.estimated_change) for site, part in table.groupby("site")}
        correlation["all"] = pearson(table.exact_change, table.estimated_change)
        shown = ", ".join(f"{site} {'undefined' if r is None else f'{r:.3f}'}" for site, r in correlation.items())
        figure = patching_grid(rows, value_label=f"change of log p({answer!r})", title=(
            f"Attribution patching vs exact patching, forward → reverse, {name}\n"
            f"Pearson r: {shown}; {seconds:.2f} s vs {exact_seconds:.2f} s ({exact_seconds / seconds:.1f}× faster)"))
        save_png(figure, out / "attribution_patching.png")
        entry["attribution_patching"] = {
            "sites": list(sites), **({} if heads_skipped is None else {"heads_skipped": heads_skipped}),
            "cells": int(len(table)), "pearson": correlation, "seconds": seconds, "exact_seconds": exact_seconds,
            "speedup": exact_seconds / seconds, "clean_logprob": estimates["resid_pre"].clean,
            "corrupted_logprob": estimates["resid_pre"].corrupt,
            "max_abs_error": float((table.exact_change - table.estimated_change).abs().max())}
        entry["figures"] += ["attribution_patching.png", "attribution_patching.csv"]
    return entry


def write_logit_lens(model: Any, facts: FactSet, statements: FactTokenizer, out: Path,
                     split_of: Callable[[str], str] = lambda split: split) -> dict[str, Any]:
    """The logit lens (:func:`probes.attribution.logit_lens`) of every statement in play: logit_lens.csv,
    logit_lens.png and the summary entry (mean log p of the answer per stage, split and direction)."""
    examples = [statements.example(facts, index, direction) for index, direction, _ in facts.statements()]
    table = logit_lens(model, examples)
    table["split"] = [split_of(s) for s in table.split]
    write_csv(table, out / "logit_lens.csv")
    means = table.groupby(["split", "direction", "layer"], sort=False).logprob.mean()
    save_png(logit_lens_lines(table), out / "logit_lens.png")
    per_group = {f"{split}/{direction}": [float(v) for v in part.to_numpy()]
                 for (split, direction), part in means.groupby(level=[0, 1], sort=False)}
    return {"statements": len(examples), "stages": list(dict.fromkeys(table.stage)), "mean_logprob": per_group,
            "figures": ["logit_lens.png", "logit_lens.csv"]}


def format_extras(summary: dict[str, Any]) -> list[str]:
    """Lines of the probe's one-screen text for the optional views that ran."""
    lines = []
    attribution = summary.get("attribution", {})
    if "head_patching" in attribution:
        heads = attribution["head_patching"]
        lines.append(f"head patching: skipped ({heads['skipped']})" if "skipped" in heads else
                     f"head patching: best head {heads['best_head']} moves log p from {heads['corrupted_logprob']:.3f} "
                     f"(unpatched) to {heads['best_logprob']:.3f} "
                     f"({heads['best_logprob'] - heads['corrupted_logprob']:+.3f})")
    if "attribution_patching" in attribution:
        entry = attribution["attribution_patching"]
        shown = ", ".join(f"{site} {'undefined' if r is None else f'{r:.3f}'}" for site, r in entry["pearson"].items())
        lines.append(f"attribution patching vs exact ({entry['cells']} sites): Pearson r {shown}; max |error| "
                     f"{entry['max_abs_error']:.2f} nats; {entry['seconds']:.2f} s vs {entry['exact_seconds']:.2f} s "
                     f"({entry['speedup']:.1f}× faster)")
    if "logit_lens" in summary:
        lens = summary["logit_lens"]
        finals = ", ".join(f"{group} {values[-1]:.2f}" for group, values in lens["mean_logprob"].items())
        lines.append(f"logit lens of {lens['statements']} statements: final-stage mean log p {finals}")
    return lines
