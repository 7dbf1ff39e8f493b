"""`revlens reproduce dynamics`: the effective weights of the facts in play, over training.

Zhu et al. (§4) predict how the one-layer transformer's OV circuit Y moves: a gradient step
on "A r → B" raises Y[A, B] (attending to A raises B) and leaves Y[B, A] where it was, so the
held-out reverse of a one-way fact never gains weight. We train the theory's one-layer model and
the tiny 2-layer model on the reversal world and, at every evaluation, read every head's OV
(Y) and QK (Z) entries of every fact with :func:`probes.circuits.circuit_table`, sorted into roles:

* ``trained``: the trained direction of a one-way fact (M[given, answer] of the trained statement);
* ``held-out reverse``: the same fact's other direction, M[answer, given] (never trained);
* ``both``: either direction of a fact trained both ways.

Per (circuit, layer, head, role) we keep the mean and the spread (std over statements) of the
entry's z-score against 64 same-kind control entries of its row, and of the raw entry. Rows
with an empty ``head`` average each statement's z (and entry) over the layer's heads first.
For layers > 0 the entries are first-order (embedding → head) circuits; see probes.circuits.

A sub-command rather than a ``reproduce reversal`` flag: it trains two models (one-layer and
tiny) into one table and one figure, and it gets its own folder under ``reproduce all``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from analyses.reproduce import ReversalConfig, _write_json, train_run, write_csv
from facts.schema import FactSet
from facts.token_worlds import TokenVocab, reversal_world
from models.training import Callback
from probes.views import save_png

if TYPE_CHECKING:
    from probes.circuits import EntityIds

ROLES = {("train", "heldout"): "trained", ("heldout", "train"): "held-out reverse", ("train", "train"): "both"}
"""(split of the statement's direction, split of the opposite direction) → role."""

STAT_COLUMNS = ["z_mean", "z_std", "entry_mean", "entry_std", "n"]


@dataclass(frozen=True)
class DynamicsConfig:
    """Models to follow and the reversal run each trains (its ``model`` is replaced per model)."""

    models: tuple[str, ...] = ("one-layer", "tiny")
    run: ReversalConfig = field(default_factory=ReversalConfig)
    kinds: tuple[str, ...] = ("ov", "qk")


def _stats(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, observed=True, dropna=False)
    stats = grouped.agg(z_mean=("z", "mean"), z_std=("z", "std"), entry_mean=("entry", "mean"),
                        entry_std=("entry", "std"), n=("z", "size"))
    return stats.reset_index()


def role_stats(table: pd.DataFrame) -> pd.DataFrame:
    """Per (circuit, layer, head, role): mean and std over statements of z and entry, and n.

    ``table`` is a :func:`probes.circuits.circuit_table`; rows with head NA average each
    statement over the layer's heads before taking the mean and std.
    """
    from probes.circuits import directed_entries

    entries = directed_entries(table)
    roles = [ROLES.get((s, p)) for s, p in zip(entries.split, entries.partner_split)]
    entries["role"] = pd.Categorical(roles, categories=list(ROLES.values()))  # groups come out in ROLES order
    entries = entries[entries.role.notna()]
    per_head = _stats(entries, ["circuit", "layer", "head", "role"])
    statement = ["circuit", "layer", "role", "fact", "direction"]
    head_mean = entries.groupby(statement, observed=True, dropna=False)[["z", "entry"]].mean().reset_index()
    per_layer = _stats(head_mean, ["circuit", "layer", "role"]).assign(head=pd.NA)
    frame = pd.concat([per_head, per_layer], ignore_index=True)
    frame[["circuit", "role"]] = frame[["circuit", "role"]].astype(str)
    return frame[["circuit", "layer", "head", "role", *STAT_COLUMNS]]


def circuit_tracker(facts: FactSet, entity_ids: EntityIds, kinds: Sequence[str] = ("ov", "qk")) -> Callback:
    """A trainer callback: at every evaluation, ``{"circuits": [role_stats rows]}`` joins the record."""

    from probes.circuits import circuit_table

    def track(step: int, model) -> dict[str, Any]:
        stats = role_stats(circuit_table(model, facts, entity_ids, kinds=kinds))
        records = stats.astype(object).where(stats.notna(), None).to_dict("records")
        return {"circuits": records}

    return track


def dynamics_frame(model_name: str, history: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The ``circuits`` records of a training history as one table (columns model, step, …)."""
    rows = [{"model": model_name, "step": record["step"], **row} for record in history for row in record["circuits"]]
    frame = pd.DataFrame(rows)
    frame["layer"] = frame.layer.astype("Int64")
    frame["head"] = frame["head"].astype("Int64")
    return frame


def start_end(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per (model, circuit, layer, role), head-averaged z and entry at the first and the last step."""
    layers = frame[frame["head"].isna()]
    rows = []
    for (model, circuit, layer, role), part in layers.groupby(["model", "circuit", "layer", "role"], sort=False):
        first, last = part.loc[part.step.idxmin()], part.loc[part.step.idxmax()]
        rows.append({"model": model, "circuit": circuit, "layer": int(layer), "role": role, "n": int(last.n),
                     "z_start": float(first.z_mean), "z_end": float(last.z_mean), "z_std_end": float(last.z_std),
                     "entry_start": float(first.entry_mean), "entry_end": float(last.entry_mean)})
    return rows


def ov_grows_only_where_trained(rows: Sequence[dict[str, Any]], model: str) -> bool:
    """Layer 0's OV: trained z rose by > 1, held-out reverse moved by < 0.5 (head-averaged)."""
    ov = {r["role"]: r for r in rows if r["model"] == model and r["circuit"] == "ov" and r["layer"] == 0}
    trained, heldout = ov["trained"], ov["held-out reverse"]
    return trained["z_end"] - trained["z_start"] > 1 and abs(heldout["z_end"] - heldout["z_start"]) < 0.5


def reproduce_dynamics(out: str | Path, config: DynamicsConfig = DynamicsConfig(), progress: bool = True
                       ) -> dict[str, Any]:
    """Train each model with the circuit tracker; write dynamics.csv, dynamics.png, summary.json.

    Each model's run (facts.jsonl, history.jsonl with the circuit records, checkpoints/) goes
    to ``out/<model>/``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    vocab = TokenVocab()
    world = reversal_world(n_pairs=config.run.n_pairs, k=config.run.k, seed=config.run.seed, vocab=vocab)
    frames, finals = [], {}
    for name in config.models:
        tracker = circuit_tracker(world, vocab.entity_ids, config.kinds)
        _, result = train_run(world, vocab, replace(config.run, model=name), out / name, progress, callbacks=[tracker])
        frames.append(dynamics_frame(name, result.history))
        final = result.history[-1]["eval"]
        finals[name] = {"train_prob": final["train"]["prob"], "heldout_logprob": final["heldout"]["logprob"],
                        "heldout_accuracy": final["heldout"]["accuracy"]}
    frame = pd.concat(frames, ignore_index=True)
    write_csv(frame, out / "dynamics.csv")
    rows = start_end(frame)
    summary = {
        "experiment": "dynamics", "config": asdict(config), "n_facts": len(world),
        "final": finals, "start_end": rows,
        "ov_grows_only_where_trained": {name: ov_grows_only_where_trained(rows, name) for name in config.models},
        "seconds": time.perf_counter() - began,
    }
    from analyses.figures import dynamics_figure

    save_png(dynamics_figure(frame, title=f"Effective weights over training, reversal world ({len(world)} pairs)"),
             out / "dynamics.png")
    _write_json(out / "summary.json", summary)
    return summary


QK_UNMOVED = 2.0
"""The largest |z| of a QK role's mean entry the screen still calls unmoved (z: its entries against the head's
other entity entries)."""


def format_dynamics(summary: dict[str, Any]) -> str:
    """One screen: per model, circuit and layer, the head-averaged z at the start and the end, per role."""
    cfg = summary["config"]["run"]
    lines = [f"reversal world, {summary['n_facts']} pairs · {cfg['steps']} steps · lr {cfg['lr']} · "
             f"entries read every {cfg['eval_every']} steps", "",
             f"  {'model':10s}{'circuit':9s}{'role':18s}{'n':>5s}{'z start':>9s}{'z end':>8s}{'± std':>7s}"
             f"{'entry start':>13s}{'entry end':>11s}"]
    for r in summary["start_end"]:
        lines.append(f"  {r['model']:10s}{r['circuit'] + ' L' + str(r['layer']):9s}{r['role']:18s}{r['n']:5d}"
                     f"{r['z_start']:9.2f}{r['z_end']:8.2f}{r['z_std_end']:7.2f}{r['entry_start']:13.4f}"
                     f"{r['entry_end']:11.4f}")
    qk = [abs(r["z_end"]) for r in summary["start_end"] if r["circuit"] == "qk"]
    lines.append("")
    if qk and max(qk) < QK_UNMOVED:
        lines.append(f"QK (Z) entries between entities end within ±{max(qk):.2f} for every role: a question's query "
                     f"is its relation token, so the facts are not stored in Z[entity, entity]")
    elif qk:
        lines.append(f"QK (Z) entries between entities reach a z of {max(qk):.2f} (see the rows): not the flat Z "
                     f"[entity, entity] the paper predicts")
    for name, grows in summary["ov_grows_only_where_trained"].items():
        final = summary["final"][name]
        verdict = "Y[A,B] GROWS ONLY FOR TRAINED DIRECTIONS" if grows else "not reproduced (see numbers)"
        lines.append(f"{name}: {verdict} (train p {final['train_prob']:.4f}, held-out reverse accuracy "
                     f"{final['heldout_accuracy']:.3f})")
    lines.append(f"in {summary['seconds']:.1f} s")
    return "\n".join(lines)
