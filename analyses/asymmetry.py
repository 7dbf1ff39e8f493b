"""`revlens check-asymmetry`: does a pretrained model name a celebrity's parent more readily than
the parent's child? The reversal curse on real facts (Berglund et al. 2023, experiment 2).

Each pair of the celebrity CSV (:func:`facts.celebrity.load_celebrity_pairs`) is asked both ways:

* child → parent (the fact's forward direction), every pair but one whose child's name begins with the
  parent's ("Al Cole Jr."; none in the shipped file);
* parent → child (reverse), on each parent's first pair only (a later sibling would be a second
  right answer to the same question, see :mod:`facts.celebrity`), and not where the parent's name begins with
  the child's ("Robert De Niro Sr."): copying the prompt's name would score as knowing the child.

Prompts are Berglund et al.'s questions by default (``"Q: Who is {child}'s mother?\nA:"`` /
``"Q: Name a child of {parent}.\nA:"``); ``templates="completion"`` uses ``"{child}'s mother
is"`` / ``"{parent} is the mother of"``. On SmolLM2-135M-Instruct (first 150 pairs, K = 31) the
questions give the true parent a larger margin over controls than the completions (+1.45 ± 0.49
nats, paired 95% interval; mean rank −0.64 ± 0.56) and the true child the same one (−0.27 ±
0.40 nats); exact match is 0 with either. Hence the default.

Per statement with prompt c and true answer a, against K controls a'_1..a'_K (K = 31 by
default) drawn by :func:`facts.language.controls` among the answers of the same kind *and the
same parent type* (other mothers when a child's mother is asked, other children of mothers when
a mother's child is asked; seeded; every right answer excluded):

* ``correct``: greedy decoding from c produces exactly a's tokens (teacher-forced argmax at every
  answer token, as :func:`models.scoring.score_answers` defines it);
* ``logprob`` = log p(a | c), summed over a's tokens;
* ``rank`` = 1 + #{j : log p(a'_j | c) ≥ log p(a | c)} ∈ [1, K+1] (a tie ranks above the truth: top-1, rank 1,
  means it outscores every control); chance mean rank (K+2)/2;
* ``margin`` = log p(a | c) − mean_j log p(a'_j | c).

Ranking by summed log-probability favours short names; the controls are drawn without regard
to length, so this bias is the same in both directions. A bigger confound: most pairs share a name
word ("Sasha Calle" / "Samira Calle", "Kate Winslet" / "Sally Bridges-Winslet", "Reese Witherspoon" / "Betty
Reese"; :func:`share_a_surname`), and a model that copies a name of the prompt ranks the truth first against
random controls without knowing the fact, in either direction. The summary therefore repeats accuracy, mean
rank and margin on the pairs that share none (``no_shared_surname``), the cleaner test of knowing the parent or
the child. A pair whose answer begins with the name asked about ("Robert De Niro" / "Robert De Niro Sr.") is
asked neither way (:func:`facts.celebrity.load_celebrity_pairs`), and no question's control is the person it
names (:func:`draw_controls`). Intervals are clustered by family (:func:`families`).

Scoring shares each prompt's keys and values among its K+1 answers
(:func:`probes.shared_prompt.candidate_logprobs_cached`), with float32 products on oneDNN's kernels where
MKL's are the slower float32 ones (:func:`models.cpu_matmul.float32_matmul`; ``float32_matmul`` in the summary).
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from analyses.reproduce import _write_json, write_csv
from facts.celebrity import COMPLETION_TEMPLATES, QUESTION_TEMPLATES, load_celebrity_pairs
from facts.language import TemplateTokenizer, controls_of, wrong_answers
from facts.schema import Direction, FactError, FactSet
from models.backend import is_tl_model, wrapper_name
from models.cpu_matmul import float32_matmul
from models.pretrained import DEFAULT_MODEL, Backend, TLModel, load
from models.scoring import model_device
from probes.shared_prompt import candidate_logprobs_cached
from probes.stats import mean_interval95, rate_ci95
from probes.views import save_png

TEMPLATE_FAMILIES = {"completion": COMPLETION_TEMPLATES, "question": QUESTION_TEMPLATES}
DEFAULT_TEMPLATES = "question"
"""The family of :data:`facts.celebrity.TEMPLATES`, which ``revlens probe`` asks celebrity facts with too."""
DEFAULT_CONTROLS = 31
DIRECTION_NAMES: dict[Direction, str] = {"forward": "child_to_parent", "reverse": "parent_to_child"}
DIRECTION_LABELS = {"child_to_parent": "child → parent", "parent_to_child": "parent → child"}
PUBLISHED = {
    "model": "GPT-4",
    "child_to_parent": 0.79,
    "parent_to_child": 0.33,
    "source": "Berglund et al. 2023, 'The Reversal Curse', experiment 2 (celebrity parents)",
}
"""The published accuracies, shown beside ours: GPT-4's answers to the questions as the authors
judged them. Our headline beside them is the top-1 rate among the same-kind controls (the truth
ranked first of K+1, with its 95% interval): a small model restates the question instead of
answering, so its greedy exact match (kept as a second column) is 0 where it does know the
answer. Only the direction and size of the gap compare."""

PUBLISHED_WIN_RATE = {
    "LLaMA-7b": 0.78, "LLaMA-30b": 0.97, "LLaMA-65b": 0.92, "davinci": 0.52,
    "source": "Berglund et al. 2023, 'The Reversal Curse' (arXiv 2309.12288), experiment 2: share of celebrity "
              "pairs with log P(parent | child) > log P(child | parent), per model, computed from the authors' "
              "published per-model result CSVs (figures as given to this project, not recomputed here)",
}
"""The published log-probability win rates, printed beside ours (:func:`logprob_win_rate`). Their
prompts are their own completions, ours the questions of ``templates``: the rates compare in
direction (> 0.5: the parent is the likelier answer), not to the digit."""


def logprob_win_rate(table: pd.DataFrame) -> dict[str, Any]:
    """Share of pairs asked both ways with log p(parent | child prompt) > log p(child | parent prompt),
    with its 95% interval; the same on the pairs that share no name word. Pairs asked one way (a
    parent's later children) are left out. A child's mother and father are two pairs that share the child's
    prompt, and their outcomes agree more often than chance would have them, so the interval is Wilson's over
    pairs clustered by family (:func:`families`, :func:`probes.stats.rate_ci95`); ``children`` counts the children,
    ``families`` the clusters."""
    table = table.assign(family=families(table))
    both = table[table.child_to_parent_logprob.notna() & table.parent_to_child_logprob.notna()]

    def rate(part: pd.DataFrame) -> dict[str, Any]:
        wins = (part.child_to_parent_logprob.astype(float) > part.parent_to_child_logprob.astype(float)).astype(float)
        return {"n": int(len(part)), "children": int(part.child.nunique()), "families": int(part.family.nunique()),
                "rate": float(wins.mean()) if len(part) else float("nan"), "ci95": rate_ci95(wins, part.family)}

    return {**rate(both), "no_shared_surname": rate(both[~both.shares_surname.astype(bool)])}


def families(table: pd.DataFrame) -> pd.Series:
    """Each row's family: the connected component of its child and parent among every row's (a child with its
    mother and father, their other children, those children's other parents), named by one of its members. The
    questions of one family share a person (a child asked for its mother and for its father; a mother and a father
    asked "Name a child of …" with one answer; siblings asked for one mother), so their outcomes go together:
    clustering by the person a prompt names made each parent → child question a cluster of its own."""
    parent_of: dict[str, str] = {}

    def root(name: str) -> str:
        while parent_of.setdefault(name, name) != name:
            parent_of[name] = parent_of[parent_of[name]]
            name = parent_of[name]
        return name

    for child, parent in zip(table.child, table.parent):
        parent_of[root(child)] = root(parent)
    return pd.Series([root(child) for child in table.child], index=table.index, name="family")


# --- the celebrity table ------------------------------------------------------------------------


def _by_parent_type(facts: FactSet) -> dict[int, tuple[FactSet, int]]:
    """Fact index → (the fact set of its parent type, its index there), to draw controls from."""
    groups: dict[str, list[int]] = {}
    for index, fact in enumerate(facts):
        groups.setdefault(fact.group, []).append(index)
    where = {}
    for group, members in groups.items():
        subset = FactSet(tuple(facts[i] for i in members), world=f"{facts.world}:{group}")
        where.update({index: (subset, position) for position, index in enumerate(members)})
    return where


def draw_controls(
    facts: FactSet, statements: Iterable[tuple[int, Direction]], k: int, seed: int = 0
) -> list[list[str]]:
    """``k`` wrong answers per statement, of the same kind and parent type (seeded).

    Other mothers for "X's mother is", other children of mothers for "M is the mother of";
    every true answer of the same question (a sibling) is excluded (:func:`facts.language.controls`), and for
    the reverse question, asked alike of a mother and a father ("Name a child of P."), every child of P of
    either parent type (a person recorded as both, with a child as the other type too). Nor is the person the
    question names ever its control ("Name a child of Johnny Depp." had drawn " Johnny Depp", a father and a
    child in the file, which a model copying the prompt ranks above the truth).
    Each parent type's fact set is scanned once for all its statements (:func:`facts.language.controls_of`).
    """
    where = _by_parent_type(facts)
    statements = list(statements)
    children: dict[str, set[str]] = {}
    for fact in facts:
        children.setdefault(fact.object, set()).add(fact.subject)
    by_subset: dict[int, tuple[FactSet, list[int]]] = {}
    for number, (index, _) in enumerate(statements):
        subset = where[index][0]
        by_subset.setdefault(id(subset), (subset, []))[1].append(number)
    drawn: list[list[str]] = [[] for _ in statements]
    for subset, numbers in by_subset.values():
        asked = [(where[statements[n][0]][1], statements[n][1]) for n in numbers]
        also_right = [(children[facts[statements[n][0]].object] if statements[n][1] == "reverse" else set())
                      | {facts[statements[n][0]].given_and_answer(statements[n][1])[0]} for n in numbers]
        try:
            for number, wrong in zip(numbers, controls_of(subset, asked, k, seed, also_right)):
                drawn[number] = wrong
        except FactError:  # named by its fact's line, not its place among its parent type's
            n, fewest = next((n, len(pool)) for n, pool in zip(numbers, wrong_answers(subset, asked, also_right))
                             if len(pool) < k)
            index, direction = statements[n]
            lines = facts.meta.get("line") or []
            where = f"{facts.meta.get('source')}:{lines[index]}" if index < len(lines) else f"fact {index}"
            raise FactError(f"{where}: {k} controls asked for {facts[index].given_and_answer(direction)[0]!r} "
                            f"({direction}), but the pairs hold only {fewest} wrong answer(s) among {subset[0].group}s: "
                            f"ask for fewer (--controls; n_controls in Python) or give more pairs of that parent "
                            f"type") from None
    return drawn


def asymmetry_table(
    model: TLModel,
    facts: FactSet,
    tokenizer: TemplateTokenizer,
    *,
    limit: int | None = None,
    n_controls: int = DEFAULT_CONTROLS,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per pair (the first ``limit`` of ``facts``): both directions scored against controls.

    Controls come from all of ``facts`` (not only the first ``limit``), so a limited run draws
    the same controls as the full one. Columns: fact, line (in the CSV), child, parent,
    parent_type, gpt4_can_reverse, shares_surname (:func:`share_a_surname`), and per direction
    ``{child_to_parent,parent_to_child}_{correct,rank,logprob,margin}`` (empty for parent → child
    on a parent's later children).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit}")
    if n_controls < 1:
        raise ValueError(f"n_controls must be ≥ 1, got {n_controls}")
    chosen = range(len(facts) if limit is None else min(limit, len(facts)))
    statements = [(i, d) for i, d, _ in facts.statements() if i in chosen]
    drawn = draw_controls(facts, statements, n_controls, seed)
    candidates = [
        [tokenizer.example(facts, i, d)] + [tokenizer.example(facts, i, d, answer=a) for a in wrong]
        for (i, d), wrong in zip(statements, drawn)
    ]
    scores = candidate_logprobs_cached(model, candidates, batch_size=batch_size, progress=progress)
    truth, others = scores.logprob[:, 0], scores.logprob[:, 1:]
    rank = 1 + (others >= truth[:, None]).sum(1)
    margin = truth - others.mean(1)
    lines = facts.meta.get("line", [None] * len(facts))
    can_reverse = facts.meta.get("can_reverse", [None] * len(facts))
    rows = {
        i: {
            "fact": i, "line": lines[i], "child": facts[i].subject, "parent": facts[i].object,
            "parent_type": facts[i].group, "gpt4_can_reverse": can_reverse[i],
            "shares_surname": share_a_surname(facts[i].subject, facts[i].object),
        }
        for i in chosen
    }
    for row, (i, d) in enumerate(statements):
        name = DIRECTION_NAMES[d]
        rows[i].update({
            f"{name}_correct": bool(scores.correct[row, 0]), f"{name}_rank": int(rank[row]),
            f"{name}_logprob": float(truth[row]), f"{name}_margin": float(margin[row]),
        })
    columns = ["fact", "line", "child", "parent", "parent_type", "gpt4_can_reverse", "shares_surname"] + [
        f"{name}_{what}" for name in DIRECTION_NAMES.values() for what in ("correct", "rank", "logprob", "margin")
    ]
    table = pd.DataFrame(list(rows.values()), columns=columns)
    for name in DIRECTION_NAMES.values():
        table[f"{name}_correct"] = table[f"{name}_correct"].astype("boolean")
        table[f"{name}_rank"] = table[f"{name}_rank"].astype("Int64")
    return table


def summarize_directions(table: pd.DataFrame, n_controls: int) -> dict[str, dict[str, Any]]:
    """Per direction: n, accuracy (greedy exact match), mean rank (chance (K+2)/2), top-1 rate
    among the K+1 answers (the headline, chance 1/(K+1)) with its 95% interval, log-prob, margin,
    and the same on the pairs whose names share no word (no name to copy, :func:`share_a_surname`). Every ``*_ci95``
    is [low, high]: Wilson's for the top-1 rate, Student's t for the mean rank and margin (:mod:`probes.stats`),
    clustered by family (:func:`families`)."""
    out = {}
    table = table.assign(family=families(table))
    for name in DIRECTION_NAMES.values():
        part = table[table[f"{name}_rank"].notna()]
        out[name] = {
            **_direction_stats(part, name, n_controls),
            "chance_mean_rank": (n_controls + 2) / 2,
            "chance_top1_rate": 1 / (n_controls + 1),
            "no_shared_surname": _direction_stats(part[~part.shares_surname.astype(bool)], name, n_controls),
        }
    return out


def _direction_stats(part: pd.DataFrame, name: str, n_controls: int) -> dict[str, Any]:
    """One direction's numbers; intervals over statements clustered by family (:func:`families`: a child asked for its
    mother and for its father, a mother and a father asked for their one child, siblings asked for one parent),
    :mod:`probes.stats`; the mean rank's cut to the ranks there are, [1, K + 1] (Student's t knows no bounds: over 2
    statements it reached −77)."""
    n = int(len(part))
    asked = part.family
    rank = part[f"{name}_rank"].astype(float)
    margin = part[f"{name}_margin"].astype(float)
    mean = lambda series: float(series.mean()) if n else float("nan")  # noqa: E731
    top1 = (rank == 1).astype(float)
    return {
        "n": n, "accuracy": mean(part[f"{name}_correct"].astype(float)),
        "mean_rank": mean(rank), "mean_rank_ci95": mean_interval95(rank, asked, (1, n_controls + 1)),
        "top1_rate": mean(top1), "top1_rate_ci95": rate_ci95(top1, asked),
        "logprob": mean(part[f"{name}_logprob"].astype(float)), "margin": mean(margin),
        "margin_ci95": mean_interval95(margin, asked),
    }


def name_words(name: str) -> frozenset[str]:
    """The words of a name a model could copy from a prompt into an answer, lower-cased: every word, suffixes such as
    "Jr." or "III" skipped and hyphenated names split ("Sally Bridges-Winslet" → {sally, bridges, winslet})."""
    words = [w for w in re.split(r"[\s,]+", name) if w]
    kept = [w for w in words if w.rstrip(".").lower() not in _SUFFIXES] or words
    return frozenset(part.lower() for word in kept for part in word.split("-") if part)


def share_a_surname(child: str, parent: str) -> bool:
    """Whether the two names have a word in common (:func:`name_words`), what a model can copy from the prompt into
    the answer: a surname ("Kate Winslet" and "Sally Bridges-Winslet", though their last words differ), one name's
    surname as the other's first name ("Reese Witherspoon" and "Betty Reese"; "Michelle Yeoh" and "Yeoh Kian Teik",
    surname first), or a first name ("Harold Perrineau" and "Harold Williams"). Only surnames had counted, so 8 of
    the 378 pairs called clean held a word the prompt gives away."""
    return bool(name_words(child) & name_words(parent))


_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv"})


# --- the command --------------------------------------------------------------------------------


def check_inputs(data: str | os.PathLike[str] | None = None, limit: int | None = None,
                 n_controls: int = DEFAULT_CONTROLS, seed: int = 0) -> FactSet:
    """The celebrity pairs read whole and their controls drawn as :func:`check_asymmetry` will, before
    any model loads or any folder is touched (``revlens check-asymmetry`` calls it first): a bad CSV
    raises :class:`facts.schema.FactError` naming the file and line, more ``n_controls`` than the
    pairs hold one naming ``--controls``. Returns the pairs."""
    facts = load_celebrity_pairs(data)
    chosen = range(len(facts) if limit is None else min(limit, len(facts)))
    statements = [(i, d) for i, d, _ in facts.statements() if i in chosen]
    try:
        draw_controls(facts, statements, n_controls, seed)
    except FactError as error:
        raise FactError(f"--controls {n_controls}: {error}") from None
    return facts


def check_asymmetry(
    model_name_or_path: str | os.PathLike[str] | TLModel = DEFAULT_MODEL,
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    backend: Backend = "bridge",
    batch_size: int = 128,
    n_controls: int = DEFAULT_CONTROLS,
    templates: str = DEFAULT_TEMPLATES,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Ask a pretrained model every celebrity pair both ways; write the results into ``out``.

    ``model_name_or_path``: anything :func:`models.pretrained.load` takes (loaded on ``backend``
    and ``device``; the bridge by default; both backends score each question and its answers' trie in one pass,
    :func:`probes.shared_prompt.scores_by_tree`, the bridge several questions a pass, ~1.1-1.2× faster than the
    hooked model and lighter to load, the same log-probabilities within 1e-4), or a model already loaded (e.g. just fine-tuned; its own tokenizer is used
    and ``backend``/``device`` are ignored). ``data``: the parent/child CSV (default:
    :func:`facts.celebrity.celebrity_csv_path`). ``limit``: only the first N pairs (controls still
    come from all pairs). ``n_controls``: K wrong answers per question. ``templates``:
    ``"question"`` (default) or ``"completion"``. ``batch_size``: sequences per forward pass.

    Writes ``summary.json``, ``pairs.csv`` (one row per pair) and ``asymmetry.png`` when ``out``
    is given, and returns the summary. A bad CSV raises :class:`facts.schema.FactError`, a model
    that cannot be found or read :class:`models.pretrained.PretrainedLoadError` (both name the
    file); the CSV is read first, so it fails before the model loads.
    """
    began = time.perf_counter()
    if templates not in TEMPLATE_FAMILIES:
        raise ValueError(f"templates must be one of {sorted(TEMPLATE_FAMILIES)}, got {templates!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be ≥ 1, got {limit}")
    if n_controls < 1:
        raise ValueError(f"n_controls must be ≥ 1, got {n_controls}")
    facts = load_celebrity_pairs(data)  # before the model: a bad file fails in milliseconds
    if is_tl_model(model_name_or_path):
        model, tokenizer, name = model_name_or_path, model_name_or_path.tokenizer, model_name_or_path.cfg.model_name
        if tokenizer is None:  # the questions are text: a model built without one cannot be asked them
            raise ValueError(f"{name}: this model has no tokenizer (model.tokenizer is None), so the celebrity "
                             "questions cannot be put to it; load it with models.pretrained.load, or set its tokenizer")
    else:
        model = load(model_name_or_path, backend=backend, device=device)
        tokenizer, name = model.tokenizer, os.fspath(model_name_or_path)  # the model's own: no second copy
    fact_tokenizer = TemplateTokenizer(tokenizer, TEMPLATE_FAMILIES[templates])  # BOS as the tokenizer adds it
    loaded = time.perf_counter()
    with float32_matmul(model_device(model)) as kernels:
        table = asymmetry_table(model, facts, fact_tokenizer, limit=limit, n_controls=n_controls, seed=seed,
                                batch_size=batch_size, progress=progress)
    scored = time.perf_counter()
    directions = summarize_directions(table, n_controls)
    answers = sum(d["n"] for d in directions.values()) * (n_controls + 1)
    summary = {
        "experiment": "asymmetry",
        "model": model.cfg.model_name,
        "model_name_or_path": name,
        "backend": wrapper_name(model),
        "device": str(model_device(model)),
        "float32_matmul": kernels,
        "data": facts.meta["source"],
        "rows": facts.meta["rows"],
        "pairs": len(facts),
        "limit": limit,
        "pairs_checked": int(len(table)),
        "templates": templates,
        "prompts": _example_prompts(facts, fact_tokenizer),
        "n_controls": n_controls,
        "controls": f"{n_controls} random other answers of the same kind and parent type per statement, seed {seed}",
        "seed": seed,
        "directions": directions,
        "headline": f"top1_rate: the truth ranked first among itself and {n_controls} same-kind controls "
                    f"(top1_rate_ci95: its 95% interval, Wilson's; chance {1 / (n_controls + 1):.3f}), beside the published "
                    "accuracy; accuracy (greedy exact match) is the second column",
        "published": PUBLISHED,
        "logprob_win_rate": logprob_win_rate(table),
        "published_win_rate": PUBLISHED_WIN_RATE,
        "seconds": time.perf_counter() - began,
        "load_seconds": loaded - began,
        "scoring_seconds": scored - loaded,
        "answers_scored": answers,
        "answers_per_second": answers / max(scored - loaded, 1e-9),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(table, out / "pairs.csv")
        save_png(asymmetry_bars(summary), out / "asymmetry.png")
        summary["seconds"] = time.perf_counter() - began
        _write_json(out / "summary.json", summary)
    return summary


def _example_prompts(facts: FactSet, tokenizer: TemplateTokenizer) -> dict[str, str]:
    """The prompts of the first pair, one per direction, as text (what the model reads)."""
    out = {}
    for index, direction, _ in facts.statements():
        name = DIRECTION_NAMES[direction]
        if name not in out:
            out[name] = tokenizer.tokenizer.decode(list(tokenizer.example(facts, index, direction).prompt))
    return out


def asymmetry_bars(summary: dict[str, Any]):
    """Three panels per direction: accuracy (our top-1 among the controls with its 95% interval, our
    greedy exact match, GPT-4's published accuracy), mean rank vs chance, margin (the last two on all
    pairs and, lighter, on the pairs that share no name word)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = list(DIRECTION_NAMES.values())
    rows = [summary["directions"][n] for n in names]
    labels = [DIRECTION_LABELS[n] for n in names]
    positions = list(range(len(names)))
    figure = Figure(figsize=(10.5, 4.4), layout="constrained")
    accuracy, rank, margin = figure.subplots(1, 3)
    top1 = accuracy.bar([p - 0.27 for p in positions], [r["top1_rate"] for r in rows], width=0.27, color="#1f77b4",
                        yerr=_error_bars([r["top1_rate"] for r in rows], [r["top1_rate_ci95"] for r in rows]), capsize=3,
                        label=f"{summary['model']}: top-1 among {summary['n_controls'] + 1}")
    greedy = accuracy.bar(positions, [r["accuracy"] for r in rows], width=0.27, color="#1f77b4", alpha=0.4,
                          label=f"{summary['model']}: greedy exact match")
    theirs = accuracy.bar([p + 0.27 for p in positions], [summary["published"][n] for n in names], width=0.27,
                          color="#aaaaaa", label=f"{summary['published']['model']} (published)")
    for bars in (top1, greedy, theirs):
        accuracy.bar_label(bars, fmt="%.2f", fontsize=7)
    accuracy.axhline(rows[0]["chance_top1_rate"], color="grey", linestyle="-.", linewidth=1, label="chance top-1")
    accuracy.set_xticks(positions, labels)
    accuracy.set_ylim(0, 1)
    accuracy.set_ylabel("accuracy (top-1 with 95% CI)")
    for axis, key, chance in ((rank, "mean_rank", rows[0]["chance_mean_rank"]), (margin, "margin", 0.0)):
        for shift, subset, alpha in ((-0.2, None, 1.0), (0.2, "no_shared_surname", 0.45)):
            values = [r[subset] if subset else r for r in rows]
            axis.bar([p + shift for p in positions], [v[key] for v in values], width=0.4, alpha=alpha,
                     yerr=_error_bars([v[key] for v in values], [v[f"{key}_ci95"] for v in values]), capsize=3,
                     color=["#1f77b4", "#d62728"],
                     label="no name word in common" if subset else "all pairs")
        axis.axhline(chance, color="grey", linestyle="-.", linewidth=1, label="chance")
        axis.set_xticks(positions, labels)
    rank.set_ylim(1, summary["n_controls"] + 1)
    rank.set_ylabel(f"mean rank among {summary['n_controls'] + 1} (1 = best)")
    margin.set_ylabel("log p(true) − mean log p(control)")
    for axis in (accuracy, rank, margin):  # legends below the panels, where they cover no bar and no label
        axis.grid(alpha=0.3, axis="y")
        handles, names = axis.get_legend_handles_labels()
        if axis is not accuracy:  # the bars' colour is the direction (x axis); their shade, the subset: grey keys
            handles = [Patch(facecolor="#555555", alpha=handle.patches[0].get_alpha(), label=name)
                       if hasattr(handle, "patches") else handle for handle, name in zip(handles, names)]
        axis.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    figure.suptitle(f"{summary['model']}: celebrity parents, {summary['pairs_checked']} pairs "
                    f"({summary['templates']} prompts)")
    return figure


def _error_bars(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> list[list[float]]:
    """Matplotlib's ``yerr`` for bars at ``values`` with 95% intervals [low, high] (Wilson's around a rate is not
    symmetric): the distances below and above; NaN where an interval is undefined, which draws no whisker (a
    capped one of length 0 would read as certainty)."""
    return [[value - low for value, (low, _) in zip(values, intervals)],
            [high - value for value, (_, high) in zip(values, intervals)]]


def _interval_text(interval: Sequence[float]) -> str:
    """A 95% interval as printed, "[0.379, 0.429]"; "[n/a]" where it is undefined."""
    low, high = interval
    return "[n/a]" if math.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def format_summary(summary: dict[str, Any]) -> str:
    """The one-screen table: the top-1 rate among the controls (with its 95% interval) beside GPT-4's
    accuracy, then greedy exact match, mean rank and margin per direction."""
    k = summary["n_controls"]
    published = summary["published"]
    lines = [
        f"asymmetry check: {summary['model']} ({summary['backend']}, {summary['device']}), "
        f"{summary['pairs_checked']} of {summary['pairs']} pairs ({summary['rows']} rows), "
        f"{summary['templates']} prompts",
        f"top-1 and rank among the truth and {k} random answers of the same kind and parent type "
        f"(chance {1 / (k + 1):.3f} and {(k + 2) / 2:.1f}); exact = greedy exact match",
        "",
        f"  {'':16s}{'n':>6s}{'top-1 [95% CI]':>22s}{published['model'] + ' acc.':>12s}{'exact':>8s}"
        f"{'mean rank':>11s}{'margin':>8s}",
    ]

    def row_text(label: str, row: dict[str, Any], theirs: str) -> str:
        top1 = f"{row['top1_rate']:.3f} {_interval_text(row['top1_rate_ci95'])}"
        return (f"  {label:16s}{row['n']:6d}{top1:>22s}{theirs:>12s}{row['accuracy']:8.3f}"
                f"{row['mean_rank']:11.2f}{row['margin']:8.2f}")

    for name, row in summary["directions"].items():
        lines.append(row_text(DIRECTION_LABELS[name], row, f"{published[name]:.2f}"))
    lines.append("  no name word in common (none to copy):")
    for name, row in summary["directions"].items():
        lines.append(row_text(DIRECTION_LABELS[name], row["no_shared_surname"], ""))
    lines += [
        f"  {'chance':16s}{'':6s}{1 / (k + 1):22.3f}{'':12s}{'':8s}{(k + 2) / 2:11.2f}{0.0:8.2f}",
    ]
    if "logprob_win_rate" in summary:
        win, theirs = summary["logprob_win_rate"], summary["published_win_rate"]
        published = ", ".join(f"{name} {value:.2f}" for name, value in theirs.items() if name != "source")
        lines += [
            "",
            f"log p(parent | child) > log p(child | parent): {win['rate']:.3f} {_interval_text(win['ci95'])} of {win['n']} pairs "
            f"asked both ways ({win['no_shared_surname']['rate']:.3f} of {win['no_shared_surname']['n']} with "
            f"no name word in common); published: {published}",
            f"  ({theirs['source']})",
        ]
    lines += [
        "",
        f"{summary['answers_scored']} answers scored in {summary['scoring_seconds']:.0f} s "
        f"({summary['answers_per_second']:.1f}/s"
        + (f", float32 products: {summary['float32_matmul']}" if "float32_matmul" in summary else "")
        + f"); {summary['seconds']:.0f} s in all with loading",
    ]
    return "\n".join(lines)
