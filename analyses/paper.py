"""The paper's remaining token-level experiments (docs/SCIENCE.md §4), one ``reproduce_<name>`` each.

* :func:`reproduce_chain`: chain-of-thought intransitivity. Trained on "x → y", "y → z" and
  70% of "x ⇝ z", the held-out "x ⇝ z" stays at chance while the two-step chain x → ŷ → ẑ
  works; the OV circuit Y[x, z] grows only for the trained "⇝" facts.
* :func:`reproduce_in_context`: "x → y <-> y ← x" over a 100 × 10 grid: the held-out reverse
  IS predicted (no curse in context); a one-partner control world fails on its held-out pairs, whose
  tokens are in no training sequence (so the failure alone does not show that it memorises).
* :func:`reproduce_multi_token`: the reversal run for k-token entities (k = 2, 3).
* :func:`reproduce_positional`: the reversal run with absolute, rotary and no positions.
* :func:`reproduce_embeddings`: cosine similarity of the embeddings of paired A_i, B_i
  against unpaired A_i, B_j: training leaves no pairing structure in W_E.

Chance, wherever one is reported, is the answer's own kind's (:mod:`probes.logits`): −log of the number of
candidates its answer is drawn from (the z's of the chain, the subjects for a reverse question, the objects for a
forward one), and at chance is :func:`analyses.reproduce.at_chance` (log p, accuracy and mean rank).

Each writes ``summary.json``, ``history.jsonl`` and PNG figures into ``out`` and returns the
summary; ``format_<name>(summary)`` renders it as one screen of text. Runs that train a model
also leave ``facts.jsonl`` and ``checkpoints/`` (so ``revlens probe`` can read them); the
sweeps (multi-token, positional) leave a full reversal run per setting in ``out/<setting>/``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from analyses.reproduce import (
    EvalSets, ReversalConfig, RunConfig, _panel, _write_history, _write_json, at_chance, curse_holds,
    reproduce_reversal, summarize, train_run, write_csv,
)
from facts.schema import FactSet
from facts.token_worlds import FORWARD, LEADS_TO, TokenVocab, chain_world, in_context_world, reversal_world
from facts.tokens import TokenizedFacts
from models.scoring import model_device
from models.transformer import POSITIONALS, Positional
from probes.views import heatmap_panels, save_png

# --- shared pieces --------------------------------------------------------------------------

def split_sets(batch: TokenizedFacts) -> dict[str, TokenizedFacts]:
    """``train`` and ``heldout`` only (for worlds where every statement has the same direction)."""
    return {split: batch.where(split=split) for split in ("train", "heldout") if len(batch.where(split=split))}


# --- 1. chain-of-thought intransitivity ------------------------------------------------------

@dataclass(frozen=True)
class ChainConfig(RunConfig):
    """The chain world and its run; the default model is the theory's one-layer transformer,
    whose per-head OV circuit is Zhu et al.'s Y."""

    model: str = "one-layer"
    steps: int = 60
    n_triples: int = 200
    n_heldout: int | None = None
    """Triples whose x ⇝ z is held out (None: 30%); the rest train it (Zhu et al.'s num_train)."""
    related: bool = False
    """Zhu et al.'s related tokens: two-token entities whose first token is fixed per kind."""


Triple = tuple[int, int, int]
LINKS = ("x→y", "y→z", "x⇝z")


def chain_triples(world: FactSet) -> list[Triple]:
    """Fact indices of each triple's links (x → y, y → z, x ⇝ z), in the order of the ⇝ facts."""
    index = {(f.subject, f.relation): i for i, f in enumerate(world)}
    triples = []
    for i, fact in enumerate(world):
        if fact.relation == LEADS_TO:
            first = index[fact.subject, FORWARD]
            triples.append((first, index[world[first].object, FORWARD], i))
    return triples


def heldout_triples(world: FactSet) -> list[Triple]:
    """The triples whose x ⇝ z is held out (their x → y and y → z are trained)."""
    return [t for t in chain_triples(world) if world[t[2]].forward == "heldout"]


def chain_sets(world: FactSet) -> EvalSets:
    """``train``, ``heldout`` (the held-out x ⇝ z) and the trained statements of each link."""
    link_of = {i: link for triple in chain_triples(world) for i, link in zip(triple, LINKS)}

    def sets(batch: TokenizedFacts) -> dict[str, TokenizedFacts]:
        out = split_sets(batch)
        for link in LINKS:
            rows = [r for r in range(len(batch)) if batch.split[r] == "train" and link_of[int(batch.fact[r])] == link]
            out[f"train/{link}"] = batch.take(rows)
        return out

    return sets


def _token_ids(vocab: TokenVocab, entities: Sequence[str]) -> Int[Tensor, " n"]:
    return torch.tensor([vocab.entity_ids(e)[0] for e in entities])


def _entity_tokens(vocab: TokenVocab, entities: Sequence[str]) -> Int[Tensor, "n k"]:
    """Every entity's k token ids (entities of one length k)."""
    return torch.tensor([vocab.entity_ids(e) for e in entities])


@torch.no_grad()
def greedy_next(model, prompts: Int[Tensor, "n pos"]) -> Int[Tensor, " n"]:
    """Greedy decoding of one token after equal-length prompts: argmax_t logits[i, −1, t]."""
    return model(prompts.to(model_device(model)))[:, -1].argmax(-1).cpu()


def greedy_entity(model, prompts: Int[Tensor, "n pos"], k: int) -> Int[Tensor, "n k"]:
    """Greedy decoding of k tokens after equal-length prompts (each token appended before the next)."""
    for _ in range(k):
        prompts = torch.cat([prompts, greedy_next(model, prompts)[:, None]], dim=1)
    return prompts[:, -k:]


def two_step_chain(model, world: FactSet, vocab: TokenVocab) -> dict[str, float]:
    """Chain of thought on the held-out triples: ŷ = greedy("x →"), then ẑ = greedy("ŷ →").

    ``two_step_accuracy`` = mean[ẑ = z]; ``step1_accuracy`` = mean[ŷ = y];
    ``step2_accuracy`` = mean[greedy("y →") = z], starting from the true y. An entity of k tokens
    is decoded greedily token by token and right only when all k are.
    """
    triples = heldout_triples(world)
    x = _entity_tokens(vocab, [world[a].subject for a, _, _ in triples])
    y = _entity_tokens(vocab, [world[a].object for a, _, _ in triples])
    z = _entity_tokens(vocab, [world[c].object for _, _, c in triples])
    arrow = torch.full((len(triples), 1), vocab.relation_id(FORWARD))

    def next_after(given: Tensor) -> Tensor:
        return greedy_entity(model, torch.cat([given, arrow], dim=1), given.shape[1])

    def accuracy(decoded: Tensor, truth: Tensor) -> float:
        return (decoded == truth).all(1).float().mean().item()

    y_hat = next_after(x)
    return {"step1_accuracy": accuracy(y_hat, y), "step2_accuracy": accuracy(next_after(y), z),
            "two_step_accuracy": accuracy(next_after(y_hat), z)}


def leads_to_circuits(model, leads_to: FactSet, vocab: TokenVocab) -> list[dict[str, Any]]:
    """Per circuit (direct path W_E·W_U, each head's OV = Y), the mean z-score of M[x, z] over
    trained and over held-out "x ⇝ z" facts; z is against 64 other z's of the same row."""
    from probes.circuits import circuit_table

    table = circuit_table(model, leads_to, vocab.entity_ids, kinds=("direct", "ov"))
    rows = []
    for (kind, layer, head), part in table.groupby(["circuit", "layer", "head"], dropna=False, sort=False):
        z = part.groupby("forward").z_ab.mean()
        rows.append({"circuit": kind if pd.isna(layer) else f"{kind} L{int(layer)}H{int(head)}",
                     "z_trained": float(z.get("train", math.nan)), "z_heldout": float(z.get("heldout", math.nan))})
    return rows


def ov_z_means(circuits: list[dict[str, Any]]) -> dict[str, float]:
    """Over the OV heads of :func:`leads_to_circuits`, the mean of each head's z of Y[x, z] for trained and for
    held-out x ⇝ z. A head whose z is undefined (NaN: its entries do not vary, e.g. a head that writes nothing) is
    left out, as :func:`analyses.compare.y_circuit_metrics` leaves it out; it had made the whole mean NaN."""
    ov = pd.DataFrame([r for r in circuits if r["circuit"].startswith("ov")], columns=["z_trained", "z_heldout"])
    return {"ov_z_trained": float(ov.z_trained.mean()), "ov_z_heldout": float(ov.z_heldout.mean())}


def chain_heatmap(model, world: FactSet, vocab: TokenVocab):
    """log p(candidate | given) for trained x ⇝ z and, on held-out triples, each of the three links."""
    held = heldout_triples(world)
    trained = [t for t in chain_triples(world) if world[t[2]].forward == "train"]

    def panel(triples: list[Triple], link: int) -> Tensor:
        return _panel(model, world, vocab, [(t[link], "forward") for t in triples])

    panels = [("trained x ⇝ z", panel(trained, 2)), ("held-out triples: x → y", panel(held, 0)),
              ("held-out triples: y → z", panel(held, 1)), ("held-out x ⇝ z (never trained)", panel(held, 2))]
    return heatmap_panels(panels, suptitle="log p(candidate | given): the diagonal is the true answer")


def reproduce_chain(out: str | Path, config: ChainConfig = ChainConfig(), progress: bool = True) -> dict[str, Any]:
    """Train on the chain world; score held-out x ⇝ z against the z's, chain x → ŷ → ẑ, read Y[x, z].

    Writes summary.json, history.jsonl, facts.jsonl, checkpoints/, curves.png, heatmap.png
    and circuits.png (mean z of Y[x, z], trained vs held-out facts).
    """
    from probes.logits import answer_table

    out = Path(out)
    began = time.perf_counter()
    vocab = TokenVocab()
    world = chain_world(n_triples=config.n_triples, seed=config.seed, vocab=vocab, n_heldout=config.n_heldout,
                        related=config.related)
    model, result = train_run(world, vocab, config, out, progress, sets=chain_sets(world))
    leads_to = FactSet(tuple(f for f in world if f.relation == LEADS_TO), world="chain: x ⇝ z", meta=world.meta)
    table = answer_table(model, leads_to, vocab, candidates=[f.object for f in leads_to])
    heldout = table[table.split == "heldout"]
    final = result.history[-1]["eval"]
    circuits = leads_to_circuits(model, leads_to, vocab)
    n_candidates = int(table.n_candidates.iloc[0])
    summary = {
        "experiment": "chain",
        "config": asdict(config),
        "n_train": world.count("train"),
        "n_heldout": int(len(heldout)),
        "n_candidates": n_candidates,
        "train_prob": final["train"]["prob"],
        "train_accuracy": final["train"]["accuracy"],
        "train_accuracy_by_link": {link: final[f"train/{link}"]["accuracy"] for link in LINKS},
        "heldout_logprob": float(heldout.logprob.mean()),
        "heldout_accuracy": float(heldout.correct.mean()),
        "heldout_mean_rank": float(heldout["rank"].mean()),
        "chance_logprob": -math.log(n_candidates),
        "chance_accuracy": 1.0 / n_candidates,
        "chance_mean_rank": (n_candidates + 1) / 2,
        **two_step_chain(model, world, vocab),
        **ov_z_means(circuits),
        "circuits": circuits,
        "steps": result.steps,
        "seconds": time.perf_counter() - began,
    }
    from analyses.figures import circuit_asymmetry_bars, logprob_curves

    title = f"{config.model} ({config.positional}), chain world"
    save_png(logprob_curves(result.history, summary["chance_logprob"], title=title), out / "curves.png")
    save_png(chain_heatmap(model, world, vocab), out / "heatmap.png")
    circuit_title = "Y[x, z] of x ⇝ z facts (z vs 64 other z's)"
    save_png(circuit_asymmetry_bars(circuits, title=circuit_title,  # both bars are the forward entry Y[x, z]
                                    bars=(("z_trained", "x ⇝ z trained"), ("z_heldout", "x ⇝ z held out"))),
             out / "circuits.png")
    _write_json(out / "summary.json", summary)
    return summary


def format_chain(summary: dict[str, Any]) -> str:
    """One screen: held-out x ⇝ z at chance, the two-step chain working, the OV evidence."""
    cfg = summary["config"]
    holds = summary["two_step_accuracy"] > 0.9 and at_chance(
        summary["heldout_logprob"], summary["chance_logprob"], summary["heldout_accuracy"], summary["n_heldout"],
        summary["chance_accuracy"], summary["heldout_mean_rank"], summary["chance_mean_rank"])
    links = "  ".join(f"{link} {acc:.3f}" for link, acc in summary["train_accuracy_by_link"].items())
    return "\n".join([
        f"chain world: {summary['n_train']} trained sentences, {summary['n_heldout']} held-out x ⇝ z, "
        f"{summary['n_candidates']} candidate z's",
        f"model {cfg['model']} · positional {cfg['positional']} · seed {cfg['seed']} · {summary['steps']} steps · "
        f"lr {cfg['lr']}",
        "",
        f"  trained: mean p(answer) {summary['train_prob']:.4f}; accuracy by link: {links}",
        f"  {'':30s}{'log p':>10s}{'accuracy':>10s}{'mean rank':>11s}",
        f"  {'held-out x ⇝ z (direct)':30s}{summary['heldout_logprob']:10.2f}{summary['heldout_accuracy']:10.3f}"
        f"{summary['heldout_mean_rank']:11.1f}",
        f"  {'chance':30s}{summary['chance_logprob']:10.2f}{summary['chance_accuracy']:10.3f}"
        f"{summary['chance_mean_rank']:11.1f}",
        f"  {'two-step chain x → ŷ → ẑ':30s}{'':10s}{summary['two_step_accuracy']:10.3f}"
        f"   (x → y {summary['step1_accuracy']:.3f}, y → z {summary['step2_accuracy']:.3f})",
        "",
        f"  OV circuit Y[x, z], mean z-score over heads: trained x ⇝ z {summary['ov_z_trained']:.2f}, "
        f"held-out {summary['ov_z_heldout']:.2f}",
        "",
        f"{'INTRANSITIVITY REPRODUCED' if holds else 'not reproduced (see numbers)'} in {summary['seconds']:.1f} s"
        + (": chaining works, the direct x ⇝ z is not inferred" if holds else ""),
    ])


# --- 2. in-context reversal ------------------------------------------------------------------

@dataclass(frozen=True)
class InContextConfig(RunConfig):
    """The in-context grid world and its run; ``control_pairs`` one-partner control pairs (0: none)."""

    steps: int = 40
    n_x: int = 100
    n_y: int = 10
    control_pairs: int = 200


def one_partner_context_world(n_pairs: int = 200, seed: int = 0, vocab: TokenVocab = TokenVocab()) -> FactSet:
    """Control for the in-context task: "x → y <-> y ← x" where every x has ONE partner y.

    The pairs and split of :func:`reversal_world` (its "both" pairs, 70%, train; the rest are
    held out): "y ←" alone names x, so the answer can be memorised instead of copied. A confound to read it with:
    each entity belongs to one pair, so a held-out pair's two tokens appear in no training sequence, and their
    embeddings and unembeddings are never trained (the unembedding only pushed down). The control would fail at
    them even if a copying circuit had been learnt on the trained tokens; the grid differs from it in two ways at
    once (many partners per x, every token trained), so its failure does not by itself show memorising.
    """
    pairs = reversal_world(n_pairs=n_pairs, seed=seed, vocab=vocab)
    facts = tuple(replace(f, forward=None, reverse="train" if f.group == "both" else "heldout", group="one-partner",
                          context=True) for f in pairs)
    return FactSet(facts, world="in-context one-partner control", meta={"n_pairs": n_pairs, "seed": seed})


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """A run's numbers without its config and bookkeeping."""
    return {k: v for k, v in summary.items() if k not in ("experiment", "config", "steps", "seconds")}


def _merged_history(runs: dict[str, Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Histories of runs with the same evaluation steps as one, eval sets named ``<run>: <set>``."""
    merged = []
    for records in zip(*runs.values()):
        evals = {f"{run}: {name}": v for run, record in zip(runs, records) for name, v in record["eval"].items()}
        merged.append({"step": records[0]["step"], "eval": evals})
    return merged


def reproduce_in_context(out: str | Path, config: InContextConfig = InContextConfig(), progress: bool = True
                         ) -> dict[str, Any]:
    """Train on the in-context grid world (and the one-partner control); score the held-out reverse.

    Writes summary.json, history.jsonl, facts.jsonl, checkpoints/, logits.csv, curves.png;
    the control run goes to ``out/control/``.
    """
    from probes.logits import answer_table

    out = Path(out)
    began = time.perf_counter()
    vocab = TokenVocab()
    world = in_context_world(config.n_x, config.n_y, config.seed, vocab)
    model, result = train_run(world, vocab, config, out, progress, sets=split_sets)
    # no random-answer controls: facts.language.controls counts every x answering "y ←" in the
    # grid as right (it ignores the context), so none would be left to draw
    table = answer_table(model, world, vocab, n_controls=0)
    write_csv(table, out / "logits.csv")
    summary = {**summarize(table, config, 0.0, result.steps), "experiment": "in-context"}
    histories = {"grid": result.history}
    if config.control_pairs:
        control_world = one_partner_context_world(config.control_pairs, config.seed, vocab)
        control_model, control_result = train_run(control_world, vocab, config, out / "control", progress,
                                                  sets=split_sets)
        control_table = answer_table(control_model, control_world, vocab, n_controls=0)
        summary["control"] = _headline(summarize(control_table, config, 0.0, control_result.steps))
        histories["one-partner"] = control_result.history
    summary["seconds"] = time.perf_counter() - began
    from analyses.figures import logprob_curves

    title = f"{config.model} ({config.positional}): in-context reversal, grid vs one-partner control"
    chances = {"grid": summary["chance_logprob"]} | (  # the two worlds have their own candidates: their own chance
        {"one-partner": summary["control"]["chance_logprob"]} if "control" in summary else {})
    save_png(logprob_curves(_merged_history(histories), chances, title=title), out / "curves.png")
    _write_json(out / "summary.json", summary)
    return summary


def format_in_context(summary: dict[str, Any]) -> str:
    """One screen: held-out reverse answered from context (high accuracy), the control at chance."""
    cfg = summary["config"]
    runs = [("grid (copy needed)", summary)] + ([("one-partner control", summary["control"])] if "control" in summary
                                               else [])
    lines = [
        f"in-context world: {cfg['n_x']} x × {cfg['n_y']} y, \"x → y <-> y ← x\": {summary['n_train']} trained, "
        f"{summary['n_heldout']} held-out sequences",
        f"model {cfg['model']} · positional {cfg['positional']} · seed {cfg['seed']} · {summary['steps']} steps · "
        f"lr {cfg['lr']}",
        "",
        f"  {'':22s}{'train p':>9s}{'held-out log p':>16s}{'accuracy':>10s}{'mean rank':>11s}{'chance log p':>14s}",
    ]
    for name, run in runs:
        lines.append(f"  {name:22s}{run['train_prob']:9.4f}{run['heldout_reverse_logprob']:16.2f}"
                     f"{run['heldout_reverse_accuracy']:10.3f}{run['heldout_reverse_mean_rank']:11.1f}"
                     f"{run['chance_logprob']:14.2f}")
    verdict = "NO CURSE IN CONTEXT" if summary["heldout_reverse_accuracy"] > 0.9 else "not reproduced (see numbers)"
    lines += ["", f"{verdict} in {summary['seconds']:.1f} s"
              + (": the held-out reverse is copied from the prompt" if summary["heldout_reverse_accuracy"] > 0.9
                 else "")]
    if "control" in summary and summary["control"]["heldout_reverse_accuracy"] < 0.1:
        lines.append("control: when every x has one partner the held-out reverse is not answered; its held-out pairs' "
                     "tokens are in no training sequence, so this failure alone does not show memorising")
    return "\n".join(lines)


# --- 3, 4. the reversal run swept over entity length and positional encoding ------------------

@dataclass(frozen=True)
class MultiTokenConfig:
    """Tokens per entity to compare; every other setting is the reversal run's."""

    ks: tuple[int, ...] = (2, 3)
    reversal: ReversalConfig = ReversalConfig()


@dataclass(frozen=True)
class PositionalConfig:
    """Positional encodings to compare; every other setting is the reversal run's."""

    positionals: tuple[Positional, ...] = POSITIONALS  # type: ignore[assignment]
    reversal: ReversalConfig = ReversalConfig()


def reversal_sweep(out: Path, runs: dict[str, ReversalConfig], progress: bool) -> list[dict[str, Any]]:
    """One reversal run per labelled config into ``out/<label>/``; their headline rows.

    A k-token answer's log-prob sums its tokens, log p(a | c) = Σ_j log p(a_j | c, a_<j); each
    row also gives the per-token mean and its chance. The summed log p's chance is −log of the entities of the
    answer's kind, ``chance_logprob`` (a model uniform over the kind's k-token words gives each 1/#kind, whatever
    k); the per-token mean's, ``chance_logprob_per_token``, is that over k, the same model's per-token mean.
    (−log of an alphabet per token would be a model that knows only which tokens a kind's words are spelt
    with: its summed log p, −k·log |alphabet|, lies below the entity chance the verdict uses.) ``out/history.jsonl``
    holds every run's records, each tagged with ``"run": label``.
    """
    rows, history = [], []
    for label, config in runs.items():
        summary = reproduce_reversal(out / label, config, progress)
        records = [json.loads(line) for line in (out / label / "history.jsonl").read_text().splitlines()]
        history += [{"run": label, **record} for record in records]
        rows.append({"run": label, "k": config.k, "positional": config.positional, **_headline(summary),
                     "heldout_reverse_logprob_per_token": summary["heldout_reverse_logprob"] / config.k,
                     "chance_logprob_per_token": summary["chance_logprob"] / config.k,
                     "train_logprob": records[-1]["eval"]["train"]["logprob"], "seconds": summary["seconds"]})
    _write_history(out / "history.jsonl", history)
    return rows


def _reproduce_sweep(name: str, out: str | Path, config, runs: dict[str, ReversalConfig], progress: bool,
                     title: str) -> dict[str, Any]:
    """Run :func:`reversal_sweep`, then write summary.json (rows + the all-runs verdict) and comparison.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    rows = reversal_sweep(out, runs, progress)
    summary = {"experiment": name, "config": asdict(config), "runs": rows,
               "curse_holds_for_all": all(curse_holds(r) for r in rows), "seconds": time.perf_counter() - began}
    from analyses.figures import curse_bars

    save_png(curse_bars(rows, title=title), out / "comparison.png")
    _write_json(out / "summary.json", summary)
    return summary


def reproduce_multi_token(out: str | Path, config: MultiTokenConfig = MultiTokenConfig(), progress: bool = True
                          ) -> dict[str, Any]:
    """The reversal run for each k in ``config.ks`` (``out/k<k>/``), compared in comparison.png."""
    runs = {f"k{k}": replace(config.reversal, k=k) for k in config.ks}
    return _reproduce_sweep("multi-token", out, config, runs, progress,
                            title="Reversal with k-token entities: trained vs held-out reverse")


def reproduce_positional(out: str | Path, config: PositionalConfig = PositionalConfig(), progress: bool = True
                         ) -> dict[str, Any]:
    """The reversal run for each positional encoding (``out/<positional>/``), compared in comparison.png."""
    runs = {p: replace(config.reversal, positional=p) for p in config.positionals}
    return _reproduce_sweep("positional", out, config, runs, progress,
                            title=f"Reversal with each positional encoding ({config.reversal.model})")


def _sweep_table(summary: dict[str, Any],
                 extra: tuple[tuple[str, Callable[[dict[str, Any]], float]], ...] = ()) -> list[str]:
    """Per run: train p, held-out log p beside its chance, then each of ``extra`` (a heading and the row's value),
    accuracy, ranks."""
    head = f"  {'run':10s}{'train p':>9s}{'held-out log p':>16s}{'chance':>9s}"
    head += "".join(f"{heading:>14s}" for heading, _ in extra)
    lines = [head + f"{'accuracy':>10s}{'mean rank':>11s}{'chance rank':>13s}"]
    for row in summary["runs"]:
        line = f"  {row['run']:10s}{row['train_prob']:9.4f}{row['heldout_reverse_logprob']:16.2f}"
        line += f"{row['chance_logprob']:9.2f}" + "".join(f"{value(row):14.2f}" for _, value in extra)
        lines.append(line + f"{row['heldout_reverse_accuracy']:10.3f}"
                            f"{row['heldout_reverse_mean_rank']:11.1f}{row['chance_mean_rank']:13.1f}")
    return lines


def _sweep_verdict(summary: dict[str, Any], what: str) -> str:
    verdict = f"REVERSAL CURSE HOLDS FOR {what}" if summary["curse_holds_for_all"] else "not reproduced for every run"
    return f"{verdict} in {summary['seconds']:.1f} s"


def format_multi_token(summary: dict[str, Any]) -> str:
    """One screen: per k, training probability and the held-out reverse (summed and per token) vs chance."""
    cfg = summary["config"]["reversal"]
    return "\n".join([
        f"reversal world with k-token entities, {cfg['n_pairs']} pairs · model {cfg['model']} · "
        f"{cfg['steps']} steps · lr {cfg['lr']}",
        "log p sums the k answer tokens; chance is −log(#entities of the answer's kind); per token: log p / k, "
        "against chance / k",
        "",
        *_sweep_table(summary, extra=(("log p / token", lambda row: row["heldout_reverse_logprob_per_token"]),
                                      ("chance/token", lambda row: row["chance_logprob"] / row["k"]))),
        "",
        _sweep_verdict(summary, "EVERY k"),
    ])


def format_positional(summary: dict[str, Any]) -> str:
    """One screen: per positional encoding, training probability and the held-out reverse vs chance."""
    cfg = summary["config"]["reversal"]
    return "\n".join([
        f"reversal world, {cfg['n_pairs']} pairs, k = {cfg['k']} · model {cfg['model']} · {cfg['steps']} steps · "
        f"lr {cfg['lr']}",
        "",
        *_sweep_table(summary),
        "",
        _sweep_verdict(summary, "EVERY POSITIONAL ENCODING"),
    ])


# --- 5. embedding cosine similarity -----------------------------------------------------------

@dataclass(frozen=True)
class EmbeddingConfig(RunConfig):
    """The reversal world (single-token entities) and its run."""

    n_pairs: int = 200


def pair_cosines(model, world: FactSet, vocab: TokenVocab) -> Float[Tensor, "n n"]:
    """C[i, j] = cos(W_E[A_i], W_E[B_j]) over the world's pairs (A_i subject, B_i object of fact i)."""
    embeddings = torch.nn.functional.normalize(model.W_E.detach().float(), dim=-1)
    a = embeddings[_token_ids(vocab, [f.subject for f in world]).to(embeddings.device)]
    b = embeddings[_token_ids(vocab, [f.object for f in world]).to(embeddings.device)]
    return (a @ b.T).cpu()


def paired_unpaired(cosines: Float[Tensor, "n n"]) -> tuple[Float[Tensor, " n"], Float[Tensor, " n_n_minus_1"]]:
    """The paired cosines C[i, i] and the unpaired ones C[i, j], j ≠ i."""
    return cosines.diagonal(), cosines[~torch.eye(len(cosines), dtype=torch.bool)]


def cosine_stats(cosines: Float[Tensor, "n n"]) -> dict[str, float]:
    """Paired (diagonal) vs unpaired (off-diagonal) cosines.

    ``effect_size`` = (mean paired − mean unpaired) / std unpaired; ``paired_mean_rank``: rank
    of B_i among all B_j by cosine to A_i (1 = nearest; (n + 1)/2 when there is no structure);
    ``nearest_accuracy``: how often B_i is the nearest (1/n by chance).
    """
    n = len(cosines)
    paired, unpaired = paired_unpaired(cosines)
    rank = 1 + (cosines > paired[:, None]).sum(1).float()
    return {"paired_mean": paired.mean().item(), "unpaired_mean": unpaired.mean().item(),
            "unpaired_std": unpaired.std().item(),
            "effect_size": ((paired.mean() - unpaired.mean()) / unpaired.std()).item(),
            "paired_mean_rank": rank.mean().item(), "chance_mean_rank": (n + 1) / 2,
            "nearest_accuracy": (rank == 1).float().mean().item(), "chance_nearest_accuracy": 1 / n}


def reproduce_embeddings(out: str | Path, config: EmbeddingConfig = EmbeddingConfig(), progress: bool = True
                         ) -> dict[str, Any]:
    """Train on the reversal world, then compare cos(W_E[A_i], W_E[B_i]) with unpaired cosines.

    The history records the mean paired and unpaired cosine at every evaluation. Writes
    summary.json, history.jsonl, facts.jsonl, checkpoints/, curves.png and cosines.png.
    """
    out = Path(out)
    began = time.perf_counter()
    vocab = TokenVocab()
    world = reversal_world(n_pairs=config.n_pairs, seed=config.seed, vocab=vocab)

    def track(step: int, model) -> dict[str, float]:
        stats = cosine_stats(pair_cosines(model, world, vocab))
        return {"cosine_paired": stats["paired_mean"], "cosine_unpaired": stats["unpaired_mean"]}

    model, result = train_run(world, vocab, config, out, progress, callbacks=[track])
    cosines = pair_cosines(model, world, vocab)
    both = torch.tensor([f.group == "both" for f in world])
    first, final = result.history[0], result.history[-1]["eval"]
    summary = {
        "experiment": "embeddings",
        "config": asdict(config),
        "n_pairs": len(world),
        "train_prob": final["train"]["prob"],
        "heldout_reverse_logprob": final["heldout"]["logprob"],
        "chance_logprob": -math.log(len(world)),  # each answer's kind: the n_pairs subjects or the n_pairs objects
        **cosine_stats(cosines),
        "paired_mean_both_trained": cosines.diagonal()[both].mean().item(),
        "paired_mean_one_way": cosines.diagonal()[~both].mean().item(),
        "initial_paired_mean": first["cosine_paired"],
        "initial_unpaired_mean": first["cosine_unpaired"],
        "steps": result.steps,
        "seconds": time.perf_counter() - began,
    }
    from analyses.figures import cosine_histogram, logprob_curves

    title = f"{config.model} ({config.positional}), reversal world"
    save_png(logprob_curves(result.history, summary["chance_logprob"], title=title), out / "curves.png")
    figure = cosine_histogram(*paired_unpaired(cosines), title=f"cos(W_E[A], W_E[B]), {result.steps} steps, {title}")
    save_png(figure, out / "cosines.png")
    _write_json(out / "summary.json", summary)
    return summary


def format_embeddings(summary: dict[str, Any]) -> str:
    """One screen: paired vs unpaired embedding cosines, before and after training.

    Verdict "no pairing structure" when |effect size| < 0.5 (pairs differ from non-pairs by
    less than half the spread of the unpaired cosines)."""
    cfg = summary["config"]
    no_structure = abs(summary["effect_size"]) < 0.5
    return "\n".join([
        f"reversal world, {summary['n_pairs']} pairs · model {cfg['model']} · {summary['steps']} steps · "
        f"lr {cfg['lr']}: train p {summary['train_prob']:.4f}, held-out reverse log p "
        f"{summary['heldout_reverse_logprob']:.2f} (chance {summary['chance_logprob']:.2f})",
        "",
        f"  {'cos(W_E[A_i], W_E[B_j])':34s}{'initial':>9s}{'trained':>9s}",
        f"  {'paired (j = i)':34s}{summary['initial_paired_mean']:9.3f}{summary['paired_mean']:9.3f}",
        f"  {'  trained both ways':34s}{'':9s}{summary['paired_mean_both_trained']:9.3f}",
        f"  {'  trained one way':34s}{'':9s}{summary['paired_mean_one_way']:9.3f}",
        f"  {'unpaired (j ≠ i)':34s}{summary['initial_unpaired_mean']:9.3f}{summary['unpaired_mean']:9.3f}"
        f"   (std {summary['unpaired_std']:.3f})",
        "",
        f"  effect size (paired − unpaired) / std: {summary['effect_size']:.2f}; rank of B_i among all B by cosine "
        f"to A_i: {summary['paired_mean_rank']:.1f} (no structure: {summary['chance_mean_rank']:.1f}); "
        f"B_i nearest: {summary['nearest_accuracy']:.3f} (chance {summary['chance_nearest_accuracy']:.3f})",
        "",
        f"{'NO PAIRING STRUCTURE IN THE EMBEDDINGS' if no_structure else 'paired embeddings differ (see numbers)'} "
        f"in {summary['seconds']:.1f} s",
    ])
