"""One small trainer for every model kind (bilinear, HookedTransformer, pretrained).

AdamW on the mean cross-entropy of the *answer* tokens (:func:`models.scoring.answer_loss`).
Batches are a fixed function of (seed, step): epoch e shuffles the rows with a generator
seeded by ``derived_seed(seed, e)``, so resuming at step s replays exactly the batches an uninterrupted
run would have seen, the same seed gives the same numbers, and runs of different seeds share no epoch's order.

Every ``eval_every`` steps the trainer scores each evaluation set (mean answer log-prob,
mean probability, greedy accuracy) and calls the callbacks, whose dicts join the record.
Every ``checkpoint_every`` steps, and at the end, it writes an atomic checkpoint holding the
weights, the optimizer state and the history so far (:mod:`models.checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from facts.tokens import TokenizedFacts
from models.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    remove_checkpoints,
    restore_model,
    save_checkpoint,
)
from models.scoring import answer_logits, check_token_ids, model_device, score_answers

Callback = Callable[[int, torch.nn.Module], Mapping[str, Any] | None]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad configuration); the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``batch_size=None`` trains full-batch; ``optimizer`` is
    ``"adamw"`` (the paper's experiments) or ``"sgd"`` (plain gradient descent, the theory's).

    ``deterministic`` turns on ``torch.use_deterministic_algorithms`` while training: on a
    multi-threaded CPU the embedding gradient otherwise sums in a thread-dependent order and
    two runs of the same seed drift apart by ~1e-7. Ops with no deterministic kernel (some
    CUDA ones) only warn; CUDA also needs ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for bitwise
    equality, which torch cannot promise across devices or versions.
    """

    steps: int = 100
    lr: float = 1e-2
    weight_decay: float = 0.01
    batch_size: int | None = None
    eval_every: int = 10
    checkpoint_every: int | None = None
    seed: int = 0
    progress: bool = True
    deterministic: bool = True
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise TrainingError(f"{name} must be an integer, got {value!r}")
        if self.steps < 1:
            raise TrainingError(f"steps must be ≥ 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"lr must be a positive finite number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise TrainingError(f"weight_decay must be a finite number ≥ 0, got {self.weight_decay}")
        if self.batch_size is not None and self.batch_size < 1:
            raise TrainingError(f"batch_size must be ≥ 1 or None (full batch), got {self.batch_size}")
        if self.eval_every < 1:
            raise TrainingError(f"eval_every must be ≥ 1, got {self.eval_every}")
        if self.optimizer not in ("adamw", "sgd"):
            raise TrainingError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise TrainingError(f"checkpoint_every must be ≥ 1 or None, got {self.checkpoint_every}")


@dataclass
class TrainResult:
    """The history (one record per evaluation) and the wall time spent in this call."""

    history: list[dict[str, Any]]
    seconds: float
    steps: int


def derived_seed(seed: int, index: int) -> int:
    """The generator seed of draw ``index`` (a step, an epoch, a traced statement) of a run seeded ``seed``:
    seed · 1,000,003 + index (mod 2⁶³). Runs of different seeds share no draw's seed while index < 1,000,003;
    ``seed + index`` would make seed s + 1's draws seed s's shifted by one (epoch e + 1's batch order of seed s
    was seed s + 1's epoch e), so a sweep's seeds would not be independent. Seed 0 keeps ``index``, so
    ``derived_seed(0, s)`` is the raw seed s that builds a token world or a model's initial weights: a draw of the
    same kind and shape as those must use a stream of its own (causal tracing's noise:
    :func:`probes.tracing.noise_seed`)."""
    return (seed * 1_000_003 + index) % (1 << 63)


def stream_seed(stream: str, *parts: int) -> int:
    """A seed of a stream of draws of its own: a hash of the stream's name and ``parts`` (63 bits), so that no two
    kinds of draw made from one run's seed share a generator's sequence."""
    return int.from_bytes(hashlib.sha256(":".join((stream, *map(str, parts))).encode()).digest()[:8], "big") >> 1


def step_seed(seed: int, step: int) -> int:
    """The seed of torch's generator during training step ``step``: what a model draws inside its forward pass
    (dropout, as a transformers model in train mode does) is then a function of (seed, step), like the batches,
    so a run is reproduced across processes and a resumed run draws what the uninterrupted one drew. A stream of
    its own (:func:`stream_seed`): ``derived_seed(seed, e)`` seeds epoch e's batch order, so step e's dropout had
    drawn from the generator that ordered epoch e."""
    return stream_seed("training step", seed, step)


def seed_generators(seed: int, device: torch.device) -> None:
    """Seed the generators a pass on ``device`` draws from: the CPU's, and that GPU's alone (``torch.manual_seed``
    would reseed every GPU, and a ``fork_rng`` of the model's device would restore only that one), or the MPS one."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def batch_rows(n: int, step: int, batch_size: int | None, seed: int) -> torch.Tensor:
    """Row indices of the batch at ``step``: a pure function of its arguments."""
    if batch_size is None or batch_size >= n:
        return torch.arange(n)
    per_epoch = math.ceil(n / batch_size)
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
    return order[index * batch_size : (index + 1) * batch_size]


def _distinct_rows(eval_sets: Mapping[str, TokenizedFacts]) -> tuple[TokenizedFacts, dict[str, Tensor]]:
    """Every row of the evaluation sets once, right-padded to one width, and for each set the
    indices of its rows among them.

    The sets usually overlap ("train" is "train/forward" ∪ "train/reverse"); rows with the same
    tokens and answer mask have the same score, so each is scored once. Padding after a row's
    answer changes none of its answer log-probs (the models are causal: position p reads tokens ≤ p).
    """
    parts = [batch for batch in eval_sets.values() if len(batch)]
    width = max(batch.tokens.shape[1] for batch in parts)

    def padded(batch: TokenizedFacts, name: str) -> Tensor:
        return torch.nn.functional.pad(getattr(batch, name), (0, width - batch.tokens.shape[1]))

    tokens = torch.cat([padded(batch, "tokens") for batch in parts])
    answer_mask = torch.cat([padded(batch, "answer_mask") for batch in parts])
    _, inverse = torch.unique(torch.cat([tokens, answer_mask.long()], dim=1), dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(inverse), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(inverse)), reduce="amin")  # first occurrence of each distinct row
    prompt_len = torch.cat([batch.prompt_len for batch in parts])
    fact = torch.cat([batch.fact for batch in parts])
    direction = tuple(d for batch in parts for d in batch.direction)
    split = tuple(s for batch in parts for s in batch.split)
    distinct = TokenizedFacts(tokens=tokens[first], answer_mask=answer_mask[first], fact=fact[first],
                              direction=tuple(direction[i] for i in first.tolist()),
                              split=tuple(split[i] for i in first.tolist()), prompt_len=prompt_len[first])
    rows, start = {}, 0
    for name, batch in eval_sets.items():
        rows[name] = inverse[start:start + len(batch)]
        start += len(batch)
    return distinct, rows


def evaluate(
    model: torch.nn.Module, eval_sets: Mapping[str, TokenizedFacts],
    distinct: tuple[TokenizedFacts, dict[str, Tensor]] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean answer log-prob, mean probability and greedy accuracy of each evaluation set (every
    distinct row of all the sets scored once, in one batch: :func:`_distinct_rows`, or ``distinct``
    when the caller made it already: a training run makes it once for all its evaluations). Scored in eval mode,
    each module's mode put back (:func:`models.scoring.score_answers`)."""
    out = {}
    if any(len(batch) for batch in eval_sets.values()):
        distinct, rows = distinct or _distinct_rows(eval_sets)
        scores = score_answers(model, distinct)
    for name, batch in eval_sets.items():
        logprob, correct = (scores.logprob[rows[name]], scores.correct[rows[name]]) if len(batch) else (
            torch.zeros(0), torch.zeros(0, dtype=torch.bool))
        out[name] = {
            "logprob": logprob.mean().item(),
            "prob": logprob.exp().mean().item(),
            "accuracy": correct.float().mean().item(),
        }
    return out


def batch_loss(model: torch.nn.Module, tokens: Int[Tensor, "batch pos"],
               answer_mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    """:func:`models.scoring.answer_loss` of one batch: the same number, computed on fewer positions.

    The model runs on the columns that predict an answer token, up to the last one
    (:func:`models.scoring.answer_inputs`: a causal model's logits there never read the columns
    after it), and unembeds only where a loss is taken where it can
    (:func:`models.scoring.answer_logits`).
    """
    logits = answer_logits(model, tokens, answer_mask)
    targets = tokens[:, 1:][answer_mask[:, 1:]]  # row-major, as answer_logits' rows
    return torch.nn.functional.cross_entropy(logits.float(), targets.to(logits.device))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the parameters that require gradients (frozen ones stay put)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("the model has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=config.lr, weight_decay=config.weight_decay)
    # the fused kernel (one pass over each parameter, not several): 0.10 vs 0.61 CPU-s a step for
    # SmolLM2's 134 M parameters on one thread, the same update up to float rounding (2e-8 after 4 steps)
    fused = all(p.device.type in ("cpu", "cuda") for p in trainable)
    return torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)


RESUME_MAY_DIFFER = ("steps", "checkpoint_every", "progress")
"""Train settings a resumed run may change (more steps; how often it checkpoints; the progress bar).
Every other one, the model card and the run card must equal the checkpoint's: each shapes the
numbers the run continues."""


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any], prefix: str) -> list[str]:
    """``"prefix.key: checkpoint …, now …"`` for every key whose value differs (nested dicts flattened)."""
    differ = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differ += _differences(old, new, f"{prefix}{key}.")
        elif json.loads(json.dumps(old, default=str)) != json.loads(json.dumps(new, default=str)):
            differ.append(f"{prefix}{key}: checkpoint {old!r}, now {new!r}")
    return differ


def _check_resumable(path: Path, step: int, saved: Mapping[str, Any], config: TrainConfig,
                     model_card: Mapping[str, Any], run_card: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint past ``config.steps`` or made with anything else that
    shapes the run: train settings (but :data:`RESUME_MAY_DIFFER`), the model card, the run card
    (e.g. the fact world's config and the facts' hash). A part the checkpoint lacks (written by an
    older version) is not compared."""
    if step > config.steps:
        raise TrainingError(f"{path}: checkpoint is at step {step}, past this run's {config.steps} steps; "
                            f"resume with steps ≥ {step} or start afresh without resume")
    train_now = {k: v for k, v in asdict(config).items() if k not in RESUME_MAY_DIFFER}
    parts = (("train_config", train_now), ("model", dict(model_card)), ("run", dict(run_card)))
    differ = []
    for name, now in parts:
        if name in saved:
            kept = saved[name] if name != "train_config" else {k: v for k, v in saved[name].items()
                                                                  if k not in RESUME_MAY_DIFFER}
            differ += _differences(kept, now, f"{name}.")
    if differ:
        raise TrainingError(f"{path}: cannot resume a run that differs from its checkpoint ({'; '.join(differ)}); "
                            f"use the checkpoint's settings or start afresh without resume")


def _optimizer_layout(model: torch.nn.Module) -> str | None:
    """``"transformer-lens-4"`` for a TransformerLens 4 native bridge, whose parameters (hence the optimizer
    state's order and shapes) are laid out unlike HookedTransformer's; None for every other model."""
    if "transformer_lens" not in sys.modules:
        return None
    from models.backend import is_native_bridge

    return "transformer-lens-4" if is_native_bridge(model) else None


def _check_optimizer_layout(path: Path, saved: str | None, now: str | None) -> None:
    """Refuse to resume optimizer state written for another parameter layout (the other TransformerLens line)."""
    if saved != now:
        lines = {None: "TransformerLens 3.9's HookedTransformer", "transformer-lens-4": "TransformerLens 4's bridge"}
        raise TrainingError(f"{path}: its optimizer state was written for {lines.get(saved, saved)}, this run trains "
                            f"{lines.get(now, now)}; resume under the TransformerLens line that wrote it, or start "
                            "afresh (its weights load under either line for probing)")


def train(
    model: torch.nn.Module,
    train_set: TokenizedFacts,
    config: TrainConfig = TrainConfig(),
    eval_sets: Mapping[str, TokenizedFacts] | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    model_card: Mapping[str, Any] | None = None,
    resume: bool = False,
    run_card: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place on the answer tokens of ``train_set``; see the module docstring.

    With ``resume=True`` and a checkpoint in ``checkpoint_dir``, weights, optimizer state and
    history are restored and training continues from the checkpoint's step (refused when the
    checkpoint is past ``config.steps`` or was made with other train settings, another
    ``model_card`` or another ``run_card``: what else shapes the run, e.g. the fact world's config
    and hash; the error names each difference). Otherwise a ``checkpoint_dir`` is emptied of earlier checkpoints first.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(model, train_set, config, eval_sets, callbacks, checkpoint_dir, model_card, resume,
                      run_card or {})
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train(
    model: torch.nn.Module,
    train_set: TokenizedFacts,
    config: TrainConfig,
    eval_sets: Mapping[str, TokenizedFacts] | None,
    callbacks: Sequence[Callback],
    checkpoint_dir: str | Path | None,
    model_card: Mapping[str, Any] | None,
    resume: bool,
    run_card: Mapping[str, Any],
) -> TrainResult:
    if len(train_set) == 0:
        raise TrainingError("the training set is empty")
    eval_sets = dict(eval_sets or {})
    for name, batch in {"training set": train_set, **eval_sets}.items():
        check_token_ids(model, batch, name)
    device = model_device(model)
    optimizer = make_optimizer(model, config)
    history: list[dict[str, Any]] = []
    start, checkpoint_loss = 0, None
    if resume and checkpoint_dir is None:
        raise TrainingError("resume=True needs a checkpoint_dir")
    if resume and list_checkpoints(checkpoint_dir):
        checkpoint = load_checkpoint(checkpoint_dir)
        _check_resumable(checkpoint.path, checkpoint.step, checkpoint.meta, config, model_card or {}, run_card)
        _check_optimizer_layout(checkpoint.path, checkpoint.meta.get("optimizer_layout"), _optimizer_layout(model))
        restore_model(model, checkpoint)
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
        start, history = checkpoint.step, list(checkpoint.meta.get("history", []))
        checkpoint_loss = checkpoint.meta.get("last_loss")
        if start < config.steps and start % config.eval_every:  # a finished run's last record, off the schedule:
            history = [entry for entry in history if entry["step"] != start]  # a longer run never makes it
    elif checkpoint_dir is not None:
        remove_checkpoints(checkpoint_dir)  # a fresh run: an earlier run's later steps must not pass for ours
    meta = {"model": dict(model_card or {}), "train_config": asdict(config), "run": dict(run_card)}
    if _optimizer_layout(model):
        meta["optimizer_layout"] = _optimizer_layout(model)

    def checkpoint(step: int, loss: float | None) -> None:
        if checkpoint_dir is not None:  # the step's loss kept: a run resumed to this step as its end records it
            save_checkpoint(checkpoint_dir, step, model, optimizer, {**meta, "history": history, "last_loss": loss})

    scored = _distinct_rows(eval_sets) if any(len(batch) for batch in eval_sets.values()) else None

    def record(step: int, loss: float | None) -> None:
        entry: dict[str, Any] = {"step": step, "loss": loss, "eval": evaluate(model, eval_sets, scored)}
        for callback in callbacks:
            entry.update(callback(step, model) or {})
        try:  # as a checkpoint keeps it, so a resumed run's history is the uninterrupted run's ({0: x} → {"0": x})
            history.append(json.loads(json.dumps(entry)))
        except (TypeError, ValueError) as error:
            raise TrainingError(f"step {step}: a callback returned a value a history cannot hold ({error}); return "
                                f"numbers, strings, lists and dicts") from None

    began = time.perf_counter()
    model.train()
    if start == 0:
        record(0, None)
    tokens, answer_mask = train_set.tokens.to(device), train_set.answer_mask.to(device)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not config.progress,
               desc="train", unit="step", leave=False)
    # each step seeds torch's generator (step_seed); the caller's generator is left as it was
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for step in bar:
            seed_generators(step_seed(config.seed, step), device)  # dropout's draws: a function of (seed, step)
            rows = batch_rows(len(train_set), step, config.batch_size, config.seed).to(device)
            loss = batch_loss(model, tokens[rows], answer_mask[rows])
            if not torch.isfinite(loss):
                kept = list_checkpoints(checkpoint_dir) if checkpoint_dir is not None else []
                raise TrainingError(
                    f"loss became {loss.item()} at step {step + 1}; stopping. "
                    + (f"The last good checkpoint is {kept[-1]}. " if kept else "")
                    + "Lower the learning rate or check the inputs."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = step + 1
            if done % config.eval_every == 0 or done == config.steps:
                record(done, loss.item())
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
                checkpoint(done, loss.item())
    if start < config.steps:
        checkpoint(config.steps, loss.item())
    elif not history or history[-1]["step"] != start:  # an intermediate checkpoint resumed as the end: its
        record(start, checkpoint_loss)  # final evaluation and its step's loss, as an uninterrupted run's last record
        checkpoint(start, checkpoint_loss)
    return TrainResult(history=history, seconds=time.perf_counter() - began, steps=config.steps)
