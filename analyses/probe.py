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

With ``tracing`` (``revlens probe --tracing``), causal tracing (probes.tracing) of the first N
facts, every direction in play: ``tracing.csv`` (one row per statement, component, layer and
position) and ``tracing.png`` (mean indirect effect per layer and position bucket, per component
and question kind), and ``summary.json``'s ``tracing`` headline.

Optional views (:mod:`analyses.probe_patching`, :mod:`analyses.multiple_choice`): ``head_patching.png``
(each head's output patched forward → reverse), ``attribution_patching.csv/png`` (every layer × position
and layer × head estimated from one forward + backward pass, beside exact patching, with Pearson r and
the speed-up), ``logit_lens.csv/png`` and, for a text model, ``multiple_choice.csv`` (the forward and
reverse questions asked as multiple choice).

The bilinear model has no layers, heads, attention or residual stream: for it these three
are not written, and ``summary.json`` (``attribution.skipped``) and stdout say so.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from analyses.probe_patching import CAPTIONS as PATCHING_CAPTIONS
from analyses.probe_patching import format_extras, write_logit_lens, write_patching_extras
from analyses.reproduce import _write_json, write_csv
from facts import celebrity
from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, TemplateTokenizer
from facts.berglund import in_fact_terms
from facts.questions import QuestionSet
from facts.schema import FactSet
from facts.sources import read_fact_source
from facts.token_worlds import TokenVocab
from facts.tokens import Example, FactTokenizer
from models.backend import wrapper_name
from models.bilinear import BilinearModel
from models.checkpoint import list_checkpoints
from models.cpu_matmul import DEFAULT, float32_matmul
from models.load import load_trained
from models.scoring import model_device
from probes.attribution import (
    check_attribution_architecture, check_attribution_readable, direct_logit_attribution, patch_residual,
)
from probes.circuits import EntityIds, check_circuits_architecture, check_circuits_readable, circuit_table
from probes.logits import answer_table, kind_candidates
from probes.views import attention_view, attribution_bar, patching_heatmap, save_html, save_png

MAX_CIRCUIT_BARS = 40
"""circuits.png draws at most this many circuits (the largest trained − held-out gaps, in model order)."""

NO_ATTRIBUTION = ("the bilinear model has no layers, heads, attention or residual stream (p(y | x) = "
                  "softmax(u_xᵀ Θ u_y)): direct logit attribution, residual patching and attention views do not "
                  "apply; Θ's entries are in circuits.csv / circuits.png")


def circuit_summary(circuits: pd.DataFrame) -> list[dict[str, Any]]:
    """Per circuit, mean z of the entry in the trained and in the held-out direction of one-way
    facts, and their difference (the asymmetry index oriented trained − held-out)."""
    one_way = ((circuits.forward == "train") ^ (circuits.reverse == "train")) & circuits.forward.notna() \
        & circuits.reverse.notna()
    forward_trained = circuits.forward == "train"
    z_trained = circuits.z_ab.where(forward_trained, circuits.z_ba)
    z_heldout = circuits.z_ba.where(forward_trained, circuits.z_ab)
    return [{"circuit": name, "n_one_way": n, "z_trained": means[0], "z_heldout": means[1], "asymmetry": means[2]}
            for name, n, means in _per_circuit_means(circuits, one_way, (z_trained, z_heldout, z_trained - z_heldout))]


def prior_circuit_summary(circuits: pd.DataFrame) -> list[dict[str, Any]]:
    """Per circuit, for a model never trained on the facts: mean z of the forward entry (A → B) and of
    the reverse entry (B → A) over facts with both directions in play, and their difference."""
    both = circuits.forward.notna() & circuits.reverse.notna()
    return [{"circuit": name, "n_facts": n, "z_forward": means[0], "z_reverse": means[1], "asymmetry": means[2]}
            for name, n, means in _per_circuit_means(circuits, both,
                                                     (circuits.z_ab, circuits.z_ba, circuits.z_ab - circuits.z_ba))]


def ranked_by_asymmetry(per_circuit: Sequence[dict[str, Any]], count: str = "n_one_way", magnitude: bool = False
                        ) -> list[dict[str, Any]]:
    """The circuits of :func:`circuit_summary` (``count="n_facts"``: of :func:`prior_circuit_summary`) that hold
    facts (``count`` > 0) and a finite asymmetry, the most asymmetric first: largest asymmetry, or largest
    |asymmetry| with ``magnitude``; ties in table order. A NaN asymmetry (no finite z-score: the controls' entries
    do not vary, as in a layer whose weights fine-tuning did not change) never ranks, so it can never be "the most
    asymmetric"; when no circuit has a finite one the list is empty."""
    measured = [r for r in per_circuit if r[count] and _finite(r["asymmetry"])]
    return sorted(measured, key=lambda r: -abs(r["asymmetry"]) if magnitude else -r["asymmetry"])


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not None, NaN or ±inf)."""
    return isinstance(value, numbers.Real) and math.isfinite(value)


def _per_circuit_means(circuits: pd.DataFrame, rows: pd.Series, values: Sequence[pd.Series]
                       ) -> list[tuple[str, int, list[float]]]:
    """Per circuit (``circuit``, ``layer``, ``head``; in order of first appearance): its name ("ov L3H5",
    "direct"), how many of ``rows`` (a boolean mask) it holds, and the mean of each of ``values`` over those
    rows, NaN skipped (NaN where none): pandas' ``Series.mean`` of each group's rows in table order, the same
    sums in the same order, from one grouping of the table instead of a table selection per circuit."""
    groups = circuits.groupby(["circuit", "layer", "head"], dropna=False, sort=False)
    codes = groups.ngroup().to_numpy()
    picked = np.flatnonzero(rows.to_numpy(dtype=bool))
    picked = picked[np.argsort(codes[picked], kind="stable")]  # by circuit, table order within one
    bounds = np.searchsorted(codes[picked], np.arange(groups.ngroups + 1))
    columns = [value.to_numpy(dtype=float)[picked] for value in values]
    firsts = np.unique(codes, return_index=True)[1]  # each circuit's first row, by code
    keys = circuits[["circuit", "layer", "head"]].iloc[firsts].itertuples(index=False)
    out = []
    for code, (kind, layer, head) in enumerate(keys):
        low, high = bounds[code], bounds[code + 1]
        name = kind if pd.isna(layer) else f"{kind} L{int(layer)}" + ("" if pd.isna(head) else f"H{int(head)}")
        out.append((name, int(high - low), [_nanmean(column[low:high]) for column in columns]))
    return out


def _nanmean(values: np.ndarray) -> float:
    """pandas' ``Series.mean`` (skipping NaN; NaN for none), computed as pandas does: NaN set to 0, summed, / count."""
    missing = np.isnan(values)
    count = len(values) - int(missing.sum())
    return float(np.where(missing, 0.0, values).sum() / count) if count else float("nan")


def logit_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Mean log-prob, margin, accuracy and rank per (split, direction), and how many answers the rank is among
    (``n_candidates``; a range where the rows differ)."""
    out = {}
    for (split, direction), part in table.groupby(["split", "direction"]):
        among = sorted({int(n) for n in part.n_candidates})
        out[f"{split}/{direction}"] = {
            "n": int(len(part)), "logprob": float(part.logprob.mean()), "margin": float(part.margin.mean()),
            "accuracy": float(part.correct.mean()), "mean_rank": float(part["rank"].mean()),
            "n_candidates": among[0] if len(among) == 1 else [among[0], among[-1]],
        }
    return out


PRIOR = "prior knowledge, not trained"
"""The split of every statement probed in a model that was not trained on the fact file."""
PRIOR_NOTE = ("prior knowledge, not trained: this model learned nothing from the fact file here, so its train / "
              "held-out splits do not apply; forward and reverse are compared as the model already knew them, and "
              "no prediction of the paper about trained directions applies")

TEXT_TEMPLATES = {"people": TRAIN_TEMPLATES, "celebrity": celebrity.TEMPLATES}
"""Sentence templates of the natural-language worlds, by world name."""


@dataclass(frozen=True)
class ProbedModel:
    """A loaded model and how it reads a fact set: ``statements`` turns a directed statement into
    prompt and answer tokens, ``entity_ids`` an entity into tokens (for the circuits),
    ``token_label`` one token into text (for the figures), ``text`` tokens into text as a whole (an answer:
    a character a byte-level BPE splits over two tokens is no character in either alone)."""

    model: Any
    statements: FactTokenizer
    entity_ids: EntityIds
    token_label: Callable[[int], str]
    text: Callable[[Sequence[int]], str]
    rank_against: Literal["candidates", "controls"]
    info: dict[str, Any]
    trained_on_facts: bool = True
    """False for a pretrained model read with a fact file it was not trained on (:data:`PRIOR`)."""


def multiple_choice_questions(source: Any, facts: FactSet, k: int, checkpoint: bool, model: Any) -> QuestionSet:
    """The questions ``probe --multiple-choice K`` asks of ``facts`` (the first ``--limit`` of ``source``'s), in
    their terms (:func:`facts.berglund.in_fact_terms`); refused (``ValueError``, ``FactError``) for a checkpoint (token ids), for
    facts with no sentences to ask them in, or pools too small for one wrong option. The CLI asks it before the
    run folder is touched."""
    from analyses.multiple_choice import options_count

    if checkpoint:
        raise ValueError(f"--multiple-choice: {model} is a checkpoint of token ids; multiple choice asks a text "
                         "model questions in words")
    from facts.schema import FactError

    try:  # one training paraphrase: multiple choice asks the test questions only, which do not depend on it
        asked = source.questions(TRAIN_TEMPLATES, TEST_TEMPLATES, 1)
    except FactError as error:
        raise FactError(f"--multiple-choice: {error} (multiple choice asks the held-out paraphrases and reverses of "
                        f"a fact file's trained statements, Berglund et al.'s questions)") from None
    # a Berglund folder's questions in its facts' terms; a fact file's are already (its world may be named "berglund":
    # a run's facts.jsonl written from a folder); each asks about its fact's given entity, which no option may be
    placed = in_fact_terms(asked.questions, facts) if source.experiment is not None else asked.questions
    kept = tuple(q for q in placed if q.fact < len(facts))
    questions = QuestionSet(train=(), questions=kept, source=asked.source, facts=facts)
    options_count(questions, k)
    return questions


def _is_checkpoint(path: str | os.PathLike[str]) -> bool:
    return bool(list_checkpoints(path)) or (str(path).endswith(".json") and Path(path).is_file())


def pretrained_probed(model: Any, text_tokenizer: Any, world: str, info: dict[str, Any],
                      templates: Mapping[str, Sequence[str]] | None = None) -> ProbedModel:
    """A pretrained model reading a natural-language world: statements through ``templates`` (default:
    the world's, :data:`TEXT_TEMPLATES`), answers ranked against their controls, entities as the tokens
    of " " + name. It was not trained on the facts (its answers are :data:`PRIOR`)."""
    statements = TemplateTokenizer(text_tokenizer, TEXT_TEMPLATES[world] if templates is None else templates)
    return ProbedModel(model, statements, statements.entity_ids, lambda token: text_tokenizer.decode([token]),
                       lambda tokens: text_tokenizer.decode(list(tokens)), "controls", info, trained_on_facts=False)


def text_templates(model_path: str | os.PathLike[str], facts: FactSet,
                   templates: Mapping[str, Sequence[str]] | None = None) -> Mapping[str, Sequence[str]]:
    """The sentence templates a pretrained model reads ``facts`` in: ``templates`` (a templates file's, a Berglund
    folder's) when given, else their world's own (:data:`TEXT_TEMPLATES`); refused (``ValueError``) for facts that
    come without sentences (a token world, a CSV). The CLI asks it before the run folder is touched."""
    if templates is not None:
        return templates
    if facts.world not in TEXT_TEMPLATES:
        raise ValueError(
            f"{model_path}: not a reversal-lens checkpoint (no step-NNNNNN.json), and {facts.world!r} facts come "
            f"without sentences: pass a run's checkpoints/ folder for token ids, or give a pretrained model a "
            f"natural-language fact set ({sorted(TEXT_TEMPLATES)}), a Berglund folder, or --templates-file"
        )
    return TEXT_TEMPLATES[facts.world]


def load_probed(model_path: str | os.PathLike[str], facts: FactSet, device: str | None = None,
                backend: str = "hooked", templates: Mapping[str, Sequence[str]] | None = None) -> ProbedModel:
    """A trained checkpoint (token worlds) or a pretrained model (natural-language facts, in
    ``templates``' sentences or, for the built-in worlds, their own). A pretrained model whose circuits or
    attribution would not be exact on ``backend`` (the circuits of OLMo 2, BLOOM, Gemma 4 or Gemma 3n on any;
    Granite's attribution) is refused from the architecture its files declare, before any weight is read."""
    if _is_checkpoint(model_path):
        model, checkpoint = load_trained(model_path, device)
        vocab = TokenVocab()
        return ProbedModel(model, vocab, vocab.entity_ids, vocab.token_name,
                           lambda tokens: " ".join(map(vocab.token_name, tokens)), "candidates",
                           {"model_card": checkpoint.meta.get("model"), "step": checkpoint.step,
                            "trained_world": (checkpoint.meta.get("run") or {}).get("world")})
    templates = text_templates(model_path, facts, templates)
    from models.pretrained import declared_architecture, gives_hooked_transformer, load, one_parse, resolve

    with one_parse(model_path):  # a GGUF's metadata read once, for the architecture and then the load
        architecture, name = declared_architecture(model_path), resolve(model_path).name
        check_circuits_architecture(name, architecture)  # before any weight is read: OLMo 2's circuits on any backend,
        check_attribution_architecture(name, architecture, gives_hooked_transformer(backend))  # Granite's attribution
        model = load(model_path, backend=backend, device=device)  # with its tokenizer, BOS as the files declare
    return pretrained_probed(model, model.tokenizer, facts.world, {"backend": wrapper_name(model)}, templates)


def representative_fact(facts: FactSet) -> int | None:
    """The first fact whose reverse direction is held out (its forward one in play), else the
    first with both directions in play; None when no fact has both."""
    both = [i for i, f in enumerate(facts) if f.forward is not None and f.reverse is not None]
    held_out = [i for i in both if facts[i].reverse == "heldout"]
    return (held_out or both or [None])[0]


def _statement(probed: ProbedModel, example: Example, split: str) -> dict[str, Any]:
    return {"split": split if probed.trained_on_facts else PRIOR,
            "prompt_tokens": [probed.token_label(t) for t in example.prompt],
            "answer_token": probed.token_label(example.answer[0]),
            "answer": probed.text(example.answer)}


def _norm_note(model: Any) -> str:
    """Title lines for models whose heads write through a norm after attention (Gemma 2/3) and for models that
    cap their logits (Gemma 2), whose terms sum to the logit before its cap, c·artanh(logit / c)."""
    notes = []
    if getattr(model.cfg, "use_normalization_before_and_after", False) or hasattr(model.blocks[0], "ln1_post"):
        notes.append("heads through the post-attention RMSNorm, linear at its cached scale: γ ⊙ (z_h W_O) / s")
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        notes.append(f"terms sum to the logit before its soft cap, c·artanh(logit / c), c = {cap:g}")
    return "".join("\n" + note for note in notes)


def attribution_figures(probed: ProbedModel, facts: FactSet, out: Path,
                        patch_layers: Sequence[int] | None = None, head_patching: bool = False,
                        attribution_patching: bool = False) -> dict[str, Any]:
    """Where one representative fact's answer comes from, forward prompt vs reverse prompt.

    Writes attribution.png (direct logit attribution of each prompt's own answer, its first token
    (the one the last prompt position predicts), per head, the 30 largest components), patching.png
    (log p of the reverse answer, all its tokens, after the reverse prompt with ``resid_pre`` of one
    (layer, position) patched from the forward run; ``patch_layers`` default: all) and the two
    attention views; with ``head_patching`` / ``attribution_patching`` also head_patching.png and
    attribution_patching.png/.csv (:func:`analyses.probe_patching.write_patching_extras`). Returns the
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
    name = f"fact {index} ({fact.subject} → {fact.object}; " + (f"reverse {fact.reverse})" if probed.trained_on_facts
                                                                else f"{PRIOR})")

    attributions = direct_logit_attribution(model, [forward, reverse], by="head")
    attributions["prompt → answer token"] = [f"{d} → {label(t)!r}" for d, t in
                                             zip(attributions.direction, attributions.answer_token)]
    save_png(attribution_bar(attributions, hue="prompt → answer token", top=30,
                             title=f"Direct logit attribution of each prompt's own answer (its first token), {name}"
                                   + _norm_note(model)), out / "attribution.png")

    began = time.perf_counter()
    patched = patch_residual(model, [forward], [reverse], site="resid_pre", layers=patch_layers,
                             targets=[reverse.answer])
    residual_seconds = time.perf_counter() - began
    width = patched.metric.shape[1]
    columns = [f"{label(f)!r} / {label(r)!r}" for f, r in zip(forward.prompt[-width:], reverse.prompt[-width:])]
    answer = probed.text(reverse.answer)
    tokens = f"{len(reverse.answer)} token{'s' * (len(reverse.answer) > 1)}"
    figure = patching_heatmap(
        patched.metric, [f"L{layer}" for layer in patched.layers], columns,
        title=f"Forward → reverse residual patching, {name}\n"
              f"metric: log p(reverse answer {answer!r}, all {tokens}) after the reverse prompt; unpatched "
              f"{patched.corrupt:.2f}, after the forward prompt {patched.clean:.2f}",
        value_label=f"log p({answer!r})",
        xlabel="position, aligned at the end (forward token / reverse token)",
    )
    figure.axes[0].tick_params(axis="x", labelrotation=60)
    save_png(figure, out / "patching.png")

    extras = {"figures": []}
    if head_patching or attribution_patching:
        extras = write_patching_extras(model, forward, reverse, patched, residual_seconds, name, label, answer, out,
                                       patch_layers, head_patching, attribution_patching)
    layers = range(model.cfg.n_layers)
    for direction, example in (("forward", forward), ("reverse", reverse)):
        view = attention_view(model, torch.tensor(example.prompt), layers, [label(t) for t in example.prompt])
        save_html(view, out / f"attention_{direction}.html", title=f"Attention on the {direction} prompt, {name}")
    return {
        "fact": index, "forward": _statement(probed, forward, fact.forward),
        "reverse": _statement(probed, reverse, fact.reverse),
        "patching": {"metric": f"log p(the reverse answer {answer!r}, all {tokens}, each given the ones before) "
                               "after the reverse prompt",
                     "site": "resid_pre", "layers": list(patched.layers), "positions_from_end": width,
                     "clean_logprob": patched.clean, "corrupted_logprob": patched.corrupt},
        **{key: value for key, value in extras.items() if key != "figures"},
        "figures": ["attribution.png", "patching.png", "attention_forward.html", "attention_reverse.html",
                    *extras["figures"]],
    }


def tracing_figures(probed: ProbedModel, facts: FactSet, out: Path, n_facts: int = 4, n_samples: int = 3,
                    seed: int = 0) -> dict[str, Any]:
    """Causal tracing (:mod:`probes.tracing`) of the first ``n_facts`` facts, every statement in play:
    writes tracing.csv and tracing.png, returns the summary entry (headline per question kind, the
    noise, the seconds per statement)."""
    import time

    from probes.tracing import average_over_statements, components_of, trace_facts, tracing_headline
    from probes.views import tracing_heatmaps

    if isinstance(probed.model, BilinearModel):
        return {"figures": [], "skipped": "the bilinear model has no layers or residual stream to trace"}
    chosen = facts.first(min(n_facts, len(facts)))
    began = time.perf_counter()
    table = trace_facts(probed.model, chosen, probed.statements, components=components_of(probed.model), n_samples=n_samples,
                        seed=seed, token_label=probed.token_label)
    seconds = time.perf_counter() - began
    if not probed.trained_on_facts:
        table["split"] = PRIOR
    write_csv(table, out / "tracing.csv")
    kind = "" if probed.trained_on_facts else f" ({PRIOR})"
    save_png(tracing_heatmaps(average_over_statements(table),
                              title=f"Causal tracing{kind}: p(answer) restored minus corrupted, mean over the "
                                    f"statements of {len(chosen)} facts (n per panel), {n_samples} noise samples"),
             out / "tracing.png")
    statements = int(len(table.drop_duplicates(["fact", "direction"])))
    return {"facts": len(chosen), "statements": statements, "n_samples": n_samples,
            "noise_std": float(table.noise_std.iloc[0]), "seconds_per_statement": seconds / statements,
            "headline": tracing_headline(table), "figures": ["tracing.png"]}


CAPTIONS = {
    "margins.png": "Mean log-probability margin of the true answer over random answers of the same kind, per split "
                   "and direction (trained, held out), with 95% intervals. Paper: a margin for trained directions, "
                   "≈ 0 for held-out reverses.",
    "circuits.png": "Per circuit (direct path, and OV and QK per head), the mean z-score of the trained direction's "
                    "entry and of the held-out direction's entry over one-way facts, against random controls of the "
                    "same row. Paper: Y[A, B] large where A → B was trained, Y[B, A] ≈ 0.",
    "multiple_choice.csv": "The forward (held-out paraphrase) and reverse questions as multiple choice, every option "
                           "under every letter once: per order the letters' probabilities, and per question the "
                           "debiased choice (option scores averaged over the orders).",
    "attribution.png": "Direct logit attribution of the representative fact's answers at the last prompt position "
                       "(each prompt's own answer, its first token), per head, MLP and embedding (the 30 largest by "
                       "mean |value|), forward prompt vs reverse prompt; heads behind a post-attention norm are read "
                       "through it at its cached scale; a model that soft-caps its logits (Gemma 2) is attributed "
                       "before the cap (its title says so).",
    "patching.png": "log p of the reverse answer (all its tokens) after the reverse prompt, when the forward run's "
                    "residual stream (resid_pre) replaces the reverse run's at one layer and position; prompts "
                    "aligned at their end.",
    "attention_forward.html": "Every head's attention pattern on the representative fact's forward prompt.",
    "attention_reverse.html": "Every head's attention pattern on the representative fact's reverse prompt.",
    "tracing.png": "Causal tracing (Meng et al. 2022): the given entity's token embeddings noised (3× the embeddings' "
                   "std), one layer's hidden state, MLP or attention output restored from the clean run at one "
                   "position; the mean rise of p(answer, all its tokens) over the corrupted run, per layer and "
                   "position bucket; peak and its 95% interval across facts in each title.",
    **PATCHING_CAPTIONS,
}


PRIOR_CAPTIONS = {
    "multiple_choice.csv": f"Each fact's forward (A → B) and reverse (B → A) question as multiple choice, every option "
                           f"under every letter once ({PRIOR}: a group's trained order does not apply, so the "
                           f"setting is the fact's direction, as in logits.csv).",
    "margins.png": f"Mean log-probability margin of the true answer over random answers of the same kind, forward "
                   f"and reverse ({PRIOR}: the model never trained on these facts here), with 95% intervals.",
    "circuits.png": f"Per circuit (direct path, and OV and QK per head), the mean z-score of the forward entry "
                    f"(A → B) and of the reverse entry (B → A) of facts with both directions in play, against random "
                    f"controls of the same row ({PRIOR}).",
}


def _circuits_to_draw(per_circuit: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All circuits, or the MAX_CIRCUIT_BARS whose drawn bars differ most, |asymmetry| (the mean gap
    between the two bars; undefined last), in model order."""
    if len(per_circuit) <= MAX_CIRCUIT_BARS:
        return per_circuit
    gaps = pd.Series([r["asymmetry"] for r in per_circuit], dtype=float).abs().fillna(-1.0)
    keep = set(gaps.nlargest(MAX_CIRCUIT_BARS).index)
    return [r for i, r in enumerate(per_circuit) if i in keep]


def write_probe(probed: ProbedModel, facts: FactSet, out: str | os.PathLike[str], n_controls: int = 16,
                patch_layers: Sequence[int] | None = None, about: dict[str, Any] | None = None,
                tracing: dict[str, int] | None = None, head_patching: bool = False,
                attribution_patching: bool = False, lens: bool = False,
                choices: tuple[QuestionSet, int] | None = None,
                candidates: Sequence[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """Every probe of ``probed`` on ``facts``: tables, figures and summary.json into ``out``.

    A model not trained on the facts (``probed.trained_on_facts`` False) is probed for its prior
    knowledge: every row's split is :data:`PRIOR` and the circuits compare the forward entry with
    the reverse one (:func:`prior_circuit_summary`) instead of trained with held-out directions. A
    circuit summary that no fact defines writes no circuits.png and says why. ``choices``: (questions,
    K) to ask the forward and reverse questions as multiple choice with K options
    (:mod:`analyses.multiple_choice`; multiple_choice.csv). ``candidates``: the answers a statement is ranked
    among where the model ranks against every candidate (default: each answer's kind in ``facts``,
    :func:`probes.logits.kind_candidates`; a fact file cut by ``--limit`` passes its whole file's, so a rank and its
    chance level do not depend on the cut). ``seed``
    draws the controls (of the margins and the circuits' z-scores), tracing's noise and multiple choice's options.
    """
    out = Path(out)
    trained = probed.trained_on_facts
    table = answer_table(probed.model, facts, probed.statements, candidates=candidates, n_controls=n_controls,
                         rank_against=probed.rank_against, seed=seed)
    circuits = circuit_table(probed.model, facts, probed.entity_ids, seed=seed)
    if not trained:  # nothing was trained: no statement is "train" or "heldout", in any table
        table["split"], table["trained"] = PRIOR, False
        for direction in ("forward", "reverse"):
            circuits[direction] = circuits[direction].astype(object).mask(circuits[direction].notna(), PRIOR)
    out.mkdir(parents=True, exist_ok=True)
    per_circuit = circuit_summary(circuits) if trained else prior_circuit_summary(circuits)
    count = "n_one_way" if trained else "n_facts"
    measured = [r for r in per_circuit if r[count] and pd.notna(r["asymmetry"])]
    # trained: the largest trained − held-out gap (the paper's direction); prior knowledge: the largest either way
    best = next((r["circuit"] for r in ranked_by_asymmetry(per_circuit, count, magnitude=not trained)), None)
    write_csv(table, out / "logits.csv")
    write_csv(circuits, out / "circuits.csv")
    from analyses.figures import circuit_asymmetry_bars, margin_bars

    save_png(margin_bars(table, title="" if trained else f"Margin over random answers ({PRIOR})"), out / "margins.png")
    figures, notes = ["margins.png"], {}
    if measured:
        drawn = _circuits_to_draw(measured)
        title = "" if len(drawn) == len(per_circuit) else (
            f"The {len(drawn)} of {len(per_circuit)} circuits with the largest gap" if len(drawn) < len(measured)
            else f"The {len(drawn)} of {len(per_circuit)} circuits whose gap is defined")
        bars = (("z_trained", "trained direction"), ("z_heldout", "held-out direction")) if trained else (
            ("z_forward", "forward (A → B)"), ("z_reverse", "reverse (B → A)"))
        save_png(circuit_asymmetry_bars(drawn, title=title or ("" if trained else f"Effective weights, {PRIOR}"),
                                        bars=bars), out / "circuits.png")
        figures.append("circuits.png")
    else:
        defined = any(r[count] for r in per_circuit)  # facts in play, but no finite z-score (controls that do not vary)
        notes["circuits_undefined"] = (
            ("no circuit has a finite z-score on a fact with one direction trained and the other held out (the "
             "controls' entries do not vary: too few controls?)" if defined else
             "no fact has one direction trained and the other held out") + ", so no circuit has a trained − "
            "held-out asymmetry; circuits.png is not written" if trained else
            "no fact has both directions in play with finite z-scores, so no circuit has a forward − reverse "
            "asymmetry; circuits.png is not written")
    attribution = attribution_figures(probed, facts, out, patch_layers, head_patching, attribution_patching)
    figures += attribution["figures"]
    if lens and not isinstance(probed.model, BilinearModel):
        notes["logit_lens"] = write_logit_lens(probed.model, facts, probed.statements, out,
                                               split_of=(lambda split: split) if trained else (lambda split: PRIOR))
        figures += notes["logit_lens"]["figures"]
    if choices is not None:
        from analyses.multiple_choice import multiple_choice_summary, multiple_choice_table

        asked = multiple_choice_table(probed.model, choices[0], probed.statements.tokenizer, choices[1], seed)
        if not trained:  # no trained order to be "forward" to: each question is named by its fact's direction,
            asked["split"], asked["setting"] = PRIOR, asked["direction"]  # as logits.csv names it
        write_csv(asked, out / "multiple_choice.csv")
        notes["multiple_choice"] = multiple_choice_summary(asked)
        figures.append("multiple_choice.csv")
    if tracing is not None:  # {"n_facts": N, "n_samples": S}
        notes["tracing"] = tracing_figures(probed, facts, out, **tracing, seed=seed)
        figures += notes["tracing"]["figures"]
    captions = {name: CAPTIONS[name] for name in figures if name in CAPTIONS}
    if not trained:
        captions.update({name: PRIOR_CAPTIONS[name] for name in figures if name in PRIOR_CAPTIONS})
    summary = {
        **(about or {}), **probed.info, **({} if trained else {"prior_knowledge": PRIOR_NOTE}),
        "logits": logit_summary(table), "circuits": per_circuit, "most_asymmetric_circuit": best,
        "mean_asymmetry_index": float(pd.Series([r["asymmetry"] for r in measured], dtype=float).mean())
        if measured else None,
        **notes, "attribution": attribution, "figures": figures, "captions": captions,
    }
    _write_json(out / "summary.json", summary)
    return summary


def format_probe(summary: dict[str, Any]) -> str:
    """The one-screen text of a probe run: log p, margin and accuracy per split and direction, the
    most asymmetric circuit (or why there is none) and the patching end points."""
    width = max(18, *(len(name) + 2 for name in summary["logits"]))
    lines = [summary["prior_knowledge"], ""] if "prior_knowledge" in summary else []
    lines.append(f"{'':{width}s}{'n':>6s}{'log p':>9s}{'margin':>9s}{'accuracy':>10s}")
    for name, row in summary["logits"].items():
        lines.append(f"{name:{width}s}{row['n']:6d}{row['logprob']:9.2f}{row['margin']:9.2f}{row['accuracy']:10.3f}")
    lines.append("")
    if summary["most_asymmetric_circuit"] is None:
        lines.append(f"circuit asymmetry undefined: {summary['circuits_undefined']}")
    else:
        gap = "forward − reverse" if "prior_knowledge" in summary else "trained − held-out"
        lines.append(f"most asymmetric circuit: {summary['most_asymmetric_circuit']} (mean asymmetry index "
                     f"{gap} over circuits {summary['mean_asymmetry_index']:.2f})")
    attribution = summary["attribution"]
    if "skipped" in attribution:
        lines.append(f"no attribution figures: {attribution['skipped']}")
    else:
        patching = attribution["patching"]
        lines.append(f"attribution figures of fact {attribution['fact']}: {patching['metric']}: "
                     f"{patching['corrupted_logprob']:.2f}; after the forward prompt instead "
                     f"{patching['clean_logprob']:.2f}")
    lines += format_extras(summary)
    if "multiple_choice" in summary:
        from analyses.multiple_choice import format_multiple_choice

        lines += format_multiple_choice({"model": summary["multiple_choice"]})
    if "tracing" in summary and "headline" in summary["tracing"]:
        lines.append(format_tracing(summary["tracing"]))
    return "\n".join(lines)


def format_tracing(tracing: dict[str, Any]) -> str:
    """Per question kind: clean and corrupted p(answer), and per component the peak site with its rise and
    the largest restored p(answer) anywhere."""
    lines = [f"causal tracing of {tracing['statements']} statements ({tracing['n_samples']} noise samples, "
             f"{tracing['seconds_per_statement']:.1f} s each):"]
    for question, entry in tracing["headline"].items():
        peaks = "; ".join(f"{component} peak L{c['peak_layer']} {c['peak_bucket']} +{c['peak_effect']:.3f}"
                          + (f" (n {c['peak_n']})" if "peak_n" in c else "")
                          + f", max restored {c['max_restored_prob']:.3f}"
                          for component, c in entry["components"].items())
        lines.append(f"  {question}: clean {entry['clean_prob']:.3f}, corrupted {entry['corrupted_prob']:.3f}; {peaks}")
    return "\n".join(lines)


def probe(model_path: str | os.PathLike[str], facts_path: str | os.PathLike[str], out: str | os.PathLike[str],
          device: str | None = None, n_controls: int = 16, backend: str = "hooked",
          patch_layers: Sequence[int] | None = None, limit: int | None = None,
          templates_file: str | os.PathLike[str] | None = None,
          tracing: dict[str, int] | None = None, head_patching: bool = False, attribution_patching: bool = False,
          lens: bool = False, multiple_choice: int = 0, seed: int = 0) -> dict[str, Any]:
    """Run every probe of a checkpoint or pretrained model on ``facts_path`` (see the module doc): a
    fact JSONL, a CSV of facts or a Berglund experiment-1 folder, read as ``finetune-facts`` reads it
    (:func:`facts.sources.read_fact_source`; sentences from ``templates_file`` when given);
    ``limit``: only its first N facts (recorded in the summary); ``tracing``: {"n_facts", "n_samples"}
    of causal tracing, or None for none; ``head_patching``, ``attribution_patching``, ``lens``: the optional
    views of :mod:`analyses.probe_patching`; ``multiple_choice``: K > 0 asks the forward (held-out paraphrase)
    and reverse questions of a text model as multiple choice with K options (:mod:`analyses.multiple_choice`);
    ``seed``: what :func:`write_probe` draws."""
    source = read_fact_source(facts_path, templates_file)
    facts: FactSet = source.facts
    if limit is not None:
        facts = facts.first(limit)
    choices = None
    if multiple_choice:
        choices = (multiple_choice_questions(source, facts, multiple_choice, _is_checkpoint(model_path), model_path),
                   multiple_choice)
    probed = load_probed(model_path, facts, device, backend, source.sentence_templates(None))
    # the CLI checks them before its folder where the files declare the count; here before any file is written
    n_layers = getattr(getattr(probed.model, "cfg", None), "n_layers", None)
    for layer in patch_layers or ():
        if isinstance(n_layers, int) and not 0 <= layer < n_layers:
            raise ValueError(f"--patch-layers {layer}: out of range; this model has layers 0…{n_layers - 1}")
    check_circuits_readable(probed.model)  # before any probe runs: OLMo 2 and Gemma 4 on any backend,
    check_attribution_readable(probed.model)  # and for attribution OLMo 2 or Granite's multipliers on a bridge
    # a pretrained model's products on oneDNN where MKL's are the slower float32 ones; a token-world
    # checkpoint's are too small to gain (models.cpu_matmul)
    kernels_for = nullcontext(DEFAULT) if probed.trained_on_facts else float32_matmul(model_device(probed.model))
    with kernels_for as kernels:
        return write_probe(probed, facts, out, n_controls, patch_layers,
                           about={"model": str(model_path), "facts": str(facts_path), "limit": limit, "seed": seed,
                                  **({} if templates_file is None else {"templates_file": str(templates_file)}),
                                  "float32_matmul": kernels},
                           tracing=tracing, head_patching=head_patching, attribution_patching=attribution_patching,
                           lens=lens, choices=choices, candidates=kind_candidates(source.facts), seed=seed)
