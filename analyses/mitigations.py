"""`revlens reproduce mitigations`: what each remedy buys back on the held-out reverse, and why.

Every variant trains a fresh model on the reversal world (docs/SCIENCE.md §4: 70% of pairs trained
both ways, 30% "one-way" with one direction held out) plus the variant's extra data, and is
measured the same way: on the *baseline's* held-out reverse statements B → A of the one-way
pairs, with :func:`probes.logits.answer_table` (each answer ranked among its own kind, 16 same-kind
controls) and the OV entries Y[A, B] / Y[B, A] of :func:`probes.circuits.circuit_table`,
through :func:`analyses.compare.row_metrics` (the numbers ``revlens compare`` reports).

* ``baseline``: the world as is. Tests: the held-out reverse, plainly ("y ←" → x) and with the
  trained fact restated in the prompt first ("x → y <-> y ←" → x), a model that never saw "<->".
* ``augmentation`` (bidirectional data): every other one-way pair (in world order) is restated
  the other way round, i.e. its held-out reverse statement joins the training data; the rest
  stay one-way. Test "restated pairs (trained)" asks statements that were trained: its accuracy
  is bought *by construction* (memorisation of what was added; reported for the cost in data
  and weights, not as reversal). Test "pairs not restated" asks held-out reverses that were
  never trained while 85% of pairs were trained both ways: does bidirectional data teach the
  model to reverse a new one-way fact? (The paper's baseline already asks this at 70%.)
* ``reverse-training`` (Golovneva et al. 2024): every training sentence also appears reversed,
  entity order swapped and the relation token kept ("x → y" adds "y → x"; for one-token
  entities this is exactly the token-reversed sequence). The held-out statement "y ← x" itself
  is never trained: what is trained is y followed by x under the other relation token. In this
  world the relation token carries no per-fact information, so the test asks whether the model's
  lookup of y ignores it; the OV column shows where the answer comes from (Y[B,A] grows).
* ``in-context`` (restatement in the prompt): the training data add copy sequences in the
  paper's in-context format, "a → b <-> b ← a" (answer a) and "b ← a <-> a → b" (answer b),
  that pair each entity with ``copy_partners`` random *wrong* partners (cyclic shifts of a
  random order, so a true pair never appears and every context names several answers: only
  copying solves them). Test "held-out reverse, fact in prompt" asks each held-out reverse
  after its trained statement; "held-out reverse" asks it plainly. Measured at the defaults,
  copy training alone lifts the plain question above chance (one-layer: accuracy 0.10, margin
  +5, z of Y[B,A] 1.2) although no copy sequence holds a true pair: a side effect, not the
  mitigation, and its mechanism is not probed here. Unlike ``reproduce in-context`` (copying
  learnt alone on a 100 × 10 grid of other tokens), copying is learnt over the world's own
  entities: in a design trial, the paper's grid mixed into the training data taught a copy
  circuit that answered only 28% of these questions (it copies the tokens it learnt to copy).
* ``identity-bridge`` (Ma et al. 2026, arXiv 2602.02470): every entity also trained as its own
  answer under the relation that answers its kind, "x ← x" and "y → y"
  (:func:`identity_statements`); no held-out statement is trained. Measured at the defaults
  (seed 0): held-out reverse accuracy one-layer 0.68, tiny 0.87 (baseline 0), z of Y[B,A] 2.0 and
  0.85: the reverse read from a grown OV entry (``reproduce identity-bridge`` runs it over seeds).

Rows of the table (one per model × variant × test) are :func:`mitigation_row` dicts; a
pretrained model's run joins the same table by calling it on its own (answer, circuit) tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from analyses.reproduce import ReversalConfig, _write_json, train_run, write_csv
from facts.language import answers_of_kind
from facts.schema import Fact, FactError, FactSet
from facts.token_worlds import TokenVocab, reversal_world
from probes.views import save_png

VARIANTS = ("baseline", "augmentation", "reverse-training", "in-context", "identity-bridge")
DEFINITIONS = {
    "baseline": "the reversal world as is",
    "augmentation": "every other one-way pair also trained in its reverse direction; 'restated pairs' asks those "
                    "trained statements (accuracy by construction), 'pairs not restated' asks the never-trained rest",
    "reverse-training": "every training sentence also trained reversed ('x → y' adds 'y → x': the pair the "
                        "held-out 'y ← x' asks, under the other relation token, which in this world names no fact); "
                        "'y ← x' itself is never trained",
    "in-context": "copy sequences 'a → b <-> b ← a' with wrong partners added; the held-out reverse asked "
                  "after its trained statement, and plainly",
    "identity-bridge": "every entity also trained as its own answer under the relation that answers its kind "
                       "('x ← x', 'y → y'; Ma et al. 2026); no held-out statement is trained",
}
"""One line per variant, written into summary.json (the module docstring has the full definitions)."""
FINETUNED_DEFINITIONS = {
    "baseline": "finetune-facts with no mitigation: the built-in people world's groups (p2d: name → description), "
                "or the run's own facts",
    "augmentation": "finetune-facts --mitigation bidirectional: a second group of people trained both ways beside p2d "
                    "('restated pairs (trained)' asks that group's reverse, 'pairs not restated' p2d's)",
    "reverse-training": "finetune-facts --mitigation reverse-training: each training sentence also trained with its "
                        "words reversed, every name and description kept whole",
    "identity-bridge": "finetune-facts --mitigation identity-bridge: each p2d name also trained as its own answer "
                       "('The name of X is X'), not every entity",
}
"""What a fine-tuned row of a variant trained, which is not the token world's data of that name."""


@dataclass(frozen=True)
class Test:
    """Which held-out reverse statements a row asks (world fact indices) and how."""

    facts: tuple[int, ...]
    trained: bool = False  # the tested statements themselves are in this variant's training data
    fact_in_prompt: bool = False  # asked after the trained statement, "x → y <-> y ←"


@dataclass(frozen=True)
class Variant:
    """A variant's training data (its "train" statements) and its tests, by name."""

    name: str
    training: FactSet
    tests: dict[str, Test]


@dataclass(frozen=True)
class MitigationConfig:
    """Models, the reversal run each variant trains (``model`` replaced per model), copy partners."""

    models: tuple[str, ...] = ("one-layer", "tiny")
    run: ReversalConfig = field(default_factory=lambda: ReversalConfig(eval_every=10))
    variants: tuple[str, ...] = VARIANTS
    copy_partners: int = 3

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown mitigation variant(s) {unknown}; choose from {VARIANTS}")
        if not 1 <= self.copy_partners < self.run.n_pairs:
            raise ValueError(f"copy_partners must be in 1…{self.run.n_pairs - 1} (pairs − 1), "
                             f"got {self.copy_partners}")


def one_way_facts(world: FactSet) -> list[int]:
    """Indices of the facts with one direction trained and the other held out."""
    return [i for i, f in enumerate(world) if {f.forward, f.reverse} == {"train", "heldout"}]


def reversed_statements(world: FactSet) -> tuple[Fact, ...]:
    """Every trained statement "g r a" as "a r g": entity order reversed, relation token kept."""
    return tuple(
        Fact(answer, relation, given, group="reversed")
        for i, d, split in world.statements() if split == "train"
        for given, relation, answer in [world[i].given_and_answer(d)]
    )


def copy_facts(world: FactSet, partners: int, seed: int) -> tuple[Fact, ...]:
    """In-context copy sequences over the world's entities with wrong partners (module docstring).

    For a random order π of the facts and ``partners`` distinct shifts s ∈ 1…n−1, subject of
    π(p) meets object of π(p + s mod n): never its own partner; each entity is the answer
    ``partners`` times, each time after a different given entity.
    """
    n = len(world)
    if not 1 <= partners < n:
        raise FactError(f"copy sequences need 1 ≤ partners < {n} facts, got {partners}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    shifts = (torch.randperm(n - 1, generator=generator)[:partners] + 1).tolist()
    facts = []
    for shift in shifts:
        for position in range(n):
            a, b = world[order[position]], world[order[(position + shift) % n]]
            facts.append(Fact(a.subject, a.relation, b.object, a.inverse_relation, forward=None, reverse="train",
                              group="copy", context=True))
            facts.append(Fact(b.object, b.inverse_relation, a.subject, b.relation, forward=None, reverse="train",
                              group="copy", context=True))
    return tuple(facts)


def identity_statements(world: FactSet) -> tuple[Fact, ...]:
    """The Identity Bridge (Ma et al. 2026, arXiv 2602.02470): "A r⁻ A" for every entity A.

    r⁻ is the relation whose statements answer A's kind: a subject x is the answer of "y ← x",
    so "x ← x"; an object y the answer of "x → y", so "y → y". The held-out reverse "y ← ?" asks
    for a subject under ←, and the bridge trains exactly that relation to answer with a subject,
    the entity itself: in a one-layer model the cheapest (lowest-norm) weights that fit both the
    facts and the bridge put x and y in one OV direction and let the relation token pick the kind,
    so Y[y, x] grows with Y[x, y] (module docstring of :mod:`analyses.identity_bridge`).
    """
    subjects = dict.fromkeys(f.subject for f in world)
    objects = dict.fromkeys(f.object for f in world)
    relation = {f.subject: f.inverse_relation for f in world} | {f.object: f.relation for f in world}
    return tuple(Fact(e, relation[e], e, group="identity") for e in (*subjects, *objects))


def make_variant(name: str, world: FactSet, copy_partners: int = 3, seed: int = 0) -> Variant:
    """The training data and tests of one variant (definitions in the module docstring)."""
    one_way = one_way_facts(world)
    plain, in_prompt = Test(tuple(one_way)), Test(tuple(one_way), fact_in_prompt=True)
    if name == "baseline":
        return Variant(name, world, {"held-out reverse": plain, "held-out reverse, fact in prompt": in_prompt})
    if name == "augmentation":
        restated = set(one_way[::2])
        facts = tuple(replace(f, forward="train", reverse="train", group="restated") if i in restated else f
                      for i, f in enumerate(world))
        return Variant(name, FactSet(facts, world=f"{world.world} + restated", meta=world.meta), {
            "restated pairs (trained)": Test(tuple(sorted(restated)), trained=True),
            "pairs not restated": Test(tuple(i for i in one_way if i not in restated))})
    if name == "reverse-training":
        training = FactSet(world.facts + reversed_statements(world), world=f"{world.world} + reversed", meta=world.meta)
        return Variant(name, training, {"held-out reverse": plain})
    if name == "in-context":
        training = FactSet(world.facts + copy_facts(world, copy_partners, seed), world=f"{world.world} + copy",
                           meta=world.meta)
        return Variant(name, training, {"held-out reverse": plain, "held-out reverse, fact in prompt": in_prompt})
    if name == "identity-bridge":
        training = FactSet(world.facts + identity_statements(world), world=f"{world.world} + identity bridge",
                           meta=world.meta)
        return Variant(name, training, {"held-out reverse": plain})
    raise ValueError(f"unknown mitigation variant {name!r}; choose from {VARIANTS}")


def fact_in_prompt_table(model, world: FactSet, indices: Sequence[int], vocab: TokenVocab,
                         n_controls: int = 16, seed: int = 0) -> pd.DataFrame:
    """:func:`answer_table` of each fact's held-out direction asked after its trained statement.

    "x → y <-> y ←" → x when x → y was trained, "y ← x <-> x →" → y when y ← x was; each
    orientation is its own fact set; candidates are the world's entities of the answer's kind (its subjects where
    x → y was trained, its objects where y ← x was) and each statement's controls those
    :func:`answer_table` draws for it in the whole world (``n_controls``, ``seed``), as for the plain question, so
    the two margins differ by the prompt alone (the fact sets' own controls were the other one-way facts' answers
    of that orientation, never answers in training: their margin sat near 0 without any copying). ``fact``: the
    world's index.
    """
    from probes.logits import answer_controls, answer_table

    everything = [(i, d) for i, d, _ in world.statements()]  # what answer_table draws for the world's statements
    by_statement = dict(zip(everything, answer_controls(world, everything, n_controls, seed)))
    drawn = {i: by_statement[i, "reverse" if world[i].forward == "train" else "forward"] for i in indices}
    parts: dict[str, list[tuple[int, Fact]]] = {"forward": [], "reverse": []}
    for i in indices:
        fact = world[i]
        if fact.forward == "train":
            parts["forward"].append((i, replace(fact, forward=None, reverse="heldout", context=True)))
        else:
            parts["reverse"].append((i, Fact(fact.object, fact.inverse_relation, fact.subject, fact.relation,
                                             forward=None, reverse="heldout", group=fact.group, context=True)))
    tables = []
    for name, part in parts.items():
        if part:  # ranked among the answer's kind in the world: subjects for a fact trained forward, else objects
            kind = answers_of_kind(world, "reverse" if name == "forward" else "forward")
            table = answer_table(model, FactSet(tuple(f for _, f in part), world="fact in prompt"), vocab,
                                 candidates=kind, controls=[drawn[i] for i, _ in part])
            tables.append(table.assign(fact=[i for i, _ in part]))
    return pd.concat(tables, ignore_index=True)


def mitigation_row(model: str, variant: str, test: str, answers: pd.DataFrame, circuits: pd.DataFrame,
                   tested_trained: bool, n_train_sequences: int) -> dict[str, Any]:
    """One table row: :func:`analyses.compare.row_metrics` of the tested facts' statements.

    ``answers`` holds the tested (held-out) statements and the same facts' trained direction;
    ``circuits`` the same facts' circuit rows. ``heldout_*`` is the test, ``train_*`` the
    trained direction, ``z_heldout`` the OV entry Y[B,A] of the tested direction.
    """
    from analyses.compare import row_metrics

    return {"model": model, "variant": variant, "test": test, "tested_trained": tested_trained,
            "n_train_sequences": n_train_sequences, **row_metrics(answers, circuits)}


FINETUNED_VARIANTS = {"none": "baseline", "bidirectional": "augmentation", "reverse-training": "reverse-training",
                      "identity-bridge": "identity-bridge"}
"""A ``revlens finetune-facts --mitigation`` run as the token world's variant of the same idea."""


def finetuned_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``revlens finetune-facts`` folder, as the token world's tests of its variant.

    Its tested group (p2d: name → description trained, description → name held out) gives the
    held-out reverse test, asked plainly (``logits.csv``) and with the fact restated first
    (``in_context.csv``), both read on that group's facts alone; both are asked in every run, so
    "fact in prompt" rows come with each variant. With ``--mitigation bidirectional``, the p2d group
    is "pairs not restated" and the group trained both ways is "restated pairs (trained)": its reverse
    statements are relabelled held out for the row, as the token world's restated pairs are (accuracy
    by construction). Rows are named by :func:`analyses.compare.finetuned_label` (the model, its
    mitigation and groups), as ``revlens compare`` names the run. A folder that is not a finished
    ``finetune-facts`` run, or has no statement of the tested group, is refused (:class:`RunDirError`).
    """
    from analyses.compare import RunDirError, finetuned_label, read_probe_run
    from analyses.finetune import TESTED

    run_dir = Path(run_dir)
    model, answers, circuits = read_probe_run(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = summary.get("config") or {}
    mitigation = config.get("mitigation", "none")
    if summary.get("experiment") != "finetune-facts" or mitigation not in FINETUNED_VARIANTS:
        raise RunDirError(f"{run_dir}: not a `revlens finetune-facts` folder (its summary.json names experiment "
                          f"{summary.get('experiment')!r}, mitigation {mitigation!r})")
    if not (run_dir / "in_context.csv").is_file():
        raise RunDirError(f"{run_dir}: missing in_context.csv (a finished `revlens finetune-facts` folder has it)")
    restated = pd.read_csv(run_dir / "in_context.csv")
    for table, file in ((answers, "logits.csv"), (circuits, "circuits.csv"), (restated, "in_context.csv")):
        if "group" not in table.columns:
            raise RunDirError(f"{run_dir / file}: missing column 'group' (which fact group each row is)")
    _require_tested_group(run_dir, answers, TESTED)
    variant = FINETUNED_VARIANTS[mitigation]
    name = finetuned_label(model, config)
    # the group trained both ways, asked as the token world's restated pairs: reverse relabelled held out
    answers = answers.assign(split=answers.split.where((answers.group != "both") | (answers.direction == "forward"),
                                                       "heldout"))
    circuits = circuits.assign(reverse=circuits.reverse.where(circuits.group != "both", "heldout"))

    def row(test: str, group: str, asked: pd.DataFrame, trained: bool) -> dict[str, Any]:
        return mitigation_row(name, variant, test, asked, circuits[circuits.group == group], trained,
                              summary["train_sentences"])

    tested = answers[answers.group == TESTED]
    rows = [row("pairs not restated" if variant == "augmentation" else "held-out reverse", TESTED, tested, False),
            row("held-out reverse, fact in prompt", TESTED,
                pd.concat([tested[tested.split == "train"], restated[restated.group == TESTED]], ignore_index=True),
                False)]
    if variant == "augmentation" and (answers.group == "both").any():
        rows.insert(0, row("restated pairs (trained)", "both", answers[answers.group == "both"], True))
    return [{**r, "source": str(run_dir)} for r in rows]  # read, not measured: a sweep leaves them out


def _require_tested_group(run_dir: Path, answers: pd.DataFrame, tested: str) -> None:
    """Refuse a fine-tuned run whose ``logits.csv`` holds no statement of the ``tested`` group: its held-out
    reverse rows would be empty (n 0, NaN). The message names the folder and the groups it has."""
    from analyses.compare import RunDirError

    if (answers.group == tested).any():
        return
    groups = ", ".join(map(str, dict.fromkeys(answers.group.dropna()))) or "none"
    raise RunDirError(f"{run_dir}: no statement of the tested group {tested!r} (forward trained, reverse held "
                      f"out) in logits.csv, whose held-out reverse the mitigation rows read; its groups: "
                      f"{groups}. Give a `revlens finetune-facts` run that trains {tested!r}")


def measure(model, model_name: str, world: FactSet, variant: Variant, vocab: TokenVocab) -> list[dict[str, Any]]:
    """Every test of ``variant`` on a model trained on its data: one :func:`mitigation_row` each."""
    from probes.circuits import circuit_table
    from probes.logits import answer_table

    answers = answer_table(model, world, vocab)
    circuits = circuit_table(model, world, vocab.entity_ids, kinds=("ov",))
    rows = []
    for name, test in variant.tests.items():
        asked = answers[answers.fact.isin(test.facts)]
        if test.fact_in_prompt:
            asked = pd.concat([asked[asked.split == "train"], fact_in_prompt_table(model, world, test.facts, vocab)],
                              ignore_index=True)
        rows.append(mitigation_row(model_name, variant.name, name, asked, circuits[circuits.fact.isin(test.facts)],
                                   test.trained, variant.training.count("train")))
    return rows


def reproduce_mitigations(out: str | Path, config: MitigationConfig = MitigationConfig(), progress: bool = True,
                          finetuned: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Train every (model, variant); write mitigations.csv, mitigations.png and summary.json.

    Each run (facts.jsonl with exactly what was trained, history.jsonl, checkpoints/) goes to
    ``out/<model>/<variant>/``. ``finetuned``: ``revlens finetune-facts`` folders whose rows
    (:func:`finetuned_rows`, :func:`analyses.compare.named_apart`) join the table; they are read before any training,
    so a bad folder fails at once, and one given twice is refused (:func:`analyses.compare.finetuned_folders`).
    """
    from analyses.compare import finetuned_folders, named_apart

    pretrained = named_apart([(run_dir, finetuned_rows(run_dir)) for run_dir in finetuned_folders(list(finetuned))])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    vocab = TokenVocab()
    run = config.run
    world = reversal_world(n_pairs=run.n_pairs, k=run.k, seed=run.seed, vocab=vocab)
    variants = [make_variant(name, world, config.copy_partners, run.seed) for name in config.variants]
    rows = []
    for model_name in config.models:
        for variant in variants:
            model, _ = train_run(variant.training, vocab, replace(run, model=model_name),
                                 out / model_name / variant.name, progress)
            rows += measure(model, model_name, world, variant, vocab)
    rows += pretrained
    write_csv(pd.DataFrame(rows), out / "mitigations.csv")
    from analyses.figures import mitigation_bars

    title = f"Mitigations on the reversal world ({len(world)} pairs)" + (
        "; fine-tuned models on their own fictitious people" if finetuned else "")
    save_png(mitigation_bars(rows, title=title), out / "mitigations.png")
    summary = {"experiment": "mitigations", "config": asdict(config), "n_pairs": len(world),
               "n_one_way": len(one_way_facts(world)),
               "variants": {v.name: v.training.count("train") for v in variants},
               "definitions": {v.name: DEFINITIONS[v.name] for v in variants},
               "finetuned_definitions": {name: FINETUNED_DEFINITIONS[name] for name in
                                         dict.fromkeys(row["variant"] for row in pretrained)},
               "finetuned": [str(run_dir) for run_dir in finetuned], "rows": rows,
               "seconds": time.perf_counter() - began}
    _write_json(out / "summary.json", summary)
    return summary


def format_mitigations(summary: dict[str, Any]) -> str:
    """One screen: per model, variant and test, the held-out reverse and the OV entry Y[B,A]."""
    cfg = summary["config"]["run"]
    width = max([10] + [len(r["model"]) + 2 for r in summary["rows"]])
    lines = [f"reversal world, {summary['n_pairs']} pairs ({summary['n_one_way']} one-way) · {cfg['steps']} steps · "
             f"lr {cfg['lr']}; training sequences per variant: "
             + ", ".join(f"{name} {n}" for name, n in summary["variants"].items()), "",
             f"  {'model':{width}s}{'variant':18s}{'test':34s}{'n':>4s}{'acc':>7s}{'log p':>8s}{'margin':>8s}"
             f"{'z Y[A,B]':>9s}{'z Y[B,A]':>9s}"]
    for r in summary["rows"]:
        test = r["test"] + (" *" if r["tested_trained"] else "")
        lines.append(f"  {r['model']:{width}s}{r['variant']:18s}{test:34s}{r['heldout_n']:4d}"
                     f"{r['heldout_accuracy']:7.3f}{r['heldout_logprob']:8.2f}{r['heldout_margin']:8.2f}"
                     f"{r['z_trained']:9.2f}{r['z_heldout']:9.2f}")
    chance = {r["model"]: r["chance_logprob"] for r in summary["rows"]}
    lines += ["", "chance log p: " + ", ".join(
        f"{model} {value:.2f}" if value is not None else f"{model} none (summed log p of a multi-token answer; "
        "its chance is margin 0)" for model, value in chance.items())
        + "; * the tested statements were trained (accuracy by construction)"]
    if summary.get("finetuned"):
        lines.append("fine-tuned rows: `revlens finetune-facts` folders " + ", ".join(summary["finetuned"])
                     + " (their own facts, fictitious people; acc is greedy exact match, margin over random answers of the "
                     "same kind)")
    lines.append(f"in {summary['seconds']:.1f} s")
    return "\n".join(lines)
