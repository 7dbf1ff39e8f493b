"""`revlens reproduce reversal`: the paper's token-level reversal experiment, end to end.

World (docs/SCIENCE.md §4) → HookedTransformer → trainer (with evaluation history) → probes →
``summary.json``, ``history.jsonl``, ``logits.csv``, ``facts.jsonl``, checkpoints and two
figures: ``curves.png`` (train vs held-out log-probability) and ``heatmap.png`` (the 4-panel
log-probability heatmap: train-forward, train-backward, held-out seen and unseen directions).

"Held-out reverse" is the untrained direction of a one-way pair, whichever sentence form it
takes ("x → y" or "y ← x"): the direction whose converse alone was trained.

Chance is that of a model that knows which kind of entity the relation token asks for and nothing about
the pair (:mod:`probes.logits`): "→" only ever answers an object and "←" a subject, so each answer is
ranked among the 200 entities of its own kind (:func:`probes.logits.kind_candidates`; not all 400), and
chance is log p = −log 200, accuracy 1/200 and mean rank 100.5.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from facts.io import atomic_write, facts_sha256, save_jsonl, write_text_atomic
from facts.schema import FactSet
from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import TokenizedFacts, tokenize
from models.training import Callback, TrainConfig, TrainResult, train
from models.transformer import SPECS, Positional, build_model, freeze_embeddings, model_card
from probes.stats import above_chance
from probes.views import heatmap_panels, save_png

PANEL_SIZE = 20
LOSSES = ("answer", "sequence")
EvalSets = Callable[[TokenizedFacts], dict[str, TokenizedFacts]]


@dataclass(frozen=True)
class RunConfig:
    """Model and optimisation settings of one from-scratch training run."""

    model: str = "tiny"
    positional: Positional = "absolute"
    seed: int = 0
    steps: int = 80
    lr: float = 1e-2
    batch_size: int | None = None
    eval_every: int = 4
    device: str | None = None
    checkpoint_every: int | None = None
    """Also checkpoint every this many steps (a killed run resumes from there); None: at the end only."""
    layers: int | None = None
    """The model's depth in place of its spec's (Zhu et al.'s ``--n_layers``); None: the spec's."""
    loss: str = "answer"
    """``"answer"``: loss on the answer entity only (Zhu et al.'s default); ``"sequence"``: on every
    token after the first (their ``--loss_whole_sequence``)."""
    freeze_embeddings: bool = False
    """Token and position embeddings frozen at initialisation (their ``--freeze_wte_wpe``)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")


@dataclass(frozen=True)
class ReversalConfig(RunConfig):
    """Everything that decides the numbers of one reversal run."""

    k: int = 1
    n_pairs: int = 200


def eval_sets(batch: TokenizedFacts) -> dict[str, TokenizedFacts]:
    """``train``, ``heldout`` and their per-direction parts (empty parts are left out)."""
    sets = {}
    for split in ("train", "heldout"):
        sets[split] = batch.where(split=split)
        for direction in ("forward", "reverse"):
            sets[f"{split}/{direction}"] = batch.where(split=split, direction=direction)
    return {name: part for name, part in sets.items() if len(part)}


def _panel(model, world: FactSet, vocab: TokenVocab, statements: list[tuple[int, str]]) -> torch.Tensor:
    from probes.logits import candidate_logprobs

    statements = statements[:PANEL_SIZE]
    if not statements:
        return torch.zeros(0, 0)
    answers = [world[i].given_and_answer(d)[2] for i, d in statements]
    return candidate_logprobs(model, world, vocab, statements, answers)


def reversal_heatmap(model, world: FactSet, vocab: TokenVocab):
    """The 4-panel figure: only the held-out unseen direction should lack a diagonal."""
    both = [i for i, f in enumerate(world) if f.group == "both"]
    one_way = [i for i, f in enumerate(world) if f.group == "one-way"]
    seen = [(i, "forward" if world[i].forward == "train" else "reverse") for i in one_way]
    unseen = [(i, "reverse" if d == "forward" else "forward") for i, d in seen]
    panels = [
        ("train: forward (x → y)", _panel(model, world, vocab, [(i, "forward") for i in both])),
        ("train: backward (y ← x)", _panel(model, world, vocab, [(i, "reverse") for i in both])),
        ("held-out pairs: seen direction", _panel(model, world, vocab, seen)),
        ("held-out pairs: unseen direction", _panel(model, world, vocab, unseen)),
    ]
    return heatmap_panels(panels, suptitle="log p(candidate | given): the diagonal is the true answer")


def ov_asymmetry(model, world: FactSet, vocab: TokenVocab) -> dict[str, float]:
    """The OV circuit's asymmetry on the one-way facts (SCIENCE.md §3): per head, the mean z-score of
    the trained direction's entry Y[A, B] and of the held-out one's Y[B, A] (against 64 random
    controls of the same row), averaged over the heads that have one (:func:`analyses.compare.y_circuit_metrics`:
    a head whose z is undefined, NaN, is left out, not made the mean); ``ov_asymmetry`` = z_trained − z_heldout."""
    from analyses.compare import y_circuit_metrics
    from probes.circuits import circuit_table

    y = y_circuit_metrics(circuit_table(model, world, vocab.entity_ids, kinds=("ov",)))
    return {"ov_z_trained": y["z_trained"], "ov_z_heldout": y["z_heldout"], "ov_asymmetry": y["asymmetry_index"]}


def chance_levels(rows: pd.DataFrame) -> dict[str, Any]:
    """Chance for the statements of ``rows`` (an :func:`probes.logits.answer_table`), each at its own candidate
    set's, the entities of its answer's kind (n of them): ``chance_logprob`` the mean of −log n, ``chance_accuracy``
    of 1/n (the binomial test's rate), ``chance_mean_rank`` of (n + 1)/2 (the mean of a rank uniform on 1…n);
    ``n_candidates`` n, or [smallest, largest] where the rows' kinds differ in size (the reversal world's do not:
    200 subjects, 200 objects)."""
    sizes = rows.n_candidates.astype(float)
    among = sorted({int(n) for n in rows.n_candidates})
    return {"n_candidates": among[0] if len(among) == 1 else [among[0], among[-1]],
            "chance_logprob": float(rows.chance_logprob.mean()), "chance_accuracy": float((1 / sizes).mean()),
            "chance_mean_rank": float(((sizes + 1) / 2).mean())}


def summarize(table: pd.DataFrame, config: ReversalConfig, seconds: float, steps: int) -> dict[str, Any]:
    """The headline numbers (docs/SCIENCE.md §4): training probability vs held-out reverse at chance, the chance
    of the held-out statements' own answer kinds (:func:`chance_levels`)."""
    train_rows, heldout_rows = table[table.trained], table[table.split == "heldout"]
    chance = chance_levels(heldout_rows)
    return {
        "experiment": "reversal",
        "config": asdict(config),
        "n_train": int(len(train_rows)),
        "n_heldout": int(len(heldout_rows)),
        "n_candidates": chance["n_candidates"],
        "train_prob": float(train_rows.prob.mean()),
        "train_accuracy": float(train_rows.correct.mean()),
        "heldout_reverse_logprob": float(heldout_rows.logprob.mean()),
        "heldout_reverse_accuracy": float(heldout_rows.correct.mean()),
        "heldout_reverse_mean_rank": float(heldout_rows["rank"].mean()),
        "chance_logprob": chance["chance_logprob"],
        "chance_accuracy": chance["chance_accuracy"],
        "chance_mean_rank": chance["chance_mean_rank"],
        "steps": steps,
        "seconds": seconds,
    }


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _write_history(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """``table`` as CSV (no index), written atomically (:func:`facts.io.atomic_write`)."""
    atomic_write(path, lambda temporary: table.to_csv(temporary, index=False))


def train_run(
    world: FactSet, vocab: TokenVocab, config: RunConfig | ReversalConfig, out: Path, progress: bool,
    sets: EvalSets = eval_sets, callbacks: Sequence[Callback] = (), resume: bool = False,
) -> tuple[torch.nn.Module, TrainResult]:
    """Train the config's model on ``world``'s training statements; the model comes back in eval mode.

    Writes ``facts.jsonl``, ``history.jsonl`` and ``checkpoints/`` into ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    batch = tokenize(world, vocab)
    n_ctx = SPECS[config.model].n_ctx
    if batch.tokens.shape[-1] > n_ctx:
        raise ValueError(f"{world.world} world (meta {world.meta}): sentences of {batch.tokens.shape[-1]} tokens do not "
                         f"fit the {config.model!r} model's context of {n_ctx}; use fewer tokens per entity (--k)")
    model = build_model(config.model, vocab.d_vocab, config.positional, config.seed, config.device, config.layers)
    if config.freeze_embeddings:
        freeze_embeddings(model)
    train_set = batch.where(split="train")
    result = train(
        model,
        train_set.with_sequence_loss() if config.loss == "sequence" else train_set,
        TrainConfig(steps=config.steps, lr=config.lr, batch_size=config.batch_size,
                    eval_every=config.eval_every, checkpoint_every=config.checkpoint_every, seed=config.seed,
                    progress=progress),
        eval_sets=sets(batch),
        callbacks=callbacks,
        checkpoint_dir=out / "checkpoints",
        model_card=model_card(config.model, vocab.d_vocab, config.positional, config.seed, config.layers),
        resume=resume,
        run_card={"world": world.world, "world_meta": world.meta, "world_sha256": facts_sha256(world),
                  **({"loss": config.loss} if config.loss != "answer" else {}),
                  **({"freeze_embeddings": True} if config.freeze_embeddings else {})},
    )
    save_jsonl(world, out / "facts.jsonl")
    _write_history(out / "history.jsonl", result.history)
    return model.eval(), result


RANK_FRACTION = 0.5
"""At chance, the held-out mean rank is no better (lower) than this share of chance's mean rank (:func:`at_chance`)."""


def at_chance(logprob: float, chance_logprob: float, accuracy: float, n: int, chance_accuracy: float,
              mean_rank: float, chance_mean_rank: float) -> bool:
    """Held-out answers at chance (chance: the answer's own kind, :mod:`probes.logits`), all three of:

    * their mean log p at most chance + 0.5 nats;
    * their greedy accuracy over ``n`` statements not above chance (:func:`probes.stats.above_chance`, the exact
      binomial test at 5%). The mean log p alone would pass a model that answers half the questions (log p ≈ 0)
      and scores the rest at −15;
    * their mean rank no better than half of chance's: ``mean_rank ≥`` :data:`RANK_FRACTION` × ``chance_mean_rank``
      ((n + 1)/4 among n candidates: 50.25 of 200). Log p and accuracy alone pass a model that puts the true
      answer second of the candidates everywhere at 0.4% (log p −5.5, about chance; accuracy 0): it knows the
      pairs, and only its rank (2) shows it. Why half: a model that ignores the pair ranks the answer uniformly,
      mean (n + 1)/2; one that has only narrowed the answer to a subset S of its kind (uniform there) has log p
      −log |S| and mean rank about (|S| + 1)/2, so at the log p condition's bound (|S| = n·e^−0.5) its rank is
      0.61 of chance's: at 1/2 the rank condition refuses no model the log p condition lets through for that
      reason, only what log p is blind to, a right answer near the top of a flat distribution. Sampling noise
      does not reach it: a chance model's mean rank over m statements falls below half chance's with a
      probability under 5% from m = 4 on (1/24 there), at 60 statements it sits ~7 standard deviations away.
      A NaN ``mean_rank`` (a summary written before ranks were kept) leaves this condition out.
    """
    return (logprob <= chance_logprob + 0.5 and not above_chance(round(accuracy * n), n, chance_accuracy)
            and not mean_rank < RANK_FRACTION * chance_mean_rank)


def curse_holds(summary: dict[str, Any]) -> bool:
    """The reversal verdict: trained sentences learnt (mean p > 0.99), the held-out reverse at chance
    (:func:`at_chance`: log p, accuracy and mean rank against the chance of each answer's own kind)."""
    return summary["train_prob"] > 0.99 and at_chance(
        summary["heldout_reverse_logprob"], summary["chance_logprob"], summary["heldout_reverse_accuracy"],
        summary["n_heldout"], summary["chance_accuracy"], summary["heldout_reverse_mean_rank"],
        summary["chance_mean_rank"])


def reproduce_reversal(out: str | Path, config: ReversalConfig = ReversalConfig(), progress: bool = True,
                       resume: bool = False) -> dict[str, Any]:
    """Run the experiment and write its files into ``out``; returns the summary."""
    from probes.logits import answer_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    vocab = TokenVocab()
    world = reversal_world(n_pairs=config.n_pairs, k=config.k, seed=config.seed, vocab=vocab)
    model, result = train_run(world, vocab, config, out, progress, resume=resume)
    table = answer_table(model, world, vocab)  # each answer ranked among its own kind
    circuits = ov_asymmetry(model, world, vocab)
    seconds = time.perf_counter() - began
    summary = {**summarize(table, config, seconds, result.steps), **circuits}

    write_csv(table, out / "logits.csv")
    from analyses.figures import logprob_curves

    title = f"{config.model} ({config.positional}), reversal world k={config.k}"
    save_png(logprob_curves(result.history, summary["chance_logprob"], title=title), out / "curves.png")
    save_png(reversal_heatmap(model, world, vocab), out / "heatmap.png")
    _write_json(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen text a person reads at a glance."""
    cfg = summary["config"]
    verdict = "REVERSAL CURSE REPRODUCED" if curse_holds(summary) else "not reproduced (see numbers)"
    lines = [
        f"reversal world: {summary['n_train']} trained sentences, {summary['n_heldout']} held-out reverse, "
        f"each answer ranked among the {summary['n_candidates']} entities of its kind",
        f"model {cfg['model']} · positional {cfg['positional']} · seed {cfg['seed']} · "
        f"{summary['steps']} steps · lr {cfg['lr']}",
        "",
        f"  {'':26s}{'mean p(answer)':>16s}{'log p':>10s}{'accuracy':>10s}{'mean rank':>11s}",
        f"  {'trained sentences':26s}{summary['train_prob']:16.4f}{'':>10s}{summary['train_accuracy']:10.3f}",
        f"  {'held-out reverse':26s}{'':16s}{summary['heldout_reverse_logprob']:10.2f}"
        f"{summary['heldout_reverse_accuracy']:10.3f}{summary['heldout_reverse_mean_rank']:11.1f}",
        f"  {'chance (answer kind)':26s}{'':16s}{summary['chance_logprob']:10.2f}"
        f"{summary['chance_accuracy']:10.3f}{summary['chance_mean_rank']:11.1f}",
        "",
        f"{verdict} in {summary['seconds']:.1f} s (world + training + probes)",
    ]
    if "ov_asymmetry" in summary:
        lines.insert(-2, f"  OV circuit, one-way facts: z(Y[A,B] trained) {summary['ov_z_trained']:.2f} · "
                         f"z(Y[B,A] held out) {summary['ov_z_heldout']:.2f} · asymmetry {summary['ov_asymmetry']:.2f}")
    if summary["heldout_reverse_logprob"] < summary["chance_logprob"] - 0.5:
        lines.append("note: held-out reverse sits below chance: training pushes probability onto trained answers")
    return "\n".join(lines)
