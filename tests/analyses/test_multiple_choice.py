"""Multiple choice: prompts (facts.questions), letter probabilities (probes.multiple_choice) and the
table (analyses.multiple_choice), on a tiny random Llama with SmolLM2's tokenizer (cut to its first tokens): its
HookedTransformer scores the letters, its transformers model checks them."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from analyses.multiple_choice import debiased_choices, multiple_choice_summary, multiple_choice_table, options_count
from facts.questions import Question, QuestionSet, multiple_choice_orders, multiple_choice_prompt
from probes.multiple_choice import letter_probabilities, letter_tokens

NAMES = (" Ann Lee", " Tom Hardy", " Mia Cole", " Raj Patel", " Eve Stone")


def question(number: int, setting: str = "reverse") -> Question:
    return Question(key=number, group="p2d", setting=setting, prompt=f"Known for being the author of 'Book {number}',",
                    completion=NAMES[number], pool="name", fact=number, direction="reverse", split="heldout",
                    source=f"test:{number}")


def test_every_order_puts_the_right_answer_once_under_each_letter():
    asked = multiple_choice_orders(question(0), NAMES[1:4], seed=0)
    assert [a.letters[a.correct] for a in sorted(asked, key=lambda a: a.correct)] == list("ABCD")
    for a in asked:
        assert a.options[a.correct] == NAMES[0] and sorted(a.options) == sorted(NAMES[:4])
        assert f"\n{a.letters[a.correct]}. {NAMES[0].strip()}\n" in a.prompt and a.prompt.endswith("\nAnswer:")
    assert len({a.prompt for a in asked}) == 4
    assert multiple_choice_orders(question(0), NAMES[1:4], seed=0) == asked  # seeded
    with pytest.raises(ValueError, match="must differ"):
        multiple_choice_orders(question(0), (NAMES[1], NAMES[1]), seed=0)
    with pytest.raises(ValueError, match="2…4 options"):
        multiple_choice_prompt("x", NAMES)


def test_no_option_is_another_right_answer_to_the_same_question(tiny_models):
    """A prompt with two right answers (a parent of two children: two facts, one question) was offered the other
    right answer as a wrong option, which took probability from the "right" letter. It never is; a question
    left with fewer wrong answers asks fewer options, as a small pool does (checked before anything runs)."""
    from analyses.multiple_choice import multiple_choice_prompts

    twins = tuple(Question(key=i, group="p2d", setting="reverse", prompt="Zoe Park's child is", completion=NAMES[i],
                           pool="name", fact=i, direction="reverse", split="heldout", source=f"test:{i}")
                  for i in (1, 2))
    questions = QuestionSet(train=(), questions=(question(0), *twins, question(3), question(4)), source="test")
    for seed in range(8):
        asked = multiple_choice_prompts(questions, tiny_models["llama"].tokenizer, k=3, seed=seed)
        for record in (r for r in asked.records if r["fact"] in (1, 2)):  # the two questions of one prompt
            options = {record[f"option_{letter}"] for letter in asked.letters}
            assert not {NAMES[1].strip(), NAMES[2].strip()} <= options, record
    fewer = QuestionSet(train=(), questions=(question(0), *twins, question(3)), source="test")
    assert options_count(fewer, 4) == 3  # two wrong options for the twins' prompt: K is 3, as for a small pool
    assert len(multiple_choice_prompts(fewer, tiny_models["llama"].tokenizer, k=4, seed=0).letters) == 3


def test_letter_probabilities_are_the_softmax_over_the_letters_of_the_model(tiny_models):
    tiny = tiny_models["llama"]
    model, hf, tokenizer = tiny.backends["hooked"], tiny.hf, tiny.tokenizer
    letters = letter_tokens(tokenizer, "ABCD")
    assert letters == (330, 389, 340, 422)  # " A" … " D" in SmolLM2's vocabulary
    asked = multiple_choice_orders(question(1), (NAMES[0], NAMES[2], NAMES[3]), seed=0)
    prompts = [tuple(tokenizer.encode(a.prompt, add_special_tokens=False)) for a in asked]
    probabilities = letter_probabilities(model, prompts + prompts[:1], letters, batch_size=3)
    assert probabilities.shape == (5, 4)
    assert torch.allclose(probabilities.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
    # the same prompt in a batch of another size: the same row to float32 rounding (bitwise where the
    # BLAS's kernel does not depend on the row count: so on an AMD EPYC with oneDNN; MKL on an Intel
    # Xeon with AVX-512 sums a 2-prompt batch in another order than a 3-prompt one, 3e-7 apart)
    assert torch.allclose(probabilities[4], probabilities[0], rtol=0, atol=1e-6)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            logits = hf(torch.tensor([prompt])).logits[0, -1].double()
            assert torch.allclose(probabilities[row], logits[list(letters)].softmax(-1), atol=1e-4)
    with pytest.raises(ValueError, match="splits option letter 'Ω'"):
        letter_tokens(tokenizer, "AΩ")
    # a negative id had read a letter from the vocabulary's end, a repeated one split its probability
    for bad in ((-1, 389), (330, 330), (330, model.cfg.d_vocab)):
        with pytest.raises(ValueError, match=r"distinct token ids in the model's output vocabulary"):
            letter_probabilities(model, prompts, bad)


@pytest.mark.parametrize("architecture, backend", [("llama", "hooked"), ("llama", "bridge"), ("gemma2", "bridge")])
def test_a_shared_stem_runs_once_and_gives_the_whole_prompts_probabilities(architecture, backend, tiny_models):
    """The K orders of a question share their stem ("Complete the sentence: ... ___" and the first letter):
    run once from its cache, the probabilities are the whole prompts' (float32 rounding apart), on either
    backend (a bridge's continuation unembeds its last position alone; the Gemma 2's soft cap too); a stem
    of 0 tokens runs that prompt whole, and a stem that leaves no token to continue is refused."""
    from analyses.multiple_choice import shared_length

    tiny = tiny_models[architecture]
    model, tokenizer = tiny.backends[backend], tiny.tokenizer
    letters = letter_tokens(tokenizer, "ABCD")
    prompts, stems = [], []
    for number, others in ((1, (0, 2, 3)), (4, (0, 1, 2))):
        asked = [tuple(tokenizer.encode(a.prompt, add_special_tokens=False))
                 for a in multiple_choice_orders(question(number), [NAMES[i] for i in others], seed=0)]
        prompts += asked
        stems += [shared_length(asked)] * len(asked)
    assert 10 < stems[0] < min(map(len, prompts[:4])) and prompts[0][:stems[0]] == prompts[3][:stems[0]]
    assert prompts[0][stems[0]] != prompts[1][stems[0]]  # the first option: where the orders part
    whole = letter_probabilities(model, prompts, letters, batch_size=3)
    shared = letter_probabilities(model, prompts, letters, batch_size=3, stems=stems)
    with torch.no_grad():  # the model's own forward pass over each whole prompt, its last position's letters
        own = torch.stack([model(torch.tensor([p]))[0, -1, letters] for p in prompts]).double().softmax(-1)
    assert (whole - own).abs().max() < 1e-6
    assert (shared - whole).abs().max() < 1e-6
    mixed = letter_probabilities(model, prompts, letters, batch_size=3, stems=[0] + stems[1:])
    assert (mixed[0] - whole[0]).abs().max() < 1e-6 and (mixed[1:] - shared[1:]).abs().max() < 1e-6
    with pytest.raises(ValueError, match="must leave 1…"):
        letter_probabilities(model, prompts[:1], letters, stems=[len(prompts[0])])


def test_the_table_moves_the_right_letter_with_the_options_and_summarises_per_question(tiny_models):
    tiny = tiny_models["llama"]
    questions = QuestionSet(train=(), questions=tuple(question(i) for i in range(5)), source="test")
    assert options_count(questions, 4) == 4 and options_count(questions, 3) == 3
    table = multiple_choice_table(tiny.backends["hooked"], questions, tiny.tokenizer, k=4, seed=0)
    assert len(table) == 5 * 4 and set(table.correct_letter) == set("ABCD")
    letters = table[["p_A", "p_B", "p_C", "p_D"]].to_numpy()
    assert abs(letters.sum(1) - 1).max() < 1e-9
    picked = {"A": 0, "B": 1, "C": 2, "D": 3}
    assert (table.p_correct.to_numpy() == letters[range(20), [picked[c] for c in table.correct_letter]]).all()
    assert (table.correct == (table.chosen_letter == table.correct_letter)).all()
    for _, part in table.groupby("question"):  # each question: the right letter under every letter once
        assert sorted(part.correct_letter) == list("ABCD")
    summary = multiple_choice_summary(table)
    row = summary["groups"]["p2d"]["reverse"]
    assert summary["options"] == 4 and summary["chance"] == 0.25 and row["n"] == 5
    assert row["p_correct"] == pytest.approx(table.p_correct.mean()) and row["accuracy"] == pytest.approx(table.correct.mean())
    small = QuestionSet(train=(), questions=tuple(question(i) for i in range(2)), source="test")
    assert options_count(small, 4) == 2
    with pytest.raises(ValueError, match="2…4 options, not 5"):
        options_count(questions, 5)


def test_the_summary_intervals_are_over_facts_not_over_their_paraphrases(tiny_models):
    """Two questions ask each fact: the summary's means and intervals average each fact's questions first, as
    the fine-tuning summary's margins do (counting paraphrases as independent narrowed the interval); a
    probability's interval is cut to [0, 1] (shown on the same table with one fact's probabilities made ten times
    smaller, so that t's interval with one degree of freedom reaches past 0 whatever the random model gives)."""
    import dataclasses

    from probes.stats import ci95_half_width

    tiny = tiny_models["llama"]
    questions = QuestionSet(train=(), source="test", questions=tuple(
        dataclasses.replace(question(i), fact=i // 2) for i in range(4)))
    table = multiple_choice_table(tiny.backends["hooked"], questions, tiny.tokenizer, k=4, seed=0)
    spread = table.assign(p_correct=table.p_correct.where(table.fact == 0, table.p_correct / 10))
    for scored in (table, spread):
        row = multiple_choice_summary(scored)["groups"]["p2d"]["reverse"]
        per_fact = (scored.groupby("question").agg(p=("p_correct", "mean"), fact=("fact", "first"))
                    .groupby("fact").p.mean())
        assert (row["n"], row["facts"]) == (4, 2)
        assert row["p_correct"] == pytest.approx(per_fact.mean(), abs=1e-12)
        half = ci95_half_width(per_fact)
        assert row["p_correct_ci95"] == pytest.approx([max(0.0, per_fact.mean() - half),
                                                       min(1.0, per_fact.mean() + half)], abs=1e-12)
    assert per_fact.mean() - half < 0 and row["p_correct_ci95"][0] == 0.0  # the spread table's interval, cut at 0
    fair = debiased_choices(table).groupby("fact").p_debiased.mean()
    row = multiple_choice_summary(table)["groups"]["p2d"]["reverse"]
    assert row["p_debiased_ci95"] == pytest.approx([max(0.0, fair.mean() - ci95_half_width(fair)),
                                                    min(1.0, fair.mean() + ci95_half_width(fair))], abs=1e-12)


def test_debiasing_cancels_any_letter_prior_exactly_where_the_raw_score_drops_to_chance(tiny_models):
    """Adding a constant to letter tokens' logits in every prompt (the unembedding bias of " A" and " C")
    is a letter prior that ignores the options: the debiased scores do not move (an identity up to the
    model's float32 rounding), while the raw ones do; a prior large enough that the model always says "A" puts the raw
    accuracy at exactly 1 / K and leaves the debiased choice as it was."""
    tiny = tiny_models["llama"]
    model, tokenizer = tiny.backends["hooked"], tiny.tokenizer
    questions = QuestionSet(train=(), questions=tuple(question(i) for i in range(5)), source="test")
    a, c = letter_tokens(tokenizer, "AC")

    def asked(shift_a: float, shift_c: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        saved = model.b_U.detach().clone()
        try:
            with torch.no_grad():
                model.b_U[a] += shift_a
                model.b_U[c] += shift_c
            table = multiple_choice_table(model, questions, tokenizer, k=4, seed=0)
        finally:
            with torch.no_grad():
                model.b_U.copy_(saved)
        return table, debiased_choices(table)

    plain, fair = asked(0.0, 0.0)
    tilted, tilted_fair = asked(3.0, -2.0)
    assert (tilted.p_correct - plain.p_correct).abs().max() > 0.05  # the raw score follows the letters
    # the model computes its logits in float32: the shifted logits round at ~1e-7 relative
    assert (tilted_fair.p_debiased - fair.p_debiased).abs().max() < 1e-5
    assert (tilted_fair.score_gap - fair.score_gap).abs().max() < 1e-5
    assert tilted_fair.correct_debiased.tolist() == fair.correct_debiased.tolist()
    always_a, always_a_fair = asked(60.0, 0.0)
    assert (always_a.chosen_letter == "A").all() and always_a.correct.mean() == 0.25
    assert (always_a_fair.p_debiased - fair.p_debiased).abs().max() < 1e-4
    assert always_a_fair.correct_debiased.tolist() == fair.correct_debiased.tolist()
    summary = multiple_choice_summary(always_a)
    row = summary["groups"]["p2d"]["reverse"]
    assert row["accuracy"] == 0.25 and row["accuracy_debiased"] == pytest.approx(fair.correct_debiased.mean())
    assert summary["letter_prior"]["A"] > 0.999
    # the same K prompts asked starting from another rotation: the same debiased scores
    rolled = pd.concat([part.iloc[[1, 2, 3, 0]] for _, part in plain.groupby("question", sort=False)])
    assert (debiased_choices(rolled)[["p_debiased", "score_gap"]] - fair[["p_debiased", "score_gap"]]).abs().max().max() < 1e-12
    broken = plain.copy()
    broken.loc[broken.index[0], "option_A"] = broken.option_B.iloc[0]
    with pytest.raises(ValueError, match="question 0: its 4 orders do not put each of the 4 options once"):
        debiased_choices(broken)


def test_a_model_of_pure_letter_bias_ties_every_option_and_scores_one_in_k(tiny_models):
    """Letter logits that ignore the prompt (the letters' unembedding columns zeroed, their biases set apart): every
    order gives the letters the same probabilities, so every option's debiased score is the same mean of K log p's,
    summed in another order per option; they differ in the last bit, and the exact comparison named one option the
    winner. Within :func:`analyses.multiple_choice.tied_best`'s tolerance all K tie: 1/K each, as documented."""
    tiny = tiny_models["llama"]
    model, tokenizer = tiny.backends["hooked"], tiny.tokenizer
    questions = QuestionSet(train=(), questions=tuple(question(i) for i in range(5)), source="test")
    letters = list(letter_tokens(tokenizer, "ABCD"))
    saved = model.W_U.detach().clone(), model.b_U.detach().clone()
    try:
        with torch.no_grad():
            model.W_U[:, letters] = 0.0
            model.b_U[letters] = torch.tensor([0.3, -1.2, 2.0, 0.7])
        table = multiple_choice_table(model, questions, tokenizer, k=4, seed=0)
    finally:
        with torch.no_grad():
            model.W_U.copy_(saved[0])
            model.b_U.copy_(saved[1])
    assert table[[f"p_{letter}" for letter in "ABCD"]].nunique().eq(1).all()  # one letter prior, whatever the prompt
    fair = debiased_choices(table)
    assert fair.correct_debiased.tolist() == [0.25] * 5
    assert fair.p_debiased.tolist() == pytest.approx([0.25] * 5, abs=1e-12)
    assert fair.score_gap.abs().max() < 1e-12  # tied, though not always equal to the last bit
    row = multiple_choice_summary(table)["groups"]["p2d"]["reverse"]
    assert row["accuracy_debiased"] == 0.25 and row["accuracy"] == 0.25


def test_probe_asks_a_text_model_its_questions_as_multiple_choice(tiny_models, tmp_path):
    from analyses.probe import PRIOR, format_probe, pretrained_probed, write_probe
    from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, people_world
    from facts.questions import questions_from_facts

    tiny = tiny_models["llama"]
    facts = people_world(n_per_group=3, seed=1, groups=("p2d",))
    questions = questions_from_facts(facts, TRAIN_TEMPLATES, TEST_TEMPLATES, 1)
    probed = pretrained_probed(tiny.backends["hooked"], tiny.tokenizer, "people", {"backend": "hooked"})
    summary = write_probe(probed, facts, tmp_path, n_controls=2, choices=(questions, 4))
    table = pd.read_csv(tmp_path / "multiple_choice.csv")
    assert summary["multiple_choice"]["options"] == 3  # three people: three names to choose from
    assert set(table.split) == {PRIOR} and len(table) == 3 * len(
        [q for q in questions.questions if q.setting in ("forward_heldout_paraphrase", "reverse")])
    assert "multiple_choice.csv" in summary["figures"] and "multiple choice (3 options" in format_probe(summary)


def test_a_fact_file_whose_world_is_named_berglund_is_asked_in_its_own_terms(tmp_path):
    """A run's facts.jsonl written from a Berglund folder keeps the world name "berglund". Read back as a fact file
    (with a templates file), its questions are in its facts' terms already; they had been re-mapped as a folder's
    are (by relation "p2d:<key>"), which dropped every question of these facts (relations "p2d", "d2p") and, where
    a relation matched, turned a d2p fact's question the other way."""
    import json

    from analyses.probe import TEST_TEMPLATES, TRAIN_TEMPLATES, multiple_choice_questions
    from facts.io import save_jsonl
    from facts.schema import Fact, FactSet
    from facts.sources import read_fact_source

    people = [("Ann Lee", "the painter of Rome"), ("Bo Kim", "the baker of Oslo"), ("Cy Park", "the poet of Lima"),
              ("Di Ross", "the singer of Kyiv"), ("Ed Fox", "the tailor of Bern"), ("Flo Ng", "the potter of Cork")]
    facts = FactSet(tuple(Fact(name, group, description, f"{group} back", *(("train", "heldout") if group == "p2d"
                                                                             else ("heldout", "train")), group=group)
                          for i, (name, description) in enumerate(people) for group in ["p2d" if i % 2 else "d2p"]),
                    world="berglund")
    save_jsonl(facts, tmp_path / "facts.jsonl")
    with open(tmp_path / "templates.jsonl", "w", encoding="utf-8") as handle:
        for relation in ("p2d", "p2d back", "d2p", "d2p back"):
            for split, template in (("train", "{given} is {answer}."), ("test", "Known: {given} is {answer}.")):
                handle.write(json.dumps({"relation": relation, "split": split, "template": template}) + "\n")
    source = read_fact_source(tmp_path / "facts.jsonl", tmp_path / "templates.jsonl")
    assert source.facts.world == "berglund" and source.experiment is None
    asked = source.questions(TRAIN_TEMPLATES, TEST_TEMPLATES, 1).questions
    questions = multiple_choice_questions(source, source.facts, 2, False, "a model").questions
    assert [(q.fact, q.direction) for q in questions] == [(q.fact, q.direction) for q in asked] and asked


def test_probe_s_multiple_choice_leaves_out_each_question_s_given_entity_as_finetune_facts_does(tmp_path):
    """`probe --multiple-choice` built its questions without their facts, so a question's given entity (no option may
    be it) came from the answers its prompt names: "Known: the friend of Ann Lee is" asks about the description "the
    friend of Ann Lee", yet "Ann Lee" could be no wrong option of it, and a forward question's given name (not an
    answer of its pool) was none. Its options are now those of finetune-facts' questions of the same facts."""
    from analyses.probe import TEST_TEMPLATES, TRAIN_TEMPLATES, multiple_choice_questions
    from facts.io import save_jsonl
    from facts.schema import Fact, FactSet
    from facts.sources import read_fact_source

    people = [("Ann Lee", "the painter of Rome"), ("Bo Kim", "the friend of Ann Lee"), ("Cy Park", "the poet of Lima")]
    save_jsonl(FactSet(tuple(Fact(name, "p2d", description, "d2p", "train", "heldout", "p2d")
                             for name, description in people), world="custom"), tmp_path / "facts.jsonl")
    source = read_fact_source(tmp_path / "facts.jsonl")
    asked = source.questions(TRAIN_TEMPLATES, TEST_TEMPLATES, 1)
    questions = multiple_choice_questions(source, source.facts, 2, False, "a model")
    assert questions.questions == asked.questions
    assert questions.given_entities() == [{source.facts[q.fact].given_and_answer(q.direction)[0]}
                                          for q in questions.questions]
    assert questions.wrong_answers() == asked.wrong_answers()
    friend = next(i for i, q in enumerate(questions.questions) if "the friend of Ann Lee" in q.prompt
                  and q.completion.strip() == "Bo Kim")
    assert "Ann Lee" in questions.wrong_answers()[friend]
