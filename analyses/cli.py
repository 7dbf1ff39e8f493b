"""The ``revlens`` command line. Heavy modules (torch, TransformerLens) load only inside commands,
so ``revlens --help`` answers at once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

MODEL_NAMES = ("tiny", "one-layer", "paper")
PAPER_EXPERIMENTS = {
    "chain": "chain-of-thought intransitivity: A→B, B→C trained, A⇝C held out",
    "in-context": "reversal with the fact in the prompt (no curse), against a one-partner control",
    "multi-token": "the reversal task with k = 2 and 3 tokens per entity",
    "positional": "the reversal task with absolute, rotary and no positional encodings",
    "embeddings": "cosine similarity of the embeddings of paired entities (no structure)",
    "dynamics": "OV (Y) and QK (Z) entries of the facts over training, one-layer and tiny models",
    "mitigations": "augmentation, reverse training and in-context restatement against the baseline",
    "all": "every experiment above plus reversal and bilinear, into OUT/<name>/",
}
POSITIONALS = ("absolute", "rotary", "none")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revlens",
        description="Mechanistic interpretability of the reversal curse (Zhu et al. 2024).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reproduce = commands.add_parser("reproduce", help="reproduce one of the paper's experiments")
    experiments = reproduce.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    reversal = experiments.add_parser(
        "reversal", help="token-level reversal task: train A→B, test B→A (the default demo)"
    )
    reversal.add_argument("--out", type=Path, required=True, help="output folder (created)")
    reversal.add_argument("--model", choices=MODEL_NAMES, default="tiny", help="HookedTransformer config (default tiny)")
    reversal.add_argument("--seed", type=int, default=0)
    reversal.add_argument("--positional", choices=POSITIONALS, default="absolute")
    reversal.add_argument("--k", type=_positive_int, default=1, help="tokens per entity (default 1)")
    reversal.add_argument("--pairs", type=_positive_int, default=200, help="number of (x, y) pairs (default 200)")
    reversal.add_argument("--steps", type=_positive_int, default=80, help="training steps (default 80)")
    reversal.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (default 1e-2)")
    reversal.add_argument("--batch-size", type=_positive_int, default=None, help="default: full batch")
    reversal.add_argument("--eval-every", type=_positive_int, default=2)
    reversal.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    reversal.add_argument("--checkpoint-every", type=_positive_int, default=None,
                          help="also checkpoint every N steps, so a killed run resumes from there")
    reversal.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints")
    reversal.add_argument("--quiet", action="store_true", help="no progress bar")
    bilinear = experiments.add_parser("bilinear", help="the bilinear model against Theorem 1, for several d")
    bilinear.add_argument("--out", type=Path, required=True, help="output folder (created)")
    bilinear.add_argument("--dims", type=_positive_int, nargs="+", default=[64, 128, 256, 512])
    bilinear.add_argument("--steps", type=_positive_int, default=400)
    bilinear.add_argument("--lr", type=float, default=100.0, help="gradient-descent step size (default 100)")
    bilinear.add_argument("--seed", type=int, default=0)
    bilinear.add_argument("--quiet", action="store_true", help="no progress bar")

    make = commands.add_parser("make-facts", help="write a fact world as JSONL (input for probe and training)")
    make.add_argument("world", choices=("reversal", "chain", "in-context", "people", "celebrity"))
    make.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--k", type=_positive_int, default=1, help="tokens per entity (token worlds)")
    make.add_argument("--size", type=_positive_int, default=None,
                      help="pairs / triples (token worlds) or people per group (people world)")
    make.add_argument("--data", type=Path, default=None, help="celebrity CSV (default: ../shared/data copy)")

    for name, help_text in PAPER_EXPERIMENTS.items():
        experiment = experiments.add_parser(name, help=help_text)
        experiment.add_argument("--out", type=Path, required=True, help="output folder (created)")
        experiment.add_argument("--seed", type=int, default=0)
        experiment.add_argument("--quiet", action="store_true", help="no progress bar")
        if name in ("mitigations", "all"):
            experiment.add_argument("--finetuned", type=Path, nargs="+", default=[], metavar="DIR",
                                    help="`revlens finetune-facts` folders (any --mitigation) whose rows join "
                                         "the mitigations table")

    check = commands.add_parser(
        "check-asymmetry", help="celebrity parents: does a pretrained model know child→parent better than parent→child?")
    check.add_argument("--model", default="smollm2-135m", help="smollm2-135m, a local HF folder or a .gguf file")
    check.add_argument("--data", type=Path, default=None,
                       help="parent_child_pairs.csv (default: ../shared/data copy or $REVLENS_CELEBRITY_CSV)")
    check.add_argument("--out", type=Path, required=True, help="output folder (created)")
    check.add_argument("--limit", type=_positive_int, default=None, help="only the first N pairs")
    check.add_argument("--backend", choices=("hooked", "bridge"), default="hooked")
    check.add_argument("--templates", choices=("question", "completion"), default="question")
    check.add_argument("--controls", type=_positive_int, default=31, help="random answers of the same parent type")
    check.add_argument("--batch-size", type=_positive_int, default=128)
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--device", default=None)
    check.add_argument("--quiet", action="store_true", help="no progress bar")

    finetune = commands.add_parser(
        "finetune-facts", help="fine-tune a pretrained LLM on fictitious people (name → description), test both ways")
    finetune.add_argument("--model", default="smollm2-135m", help="smollm2-135m, a local HF folder or a .gguf file")
    finetune.add_argument("--out", type=Path, required=True, help="output folder (created)")
    finetune.add_argument("--people", type=_positive_int, default=None, help="fictitious people (default 30)")
    finetune.add_argument("--templates", type=_positive_int, default=None, help="paraphrases per fact, 1-5")
    finetune.add_argument("--epochs", type=_positive_int, default=None, help="passes over the sentences")
    finetune.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    finetune.add_argument("--batch-size", type=_positive_int, default=None)
    finetune.add_argument("--trainable-blocks", type=_positive_int, default=None,
                          help="memory-light: train only the last N blocks (default: every parameter)")
    finetune.add_argument("--controls", type=_positive_int, default=None, help="random answers per question")
    finetune.add_argument("--mitigation", choices=("none", "bidirectional", "reverse-training"), default="none",
                          help="bidirectional: as many people again trained both ways; reverse-training: every "
                               "sentence also with its words reversed, entities kept whole (default none)")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--device", default=None)
    finetune.add_argument("--quiet", action="store_true", help="no progress bar")

    probe = commands.add_parser(
        "probe", help="logit, circuit and attribution probes (DLA, patching, attention views) of a model on a fact file")
    probe.add_argument("--model", required=True,
                       help="a run's checkpoints/ folder, one step-NNNNNN.json, or a pretrained model "
                            "(smollm2-135m, a local HF folder or .gguf file)")
    probe.add_argument("--backend", choices=("hooked", "bridge"), default="hooked",
                       help="TransformerLens wrapper for pretrained models (default hooked)")
    probe.add_argument("--facts", type=Path, required=True, help="fact file (JSONL, e.g. a run's facts.jsonl)")
    probe.add_argument("--out", type=Path, required=True, help="output folder (created)")
    probe.add_argument("--controls", type=_positive_int, default=16, help="random control answers per fact")
    probe.add_argument("--patch-layers", type=int, nargs="+", default=None, metavar="L",
                       help="layers of the forward → reverse patching figure (default: all; one forward pass "
                            "per layer and position)")
    probe.add_argument("--device", default=None)

    compare = commands.add_parser(
        "compare", help="bilinear, one-layer, tiny (and a fine-tuned LLM) side by side, same probes and metrics")
    compare.add_argument("--out", type=Path, required=True, help="output folder (created)")
    compare.add_argument("--finetuned", type=Path, default=None,
                         help="a `revlens finetune-facts` output folder (logits.csv, circuits.csv, summary.json)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--quiet", action="store_true", help="no progress bar")

    report = commands.add_parser("report", help="one self-contained HTML page (figures, tables, views) from run folders")
    report.add_argument("--runs", type=Path, nargs="+", required=True,
                        help="run folders (each with a summary.json), or a folder of them (reproduce all)")
    report.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    report.add_argument("--max-rows", type=_positive_int, default=20, help="rows shown per table (default 20)")
    return parser


def _make_facts(args: argparse.Namespace) -> int:
    from facts.io import save_jsonl

    if args.world == "celebrity":
        from facts.celebrity import load_celebrity_pairs

        facts = load_celebrity_pairs(args.data)
    elif args.world == "people":
        from facts.language import people_world

        facts = people_world(n_per_group=args.size or 30, seed=args.seed)
    else:
        from facts.token_worlds import WORLDS

        sizes = {"reversal": "n_pairs", "chain": "n_triples", "in-context": "n_x"}
        kwargs = {"seed": args.seed} | ({sizes[args.world]: args.size} if args.size else {})
        if args.world != "in-context":
            kwargs["k"] = args.k
        facts = WORLDS[args.world](**kwargs)
    save_jsonl(facts, args.out)
    print(f"wrote {len(facts)} {facts.world} facts ({facts.count('train')} trained, "
          f"{facts.count('heldout')} held-out statements) to {args.out}")
    return 0


def _check_asymmetry(args: argparse.Namespace) -> int:
    from analyses.asymmetry import check_asymmetry, format_summary

    summary = check_asymmetry(args.model, args.data, args.out, limit=args.limit, backend=args.backend,
                              batch_size=args.batch_size, n_controls=args.controls, templates=args.templates,
                              seed=args.seed, device=args.device, progress=not args.quiet)
    print(format_summary(summary))
    print(f"wrote {args.out}/: summary.json pairs.csv asymmetry.png")
    return 0


def _finetune_facts(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from analyses.finetune import FinetuneConfig, finetune_facts, format_summary

    given = {"people": args.people, "templates": args.templates, "epochs": args.epochs, "lr": args.lr,
             "batch_size": args.batch_size, "n_controls": args.controls}
    config = replace(FinetuneConfig(), model=args.model, trainable_blocks=args.trainable_blocks,
                     mitigation=args.mitigation, seed=args.seed,
                     device=args.device, **{name: value for name, value in given.items() if value is not None})
    summary = finetune_facts(args.out, config, progress=not args.quiet)
    print(format_summary(summary))
    print(f"wrote {args.out}/: summary.json logits.csv in_context.csv before_*.csv circuits.csv history.jsonl "
          f"facts.jsonl finetune.png")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from analyses.probe import format_probe, probe

    summary = probe(args.model, args.facts, args.out, device=args.device, n_controls=args.controls,
                    backend=args.backend, patch_layers=args.patch_layers)
    print(format_probe(summary))
    print(f"wrote {args.out}/: logits.csv circuits.csv summary.json {' '.join(summary['figures'])}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from analyses.compare import CompareConfig, compare, format_compare

    summary = compare(args.out, args.finetuned, CompareConfig(seed=args.seed), progress=not args.quiet)
    print(format_compare(summary))
    print(f"\nwrote {args.out}/: compare.csv compare.png summary.json, one folder per trained model")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analyses.report import write_report

    runs = write_report(args.runs, args.out, max_rows=args.max_rows)
    print(f"wrote {args.out}: {len(runs)} runs ({', '.join(run.label for run in runs)})")
    return 0


def _reproduce_bilinear(args: argparse.Namespace) -> int:
    from analyses.bilinear import BilinearConfig, format_bilinear, reproduce_bilinear

    config = BilinearConfig(dims=tuple(args.dims), steps=args.steps, lr=args.lr, seed=args.seed)
    summary = reproduce_bilinear(args.out, config, progress=not args.quiet)
    print(format_bilinear(summary))
    print(f"\nwrote {args.out}/: summary.json history-d*.jsonl loss_ratios.png theta_asymmetry.png scores.png "
          f"({summary['seconds']:.1f} s)")
    return 0


def _reproduce_paper(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from analyses import dynamics, mitigations, paper
    from analyses.bilinear import BilinearConfig, format_bilinear, reproduce_bilinear
    from analyses.reproduce import ReversalConfig, format_summary, reproduce_reversal

    runs = {
        "reversal": (lambda out, p: reproduce_reversal(out, ReversalConfig(seed=args.seed), p), format_summary),
        "bilinear": (lambda out, p: reproduce_bilinear(out, BilinearConfig(seed=args.seed), p), format_bilinear),
        "chain": (lambda out, p: paper.reproduce_chain(out, paper.ChainConfig(seed=args.seed), p),
                  paper.format_chain),
        "in-context": (lambda out, p: paper.reproduce_in_context(out, paper.InContextConfig(seed=args.seed), p),
                       paper.format_in_context),
        "multi-token": (lambda out, p: paper.reproduce_multi_token(
            out, paper.MultiTokenConfig(reversal=replace(ReversalConfig(), seed=args.seed)), p),
            paper.format_multi_token),
        "positional": (lambda out, p: paper.reproduce_positional(
            out, paper.PositionalConfig(reversal=replace(ReversalConfig(), seed=args.seed)), p),
            paper.format_positional),
        "embeddings": (lambda out, p: paper.reproduce_embeddings(out, paper.EmbeddingConfig(seed=args.seed), p),
                       paper.format_embeddings),
        "dynamics": (lambda out, p: dynamics.reproduce_dynamics(
            out, dynamics.DynamicsConfig(run=ReversalConfig(seed=args.seed)), p), dynamics.format_dynamics),
        "mitigations": (lambda out, p: mitigations.reproduce_mitigations(
            out, mitigations.MitigationConfig(run=replace(mitigations.MitigationConfig().run, seed=args.seed)), p,
            args.finetuned),
            mitigations.format_mitigations),
    }
    chosen = list(runs) if args.experiment == "all" else [args.experiment]
    began = time.perf_counter()
    for name in chosen:
        out = args.out / name if args.experiment == "all" else args.out
        run, describe = runs[name]
        summary = run(out, not args.quiet)
        if len(chosen) > 1:
            print(f"\n=== {name} ({out})")
        print(describe(summary))
    if len(chosen) > 1:
        print(f"\nall {len(chosen)} experiments in {time.perf_counter() - began:.0f} s; results in {args.out}/")
    return 0


def _reproduce_reversal(args: argparse.Namespace) -> int:
    from analyses.reproduce import ReversalConfig, format_summary, reproduce_reversal

    config = ReversalConfig(
        model=args.model, positional=args.positional, seed=args.seed, k=args.k, n_pairs=args.pairs,
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, eval_every=args.eval_every, device=args.device,
        checkpoint_every=args.checkpoint_every,
    )
    summary = reproduce_reversal(args.out, config, progress=not args.quiet, resume=args.resume)
    print(format_summary(summary))
    print(f"\nwrote {args.out}/: summary.json history.jsonl logits.csv facts.jsonl curves.png heatmap.png checkpoints/")
    return 0


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Give every command (each leaf of the subcommand tree) ``--threads N``."""
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subcommands:
        parser.add_argument("--threads", type=_positive_int, default=None,
                            help="CPU threads for torch, intra- and inter-op (default: OMP_NUM_THREADS "
                                 "when set, else the machine's cores)")
    for action in subcommands:
        for command in dict.fromkeys(action.choices.values()):
            _add_threads_option(command)


def _set_threads(threads: int | None) -> None:
    """Set torch's intra-op and inter-op thread counts before any work runs (None: the default)."""
    import torch

    if threads is None:
        omp = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(omp) if omp.isdigit() and int(omp) > 0 else os.cpu_count() or 1
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set in this process (e.g. main() called twice): keep it
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _add_threads_option(parser)
    args = parser.parse_args(argv)
    _set_threads(args.threads)
    try:
        if args.command == "reproduce" and args.experiment == "reversal":
            return _reproduce_reversal(args)
        if args.command == "reproduce" and args.experiment in PAPER_EXPERIMENTS:
            return _reproduce_paper(args)
        if args.command == "reproduce" and args.experiment == "bilinear":
            return _reproduce_bilinear(args)
        if args.command == "check-asymmetry":
            return _check_asymmetry(args)
        if args.command == "make-facts":
            return _make_facts(args)
        if args.command == "probe":
            return _probe(args)
        if args.command == "finetune-facts":
            return _finetune_facts(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
    except (ValueError, RuntimeError) as error:  # our errors subclass these and name the problem
        print(f"revlens: error: {error}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
