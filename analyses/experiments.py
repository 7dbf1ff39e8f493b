"""The experiments a run folder can hold, in one table: what the CLI offers, the sweep grids over
and the report summarises.

Each :class:`Experiment` names the command words that run it (``reproduce reversal``,
``finetune-facts``), its own options (flag, type, default, choices, help: the ``revlens reproduce``
subparsers are built from them), the function that runs it into a folder, the formatter of its
one-screen text and the headline numbers of its ``summary.json`` (the metrics a sweep plots and
prints; ``aggregate.csv`` keeps every number). ``finetune-facts`` keeps its options in its own
subparser (they are many and shared with its input checks); :func:`grid_options` reads the options
of every experiment from the parser, so the sweep never lists an option the command lacks.

This module imports no torch: the CLI reads it to build ``revlens --help``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

MODEL_NAMES = ("tiny", "one-layer", "paper")
POSITIONALS = ("absolute", "rotary", "none")
MAX_SEED = 2**32 - 1
"""numpy's and torch's generators both take seeds 0 … 2³² − 1."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to {MAX_SEED}, got {value}")
    return value


@dataclass(frozen=True)
class Option:
    """One command-line option of an experiment: ``add_argument(flag, **kwargs)``."""

    flag: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(self.flag, **self.kwargs)


@dataclass(frozen=True)
class Experiment:
    """One experiment: its command, options, runner, formatter and headline metrics.

    ``run(out, args, progress)`` writes the run into ``out`` and returns its summary (``args``: the
    parsed command line); ``formatter`` is ``"module:function"`` of ``summary → text``;
    ``headline`` are dotted keys of the summary (nested dicts joined by ``.``; ``fnmatch`` patterns
    allowed; empty: every number); ``resumable``:
    the command takes ``--resume`` and continues from its folder's checkpoints.
    """

    name: str
    command: tuple[str, ...]
    help: str
    formatter: str
    headline: tuple[str, ...]
    options: tuple[Option, ...] = ()
    run: Callable[[Path, argparse.Namespace, bool], dict[str, Any]] | None = None
    resumable: bool = False

    def format(self, summary: dict[str, Any]) -> str:
        module, name = self.formatter.split(":")
        return getattr(import_module(module), name)(summary)


# --- runners (heavy imports inside, so --help stays light) -----------------------------------

def _reversal(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses.reproduce import ReversalConfig, reproduce_reversal

    defaults = ReversalConfig()
    config = ReversalConfig(
        model=getattr(args, "model", defaults.model), positional=getattr(args, "positional", defaults.positional),
        seed=args.seed, k=getattr(args, "k", defaults.k), n_pairs=getattr(args, "pairs", defaults.n_pairs),
        steps=getattr(args, "steps", defaults.steps), lr=getattr(args, "lr", defaults.lr),
        batch_size=getattr(args, "batch_size", defaults.batch_size),
        eval_every=getattr(args, "eval_every", defaults.eval_every), device=getattr(args, "device", None),
        checkpoint_every=getattr(args, "checkpoint_every", None))
    return reproduce_reversal(out, config, progress=progress, resume=bool(getattr(args, "resume", False)))


def _bilinear(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses.bilinear import BilinearConfig, reproduce_bilinear

    defaults = BilinearConfig()
    config = BilinearConfig(dims=tuple(getattr(args, "dims", defaults.dims)), steps=getattr(args, "steps", defaults.steps),
                            lr=getattr(args, "lr", defaults.lr), seed=args.seed)
    return reproduce_bilinear(out, config, progress=progress)


def _chain(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses import paper

    return paper.reproduce_chain(out, paper.ChainConfig(seed=args.seed), progress)


def _in_context(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses import paper

    return paper.reproduce_in_context(out, paper.InContextConfig(seed=args.seed), progress)


def _multi_token(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses import paper
    from analyses.reproduce import ReversalConfig

    return paper.reproduce_multi_token(out, paper.MultiTokenConfig(reversal=ReversalConfig(seed=args.seed)), progress)


def _positional(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses import paper
    from analyses.reproduce import ReversalConfig

    return paper.reproduce_positional(out, paper.PositionalConfig(reversal=ReversalConfig(seed=args.seed)), progress)


def _embeddings(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses import paper

    return paper.reproduce_embeddings(out, paper.EmbeddingConfig(seed=args.seed), progress)


def _dynamics(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses import dynamics
    from analyses.reproduce import ReversalConfig

    return dynamics.reproduce_dynamics(out, dynamics.DynamicsConfig(run=ReversalConfig(seed=args.seed)), progress)


def _mitigations(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from dataclasses import replace

    from analyses import mitigations

    config = mitigations.MitigationConfig()
    config = replace(config, run=replace(config.run, seed=args.seed))
    return mitigations.reproduce_mitigations(out, config, progress, getattr(args, "finetuned", None) or [])


# --- the table ---------------------------------------------------------------------------------

_N = {"type": positive_int}
REVERSAL_OPTIONS = (
    Option("--model", {"choices": MODEL_NAMES, "default": "tiny", "help": "HookedTransformer config (default tiny)"}),
    Option("--positional", {"choices": POSITIONALS, "default": "absolute"}),
    Option("--k", {**_N, "default": 1, "help": "tokens per entity (default 1)"}),
    Option("--pairs", {**_N, "default": 200, "help": "number of (x, y) pairs (default 200)"}),
    Option("--steps", {**_N, "default": 80, "help": "training steps (default 80)"}),
    Option("--lr", {"type": float, "default": 1e-2, "help": "AdamW learning rate (default 1e-2)"}),
    Option("--batch-size", {**_N, "default": None, "help": "default: full batch"}),
    Option("--eval-every", {**_N, "default": 2}),
    Option("--device", {"default": None, "help": "cpu, cuda, ... (default: cuda if present)"}),
    Option("--checkpoint-every", {**_N, "default": None,
                                  "help": "also checkpoint every N steps, so a killed run resumes from there"}),
    Option("--resume", {"action": "store_true", "help": "continue from OUT/checkpoints"}),
)
FINETUNED_OPTION = Option("--finetuned", {
    "type": Path, "nargs": "+", "default": [], "metavar": "DIR",
    "help": "`revlens finetune-facts` folders (any --mitigation) whose rows join the mitigations table"})
RUNS_HEADLINE = ("runs.*.train_prob", "runs.*.heldout_reverse_logprob", "runs.*.heldout_reverse_accuracy")
REVERSAL_HEADLINE = ("train_prob", "train_accuracy", "heldout_reverse_logprob", "chance_logprob",
                     "heldout_reverse_accuracy", "chance_accuracy", "ov_asymmetry")


def _reproduce(name: str, help_text: str, formatter: str, headline: tuple[str, ...], run,
               options: tuple[Option, ...] = (), resumable: bool = False) -> Experiment:
    return Experiment(name, ("reproduce", name), help_text, formatter, headline, options, run, resumable)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _reproduce("reversal", "token-level reversal task: train A→B, test B→A (the default demo)",
               "analyses.reproduce:format_summary", REVERSAL_HEADLINE, _reversal, REVERSAL_OPTIONS, resumable=True),
    _reproduce("bilinear", "the bilinear model against Theorem 1, for several d", "analyses.bilinear:format_bilinear",
               ("per_d.*.epsilon_hat", "per_d.*.final_reverse_loss_ratio", "per_d.*.theta_asymmetry"), _bilinear, (
                   Option("--dims", {**_N, "nargs": "+", "default": [64, 128, 256, 512]}),
                   Option("--steps", {**_N, "default": 400}),
                   Option("--lr", {"type": float, "default": 100.0,
                                   "help": "gradient-descent step size (default 100)"}))),
    _reproduce("chain", "chain-of-thought intransitivity: A→B, B→C trained, A⇝C held out", "analyses.paper:format_chain",
               ("train_prob", "heldout_logprob", "chance_logprob", "heldout_accuracy", "two_step_accuracy"), _chain),
    _reproduce("in-context", "reversal with the fact in the prompt (no curse), against a one-partner control",
               "analyses.paper:format_in_context",
               ("train_prob", "heldout_reverse_accuracy", "control.heldout_reverse_accuracy"), _in_context),
    _reproduce("multi-token", "the reversal task with k = 2 and 3 tokens per entity", "analyses.paper:format_multi_token",
               RUNS_HEADLINE, _multi_token),
    _reproduce("positional", "the reversal task with absolute, rotary and no positional encodings",
               "analyses.paper:format_positional", RUNS_HEADLINE, _positional),
    _reproduce("embeddings", "cosine similarity of the embeddings of paired entities (no structure)",
               "analyses.paper:format_embeddings",
               ("train_prob", "heldout_reverse_logprob", "paired_mean", "unpaired_mean"), _embeddings),
    _reproduce("dynamics", "OV (Y) and QK (Z) entries of the facts over training, one-layer and tiny models",
               "analyses.dynamics:format_dynamics",
               ("final.*.train_prob", "final.*.heldout_accuracy"), _dynamics),
    _reproduce("mitigations", "augmentation, reverse training and in-context restatement against the baseline",
               "analyses.mitigations:format_mitigations",
               ("rows.*.heldout_accuracy",), _mitigations, (FINETUNED_OPTION,)),
    Experiment("finetune-facts", ("finetune-facts",),
               "fine-tune a pretrained LLM on fictitious people or your own facts, test both ways",
               "analyses.finetune:format_summary", ("groups.*.*.after.margin.mean", "groups.*.*.after.top1")),
)}
"""Every experiment a run folder holds, by the name its ``summary.json`` gives."""

REPRODUCE = tuple(name for name, e in EXPERIMENTS.items() if e.command[0] == "reproduce")
ALL_OPTIONS = (FINETUNED_OPTION, Option("--seeds", {
    **_N, "default": None, "metavar": "N",
    "help": "run each experiment for seeds 0 … N−1 as a sweep on Ray (OUT/<name>/trials/seed=S/) and report every "
            "headline number as mean ± 95%% interval"}))
"""The options of ``reproduce all`` beyond --out, --seed and --quiet."""

NOT_GRID = {"out", "seed", "quiet", "force", "threads", "resume", "debug", "help", "command", "experiment"}
"""Options a sweep sets itself (out, seed, threads, resume) or that change no number."""


@lru_cache(maxsize=None)
def grid_options(name: str) -> dict[str, argparse.Action]:
    """The options a sweep may grid over for experiment ``name``, by grid key (the flag without
    its dashes, e.g. ``batch-size``), read from the command's own parser."""
    from analyses.cli import build_parser

    parser = build_parser()
    for word in EXPERIMENTS[name].command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    options = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_GRID or action.nargs == 0:
            continue
        options[action.option_strings[-1 if len(action.option_strings) == 1 else 0].lstrip("-")] = action
    return options
