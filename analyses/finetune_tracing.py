"""Where the fine-tuned fact lives: causal tracing before and after `finetune-facts`, and the weight change
read at the entities.

:class:`FinetuneTracing` is started on the pretrained model (it keeps a copy of the weights before
fine-tuning, or the model itself when the caller changes it no more, and traces the first N facts of the
tested group, forward = the trained direction, reverse = the held-out one, in the first training
paraphrase) and finished on the fine-tuned model (the same statements traced again;
:func:`probes.circuits.weight_change_table` per layer). It writes
``tracing.csv`` (both stages, column ``stage``), ``tracing_before.png`` / ``tracing_after.png``,
``weight_change.csv`` and ``weight_change.png``, and returns the summary entry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from analyses.reproduce import write_csv
from facts.language import TRAIN_TEMPLATES, TemplateTokenizer
from facts.schema import FactSet

TRACED_COMPONENTS = ("resid_post", "mlp_out")
"""The hidden state after each layer and the MLP's output (attention's is left out to keep it cheap)."""


def weight_change_summary(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Per change (delta_mlp, delta_ov) and layer, over one-way facts: mean z of the trained and of
    the held-out direction's entry against its controls, and their difference (:func:`analyses.probe.circuit_summary`)."""
    from analyses.probe import circuit_summary

    return circuit_summary(table)


def traceable_facts(facts: FactSet) -> list[int]:
    """The facts tracing reads, in order: each trained forward with its reverse held out (a traced fact's
    statements are its trained answer and the reverse it was never taught)."""
    return [i for i, f in enumerate(facts) if f.forward == "train" and f.reverse == "heldout"]


class FinetuneTracing:
    """Tracing before fine-tuning at construction, after it in :meth:`finish`."""

    def __init__(self, model: Any, facts: FactSet, tokenizer: Any, n_facts: int = 2, n_samples: int = 2,
                 seed: int = 0, handed_over: bool = False,
                 templates: Mapping[str, Sequence[str]] = TRAIN_TEMPLATES) -> None:
        """``handed_over``: the caller changes none of ``model``'s weights from now on (``finetune-facts`` trains
        the transformers model and converts it anew), so ``model`` itself is the model before fine-tuning that
        :meth:`finish` reads; otherwise a copy of it is kept. ``templates``: the training templates by relation
        (a templates file's, when the run had one): each statement is traced in its first, trained, paraphrase."""
        self.statements = TemplateTokenizer(tokenizer, templates)
        self.facts, self.tokenizer, self.n_samples, self.seed = facts, tokenizer, n_samples, seed
        tested = traceable_facts(facts)[:n_facts]
        self.chosen = [(i, d) for i in tested for d in ("forward", "reverse")]
        if handed_over:
            self.before = model
        else:
            from models.backend import copy_model

            self.before = copy_model(model).eval()  # runs on its own once `model` is released
        began = time.perf_counter()
        self.tables = {"before": self._trace(model)}
        self.seconds = {"before": time.perf_counter() - began}

    def _trace(self, model: Any) -> pd.DataFrame:
        from probes.tracing import trace_facts

        if not self.chosen:
            return pd.DataFrame()
        return trace_facts(model, self.facts, self.statements, self.chosen, components=TRACED_COMPONENTS,
                           n_samples=self.n_samples, seed=self.seed, token_label=lambda t: self.tokenizer.decode([t]))

    def finish(self, model: Any, out: Path) -> dict[str, Any]:
        from probes.circuits import weight_change_table
        from probes.tracing import average_over_statements, tracing_headline
        from probes.views import save_png, tracing_heatmaps

        from analyses.figures import circuit_asymmetry_bars

        began = time.perf_counter()
        self.tables["after"] = self._trace(model)
        self.seconds["after"] = time.perf_counter() - began
        entry: dict[str, Any] = {"statements": len(self.chosen), "n_samples": self.n_samples,
                                 "components": list(TRACED_COMPONENTS), "figures": []}
        if not self.chosen:
            entry["not_traced"] = NOT_TRACED
        else:
            both = pd.concat([t.assign(stage=stage) for stage, t in self.tables.items()], ignore_index=True)
            write_csv(both, out / "tracing.csv")
            for stage, table in self.tables.items():
                entry[stage] = tracing_headline(table)
                save_png(tracing_heatmaps(average_over_statements(table),
                                          title=f"Causal tracing {stage} fine-tuning"), out / f"tracing_{stage}.png")
                entry["figures"].append(f"tracing_{stage}.png")
            entry["seconds_per_statement"] = {stage: s / len(self.chosen) for stage, s in self.seconds.items()}
        changes = weight_change_table(self.before, model, self.facts, self.statements, self.statements.entity_ids,
                                      seed=self.seed)
        write_csv(changes, out / "weight_change.csv")
        entry["weight_change"] = weight_change_summary(changes)
        save_png(circuit_asymmetry_bars(entry["weight_change"], title="Fine-tuning's weight change read at the "
                                        "entities (ΔMLP linearised, ΔOV), z against controls"),
                 out / "weight_change.png")
        entry["figures"].append("weight_change.png")
        entry["headline"] = tracing_words(entry)
        del self.before
        return entry


BUCKET_WORDS = {"before": "the tokens before the given entity", "given first": "the given entity's first token",
                "given middle": "the given entity's middle tokens", "given last": "the given entity's last token",
                "after first": "the first token after it", "further": "the further tokens",
                "last": "the last prompt token"}
COMPONENT_WORDS = {"resid_post": "the hidden state", "mlp_out": "the MLP output", "attn_out": "the attention output",
                   "resid_pre": "the residual stream entering the layer"}
NO_FINITE_ASYMMETRY = "z is undefined where the controls' entries do not vary, as at weights that did not change"
"""Why a layer's weight change can have no finite trained − held-out asymmetry to rank."""
NOT_TRACED = ("no fact is trained forward with its reverse held out (p2d's kind; d2p facts train the reverse): "
              "tracing follows a trained forward answer and its held-out reverse")
"""Why a run traced no statement (its weight change is still read)."""
NOTHING_TO_RECOVER = 0.01
"""A peak rise of p(answer) below this is reported as nothing recovered."""


def _layer_ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → "0–2, 5, 7–8"."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def _where_recovered(component: str, headline: dict[str, Any]) -> str:
    """Where ``component`` restores at least half its peak rise, e.g. "the hidden state: layers 0–8 at the given
    entity's last token and layers 20–29 at the last prompt token (peak +0.61 at L4 given last)"."""
    words = COMPONENT_WORDS.get(component, component)
    if headline["peak_effect"] < NOTHING_TO_RECOVER:
        return f"{words}: nowhere (largest rise +{max(headline['peak_effect'], 0):.3f})"
    sites = " and ".join(f"layer{'s' if len(layers) > 1 else ''} {_layer_ranges(layers)} at {BUCKET_WORDS[bucket]}"
                         for bucket, layers in headline["half_peak_layers"].items())
    statements = f", {headline['peak_n']} statement{'s' if headline['peak_n'] != 1 else ''}" \
        if "peak_n" in headline else ""  # a summary written before peak_n was recorded
    return (f"{words}: {sites} (peak +{headline['peak_effect']:.3f} at L{headline['peak_layer']} "
            f"{headline['peak_bucket']}{statements})")


def tracing_words(entry: dict[str, Any]) -> str:
    """The headline in words, per stage: where the trained forward answer is recovered (every site whose mean rise
    of p(answer) over the noised run is at least half the component's peak rise; "nowhere" when the peak is below
    :data:`NOTHING_TO_RECOVER`), how much of the held-out reverse answer any restored site gives back, and the
    layers where the weight change read at the entities is most asymmetric (among those with a finite asymmetry,
    :func:`analyses.probe.ranked_by_asymmetry`; when none has one, it says so)."""
    sentences = []
    for stage in ("before", "after"):
        questions = entry.get(stage, {})
        forward, reverse = questions.get("train/forward"), questions.get("heldout/reverse")
        parts = []
        if forward:
            where = "; ".join(_where_recovered(c, h) for c, h in forward["components"].items())
            parts.append(f"the forward answer (p {forward['clean_prob']:.3f}, noised {forward['corrupted_prob']:.3f}) "
                         f"is recovered by {where}")
        if reverse:
            most = max(c["max_restored_prob"] for c in reverse["components"].values())
            parts.append(f"the held-out reverse answer (p {reverse['clean_prob']:.2g}, noised "
                         f"{reverse['corrupted_prob']:.2g}) is restored to at most p {most:.2g} anywhere")
        if parts:
            sentences.append(f"{stage.capitalize()} fine-tuning, " + "; ".join(parts) + ".")
    return " ".join(sentences + _weight_change_sentences(entry.get("weight_change", [])))


def _weight_change_sentences(weight_change: list[dict[str, Any]]) -> list[str]:
    """Per change (ΔMLP, ΔOV) with one-way facts: the layer whose change is most asymmetric (largest finite
    trained − held-out asymmetry, :func:`analyses.probe.ranked_by_asymmetry`), or that none has a finite one."""
    from analyses.probe import ranked_by_asymmetry

    changes, undefined = [], []
    for kind, name in (("delta_mlp", "ΔMLP"), ("delta_ov", "ΔOV")):
        rows = [r for r in weight_change if r["circuit"].startswith(kind + " ") and r["n_one_way"]]
        ranked = ranked_by_asymmetry(rows)
        if ranked:
            top = ranked[0]
            changes.append(f"{name} at {top['circuit'].split()[-1]} (z trained {top['z_trained']:.2f}, held-out "
                           f"{top['z_heldout']:.2f}, {top['n_one_way']} one-way facts)")
        elif rows:
            undefined.append(name)
    sentences = ["The weight change read at the entities is most asymmetric for " + " and ".join(changes) + "."
                 ] if changes else []
    if undefined:
        sentences.append(f"{' and '.join(undefined)}: no layer has a finite asymmetry ({NO_FINITE_ASYMMETRY}).")
    return sentences


def format_finetune_tracing(entry: dict[str, Any]) -> str:
    """The headline in words (:func:`tracing_words`), then before → after: per question kind the peak restored site
    of each component and the largest restored p(answer); the weight change's trained and held-out z per layer (the
    most asymmetric five by |asymmetry|, :func:`analyses.probe.ranked_by_asymmetry`; when no layer has a finite
    one, it says so)."""
    from analyses.probe import ranked_by_asymmetry

    lines = [entry["headline"]] if entry.get("headline") else []
    if "not_traced" in entry:
        lines.append(f"tracing: nothing traced: {entry['not_traced']}")
    for question in entry.get("after", {}):
        parts = []
        for component, after in entry["after"][question]["components"].items():
            before = entry["before"][question]["components"][component]
            parts.append(f"{component} max restored {before['max_restored_prob']:.3f} → {after['max_restored_prob']:.3f} "
                         f"(peak after L{after['peak_layer']} {after['peak_bucket']})")
        clean = (entry["before"][question]["clean_prob"], entry["after"][question]["clean_prob"])
        lines.append(f"tracing {question}: clean p {clean[0]:.3f} → {clean[1]:.3f}; " + "; ".join(parts))
    rows = ranked_by_asymmetry(entry["weight_change"], magnitude=True)[:5]
    lines.append("weight change read at the entities (z trained / held-out): " + (", ".join(
        f"{r['circuit']} {r['z_trained']:.2f}/{r['z_heldout']:.2f}" for r in rows)
        or f"no layer has a finite asymmetry ({NO_FINITE_ASYMMETRY})"))
    return "\n".join(lines)


__all__ = ["FinetuneTracing", "format_finetune_tracing", "tracing_words", "weight_change_summary"]
