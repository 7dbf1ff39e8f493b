"""`revlens probe`: point every probe at a model and a fact set; tables, summary and figures.

The model is a reversal-lens checkpoint (token worlds; a transformer or the bilinear model) or
a pretrained model name / folder / GGUF file (natural-language worlds: "people", "celebrity"),
loaded offline.

Writes ``logits.csv`` (probes.logits), ``circuits.csv`` (probes.circuits), ``summary.json``
(mean forward / reverse log-prob, margins over controls, asymmetry of the effective weights,
the figure files written and their captions), ``margins.png`` / ``circuits.png`` and, for one
representative fact (the first whose reverse direction is held out, else the first with both
directions in play), where its answer comes from in the forward and in the reverse prompt:

* ``attribution.png``: direct logit attribution of the answer's first token per head
  (probes.attribution.direct_logit_attribution), forward prompt vs reverse prompt;
* ``patching.png``: the forward run's residual stream patched into the reverse run, one
  (layer, position) at a time (probes.attribution.patch_residual; prompts of different
  lengths are aligned at their end);
* ``attention_forward.html`` / ``attention_reverse.html``: every head's attention pattern on
  each prompt (circuitsvis, self-contained: no network needed to view it).

The bilinear model has no layers, heads, attention or residual stream: for it these three
are not written, and ``summary.json`` (``attribution.skipped``) and stdout say so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import pandas as pd
import torch

from facts import celebrity
from facts.io import load_jsonl
from facts.language import TRAIN_TEMPLATES, TemplateTokenizer
from facts.schema import FactSet
from facts.token_worlds import TokenVocab
from facts.tokens import Example, FactTokenizer
from models.bilinear import BilinearModel
from models.checkpoint import list_checkpoints
from models.load import load_trained
from probes.attribution import direct_logit_attribution, folded, patch_residual
from probes.circuits import EntityIds, circuit_table
from probes.logits import answer_table
from probes.views import attention_view, attribution_bar, patching_heatmap, save_html, save_png

MAX_CIRCUIT_BARS = 40
"""circuits.png draws at most this many circuits (the largest trained − held-out gaps, in model order)."""

NO_ATTRIBUTION = ("the bilinear model has no layers, heads, attention or residual stream (p(y | x) = "
                  "softmax(u_xᵀ Θ u_y)): direct logit attribution, residual patching and attention views do not "
                  "apply; Θ's entries are in circuits.csv / circuits.png")


def circuit_summary(circuits: pd.DataFrame) -> list[dict[str, Any]]:
    """Per circuit, mean z of the entry in the trained and in the held-out direction of one-way
    facts, and their difference (the asymmetry index oriented trained − held-out)."""
    one_way = circuits[(circuits.forward == "train") ^ (circuits.reverse == "train")]
    one_way = one_way[one_way.forward.notna() & one_way.reverse.notna()]
    rows = []
    for (kind, layer, head), part in circuits.groupby(["circuit", "layer", "head"], dropna=False, sort=False):
        facts = one_way.loc[one_way.index.intersection(part.index)]
        forward_trained = facts.forward == "train"
        z_trained = facts.z_ab.where(forward_trained, facts.z_ba)
        z_heldout = facts.z_ba.where(forward_trained, facts.z_ab)
        name = kind if pd.isna(layer) else f"{kind} L{int(layer)}H{int(head)}"
        rows.append({"circuit": name, "n_one_way": int(len(facts)),
                     "z_trained": float(z_trained.mean()) if len(facts) else float("nan"),
                     "z_heldout": float(z_heldout.mean()) if len(facts) else float("nan"),
                     "asymmetry": float((z_trained - z_heldout).mean()) if len(facts) else float("nan")})
    return rows


def logit_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Mean log-prob, margin and accuracy per (split, direction)."""
    out = {}
    for (split, direction), part in table.groupby(["split", "direction"]):
        out[f"{split}/{direction}"] = {
            "n": int(len(part)), "logprob": float(part.logprob.mean()), "margin": float(part.margin.mean()),
            "accuracy": float(part.correct.mean()), "mean_rank": float(part["rank"].mean()),
        }
    return out


TEXT_TEMPLATES = {"people": TRAIN_TEMPLATES, "celebrity": celebrity.TEMPLATES}
"""Sentence templates of the natural-language worlds, by world name."""


@dataclass(frozen=True)
class ProbedModel:
    """A loaded model and how it reads a fact set: ``statements`` turns a directed statement into
    prompt and answer tokens, ``entity_ids`` an entity into tokens (for the circuits),
    ``token_label`` one token into text (for the figures)."""

    model: Any
    statements: FactTokenizer
    entity_ids: EntityIds
    token_label: Callable[[int], str]
    rank_against: Literal["candidates", "controls"]
    info: dict[str, Any]


def _is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return bool(list_checkpoints(path)) or (str(path).endswith(".json") and Path(path).is_file())


def pretrained_probed(model: Any, text_tokenizer: Any, world: str, info: dict[str, Any]) -> ProbedModel:
    """A pretrained model reading a natural-language world: statements through the world's
    templates, answers ranked against their controls, entities as the tokens of " " + name."""
    statements = TemplateTokenizer(text_tokenizer, TEXT_TEMPLATES[world])
    return ProbedModel(model, statements, statements.entity_ids, lambda token: text_tokenizer.decode([token]),
                       "controls", info)


def load_probed(model_path: str | os.PathLike[str], facts: FactSet, device: str | None = None,
                backend: str = "hooked") -> ProbedModel:
    """A trained checkpoint (token worlds) or a pretrained model (natural-language worlds)."""
    if _is_checkpoint(model_path):
        model, checkpoint = load_trained(model_path, device)
        vocab = TokenVocab()
        return ProbedModel(model, vocab, vocab.entity_ids, vocab.token_name, "candidates",
                           {"model_card": checkpoint.meta.get("model"), "step": checkpoint.step})
    if facts.world not in TEXT_TEMPLATES:
        raise ValueError(
            f"{model_path}: not a reversal-lens checkpoint (no step-NNNNNN.json), and {facts.world!r} facts are "
            f"token ids only a model trained on them can read: pass a run's checkpoints/ folder, or give a "
            f"pretrained model a natural-language fact set ({sorted(TEXT_TEMPLATES)})"
        )
    from models.pretrained import load, load_tokenizer

    return pretrained_probed(load(model_path, backend=backend, device=device), load_tokenizer(model_path),
                             facts.world, {"backend": backend})


def representative_fact(facts: FactSet) -> int | None:
    """The first fact whose reverse direction is held out (its forward one in play), else the
    first with both directions in play; None when no fact has both."""
    both = [i for i, f in enumerate(facts) if f.forward is not None and f.reverse is not None]
    held_out = [i for i in both if facts[i].reverse == "heldout"]
    return (held_out or both or [None])[0]


def _statement(probed: ProbedModel, example: Example, split: str) -> dict[str, Any]:
    return {"split": split, "prompt_tokens": [probed.token_label(t) for t in example.prompt],
            "answer_token": probed.token_label(example.answer[0])}


def attribution_figures(probed: ProbedModel, facts: FactSet, out: Path,
                        patch_layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Where one representative fact's answer comes from, forward prompt vs reverse prompt.

    Writes attribution.png (direct logit attribution of each prompt's first answer token, per
    head, the 30 largest components), patching.png (log p(forward answer's first token) at the
    reverse prompt's last position after patching ``resid_pre`` of one (layer, position) from
    the forward run; ``patch_layers`` default: all) and the two attention views. Returns the
    summary entry: the fact, both statements, the patching end points and the files written.
    """
    if isinstance(probed.model, BilinearModel):
        return {"figures": [], "skipped": NO_ATTRIBUTION}
    index = representative_fact(facts)
    if index is None:
        return {"figures": [], "skipped": "no fact has both its forward and its reverse statement in play"}
    model, label, fact = probed.model, probed.token_label, facts[index]
    forward = probed.statements.example(facts, index, "forward")
    reverse = probed.statements.example(facts, index, "reverse")
    name = f"fact {index} ({fact.subject} → {fact.object}; reverse {fact.reverse})"

    attributions = direct_logit_attribution(folded(model), [forward, reverse], by="head")
    attributions["prompt → answer token"] = [f"{d} → {label(t)!r}" for d, t in
                                             zip(attributions.direction, attributions.answer_token)]
    save_png(attribution_bar(attributions, hue="prompt → answer token", top=30,
                             title=f"Direct logit attribution, {name}"), out / "attribution.png")

    patched = patch_residual(model, [forward], [reverse], site="resid_pre", layers=patch_layers)
    width = patched.metric.shape[1]
    columns = [f"{label(f)!r} / {label(r)!r}" for f, r in zip(forward.prompt[-width:], reverse.prompt[-width:])]
    answer = repr(label(forward.answer[0]))
    figure = patching_heatmap(
        patched.metric, [f"L{layer}" for layer in patched.layers], columns,
        title=f"Forward → reverse residual patching, {name}\n"
              f"log p({answer}) unpatched: forward prompt {patched.clean:.2f}, reverse prompt {patched.corrupt:.2f}",
        value_label=f"log p({answer})",
        xlabel="position, aligned at the end (forward token / reverse token)",
    )
    figure.axes[0].tick_params(axis="x", labelrotation=60)
    save_png(figure, out / "patching.png")

    layers = range(model.cfg.n_layers)
    for direction, example in (("forward", forward), ("reverse", reverse)):
        view = attention_view(model, torch.tensor(example.prompt), layers, [label(t) for t in example.prompt])
        save_html(view, out / f"attention_{direction}.html", title=f"Attention on the {direction} prompt, {name}")
    return {
        "fact": index, "forward": _statement(probed, forward, fact.forward),
        "reverse": _statement(probed, reverse, fact.reverse),
        "patching": {"metric": "log p(first token of the forward answer) at the last prompt position",
                     "site": "resid_pre", "layers": list(patched.layers), "positions_from_end": width,
                     "clean_logprob": patched.clean, "corrupted_logprob": patched.corrupt},
        "figures": ["attribution.png", "patching.png", "attention_forward.html", "attention_reverse.html"],
    }


CAPTIONS = {
    "attribution.png": "Direct logit attribution of the representative fact's answer (first token) at the last "
                       "prompt position, per head, MLP and embedding, forward prompt vs reverse prompt.",
    "patching.png": "log p(forward answer's first token) at the reverse prompt's last position after the "
                    "forward run's residual stream (resid_pre) replaces the reverse run's at one layer and "
                    "position; prompts aligned at their end.",
    "attention_forward.html": "Every head's attention pattern on the representative fact's forward prompt.",
    "attention_reverse.html": "Every head's attention pattern on the representative fact's reverse prompt.",
}


def _circuits_to_draw(per_circuit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All circuits, or the MAX_CIRCUIT_BARS whose drawn bars differ most, |z_trained − z_heldout|
    (undefined last), in model order."""
    if len(per_circuit) <= MAX_CIRCUIT_BARS:
        return per_circuit
    gaps = pd.Series([r["z_trained"] - r["z_heldout"] for r in per_circuit], dtype=float).abs().fillna(-1.0)
    keep = set(gaps.nlargest(MAX_CIRCUIT_BARS).index)
    return [r for i, r in enumerate(per_circuit) if i in keep]


def write_probe(probed: ProbedModel, facts: FactSet, out: str | os.PathLike[str], n_controls: int = 16,
                patch_layers: Sequence[int] | None = None, about: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every probe of ``probed`` on ``facts``: tables, figures and summary.json into ``out``."""
    out = Path(out)
    table = answer_table(probed.model, facts, probed.statements, n_controls=n_controls,
                         rank_against=probed.rank_against)
    circuits = circuit_table(probed.model, facts, probed.entity_ids)
    out.mkdir(parents=True, exist_ok=True)
    per_circuit = circuit_summary(circuits)
    measured = [r for r in per_circuit if r["n_one_way"]]
    best = max(measured, key=lambda r: r["asymmetry"])["circuit"] if measured else None
    table.to_csv(out / "logits.csv", index=False)
    circuits.to_csv(out / "circuits.csv", index=False)
    from analyses.figures import circuit_asymmetry_bars, margin_bars

    drawn = _circuits_to_draw(per_circuit)
    save_png(margin_bars(table), out / "margins.png")
    save_png(circuit_asymmetry_bars(drawn, title="" if drawn is per_circuit else
                                    f"The {len(drawn)} of {len(per_circuit)} circuits with the largest gap"),
             out / "circuits.png")
    attribution = attribution_figures(probed, facts, out, patch_layers)
    figures = ["margins.png", "circuits.png", *attribution["figures"]]
    summary = {
        **(about or {}), **probed.info, "logits": logit_summary(table),
        "circuits": per_circuit, "most_asymmetric_circuit": best,
        "mean_asymmetry_index": float(pd.Series([r["asymmetry"] for r in measured], dtype=float).mean()),
        "attribution": attribution, "figures": figures,
        "captions": {name: CAPTIONS[name] for name in figures if name in CAPTIONS},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def probe(model_path: str | os.PathLike[str], facts_path: str | os.PathLike[str], out: str | os.PathLike[str],
          device: str | None = None, n_controls: int = 16, backend: str = "hooked",
          patch_layers: Sequence[int] | None = None) -> dict[str, Any]:
    """Run every probe of a checkpoint or pretrained model on a fact file (see the module doc)."""
    facts: FactSet = load_jsonl(facts_path)
    probed = load_probed(model_path, facts, device, backend)
    return write_probe(probed, facts, out, n_controls, patch_layers,
                       about={"model": str(model_path), "facts": str(facts_path)})
