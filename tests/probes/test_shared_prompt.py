"""The fast scorer (:func:`probes.shared_prompt.candidate_logprobs_cached`: each prompt once, its keys
and values reused by every answer, the unembedding only where a next token is scored) gives the
numbers of the straightforward one (:func:`models.scoring.score_answers`: teacher forcing every
prompt ++ answer through the model's own forward), on SmolLM2 (Llama, no BOS) and on a tiny random
Gemma 2 (BOS before every prompt, logit soft-cap, a 4-token sliding window the prompts pass), on
both backends."""

from __future__ import annotations

import pytest

from analyses.asymmetry import draw_controls
from facts.celebrity import QUESTION_TEMPLATES, load_celebrity_pairs
from facts.language import TemplateTokenizer
from facts.tokens import collate
from models.scoring import score_answers
from probes.shared_prompt import candidate_logprobs_cached

STATEMENTS = [(0, "forward"), (0, "reverse"), (2, "forward"), (5, "forward"), (3, "reverse")]


def candidate_rows(tokenizer, prefix=None, n_controls=6):
    """Real celebrity questions (prompts of two lengths) with the truth and ``n_controls`` controls each."""
    facts = load_celebrity_pairs()
    asked = TemplateTokenizer(tokenizer, QUESTION_TEMPLATES, prefix=prefix)
    drawn = draw_controls(facts, STATEMENTS, n_controls)
    return [[asked.example(facts, i, d)] + [asked.example(facts, i, d, answer=a) for a in wrong]
            for (i, d), wrong in zip(STATEMENTS, drawn)]


def assert_fast_equals_teacher_forcing(model, rows):
    fast = candidate_logprobs_cached(model, rows, batch_size=3)  # several prompt and continuation passes
    reference = score_answers(model, collate([e for row in rows for e in row], 0))
    delta = (fast.logprob.flatten() - reference.logprob).abs().max().item()
    assert delta < 1e-4, delta
    assert fast.correct.flatten().tolist() == reference.correct.tolist()
    assert {len(row[0].prompt) for row in rows} != {len(rows[0][0].prompt)}  # prompts of several lengths
    assert max(len(e.answer) for row in rows for e in row) >= 3  # continuations of several tokens


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_fast_scoring_equals_teacher_forcing_on_smollm2(backend, request, smollm2_tokenizer):
    model = request.getfixturevalue(f"smollm2_{backend}")
    assert_fast_equals_teacher_forcing(model, candidate_rows(smollm2_tokenizer))


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_fast_scoring_equals_teacher_forcing_on_a_gemma2_with_bos(backend, tiny_models):
    tiny = tiny_models["gemma2"]
    model = tiny.backends[backend]
    assert model.cfg.output_logits_soft_cap > 0  # the soft-cap is part of what the readout must repeat
    rows = candidate_rows(tiny.tokenizer, prefix=(tiny.tokenizer.bos_token_id,))
    assert all(row[0].prompt[0] == tiny.tokenizer.bos_token_id for row in rows)
    assert_fast_equals_teacher_forcing(model, rows)
