"""Pictures of probe results: matplotlib PNGs (headless, Agg backend) and circuitsvis HTML.

Figures are built on an explicit ``Figure`` (never pyplot's global state), so they are safe
to make from scripts, tests and threads.

circuitsvis views are written with :func:`save_html` as self-contained pages: circuitsvis's
``str(view)`` and ``show_code()`` import the JavaScript from a CDN (blank offline), and
``_repr_html_()`` probes the internet first; ``view.local_src`` inlines the ~1.3 MB bundle.
"""

from __future__ import annotations

import hashlib
import html
import json
import operator
import os
import re
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from circuitsvis.attention import attention_heads
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float, Int
from torch import Tensor

from facts.io import atomic_write, write_text_atomic
from probes.hooks import check_head, check_layer, collect


def save_png(figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically (:func:`facts.io.atomic_write`) and return the path."""
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight"))


def heatmap_panels(
    panels: Sequence[tuple[str, Float[Tensor, "rows cols"]]],
    suptitle: str = "",
    value_label: str = "log p(candidate | given)",
):
    """One heatmap per panel (rows: given entity, columns: candidate answer; diagonal = truth).

    Panels share one colour scale so that a missing diagonal reads as missing, not rescaled.
    """
    from matplotlib.figure import Figure

    values = [m for _, m in panels if m.numel()]
    low = min(float(m.min()) for m in values) if values else 0.0
    high = max(float(m.max()) for m in values) if values else 1.0
    figure = Figure(figsize=(3.6 * len(panels) + 0.8, 3.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for axis, (title, matrix) in zip(axes, panels):
        image = axis.imshow(matrix.numpy(), cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("candidate answer")
        axis.set_ylabel("given entity")
        axis.set_xticks([])
        axis.set_yticks([])
    if image is not None:
        figure.colorbar(image, ax=list(axes), shrink=0.85, label=value_label)
    if suptitle:
        figure.suptitle(suptitle)
    return figure


def attention_view(
    model: Any,
    tokens: Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
    layer: int | Sequence[int],
    token_labels: Sequence[str],
    heads: Sequence[int] | None = None,
) -> RenderedHTML:
    """circuitsvis ``attention_heads`` view of the attention patterns on one sequence.

    ``pattern[h, q, k]`` = softmax_k(q·k / √d_head) of head h, read from
    ``blocks.{layer}.attn.hook_pattern``; ``layer`` is one layer or several (their heads side
    by side, named "L{layer}H{head}"); ``heads`` selects heads in each layer (default: all).
    """
    try:  # one layer: a Python, NumPy or 0-d tensor integer (``df.layer.unique()``'s too)
        layers = [operator.index(layer)]
    except TypeError:
        layers = list(layer)
    if not layers:
        raise ValueError("attention_view needs at least one layer")
    layers = [check_layer(model, chosen_layer) for chosen_layer in layers]
    chosen = list(range(model.cfg.n_heads)) if heads is None else [check_head(model, layers[0], h)[1] for h in heads]
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"attention_view shows one sequence: tokens must be [pos] or [1, pos], "
                         f"got {list(tokens.shape)}")
    if len(token_labels) != tokens.shape[1]:
        raise ValueError(f"{len(token_labels)} token labels for {tokens.shape[1]} tokens: give one label per token")
    names = [f"blocks.{chosen_layer}.attn.hook_pattern" for chosen_layer in layers]
    patterns = collect(model, tokens, re.compile("|".join(re.escape(name) for name in names)))
    view = attention_heads(
        attention=torch.cat([patterns[name][0, chosen] for name in names]).float().cpu(),
        tokens=list(token_labels),
        attention_head_names=[f"L{chosen_layer}H{h}" for chosen_layer in layers for h in chosen],
        mask_upper_tri=True,
    )
    return RenderedHTML(script_safe_props(view.local_src), script_safe_props(view.cdn_src))


_RENDER_CALL = re.compile(r"(render\(\s*\"[\w-]+\",\s*(?:CircuitsVis\.)?\w+,\s*)(.*)(\s*\)\s*</script>\s*)$", re.S)
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_safe_props(source: str) -> str:
    """A circuitsvis page with the JSON props of its ``render(id, View, props)`` call made safe
    inside ``<script>``: ``<``, ``>``, ``&`` (and U+2028/9) written as ``\\u003c`` etc., so a token
    label such as ``</script><script>…`` stays a string. These characters occur in JSON only
    inside strings, where the escape means the same character: the view shows the same labels.
    """
    start = source.rfind("render(")
    match = _RENDER_CALL.match(source, start) if start >= 0 else None
    if match is None:
        raise ValueError("circuitsvis page without the expected CircuitsVis.render(id, View, props) call; "
                         "cannot make its labels safe, so it is not written")
    props = match.group(2)
    json.loads(props)  # what circuitsvis wrote is plain JSON, else refuse
    safe = re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_ESCAPES[m.group()], props)
    return source[: match.start(2)] + safe + source[match.end(2):]


_REMOTE = re.compile(
    r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//"""  # <script src="https://...">, <link href="//...">
    r"""|(?:import|from)\s*\(?\s*["'](?:https?:)?//"""  # import ... from "https://...", import("//...")
    r"""|unpkg\.com|jsdelivr""",
    re.IGNORECASE,
)


def remote_references(page: str) -> list[str]:
    """Every place where ``page`` would load a script or resource from the network."""
    return [match.group(0) for match in _REMOTE.finditer(page)]


_VIEW_ID = re.compile(r"circuits-vis-[0-9a-f]+-[0-9a-f]+")


def stable_view_ids(source: str) -> str:
    """circuitsvis names a view's element with a random id; name it by the page's content instead,
    so the same view always gives the same bytes (runs stay byte-for-byte reproducible)."""
    digest = hashlib.sha256(_VIEW_ID.sub("", source).encode()).hexdigest()[:12]
    for number, random_id in enumerate(dict.fromkeys(_VIEW_ID.findall(source))):
        source = source.replace(random_id, f"circuits-vis-{digest}-{number}")
    return source


def save_html(view: RenderedHTML, path: str | os.PathLike[str], title: str = "reversal-lens") -> Path:
    """Write a circuitsvis view as a self-contained HTML page that renders with no network.

    The page wraps ``view.local_src`` (the JavaScript bundle inlined) with its element id made
    deterministic (:func:`stable_view_ids`); a page that would still reference the network
    raises instead of being written.
    """
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{stable_view_ids(view.local_src)}\n</body>\n</html>\n"
    )
    remote = remote_references(page)
    if remote:
        raise ValueError(f"the view still references the network ({remote[:3]}); refusing to write {path}")
    return write_text_atomic(path, page)


def attribution_bar(
    table: pd.DataFrame,
    value: str = "attribution",
    hue: str = "direction",
    top: int | None = 30,
    title: str = "",
):
    """Mean ``value`` per component, one bar per ``hue`` group (e.g. forward vs reverse prompts).

    ``table`` is a :func:`probes.attribution.direct_logit_attribution` frame (or any frame with
    ``component``, ``hue`` and ``value`` columns). Components keep the model's order; with
    ``top`` only the components of largest mean |value| in any group are drawn.
    """
    from matplotlib.figure import Figure

    means = table.pivot_table(index="component", columns=hue, values=value, aggfunc="mean", sort=False)
    if top is not None and len(means) > top:
        keep = set(means.abs().max(axis=1).nlargest(top).index)
        means = means.loc[[c for c in means.index if c in keep]]
    figure = Figure(figsize=(6.4, 0.14 * len(means) * max(1, len(means.columns)) + 1.4), layout="constrained")
    axis = figure.subplots()
    height = 0.8 / max(1, len(means.columns))
    positions = range(len(means))
    for offset, group in enumerate(means.columns):
        axis.barh([p + offset * height for p in positions], means[group].to_numpy(), height=height, label=str(group))
    axis.set_yticks([p + height * (len(means.columns) - 1) / 2 for p in positions], list(means.index), fontsize=8)
    axis.invert_yaxis()
    axis.axvline(0.0, color="black", linewidth=0.6)
    axis.set_xlabel(f"mean {value}")
    axis.legend(title=hue, fontsize=8)
    if title:
        axis.set_title(title)
    return figure


def patching_heatmap(
    values: Float[Tensor, "rows cols"],
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str = "",
    value_label: str = "log p(answer) after patching",
    xlabel: str = "position",
    ylabel: str = "layer",
):
    """Heatmap of a patching result (rows: layers, columns: positions or heads)."""
    from matplotlib.figure import Figure

    rows, cols = values.shape
    for labels, count, what in ((row_labels, rows, "row"), (col_labels, cols, "column")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"{len(labels)} {what} labels for {count} {what}s")
    figure = Figure(figsize=(max(5.0, 2.7 + 0.5 * cols), 2.8 + 0.35 * rows), layout="constrained")  # room for a title
    axis = figure.subplots()
    image = axis.imshow(values.detach().float().cpu().numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
    axis.set_xticks(range(cols), list(col_labels) if col_labels is not None else [str(c) for c in range(cols)])
    axis.set_yticks(range(rows), list(row_labels) if row_labels is not None else [str(r) for r in range(rows)])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    figure.colorbar(image, ax=axis, label=value_label)
    if title:
        figure.suptitle(title)  # above the colour bar too, whose label is tall
    return figure


def patching_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, Float[Tensor, "layer index"]]], Sequence[str], Sequence[str], str]],
    title: str = "",
    value_label: str = "change of the metric",
):
    """Patching maps side by side: one figure row per ``(row_title, panels, row_labels, col_labels, xlabel)``,
    ``panels`` a list of ``(panel_title, values)`` of one shape (e.g. exact and estimated patching of the
    same sites), drawn on one colour scale per row, centred on 0 (red up, blue down), from the finite values of
    all its panels (:func:`symmetric_bound`)."""
    from matplotlib.figure import Figure

    n_columns = max(len(panels) for _, panels, *_ in rows)
    widths = [values.shape[1] for _, panels, *_ in rows for _, values in panels]
    heights = [values.shape[0] for _, panels, *_ in rows for _, values in panels]
    figure = Figure(figsize=(n_columns * max(3.2, 1.2 + 0.35 * max(widths)) + 1.0,
                             len(rows) * (1.6 + 0.18 * max(heights)) + 0.6), layout="constrained")
    axes = figure.subplots(len(rows), n_columns, squeeze=False)
    for row, (row_title, panels, row_labels, col_labels, xlabel) in enumerate(rows):
        bound = symmetric_bound(row_title, panels)
        image = None
        for column, (panel_title, values) in enumerate(panels):
            axis = axes[row, column]
            image = axis.imshow(values.detach().float().cpu().numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound,
                                aspect="auto", interpolation="nearest")
            axis.set_title(f"{row_title}: {panel_title}", fontsize=9)
            axis.set_xticks(range(values.shape[1]), list(col_labels), fontsize=7, rotation=60 if len(col_labels) > 8 else 0)
            step = max(1, values.shape[0] // 12)
            axis.set_yticks(range(0, values.shape[0], step), list(row_labels)[::step], fontsize=7)
            axis.set_xlabel(xlabel, fontsize=8)
            axis.set_ylabel("layer", fontsize=8)
        for axis in axes[row, len(panels):]:
            axis.set_visible(False)
        figure.colorbar(image, ax=list(axes[row, : len(panels)]), shrink=0.9, label=value_label)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def symmetric_bound(row_title: str, panels: Sequence[tuple[str, Tensor]]) -> float:
    """b, for a colour scale [−b, b] centred on 0: the largest |value| among the finite values of every panel
    (at least 1e-9, so that a row of zeros still has a scale). A NaN (a site with no value) or ±inf is drawn as
    matplotlib draws it (blank, or the scale's end) but sets no scale (a NaN in a row's first panel had given the
    row ±1e-9, one in a later panel had left that panel out of it). A row with no finite value has nothing to scale
    to, and is refused."""
    finite = [values[torch.isfinite(values)] for values in (values.detach().float() for _, values in panels)]
    largest = [float(values.abs().max()) for values in finite if values.numel()]
    if not largest:
        raise ValueError(f"patching_grid: row {row_title!r} has no finite value in any of its panels "
                         f"({', '.join(title for title, _ in panels)}): no colour scale to draw it on")
    return max(1e-9, max(largest))


def logit_lens_lines(table: pd.DataFrame, title: str = ""):
    """Mean log p of the answer per logit-lens stage (:func:`probes.attribution.logit_lens` rows), one line
    per split and direction, with the stage names on the x axis."""
    from matplotlib.figure import Figure

    stages = list(dict.fromkeys(table.stage))
    figure = Figure(figsize=(max(5.0, 1.5 + 0.3 * len(stages)), 3.6), layout="constrained")
    axis = figure.subplots()
    for (split, direction), part in table.groupby(["split", "direction"], sort=False):
        means = part.groupby("layer").logprob.mean()
        axis.plot(means.index, means.to_numpy(), marker="o", label=f"{split}/{direction}")
    axis.set_xticks(range(len(stages)), stages, rotation=60, fontsize=7)
    axis.set_xlabel("residual stream read at")
    axis.set_ylabel("mean log p(answer's first token)")
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    return figure


def tracing_heatmaps(average: pd.DataFrame, title: str = "", value_label: str = "mean indirect effect on p(answer)"):
    """Causal-tracing heatmaps (:func:`probes.tracing.average_over_statements`): one row of panels per
    question kind ("split/direction"), one panel per component, layers × position buckets, one shared
    colour scale; each panel's title names its statements (n), its peak site and the peak's 95% interval across
    them."""
    from matplotlib.figure import Figure

    from probes.tracing import BUCKETS

    questions = list(dict.fromkeys(f"{s}/{d}" for s, d in zip(average.split, average.direction)))
    components = list(dict.fromkeys(average.component))
    buckets = [b for b in BUCKETS if b in set(average.bucket.astype(str))]
    n_layers = int(average.layer.max()) + 1
    low, high = min(0.0, float(average["mean"].min())), max(1e-9, float(average["mean"].max()))
    figure = Figure(figsize=(3.2 * len(components) + 1.2, (1.2 + 0.12 * n_layers) * len(questions) + 0.8),
                    layout="constrained")
    axes = figure.subplots(len(questions), len(components), squeeze=False)
    image = None
    for row, question in enumerate(questions):
        split, direction = question.rsplit("/", 1)
        for column, component in enumerate(components):
            part = average[(average.split == split) & (average.direction == direction) & (average.component == component)]
            grid = part.pivot_table(index="layer", columns="bucket", values="mean", observed=False).reindex(
                index=range(n_layers), columns=buckets)
            axis = axes[row, column]
            image = axis.imshow(grid.to_numpy(), cmap="viridis", vmin=low, vmax=high, aspect="auto",
                                interpolation="nearest", origin="lower")
            best = part.loc[part["mean"].idxmax()]
            axis.set_title(f"{question} (n {int(part.n.max())}), {component}\npeak L{int(best.layer)} {best.bucket}: "
                           f"{best['mean']:.3f} [{best.ci_low:.3f}, {best.ci_high:.3f}]", fontsize=8)
            axis.set_xticks(range(len(buckets)), buckets, rotation=60, fontsize=7)
            axis.set_yticks(range(0, n_layers, max(1, n_layers // 6)))
            axis.set_ylabel("layer")
    if image is not None:
        figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=value_label)
    if title:
        figure.suptitle(title)
    return figure
