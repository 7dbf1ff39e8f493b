import math

import pandas as pd
import pytest
import torch

from facts.schema import FactSet
from facts.token_worlds import reversal_world
from facts.tokens import tokenize
from models.backend import TL_MAJOR, HookedTransformer, HookedTransformerConfig, build_native
from models.scoring import score_answers
from models.training import TrainConfig, train
from models.transformer import build_model, model_fields
from probes.attribution import patch_residual
from probes.logits import answer_controls, answer_table, candidate_logprobs, kind_candidates
from probes.shared_prompt import candidate_logprobs_cached


@pytest.fixture(scope="module")
def table(trained_one_layer, world, vocab):
    return answer_table(trained_one_layer, world, vocab)


def test_one_row_per_directed_statement(table, world):
    assert len(table) == 400
    assert (table.split == "train").sum() == 340 and (table.split == "heldout").sum() == 60
    assert set(table.columns) >= {"fact", "direction", "split", "trained", "logprob", "rank", "correct", "chance_logprob"}
    assert (table.n_candidates == 200).all()  # each answer among its kind: 200 objects, or 200 subjects
    assert table.chance_logprob.iloc[0] == pytest.approx(-math.log(200))


def test_the_curse_in_the_table(table):
    trained, heldout = table[table.trained], table[~table.trained]
    assert trained.correct.all() and (trained["rank"] == 1).all()
    assert heldout.correct.sum() == 0
    assert heldout.logprob.mean() < table.chance_logprob.iloc[0] + 0.5
    assert heldout["rank"].mean() > 50


def test_logprob_and_rank_agree_with_a_direct_forward_pass(table, trained_one_layer, world, vocab):
    row = table[table.split == "heldout"].iloc[0]
    example = vocab.example(world, int(row.fact), row.direction)
    with torch.no_grad():
        logprobs = trained_one_layer(torch.tensor([example.prompt]))[0, -1].log_softmax(-1)
    assert row.logprob == pytest.approx(float(logprobs[example.answer[0]]), abs=1e-5)
    kind = [f.subject if row.direction == "reverse" else f.object for f in world]  # the answer's kind
    entity_ids = torch.tensor([vocab.entity_ids(e)[0] for e in kind])
    assert row["rank"] == int((logprobs[entity_ids] >= logprobs[example.answer[0]]).sum())  # the truth counts once
    assert row.correct == (int(logprobs.argmax()) == example.answer[0])


def test_a_tie_ranks_above_the_answer_so_a_model_that_knows_nothing_is_never_top_1(world, vocab):
    """A model whose every next token is equally likely (its unembedding zeroed) ties every answer with every
    other: each ranks last, among the candidates and among its controls, as top-1 ("the answer outscores every
    other") reads; before, ties counted for the answer, and such a model ranked every answer first."""
    model = build_model("one-layer", vocab.d_vocab, seed=1)
    with torch.no_grad():
        model.W_U.zero_()
        model.b_U.zero_()
    facts = FactSet(list(world)[:30], world=world.world)
    candidates = answer_table(model, facts, vocab)
    assert (candidates["rank"] == candidates.n_candidates).all()
    controls = answer_table(model, facts, vocab, rank_against="controls", n_controls=4)
    assert (controls["rank"] == 5).all()


def test_multi_token_answers_sum_over_tokens_and_rank_by_teacher_forcing(vocab):
    world = reversal_world(n_pairs=12, k=2, seed=2, alphabet_size=20)
    model = build_model("one-layer", vocab.d_vocab, seed=1)
    table = answer_table(model, world, vocab)
    statements = [(int(r.fact), r.direction) for r in table.itertuples()]
    matrix = candidate_logprobs(model, world, vocab, statements, world.entities())
    truth_columns = [world.entities().index(a) for a in table.answer]
    assert torch.allclose(matrix[torch.arange(len(table)), truth_columns], torch.tensor(table.logprob.values).float(),
                          atol=1e-4)
    example = vocab.example(world, 0, "forward")
    with torch.no_grad():
        logprobs = model(torch.tensor([example.prompt + example.answer]))[0].log_softmax(-1)
    expected = sum(float(logprobs[len(example.prompt) - 1 + j, t]) for j, t in enumerate(example.answer))
    first = table[(table.fact == 0) & (table.direction == "forward")].logprob.item()
    assert first == pytest.approx(expected, abs=1e-5)


def test_controls_are_read_from_the_candidates_they_are_among(vocab):
    """Ranked among its kind, a statement's controls are candidates: their log-probs are read from the candidate
    matrix, not scored again. The model's last MLP sees the truths teacher-forced (prompt and answer but its last
    token) and the candidates' floor (each prompt, each distinct first token after it) and nothing more, on both
    lines (by trie: a direction's statements rank the same candidates, so their rows are as wide and hold no
    padding), and each control's log-prob is teacher forcing's."""
    from facts.tokens import collate

    world = reversal_world(n_pairs=12, k=2, seed=2, alphabet_size=20)
    model = build_model("tiny", vocab.d_vocab, seed=1).eval()
    seen = []
    handle = model.blocks[-1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
    try:
        table = answer_table(model, world, vocab, n_controls=4)
    finally:
        handle.remove()
    statements = [(int(r.fact), r.direction) for r in table.itertuples()]
    among = kind_candidates(world)
    truths = [vocab.example(world, i, d) for i, d in statements]
    floor = sum(len(t.prompt) + len({vocab.example(world, i, d, a).answer[:1] for a in among[d]})
                for t, (i, d) in zip(truths, statements))
    assert sum(seen) == sum(len(t.prompt) + 1 for t in truths) + floor
    controls = answer_controls(world, statements, 4)
    forced = score_answers(model, collate([vocab.example(world, i, d, a) for (i, d), row in zip(statements, controls)
                                           for a in row], 0)).logprob.view(len(statements), 4).mean(1)
    torch.testing.assert_close(torch.tensor(table.control_logprob.values).float(), forced, rtol=0, atol=1e-5)


def test_under_an_edit_every_answer_is_scored_at_the_positions_the_truth_is(vocab):
    """``with editing(model, ...): answer_table(model, ...)`` scored the truth teacher-forced and multi-token controls
    from a prefix cache, whose continuation passes start again at position 0: an edit of position 1 also hit
    each control's second answer position, and the margin compared two different edits. Every answer is now
    teacher-forced under a hook: the controls' mean equals teacher forcing each (prompt, control) under the edit."""
    from facts.language import controls_of
    from facts.tokens import collate
    from probes.hooks import editing

    world = reversal_world(n_pairs=12, k=3, seed=2, alphabet_size=20)
    model = build_model("tiny", vocab.d_vocab, seed=1).eval()

    def zero_position_1(resid, hook):
        resid[:, 1] = 0
        return resid

    with editing(model, "blocks.0.hook_resid_post", zero_position_1):
        table = answer_table(model, world, vocab, rank_against="controls", n_controls=3)
        statements = [(int(r.fact), r.direction) for r in table.itertuples()]
        pairs = [vocab.example(world, i, d, a) for (i, d), row in zip(statements, controls_of(world, statements, 3))
                 for a in row]
        forced = score_answers(model, collate(pairs, 0)).logprob.view(len(statements), 3).mean(1)
        truths = score_answers(model, collate([vocab.example(world, i, d) for i, d in statements], 0)).logprob
    assert torch.allclose(torch.tensor(table.control_logprob.values).float(), forced, atol=1e-5)
    assert torch.allclose(torch.tensor(table.logprob.values).float(), truths, atol=1e-5)
    assert not torch.allclose(forced, torch.tensor(answer_table(model, world, vocab, rank_against="controls",
                                                                n_controls=3).control_logprob.values).float())


class WordsAfterCalled:
    """A word-level text tokenizer that reads "Bo" as another token after "called": an answer whose id depends on
    the prompt before it, as a subword tokenizer's can depend on a template's last characters."""

    words = ("x", "y", "is", "called", "Ann", "Bo", "Cy", "Bo-after-called")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        words = text.split()
        return [self.words.index("Bo-after-called" if word == "Bo" and before == "called" else word)
                for before, word in zip([None, *words], words)]


def test_one_token_candidates_are_tokenized_after_every_prompt_of_a_text_tokenizer():
    """The shared-ids shortcut may not score "Bo" after "y called" as the "Bo" of "x is": each candidate is scored
    as its own prompt reads it, as pair-by-pair teacher forcing does. The truths (Ann, Cy) read the same after
    both prompts, so checking them alone does not show it."""
    from facts.language import TemplateTokenizer
    from facts.schema import Fact
    from probes.logits import answers_logprobs

    facts = FactSet((Fact("x", "r", "Ann"), Fact("y", "s", "Cy")))
    templates = {"r": ("{given} is {answer}",), "s": ("{given} called {answer}",)}
    tokenizer = TemplateTokenizer(WordsAfterCalled(), templates)
    model = build_model("one-layer", len(WordsAfterCalled.words), seed=0)
    statements, candidates = [(0, "forward"), (1, "forward")], ["Ann", "Bo", "Cy"]
    shared = candidate_logprobs(model, facts, tokenizer, statements, candidates)
    pairwise = answers_logprobs(model, facts, tokenizer, statements, [candidates] * 2)
    assert tokenizer.example(facts, 1, "forward", "Bo").answer == (7,)
    assert torch.allclose(shared, pairwise, atol=1e-5)


def test_margin_over_controls_is_positive_when_trained_and_not_when_held_out(table):
    trained, heldout = table[table.trained], table[~table.trained]
    assert (trained.margin > 5).all()
    assert heldout.margin.mean() < 1.0
    # the margin is the answer's log-prob minus the controls' mean log-prob, by definition
    assert ((table.logprob - table.control_logprob - table.margin).abs() < 1e-9).all()


def test_controls_are_answers_of_the_same_kind_and_exclude_the_truth(world, vocab, trained_one_layer):
    from facts.language import controls

    drawn = controls(world, 0, "forward", 16, seed=0)
    objects = {f.object for f in world}
    assert len(set(drawn)) == 16 and set(drawn) <= objects and world[0].object not in drawn


def test_in_context_controls_exclude_only_the_facts_own_answer():
    from facts.language import controls
    from facts.token_worlds import in_context_world

    world = in_context_world(n_x=20, n_y=3, seed=0)
    drawn = controls(world, 0, "reverse", 19, seed=0)
    assert world[0].subject not in drawn and len(set(drawn)) == 19  # every other x is a wrong answer here


def test_controls_are_capped_by_each_statement_s_wrong_answers(trained_one_layer, world, vocab):
    """A given entity with two right answers for one relation (one of them stated by a fact whose forward is not in
    play) leaves its statement one wrong answer fewer than its kind minus one: the cap had counted the kind alone,
    and answer_table refused ("asked for 1 controls; 0 wrong answers exist") where it promises fewer controls."""
    from facts.language import controls_of, wrong_answers
    from facts.schema import Fact

    a, b, c, d = (fact.subject for fact in world.facts[:4])
    facts = FactSet((Fact(a, "→", b), Fact(a, "→", c, inverse_relation="←", forward=None, reverse="train"),
                     Fact(d, "→", c)), world="two right answers")
    statements = [(i, direction) for i, direction, _ in facts.statements()]
    pools = wrong_answers(facts, statements)
    assert dict(zip(statements, pools))[(0, "forward")] == []  # b and c are both right for (a, →)
    table = answer_table(trained_one_layer, facts, vocab, n_controls=16)
    assert table.control_logprob.isna().all() and table.margin.isna().all()  # no control for every statement
    assert [len(row) for row in controls_of(facts, statements, 0)] == [0] * len(statements)
    with pytest.raises(ValueError, match="a wrong answer of its kind for every statement"):
        answer_table(trained_one_layer, facts, vocab, rank_against="controls")


def test_candidates_are_a_set_and_must_hold_every_answer(trained_one_layer, world, vocab):
    """rank_against="candidates" ranks among the set C: a name listed twice counts once (rank, n_candidates,
    chance −log|C| all as with the name once), and a list without a statement's answer is refused before any
    pass."""
    facts = FactSet(world.facts[-12:], world="the last 12 pairs", meta=world.meta)  # one-way pairs among them
    entities = facts.entities()
    once = answer_table(trained_one_layer, facts, vocab, candidates=entities, n_controls=4)
    twice = answer_table(trained_one_layer, facts, vocab, candidates=entities + entities[::-1], n_controls=4)
    assert (once["rank"] > 1).any()  # wrong answers above the truth, which duplicates would count twice
    assert (once.n_candidates == len(entities)).all()
    pd.testing.assert_frame_equal(once, twice)
    passes = []
    hook = trained_one_layer.register_forward_pre_hook(lambda *_: passes.append(1))
    try:
        missing = [e for e in entities if e != facts[0].object]
        with pytest.raises(ValueError, match=f"fact 0 \\(forward\\): its answer '{facts[0].object}' is not among "
                                             f"the {len(missing)} candidates"):
            answer_table(trained_one_layer, facts, vocab, candidates=missing)
    finally:
        hook.remove()
    assert not passes


def test_kind_candidates_rank_each_answer_among_its_own_kind(trained_one_layer, world, vocab):
    """``candidates=kind_candidates(facts)`` (the default) ranks each answer among its own kind (objects for a forward
    question, subjects for a reverse one), the set its answer is drawn from, where a model that knows only which kind
    "→" or "←" asks for is at chance; a list holding both kinds ranks among both. The rank among the kind is the rank
    among both kinds less the other kind's entities that score at least the answer."""
    from probes.logits import kind_candidates

    facts = FactSet(world.facts[-12:], world="the last 12 pairs", meta=world.meta)
    kinds = kind_candidates(facts)
    assert kinds == {"forward": [f.object for f in facts], "reverse": [f.subject for f in facts]}
    kind = answer_table(trained_one_layer, facts, vocab, n_controls=2)
    pd.testing.assert_frame_equal(kind, answer_table(trained_one_layer, facts, vocab, candidates=kinds, n_controls=2))
    both = answer_table(trained_one_layer, facts, vocab, candidates=facts.entities(), n_controls=2)
    assert (kind.n_candidates == 12).all() and kind.chance_logprob.to_numpy() == pytest.approx(-math.log(12))
    assert (both.n_candidates == 24).all() and both.chance_logprob.to_numpy() == pytest.approx(-math.log(24))
    statements = [(int(r.fact), r.direction) for r in both.itertuples()]
    scores = candidate_logprobs(trained_one_layer, facts, vocab, statements, facts.entities())
    for row, (index, direction) in enumerate(statements):
        other = [j for j, e in enumerate(facts.entities()) if e not in kinds[direction]]
        above = int((scores[row, other] >= both.logprob[row]).sum())
        assert kind["rank"][row] == both["rank"][row] - above


def bidirectional_tiny(vocab):
    """The named ``tiny`` spec with attention both ways (``attention_dir="bidirectional"``), under either line."""
    fields = {**model_fields("tiny", vocab.d_vocab, "absolute", None), "attention_dir": "bidirectional"}
    if TL_MAJOR >= 4:
        return build_native(fields, 0, torch.device("cpu"))
    return HookedTransformer(HookedTransformerConfig(**fields, seed=0, device="cpu"))


def test_a_model_attending_both_ways_is_refused_by_every_answer_score(world, vocab):
    """An answer's log-probability is read from one pass over prompt and answer, at the position before each
    answer token, which a bidirectional model's positions see past: the same statement scores differently
    alone and beside a longer, padded one. Every path that scores answers refuses it, the trainer too."""
    model = bidirectional_tiny(vocab)
    facts = FactSet(world.facts[:4], world="the first 4 pairs", meta=world.meta)
    batch = tokenize(facts, vocab)
    examples = [vocab.example(facts, index, "forward") for index in range(4)]
    reverse = [vocab.example(facts, index, "reverse") for index in range(4)]
    calls = {
        "answer_table": lambda: answer_table(model, facts, vocab),
        "score_answers": lambda: score_answers(model, batch),
        "candidate_logprobs_cached": lambda: candidate_logprobs_cached(model, [[e] for e in examples]),
        "patch_residual": lambda: patch_residual(model, examples, reverse),
        "train": lambda: train(model, batch, TrainConfig(steps=1, progress=False)),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match="attention is 'bidirectional', not causal"):
            call()


def test_scoring_refuses_what_would_be_silently_wrong(trained_one_layer, world, vocab):
    """answers_logprobs with fewer rows of answers than statements had returned fewer rows; a control equal to the
    statement's own answer had tied the truth (a rank one too low, a margin pulled to 0); a negative n_controls had
    blamed fact 0; a candidate id outside the vocabulary had failed inside gather."""
    from probes.logits import answers_logprobs

    statements = [(i, d) for i, d, _ in world.statements()][:3]
    with pytest.raises(ValueError, match="3 statements but 2 rows of answers"):
        answers_logprobs(trained_one_layer, world, vocab, statements, [[world[0].object]] * 2)
    rows = list(world.statements())
    controls = [[world[i].given_and_answer(d)[2]] for i, d, _ in rows]
    with pytest.raises(ValueError, match=r"fact 0 \(forward\)'s controls include its own answer"):
        answer_table(trained_one_layer, world, vocab, controls=controls)
    with pytest.raises(ValueError, match="n_controls must be ≥ 0, got -3"):
        answer_table(trained_one_layer, world, vocab, n_controls=-3)
    from probes.logits import _next_token_gather

    # no statements or no candidates: an empty table (statements[0] had raised an IndexError)
    assert candidate_logprobs(trained_one_layer, world, vocab, [], ["e1"]).shape == (0, 1)
    assert candidate_logprobs(trained_one_layer, world, vocab, statements, []).shape == (3, 0)

    truths = [vocab.example(world, 0, "forward")]
    with pytest.raises(ValueError, match=f"candidate token id {vocab.d_vocab} is outside"):
        _next_token_gather(trained_one_layer, truths, torch.tensor([[vocab.d_vocab]]), 0)
