"""`revlens compare`: theory against trained models, measured with the same probes.

One row per model kind, every number computed by :func:`row_metrics` from the two tables
every probe run writes (``probes.logits.answer_table`` and ``probes.circuits.circuit_table``,
i.e. ``revlens probe``'s ``logits.csv`` and ``circuits.csv``), restricted to the *one-way*
facts (one direction trained, the other held out), so both directions come from the same facts:

* ``trained_*``: the trained direction A → B; ``heldout_*``: its held-out reverse B → A;
* ``*_margin`` = mean over statements of log p(answer) − mean log p(K random answers of the
  same kind); ``*_accuracy``: greedy exact match; ``*_logprob``: mean log p(answer);
* ``z_trained`` / ``z_heldout``: mean z-score of the effective-weight entry M[A, B] / M[B, A]
  against the same row's control entries, averaged over the "Y" circuits (Θ for the bilinear
  model, every head's OV circuit for a transformer); ``asymmetry_index`` = z_trained − z_heldout;
  ``most_asymmetric_circuit`` over all circuits (direct path, OV, QK, Θ).

Rows: the bilinear model (Θ only, d = 512), the one-layer attention-only transformer (the
theory's model), the tiny 2-layer transformer, the one-layer transformer with the Identity Bridge
added (Ma et al. 2026; its answers and circuits read on the world's own statements), all trained
here on the same reversal world, and optionally a fine-tuned pretrained LLM read from a ``revlens finetune-facts`` folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analyses.bilinear import BilinearConfig
from analyses.probe import PRIOR, circuit_summary, logit_summary, ranked_by_asymmetry
from analyses.reproduce import RunConfig, _write_json, train_run, write_csv
from facts.io import save_jsonl
from facts.schema import FactSet
from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import tokenize
from probes.circuits import circuit_table
from probes.logits import answer_table
from probes.views import save_png

Y_CIRCUITS = ("ov", "theta")
"""Circuits that carry Zhu et al.'s Y (which token a read token raises): per-head OV, and Θ."""

THEORY = {
    "bilinear": "Theorem 1 (Zhu et al. §3): training loss → 0 while the held-out reverse loss stays at its "
                "initial value as d grows: reverse margin ≈ 0, accuracy ≈ 0; Θ asymmetric, u_AᵀΘu_B grows, "
                "u_BᵀΘu_A does not",
    "one-layer": "Zhu et al. §4 (one-layer transformer, Y/Z reparametrisation): Y[A,B] grows only where A → B "
                 "is trained, Y[B,A] stays flat: reverse at (or below) chance, large OV asymmetry",
    "tiny": "no theorem past one layer; the paper's multi-layer runs show the same curse: reverse at chance. "
            "First-order OV circuits read only the embedding path, so asymmetry shows but is smaller",
    "identity-bridge": "Ma et al. 2026 (Identity Bridge, arXiv 2602.02470): the one-layer model trained with 'A r A' "
                       "added for every entity breaks the curse (gradient descent's implicit bias puts both members "
                       "of a pair in one OV direction): reverse above chance, Y[B,A] grown without B → A trained",
    "mitigated": "a token-world model trained on its world and added statements (reversed, restated or copy "
                 "sentences): the plain model's prediction does not hold; the mitigations experiment measures how much "
                 "each lifts the held-out reverse",
    "finetuned": "theory does not cover pretrained LLMs; Berglund et al. see the reverse at chance after "
                 "one-way fine-tuning (margin ≈ 0). The lookup may live in MLPs, so entity-level OV "
                 "asymmetry may be weak",
}
"""What the bilinear theory (and the papers around it) predicts for each kind of model."""

PROBE_FILES = ("logits.csv", "circuits.csv", "summary.json")
LOGIT_COLUMNS = ("fact", "split", "direction", "logprob", "margin", "correct", "rank", "chance_logprob")
CIRCUIT_COLUMNS = ("fact", "forward", "reverse", "circuit", "layer", "head", "z_ab", "z_ba")


class RunDirError(ValueError):
    """A run folder given to ``compare`` lacks a file or a column; the message names it."""


def one_way_statements(answers: pd.DataFrame) -> pd.DataFrame:
    """The rows of facts with one direction trained and the other held out (both rows kept)."""
    splits = answers.groupby("fact").split.agg(lambda s: frozenset(s))
    one_way = splits[splits == frozenset({"train", "heldout"})].index
    return answers[answers.fact.isin(one_way)]


def _pooled(by_group: dict[str, dict[str, Any]], split: str) -> dict[str, float]:
    """Statement-weighted means over the (split, direction) groups of :func:`logit_summary`."""
    parts = [v for k, v in by_group.items() if k.split("/")[0] == split]
    n = sum(p["n"] for p in parts)
    stats = {f"{split}_n": n}
    for name in ("logprob", "margin", "accuracy", "mean_rank"):
        stats[f"{split}_{name}"] = sum(p[name] * p["n"] for p in parts) / n if n else math.nan
    return stats


def y_circuit_metrics(circuits: pd.DataFrame) -> dict[str, Any]:
    """The circuit part of a row: :func:`analyses.probe.circuit_summary` averaged over the Y
    circuits (OV heads, Θ) — mean z of the trained and of the held-out direction's entry and the
    asymmetry index — and the single most asymmetric circuit of any kind among those with a finite
    asymmetry (:func:`analyses.probe.ranked_by_asymmetry`; None and NaN when none has one)."""
    per_circuit = [r for r in circuit_summary(circuits) if r["n_one_way"]]
    y = [r for r in per_circuit if r["circuit"].split()[0] in Y_CIRCUITS]
    best = next(iter(ranked_by_asymmetry(per_circuit)), None)

    def mean(key: str) -> float:
        return float(pd.Series([r[key] for r in y], dtype=float).mean())

    return {"n_y_circuits": len(y), "z_trained": mean("z_trained"), "z_heldout": mean("z_heldout"),
            "asymmetry_index": mean("asymmetry"),
            "most_asymmetric_circuit": best["circuit"] if best else None,
            "max_asymmetry": best["asymmetry"] if best else math.nan}


def row_metrics(answers: pd.DataFrame, circuits: pd.DataFrame) -> dict[str, Any]:
    """The comparison's numbers from a logit table and a circuit table (module docstring).

    ``answers`` and ``circuits`` are taken as given (callers choose the facts); the logit part
    pools :func:`analyses.probe.logit_summary` by split, the circuit part is
    :func:`y_circuit_metrics`.
    """
    by_group = logit_summary(answers)
    chance = answers.chance_logprob.mean()  # NaN (→ None) where answers were ranked among controls only
    return {**_pooled(by_group, "train"), **_pooled(by_group, "heldout"),
            "chance_logprob": None if pd.isna(chance) else float(chance), **y_circuit_metrics(circuits)}


def model_row(name: str, kind: str, answers: pd.DataFrame, circuits: pd.DataFrame,
              theory: str | None = None) -> dict[str, Any]:
    """One comparison row: :func:`row_metrics` on the one-way facts, plus what theory predicts (its kind's, or the
    ``theory`` key given: a checkpoint's model)."""
    return {"model": name, "kind": kind, **row_metrics(one_way_statements(answers), circuits),
            "theory_predicts": THEORY[theory or kind]}


NUMERIC_COLUMNS = ("fact", "logprob", "margin", "rank", "chance_logprob", "z_ab", "z_ba")
"""Columns read as numbers (NaN allowed: an empty cell); text there is refused with its line."""


def _require_columns(table: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise RunDirError(f"{path}: missing column(s) {missing}; expected the table `revlens probe` writes")
    for column in (c for c in columns if c in NUMERIC_COLUMNS):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table.index[values.isna() & table[column].notna()]
        if len(bad):
            raise RunDirError(f"{path}:{bad[0] + 2}: column {column!r} holds {table[column][bad[0]]!r}, not a number")


def read_probe_run(run_dir: str | os.PathLike[str]) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """(model name, logit table, circuit table) of a folder written by ``revlens probe`` or
    ``revlens finetune-facts``; a missing folder, file or column raises :class:`RunDirError`.

    ``summary.json`` is required although only its model name is read: it is written last, so
    its absence marks a half-written run.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a folder; pass the output folder of `revlens finetune-facts`")
    missing = [name for name in PROBE_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(f"{run_dir}: missing {', '.join(missing)} (a finished `revlens finetune-facts` or "
                          f"`revlens probe` folder has {', '.join(PROBE_FILES)})")
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunDirError(f"{run_dir / 'summary.json'}: not valid JSON ({error})") from None
    if not isinstance(summary, dict):
        raise RunDirError(f"{run_dir / 'summary.json'}: expected a JSON object of results, got a "
                          f"{type(summary).__name__}")
    tables = []
    for name, columns in (("logits.csv", LOGIT_COLUMNS), ("circuits.csv", CIRCUIT_COLUMNS)):
        try:
            table = pd.read_csv(run_dir / name)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
            raise RunDirError(f"{run_dir / name}: cannot be read as CSV ({error})") from None
        _require_columns(table, columns, run_dir / name)
        if table.empty:
            raise RunDirError(f"{run_dir / name}: has no rows")
        tables.append(table)
    _require_trained(run_dir, summary, tables[0])
    model = (summary.get("config") or {}).get("model") or summary.get("model") or run_dir.name
    return str(model), tables[0], tables[1]


def _require_trained(run_dir: Path, summary: dict[str, Any], answers: pd.DataFrame) -> None:
    """Refuse a run with no trained statement of a one-way fact: its row (train_n = 0) would stand,
    labelled fine-tuned, with no trained direction behind it; a probe of a model never trained on
    its facts (``summary["prior_knowledge"]``, every split :data:`analyses.probe.PRIOR`) is named as such."""
    if (one_way_statements(answers).split == "train").any():
        return
    if "prior_knowledge" in summary or set(answers.split) == {PRIOR}:
        raise RunDirError(f"{run_dir}: a probe of a model never trained on these facts (prior knowledge: 0 trained "
                          f"statements), not a fine-tuned run; give a `revlens finetune-facts` folder or a "
                          f"`revlens probe` of a checkpoint trained on its facts")
    raise RunDirError(f"{run_dir}: 0 trained statements of one-way facts in logits.csv (no fact has one direction "
                      f"trained and the other held out), so its row would have no trained or held-out numbers; "
                      f"give a run trained one way on some of its facts")


def finetuned_folders(finetuned: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None
                      ) -> list[str | os.PathLike[str]]:
    """``compare``'s ``finetuned`` argument as a list of folders; a folder given twice (the same
    resolved path) is refused, naming it: it would be two identical rows."""
    folders = [] if finetuned is None else [finetuned] if isinstance(finetuned, (str, os.PathLike)) else list(finetuned)
    seen: dict[Path, str | os.PathLike[str]] = {}
    for folder in folders:
        resolved = Path(folder).resolve()
        if resolved in seen:
            also = "" if str(seen[resolved]) == str(folder) else f" (also as {seen[resolved]})"
            raise RunDirError(f"{folder}: given twice to --finetuned{also}; its row would appear twice, identical: "
                              f"give each run once")
        seen[resolved] = folder
    return folders


def tracing_columns(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Where a fine-tuned LLM's asymmetry lives, from a ``finetune-facts`` folder's ``summary.json``
    ``tracing`` entry (:mod:`analyses.finetune_tracing`; empty without one): after fine-tuning, the
    peak site of the MLP outputs' indirect effect on the trained (forward) answer, the largest restored
    p(answer) anywhere for the trained forward and for the held-out reverse question, and the layer
    whose weight change (ΔMLP read at the entities) is most asymmetric, with its trained and held-out z
    (among layers with a finite asymmetry, :func:`analyses.probe.ranked_by_asymmetry`: a layer whose weights
    did not change has none; no such layer: None and NaN)."""
    entry = json.loads((Path(run_dir) / "summary.json").read_text()).get("tracing")
    if not isinstance(entry, dict):
        return {}
    after = entry.get("after", {})  # none where no statement was traced; the weight change is read all the same
    forward, reverse = after.get("train/forward", {}), after.get("heldout/reverse", {})

    def most(question: dict[str, Any]) -> float:
        values = [c["max_restored_prob"] for c in question.get("components", {}).values()]
        return max(values) if values else math.nan

    mlp = forward.get("components", {}).get("mlp_out")
    changes = [r for r in entry.get("weight_change", []) if r["circuit"].startswith("delta_mlp") and r["n_one_way"]]
    top = next(iter(ranked_by_asymmetry(changes)), None)
    return {"forward_peak_mlp": f"L{mlp['peak_layer']} {mlp['peak_bucket']}" if mlp else None,
            "forward_max_restored": most(forward), "reverse_max_restored": most(reverse),
            "delta_mlp_peak_layer": top["circuit"] if top else None,
            "delta_mlp_z_trained": top["z_trained"] if top else math.nan,
            "delta_mlp_z_heldout": top["z_heldout"] if top else math.nan}


@dataclass(frozen=True)
class CompareConfig:
    """The shared reversal world and each trained model's settings."""

    seed: int = 0
    n_pairs: int = 200
    steps: int = 80
    bilinear_d: int = 512
    bilinear: BilinearConfig = BilinearConfig()


def _bilinear_tables(world: FactSet, vocab: TokenVocab, config: CompareConfig, out: Path, progress: bool
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Θ trained as in ``reproduce bilinear`` (SGD from 0, no decay, its steps and step size)."""
    from models.bilinear import BilinearModel, bilinear_card
    from models.training import TrainConfig, train

    settings = config.bilinear
    model = BilinearModel(vocab.d_vocab, config.bilinear_d, seed=config.seed)
    train(model, tokenize(world, vocab).where(split="train"),
          TrainConfig(steps=settings.steps, lr=settings.lr, optimizer="sgd", weight_decay=0.0,
                      eval_every=settings.steps, seed=config.seed, progress=progress),
          checkpoint_dir=out / "checkpoints", model_card=bilinear_card(vocab.d_vocab, config.bilinear_d, config.seed))
    save_jsonl(world, out / "facts.jsonl")
    return answer_table(model, world, vocab), circuit_table(model, world, vocab.entity_ids)


def token_world_rows(out: Path, config: CompareConfig, progress: bool) -> list[dict[str, Any]]:
    """Train the bilinear, one-layer and tiny models on one reversal world, and the one-layer model
    again with the Identity Bridge added (:func:`analyses.mitigations.identity_statements`; measured
    on the same world's statements); one row each.

    Each model's folder ``out/<kind>/`` gets its facts, checkpoints, ``logits.csv`` and
    ``circuits.csv`` (the same files ``revlens probe`` writes).
    """
    vocab = TokenVocab()
    world = reversal_world(n_pairs=config.n_pairs, seed=config.seed, vocab=vocab)
    from analyses.mitigations import identity_statements

    bridged = FactSet(world.facts + identity_statements(world), world=f"{world.world} + identity bridge",
                      meta=world.meta)
    rows = []
    for kind in ("bilinear", "one-layer", "tiny", "identity-bridge"):
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        if kind == "bilinear":
            answers, circuits = _bilinear_tables(world, vocab, config, folder, progress)
            name = f"bilinear Θ (d = {config.bilinear_d})"
        else:
            model_name = "one-layer" if kind == "identity-bridge" else kind
            run = RunConfig(model=model_name, seed=config.seed, steps=config.steps, eval_every=config.steps)
            model, _ = train_run(bridged if kind == "identity-bridge" else world, vocab, run, folder, progress)
            answers, circuits = answer_table(model, world, vocab), circuit_table(model, world, vocab.entity_ids)
            name = "one-layer + identity bridge" if kind == "identity-bridge" else f"{kind} transformer"
        write_csv(answers, folder / "logits.csv")
        write_csv(circuits, folder / "circuits.csv")
        rows.append(model_row(name, kind, answers, circuits))
    return rows


def finetuned_label(model: str, config: dict[str, Any]) -> str:
    """A fine-tuned run's row name: the model, then its mitigation and its groups of Berglund et al.'s
    grid where they are not the default ("smollm2-135m (fine-tuned, identity-bridge)",
    "smollm2-135m (fine-tuned, groups p2d d2p both)"), so runs of one model stay apart."""
    parts = ["fine-tuned"]
    if config.get("mitigation") not in (None, "none"):
        parts.append(str(config["mitigation"]))
    if config.get("groups") and list(config["groups"]) != ["p2d"]:
        parts.append("groups " + " ".join(config["groups"]))
    return f"{model} ({', '.join(parts)})"


def finetuned_row(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The row of a ``revlens finetune-facts`` (or ``revlens probe``) folder, named by :func:`finetuned_label`;
    the one-way facts of every trained group are pooled (p2d and d2p: trained way against its reverse). A probe of
    a token-world checkpoint (its summary's ``model_card``) is a row of kind "checkpoint" named as that model, "tiny
    transformer (checkpoint DIR, step N)", beside its model's theory: it was trained on its world, not fine-tuned. A
    checkpoint trained on its world and a mitigation's added statements (the world its run names, "reversal + identity
    bridge") is named with them and stands beside the Identity Bridge's prediction, or none of a plain model's."""
    name, answers, circuits = read_probe_run(run_dir)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    card = summary.get("model_card")
    if isinstance(card, dict) and card.get("kind") in ("hooked", "bilinear"):
        model = "bilinear" if card["kind"] == "bilinear" else str(card.get("name"))
        what = "bilinear Θ" if model == "bilinear" else f"{model} transformer"
        added = str(summary.get("trained_world") or "").partition(" + ")[2]  # a mitigation's statements
        theory = model if model in THEORY else "tiny"  # "paper" and other multi-layer models: as tiny
        if added:
            what += f" + {added}"
            theory = "identity-bridge" if added == "identity bridge" else "mitigated"
        row = model_row(f"{what} (checkpoint {name}, step {summary.get('step')})", "checkpoint", answers, circuits,
                        theory=theory)
    else:
        row = model_row(finetuned_label(name, summary.get("config") or {}), "finetuned", answers, circuits)
    return {**row, "source": str(run_dir), **tracing_columns(run_dir)}


UNLABELLED_SETTINGS = frozenset({"model", "mitigation", "groups", "device", "multiple_choice"})
"""Settings of a fine-tuned run that its label already names (model, mitigation, groups) or that change none of its
rows' numbers (the device, the multiple-choice stage)."""


def named_apart(runs: Sequence[tuple[str | Path, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The rows of each fine-tuned folder (``(folder, its rows)``), each name given the settings in which the runs
    differ ("smollm2-135m (fine-tuned, people 4, n_controls 3)": rows of runs with other people, controls or seeds
    would otherwise read as a clean contrast of their mitigations), then the folder added to the names still alike,
    so that no run's rows hide another's under one (model, variant, test) in the figure and a sweep's numbers."""
    configs = {str(run_dir): _run_config(run_dir) for run_dir, _ in runs}
    configured = [config for config in configs.values() if config]  # a probe's folder has none: named by its model
    keys = dict.fromkeys(key for config in configured for key in config)
    differing = [key for key in keys if key not in UNLABELLED_SETTINGS
                 and len({json.dumps(config.get(key), sort_keys=True) for config in configured}) > 1]

    def named(run_dir: str | Path, name: str) -> str:
        config = configs[str(run_dir)]
        settings = ", ".join(f"{key} {config.get(key)}" for key in differing)
        return f"{name[:-1]}, {settings})" if config and settings and name.endswith(")") else name

    renamed = [(run_dir, [{**row, "model": named(run_dir, row["model"])} for row in rows]) for run_dir, rows in runs]
    counts: dict[str, int] = {}
    for _, rows in renamed:
        counts[rows[0]["model"]] = counts.get(rows[0]["model"], 0) + 1
    return [{**row, "model": f"{row['model']} [{run_dir}]"} if counts[row["model"]] > 1 else row
            for run_dir, rows in renamed for row in rows]


def _run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``summary.json`` config ({} where it has none: a probe)."""
    try:
        config = json.loads((Path(run_dir) / "summary.json").read_text()).get("config")
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}


def compare(out: str | os.PathLike[str],
            finetuned: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
            config: CompareConfig = CompareConfig(), progress: bool = True) -> dict[str, Any]:
    """Write ``compare.csv``, ``compare.png`` and ``summary.json`` into ``out``; returns the summary.

    ``finetuned``: one or more ``revlens finetune-facts`` (or ``revlens probe``) folders, one row each,
    named after the model and the run's mitigation where it has one ("smollm2-135m (fine-tuned,
    identity-bridge)"); all are checked before anything is trained: a folder given twice, or one with no trained
    statement of a one-way fact (a probe of a model never trained on its facts), is refused.
    """
    out = Path(out)
    began = time.perf_counter()
    folders = finetuned_folders(finetuned)
    finetuned_rows = named_apart([(folder, [finetuned_row(folder)]) for folder in folders])
    out.mkdir(parents=True, exist_ok=True)
    rows = token_world_rows(out, config, progress) + finetuned_rows
    table = pd.DataFrame(rows)
    write_csv(table, out / "compare.csv")
    from analyses.figures import compare_bars

    save_png(compare_bars(rows), out / "compare.png")
    summary = {"experiment": "compare", "config": asdict(config), "finetuned": [str(f) for f in folders] or None,
               "rows": rows, "seconds": time.perf_counter() - began}
    _write_json(out / "summary.json", summary)
    return summary


def _weight_change_words(row: dict[str, Any]) -> str:
    """The most asymmetric weight change of a fine-tuned row (:func:`tracing_columns`) in words, or that no
    layer's ΔMLP has a finite asymmetry."""
    if row.get("delta_mlp_peak_layer") is None:
        return "no layer's weight change (ΔMLP) has a finite asymmetry"
    return (f"most asymmetric weight change {row['delta_mlp_peak_layer']} (z {row['delta_mlp_z_trained']:.2f} "
            f"trained, {row['delta_mlp_z_heldout']:.2f} held out)")


def format_compare(summary: dict[str, Any]) -> str:
    """One screen: the table, then what theory predicts per kind (once for all the rows of a kind)."""
    width = max([34, *(len(row["model"]) + 1 for row in summary["rows"])])  # whole names: runs differ at the end
    head = (f"  {'model':{width}s}{'margin A→B':>11s}{'margin B→A':>11s}{'acc A→B':>9s}{'acc B→A':>9s}"
            f"{'z Y[A,B]':>10s}{'z Y[B,A]':>10s}{'asym':>7s}")
    lines = ["same probes, one-way facts (A → B trained, B → A held out):", "", head]
    for row in summary["rows"]:
        lines.append(f"  {row['model']:{width}s}{row['train_margin']:11.2f}{row['heldout_margin']:11.2f}"
                     f"{row['train_accuracy']:9.3f}{row['heldout_accuracy']:9.3f}{row['z_trained']:10.2f}"
                     f"{row['z_heldout']:10.2f}{row['asymmetry_index']:7.2f}")
    if any(row.get("kind") == "finetuned" for row in summary["rows"]):
        lines.append("  (fine-tuned rows: A→B is each fact's trained paraphrase, B→A its first reverse question, as in "
                     "their logits.csv; finetune-facts' own summary averages every reverse question)")
    for row in summary["rows"]:
        if row.get("forward_peak_mlp") is not None:
            lines.append(f"  {row['model']}: where it lives (causal tracing after fine-tuning): forward answer's "
                         f"MLP peak {row['forward_peak_mlp']}, max restored p forward {row['forward_max_restored']:.3f}, "
                         f"reverse {row['reverse_max_restored']:.3f}; {_weight_change_words(row)}")
    lines += ["", "what theory predicts:"]
    models_by_prediction: dict[str, list[str]] = {}  # one paragraph per kind: fine-tuned runs share one
    for row in summary["rows"]:
        models_by_prediction.setdefault(row["theory_predicts"], []).append(row["model"])
    lines += [f"  {', '.join(models)}: {prediction}" for prediction, models in models_by_prediction.items()]
    lines += ["", f"compared {len(summary['rows'])} models in {summary['seconds']:.1f} s"]
    return "\n".join(lines)

