"""The experiments a run folder can hold, in one table: what the CLI offers, the sweep grids over
and the report summarises. Adding an experiment touches this file only (its runner may live in a
module of its own).

Each :class:`Experiment` names the command words that run it (``reproduce reversal``,
``finetune-facts``), its own options (flag, type, default, choices, help: the ``revlens reproduce``
subparsers are built from them), the function that runs it into a folder, the formatter of its
one-screen text, the headline numbers of its ``summary.json`` (the metrics a sweep plots and
prints; ``aggregate.csv`` keeps every measured number) and what the report shows for it: a title, what the
paper predicts, the files every run writes and the captions of its own files. The run folders of
the other commands (``probe``, ``compare``, ``check-asymmetry``, ``sweep``) are described by a
:class:`RunKind` in :data:`COMMAND_RUNS`; :data:`KINDS` is both, by ``summary["experiment"]``. ``finetune-facts`` keeps its options in its own
subparser (they are many and shared with its input checks); :func:`grid_options` reads the options
of every experiment from the parser, so the sweep never lists an option the command lacks.

This module imports no torch: the CLI reads it to build ``revlens --help``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Mapping

from facts.world_sizes import check_counts, check_related

MODEL_NAMES = ("tiny", "one-layer", "paper")
POSITIONALS = ("absolute", "rotary", "none")
MAX_SEED = 2**32 - 1
"""numpy's and torch's generators both take seeds 0 … 2³² − 1."""


def _at_least(parse: Callable[[str], Any], low: float, strict: bool, name: str) -> Callable[[str], Any]:
    """An argparse type: ``parse(text)``, refused unless finite and > ``low`` (``strict``) or ≥ ``low``;
    ``name`` is what argparse calls it when ``parse`` fails ("invalid positive_int value")."""
    def check(text: str):
        value = parse(text)
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            bound = f"> {low:g}" if strict else f"≥ {low:g}"
            raise argparse.ArgumentTypeError(f"must be {'a finite number ' if parse is float else ''}{bound}, "
                                             f"got {text}")
        return value

    check.__name__ = name
    return check


positive_int = _at_least(int, 1, False, "positive_int")
non_negative_int = _at_least(int, 0, False, "non_negative_int")
positive_float = _at_least(float, 0, True, "positive_float")
"""A finite number > 0 (a learning rate, a scale): nan, inf, 0 and negatives refused."""
non_negative_float = _at_least(float, 0, False, "non_negative_float")
"""A finite number ≥ 0 (GPUs per trial): nan, inf and negatives refused."""


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
class RunKind:
    """What the report shows for a kind of run folder that no experiment writes (``probe``,
    ``compare``, ...): see :class:`Experiment` for the fields."""

    title: str
    prediction: str
    files: tuple[str, ...] = ()
    formatter: str | None = None
    captions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """One experiment: its command, options, runner, formatter, headline metrics and report entry.

    ``run(out, args, progress)`` writes the run into ``out`` and returns its summary (``args``: the
    parsed command line); ``formatter`` is ``"module:function"`` of ``summary → text``;
    ``headline`` are dotted keys of the summary (nested dicts joined by ``.``; ``fnmatch`` patterns
    allowed; empty: every number); ``resumable``:
    the command takes ``--resume`` and continues from its folder's checkpoints; ``in_all``: ``reproduce
    all`` runs it (False for experiments that would take that command past its time budget).
    The report's section: ``title`` (default: the name), ``prediction`` (what the paper predicts;
    default none), ``files`` (written by every run, in the order shown; one missing marks the run
    half-written) and ``captions`` (file name → caption, for the files whose meaning is this
    experiment's own; files many runs write, such as ``curves.png``, have a shared caption in
    :mod:`analyses.report`, and a run's ``summary["captions"]`` overrides both).
    ``cpu_seconds``: roughly what a default run costs on one core (``reproduce all`` starts the
    costliest first, so its workers finish together; 0: unknown, started last). ``seeds_option``: the
    option of an experiment whose run trains several consecutive seeds from ``--seed`` (the identity
    bridge's ``--n-seeds``): a sweep spaces its trials' seeds that far apart, so no seed trains twice.
    ``check(args)``: refuses, before the run folder is touched, options the run would fail on only after training.
    ``settings(args)``: the dataclass of settings the run is built from, every default filled in; the run's
    manifest records it whole, so a run made under other defaults (a later revlens's) is never taken for this one.
    """

    name: str
    command: tuple[str, ...]
    help: str
    formatter: str
    headline: tuple[str, ...]
    options: tuple[Option, ...] = ()
    run: Callable[[Path, argparse.Namespace, bool], dict[str, Any]] | None = None
    resumable: bool = False
    in_all: bool = True
    title: str = ""
    prediction: str = ""
    files: tuple[str, ...] = ()
    captions: Mapping[str, str] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    seeds_option: str = ""
    check: Callable[[argparse.Namespace], None] | None = None
    settings: Callable[[argparse.Namespace], Any] | None = None

    def seeds_per_run(self, options: Mapping[str, Any]) -> int:
        """How many consecutive seeds, ``--seed`` on, one run trains: the value of :attr:`seeds_option` in
        ``options`` (dest names, e.g. ``n_seeds``, or grid keys, e.g. ``n-seeds``), else its default; 1 for an
        experiment without one."""
        if not self.seeds_option:
            return 1
        [option] = [o for o in self.options if o.flag == self.seeds_option]
        key = self.seeds_option.lstrip("-")
        return int(options.get(key, options.get(key.replace("-", "_"), option.kwargs["default"])))

    def formatter_module(self):
        """The module of :attr:`formatter`, imported."""
        return import_module(self.formatter.split(":")[0])

    def format(self, summary: dict[str, Any]) -> str:
        return getattr(self.formatter_module(), self.formatter.split(":")[1])(summary)


# --- runners (heavy imports inside, so --help stays light) -----------------------------------

def reversal_config(args: argparse.Namespace):
    """The ``ReversalConfig`` of a ``reproduce reversal`` command line (defaults where an option is not given)."""
    from analyses.reproduce import ReversalConfig

    defaults = ReversalConfig()
    return ReversalConfig(
        model=getattr(args, "model", defaults.model), positional=getattr(args, "positional", defaults.positional),
        seed=args.seed, k=getattr(args, "k", defaults.k), n_pairs=getattr(args, "pairs", defaults.n_pairs),
        steps=getattr(args, "steps", defaults.steps), lr=getattr(args, "lr", defaults.lr),
        batch_size=getattr(args, "batch_size", defaults.batch_size),
        eval_every=getattr(args, "eval_every", defaults.eval_every), device=getattr(args, "device", None),
        checkpoint_every=getattr(args, "checkpoint_every", None), layers=getattr(args, "layers", None),
        loss=getattr(args, "loss", defaults.loss), freeze_embeddings=bool(getattr(args, "freeze_embeddings", False)))


def check_reversal(args: argparse.Namespace) -> None:
    """Refuse, before any folder is touched or any model built, a reversal run that would fail only after
    training: fewer than two pairs (no control answer of an entity's kind), more than its alphabets' words
    (:func:`facts.world_sizes.check_counts`), or sentences longer than the model's context (too many tokens per
    entity, ``--k``). With k = 1 (3-token sentences, shorter than
    any model's context) nothing is imported: a refusal of the lock answers without torch."""
    if args.pairs < 2:
        raise ValueError(f"--pairs {args.pairs}: the reversal world needs at least 2 pairs (each answer is "
                         f"ranked against the other entities of its kind)")
    _check_world_size(check_counts, (args.pairs, args.k, 2), f"--pairs {args.pairs} with --k {args.k}")
    if args.k == 1:
        return
    from facts.token_worlds import TokenVocab, reversal_world
    from facts.tokens import tokenize
    from models.transformer import SPECS

    vocab = TokenVocab()
    world = reversal_world(n_pairs=args.pairs, k=args.k, seed=args.seed, vocab=vocab)
    length, n_ctx = tokenize(world, vocab).tokens.shape[-1], SPECS[args.model].n_ctx
    if length > n_ctx:
        raise ValueError(f"--k {args.k}: sentences of {length} tokens do not fit the {args.model!r} model's "
                         f"context of {n_ctx}; use fewer tokens per entity")


def check_chain(args: argparse.Namespace) -> None:
    """Refuse, before any folder is touched, a chain run that would fail only after training: fewer than two
    triples (one triple is trained, none held out, and its z has no other z to be ranked against), more than the
    world's tokens hold (:mod:`facts.world_sizes`), or ``--heldout`` leaving no triple trained."""
    if args.triples < 2:
        raise ValueError(f"--triples {args.triples}: the chain world needs at least 2 triples (one x ⇝ z held out, "
                         f"each z ranked against the others)")
    if args.heldout is not None and args.heldout >= args.triples:
        raise ValueError(f"--heldout {args.heldout}: must be below --triples {args.triples} (the rest train x ⇝ z)")
    if args.related:
        _check_world_size(check_related, (args.triples,), f"--related --triples {args.triples}")
    else:
        _check_world_size(check_counts, (args.triples, 1, 3), f"--triples {args.triples}")


CHAIN_SIZES_HELDOUT = 50
"""The held-out triples of every size of ``reproduce chain-sizes`` (:mod:`analyses.chain_sizes`)."""


def check_chain_sizes(args: argparse.Namespace) -> None:
    """Refuse, before the first size trains, a ``--sizes`` value whose related-token chain of ``size`` trained and
    :data:`CHAIN_SIZES_HELDOUT` held-out triples the vocabulary cannot hold."""
    for size in args.sizes:
        _check_world_size(check_related, (size + CHAIN_SIZES_HELDOUT,),
                          f"--sizes {size} ({size} trained + {CHAIN_SIZES_HELDOUT} held-out related-token triples)")


def _check_world_size(check: Callable[..., None], counts: tuple[int, ...], what: str) -> None:
    """``check(*counts)`` (:mod:`facts.world_sizes`), its refusal naming the options (``what``) that asked for it."""
    try:
        check(*counts)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


def bilinear_config(args: argparse.Namespace):
    from analyses.bilinear import BilinearConfig

    defaults = BilinearConfig()
    return BilinearConfig(dims=tuple(getattr(args, "dims", defaults.dims)), steps=getattr(args, "steps", defaults.steps),
                          lr=getattr(args, "lr", defaults.lr), seed=args.seed)


def chain_config(args: argparse.Namespace):
    from analyses.paper import ChainConfig

    return ChainConfig(seed=args.seed, n_triples=getattr(args, "triples", ChainConfig.n_triples),
                       n_heldout=getattr(args, "heldout", None), related=bool(getattr(args, "related", False)))


def in_context_config(args: argparse.Namespace):
    from analyses.paper import InContextConfig

    return InContextConfig(seed=args.seed)


def multi_token_config(args: argparse.Namespace):
    from analyses.paper import MultiTokenConfig
    from analyses.reproduce import ReversalConfig

    return MultiTokenConfig(reversal=ReversalConfig(seed=args.seed))


def positional_config(args: argparse.Namespace):
    from analyses.paper import PositionalConfig
    from analyses.reproduce import ReversalConfig

    return PositionalConfig(reversal=ReversalConfig(seed=args.seed))


def embeddings_config(args: argparse.Namespace):
    from analyses.paper import EmbeddingConfig

    return EmbeddingConfig(seed=args.seed)


def dynamics_config(args: argparse.Namespace):
    from analyses.dynamics import DynamicsConfig
    from analyses.reproduce import ReversalConfig

    return DynamicsConfig(run=ReversalConfig(seed=args.seed))


def mitigations_config(args: argparse.Namespace):
    from dataclasses import replace

    from analyses.mitigations import MitigationConfig

    config = MitigationConfig()
    return replace(config, run=replace(config.run, seed=args.seed))


def finetune_config(args: argparse.Namespace):
    """The ``FinetuneConfig`` of a ``finetune-facts`` command line (defaults where an option is not given)."""
    from analyses.finetune import FinetuneConfig

    given = {"people": args.people, "templates": args.templates, "epochs": args.epochs, "lr": args.lr,
             "batch_size": args.batch_size, "n_controls": args.controls, "tracing_facts": args.tracing_facts,
             "multiple_choice": args.multiple_choice}
    return FinetuneConfig(model=args.model, trainable_blocks=args.trainable_blocks,
                          lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                          lora_targets=None if args.lora_targets is None else tuple(args.lora_targets),
                          mitigation=args.mitigation, seed=args.seed,
                          groups=None if args.groups is None else tuple(args.groups),
                          facts=None if args.facts is None else str(args.facts),
                          templates_file=None if args.templates_file is None else str(args.templates_file),
                          device=args.device, **{name: value for name, value in given.items() if value is not None})


def _reversal(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses.reproduce import reproduce_reversal

    return reproduce_reversal(out, reversal_config(args), progress=progress,
                              resume=bool(getattr(args, "resume", False)))


def _bilinear(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses.bilinear import reproduce_bilinear

    return reproduce_bilinear(out, bilinear_config(args), progress=progress)


def _mitigations(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from analyses.mitigations import reproduce_mitigations

    return reproduce_mitigations(out, mitigations_config(args), progress, getattr(args, "finetuned", None) or [])


def recorded_settings(settings: Any) -> dict[str, Any]:
    """An experiment's settings as its run folder's manifest and its summary record them: the dataclass's fields,
    or what its ``recorded()`` says its runs used (chain-sizes: the chain settings of every size's run)."""
    from dataclasses import asdict

    return settings.recorded() if hasattr(settings, "recorded") else asdict(settings)


def _imported(target: str) -> Callable[..., Any]:
    """The function ``"module:function"``, imported when called (an experiment kept in its own module brings its
    settings and runner along, and ``revlens --help`` imports neither)."""
    module, name = target.split(":")

    def call(*args: Any) -> Any:
        return getattr(import_module(module), name)(*args)

    return call


def _runner(settings: Callable[[argparse.Namespace], Any], target: str
            ) -> Callable[[Path, argparse.Namespace, bool], dict[str, Any]]:
    """The runner ``run(out, args, progress)`` calling ``"module:function"(out, settings(args), progress)``."""
    reproduce = _imported(target)

    def run(out: Path, args: argparse.Namespace, progress: bool) -> dict[str, Any]:
        return reproduce(out, settings(args), progress)

    return run


# --- the table ---------------------------------------------------------------------------------

DEVICE_HELP = "cpu, cuda, ... (default: cuda if present)"
"""What ``--device`` says in every command's help."""

_N = {"type": positive_int}
REVERSAL_OPTIONS = (
    Option("--model", {"choices": MODEL_NAMES, "default": "tiny", "help": "HookedTransformer config (default tiny)"}),
    Option("--positional", {"choices": POSITIONALS, "default": "absolute"}),
    Option("--k", {**_N, "default": 1, "help": "tokens per entity (default 1)"}),
    Option("--pairs", {**_N, "default": 200, "help": "number of (x, y) pairs (default 200)"}),
    Option("--steps", {**_N, "default": 80, "help": "training steps (default 80)"}),
    Option("--lr", {"type": positive_float, "default": 1e-2, "help": "AdamW learning rate (default 1e-2)"}),
    Option("--batch-size", {**_N, "default": None, "help": "default: full batch"}),
    Option("--eval-every", {**_N, "default": 4,
                            "help": "evaluate for the curves every N steps (default 4; no final number depends on it)"}),
    Option("--device", {"default": None, "help": DEVICE_HELP}),
    Option("--checkpoint-every", {**_N, "default": None,
                                  "help": "also checkpoint every N steps, so a killed run resumes from there"}),
    Option("--resume", {"action": "store_true", "help": "continue from OUT/checkpoints"}),
    Option("--layers", {**_N, "default": None, "help": "model depth in place of the config's (Zhu et al.'s --n_layers)"}),
    Option("--loss", {"choices": ("answer", "sequence"), "default": "answer",
                      "help": "answer: loss on the answer entity (default); sequence: on every token after the first "
                              "(Zhu et al.'s --loss_whole_sequence)"}),
    Option("--freeze-embeddings", {"action": "store_true",
                                   "help": "token and position embeddings frozen at init (Zhu et al.'s --freeze_wte_wpe)"}),
)
FINETUNED_OPTION = Option("--finetuned", {
    "type": Path, "nargs": "+", "default": [], "metavar": "DIR",
    "help": "`revlens finetune-facts` folders (any --mitigation) whose rows join the mitigations table"})
RUNS_HEADLINE = ("runs.*.train_prob", "runs.*.heldout_reverse_logprob", "runs.*.heldout_reverse_accuracy")
REVERSAL_HEADLINE = ("train_prob", "train_accuracy", "heldout_reverse_logprob", "chance_logprob",
                     "heldout_reverse_accuracy", "chance_accuracy", "ov_asymmetry")
TRACING_CAPTION = ("Causal tracing (Meng et al. 2022): the given entity's token embeddings noised, one layer's hidden "
                   "state (resid_post) or MLP output restored from the clean run at one position; the mean rise of "
                   "p(answer) over the corrupted run per layer and position bucket, peak and 95% interval in each "
                   "title")


def _reproduce(name: str, help_text: str, formatter: str, headline: tuple[str, ...],
               settings: Callable[[argparse.Namespace], Any], run: Callable[[Path, argparse.Namespace, bool], Any] | str,
               options: tuple[Option, ...] = (), resumable: bool = False, **report: Any) -> Experiment:
    """A ``reproduce NAME`` experiment built from ``settings(args)``; ``run``: its runner, or ``"module:function"``
    of ``(out, settings, progress) → summary``; ``report``: its ``title``, ``prediction``, ``files``,
    ``captions``."""
    if isinstance(run, str):
        run = _runner(settings, run)
    return Experiment(name, ("reproduce", name), help_text, formatter, headline, options, run, resumable,
                      settings=settings, **report)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    _reproduce(
        "reversal", "token-level reversal task: train A→B, test B→A (the default demo)",
        "analyses.reproduce:format_summary", REVERSAL_HEADLINE, reversal_config, _reversal, REVERSAL_OPTIONS, resumable=True,
        cpu_seconds=5, check=check_reversal,
        title="Reversal curse on the token world",
        prediction="Zhu et al. §4: trained sentences reach p > 0.99, while the held-out reverse direction stays at "
                   "chance (log p ≈ −log #entities of the answer's kind, accuracy ≈ 0, mean rank not near the top).",
        files=("curves.png", "heatmap.png", "logits.csv")),
    _reproduce(
        "bilinear", "the bilinear model against Theorem 1, for several d", "analyses.bilinear:format_bilinear",
        ("per_d.*.epsilon_hat", "per_d.*.final_reverse_loss_ratio", "per_d.*.theta_asymmetry"), bilinear_config, _bilinear, (
            Option("--dims", {**_N, "nargs": "+", "default": [64, 128, 256, 512]}),
            Option("--steps", {**_N, "default": 400}),
            Option("--lr", {"type": positive_float, "default": 100.0,
                            "help": "gradient-descent step size (default 100)"})),
        cpu_seconds=18,
        title="Bilinear model against Theorem 1",
        prediction="Zhu et al. Theorem 1: as the training loss L(t) → 0, L_rev(t)/L_rev(0) ≥ (L(t)/L(0))^ε with ε → 0 "
                   "as d grows, so the loss of the held-out direction (of each one-way pair: B → A for some, "
                   "A → B for the others) stays put; Θ becomes asymmetric from the first step.",
        captions={
            "loss_ratios.png": "Held-out loss ratio L_rev(t)/L_rev(0) (the untrained direction of each one-way "
                               "pair, whichever it is) against the training loss ratio "
                               "L(t)/L(0), one curve per d, with the bound x^ε in grey. Theorem 1: the curves hug 1 "
                               "more closely as d grows.",
            "theta_asymmetry.png": "‖Θ − Θᵀ‖/‖Θ‖ over training for each d. Paper: gradient steps add u_A u_Bᵀ "
                                   "terms, so Θ is asymmetric from the first step.",
            "scores.png": "u_Aᵀ Θ u_B (trained A → B) against u_Bᵀ Θ u_A (held-out B → A) for the one-way facts "
                          "whose trained direction is A → B, at the largest d. Paper: trained scores grow while "
                          "reverse scores stay near 0, far below the diagonal."}),
    _reproduce(
        "chain", "chain-of-thought intransitivity: A→B, B→C trained, A⇝C held out", "analyses.paper:format_chain",
        ("train_prob", "heldout_logprob", "chance_logprob", "heldout_accuracy", "two_step_accuracy"), chain_config, "analyses.paper:reproduce_chain", (
            Option("--triples", {**_N, "default": 200, "help": "(x, y, z) triples (default 200)"}),
            Option("--heldout", {**_N, "default": None,
                                 "help": "triples with x ⇝ z held out (default 30%%); the rest train it"}),
            Option("--related", {"action": "store_true",
                                 "help": "Zhu et al.'s related tokens: two-token entities, the first fixed per kind"})),
        cpu_seconds=3, check=check_chain,
        title="Chain-of-thought intransitivity",
        prediction="Zhu et al. §4: trained on x → y and y → z, the held-out x ⇝ z stays at chance while the two-step "
                   "chain x → ŷ → ẑ succeeds; the OV circuit Y[x, z] grows only for trained x ⇝ z.",
        files=("curves.png", "heatmap.png", "circuits.png"),
        captions={
            "curves.png": "Mean log-probability of the answer over training for the training set, each trained link "
                          "(x → y, y → z, x ⇝ z) and the held-out x ⇝ z, chance (−log of the number of z's) in "
                          "grey. Paper: the trained links climb to 0 while the held-out x ⇝ z stays at or below "
                          "chance.",
            "heatmap.png": "log p(candidate | given) of the first 20 facts per panel: trained x ⇝ z, then on held-out "
                           "triples x → y, y → z and x ⇝ z. Paper: a diagonal everywhere but in the last panel (never "
                           "trained).",
            "circuits.png": "Mean z-score of the OV entry Y[x, z] (and the direct path) for trained and held-out "
                            "x ⇝ z facts. Paper: Y[x, z] grows only where x ⇝ z was trained."}),
    _reproduce(
        "in-context", "reversal with the fact in the prompt (no curse), against a one-partner control",
        "analyses.paper:format_in_context",
        ("train_prob", "heldout_reverse_accuracy", "control.heldout_reverse_accuracy"), in_context_config,
        "analyses.paper:reproduce_in_context",
        cpu_seconds=8,
        title="Reversal in context",
        prediction="Zhu et al. §4: with the fact in the prompt there is no curse, the held-out reverse is copied from "
                   "context (high accuracy); a world where each x has one partner fails on its held-out pairs, whose "
                   "tokens are in no training sequence (so that failure alone does not show memorising).",
        files=("curves.png", "logits.csv"),
        captions={
            "curves.png": "Training and held-out reverse log p over training for the in-context grid and the "
                          "one-partner control, each with its own chance line (its world's answer kind). Paper: the grid learns to copy from "
                          "context (held-out rises), the control learns its trained pairs but not the held-out ones (held-out stays "
                          "at or below chance; its held-out pairs' tokens are in no training sequence, so it would fail at them "
                          "even had it learnt to copy)."}),
    _reproduce(
        "multi-token", "the reversal task with k = 2 and 3 tokens per entity", "analyses.paper:format_multi_token",
        RUNS_HEADLINE, multi_token_config, "analyses.paper:reproduce_multi_token",
        cpu_seconds=27,
        title="Reversal with multi-token entities",
        prediction="Zhu et al. §4: the curse holds for k = 2, 3 tokens per entity: trained p > 0.99, held-out reverse "
                   "at chance.",
        files=("comparison.png",)),
    _reproduce(
        "positional", "the reversal task with absolute, rotary and no positional encodings",
        "analyses.paper:format_positional", RUNS_HEADLINE, positional_config, "analyses.paper:reproduce_positional",
        cpu_seconds=14,
        title="Reversal with each positional encoding",
        prediction="Zhu et al. §4: the curse does not depend on the positional encoding (absolute, rotary, none).",
        files=("comparison.png",)),
    _reproduce(
        "embeddings", "cosine similarity of the embeddings of paired entities (no structure)",
        "analyses.paper:format_embeddings",
        ("train_prob", "heldout_reverse_logprob", "paired_mean", "unpaired_mean"), embeddings_config,
        "analyses.paper:reproduce_embeddings",
        cpu_seconds=4,
        title="Embedding similarity of paired entities",
        prediction="Zhu et al. §4: training leaves no pairing structure in the embeddings: cos(W_E[A_i], W_E[B_i]) "
                   "is distributed like the cosines of unpaired entities.",
        files=("curves.png", "cosines.png"),
        captions={
            "cosines.png": "Histograms of cos(W_E[A_i], W_E[B_j]) for paired (j = i) and unpaired (j ≠ i) entities. "
                           "Paper: the two distributions overlap: no pairing structure."}),
    _reproduce(
        "dynamics", "OV (Y) and QK (Z) entries of the facts over training, one-layer and tiny models",
        "analyses.dynamics:format_dynamics", ("final.*.train_prob", "final.*.heldout_accuracy"), dynamics_config,
        "analyses.dynamics:reproduce_dynamics",
        cpu_seconds=10,
        title="Effective weights over training",
        prediction="Zhu et al. §4: a gradient step on A → B raises the OV entry Y[A, B] and leaves Y[B, A] where it "
                   "was, so the held-out reverse of a one-way fact never gains weight.",
        captions={
            "dynamics.png": "z-score of the effective-weight entries over training, one panel per circuit, model and "
                            "layer; lines per role (trained direction, held-out reverse, both-way facts), bands "
                            "±1 std. Paper: Y[A, B] climbs for trained directions while Y[B, A] stays flat for "
                            "held-out ones."}),
    _reproduce(
        "mitigations", "augmentation, reverse training, in-context restatement and the Identity Bridge against the baseline",
        "analyses.mitigations:format_mitigations", ("rows.*.heldout_accuracy",), mitigations_config, _mitigations,
        (FINETUNED_OPTION,),
        cpu_seconds=51,
        title="Mitigations on the held-out reverse",
        prediction="Only a reverse the model is given buys reverse accuracy back: trained (the restated pairs of "
                   "augmentation; reverse training's swapped entities) or restated in the prompt to a model trained "
                   "to read its prompt (in-context); plain one-way training does not, not even with the fact in the "
                   "prompt. The Identity Bridge (Ma et al. 2026) is the exception: it buys much of it back with no "
                   "reverse statement.",
        captions={
            "mitigations.png": "Per mitigation and test, one bar per model: held-out reverse accuracy, its margin over "
                               "controls and the z-score of the OV entry Y[B, A]. Expect gains where the pair was "
                               "trained the other way round (augmentation's restated pairs, labelled \"(trained)\": accuracy 1 "
                               "by construction; reverse training, its entities swapped under the forward relation "
                               "token), where the fact is in the prompt of the in-context model (not of the "
                               "baseline), and under the Identity Bridge, which trains no reverse statement."}),
    _reproduce("identity-bridge", "Ma et al. 2026's Identity Bridge ('A → A' added): held-out reverse and OV Y[B,A] "
               "with vs without, one-layer and tiny, over seeds", "analyses.identity_bridge:format_identity_bridge",
               ("by_model.*.*.heldout_accuracy.mean", "by_model.*.*.z_heldout.mean"),
               _imported("analyses.identity_bridge:config_from_args"),
               "analyses.identity_bridge:reproduce_identity_bridge", (
                   Option("--n-seeds", {**_N, "default": 3, "help": "seeds SEED … SEED+N−1 (default 3)"}),
                   Option("--steps", {**_N, "default": 80, "help": "training steps (default 80)"})), in_all=False,
               cpu_seconds=50, seeds_option="--n-seeds", title="The Identity Bridge on the token world",
               prediction="Ma et al. 2026: with identity statements \"A → A\" in training, even a one-layer "
                          "transformer answers the held-out reverse, through an OV entry Y[B, A] that gradient descent "
                          "now raises; without them Y[B, A] stays at 0 and the reverse at chance.",
               files=("identity_bridge.csv", "identity_bridge.png")),
    _reproduce("zhu-settings", "Zhu et al.'s other flags on the reversal run: loss on the whole sequence, frozen "
               "embeddings, depth 1/2/4/8", "analyses.zhu_settings:format_zhu_settings",
               ("settings.*.heldout_reverse_logprob", "settings.*.ov_z_heldout"),
               _imported("analyses.zhu_settings:config_from_args"),
               "analyses.zhu_settings:reproduce_zhu_settings", (
                   Option("--steps", {**_N, "default": 80, "help": "training steps (default 80)"}),
                   Option("--depths", {**_N, "nargs": "+", "default": [1, 2, 4, 8]})), in_all=False,
               cpu_seconds=40, title="Zhu et al.'s other settings",
               prediction="Zhu et al.: the curse holds whatever the loss covers (last entity or whole sequence), with "
                          "frozen embeddings, and at every depth: the held-out reverse stays at chance.",
               files=("zhu_settings.png",)),
    _reproduce("chain-sizes", "Zhu et al.'s related-token chain over num_train 10…500: held-out x ⇝ z and OV Y[x,z]",
               "analyses.chain_sizes:format_chain_sizes", ("sizes.*.heldout_logprob", "sizes.*.ov_z_heldout"),
               _imported("analyses.chain_sizes:config_from_args"),
               "analyses.chain_sizes:reproduce_chain_sizes", (
                   Option("--steps", {**_N, "default": 60, "help": "training steps (default 60)"}),
                   Option("--sizes", {**_N, "nargs": "+", "default": [10, 20, 50, 100, 200, 500]})), in_all=False,
               cpu_seconds=35, check=check_chain_sizes,
               title="Related-token chain across training-set sizes",
               prediction="Zhu et al.: with related tokens and more training triples the held-out x ⇝ z still stays "
                          "at chance, while the two-step chain succeeds; Y[x, z] grows only for trained x ⇝ z.",
               files=("chain_sizes.png",)),
    Experiment(
        "finetune-facts", ("finetune-facts",),
        "fine-tune a pretrained LLM on fictitious people or your own facts, test both ways",
        "analyses.finetune:format_summary", ("groups.*.*.after.margin.mean", "groups.*.*.after.top1"),
        settings=finetune_config, title="A pretrained LLM fine-tuned on new facts",
        prediction="Berglund et al. 2023, experiment 1: fine-tuned on \"<name> is <description>\" (group p2d), the "
                   "model completes the description from the name, also in paraphrases it never saw, but gains nothing "
                   "on the name from the description (margin gain ≈ 0); trained description → name (d2p), the same "
                   "with the roles swapped; trained both ways (both), it answers both as trained. With the fact "
                   "restated in the prompt it answers the reverse question.",
        files=("finetune.png", "questions.csv", "logits.csv", "in_context.csv"),
        captions={
            "finetune.png": "Margin of the true answer over answers of the same kind (mean, 95% interval) before "
                            "(grey) and after (blue) fine-tuning, per fact group: forward (the way the group was "
                            "trained) in held-out and in the trained paraphrase, reverse (held out), and reverse with "
                            "the fact restated in the prompt. Berglund et al.: forward rises, reverse does not, "
                            "in-context reverse stays high.",
            "questions.csv": "One row per test question (group, setting, prompt's answer): log-probability, greedy "
                             "exact match, top-1 and rank among its controls, margin over them.",
            "in_context.csv": "One row per reverse question asked after the fact's forward sentence: log-probability "
                              "of the answer, rank among its controls, greedy correctness, margin over the controls.",
            "tracing_before.png": TRACING_CAPTION + ", before fine-tuning (the facts unknown: nothing to recover).",
            "tracing_after.png": TRACING_CAPTION + ", after fine-tuning: where the trained forward answer is "
                                 "recovered, and whether the held-out reverse is recoverable anywhere.",
            "weight_change.png": "Fine-tuning's weight change read at the entities, per layer: ΔMLP (linearised at "
                                 "the cached input) and ΔOV applied to the given entity's residual state, read at the "
                                 "answer's unembedding, z-scored against control answers; trained direction against "
                                 "held-out.",
            "weight_change.csv": "One row per (fact, weight change, layer): the entries M[A, B] and M[B, A] of ΔMLP / "
                                 "ΔOV read at the entities, their z-scores against controls and the asymmetry index."}),
)}
"""Every experiment a run folder holds, by the name its ``summary.json`` gives."""

COMMAND_RUNS: dict[str, RunKind] = {
    "asymmetry": RunKind(
        "Celebrity parents on a pretrained model",
        "Berglund et al. 2023: GPT-4 names a celebrity's parent 79% of the time but the parent's child only 33%: "
        "knowing child → parent does not give parent → child.",
        ("asymmetry.png", "pairs.csv"), "analyses.asymmetry:format_summary", {
            "asymmetry.png": "Per direction: top-1 rate among the same-kind controls (95% interval) and greedy exact "
                             "match beside GPT-4's accuracy, mean rank of the truth among random answers of the same "
                             "kind (chance dashed) and the log-probability margin over them; in the rank and margin "
                             "panels, lighter bars keep only pairs that share no name word (in the first, the "
                             "lighter bar is greedy exact match). Berglund et al.: child → parent beats parent → child.",
            "pairs.csv": "One row per celebrity pair, scored both ways."}),
    "compare": RunKind(
        "Theory against trained models, same probes",
        "Zhu et al. §2-3: in every model trained one way (bilinear Θ, one-layer and multi-layer transformers, a "
        "fine-tuned LLM) the trained direction gets a margin and a large Y[A, B], the held-out reverse neither. "
        "Ma et al. 2026: the Identity Bridge (A → A trained too) breaks this in the one-layer model.", captions={
            "compare.png": "Per model: margin over random answers and accuracy of the trained A → B and the held-out "
                           "B → A, and the z-scores of Y[A, B] and Y[B, A]. Theory: the same asymmetry in every "
                           "model trained one way; the Identity Bridge row, trained with A → A as well, is the "
                           "exception (Ma et al. 2026): reverse above chance and Y[B, A] grown."}),
    "probe": RunKind(
        "Logit and circuit probes",
        "Zhu et al. §3: trained directions get a large margin over random answers and a large OV entry Y[A, B]; "
        "held-out reverse directions get neither (margin ≈ 0, Y[B, A] ≈ 0).",
        ("logits.csv", "circuits.csv", "margins.png")),  # circuits.png only where an asymmetry is defined
    "probe-prior": RunKind(
        "Logit and circuit probes of prior knowledge, not trained",
        "Nothing here tests the paper: the model was not trained on these facts, so no direction is trained or held "
        "out. Forward and reverse are compared as the model already knew them.",
        ("logits.csv", "circuits.csv", "margins.png")),
    "sweep": RunKind(
        "Sweep across seeds and a grid",
        "The same claims across seeds: each headline number of the swept experiment as its mean over seeds with a "
        "Student-t 95% interval (a yes/no verdict: the share of seeds saying yes, with Wilson's), per grid point; the paper's predictions should hold at every point, not at one "
        "lucky seed.", ("aggregate.csv",), "analyses.sweep:format_sweep", {
            "sweep.png": "Per headline metric (panel) and grid point (x): each seed's value (grey dots) and the mean "
                         "with its 95% interval across seeds (blue; Student's t, Wilson's for a yes/no); chance as a grey tick where the "
                         "experiment has one.",
            "aggregate.csv": "One row per grid point: for every measured number of the trials' summary.json (settings, "
                             "counts and timings left out), its mean, sample "
                             "sd and 95% interval (Student's t; Wilson's for a yes/no verdict, whose mean is the share of "
                             "seeds saying yes) across the finished seeds (n_seeds) that have a value for it (.n); each trial's run folder is in trials/."}),
}
"""The run folders of the commands that are not experiments, by ``summary["experiment"]`` (or
``"probe"`` / ``"probe-prior"``, which :func:`analyses.report.run_kind` infers)."""

KINDS: dict[str, Experiment | RunKind] = {**EXPERIMENTS, **COMMAND_RUNS}
"""What the report knows of every kind of run folder: ``title``, ``prediction``, ``files``,
``formatter``, ``captions``."""

REPRODUCE = tuple(name for name, e in EXPERIMENTS.items() if e.command[0] == "reproduce")
REPRODUCE_ALL = tuple(name for name in REPRODUCE if EXPERIMENTS[name].in_all)
"""What ``reproduce all`` runs: every reproduce experiment that fits its time budget (benchmarks/README.md)."""
ALL_OPTIONS = (FINETUNED_OPTION, Option("--seeds", {
    **_N, "default": None, "metavar": "N",
    "help": "run each experiment for seeds 0 … N−1 as a sweep on Ray (OUT/<name>/trials/seed=S/) and report every "
            "headline number as mean ± 95%% interval"}), Option("--workers", {
    **_N, "default": None, "metavar": "N",
    "help": "experiments (or trials) at once, each on a Ray actor of --threads threads (default 1; workers by "
            "default: the cores ÷ threads; 1 without --seeds: one after another in this process)"}), Option("--experiments", {
    "nargs": "+", "choices": REPRODUCE, "default": None, "metavar": "NAME",
    "help": f"only these (default: {', '.join(REPRODUCE_ALL)})"}))
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
        if not action.option_strings or action.dest in NOT_GRID or (
                action.nargs == 0 and not isinstance(action, argparse._StoreTrueAction)):
            continue
        options[action.option_strings[-1 if len(action.option_strings) == 1 else 0].lstrip("-")] = action
    return options
