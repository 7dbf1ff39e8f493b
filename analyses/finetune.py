"""`revlens finetune-facts`: the reversal curse on a pretrained LLM, fine-tuned on fictitious people.

The default experiment (Berglund et al. 2023, experiment 1, at laptop scale): SmolLM2-135M
is fine-tuned, every parameter, on sentences "<name> ... <description>" about fictitious
people of the p2d group (:func:`facts.language.people_world`), in several paraphrases
(:data:`facts.language.TRAIN_TEMPLATES`), with the loss on the description tokens only. Then,
with :func:`probes.logits.answer_table`, each fact is asked

* forward (trained, name → description): greedy exact match and log-prob margin over K
  random descriptions of the same world;
* reverse (held out, description → name): the same, against K random names;
* in context: the forward sentence stated in the prompt, then the reverse question.

The reverse margin m_i = log p(name_i | prompt) − mean_j log p(control_ij | prompt) has mean
≈ 0 when the curse holds; its 95% interval is mean ± 1.96·sd/√n over the n facts. Every
table is measured before and after fine-tuning, and the paired gain m_i(after) − m_i(before)
is the effect of training itself: ≈ 0 for the reverse, large for the forward.

Mitigations (``mitigation=``): the in-context setting above is in-context restatement;
``"bidirectional"`` also trains a second group of people both ways and asks whether that
teaches the model to reverse the p2d group's one-way facts; ``"reverse-training"`` adds each
training sentence with its words reversed, entities kept whole (:data:`MITIGATIONS`).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analyses.stats import ci95_half_width
from facts.io import save_jsonl
from facts.language import TRAIN_TEMPLATES, TemplateTokenizer, bos_prefix, encode_pair, people_world, render_statement
from facts.schema import FactSet
from facts.tokens import Example, TokenizedFacts, collate, tokenize

STAGES = ("before", "after")
TESTED = "p2d"
"""The group whose facts every setting asks: trained name → description, reverse held out."""
MITIGATIONS = {
    "none": (TESTED,),
    "bidirectional": (TESTED, "both"),
    "reverse-training": (TESTED,),
}
"""Fact groups trained per mitigation. ``bidirectional`` adds as many people again whose facts are
trained both ways (name → description and description → name, Berglund et al.'s "both" group):
does seeing other facts in both directions teach the model to reverse the one-way ones? The
tested facts are always the p2d group's. ``reverse-training`` adds every training sentence once more
with its words reversed and the name and description kept whole (:func:`reverse_words`), so the
name follows the description in some text the model reads, though never in a question."""
SETTINGS = ("forward", "reverse", "in_context_reverse")


@dataclass(frozen=True)
class FinetuneConfig:
    """The default experiment; ``trainable_blocks=None`` fine-tunes every parameter, an int
    ``n`` trains only the last ``n`` transformer blocks (the memory-light option: embeddings,
    earlier blocks and their gradients and optimizer state are left out)."""

    model: str = "smollm2-135m"
    people: int = 30
    templates: int = 2
    epochs: int = 8
    lr: float = 3e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    trainable_blocks: int | None = None
    n_controls: int = 16
    mitigation: str = "none"
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if self.mitigation not in MITIGATIONS:
            raise ValueError(f"mitigation must be one of {sorted(MITIGATIONS)}, got {self.mitigation!r}")
        if not 1 <= self.templates <= len(TRAIN_TEMPLATES["p2d"]):
            raise ValueError(f"templates must be 1…{len(TRAIN_TEMPLATES['p2d'])}, got {self.templates}")
        for name in ("people", "epochs", "batch_size", "n_controls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.n_controls >= self.people:
            raise ValueError(f"n_controls ({self.n_controls}) must be below the number of people ({self.people})")


def training_sentences(facts: FactSet, tokenizer, templates: int, pad_id: int, reverse_training: bool = False
                       ) -> TokenizedFacts:
    """Every trained statement of ``facts`` in each of the first ``templates`` paraphrases; with
    ``reverse_training``, each also once more in entity-preserving reversal (:func:`reversed_example`)."""
    examples = []
    for number in range(templates):
        asked = TemplateTokenizer(tokenizer, TRAIN_TEMPLATES, template=number)
        for index, direction, split in facts.statements():
            if split == "train":
                examples.append(asked.example(facts, index, direction))
                if reverse_training:
                    examples.append(reversed_example(facts, index, direction, number, tokenizer))
    return collate(examples, pad_id)


def reverse_words(text: str, entities: Sequence[str]) -> str:
    """Entity-preserving reversal (Golovneva et al. 2024, "Reverse training"): the words of ``text``
    in reverse order, each entity kept whole and in its own order, punctuation dropped.
    "Ann Lee, known for being the author of 'X'." → "the author of 'X' being for known Ann Lee"."""
    pattern = re.compile("(" + "|".join(re.escape(e) for e in sorted(entities, key=len, reverse=True)) + ")")
    units: list[str] = []
    for part in pattern.split(text):
        units.extend([part] if part in entities else re.findall(r"[\w'’-]+", part))
    return " ".join(reversed(units))


def reversed_example(facts: FactSet, index: int, direction: str, template: int, tokenizer) -> Example:
    """A trained sentence reversed by :func:`reverse_words`, its loss on every token but the first word's
    (the language-model loss of reverse training): the name now follows the description."""
    fact = facts[index]
    rendered = render_statement(facts, index, direction, TRAIN_TEMPLATES, template)
    first, rest = reverse_words(rendered.text, (fact.subject, fact.object)).split(" ", 1)
    label = f"fact {index} ({fact.subject!r}, reversed paraphrase {template})"
    prompt, answer = encode_pair(tokenizer, first, " " + rest, label)
    return Example(bos_prefix(tokenizer) + prompt, answer, index, direction, "train")


def in_context(facts: FactSet) -> FactSet:
    """The reverse questions of the tested group only, each prompt first restating the fact's
    forward sentence."""
    return FactSet(tuple(replace(fact, context=True, forward=None) for fact in facts if fact.group == TESTED),
                   world=facts.world, meta=facts.meta)


def mean_ci95(values: pd.Series) -> dict[str, float]:
    """Mean and normal-approximation 95% interval, mean ± 1.96·sd/√n."""
    mean, half = float(values.mean()), ci95_half_width(values)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(values.count())}


def setting_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Exact match, margin (with interval) and mean rank among the controls of one setting."""
    return {"exact_match": float(table.correct.mean()), "margin": mean_ci95(table.margin),
            "logprob": float(table.logprob.mean()), "mean_rank": float(table["rank"].mean())}


def evaluate_settings(model, facts: FactSet, tokenizer, n_controls: int, seed: int) -> pd.DataFrame:
    """Forward, reverse and in-context reverse, asked with the first training paraphrase, as one table
    (:func:`probes.logits.answer_table` rows plus a ``setting`` column)."""
    from probes.logits import answer_table

    asked = TemplateTokenizer(tokenizer, TRAIN_TEMPLATES, template=0)
    plain = answer_table(model, facts, asked, n_controls=n_controls, rank_against="controls", seed=seed)
    restated = answer_table(model, in_context(facts), asked, n_controls=n_controls, rank_against="controls",
                            seed=seed)
    plain["setting"] = plain.direction
    restated = restated.assign(setting="in_context_reverse")
    return pd.concat([plain, restated], ignore_index=True)


def write_tables(table: pd.DataFrame, out: Path, prefix: str = "") -> None:
    """``logits.csv``: the plain forward and reverse rows, exactly as ``revlens probe`` writes them
    (so ``revlens compare`` reads both alike); ``in_context.csv``: the in-context reverse rows."""
    restated = table.setting == "in_context_reverse"
    table[~restated].drop(columns="setting").to_csv(out / f"{prefix}logits.csv", index=False)
    table[restated].drop(columns="setting").to_csv(out / f"{prefix}in_context.csv", index=False)


def _paired(tables: dict[str, pd.DataFrame], setting: str) -> pd.DataFrame:
    """After − before, row by row (the same statements in the same order), of one setting."""
    before, after = (tables[stage][tables[stage].setting == setting].reset_index(drop=True) for stage in STAGES)
    if not before[["fact", "direction"]].equals(after[["fact", "direction"]]):
        raise RuntimeError(f"{setting}: the tables before and after fine-tuning list different statements")
    return after[["logprob", "margin"]] - before[["logprob", "margin"]]


def summarize(tables: dict[str, pd.DataFrame], config: FinetuneConfig, seconds: dict[str, float],
              n_sentences: int, steps: int) -> dict[str, Any]:
    """Per stage (before/after fine-tuning) and setting, on the p2d group's facts,
    :func:`setting_summary`; the paired margin gain (after − before, per statement) with its
    interval; and the verdict. The gain takes out each question's margin before training, so
    "the reverse was not learnt" reads: the gain's interval does not lie above 0."""
    out: dict[str, Any] = {"experiment": "finetune-facts", "config": asdict(config), "train_sentences": n_sentences,
                           "steps": steps,
                           "chance_exact_match": 0.0, "chance_rank": (config.n_controls + 2) / 2, "seconds": seconds}
    tested = {stage: table[table.group == TESTED] for stage, table in tables.items()}
    for stage, table in tested.items():
        out[stage] = {setting: setting_summary(table[table.setting == setting]) for setting in SETTINGS}
    out["margin_gain"] = {setting: mean_ci95(_paired(tested, setting).margin) for setting in SETTINGS}
    both = tables["after"][(tables["after"].group == "both") & (tables["after"].setting == "reverse")]
    if len(both):
        out["both_group_reverse_after"] = setting_summary(both)
    after = out["after"]
    low = out["margin_gain"]["reverse"]["ci95"][0]
    out["findings"] = {
        "forward_learnt": after["forward"]["exact_match"] >= 0.9,
        "reverse_not_learnt": bool(low <= 0),  # no significant gain: the curse (a fall counts too)
        "in_context_reverse_above_chance": after["in_context_reverse"]["margin"]["ci95"][0] > 0,
    }
    return out


def finetune_facts(out: str | Path, config: FinetuneConfig = FinetuneConfig(), progress: bool = True
                   ) -> dict[str, Any]:
    """Run the default experiment; write summary.json, logits.csv, in_context.csv and
    circuits.csv (after fine-tuning; ``before_*.csv`` before it), history.jsonl, facts.jsonl
    and finetune.png into ``out``; return the summary."""
    from analyses.compare import y_circuit_metrics
    from analyses.figures import finetune_bars
    from analyses.probe import circuit_summary
    from models.pretrained import freeze_except_last_blocks, load, load_tokenizer
    from models.training import TrainConfig, train
    from probes.circuits import circuit_table
    from probes.views import save_png

    began = time.perf_counter()
    facts = people_world(n_per_group=config.people, seed=config.seed, groups=MITIGATIONS[config.mitigation])
    tokenizer = load_tokenizer(config.model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = load(config.model, backend="hooked", device=config.device)
    loaded = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entity_ids = TemplateTokenizer(tokenizer, TRAIN_TEMPLATES).entity_ids
    tables = {"before": evaluate_settings(model, facts, tokenizer, config.n_controls, config.seed)}
    circuits = {"before": circuit_table(model, facts, entity_ids)}
    if config.trainable_blocks is not None:
        freeze_except_last_blocks(model, config.trainable_blocks)
    sentences = training_sentences(facts, tokenizer, config.templates, pad_id,
                                   reverse_training=config.mitigation == "reverse-training")
    probe_set = tokenize(facts, TemplateTokenizer(tokenizer, TRAIN_TEMPLATES, template=0), pad_id)
    per_epoch = math.ceil(len(sentences) / config.batch_size)
    trained = time.perf_counter()
    result = train(
        model, sentences,
        TrainConfig(steps=per_epoch * config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                    batch_size=config.batch_size, eval_every=per_epoch, seed=config.seed, progress=progress),
        eval_sets={"forward": probe_set.where(direction="forward"), "reverse": probe_set.where(direction="reverse")},
    )
    model.eval()
    evaluated = time.perf_counter()
    tables["after"] = evaluate_settings(model, facts, tokenizer, config.n_controls, config.seed)
    circuits["after"] = circuit_table(model, facts, entity_ids)
    seconds = {"load": loaded - began, "train": result.seconds,
               "evaluate": time.perf_counter() - evaluated + (trained - loaded), "total": time.perf_counter() - began}
    summary = summarize(tables, config, seconds, len(sentences), result.steps)
    summary["circuits"] = circuit_summary(circuits["after"])
    summary["effective_weights"] = {stage: y_circuit_metrics(circuits[stage]) for stage in STAGES}
    for stage, prefix in (("after", ""), ("before", "before_")):
        write_tables(tables[stage], out, prefix)
        circuits[stage].to_csv(out / f"{prefix}circuits.csv", index=False)
    save_jsonl(facts, out / "facts.jsonl")
    with (out / "history.jsonl").open("w") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in result.history)
    save_png(finetune_bars(summary), out / "finetune.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A one-screen table: exact match and margin per setting, before and after fine-tuning."""
    config = summary["config"]
    lines = [
        f"{config['model']} fine-tuned on {summary['train_sentences']} sentences about {config['people']} fictitious "
        f"people (p2d: name → description), {summary['steps']} steps, {summary['seconds']['total']:.0f} s"
        + (f"; mitigation: {config['mitigation']}" if config.get("mitigation", "none") != "none" else ""),
        f"margin = log p(answer) − mean log p(one of {config['n_controls']} random answers of the same kind); "
        f"rank among them, chance {summary['chance_rank']:.1f}",
        f"{'':20}{'exact match':>16}{'mean rank':>14}{'margin':>14}{'margin gain after − before':>32}",
        f"{'':20}{'before':>8}{'after':>8}{'before':>7}{'after':>7}{'before':>7}{'after':>7}{'mean':>10}{'95% CI':>22}",
    ]
    for setting in SETTINGS:
        before, after, gain = summary["before"][setting], summary["after"][setting], summary["margin_gain"][setting]
        low, high = gain["ci95"]
        lines.append(
            f"{setting.replace('_', ' '):20}{before['exact_match']:8.3f}{after['exact_match']:8.3f}"
            f"{before['mean_rank']:7.1f}{after['mean_rank']:7.1f}{before['margin']['mean']:7.2f}"
            f"{after['margin']['mean']:7.2f}{gain['mean']:10.2f}   [{low:7.2f}, {high:7.2f}]"
        )
    if "both_group_reverse_after" in summary:
        both = summary["both_group_reverse_after"]
        lines.append(f"{'reverse, both group':20}{'':8}{both['exact_match']:8.3f}{'':7}{both['mean_rank']:7.1f}{'':7}"
                     f"{both['margin']['mean']:7.2f}   (trained both ways: not a test)")
    if "effective_weights" in summary:
        before, after = (summary["effective_weights"][stage] for stage in STAGES)
        lines.append(
            f"OV circuits Y (mean z over {after['n_y_circuits']} heads, entry vs controls' entries): trained "
            f"name → description {before['z_trained']:.2f} → {after['z_trained']:.2f}; held-out description → "
            f"name {before['z_heldout']:.2f} → {after['z_heldout']:.2f}; most asymmetric circuit after: "
            f"{after['most_asymmetric_circuit']} ({after['max_asymmetry']:.2f})")
    findings = summary["findings"]
    lines.append(
        "forward learnt (≥ 90% exact match): " + ("yes" if findings["forward_learnt"] else "NO")
        + "; reverse not learnt (no significant margin gain, the curse): "
        + ("yes" if findings["reverse_not_learnt"] else "NO")
        + "; in-context reverse above chance: " + ("yes" if findings["in_context_reverse_above_chance"] else "no")
    )
    return "\n".join(lines)


__all__: Sequence[str] = ("FinetuneConfig", "finetune_facts", "format_summary", "mean_ci95", "training_sentences")
