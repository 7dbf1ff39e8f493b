"""The ``revlens`` command line. Heavy modules (torch, TransformerLens) load only inside commands,
so ``revlens --help`` answers at once."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from analyses.experiments import ALL_OPTIONS, DEVICE_HELP, EXPERIMENTS, REPRODUCE, REPRODUCE_ALL, recorded_settings
from analyses.experiments import non_negative_float as _non_negative_float
from analyses.experiments import non_negative_int as _non_negative_int
from analyses.experiments import positive_float as _positive_float
from analyses.experiments import positive_int as _positive_int
from analyses.experiments import seed as _seed

if TYPE_CHECKING:
    from analyses.sweep import Sweep

PRETRAINED_HELP = ("smollm2-135m, gemma3-270m, a local Hugging Face folder, a .gguf file or a Hub id already in the "
                   "local Hugging Face cache")
FOLDER_COMMANDS = ("reproduce", "check-asymmetry", "finetune-facts", "probe", "compare")
"""Commands that write a run folder (:mod:`analyses.runfolder`); make-facts and report write one file (make-facts
``--format berglund`` a folder of files, no run)."""


class _Parser(argparse.ArgumentParser):
    """An argument error is one line, ``revlens: error: …``, and exit code 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"revlens: error: {message} (see `{self.prog} --help`)\n")


def _out_path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; name the file or folder to write")
    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="revlens",
        description="Mechanistic interpretability of the reversal curse (Zhu et al. 2024).",
    )
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reproduce = commands.add_parser("reproduce", help="reproduce one of the paper's experiments")
    experiments = reproduce.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    writers = []
    for name in REPRODUCE + ("all",):
        experiment = EXPERIMENTS.get(name)
        writer = experiments.add_parser(name, help=experiment.help if experiment else
                                        "every experiment above but " + ", ".join(
                                            n for n in REPRODUCE if n not in REPRODUCE_ALL) + ", into OUT/<name>/")
        writers.append(writer)
        writer.add_argument("--out", type=_out_path, required=True, help="output folder (created)")
        writer.add_argument("--seed", type=_seed, default=0)
        writer.add_argument("--quiet", action="store_true", help="no progress bar")
        for option in experiment.options if experiment else ALL_OPTIONS:
            option.add_to(writer)

    make = commands.add_parser("make-facts", help="write a fact world as JSONL, CSV or a Berglund folder (what probe "
                                                  "and finetune-facts read)")
    make.add_argument("world", choices=("reversal", "chain", "in-context", "people", "celebrity"))
    make.add_argument("--out", type=_out_path, required=True,
                      help="the file to write: FILE.jsonl (any world), FILE.csv (subject,relation,object,"
                           "inverse_relation,group; people) or with --format berglund a folder in Berglund et al.'s "
                           "experiment-1 layout (people)")
    make.add_argument("--format", choices=("jsonl", "csv", "berglund"), default=None,
                      help="default: csv for an --out ending in .csv, else jsonl (readers tell the format by the "
                           "name, so a csv file must end in .csv and a jsonl file must not; berglund: a new or "
                           "empty folder)")
    make.add_argument("--seed", type=_seed, default=None, help="default 0 (generated worlds)")
    make.add_argument("--k", type=_positive_int, default=None, help="tokens per entity (reversal, chain; default 1)")
    make.add_argument("--size", type=_positive_int, default=None,
                      help="pairs (reversal), triples (chain), x entities of 10 y's each (in-context) or people per "
                           "group (people world)")
    make.add_argument("--data", type=Path, default=None,
                      help="celebrity CSV (default: $REVLENS_CELEBRITY_CSV or the copy shipped in the package)")
    make.add_argument("--limit", type=_positive_int, default=None, help="only the first N facts (e.g. celebrity pairs)")


    check = commands.add_parser(
        "check-asymmetry", help="celebrity parents: does a pretrained model know child→parent better than parent→child?")
    check.add_argument("--model", default="smollm2-135m", help=PRETRAINED_HELP)
    check.add_argument("--data", type=Path, default=None,
                       help="parent_child_pairs.csv (default: $REVLENS_CELEBRITY_CSV or the package's copy)")
    check.add_argument("--out", type=_out_path, required=True, help="output folder (created)")
    check.add_argument("--limit", type=_positive_int, default=None, help="only the first N pairs")
    check.add_argument("--backend", choices=("hooked", "bridge"), default="bridge",
                       help="TransformerLens wrapper (default bridge: it scores at the floor's speed, one pass a "
                            "statement; hooked gives the same log-probabilities within 1e-4)")
    check.add_argument("--templates", choices=("question", "completion"), default="question",
                       help="question: 'Q: Who is X's mother?\\nA: Y' (default; as probe asks); completion: "
                            "'X's mother is Y.', for base models that do not follow questions")
    check.add_argument("--controls", type=_positive_int, default=31, help="random answers of the same parent type")
    check.add_argument("--batch-size", type=_positive_int, default=128,
                       help="statements (prompts of one length) scored a chunk (default 128)")
    check.add_argument("--seed", type=_seed, default=0, help="draws the controls (default 0)")
    check.add_argument("--device", default=None, help=DEVICE_HELP)
    check.add_argument("--quiet", action="store_true", help="no progress bar")

    finetune = commands.add_parser(
        "finetune-facts", help="fine-tune a pretrained LLM on fictitious people or your own facts, test both ways")
    finetune.add_argument("--model", default="smollm2-135m", help=PRETRAINED_HELP)
    finetune.add_argument("--out", type=_out_path, required=True, help="output folder (created)")
    finetune.add_argument("--people", type=_positive_int, default=None, help="fictitious people per fact group (default 16)")
    finetune.add_argument("--facts", type=Path, default=None,
                          help="your facts instead of the built-in people: a folder in Berglund et al.'s experiment-1 "
                               "layout (p2d_prompts_train.jsonl, ...), a CSV (subject,relation,object"
                               "[,inverse_relation[,group]]) or a fact JSONL")
    finetune.add_argument("--templates-file", type=Path, default=None,
                          help="sentence templates for --facts (JSONL: relation, split train/test, template)")
    finetune.add_argument("--train-paraphrases", "--templates", dest="templates", metavar="N", type=_positive_int,
                          default=None,
                          help="train on the first N paraphrases (prompts) per fact (default 2; Berglund folder: all)")
    finetune.add_argument("--epochs", type=_positive_int, default=None, help="passes over the sentences (default 8)")
    finetune.add_argument("--lr", type=_positive_float, default=None, help="AdamW learning rate (default 3e-4)")
    finetune.add_argument("--batch-size", type=_positive_int, default=None, help="sentences a step (default 16)")
    finetune.add_argument("--trainable-blocks", type=_positive_int, default=None,
                          help="memory-light: train only the last N blocks (default: every parameter)")
    finetune.add_argument("--lora-rank", type=_positive_int, default=None, metavar="R",
                          help="train LoRA adapters of rank R (peft) instead of the weights; merged before probing")
    finetune.add_argument("--lora-alpha", type=_positive_float, default=None, metavar="A",
                          help="LoRA scale numerator: W + (A/R)·BA (default 2R; needs --lora-rank)")
    finetune.add_argument("--lora-targets", nargs="+", default=None, metavar="NAME",
                          help="block linear layers to adapt, e.g. q_proj v_proj (default: all of them)")
    finetune.add_argument("--controls", type=_positive_int, default=None,
                          help="random answers of the same kind per question (default 15: with the default 16 people, "
                               "every other one; with fewer --people, every other one too)")
    finetune.add_argument("--mitigation", choices=("none", "bidirectional", "reverse-training", "identity-bridge"),
                          default="none",
                          help="bidirectional: as many people again trained both ways; reverse-training: every "
                               "sentence also with its words reversed, entities kept whole; identity-bridge: "
                               "'The name of X is X' per person and paraphrase (default none)")
    finetune.add_argument("--groups", nargs="+", choices=("p2d", "d2p", "both"), default=None, metavar="GROUP",
                          help="built-in world: Berglund et al.'s fact groups to train (p2d d2p both: their experiment-1 "
                               "grid; default p2d)")
    finetune.add_argument("--seed", type=_seed, default=0,
                          help="draws the built-in world's people, the controls, the batches' order, the circuits' "
                               "controls, tracing's noise and multiple choice's options (default 0)")
    finetune.add_argument("--tracing-facts", type=_non_negative_int, default=None, metavar="N",
                          help="facts traced before and after, with the weight change read at the entities "
                               "(tracing*.csv/png, weight_change.*; default 0: none)")
    finetune.add_argument("--multiple-choice", type=_options, default=None, metavar="K",
                          help="also ask the forward and reverse questions as multiple choice with K options, before "
                               "and after (multiple_choice.csv; default 0: none)")
    finetune.add_argument("--device", default=None, help=DEVICE_HELP)
    finetune.add_argument("--quiet", action="store_true", help="no progress bar")

    probe = commands.add_parser(
        "probe", help="logit, circuit and attribution probes (DLA, patching, attention views) of a model on a fact file")
    probe.add_argument("--model", required=True,
                       help="a run's checkpoints/ folder, one step-NNNNNN.json, or a pretrained model "
                            f"({PRETRAINED_HELP})")
    probe.add_argument("--seed", type=_seed, default=0,
                       help="draws the controls, tracing's noise and multiple choice's options (default 0)")
    probe.add_argument("--backend", choices=("hooked", "bridge"), default=None,
                       help="TransformerLens wrapper of a pretrained model (default hooked); a checkpoint loads as the "
                            "model it was trained as")
    probe.add_argument("--facts", type=Path, required=True,
                       help="your facts, read as finetune-facts reads them: a fact JSONL (e.g. a run's facts.jsonl), "
                            "a CSV of subject,relation,object[,inverse_relation,group] or a folder in Berglund et "
                            "al.'s experiment-1 layout")
    probe.add_argument("--templates-file", type=Path, default=None,
                       help="sentence templates for a CSV or JSONL's relations (JSONL: relation, split, template); "
                            "a pretrained model reads the first train template of each relation")
    probe.add_argument("--out", type=_out_path, required=True, help="output folder (created)")
    probe.add_argument("--controls", type=_positive_int, default=16, help="random control answers per fact")
    probe.add_argument("--limit", type=_positive_int, default=None, help="only the first N facts of the file")
    probe.add_argument("--patch-layers", type=int, nargs="+", default=None, metavar="L",
                       help="layers of the forward → reverse patching figure (default: all; one forward pass "
                            "per layer and position)")
    probe.add_argument("--device", default=None, help=DEVICE_HELP)
    probe.add_argument("--tracing", action="store_true",
                       help="also causal tracing (tracing.csv, tracing.png) of the first --tracing-facts facts")
    probe.add_argument("--tracing-facts", type=_positive_int, default=None, metavar="N",
                       help="facts to trace (default 4; with --tracing)")
    probe.add_argument("--tracing-samples", type=_positive_int, default=None, metavar="S",
                       help="noise samples per traced statement (default 3; with --tracing)")
    probe.add_argument("--head-patching", action="store_true",
                       help="also forward → reverse patching of each head's output (head_patching.png; prompts of "
                            "one length)")
    probe.add_argument("--attribution-patching", action="store_true",
                       help="also attribution patching (one forward + backward pass) of every layer × position and "
                            "layer × head, beside exact patching: attribution_patching.csv/png, Pearson r, speed-up")
    probe.add_argument("--logit-lens", action="store_true",
                       help="also the logit lens of every statement (logit_lens.csv/png)")
    probe.add_argument("--multiple-choice", type=_options, default=0, metavar="K",
                       help="also ask a text model the forward and reverse questions as multiple choice with K "
                            "options, 2…4 (multiple_choice.csv; default 0: not asked)")

    compare = commands.add_parser(
        "compare", help="bilinear, one-layer, tiny (and a fine-tuned LLM) side by side, same probes and metrics")
    compare.add_argument("--out", type=_out_path, required=True, help="output folder (created)")
    compare.add_argument("--finetuned", type=Path, nargs="+", default=None, metavar="FOLDER",
                         help="`revlens finetune-facts` or `revlens probe` output folders (logits.csv, circuits.csv, "
                              "summary.json), one row each (e.g. --mitigation none and identity-bridge side by side)")
    compare.add_argument("--seed", type=_seed, default=0,
                         help="draws the world and initialises and trains the three models (default 0)")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")

    sweep = commands.add_parser(
        "sweep", help="an experiment across seeds and a grid of its own options, on Ray (this machine or a cluster)")
    sweep.add_argument("experiment", nargs="?", choices=tuple(EXPERIMENTS), metavar="EXPERIMENT",
                       help=f"one of {', '.join(EXPERIMENTS)} (or give --file, or rerun OUT's sweep.toml)")
    sweep.add_argument("--out", type=_out_path, required=True,
                       help="sweep folder: sweep.toml, trials/<key=value,...,seed=S>/, aggregate.csv, sweep.png")
    sweep.add_argument("--seeds", default=None, help="seeds: 0-4, 0,3,7 or 0-2,10 (default 0-4, or OUT's sweep's)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="an option of the experiment and its values, e.g. model=one-layer,tiny (repeatable; "
                            "default: none, or OUT's sweep's grid)")
    sweep.add_argument("--file", type=Path, default=None, help="a sweep.toml (experiment, seeds, [grid]) instead")
    sweep.add_argument("--address", default=None,
                       help="a Ray cluster: host:port of its head, ray://host:port (needs ray[client]) or auto "
                            "(default: start Ray on this machine)")
    sweep.add_argument("--workers", type=_positive_int, default=None,
                       help="trials at once (default: CPUs / --threads-per-trial)")
    sweep.add_argument("--threads-per-trial", type=_positive_int, default=None,
                       help="torch threads per trial (default: --threads, else 1)")
    sweep.add_argument("--gpus-per-trial", type=_non_negative_float, default=0.0,
                       help="GPUs per trial, at most 1 (default 0: CPU, or what OUT's sweep reserved; 0.5: two "
                            "trials share a GPU)")
    sweep.add_argument("--retries", type=_non_negative_int, default=3,
                       help="reruns of a trial whose runner died (default 3)")

    report = commands.add_parser("report", help="one self-contained HTML page (figures, tables, views) from run folders")
    report.add_argument("--runs", type=Path, nargs="+", required=True,
                        help="run folders (each with a summary.json), or a folder of them (reproduce all)")
    report.add_argument("--out", type=_out_path, required=True, help="the HTML file to write")
    report.add_argument("--max-rows", type=_positive_int, default=20, help="rows shown per table (default 20)")
    for writer in (*writers, check, finetune, probe, compare):
        writer.add_argument("--force", action="store_true",
                            help="write over a folder holding another kind of run (its files are deleted), or beside "
                                 "files no run wrote (kept; a folder without a manifest that holds files of the kinds "
                                 "a run writes, .json .csv .png checkpoints/ …, is refused even so)")
    _add_threads_option(parser)
    return parser


MAKE_FACTS_OPTIONS = {"reversal": ("seed", "k", "size"), "chain": ("seed", "k", "size"), "in-context": ("seed", "size"),
                      "people": ("seed", "size"), "celebrity": ("data",)}
"""The options each ``make-facts`` world reads; any other one given is refused, never ignored."""


def _make_facts(args: argparse.Namespace) -> int:
    from facts.io import save_jsonl

    ignored = [f"--{name}" for name in ("seed", "k", "size", "data")
               if getattr(args, name) is not None and name not in MAKE_FACTS_OPTIONS[args.world]]
    if ignored:
        raise ValueError(f"make-facts {args.world}: {' and '.join(ignored)} would be ignored (this world reads only "
                         f"{', '.join('--' + o for o in MAKE_FACTS_OPTIONS[args.world])}); leave "
                         f"{'them' if len(ignored) > 1 else 'it'} out")
    seed = 0 if args.seed is None else args.seed
    if args.world == "celebrity":
        from facts.celebrity import load_celebrity_pairs

        facts = load_celebrity_pairs(args.data)
    elif args.world == "people":
        from facts.language import people_world

        facts = people_world(n_per_group=args.size or 30, seed=seed)
    else:
        from facts.token_worlds import WORLDS

        sizes = {"reversal": "n_pairs", "chain": "n_triples", "in-context": "n_x"}
        kwargs = {"seed": seed} | ({sizes[args.world]: args.size} if args.size else {})
        if args.world != "in-context":
            kwargs["k"] = args.k or 1
        facts = WORLDS[args.world](**kwargs)
    if args.limit is not None:
        facts = facts.first(args.limit)
    form = args.format or ("csv" if args.out.suffix.lower() == ".csv" else "jsonl")
    if form == "berglund" and args.world != "people":
        raise ValueError(f"make-facts {args.world} --format berglund: Berglund et al.'s layout states people "
                         f"facts (name, description); use make-facts people")
    if args.out.is_dir() and form != "berglund":
        raise ValueError(f"--out {args.out}: is a folder; give the JSONL file to write, e.g. {args.out / 'facts.jsonl'}")
    if form != "berglund" and (form == "csv") != (args.out.suffix.lower() == ".csv"):
        raise ValueError(f"--out {args.out} with --format {form}: readers tell a fact file's format by its name (.csv "
                         f"is read as CSV, any other as JSONL), so this file would be read as the other; name it "
                         f"{args.out.with_suffix('.csv' if form == 'csv' else '.jsonl').name}")
    from analyses.runfolder import MANIFEST, is_inside_run

    if is_inside_run(args.out):
        raise ValueError(f"--out {args.out}: inside the run folder {is_inside_run(args.out)}, whose files are the run's "
                         f"own; write the facts elsewhere")
    if (args.out / MANIFEST).is_file():
        raise ValueError(f"--out {args.out}: is a run folder (it holds {MANIFEST}), whose files are the run's own; "
                         f"write the facts elsewhere")
    if form == "berglund" and args.out.is_dir() and any(args.out.iterdir()):
        raise ValueError(f"--out {args.out}: a folder that holds files already; a Berglund folder is written into a new "
                         f"or empty folder (a group this world leaves out would keep an older write's files, and "
                         f"finetune-facts --facts would read both)")
    if form == "csv":
        from facts.questions import save_fact_csv

        save_fact_csv(facts, args.out)
    elif form == "berglund":
        from facts.berglund import save_experiment_folder
        from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES

        save_experiment_folder(facts, args.out, TRAIN_TEMPLATES, TEST_TEMPLATES)
    else:
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


def _options(text: str) -> int:
    """Multiple-choice options K: 0 (not asked) or 2…4."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"options are 0 (none) or 2…4, got {text!r}") from None
    if value != 0 and not 2 <= value <= 4:
        raise argparse.ArgumentTypeError(f"options are 0 (none) or 2…4, got {value}")
    return value


def _finetune_facts(args: argparse.Namespace) -> int:
    from analyses.finetune import finetune_facts, format_summary

    config = EXPERIMENTS["finetune-facts"].settings(args)
    summary = finetune_facts(args.out, config, progress=not args.quiet)
    print(format_summary(summary))
    print(f"wrote {args.out}/: summary.json questions.csv logits.csv in_context.csv before_*.csv "
          + ("circuits.csv facts.jsonl " if "effective_weights" in summary else "")
          + ("multiple_choice.csv " if "multiple_choice" in summary else "") + "history.jsonl finetune.png"
          + "".join(f" {name}" for name in summary.get("tracing", {}).get("figures", ())))
    return 0


def _checkpoint_meta(model: Path) -> dict | None:
    """The metadata of the checkpoint ``probe --model`` will load (a ``step-N.json``, or the latest in a
    folder), read without its weights; None where it cannot be read (the load then says why)."""
    import json

    from models.checkpoint import list_checkpoints

    path = model if model.is_file() else (list_checkpoints(model) or [None])[-1]
    try:
        meta = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _declared_layers(model: str) -> int | None:
    """The layer count a pretrained model declares (:func:`models.pretrained.declared_config`: a folder's
    ``config.json`` or a GGUF's metadata, without its weights); None where it declares none."""
    from models.pretrained import declared_config

    config = declared_config(model)
    layers = getattr(config.get_text_config(), "num_hidden_layers", None) if config is not None else None
    return layers if isinstance(layers, int) and layers > 0 else None


def _check_probe_facts(facts_path: Path, n_controls: int, checkpoint: bool, templates_file: Path | None = None,
                       limit: int | None = None, world_sha256: str | None = None, multiple_choice: int = 0,
                       model: str = "", tracing_facts: int | None = None) -> None:
    """Read the facts as ``probe`` will (:func:`facts.sources.read_fact_source`; the first ``limit``) and
    refuse, before a model loads, ``--controls`` above the wrong answers of one kind they hold (never capped
    silently), a templates file given with a checkpoint (token worlds have no sentences) and, for a
    checkpoint, a token entity outside the vocabulary (file:line) or facts that are not the world it was
    trained on (``world_sha256`` of its run card, when it has one: other splits would label trained
    statements held out, or the reverse); for a pretrained model, facts without sentences (a CSV or a token world
    with no templates file: :func:`analyses.probe.text_templates`) and a statement its templates cannot render (a
    relation the templates file lacks, named by file:line); ``--multiple-choice`` questions that cannot be asked
    (:func:`analyses.probe.multiple_choice_questions`); and ``--tracing-facts`` above the facts read."""
    from facts.io import facts_sha256
    from facts.language import wrong_answers
    from facts.schema import FactError
    from facts.sources import read_fact_source
    from facts.token_worlds import TokenVocab

    if checkpoint and templates_file is not None:
        raise ValueError(f"--templates-file {templates_file}: a checkpoint reads token ids, not sentences; leave it out")
    source = read_fact_source(facts_path, templates_file)
    facts, where = source.facts, source.where

    if checkpoint and facts.world not in ("people", "celebrity"):
        vocab = TokenVocab()
        for index, fact in enumerate(facts):
            try:
                vocab.entity_ids(fact.subject), vocab.entity_ids(fact.object)
            except FactError as error:
                raise FactError(f"{where(index)}: {error}") from None
    if checkpoint and world_sha256 is not None and facts_sha256(facts) != world_sha256:
        raise ValueError(f"--facts {facts_path}: not the facts the checkpoint was trained on (its run card's world "
                         f"differs), so their trained/held-out splits would mislabel what the model saw; give the "
                         f"run's own facts.jsonl (--limit N for its first N facts)")
    total = len(facts)
    if limit is not None:
        facts = facts.first(limit)
    limited = len(facts) < total
    which, verb = (f"the first {len(facts)} facts of {facts_path} (--limit {limit})", "hold") if limited else \
        (facts_path, "holds")  # what a refusal below says the facts are
    if tracing_facts is not None and tracing_facts > len(facts):
        raise ValueError(f"--tracing-facts {tracing_facts}: {which} {verb} only {len(facts)} facts; use "
                         f"--tracing-facts {len(facts)} or fewer")
    if not checkpoint:  # a pretrained model reads them in sentences: every statement rendered as probe will render it
        from analyses.probe import text_templates
        from facts.language import render_statement

        templates = text_templates(model, facts, source.sentence_templates(None))  # facts without sentences refused
        for index, direction, _ in facts.statements():
            try:
                render_statement(facts, index, direction, templates)
            except FactError as error:
                fix = f"; add a train template of that relation to --templates-file {templates_file}" \
                    if templates_file is not None else ""
                raise FactError(f"{where(index)}: {error}{fix}") from None
    available = min(map(len, wrong_answers(facts, [(i, d) for i, d, _ in facts.statements()])))
    if n_controls > available:
        fixes = ([f"use --controls {available} or fewer"] if available > 0 else []) + (
            ["give a larger --limit"] if limited else [])
        raise ValueError(f"--controls {n_controls}: {which} {verb} only {available} wrong answers of one kind "
                         f"per question; {', or '.join(fixes) or 'give more facts'}")
    if multiple_choice:
        from analyses.probe import multiple_choice_questions

        multiple_choice_questions(source, facts, multiple_choice, checkpoint, model)


def _probe(args: argparse.Namespace) -> int:
    from analyses.probe import format_probe, probe

    summary = probe(args.model, args.facts, args.out, device=args.device, n_controls=args.controls,
                    backend=args.backend or "hooked", patch_layers=args.patch_layers, limit=args.limit,
                    templates_file=args.templates_file,
                    tracing={"n_facts": args.tracing_facts or 4, "n_samples": args.tracing_samples or 3}
                    if args.tracing else None,
                    head_patching=args.head_patching, attribution_patching=args.attribution_patching,
                    lens=args.logit_lens, multiple_choice=args.multiple_choice, seed=args.seed)
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


def _sweep(args: argparse.Namespace) -> int:
    from analyses import sweep as sweeps

    threads = args.threads_per_trial or args.threads or 1  # torch runs only in the trials: --threads is theirs
    if args.threads is not None and args.threads_per_trial is not None and args.threads != args.threads_per_trial:
        raise sweeps.SweepError(f"--threads {args.threads} and --threads-per-trial {args.threads_per_trial}: a sweep's "
                                f"torch runs only in its trials, so both name their threads; give one")
    if args.file is not None and (args.experiment or args.seeds is not None or args.grid):
        raise sweeps.SweepError("give the sweep either as --file or as EXPERIMENT --seeds --grid, not both")
    if args.file is not None:
        sweep = sweeps.read_sweep_file(args.file)
    else:  # what is left out is OUT's own sweep's, where it holds one
        sweep = sweeps.sweep_for(args.out, args.experiment, args.seeds, args.grid)
    resources = sweeps.reserved(sweep, sweeps.Resources(address=args.address, workers=args.workers, threads=threads,
                                                        gpus=args.gpus_per_trial, retries=args.retries))
    sweeps.check_resources(resources)
    _check_grid_points(sweep, on_cluster=args.address is not None)
    if args.address:
        sweeps.check_address(args.address)
    sweeps.check_devices(sweep, resources)  # where a point's device is a node's CUDA (a cluster, or this machine's)
    summary = sweeps.run_sweep(sweeps.with_resources(sweep, resources), args.out, resources)
    print(sweeps.format_sweep(summary))
    print(f"\nwrote {args.out}/: sweep.toml trials/ aggregate.csv {' '.join(summary['figures'])} summary.json "
          f"({summary['seconds']:.0f} s)")
    if summary["n_failed"]:
        raise RuntimeError(f"{summary['n_failed']} of {summary['n_trials']} trials failed ({args.out / sweeps.FAILURES}); "
                           f"the aggregate holds the {summary['n_finished']} that finished; rerun the same command to "
                           f"retry the others")
    return 0


def _check_grid_points(sweep: Sweep, on_cluster: bool) -> None:
    """Check each grid point's command as the command checks its own (:func:`_check_inputs`, at the sweep's
    first seed) before Ray starts or the sweep folder is touched, so a value that every trial of its point
    would refuse (``--grid k=50``: sentences too long for the model) is refused once, naming the point. On a
    cluster (``--address``) the trials' device is the nodes', so ``--device`` is left to them."""
    from analyses.sweep import SweepError, Trial

    parser = build_parser()
    experiment = EXPERIMENTS[sweep.experiment]
    for point in sweep.points():
        where = ", ".join(f"{key}={value}" for key, value in point) or "the defaults"
        count = experiment.seeds_per_run(dict(point))
        try:  # a trial of seed S trains seeds S·count … S·count + count − 1 (Trial.argv)
            _check_seed_range(max(sweep.seeds) * count, count, experiment.seeds_option)
        except ValueError as error:
            raise SweepError(f"--grid {where}: the sweep's last seed, {max(sweep.seeds)}: {error}") from None
        trial = Trial(point, sweep.seeds[0])
        args = parser.parse_args(trial.argv(sweep.experiment, Path("trial"), 1))
        if on_cluster and getattr(args, "device", None):
            args.device = None
        try:
            _check_inputs(args)
        except (ValueError, OSError) as error:
            raise SweepError(f"--grid {where}: {_message(error)}") from None


def _reproduce_all_seeds(args: argparse.Namespace) -> int:
    """``reproduce all --seeds N``: every experiment as a sweep over seeds 0 … N−1 (one Ray session)."""
    from analyses import runfolder
    from analyses import sweep as sweeps

    if args.seed != 0:
        raise ValueError("--seed with --seeds: give one (--seeds N runs seeds 0 … N−1)")
    if len(args.finetuned) > 1:
        raise ValueError("--finetuned with --seeds: give one folder (it joins every seed's mitigations table)")
    resources = sweeps.Resources(workers=args.workers, threads=args.threads or 1)
    sweeps.check_resources(resources, ("--workers", "--threads"))
    plans = {name: sweeps.make_sweep(name, f"0-{args.seeds - 1}", [], {"finetuned": args.finetuned[0].absolute()}
                                     if name == "mitigations" and args.finetuned else None)
             for name in args.experiments or REPRODUCE_ALL}
    for name, plan in plans.items():  # before Ray starts: a folder holding another sweep is refused
        sweeps.check_folder(plan, args.out / name)
    failed = []
    with runfolder.locked(args.out, parent=True), sweeps.ray_session(resources) as runners:
        for name, plan in plans.items():
            summary = sweeps.run_sweep(plan, args.out / name, resources, log=lambda line: None, runners=runners)
            print(f"\n=== {name} ({args.out / name})\n{sweeps.format_sweep(summary)}", flush=True)
            failed += [f"{name}/{f['trial']}" for f in summary["failures"]]
    if failed:
        raise RuntimeError(f"{len(failed)} trials failed ({', '.join(failed[:4])}; see OUT/<name>/failures.jsonl); "
                           f"rerun the same command to retry them")
    print(f"\n{len(plans)} experiment(s) for seeds 0-{args.seeds - 1}; results in {args.out}/ "
          f"(revlens report --runs {args.out})")
    return 0


def _reproduce_all_on_ray(args: argparse.Namespace, workers: int) -> int:
    """``reproduce all`` with ``workers`` experiments at once, each ``revlens reproduce NAME`` on one
    of ``workers`` runners of ``--threads`` threads (default 1; :class:`analyses.sweep.Runners`, Ray actors),
    the costliest first; each one's text printed as it finishes."""
    import json
    import time

    from analyses import runfolder
    from analyses import sweep as sweeps

    began = time.perf_counter()
    resources = sweeps.Resources(workers=workers, threads=args.threads or 1)
    sweeps.check_resources(resources, ("--workers", "--threads"))
    jobs, out = [], args.out.absolute()  # a runner may run in another folder, or on another node
    for name in sorted(args.experiments or REPRODUCE_ALL, key=lambda name: -EXPERIMENTS[name].cpu_seconds):
        argv = ["reproduce", name, "--out", str(out / name), "--seed", str(args.seed), "--quiet",
                "--threads", str(resources.threads), *(["--force"] if args.force else []),
                *(["--finetuned", *(str(Path(f).absolute()) for f in args.finetuned)]
                  if name == "mitigations" and args.finetuned else [])]
        jobs.append((name, argv, out / name, False))
    failed = []
    with runfolder.locked(args.out, parent=True), sweeps.ray_session(resources) as runners:
        sweeps.meanwhile(lambda: [EXPERIMENTS[name].formatter_module() for name, *_ in jobs])  # printed as each ends
        for name, result in runners.run(jobs, args.out / sweeps.RUNNING):
            if result["exit_code"] != 0:
                failed.append(f"{name}: {' '.join(result.get('error') or ['no error message'])}")
                print(f"\n=== {name} FAILED: {failed[-1]}", flush=True)
                continue
            summary = json.loads((args.out / name / "summary.json").read_text(encoding="utf-8"))
            print(f"\n=== {name} ({args.out / name}; {result['seconds']:.0f} s)\n{EXPERIMENTS[name].format(summary)}",
                  flush=True)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} experiments failed ({'; '.join(failed)}); the others are in "
                           f"{args.out}/")
    print(f"\nall {len(jobs)} experiments in {time.perf_counter() - began:.0f} s ({runners.workers} at once); results in "
          f"{args.out}/")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    """``reproduce EXPERIMENT`` into --out, or ``reproduce all``: each experiment into OUT/<name>/
    (several at once on Ray unless ``--workers 1`` or one core)."""
    import contextlib
    import time

    from analyses import runfolder

    if getattr(args, "seeds", None):
        return _reproduce_all_seeds(args)
    if args.experiment == "all":
        each = args.threads or 1  # threads a runner
        workers = min(args.workers or max(1, (os.cpu_count() or 1) // each), len(args.experiments or REPRODUCE_ALL))
        if workers > 1:
            return _reproduce_all_on_ray(args, workers)
    chosen = list(args.experiments or REPRODUCE_ALL) if args.experiment == "all" else [args.experiment]
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.experiment == "all":
            stack.enter_context(runfolder.locked(args.out, parent=True))
        for name in chosen:
            out = args.out / name if args.experiment == "all" else args.out
            experiment = EXPERIMENTS[name]
            with _run_folder(args, out, f"reproduce {name}", name):
                _set_threads(args.threads)
                summary = experiment.run(out, args, not args.quiet)
            if len(chosen) > 1:
                print(f"\n=== {name} ({out})")
            print(experiment.format(summary))
    if len(chosen) > 1:
        print(f"\nall {len(chosen)} experiments in {time.perf_counter() - began:.0f} s; results in {args.out}/")
    elif args.experiment == "reversal":
        print(f"\nwrote {args.out}/: summary.json history.jsonl logits.csv facts.jsonl curves.png heatmap.png "
              f"checkpoints/")
    elif args.experiment == "bilinear":
        print(f"\nwrote {args.out}/: summary.json history-d*.jsonl loss_ratios.png theta_asymmetry.png scores.png "
              f"({summary['seconds']:.1f} s)")
    return 0


def _inputs(args: argparse.Namespace, experiment: str | None = None) -> dict[str, object]:
    """The files and run folders a command reads, for its manifest (``reproduce all``'s ``experiment``: that one
    experiment's; only mitigations reads ``--finetuned``)."""
    names = {"probe": ("model", "facts", "templates_file"), "check-asymmetry": ("model", "data"),
             "finetune-facts": ("model", "facts", "templates_file")}.get(args.command, ())
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.command == "check-asymmetry":  # the CSV it reads, given or not ($REVLENS_CELEBRITY_CSV, the package's)
        from facts.celebrity import celebrity_csv_path

        given["data"] = celebrity_csv_path(args.data)
    listed = args.command == "compare" or (args.command == "reproduce" and experiment in (None, "mitigations"))
    for index, folder in enumerate(getattr(args, "finetuned", None) or [] if listed else []):
        given[f"finetuned[{index}]"] = folder
    return given


def recorded_config(args: argparse.Namespace, experiment: str | None = None) -> dict[str, Any]:
    """What a run's manifest records of its command line: the options as given (an option left out is None), and
    for an experiment (``experiment``, by default the command's own) the settings they make, every default filled in
    (``settings``: :attr:`analyses.experiments.Experiment.settings`), which a later revlens may change. A sweep counts
    a trial finished only when its manifest records what the trial's command line makes now
    (:func:`analyses.sweep.finished`), so a run under other defaults is run again."""
    config = {k: v for k, v in vars(args).items() if k not in ("quiet", "debug", "force", "argv")}
    name = experiment or (args.command if args.command != "reproduce" else args.experiment)
    if name in EXPERIMENTS:
        config["settings"] = recorded_settings(EXPERIMENTS[name].settings(args))
    return config


def _run_folder(args: argparse.Namespace, out: Path, kind: str, experiment: str | None = None):
    """:func:`analyses.runfolder.run_folder` for this command's ``out`` (one of ``reproduce all``'s: ``experiment``'s)."""
    from analyses.runfolder import run_folder

    return run_folder(out, kind, config=lambda: recorded_config(args, experiment), inputs=_inputs(args, experiment),
                      force=args.force,
                      resume=bool(getattr(args, "resume", False)), command=shlex.join(["revlens", *args.argv]))


def _check_seed_range(first: int, count: int, option: str) -> None:
    """Refuse a run of ``count`` consecutive seeds from ``first`` that passes the largest seed."""
    from analyses.experiments import MAX_SEED

    if first + count - 1 > MAX_SEED:
        raise ValueError(f"--seed {first} with {option} {count} trains seeds up to {first + count - 1}, past the "
                         f"largest seed, {MAX_SEED}")


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuse, before anything loads and before the output folder is touched (entering it marks the old
    manifest unfinished and deletes the old run's files), the run folders a command reads that are not one
    whole run, a device this machine lacks, and every argument or input that would fail later: the facts,
    templates and celebrity CSV read whole, ``--controls`` above what they hold (after ``--limit``),
    ``--pairs``/``--k`` a reversal run cannot train, ``--trainable-blocks``/``--lora-targets``/``--patch-layers``
    against the layers a model's files declare, facts other than a checkpoint's trained world."""
    from analyses.runfolder import check_run, find_run_root, is_inside_run

    if args.command in ("check-asymmetry", "finetune-facts", "probe"):
        from models.pretrained import check_convertible, check_tokenizer
    if args.command == "reproduce" and args.experiment == "all":
        if args.finetuned and "mitigations" not in (args.experiments or REPRODUCE_ALL):
            raise ValueError("--finetuned: its rows join the mitigations table, and --experiments leaves mitigations "
                             "out, so it would be ignored; add mitigations to --experiments, or leave --finetuned out")
        if getattr(args, "seeds", None) and args.force:
            raise ValueError("--force with --seeds: each experiment runs as a sweep, which reruns only the trials "
                             "not finished and never writes over another kind of run, so it would be ignored; "
                             "leave it out")
    finetuned = getattr(args, "finetuned", None)
    if finetuned:
        from analyses.compare import finetuned_folders

        finetuned = finetuned_folders(finetuned)  # a folder given twice would be two identical rows
    for folder in finetuned or []:
        check_run(folder, "the --finetuned folder", inputs=True)
        if args.command == "compare":
            from analyses.compare import read_probe_run

            read_probe_run(folder)  # its files read and checked before the output folder is touched
        else:
            from analyses.mitigations import finetuned_rows

            finetuned_rows(folder)
    experiment = EXPERIMENTS.get(getattr(args, "experiment", "")) if args.command == "reproduce" else None
    if experiment is not None and experiment.seeds_option:
        _check_seed_range(args.seed, experiment.seeds_per_run(vars(args)), experiment.seeds_option)
    if args.command == "check-asymmetry":
        from analyses.asymmetry import check_inputs

        check_inputs(args.data, args.limit, args.controls, args.seed)  # the CSV and its controls, before the folder
        check_convertible(args.model, args.backend)  # a config the backend would compute otherwise
        check_tokenizer(args.model)  # a folder's tokenizer missing or damaged
    if args.command == "finetune-facts":
        from analyses.finetune import check_model_options, check_tokenised, draw_controls, read_questions

        if args.facts is not None and args.people is not None:
            raise ValueError(f"--people with --facts: --people sizes the built-in people world, so it would be "
                             f"ignored ({args.facts} holds the facts); leave it out")
        config = EXPERIMENTS["finetune-facts"].settings(args)
        questions = read_questions(config)  # the facts and templates, read whole before the folder is touched
        controls = draw_controls(questions, config.n_controls, config.seed)  # --controls above what the facts hold
        check_model_options(config)  # --trainable-blocks, --lora-targets against the model's config.json
        if config.tracing_facts:  # more facts asked for than tracing reads would be traced fewer, unsaid
            from analyses.finetune_tracing import traceable_facts

            available = len(traceable_facts(questions.facts)) if questions.facts is not None else 0
            if config.tracing_facts > available:
                held = args.facts or "the built-in people world (--people)"
                fix = f"use --tracing-facts {available} or fewer" if available else "leave --tracing-facts out"
                raise ValueError(f"--tracing-facts {config.tracing_facts}: {held} holds {available} fact(s) trained "
                                 f"forward with the reverse held out, the facts tracing reads; {fix}")
        check_convertible(config.model, advice="finetune-facts asks and traces the trained model as a "
                                 "HookedTransformer, so under TransformerLens 3.9 it cannot fine-tune this model "
                                 "(under 4.x, whose 'hooked' is the bridge, it can)")
        check_tokenised(config, questions, controls)  # a sentence whose answer boundary the tokenizer merges
    listed = [(option.flag, getattr(args, option.flag.lstrip("-").replace("-", "_"), None))
              for option in (experiment.options if experiment is not None else ()) if option.kwargs.get("nargs") == "+"]
    if args.command == "reproduce" and args.experiment == "all":
        listed.append(("--experiments", args.experiments))
    if args.command == "probe":
        listed.append(("--patch-layers", args.patch_layers))
        ignored = [flag for flag, value in (("--tracing-facts", args.tracing_facts),
                                            ("--tracing-samples", args.tracing_samples)) if value is not None]
        if ignored and not args.tracing:
            raise ValueError(f"{' and '.join(ignored)} without --tracing: nothing is traced, so it would be ignored; "
                             f"add --tracing, or leave it out")
    for flag, values in listed:  # a value listed twice would be one run written twice (--dims 64 64)
        repeated = sorted({str(value) for value in values or () if values.count(value) > 1})
        if repeated:
            raise ValueError(f"{flag} {' '.join(map(str, values))}: {', '.join(repeated)} given more than once; give "
                             f"each value once")
    if experiment is not None and experiment.check is not None:
        experiment.check(args)  # e.g. reversal's --pairs, --k: what would fail only after training
    if args.command == "probe" and Path(args.model).exists():
        # first, the run that holds it, however deep (identity-bridge's RUN/one-layer/baseline/seed-0/checkpoints): a
        # failed run's checkpoints may be gone, and its token facts would be refused as facts without sentences
        root = find_run_root(args.model, levels=0) or is_inside_run(args.model)
        if root is not None:
            check_run(root, "the run folder of --model")
    if args.command == "probe":
        model = Path(args.model)
        checkpoint = (model.is_dir() and any(model.glob("step-*.json"))) or (
            model.is_file() and model.name.startswith("step-") and model.suffix == ".json")
        card = _checkpoint_meta(model) if checkpoint else None
        _check_probe_facts(args.facts, args.controls, checkpoint, args.templates_file, args.limit,
                           None if card is None else (card.get("run") or {}).get("world_sha256"),
                           args.multiple_choice or 0, args.model, args.tracing_facts if args.tracing else None)
        if checkpoint and args.backend is not None:  # it would be recorded, and do nothing
            raise ValueError(f"--backend {args.backend}: {args.model} is a checkpoint, which loads as the model it was "
                             "trained as (a HookedTransformer under TransformerLens 3.9, a bridge under 4.x); --backend "
                             "chooses the wrapper of a pretrained model; leave it out")
        if not checkpoint:
            check_convertible(args.model, args.backend or "hooked")  # a config the backend would compute otherwise
            check_tokenizer(args.model)  # a folder's tokenizer missing or damaged
        from models.backend import bridge_starts_at_layer

        if args.tracing and args.backend == "bridge" and not checkpoint and not bridge_starts_at_layer():
            raise ValueError("--tracing runs on --backend hooked only under TransformerLens 3.9: it restarts the "
                             "forward pass at a layer, which 3.9's bridge cannot (4.x's bridges can, on either "
                             "backend)")
        if args.patch_layers is not None:
            n_layers = (((card or {}).get("model") or {}).get("spec") or {}).get("n_layers") if checkpoint \
                else _declared_layers(args.model)
            for layer in args.patch_layers:
                if layer < 0 or (isinstance(n_layers, int) and layer >= n_layers):
                    known = f"this model has layers 0…{n_layers - 1}" if isinstance(n_layers, int) else \
                        "layers count from 0"
                    raise ValueError(f"--patch-layers {layer}: out of range; {known}")
    if getattr(args, "device", None):
        _check_device(args.device)


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r}: not a device torch knows ({error}); use cpu or cuda") from None
    if device.type == "meta":
        raise ValueError(f"--device {name}: a meta tensor holds no values, so no number could be computed; "
                         f"use --device cpu")
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available,
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()}
    if not available.get(device.type, lambda: False)():  # a kind this project does not run on is refused too
        raise ValueError(f"--device {name}: no {device.type} device on this machine (or torch built without it); "
                         f"use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "reproduce":
        return _reproduce(args)
    commands = {"check-asymmetry": _check_asymmetry, "make-facts": _make_facts, "probe": _probe,
                "finetune-facts": _finetune_facts, "report": _report, "compare": _compare, "sweep": _sweep}
    handler = commands[args.command]
    if args.command not in FOLDER_COMMANDS:
        if args.command != "sweep":  # a sweep runs torch only in its Ray workers: no torch import here
            _set_threads(args.threads)
        return handler(args)
    with _run_folder(args, args.out, args.command):
        _set_threads(args.threads)
        return handler(args)


def _os_error(error: OSError) -> str:
    """One line for an operating-system error: the file, what happened and what to do."""
    where = f"{error.filename}: " if error.filename else ""
    what = {errno.EROFS: "read-only file system; choose an --out on a writable disk",
            errno.ENOSPC: "no space left on the disk; free some space or choose another --out, then rerun",
            errno.EDQUOT: "disk quota exceeded; free some space or choose another --out, then rerun",
            errno.EACCES: "permission denied; choose a path you may write (or read)",
            errno.EPERM: "operation not permitted; choose a path you may write (or read)",
            errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
            errno.EEXIST: "a file is in the way of a folder to be made there; choose another path",
            errno.EISDIR: "is a folder; give a file",
            errno.ENOENT: "no such file or folder",
            errno.ELOOP: "too many symbolic links (a link loop?)",
            errno.ENAMETOOLONG: "file name too long"}.get(error.errno, error.strerror or str(error))
    return f"{where}{what}"


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
    """Set torch's intra-op and inter-op thread counts before any work runs (None: the default).

    Called once the inputs are checked and the output folder is held, right before the work: a
    refusal of the folder (another process writes it, a read-only disk) or of a token-world run's
    options answers without the ~2 s torch import. (The pretrained-model commands' input checks,
    ``check-asymmetry``, ``finetune-facts`` and ``probe``, read the facts through modules that import
    torch and TransformerLens, and the model's config and tokenizer through transformers: their
    refusals take 5–7 s.) Sweeps and ``reproduce all`` on Ray never call it (torch runs only in
    their workers, each given ``--threads``)."""
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
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints as \xNN, never crashes a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    args.argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        _check_inputs(args)
        return _dispatch(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        resume = " with --resume" if args.command == "reproduce" and args.experiment == "reversal" else ""
        print(f"revlens: interrupted; rerun the same command{resume} to finish it (a run stopped once it had "
              f"written is marked unfinished in its folder's manifest, one stopped before left as it was)",
              file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        print(f"revlens: error: {_message(error)}", file=sys.stderr)
        return 2


def _message(error: Exception) -> str:
    """The one line of an error: ours name file and fix; others get their type and --debug."""
    if isinstance(error, OSError):
        return _os_error(error)
    if isinstance(error, MemoryError):
        return "out of memory; try a smaller --batch-size or model"
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (ValueError, RuntimeError)):  # ours subclass these and name the problem
        return text
    return f"{type(error).__name__}: {text} (unexpected; rerun with --debug for the traceback and report it)"


def run() -> int:
    """The ``revlens`` program (its console script and ``python -m analyses.cli``): :func:`main`, whose exit code
    it returns, then every object the command left frozen (``gc.freeze``) for the interpreter's exit. Python's
    finalisation runs full garbage collections over every object it still tracks while it tears the modules down:
    ~1.2 s after torch and TransformerLens were imported (their ~3,600 modules), ~0.2 s with them frozen. Nothing is
    skipped that a run needs: its files are closed and its folder's manifest written when :func:`main` returns, and
    the exit handlers (``atexit``: Ray's shutdown, temporary folders' removal) and reference-counted destructors run
    as before; only objects left in reference cycles are no longer collected on the way out. Not in :func:`main`,
    which tests and notebooks call many times in one process that goes on."""
    code = main()
    import gc

    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(run())
