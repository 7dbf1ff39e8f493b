"""The celebrity asymmetry check on the real SmolLM2-135M-Instruct (offline), first 20 pairs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses.asymmetry import (
    PUBLISHED,
    asymmetry_bars,
    check_asymmetry,
    draw_controls,
    families,
    format_summary,
)
from facts.celebrity import COLUMNS, COMPLETION_TEMPLATES, DEFAULT_CSV, QUESTION_TEMPLATES, load_celebrity_pairs
from facts.language import TemplateTokenizer
from facts.schema import FactError
from facts.tokens import Example, collate
from models.backend import HookedTransformer
from models.pretrained import PretrainedLoadError, load_tokenizer
from models.scoring import score_answers
from probes.shared_prompt import CandidateScores, candidate_logprobs_cached
from probes.stats import rate_ci95, t_quantile

REAL_CSV = DEFAULT_CSV  # the copy shipped as package data
LIMIT, K = 20, 15


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while this module runs: on the shared 2-core machine two threads made
    HookedTransformer's many small matmuls and copies wait on each other (163 s for this module
    against 48 s). Scores do not depend on it beyond float rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hooked(one_thread, smollm2_hooked):
    return smollm2_hooked


@pytest.fixture(scope="module")
def run(hooked, tmp_path_factory):
    out = tmp_path_factory.mktemp("asymmetry")
    summary = check_asymmetry(hooked, REAL_CSV, out, limit=LIMIT, n_controls=K, progress=False)
    return summary, out


def test_summary_fields_and_files(run):
    summary, out = run
    assert summary["model"] == summary["model_name_or_path"] == "SmolLM2-135M-Instruct"
    # TL 4: "hooked" loads a bridge under HookedTransformer's hook names, and says so
    assert summary["backend"] == ("hooked" if HookedTransformer else "bridge (compatibility mode)")
    assert (summary["rows"], summary["pairs"], summary["pairs_checked"]) == (1513, 1502, LIMIT)
    assert summary["prompts"] == {"child_to_parent": "Q: Who is Sasha Calle's mother?\nA:",
                                  "parent_to_child": "Q: Name a child of Samira Calle.\nA:"}
    assert summary["published"]["child_to_parent"] == 0.79 and summary["published"]["parent_to_child"] == 0.33
    directions = summary["directions"]
    assert directions["child_to_parent"]["n"] == LIMIT
    assert 0 < directions["parent_to_child"]["n"] <= LIMIT
    for row in directions.values():
        assert 0 <= row["accuracy"] <= 1 and row["chance_mean_rank"] == (K + 2) / 2
        assert {"mean_rank", "margin", "top1_rate", "no_shared_surname"} <= set(row)
    assert summary["seconds"] > summary["scoring_seconds"] > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "asymmetry.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == LIMIT and list(pairs.child[:2]) == ["Sasha Calle", "Sasha Calle"]
    assert pairs.child_to_parent_correct.mean() == pytest.approx(directions["child_to_parent"]["accuracy"])


def test_ranks_lie_within_one_and_k_plus_one(run):
    pairs = pd.read_csv(run[1] / "pairs.csv")
    for name in ("child_to_parent", "parent_to_child"):
        ranks = pairs[f"{name}_rank"].dropna()
        assert len(ranks) == run[0]["directions"][name]["n"]
        assert ranks.between(1, K + 1).all()
        assert run[0]["directions"][name]["mean_rank"] == pytest.approx(ranks.mean())


def test_child_to_parent_is_not_much_worse_than_parent_to_child(run):
    # Measured on these 20 pairs (K = 15, chance rank 8.5): mean rank 4.80 child → parent vs 4.55
    # parent → child, margin 8.61 vs 5.17 nats, exact match 0 both ways. SmolLM2-135M shows no
    # clear asymmetry in rank (on 150 pairs, K = 31: 9.67 vs 8.66), so only "not much worse" holds.
    c2p, p2c = (run[0]["directions"][name] for name in ("child_to_parent", "parent_to_child"))
    assert c2p["mean_rank"] <= p2c["mean_rank"] + 1.5
    assert c2p["margin"] >= p2c["margin"] - 1.0
    for row in (c2p, p2c):  # the truth beats random names, mostly by sharing a surname
        assert row["mean_rank"] < row["chance_mean_rank"] - 2 and row["margin"] > 2


def test_cached_scoring_equals_teacher_forcing_on_both_backends(hooked, smollm2_bridge):
    facts = load_celebrity_pairs(REAL_CSV)
    tokenizer = TemplateTokenizer(load_tokenizer(), COMPLETION_TEMPLATES)
    statements = [(0, "forward"), (0, "reverse"), (2, "forward"), (3, "reverse")]
    drawn = draw_controls(facts, statements, 5)
    rows = [[tokenizer.example(facts, i, d)] + [tokenizer.example(facts, i, d, answer=a) for a in wrong]
            for (i, d), wrong in zip(statements, drawn)]
    for model in (hooked, smollm2_bridge):
        cached = candidate_logprobs_cached(model, rows, batch_size=7)
        reference = score_answers(model, collate([e for row in rows for e in row]))
        assert cached.logprob.flatten().tolist() == pytest.approx(reference.logprob.tolist(), abs=1e-3)
        assert cached.correct.flatten().tolist() == reference.correct.tolist()


def test_pairs_csv_numbers_are_the_model_s_own_by_teacher_forcing(run, hooked):
    """pairs.csv's logprob, margin, rank and exact match of pair 0 (Sasha Calle / Samira Calle, a name in common) and
    pair 2 (Golshifteh Farahani / Fahimeh Rahim Nia, none), each direction asked anew: the question written here from
    the CSV line (child → parent asks for the parent), the controls drawn with the run's seed, truth and controls
    teacher-forced (models.scoring.score_answers). The other tests recompute statistics from pairs.csv, which the code
    under test wrote: a swap of the two directions' columns, or another margin, passed them (the tie rule, which no
    real pair here puts to the test: the next test).
    Measured: ranks 1 and 1 (pair 0), 14 and 16 of 16 (pair 2); the two directions' log-probabilities 3.8 and 4.9
    nats apart; the nearest control 0.99 nats from the truth; pairs.csv within 1e-5 of teacher forcing."""
    summary, out = run
    pairs = pd.read_csv(out / "pairs.csv")
    facts = load_celebrity_pairs(REAL_CSV)
    statements = [(i, d) for i, d, _ in facts.statements() if i < LIMIT]
    drawn = dict(zip(statements, draw_controls(facts, statements, K, seed=summary["seed"])))
    tokenizer, source = hooked.tokenizer, REAL_CSV.read_text(encoding="utf-8").splitlines()
    for index in (0, 2):
        pair = pairs.iloc[index]
        child, parent, parent_type = next(csv.reader([source[pair.line - 1]]))[:3]  # the file's own line
        assert (pair.fact, pair.child, pair.parent, pair.parent_type) == (index, child, parent, parent_type)
        parents = {f.object for f in facts if f.group == parent_type}
        for name, direction, question, truth, kind in (
            ("child_to_parent", "forward", f"Q: Who is {child}'s {parent_type}?\nA:", parent, parents),
            ("parent_to_child", "reverse", f"Q: Name a child of {parent}.\nA:", child, {f.subject for f in facts}),
        ):
            controls = drawn[(index, direction)]  # the parent's kind for child → parent, children the other way
            assert len(controls) == K and set(controls) <= kind - {child, parent}
            prompt = tuple(tokenizer(question).input_ids)  # with whatever the tokenizer adds before a text (a BOS)
            scores = score_answers(hooked, collate([
                Example(prompt, tuple(tokenizer.encode(" " + answer, add_special_tokens=False)), index, direction,
                        "heldout") for answer in (truth, *controls)]))  # one statement a call: no padding to run
            right, wrong = float(scores.logprob[0]), scores.logprob[1:].double()
            assert (wrong - right).abs().min() > 1e-3  # no near tie: the rank does not hang on rounding
            assert pair[f"{name}_logprob"] == pytest.approx(right, abs=1e-4)
            assert pair[f"{name}_margin"] == pytest.approx(right - float(wrong.mean()), abs=1e-4)
            assert pair[f"{name}_rank"] == 1 + int((wrong >= right).sum())
            assert bool(pair[f"{name}_correct"]) == bool(scores.correct[0])
    for pair in pairs.iloc[[0, 2]].itertuples():  # the directions differ, so a swap of their columns shows
        assert abs(pair.child_to_parent_logprob - pair.parent_to_child_logprob) > 1


def test_a_control_tied_with_the_truth_ranks_above_it_and_the_margin_leaves_the_truth_out(monkeypatch):
    """The rank's tie rule (1 + #{controls ≥ truth}: a tie ranks above the truth) and the margin's mean (over the
    controls alone) on made-up scores with ties: a real model's log-probabilities do not tie, so on SmolLM2 the
    rule ≥ and the rule > rank every pair alike, and SmolLM2 answers no question exactly, so which answer's greedy
    success is the pair's did not show either. Each direction gets scores of its own, so a swap shows too."""
    from analyses import asymmetry

    tokenizer = TemplateTokenizer(load_tokenizer(), QUESTION_TEMPLATES)
    facts = load_celebrity_pairs(REAL_CSV)
    made_up = {"forward": ([-5.0, -5.0, -4.0, -9.0], [True, False, False, False]),
               "reverse": ([-7.0, -8.0, -7.0, -7.0], [False, True, True, True])}  # (log-probabilities, greedy)

    def scores(model, candidates, **_):
        for row in candidates:  # the truth first, then the controls
            assert row[0] == tokenizer.example(facts, row[0].fact, row[0].direction)
        return CandidateScores(torch.tensor([made_up[row[0].direction][0] for row in candidates]),
                               torch.tensor([made_up[row[0].direction][1] for row in candidates]))

    monkeypatch.setattr(asymmetry, "candidate_logprobs_cached", scores)
    pair = asymmetry.asymmetry_table(None, facts, tokenizer, limit=1, n_controls=3).iloc[0]
    assert (pair.child_to_parent_logprob, pair.child_to_parent_rank, pair.child_to_parent_correct) == (-5.0, 3, True)
    assert pair.child_to_parent_margin == pytest.approx(-5.0 - (-5.0 - 4.0 - 9.0) / 3)  # 1.0; with the truth 0.75
    assert (pair.parent_to_child_logprob, pair.parent_to_child_rank, pair.parent_to_child_correct) == (-7.0, 3, False)
    assert pair.parent_to_child_margin == pytest.approx(-7.0 - (-8.0 - 7.0 - 7.0) / 3)  # 1/3; with the truth 0.25


def test_cached_scoring_refuses_a_bridge_under_a_transformers_that_hides_its_cache(smollm2_bridge, monkeypatch):
    import transformers

    rows = [[TemplateTokenizer(load_tokenizer(), COMPLETION_TEMPLATES).example(load_celebrity_pairs(REAL_CSV), 0,
                                                                                "forward")]]
    monkeypatch.setattr(transformers, "__version__", "5.24.0")
    with pytest.raises(RuntimeError, match="transformers 5.24.0 .* backend='hooked'"):
        candidate_logprobs_cached(smollm2_bridge, rows)


def test_controls_are_seeded_same_parent_type_and_independent_of_limit():
    facts = load_celebrity_pairs(REAL_CSV)
    statements = [(i, d) for i, d, _ in facts.statements()]
    every = draw_controls(facts, statements, 31)
    assert draw_controls(facts, statements[:7], 31) == every[:7]
    assert draw_controls(facts, statements[:7], 31, seed=1) != every[:7]
    mothers = {f.object for f in facts if f.group == "mother"}
    (index, direction), wrong = statements[0], every[0]  # Sasha Calle's mother
    assert direction == "forward" and set(wrong) <= mothers and facts[index].object not in wrong


def test_no_control_of_a_reverse_question_is_a_child_of_its_parent_of_either_type():
    """"Name a child of P." is one question for a mother and a father. Tell Schreiber is recorded as mother and
    father of Pablo, and father of Liev: the mothers' pool holds Liev (his mother is in the file), so with Pablo
    alone left out, Liev was drawn as a wrong answer for some seeds and for large K (19 of 300 seeds at K 31)."""
    facts = load_celebrity_pairs(REAL_CSV)
    statements = [(i, d) for i, d, _ in facts.statements() if d == "reverse"]
    children: dict[str, set[str]] = {}
    for fact in facts:
        children.setdefault(fact.object, set()).add(fact.subject)
    assert children["Tell Schreiber"] == {"Pablo Schreiber", "Liev Schreiber"}
    schreiber = [n for n, (i, _) in enumerate(statements) if facts[i].object == "Tell Schreiber"]
    assert len(schreiber) == 1  # asked once, not once per parent type
    for seed in (0, 13, 16, 24, 31):
        drawn = draw_controls(facts, [statements[n] for n in schreiber], 31, seed)[0]
        assert "Liev Schreiber" not in drawn and len(set(drawn)) == 31
    for (index, _), wrong in zip(statements, draw_controls(facts, statements, 200, seed=1)):
        assert not set(wrong) & children[facts[index].object]


def test_a_name_word_in_common_counts_as_a_shared_surname():
    """The cleaner subset is the pairs with no name to copy: a hyphenated or double surname that holds the
    other's shares one (38 of the 426 pairs the last-word rule called different did), and so does a word one name
    has as surname and the other as first name, or a first name: only surnames had counted, and 8 of the 378
    pairs called clean held a word the prompt gives away ("Name a child of Betty Reese." → " Reese Witherspoon")."""
    from analyses.asymmetry import share_a_surname

    for child, parent in (("Kate Winslet", "Sally Bridges-Winslet"), ("Aaron Taylor-Johnson", "Sarah Johnson"),
                          ("Jonah Hauer-King", "Jeremy King"), ("Salma Hayek", "Sami Hayek Dominguez"),
                          ("Sasha Calle", "Samira Calle"), ("Ken Griffey Jr.", "Ken Griffey Sr."),
                          ("Reese Witherspoon", "Betty Reese"), ("Michelle Yeoh", "Yeoh Kian Teik"),
                          ("Harold Perrineau", "Harold Williams"), ("Rooney Mara", "Kathleen McNulty Rooney"),
                          ("Jean-Paul Belmondo", "Paul Smith")):
        assert share_a_surname(child, parent) and share_a_surname(parent, child)
    for child, parent in (("Jennifer Lawrence", "Karen Koch"), ("Ken Griffey Jr.", "Bo Jr.")):
        assert not share_a_surname(child, parent)


def test_intervals_are_clustered_by_family():
    """A mother and a father asked "Name a child of …" have one answer, and siblings asked for one mother share her:
    their outcomes go together. Parent → child questions were clustered by the parent the prompt names, one
    question each: no clustering at all, intervals up to √2 too narrow."""
    from analyses.asymmetry import families, summarize_directions

    table = pd.DataFrame({"child": ["Jen", "Jen", "Chris", "Liam", "Bo", "Bo", "Cy", "Cy"],
                          "parent": ["Karen", "Gary", "Leonie", "Leonie", "Ann", "Al", "Di", "Ed"]})
    family = families(table)
    assert family[0] == family[1] and family[2] == family[3] and family[4] == family[5] != family[0]
    assert family.nunique() == 4
    # four children, each with a mother and a father asked for them: outcomes agree within a child
    ranks = [1, 1, 16, 16, 1, 1, 16, 16]
    table = pd.DataFrame({"child": [c for c in "ABCD" for _ in (0, 1)], "parent": list("abcdefgh"),
                          "shares_surname": False, "parent_to_child_rank": ranks, "child_to_parent_rank": ranks,
                          "parent_to_child_margin": 0.0, "child_to_parent_margin": 0.0,
                          "parent_to_child_correct": False, "child_to_parent_correct": False,
                          "parent_to_child_logprob": 0.0, "child_to_parent_logprob": 0.0})
    stats = summarize_directions(table, 15)
    for name in ("parent_to_child", "child_to_parent"):
        assert stats[name]["top1_rate_ci95"] == pytest.approx(rate_ci95(pd.Series([1.0, 0.0, 1.0, 0.0])))


def test_no_question_s_control_is_the_person_it_names():
    """Johnny Depp is a father (of Lily-Rose) and a child in the file: "Name a child of Johnny Depp." drew
    " Johnny Depp" among the children, which a model copying the prompt ranks above the truth."""
    facts = load_celebrity_pairs(REAL_CSV)
    statements = [(i, d) for i, d, _ in facts.statements()]
    asked = {facts[i].given_and_answer(d)[0] for i, d in statements}
    assert {"Johnny Depp", "Ethan Hawke", "Meg Ryan"} <= asked & {f.subject for f in facts} & {f.object for f in facts}
    for (index, direction), wrong in zip(statements, draw_controls(facts, statements, 200, seed=1)):
        assert facts[index].given_and_answer(direction)[0] not in wrong


def test_format_summary_shows_both_directions_beside_gpt4(run):
    text = format_summary(run[0])
    assert "child → parent" in text and "parent → child" in text and "GPT-4" in text
    assert f"{PUBLISHED['child_to_parent']:.2f}" in text and f"{PUBLISHED['parent_to_child']:.2f}" in text
    assert len(text.splitlines()) <= 28
    header, c2p = (next(line for line in text.splitlines() if key in line) for key in ("top-1 [95% CI]", "child → parent"))
    assert header.index("top-1") < header.index("GPT-4") < header.index("exact")  # the headline beside GPT-4's
    row = run[0]["directions"]["child_to_parent"]
    low, high = row["top1_rate_ci95"]
    assert f"{row['top1_rate']:.3f} [{low:.3f}, {high:.3f}]" in c2p


def test_logprob_win_rate_is_recomputed_from_the_pairs_and_printed_beside_berglunds(run):
    """P(parent | child) > P(child | parent) on the pairs asked both ways, from pairs.csv; the published
    per-model rates (LLaMA-7b/30b/65b, davinci) in the summary and on the screen with their source."""
    summary, out = run
    every = pd.read_csv(out / "pairs.csv")
    family = families(every)
    pairs = every.dropna(subset=["child_to_parent_logprob", "parent_to_child_logprob"])
    wins = (pairs.child_to_parent_logprob > pairs.parent_to_child_logprob).astype(float)
    win = summary["logprob_win_rate"]
    assert win["n"] == len(pairs) == summary["directions"]["parent_to_child"]["n"]
    assert win["rate"] == pytest.approx(wins.mean()) and win["ci95"] == rate_ci95(wins, family[pairs.index])
    assert win["children"] == pairs.child.nunique() < win["n"]  # a child's mother and father: one cluster
    assert win["families"] == family[pairs.index].nunique() <= win["children"]
    different = ~pairs.shares_surname.astype(bool)
    assert win["no_shared_surname"]["rate"] == pytest.approx(wins[different].mean())
    assert summary["published_win_rate"]["LLaMA-7b"] == 0.78 and summary["published_win_rate"]["davinci"] == 0.52
    text = format_summary(summary)
    assert f"{win['rate']:.3f} [{win['ci95'][0]:.3f}, {win['ci95'][1]:.3f}] of {win['n']} pairs" in text
    assert "LLaMA-30b 0.97" in text and "LLaMA-65b 0.92" in text and "Berglund et al. 2023" in text


def test_headline_is_top1_among_controls_with_its_interval(run):
    """The top-1 rate and its 95% interval, recomputed from pairs.csv (rank 1 of K+1): Wilson's interval of the
    0/1 outcomes (probes.stats.rate_ci95); rank and margin have Student's t intervals around their means; each
    clustered by family (a child asked for its mother and its father, parents asked for their one child)."""
    summary, out = run
    pairs = pd.read_csv(out / "pairs.csv")
    for name, row in summary["directions"].items():
        first = (pairs[f"{name}_rank"].dropna() == 1).astype(float)
        assert row["top1_rate"] == pytest.approx(first.mean())
        asked = families(pairs)  # a child with its parents and siblings: one cluster
        assert row["top1_rate_ci95"] == rate_ci95(first, asked[first.index])
        margin = pairs[f"{name}_margin"].dropna()
        e = margin - margin.mean()  # cluster-robust (CR1): the residuals summed per person, C / (C - 1)
        clusters = e.groupby(asked[margin.index]).sum()
        c, n = len(clusters), len(margin)
        variance = max(margin.var() / n, c / (c - 1) * (clusters ** 2).sum() / n ** 2)  # never below unclustered
        half = t_quantile(0.975, c - 1) * variance ** 0.5
        assert row["margin_ci95"] == pytest.approx([margin.mean() - half, margin.mean() + half])
        for part in (row, row["no_shared_surname"]):  # a mean rank's interval stays among the ranks there are
            low, high = part["mean_rank_ci95"]
            assert 1 <= low <= part["mean_rank"] <= high <= K + 1
        assert row["chance_top1_rate"] == pytest.approx(1 / (K + 1))
    assert "top1_rate" in summary["headline"] and "greedy exact match" in summary["headline"]


def test_bad_input_gets_a_clear_error(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("child,parent\nAnn,Bea\n", encoding="utf-8")
    missing = [c for c in COLUMNS if c not in ("child", "parent")]
    with pytest.raises(FactError, match=rf"missing column\(s\) {missing!r}".replace("[", r"\[").replace("]", r"\]")):
        check_asymmetry("smollm2-135m", bad, tmp_path / "out", progress=False)
    with pytest.raises(PretrainedLoadError, match="neither an existing path nor a model in the local cache"):
        check_asymmetry(tmp_path / "no-such-model", REAL_CSV, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="templates must be one of"):
        check_asymmetry("smollm2-135m", REAL_CSV, tmp_path / "out", templates="chat", progress=False)
    from models.transformer import build_model  # a TransformerLens model built without a tokenizer

    untokenized = build_model("tiny", 64)
    assert untokenized.tokenizer is None
    with pytest.raises(ValueError, match="this model has no tokenizer"):  # an AttributeError had come from deep inside
        check_asymmetry(untokenized, REAL_CSV, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_too_many_controls_are_refused_naming_the_file_line(tmp_path):
    """The refusal named "fact 2", a place among the question's parent type, and no file; it says what to change
    by the command's option."""
    from analyses.asymmetry import check_inputs

    path = tmp_path / "pairs.csv"
    path.write_text(",".join(COLUMNS) + "\nAnn Bo,Eve Bo,mother,,True\nCy Dee,Gil Dee,father,,True\n"
                    "Di Ray,Fay Ray,mother,,True\nEd Fox,Hal Fox,father,,True\n")
    with pytest.raises(FactError, match=rf"--controls 2: {path}:2: 2 controls asked for 'Ann Bo' \(forward\), but "
                                        r"the pairs hold only 1 wrong answer\(s\) among mothers: ask for fewer "
                                        r"\(--controls; n_controls in Python\) or give more pairs of that parent type"):
        check_inputs(path, n_controls=2)


def test_a_mean_ranks_interval_stays_among_the_ranks_there_are():
    """Two children ranked 1 and 16 of 16: Student's t over 2 statements reaches far past both ends (±95 around
    8.5); the interval is cut to [1, K + 1]. The margin, which has no bounds, keeps its width."""
    from analyses.asymmetry import summarize_directions

    rows = {"child": ["Ann Bo", "Cy Dee"], "parent": ["Eve Bo", "Fay Dee"], "shares_surname": [False, False]}
    for name in ("child_to_parent", "parent_to_child"):
        rows |= {f"{name}_rank": [1, 16], f"{name}_margin": [2.0, -3.0], f"{name}_correct": [False, False],
                 f"{name}_logprob": [-5.0, -9.0]}
    stats = summarize_directions(pd.DataFrame(rows), n_controls=15)["child_to_parent"]
    assert stats["mean_rank"] == 8.5 and stats["mean_rank_ci95"] == [1.0, 16.0]
    low, high = stats["margin_ci95"]
    assert low < -30 and high > 30  # a margin has no bounds to cut to
    assert stats["no_shared_surname"]["mean_rank_ci95"] == [1.0, 16.0]
    assert stats["accuracy"] == 0.0 and stats["top1_rate"] == 0.5 and 0 < stats["top1_rate_ci95"][0] < 0.5


def test_three_pairs_give_a_summary_and_a_figure_with_no_whisker_where_no_interval(hooked, tmp_path):
    """On 3 pairs parent → child's top-1 is 0 of 3, whose Wilson interval ended 5.6e-17 above 0: the figure's error
    bar came out negative, matplotlib refused it, and the run ended with pairs.csv and no summary. The pairs with
    no surname in common are 1 a direction: no interval, so no whisker (one of length 0 had read as certainty)."""
    summary = check_asymmetry(hooked, REAL_CSV, tmp_path, limit=3, n_controls=31, progress=False)
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "asymmetry.png").is_file()
    rows = summary["directions"]
    assert [rows[name]["top1_rate_ci95"][0] for name in rows if rows[name]["top1_rate"] == 0] == [0.0]
    lonely = rows["child_to_parent"]["no_shared_surname"]
    assert lonely["n"] == 1 and all(math.isnan(end) for end in lonely["margin_ci95"])
    bars = [c for c in asymmetry_bars(summary).axes[2].containers if getattr(c, "errorbar", None)]  # margin panel
    whiskers = [segment for c in bars for segment in c.errorbar.lines[2][0].get_segments()]
    assert sum(bool(np.isnan(segment).all()) for segment in whiskers) == 2  # each direction's lone pair: none
