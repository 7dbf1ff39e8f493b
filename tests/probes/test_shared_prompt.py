"""The fast scorer (:func:`probes.shared_prompt.candidate_logprobs_cached`: each prompt once, its keys
and values reused by every answer, the unembedding only where a next token is scored) gives the
numbers of the straightforward one (:func:`models.scoring.score_answers`: teacher forcing every
prompt ++ answer through the model's own forward), on SmolLM2 (Llama, no BOS) and on a tiny random
Gemma 2 (BOS before every prompt, logit soft-cap, a 4-token sliding window the prompts pass), on
both backends; and on a HookedTransformer, continuation passes run together (``extend_bundle``) give
the numbers of the same passes run one by one (``extend``; bitwise on this project's CPUs)."""

from __future__ import annotations

import pytest
import torch

from analyses.asymmetry import draw_controls
from facts.celebrity import QUESTION_TEMPLATES, load_celebrity_pairs
from facts.language import TemplateTokenizer
from facts.tokens import collate
from models.backend import is_hooked
from models.scoring import hooked_readout, score_answers
from probes.shared_prompt import SMALL_PRODUCT, PrefixCache, candidate_logprobs_cached

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


def hooked_models(request):
    tiny = request.getfixturevalue("tiny_models")["gemma2"]
    return {"smollm2": (request.getfixturevalue("smollm2_hooked"), request.getfixturevalue("smollm2_tokenizer"), None),
            "gemma2": (tiny.backends["hooked"], tiny.tokenizer, (tiny.tokenizer.bos_token_id,))}


@pytest.mark.parametrize("name", ["smollm2", "gemma2"])
def test_bundled_continuations_equal_pass_by_pass(name, request):
    """Several continuation passes of one prompt cache in one ``extend_bundle`` (each pass's attention on
    its own, the MLPs and unembedding of all together) give each pass's ``extend`` logits, and candidate
    scoring with bundles gives what it gives pass by pass (a hook on the model turns bundling off). The
    Gemma 2 has post-attention and post-MLP norms, a sliding window and a soft-cap.

    On this project's CPUs the numbers are bitwise equal (a row of a matrix product of ≥ 4 rows does
    not depend on the other rows there; ``SMALL_PRODUCT``); the test allows float32 rounding, which
    another BLAS may sum in another order."""
    model, tokenizer, prefix = hooked_models(request)[name]
    scorer = PrefixCache(model)
    if not is_hooked(model):  # TransformerLens 4: a bridge, always pass by pass
        assert not scorer.bundles()
        return
    assert scorer.bundles()
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 1000, (3, 7), generator=generator)
    _, cache = scorer.prefix(prompts)
    shapes = [(4, 1), (2, 3), (5, 2), (1, 4)]  # rows × width, every pass ≥ SMALL_PRODUCT positions
    assert min(r * w for r, w in shapes) >= SMALL_PRODUCT
    parts = [(torch.randint(0, 3, (r,), generator=generator), torch.randint(0, 1000, (r, w), generator=generator))
             for r, w in shapes]
    with torch.no_grad():
        residual = scorer.extend_bundle(cache, parts).split([tokens.numel() for _, tokens in parts])
        for (rows, tokens), final in zip(parts, residual):
            alone = scorer.extend(cache, rows, tokens, torch.ones(tokens.shape, dtype=torch.bool))
            torch.testing.assert_close(hooked_readout(model, final), alone, rtol=1e-5, atol=1e-4)

    rows = candidate_rows(tokenizer, prefix=prefix)
    bundled = candidate_logprobs_cached(model, rows, batch_size=3)
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        assert not PrefixCache(model).bundles()  # a hook would see a bundle's shapes: pass by pass
        one_by_one = candidate_logprobs_cached(model, rows, batch_size=3)
    torch.testing.assert_close(bundled.logprob, one_by_one.logprob, rtol=0, atol=1e-4)
    assert torch.equal(bundled.correct, one_by_one.correct)
