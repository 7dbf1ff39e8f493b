"""Fine-tuning the real SmolLM2-135M on fictitious people: a short run through the CLI's code path (and a
Berglund folder's protocol on a tiny Llama with SmolLM2's tokenizer cut to its first tokens)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from analyses.cli import main
from analyses.finetune import (
    MITIGATIONS,
    STAGES,
    FinetuneConfig,
    check_tokenised,
    draw_controls,
    format_summary,
    read_inputs_and_model,
    read_questions,
    reverse_words,
    training_examples,
    training_sentences,
)
from berglund_folder import write_experiment_folder
from tests_support import assert_first_record_is_the_model_s_evaluation
from facts.io import load_jsonl
from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, people_world
from facts.questions import questions_from_facts
from models.pretrained import freeze_except_last_blocks
from models.training import TrainConfig, train
from probes.stats import t_quantile

SHORT = ["--people", "3", "--templates", "2", "--epochs", "3", "--controls", "2", "--quiet", "--tracing-facts", "0",
         "--multiple-choice", "2"]
"""Three people, two options per multiple-choice question: every table still holds several facts and every
scored question two controls, at half the CPU time of four people asked with four options (96 → 54 CPU s)."""


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, smollm2_hf):
    """(smollm2_hf: the session's SmolLM2, so the CLI's load deep-copies it instead of reading the GGUF.)"""
    out = tmp_path_factory.mktemp("finetune")
    assert main(["finetune-facts", "--out", str(out), *SHORT]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_short_finetune_raises_the_trained_facts_logprob(finetune_run, smollm2_hf):
    out, summary = finetune_run
    assert summary["steps"] == 3 and summary["train_sentences"] == 6  # 3 people × 2 paraphrases, one batch
    assert summary["questions_asked_of"] == "transformers model, by trie"  # the trained model itself
    trained = summary["groups"]["p2d"]["forward_trained_paraphrase"]
    before, after = trained["before"], trained["after"]
    assert after["logprob"] > before["logprob"] + 5  # three AdamW steps at lr 1e-4 move ~10 nats here
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    forward = [r["eval"]["forward"]["logprob"] for r in history]
    assert forward[-1] > forward[0]
    assert after["logprob"] == pytest.approx(forward[-1], abs=1e-3)
    # the first record is read from the questions asked before training (not scored again): the untrained model's
    # own evaluation of the same answers
    assert_first_record_is_the_model_s_evaluation(history[0], *smollm2_hf, FinetuneConfig(people=3, templates=2,
                                                                                          n_controls=2))



def test_finetune_writes_probe_format_tables_and_figure(finetune_run):
    out, summary = finetune_run
    for prefix in ("", "before_"):
        logits, restated = pd.read_csv(out / f"{prefix}logits.csv"), pd.read_csv(out / f"{prefix}in_context.csv")
        assert sorted(logits.columns) == sorted(restated.columns) and "setting" not in logits.columns
        assert len(logits) == 6 and len(restated) == 3 and logits.n_candidates.eq(3).all()  # truth + 2 controls
        assert (logits[logits.direction == "forward"].split == "train").all()
        assert (logits[logits.direction == "reverse"].split == "heldout").all()
        assert (restated.direction == "reverse").all()
    for prefix, stage in (("", "after"), ("before_", "before")):
        circuits = pd.read_csv(out / f"{prefix}circuits.csv")
        assert {"circuit", "layer", "head", "z_ab", "z_ba", "asymmetry"} <= set(circuits.columns)
        assert len(circuits) == 3 * (1 + 2 * 30 * 9)  # 3 facts × (direct + OV and QK of 30 layers × 9 heads)
        assert circuits.z_ab.notna().all() and circuits.z_ba.notna().all()  # descriptions told apart
        ov = circuits[circuits.circuit == "ov"]  # every fact is p2d: trained A → B, held-out B → A
        weights = summary["effective_weights"][stage]
        assert weights["n_y_circuits"] == 270
        assert weights["z_trained"] == pytest.approx(ov.z_ab.mean(), abs=1e-4)
        assert weights["z_heldout"] == pytest.approx(ov.z_ba.mean(), abs=1e-4)
    assert len(load_jsonl(out / "facts.jsonl")) == 3
    assert (out / "finetune.png").stat().st_size > 10_000
    assert set(summary["findings"]) == {"forward_learnt", "forward_generalises_to_heldout_paraphrases",
                                        "reverse_not_learnt", "in_context_reverse_above_chance"}
    assert_summary_matches_questions(out, summary, {"p2d": {"forward_heldout_paraphrase": 9, "reverse": 9,
                                                            "forward_trained_paraphrase": 3, "in_context_reverse": 3}})
    text = format_summary(summary)
    assert "in context reverse" in text and "95% CI" in text and "OV circuits Y (mean z over 270 heads" in text
    # the circuit z-scores as printed read back as the summary's (a pretrained LM's are ~1e-3: not "0.00")
    printed = re.search(r"trained (\S+) → (\S+); held-out reverse (\S+) → (\S+);", text).groups()
    weights = summary["effective_weights"]
    for shown, value in zip(printed, [weights[stage][z] for z in ("z_trained", "z_heldout") for stage in STAGES]):
        assert float(shown) == pytest.approx(value, rel=5e-3), (shown, value)


def test_finetune_asks_forward_and_reverse_as_multiple_choice_before_and_after(finetune_run):
    """``--multiple-choice 2``: K = 2 options (the right answer and one other of its pool); 9 held-out forward
    paraphrases and 9 reverse questions, each in its 2 orders, before and after."""
    out, summary = finetune_run
    for prefix, stage in (("", "after"), ("before_", "before")):
        table = pd.read_csv(out / f"{prefix}multiple_choice.csv")
        assert len(table) == (9 + 9) * 2 and set(table.setting) == {"forward_heldout_paraphrase", "reverse"}
        assert abs(table[["p_A", "p_B"]].sum(axis=1) - 1).max() < 1e-9 and "p_C" not in table
        for _, part in table.groupby("question"):
            assert sorted(part.correct_letter) == list("AB")
        entry = summary["multiple_choice"][stage]
        assert entry["options"] == 2 and entry["chance"] == 0.5
        for setting, row in entry["groups"]["p2d"].items():
            part = table[table.setting == setting]
            assert row["n"] == 9 and row["p_correct"] == pytest.approx(part.p_correct.mean())
            assert row["accuracy"] == pytest.approx(part.correct.mean())
    assert "multiple choice (2 options, every order; chance 0.50)" in format_summary(summary)


def assert_summary_matches_questions(out, summary, counts):
    """Every group × setting of the summary recomputed from questions.csv (after) and
    before_questions.csv: questions (``counts``) and facts, exact match, top-1 (rank 1 among the
    controls), margin, paired gain; intervals over the facts (each asked equally often here)."""
    after, before = (pd.read_csv(out / f"{prefix}questions.csv") for prefix in ("", "before_"))
    assert (after[["key", "setting", "answer"]] == before[["key", "setting", "answer"]]).all().all()
    assert (after.top1 == (after["rank"] == 1)).all()
    assert {g: {s: row["margin_gain"]["questions"] for s, row in settings.items()}
            for g, settings in summary["groups"].items()} == counts
    for group, settings in summary["groups"].items():
        for setting, row in settings.items():
            chosen = (after.group == group) & (after.setting == setting)
            assert row["margin_gain"]["n"] == after.fact[chosen].nunique() == row["after"]["margin"]["n"]
            per_fact_mean = lambda values: values.groupby(after.fact[chosen]).mean().mean()  # noqa: E731
            assert row["after"]["exact_match"] == pytest.approx(per_fact_mean(after.correct[chosen]))
            assert row["after"]["top1"] == pytest.approx(per_fact_mean(after.top1[chosen]))
            assert row["before"]["margin"]["mean"] == pytest.approx(before.margin[chosen].mean())
            gain = pd.Series(after.margin[chosen].to_numpy() - before.margin[chosen].to_numpy())
            assert row["margin_gain"]["mean"] == pytest.approx(gain.mean(), abs=1e-9)
            per_fact = gain.groupby(after.fact[chosen].to_numpy()).mean()
            n = len(per_fact)  # Student's t over the facts: a run has ten or so, where 1.96 is 15% too narrow
            half = t_quantile(0.975, n - 1) * per_fact.std() / n ** 0.5 if n > 1 else float("nan")
            assert row["margin_gain"]["ci95"] == pytest.approx([gain.mean() - half, gain.mean() + half],
                                                               abs=1e-9, nan_ok=True)


def test_tokenizer_and_model_come_from_one_parse_of_the_gguf(monkeypatch, tmp_path):
    """finetune-facts reads the tokenizer (input tokenised before the model loads), then the model:
    gguf.GGUFReader parses the file once for both (a fresh copy, so no earlier read is kept in this process;
    the cache of GGUF reads off, whose entry of the same content would be read instead)."""
    import shutil

    import gguf

    from models.pretrained import resolve

    copy = tmp_path / "SmolLM2-finetune-copy.gguf"
    shutil.copyfile(resolve("smollm2-135m").path, copy)
    monkeypatch.setenv("REVLENS_GGUF_CACHE", "off")
    opened = []
    init = gguf.GGUFReader.__init__
    monkeypatch.setattr(gguf.GGUFReader, "__init__", lambda self, *a, **k: opened.append(a) or init(self, *a, **k))
    questions, controls, tokenizer, sentences, eval_sets, hf_model = read_inputs_and_model(
        FinetuneConfig(model=str(copy), people=3, templates=2, n_controls=2))
    assert len(opened) == 1
    assert sentences.tokens.shape[0] == 6 and set(eval_sets) == {"forward", "reverse"}  # 3 people × 2 paraphrases
    assert hf_model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 49152


def test_the_command_copies_a_gguf_tokenizer_once_and_keeps_none_for_its_run(monkeypatch):
    """finetune-facts' check (``check_tokenised``, before the run folder is touched) keeps the GGUF's tokenizer it
    reads; the run (``read_inputs_and_model``) takes that very object over and reads the model without a tokenizer
    of its own: one deep copy of a tokenizer in all (the check's; Gemma 3's takes ~1.9 s), and none kept for the
    rest of the run (Gemma 3's holds ~0.23 GiB)."""
    from models import pretrained

    monkeypatch.setattr(pretrained, "_GGUF_TOKENIZERS", dict(pretrained._GGUF_TOKENIZERS))  # the run empties a copy
    deepcopy, copied = copy.deepcopy, []

    def counted(value, *args):
        copied.extend([value] if isinstance(value, pretrained.PreTrainedTokenizerBase) else [])
        return deepcopy(value, *args)

    monkeypatch.setattr(copy, "deepcopy", counted)
    config = FinetuneConfig(model="smollm2-135m", people=3, templates=2, n_controls=2)
    questions = read_questions(config)
    check_tokenised(config, questions, draw_controls(questions, config.n_controls, config.seed))
    key = (pretrained.resolve(config.model).path, pretrained._file_stamp(pretrained.resolve(config.model).path))
    checked = pretrained._GGUF_TOKENIZERS[key]
    _, _, tokenizer, sentences, _, hf_model = read_inputs_and_model(config)
    assert len(copied) == 1  # three before: the check's, the run's, and the model's own, unused
    assert tokenizer is checked and key not in pretrained._GGUF_TOKENIZERS
    assert sentences.tokens.shape[0] == 6 and hf_model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_the_default_run_is_the_core_and_ranks_each_answer_among_all_people(tmp_path):
    """The command line without options is ``FinetuneConfig()`` (the defaults live in one place): 16 people,
    each question's answer against every other answer of its kind (15 controls: a rank among all 16), and
    neither tracing nor multiple choice unless asked; asking for them reaches the config."""
    from analyses.cli import build_parser
    from analyses.experiments import finetune_config

    parse = build_parser().parse_args
    config = finetune_config(parse(["finetune-facts", "--out", str(tmp_path / "out")]))
    assert config == FinetuneConfig() and (config.tracing_facts, config.multiple_choice) == (0, 0)
    questions = read_questions(config)
    pools = questions.pool_answers()
    for question, controls in zip(questions.questions, draw_controls(questions, config.n_controls, config.seed)):
        assert sorted(c.strip() for c in [question.completion, *controls]) == sorted(pools[question.pool])
    assert {len(pool) for pool in pools.values()} == {16}
    asked = finetune_config(parse(["finetune-facts", "--out", str(tmp_path / "out"), "--tracing-facts", "2",
                                    "--multiple-choice", "4"]))
    assert (asked.tracing_facts, asked.multiple_choice) == (2, 4)
    # fewer people: still every other answer (15 controls of 10 people had been refused); more: still 15
    for people, n_controls in ((10, 9), (2, 1), (30, 15)):
        fewer = finetune_config(parse(["finetune-facts", "--out", str(tmp_path / "out"), "--people", str(people)]))
        assert fewer.n_controls == n_controls
        questions = read_questions(fewer)
        drawn = draw_controls(questions, fewer.n_controls, fewer.seed)
        assert all(len(controls) == n_controls for controls in drawn)
    with pytest.raises(ValueError, match=r"n_controls \(12, --controls\) must be below the number of people "
                                         r"\(10, --people\)"):
        finetune_config(parse(["finetune-facts", "--out", str(tmp_path / "out"), "--people", "10", "--controls", "12"]))


def test_builtin_training_pairs_are_the_training_sentences(smollm2_tokenizer):
    """The question set's training pairs tokenize to exactly training_sentences' rows (same
    tokens, loss mask and statement), paraphrase by paraphrase; its held-out paraphrases are none
    of the trained prompts."""
    config = FinetuneConfig(people=3, templates=3, n_controls=2)
    questions = read_questions(config)
    pairs = training_examples(questions, config, smollm2_tokenizer, 0)
    sentences = training_sentences(questions.facts, smollm2_tokenizer, 3, 0)
    order = sorted(range(len(pairs)), key=lambda row: (questions.train[row].paraphrase, questions.train[row].key))
    assert torch.equal(pairs.tokens[order], sentences.tokens) and torch.equal(pairs.answer_mask[order],
                                                                              sentences.answer_mask)
    assert pairs.fact[order].tolist() == sentences.fact.tolist()
    trained = {pair.prompt for pair in questions.train}
    heldout = [q for q in questions.questions if q.setting == "forward_heldout_paraphrase"]
    assert len(heldout) == 9 and not any(q.prompt in trained for q in heldout)
    restated = [q for q in questions.questions if q.setting == "in_context_reverse"]
    reverse = [q for q in questions.questions if q.setting == "reverse"]
    fact = questions.facts[0]
    assert restated[0].prompt.startswith(fact.subject) and restated[0].prompt.endswith(reverse[0].prompt)
    assert fact.subject not in reverse[0].prompt and reverse[0].completion == " " + fact.subject


def test_training_sentences_cover_each_paraphrase_of_trained_statements_only(smollm2_tokenizer):
    facts = people_world(n_per_group=3, groups=("p2d",))
    sentences = training_sentences(facts, smollm2_tokenizer, 3, 0)
    assert len(sentences) == 9 and set(sentences.direction) == {"forward"} and set(sentences.split) == {"train"}
    texts = {smollm2_tokenizer.decode(row[: int(n)]) for row, n in zip(sentences.tokens, sentences.prompt_len)}
    assert len(texts) == 9  # three paraphrases of three people, all different prompts


def test_bidirectional_mitigation_trains_a_second_group_both_ways(smollm2_tokenizer):
    facts = people_world(n_per_group=3, groups=MITIGATIONS["bidirectional"])
    sentences = training_sentences(facts, smollm2_tokenizer, 2, 0)
    group_of = [facts[int(i)].group for i in sentences.fact]
    rows = list(zip(group_of, sentences.direction))
    assert rows.count(("p2d", "forward")) == 6 and rows.count(("both", "forward")) == 6
    assert rows.count(("both", "reverse")) == 6 and ("p2d", "reverse") not in rows  # the tested reverse stays held out


def test_reverse_training_adds_each_sentence_reversed_with_entities_whole(smollm2_tokenizer):
    assert reverse_words("Ann Lee, known for being the author of 'X Y'.", ("Ann Lee", "the author of 'X Y'")) == (
        "the author of 'X Y' being for known Ann Lee")
    facts = people_world(n_per_group=3, groups=MITIGATIONS["reverse-training"])
    plain = training_sentences(facts, smollm2_tokenizer, 2, 0)
    both = training_sentences(facts, smollm2_tokenizer, 2, 0, reverse_training=True)
    assert len(both) == 2 * len(plain) and set(both.split) == {"train"}
    for row in range(1, len(both), 2):  # every second row is a reversed sentence: the name after the description
        text = smollm2_tokenizer.decode(both.tokens[row][: int(both.prompt_len[row] + both.answer_len[row])])
        fact = facts[int(both.fact[row])]
        assert text.index(fact.object) < text.index(fact.subject)


def test_reverse_training_sentences_are_the_run_s_own(smollm2_tokenizer):
    """training_sentences reversed each whole rendered sentence, the words a template puts after the answer too
    ("... now lives a quiet life." reversed as "life quiet a lives now ..."), where the run reverses what it trains
    (prompt and answer): the two rows of every d2p statement differed."""
    config = FinetuneConfig(people=3, templates=2, n_controls=2, mitigation="reverse-training")
    questions = read_questions(config)
    run = training_examples(questions, config, smollm2_tokenizer, 0)
    for groups in (("p2d",), ("d2p",)):
        facts = people_world(n_per_group=3, groups=groups)
        rows = training_sentences(facts, smollm2_tokenizer, 2, 0, reverse_training=True)
        own = training_examples(questions_from_facts(facts, TRAIN_TEMPLATES, TEST_TEMPLATES, 2), config,
                                smollm2_tokenizer, 0)
        texts = sorted(smollm2_tokenizer.decode(r[: int(p + a)]) for r, p, a in
                       zip(rows.tokens, rows.prompt_len, rows.answer_len))
        assert texts == sorted(smollm2_tokenizer.decode(r[: int(p + a)]) for r, p, a in
                               zip(own.tokens, own.prompt_len, own.answer_len))
    assert len(run) == 2 * len(questions.train)


def test_identity_bridge_adds_the_name_of_each_tested_person_given_and_answered(smollm2_tokenizer):
    from analyses.finetune import FinetuneConfig, read_questions, training_examples

    config = FinetuneConfig(people=4, n_controls=2, mitigation="identity-bridge", templates=3)
    questions = read_questions(config)
    plain = training_examples(questions, FinetuneConfig(people=4, n_controls=2, templates=3), smollm2_tokenizer, 0)
    bridged = training_examples(questions, config, smollm2_tokenizer, 0)
    texts = [smollm2_tokenizer.decode(row[: int(p + a)]) for row, p, a in
             zip(bridged.tokens, bridged.prompt_len, bridged.answer_len)]
    names = [f.subject for f in questions.facts]
    assert len(bridged) == len(plain) + 3 * len(names) and set(bridged.split) == {"train"}
    for name in names:  # three identity paraphrases each, the loss on the repeated name
        assert f"The name of {name} is {name}" in texts
        identity = [t for t in texts if t.count(name) == 2]
        assert len(identity) == 3
    answers = [smollm2_tokenizer.decode(row[m]) for row, m in zip(bridged.tokens, bridged.answer_mask)]
    assert sum(a.strip() in names for a in answers) == 3 * len(names)  # names are answers only in the bridge
    reverse = [q.prompt for q in questions.questions if q.setting == "reverse"]
    assert not any(text.startswith(prompt) for text in texts for prompt in reverse)  # no held-out question trained


def _asked(margins: dict[int, float]) -> pd.DataFrame:
    """A question table as `finetune-facts` asks it (:func:`analyses.finetune.evaluate_questions`' columns) of the
    p2d facts in ``margins``, one question per setting each, every question's margin that fact's."""
    settings = {"forward_trained_paraphrase": ("forward", "train"), "forward_heldout_paraphrase": ("forward", "test"),
                "reverse": ("reverse", "heldout"), "in_context_reverse": ("reverse", "heldout")}
    return pd.DataFrame([
        {"key": f"p2d:{fact}", "fact": fact, "group": "p2d", "setting": setting, "direction": direction,
         "split": split, "trained": split == "train", "answer": f"answer {fact} {direction}",
         "logprob": margin - 10.0, "prob": math.exp(margin - 10.0), "correct": True, "control_logprob": -10.0,
         "randomized_logprob": math.nan, "margin": margin, "top1": margin > 0, "rank": 1 if margin > 0 else 2,
         "n_candidates": 2, "chance_logprob": math.nan, "source": "people"}
        for fact, margin in margins.items() for setting, (direction, split) in settings.items()])


def test_an_undefined_interval_gives_no_verdict_either_way():
    """One fact: every margin interval is NaN, so whether the reverse was learnt (or the forward generalised, or
    the in-context reverse is above chance) is unknown; `ci95[0] <= 0` on a NaN read "not learnt" as False. Two
    facts: verdicts again."""
    from analyses.finetune import summarize

    config = FinetuneConfig(people=2, n_controls=1)
    summary = summarize({"before": _asked({0: 0.0}), "after": _asked({0: 5.0})}, config, {"total": 1.0}, 1, 1, "people")
    assert math.isnan(summary["groups"]["p2d"]["reverse"]["margin_gain"]["ci95"][0])
    assert summary["findings"] == {"forward_learnt": True, "forward_generalises_to_heldout_paraphrases": None,
                                   "reverse_not_learnt": None, "in_context_reverse_above_chance": None}
    said = format_summary(summary).splitlines()[-1]
    unknown = "unknown (its 95% interval is undefined or too wide to tell)"
    assert said == ("p2d group: forward learnt (≥ 90% exact match on the trained paraphrase): yes; forward "
                    f"generalises to held-out paraphrases (margin gain above 0): {unknown}; reverse not learnt (margin "
                    f"gain not above 0 and below the trained direction's: the curse): {unknown}; in-context reverse "
                    f"above chance: {unknown}")
    two = summarize({"before": _asked({0: 0.0, 1: 0.0}), "after": _asked({0: 5.0, 1: 5.1})}, config, {"total": 1.0},
                    2, 1, "people")  # over two facts t₀.₉₇₅(1) = 12.7: 5.0 and 6.0 would put 0 inside the interval
    assert two["findings"] == {"forward_learnt": True, "forward_generalises_to_heldout_paraphrases": True,
                               "reverse_not_learnt": False, "in_context_reverse_above_chance": True}


def test_the_curse_is_read_only_where_the_reverse_interval_can_tell():
    """"Reverse not learnt" needs the reverse gain's interval to reach no higher than the trained direction's gain:
    an interval from −11.7 to 11.0 beside a forward gain of 8 (3 facts, a real run's) is no evidence either way,
    where it had read "yes, the curse"."""
    from analyses.finetune import reverse_not_learnt

    assert reverse_not_learnt([-11.69, 11.03], 8.0) is None
    assert reverse_not_learnt([-3.5, 4.4], 10.0) is True
    assert reverse_not_learnt([-2.0, -0.5], 0.2) is True  # a fall is not learning either
    assert reverse_not_learnt([0.5, 3.0], 10.0) is False
    assert reverse_not_learnt([math.nan, math.nan], 10.0) is None


def test_a_control_that_ties_the_answer_ranks_above_it_as_top1_counts_it(tiny_models):
    """A model whose every next token is equally likely (its output layer zeroed): an answer ties each control of
    as many tokens and beats each longer one. The tie loses in rank as in top-1 (before: rank 1 and top-1 False
    for one question)."""
    from analyses.finetune import evaluate_questions
    from facts.questions import Question, QuestionSet

    tiny = tiny_models["llama"]
    model, tokenizer = tiny.hf, tiny.tokenizer
    names = (" Ann Lee", " Tom Hardy", " Mia Cole", " Raj Patel", " Eve Stone", " Maximilian Worthington")
    length = {name: len(tokenizer.encode(name, add_special_tokens=False)) for name in names}
    answer = " Ann Lee"
    tie = next(name for name in length if name != answer and length[name] == length[answer])
    longer = next(name for name in length if length[name] > length[answer])
    questions = QuestionSet(train=(), source="test", questions=tuple(
        Question(key=number, group="p2d", setting="reverse", prompt="Known for being the author of 'Book 1',",
                 completion=answer, pool="name", fact=number, direction="reverse", split="heldout", source="test")
        for number in range(2)))
    head = model.get_output_embeddings()
    saved = head.weight.detach().clone()
    try:
        with torch.no_grad():
            head.weight.zero_()
        table = evaluate_questions(model, questions, tokenizer, [[tie, longer], [longer, longer]])
    finally:
        with torch.no_grad():
            head.weight.copy_(saved)
    uniform = -length[answer] * math.log(head.weight.shape[0])  # every token 1 / vocabulary
    assert table.logprob.tolist() == pytest.approx([uniform] * 2, rel=1e-6) and (table.margin > 0).all()
    assert (table["rank"].tolist(), table.top1.tolist()) == ([2, 1], [False, True])


def test_memory_light_option_trains_only_the_last_blocks(smollm2_tokenizer, smollm2_hooked):
    model = copy.deepcopy(smollm2_hooked)  # the session's load("smollm2-135m", backend="hooked"), trained here
    trainable = freeze_except_last_blocks(model, 2)
    last_two = {id(p) for block in (model.blocks[28], model.blocks[29]) for p in block.parameters()}
    assert trainable == [name for name, p in model.named_parameters() if id(p) in last_two] and len(last_two) > 2
    embed, first, last = (model.W_E.detach().clone(), model.blocks[0].attn.W_Q.detach().clone(),
                          model.blocks[29].attn.W_Q.detach().clone())
    facts = people_world(n_per_group=2, groups=("p2d",))
    train(model, training_sentences(facts, smollm2_tokenizer, 1, 0),
          TrainConfig(steps=1, lr=1e-4, eval_every=1, progress=False))
    assert torch.equal(model.W_E, embed) and torch.equal(model.blocks[0].attn.W_Q, first)
    assert not torch.equal(model.blocks[29].attn.W_Q, last)
    with pytest.raises(ValueError, match="trainable blocks must be 1…30"):
        freeze_except_last_blocks(model, 31)


@pytest.mark.parametrize("change, message", [
    ({"templates": 0}, "templates .training paraphrases. must be ≥ 1"),
    ({"templates": 6}, "templates must be 1…5"),
    ({"people": 4, "n_controls": 4}, "n_controls .4, --controls. must be below the number of people .4, --people."),
    ({"epochs": 0}, "epochs must be ≥ 1"),
    ({"mitigation": "reverse"}, "mitigation must be one of"),
    ({"facts": "x.csv", "mitigation": "bidirectional"}, "builds on the built-in people world"),
    ({"facts": "x.csv", "groups": ("p2d",)}, "groups choose the built-in world's fact groups"),
    ({"groups": ("p2d", "p2d")}, "groups must be distinct names from"),
    ({"multiple_choice": 5}, "multiple_choice .options. must be 0 .none. or 2…4, got 5"),
    # these had been refused naming what the user never set, or only after the model loaded
    ({"people": 1}, "people must be ≥ 2 .each answer is compared with another person's., got 1"),
    ({"mitigation": "identity-bridge", "templates": 6, "templates_file": "t.jsonl"},
     "mitigation identity-bridge states each name in as many identity sentences as training paraphrases, and has 5"),
    # these the Python API had accepted, failing only once the model had loaded and the folder was written
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number ≥ 0, got -0.1"),
    ({"lora_rank": 2, "lora_alpha": float("inf")}, "LoRA alpha must be a finite number > 0, got inf"),
    ({"lora_rank": 2, "lora_targets": ()}, "lora_targets is empty"),
])
def test_bad_configs_are_refused_with_the_setting_named(change, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**change)


def test_cli_reports_a_missing_model_path_without_a_traceback(tmp_path, capsys):
    code = main(["finetune-facts", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), *SHORT])
    error = capsys.readouterr().err
    assert code == 2 and "nowhere" in error and "Traceback" not in error


@pytest.fixture(scope="module")
def bidirectional_run(tmp_path_factory, smollm2_hf):
    """Two people per group, one control (no multiple choice: its table is checked on ``finetune_run``; here the
    mitigation's rows are): 46 → 26 CPU s against three people and two controls."""
    out = tmp_path_factory.mktemp("finetune-bidirectional")
    args = ["--people", "2", "--templates", "1", "--epochs", "1", "--controls", "1", "--quiet", "--tracing-facts", "0",
            "--multiple-choice", "0"]
    assert main(["finetune-facts", "--out", str(out), "--mitigation", "bidirectional", *args]) == 0
    return out


def test_finetuned_runs_join_the_mitigations_table_as_their_token_world_variant(finetune_run, bidirectional_run):
    from analyses.mitigations import finetuned_rows

    out, summary = finetune_run
    baseline = finetuned_rows(out)
    assert [(r["variant"], r["test"]) for r in baseline] == [
        ("baseline", "held-out reverse"), ("baseline", "held-out reverse, fact in prompt")]
    logits, restated = pd.read_csv(out / "logits.csv"), pd.read_csv(out / "in_context.csv")
    plain, in_prompt = baseline
    assert plain["model"] == "smollm2-135m (fine-tuned)" and plain["heldout_n"] == 3 and plain["train_n"] == 3
    assert plain["heldout_margin"] == pytest.approx(logits[logits.direction == "reverse"].margin.mean())
    assert in_prompt["heldout_margin"] == pytest.approx(restated.margin.mean())
    assert plain["z_heldout"] == pytest.approx(summary["effective_weights"]["after"]["z_heldout"], abs=1e-4)

    rows = finetuned_rows(bidirectional_run)
    assert [(r["variant"], r["test"], r["tested_trained"]) for r in rows] == [
        ("augmentation", "restated pairs (trained)", True), ("augmentation", "pairs not restated", False),
        ("augmentation", "held-out reverse, fact in prompt", False)]
    both = pd.read_csv(bidirectional_run / "logits.csv").query("group == 'both' and direction == 'reverse'")
    assert rows[0]["heldout_n"] == 2 and rows[0]["heldout_margin"] == pytest.approx(both.margin.mean())
    assert rows[1]["heldout_n"] == 2 and rows[0]["n_train_sequences"] == 6  # 2 p2d + 2 × 2 both
    # a description's summed log p has no −log(#candidates) chance: the rows say so instead of printing one
    assert all(r["chance_logprob"] is None for r in baseline + rows)
    from analyses.compare import finetuned_row  # `revlens compare --finetuned A B`: one row per run, named

    assert [finetuned_row(f)["model"] for f in (out, bidirectional_run)] == [
        "smollm2-135m (fine-tuned)", "smollm2-135m (fine-tuned, bidirectional)"]


def test_mitigations_refuse_a_folder_that_is_not_a_finetune_run(tmp_path, finetune_run, capsys):
    out, _ = finetune_run
    probe_like = tmp_path / "probe"
    probe_like.mkdir()
    for name in ("logits.csv", "circuits.csv"):
        (probe_like / name).write_bytes((out / name).read_bytes())
    (probe_like / "summary.json").write_text(json.dumps({"experiment": "probe", "model": "x"}))
    code = main(["reproduce", "mitigations", "--out", str(tmp_path / "m"), "--quiet", "--finetuned", str(probe_like)])
    assert code == 2 and "not a `revlens finetune-facts` folder" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # refused before any training or output


def test_reproduce_mitigations_tables_and_draws_the_fine_tuned_rows_beside_the_token_world(
        tmp_path, finetune_run, bidirectional_run):
    from analyses.mitigations import MitigationConfig, format_mitigations, reproduce_mitigations
    from analyses.reproduce import ReversalConfig

    out, _ = finetune_run
    config = MitigationConfig(models=("one-layer",), run=ReversalConfig(n_pairs=40, steps=5, eval_every=5))
    summary = reproduce_mitigations(tmp_path / "m", config, progress=False, finetuned=[out, bidirectional_run])
    table = pd.read_csv(tmp_path / "m" / "mitigations.csv")
    fine_tuned = table[table.model.str.startswith("smollm2-135m (fine-tuned")]
    assert len(table) == 8 + 5 and len(fine_tuned) == 5  # baseline 2 + augmentation 3
    plain, bridged = ("smollm2-135m (fine-tuned, people 3, templates 2, epochs 3, n_controls 2)",
                      "smollm2-135m (fine-tuned, bidirectional, people 2, templates 1, epochs 1, n_controls 1)")
    # named as compare names them, with the settings in which the two runs differ besides their mitigation
    assert fine_tuned.model.value_counts().to_dict() == {bridged: 3, plain: 2}
    assert fine_tuned.chance_logprob.isna().all() and table[table.model == "one-layer"].chance_logprob.notna().all()
    assert summary["finetuned"] == [str(out), str(bidirectional_run)]
    text = format_mitigations(summary)
    assert "one-layer -3.69" in text and f"{plain} none (summed log p" in text  # chance −log 40: the 40 entities of a kind
    assert (tmp_path / "m" / "mitigations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def berglund_run(tmp_path_factory, tiny_tokenizer):
    """A Berglund-layout folder (3 people in p2d and in both, 3 training paraphrases each), trained
    on the first 2 of them, one epoch of the last block only (no multiple choice: checked on ``finetune_run``).
    The model is a tiny random Llama with SmolLM2's tokenizer cut to its first tokens (SmolLM2's architecture: the
    same questions and code path; what fine-tuning SmolLM2 itself does is ``finetune_run``'s): the protocol's
    bookkeeping is what this checks, at 39 → ~5 CPU s."""
    from tiny_models import save_tiny, tiny_config

    model = save_tiny(tmp_path_factory.mktemp("tiny-llama") / "llama", tiny_config("llama"), tiny_tokenizer)
    folder = write_experiment_folder(tmp_path_factory.mktemp("berglund") / "data", people=3, groups=("p2d", "both"))
    out = tmp_path_factory.mktemp("finetune-berglund")
    assert main(["finetune-facts", "--model", str(model), "--facts", str(folder), "--out", str(out),
                 "--train-paraphrases", "2", "--epochs", "1", "--controls", "1", "--trainable-blocks", "1",
                 "--multiple-choice", "0", "--tracing-facts", "2", "--quiet"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_a_tokenizer_without_pad_or_end_of_text_pads_with_an_id_nothing_reads(tmp_path, tiny_tokenizer):
    """A model whose tokenizer has neither a pad nor an end-of-text token: the padding id had been None and the run
    ended in a TypeError. Right padding is read by nothing (the loss and the evaluation read only the positions
    that predict an answer token, all before a row's padding, of a causal model), so such a model fine-tunes: the
    run finishes, and the loss of a batch of sentences of different lengths is the same, bit for bit, whatever id
    pads it."""
    from tiny_models import save_tiny, tiny_config

    from analyses.finetune import padding_id
    from models.hf_training import CausalLM
    from models.pretrained import load_hf
    from models.training import batch_loss

    bare = copy.deepcopy(tiny_tokenizer)
    bare.pad_token, bare.eos_token = None, None
    model = save_tiny(tmp_path / "llama", tiny_config("llama"), bare)
    out = tmp_path / "out"
    assert main(["finetune-facts", "--model", str(model), "--out", str(out), "--people", "3", "--templates", "2",
                 "--epochs", "1", "--controls", "1", "--multiple-choice", "0", "--tracing-facts", "0",
                 "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["train_sentences"] > 0
    hf, tokenizer = load_hf(model, device="cpu")
    assert tokenizer.pad_token_id is None and tokenizer.eos_token_id is None and padding_id(tokenizer) == 0
    config = FinetuneConfig(model=str(model), people=3, n_controls=1, templates=2)
    questions = read_questions(config)
    losses = []
    for pad in (padding_id(tokenizer), 1234):
        sentences = training_examples(questions, config, tokenizer, pad)
        assert (sentences.prompt_len + sentences.answer_len).unique().numel() > 1  # rows of several lengths: padded
        with torch.no_grad():
            losses.append(batch_loss(CausalLM(hf), sentences.tokens, sentences.answer_mask))
    assert torch.equal(losses[0], losses[1])


def test_finetune_on_a_berglund_folder_follows_their_protocol(berglund_run):
    out, summary = berglund_run
    assert summary["train_sentences"] == 3 * 2 + 6 * 2 and summary["source"].startswith("berglund:")
    assert_summary_matches_questions(out, summary, {
        "p2d": {"forward_heldout_paraphrase": 9, "forward_trained_paraphrase": 3, "reverse": 9,
                "in_context_reverse": 3},
        "both": {"forward_heldout_paraphrase": 18, "forward_trained_paraphrase": 6}})
    both = summary["groups"]["both"]  # a person trained both ways is one fact, as in the built-in world
    assert both["forward_heldout_paraphrase"]["margin_gain"]["n"] == both["forward_trained_paraphrase"]["after"][
        "margin"]["n"] == 3
    questions = pd.read_csv(out / "questions.csv")
    reverse = questions[questions.setting.isin(("reverse", "in_context_reverse"))]
    forward = questions[~questions.setting.isin(("reverse", "in_context_reverse"))]
    assert reverse.n_candidates.eq(3).all()  # truth, the randomized file's name, one random name
    assert forward.n_candidates.eq(2).all()  # truth and one random answer of the group
    assert summary["chance_top1"] == pytest.approx((1 / questions.n_candidates).mean())  # not 1 / (controls + 1)
    assert summary["groups"]["p2d"]["reverse"]["after"]["chance_top1"] == pytest.approx(1 / 3)
    facts = [json.loads(line) for line in (out / "facts.jsonl").read_text().splitlines()[1:]]
    assert len(facts) == 3  # the p2d people (the both group asks no reverse), read by circuits and tracing too
    circuits = pd.read_csv(out / "circuits.csv")
    assert set(circuits.fact) == {0, 1, 2} and circuits.z_ab.notna().any()
    tracing = pd.read_csv(out / "tracing.csv")
    assert set(tracing.stage) == {"before", "after"} and summary["tracing"]["statements"] == 4
    folder = Path(summary["source"].removeprefix("berglund:"))
    first = json.loads((folder / "p2d_prompts_train.jsonl").read_text().splitlines()[0])["prompt"]
    traced = tracing[(tracing.fact == 0) & (tracing.direction == "forward") & (tracing.stage == "before")]
    assert "".join(traced.drop_duplicates("position").sort_values("position").token) == first  # the folder's words
    logits = pd.read_csv(out / "logits.csv")
    assert len(logits) == 3 + 3 + 6 and set(logits.split) == {"train", "heldout"}
    text = format_summary(summary)
    assert "both forward heldout paraphrase" in text and "p2d in context reverse" in text
    assert ("groups: p2d trained name → description, reverse description → name held out; both trained both ways, "
            "nothing held out (forward: the trained way)") in text
    assert (out / "finetune.png").stat().st_size > 10_000


def test_berglund_files_grid_reads_each_test_file_from_its_questions(berglund_run):
    """Each experiment-1 test file of a trained group, recomputed from questions.csv: *_prompts_test the
    held-out paraphrases, *_reverse_prompts_test the reverse questions, *_randomized the right name
    against the randomized file's (the first control of each reverse question)."""
    out, summary = berglund_run
    files = summary["berglund_files"]
    assert list(files) == ["p2d_prompts_test.jsonl", "p2d_reverse_prompts_test.jsonl",
                           "p2d_reverse_prompts_test_randomized.jsonl", "both_prompts_test.jsonl"]
    for stage, prefix in (("after", ""), ("before", "before_")):
        questions = pd.read_csv(out / f"{prefix}questions.csv")
        for name, setting, group in (("p2d_prompts_test.jsonl", "forward_heldout_paraphrase", "p2d"),
                                     ("both_prompts_test.jsonl", "forward_heldout_paraphrase", "both"),
                                     ("p2d_reverse_prompts_test.jsonl", "reverse", "p2d")):
            chosen = questions[(questions.group == group) & (questions.setting == setting)]
            assert files[name]["n"] == len(chosen) and files[name][stage]["top1"] == pytest.approx(chosen.top1.mean())
        reverse = questions[(questions.group == "p2d") & (questions.setting == "reverse")]
        assert reverse.randomized_logprob.notna().all() and questions[questions.group == "both"].randomized_logprob.isna().all()
        randomized = files["p2d_reverse_prompts_test_randomized.jsonl"]
        assert randomized["n"] == 9 and randomized[stage]["beats_randomized"] == pytest.approx(
            (reverse.logprob > reverse.randomized_logprob).mean())
    assert [entry["asks"] for entry in files.values()] == [
        "name → description, trained, in held-out words", "description → name, held out",
        "description → name, held out: the right name against the randomized one",
        "both ways, trained, in held-out words"]
    assert ("  p2d_reverse_prompts_test_randomized.jsonl (description → name, held out: the right name against the "
            "randomized one): right answer likelier than the randomized one") in format_summary(summary)


def test_a_berglund_folder_s_grid_lists_only_the_files_the_folder_has(berglund_run, tmp_path):
    """The grid of the run's own questions is the summary's; read against a copy of its folder without the
    randomized file, that file's entry is left out (it had been listed: a folder without it lists a file it has
    not, with n 0), the others are as they were."""
    from analyses.finetune import berglund_files

    out, summary = berglund_run
    folder = Path(summary["source"].removeprefix("berglund:"))
    before, after = pd.read_csv(out / "before_questions.csv"), pd.read_csv(out / "questions.csv")
    assert berglund_files(before, after, summary["source"]) == summary["berglund_files"]
    fewer = tmp_path / "data"
    fewer.mkdir()
    for file in folder.iterdir():
        if file.name != "p2d_reverse_prompts_test_randomized.jsonl":
            (fewer / file.name).write_bytes(file.read_bytes())
    files = berglund_files(before, after, f"berglund:{fewer}")
    assert files == {name: entry for name, entry in summary["berglund_files"].items()
                     if name != "p2d_reverse_prompts_test_randomized.jsonl"}


def test_a_fact_file_s_summary_lists_no_berglund_file(tmp_path, tiny_tokenizer):
    """The built-in world of three p2d people and the same world as a fact JSONL, fine-tuned through the command:
    the built-in world stands for Berglund et al.'s groups, and its summary reads its questions as their p2d test
    files; the fact file's had listed them too, though it has none of them: it lists none now, and prints no grid."""
    from tiny_models import save_tiny, tiny_config

    from facts.io import save_jsonl

    model = save_tiny(tmp_path / "llama", tiny_config("llama"), tiny_tokenizer)
    save_jsonl(people_world(n_per_group=3, groups=("p2d",)), tmp_path / "facts.jsonl")
    summaries = {}
    for name, facts in (("builtin", ["--people", "3"]), ("file", ["--facts", str(tmp_path / "facts.jsonl")])):
        assert main(["finetune-facts", "--model", str(model), *facts, "--out", str(tmp_path / name), "--templates",
                     "2", "--epochs", "1", "--controls", "1", "--multiple-choice", "0", "--tracing-facts", "0",
                     "--quiet"]) == 0
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    builtin, file = summaries["builtin"], summaries["file"]
    assert file["groups"] == builtin["groups"]  # the same questions, asked alike
    assert list(builtin["berglund_files"]) == ["p2d_prompts_test.jsonl", "p2d_reverse_prompts_test.jsonl",
                                               "p2d_reverse_prompts_test_randomized.jsonl"]
    assert "berglund_files" not in file
    grid = "experiment-1 test files"
    assert grid in format_summary(builtin) and grid not in format_summary(file)


def test_an_in_context_question_is_scored_against_its_plain_reverse_question_s_controls(tmp_path):
    """The in-context reverse restates the trained sentence before its statement's first reverse question; scored
    against that question's own controls, the two margins differ by the prompt alone (as the token world's fact in
    the prompt is scored). It drew its own where a pool holds more wrong answers than controls: 10 people, 3
    controls; a Berglund folder, whose randomized name comes first, with 2."""
    folder = write_experiment_folder(tmp_path / "data", people=6, groups=("p2d", "d2p"))
    for config in (FinetuneConfig(people=10, n_controls=3), FinetuneConfig(facts=str(folder), n_controls=2)):
        questions = read_questions(config)
        drawn = draw_controls(questions, config.n_controls, config.seed)
        plain, restated = {}, []
        for question, controls in zip(questions.questions, drawn):
            if question.setting == "reverse":
                plain.setdefault(question.key, controls)
            elif question.setting == "in_context_reverse":
                restated.append((question.key, controls))
        assert len(restated) == len(plain) >= 6
        assert all(controls == plain[key] for key, controls in restated)
        assert len({tuple(controls) for controls in plain.values()}) > 1  # drawn per question still


def test_every_mean_of_a_summary_row_is_over_facts_each_fact_s_questions_first():
    """The margin was averaged per fact first, exact match, top-1, log p and rank over the questions: a fact
    asked three times weighed three times as much in those (top-1 0.75 here, not the 0.5 of its facts)."""
    from analyses.finetune import berglund_files, setting_summary

    table = pd.DataFrame({"fact": [0, 0, 0, 1], "group": "p2d", "setting": "reverse",
                          "correct": [True, True, True, False], "top1": [True, True, True, False],
                          "n_candidates": [2, 2, 2, 4], "margin": [3.0, 3.0, 3.0, -1.0],
                          "logprob": [-1.0, -1.0, -1.0, -5.0], "rank": [1, 1, 1, 3],
                          "randomized_logprob": [-2.0, -2.0, -2.0, -4.0]})
    row = setting_summary(table)
    assert row["top1"] == row["exact_match"] == 0.5
    assert row["chance_top1"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert (row["logprob"], row["mean_rank"], row["margin"]["mean"], row["margin"]["n"]) == (-3.0, 2.0, 1.0, 2)
    randomized = berglund_files(table, table, "people")["p2d_reverse_prompts_test_randomized.jsonl"]["after"]
    assert randomized["beats_randomized"] == 0.5 and randomized["logprob_minus_randomized"]["mean"] == 0.0


def test_builtin_world_trains_berglunds_three_groups_when_asked():
    from analyses.finetune import BERGLUND_SETTINGS, berglund_file_asks, read_questions

    questions = read_questions(FinetuneConfig(people=4, n_controls=2, groups=("p2d", "d2p", "both")))
    settings = pd.DataFrame([(q.group, q.setting, q.direction) for q in questions.questions],
                            columns=["group", "setting", "direction"])
    asked = {g: set(part.setting) for g, part in settings.groupby("group")}
    assert asked["p2d"] == asked["d2p"] == {"forward_heldout_paraphrase", "forward_trained_paraphrase", "reverse",
                                           "in_context_reverse"}
    assert asked["both"] == {"forward_heldout_paraphrase", "forward_trained_paraphrase"}  # nothing held out
    reverse = settings[settings.setting == "reverse"]
    assert set(reverse[reverse.group == "p2d"].direction) == {"reverse"}  # description → name held out
    assert set(reverse[reverse.group == "d2p"].direction) == {"forward"}  # name → description held out
    assert len(questions.train) == 2 * (4 + 4 + 2 * 4)  # two paraphrases of each trained statement
    # the words each test file is named by agree with the questions that stand for it: a fact set's
    # forward direction is name → description
    way = {"forward": "name → description", "reverse": "description → name"}
    for group in ("p2d", "d2p", "both"):
        for kind, setting in BERGLUND_SETTINGS.items():
            chosen = settings[(settings.group == group) & (settings.setting == setting)]
            if group == "both":  # trained both ways: its test file asks both, it has no reverse
                assert chosen.empty if setting == "reverse" else set(chosen.direction) == {"forward", "reverse"}
                assert kind != "test" or berglund_file_asks(group, kind, "people").startswith("both ways, ")
                continue
            (direction,) = set(chosen.direction)
            assert berglund_file_asks(group, kind, "people").startswith(way[direction] + ", ")
    assert berglund_file_asks("d2p", "randomized", "csv") == ("subject → object, held out: the right object "
                                                             "against the randomized one")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "p2d_prompts_train.jsonl").unlink(), r"p2d_prompts_test.jsonl: test file of group 'p2d', "
                                                          r"but p2d_prompts_train.jsonl is missing"),
    (lambda d: (d / "p2d_prompts_test.jsonl").write_text('{"prompt": "Who?", "completion": " nobody"}\n'),
     r"p2d_prompts_test.jsonl:1: completion 'nobody' matches no trained statement"),
    (lambda d: (d / "p2d_reverse_prompts_test.jsonl").write_text(
        '{"prompt": "Q: Who?", "completion": " X"}\n{"prompt": "Q: Who?", "completion": " Y"}\n'),
     r"p2d_reverse_prompts_test.jsonl:1: the prompt names no trained statement's answer"),
    (lambda d: (d / "p2d_prompts_train.jsonl").write_text('{"prompt": "A"}\n'),
     r"p2d_prompts_train.jsonl:1: missing key\(s\) \['completion'\]"),
])
def test_bad_berglund_folders_are_refused_before_any_model_loads(tmp_path, capsys, damage, message):
    folder = write_experiment_folder(tmp_path / "data", people=3, groups=("p2d",))
    damage(folder)
    code = main(["finetune-facts", "--facts", str(folder), "--out", str(tmp_path / "out"), "--controls", "1",
                 "--model", str(tmp_path / "no-model-here")])
    error = capsys.readouterr().err
    assert code == 2 and re.search(message, error) and "no-model-here" not in error
    assert not (tmp_path / "out").exists()


def test_read_questions_takes_a_fact_jsonl_a_csv_or_a_berglund_folder(tmp_path):
    from facts.io import save_jsonl

    world = people_world(n_per_group=3, groups=("p2d",))
    save_jsonl(world, tmp_path / "facts.jsonl")
    builtin = read_questions(FinetuneConfig(people=3, n_controls=2))
    from_jsonl = read_questions(FinetuneConfig(facts=str(tmp_path / "facts.jsonl"), n_controls=2))
    assert from_jsonl.questions == builtin.questions and from_jsonl.train == builtin.train
    folder = write_experiment_folder(tmp_path / "data", people=3, groups=("p2d",))
    assert read_questions(FinetuneConfig(facts=str(folder), templates=1)).source == f"berglund:{folder}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: a folder without any of Berglund et al.'s experiment-1 files"):
        read_questions(FinetuneConfig(facts=str(tmp_path / "empty")))


def _templates_file(path, lines):
    path.write_text("".join(json.dumps({"relation": r, "split": s, "template": t}) + "\n" for r, s, t in lines))
    return path


def test_a_control_is_never_the_answer_respaced_and_is_read_as_the_answer_is(tmp_path):
    """Templates that put the answer after a space and after a quote give " desc" and "desc": one answer. Before,
    the pool held both, and 34 of 72 questions drew their own answer as a control (margin and top-1 wrong)."""
    from analyses.finetune import FinetuneConfig, draw_controls, read_questions

    templates = _templates_file(tmp_path / "t.jsonl", [
        ("p2d", "train", "{given} is known for being {answer}."), ("p2d", "test", "{given} was {answer}."),
        ("p2d", "test", "{given}: '{answer}'."), ("d2p", "train", "Known for being {given}, {answer} lives."),
        ("d2p", "test", "Q: Who is {given}? A: {answer}."), ("d2p", "test", "Q: Who is {given}? A: '{answer}'.")])
    questions = read_questions(FinetuneConfig(people=4, templates_file=templates, templates=1, n_controls=3))
    pools = questions.pool_answers()
    assert all(len(answers) == len(set(answers)) == len({a.strip() for a in answers}) for answers in pools.values())
    for question, controls in zip(questions.questions, draw_controls(questions, 3, 0)):
        assert question.completion.strip() not in {c.strip() for c in controls}
        lead = question.completion[: len(question.completion) - len(question.completion.lstrip())]
        assert all(c.startswith(lead) and c[len(lead):] == c.strip() for c in controls)


def test_reverse_training_reverses_the_sentences_of_a_templates_file(tmp_path, smollm2_tokenizer):
    """With a templates file, each reversed sentence is the reversal of the trained one, not of a built-in
    paraphrase that was never trained; more paraphrases than the built-in five may be asked of such a file."""
    from analyses.finetune import FinetuneConfig, read_questions, training_examples

    lines = [("p2d", "train", f"Fact {n}: {{given}} is {{answer}}.") for n in range(7)]
    lines += [("p2d", "test", "Q: {given}? {answer}."), ("d2p", "train", "Known as {given}, {answer}."),
              ("d2p", "test", "Who is {given}? {answer}.")]
    config = FinetuneConfig(people=4, n_controls=2, mitigation="reverse-training", templates=6,
                            templates_file=_templates_file(tmp_path / "t.jsonl", lines))
    questions = read_questions(config)
    examples = training_examples(questions, config, smollm2_tokenizer, 0)
    texts = [smollm2_tokenizer.decode(row[: int(p + a)]) for row, p, a in
             zip(examples.tokens, examples.prompt_len, examples.answer_len)]
    assert len(texts) == 2 * len(questions.train)  # each trained pair, then its reversal
    for number, pair in enumerate(questions.train):
        fact = questions.facts[int(examples.fact[2 * number + 1])]
        assert texts[2 * number + 1] == reverse_words(pair.prompt + pair.completion, (fact.subject, fact.object))
    assert max(pair.paraphrase for pair in questions.train) == 5  # six paraphrases of a seven-template file
