"""Probes on TransformerLens configurations that only a researcher's own config builds (a ``HookedTransformerConfig``
under TransformerLens 3.9, a ``TransformerBridgeConfig`` for 4.x's native model): exact there too, as on every
architecture we load.

* shortformer positions (3.9 only: 4.x's native model has standard and rotary positions, so tests/conftest.py's
  ``SECOND_LINE_LEAVES_OUT`` leaves these cases out of the 4.x run): the positional embedding feeds queries and
  keys, never the residual stream, so direct logit attribution has no ``pos_embed`` term;
* LayerNorm blocks under an RMS final norm (``final_rms``, as TransformerLens's SoLU models), and LNPre blocks
  under an RMSPre one: the final norm scales without centring, so neither attribution nor the circuits centre
  the unembedding side;
* an output vocabulary narrower than the input one (``d_vocab_out`` < ``d_vocab``): answers it cannot predict.

Each model is random (norm weights and biases perturbed, so every term shows), two layers, on the reversal
world's vocabulary."""

from __future__ import annotations

import pytest
import torch
from tiny_models import perturbed

from facts.token_worlds import reversal_world
from facts.tokens import Example, tokenize
from models.backend import TL_MAJOR, HookedTransformer, HookedTransformerConfig, TLModel, TransformerBridge, copy_model
from models.scoring import score_answers
from models.transformer import model_fields
from probes.attribution import direct_logit_attribution
from probes.circuits import circuit_table, weight_change_table
from probes.shared_prompt import candidate_logprobs_cached

CONFIGS = {
    "shortformer": {"positional_embedding_type": "shortformer"},
    "LN blocks, RMS final norm": {"final_rms": True},
    "LNPre blocks, RMSPre final norm": {"normalization_type": "LNPre", "final_rms": True},
}


def hand_built(vocab, **changes) -> TLModel:
    """The tiny spec over ``vocab`` with ``changes`` to its config, seeded, then :func:`perturbed`: under 3.9 a
    ``HookedTransformer``; under 4.x the bridge over TransformerLens's native model in compatibility mode without
    weight processing (HookedTransformer's hook names, the weights as built), its unembedding bias (a fixed zero
    buffer there) made a parameter as :func:`models.backend.build_native` makes it, so that it is perturbed too.
    Not ``build_native`` itself: it loads 3.9's initial state, whose final norm has a bias and whose W_U has
    ``d_vocab`` columns, which these configs do not."""
    fields = {**model_fields("tiny", vocab.d_vocab, "absolute", None), **changes}
    if TL_MAJOR < 4:
        return perturbed(HookedTransformer(HookedTransformerConfig(**fields, seed=0, device="cpu")))
    from transformer_lens import TransformerBridgeConfig

    bridge = TransformerBridge.boot_native(TransformerBridgeConfig(**fields, seed=0, device="cpu"), device="cpu")
    head = bridge.unembed.original_component
    head.bias = torch.nn.Parameter(head._buffers.pop("bias").clone())
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    return perturbed(bridge)


@pytest.fixture(scope="module")
def facts(vocab):
    return reversal_world(n_pairs=12, seed=0, vocab=vocab)


@pytest.mark.parametrize("by", ["head", "layer"])
@pytest.mark.parametrize("config", CONFIGS)
def test_attributions_sum_to_the_logit_difference(config, by, vocab, facts):
    model = hand_built(vocab, **CONFIGS[config])
    examples = [vocab.example(facts, index, "forward") for index in range(6)]
    controls = [Example(e.prompt, examples[(i + 1) % 6].answer, e.fact, e.direction, e.split)
                for i, e in enumerate(examples)]  # the same prompt, the next fact's answer
    table = direct_logit_attribution(model, examples, controls=controls, by=by)
    with torch.no_grad():
        logits = model(torch.tensor([e.prompt for e in examples]))[:, -1]
    expected = torch.tensor([logits[i, e.answer[0]] - logits[i, c.answer[0]]
                             for i, (e, c) in enumerate(zip(examples, controls))])
    totals = torch.tensor(table.groupby("statement").attribution.sum().to_numpy()).float()
    assert (totals - expected).abs().max() < 1e-4
    assert expected.abs().max() > 0.1  # a difference to explain
    assert ("pos_embed" in set(table.component)) == (config != "shortformer")


def test_circuits_under_an_rms_final_norm_leave_the_unembedding_uncentred(vocab, facts):
    """M[A,B] computed the slow way: the direct path W_E[A] · (w_f ⊙ W_U[:, B]), the OV circuit
    P(W_E[A]) ⊙ w₁ · W_V W_O · (w_f ⊙ W_U[:, B]) (LayerNorm blocks centre, the final RMSNorm does not)."""
    model = hand_built(vocab, final_rms=True)
    table = circuit_table(model, facts, vocab.entity_ids, kinds=("direct", "ov"), n_controls=4)
    fact = facts[0]
    a, b = vocab.entity_ids(fact.subject)[0], vocab.entity_ids(fact.object)[0]
    layer, head = 1, 2
    with torch.no_grad():
        unembed = model.ln_final.w * model.W_U[:, b]
        source = (model.W_E[a] - model.W_E[a].mean()) * model.blocks[layer].ln1.w
        expected = {"direct": float(model.W_E[a] @ unembed),
                    "ov": float(source @ model.W_V[layer, head] @ model.W_O[layer, head] @ unembed)}
        centred = float(source @ model.W_V[layer, head] @ model.W_O[layer, head] @ (unembed - unembed.mean()))
    direct = table[(table.circuit == "direct") & (table.fact == 0)]
    ov = table[(table.circuit == "ov") & (table.fact == 0) & (table.layer == layer) & (table["head"] == head)]
    assert float(direct.entry_ab.iloc[0]) == pytest.approx(expected["direct"], rel=1e-4, abs=1e-6)
    assert float(ov.entry_ab.iloc[0]) == pytest.approx(expected["ov"], rel=1e-4, abs=1e-6)
    assert abs(centred - expected["ov"]) > 1e-2 * abs(expected["ov"])  # centring would have shown


def test_a_weight_change_under_an_rms_final_norm_is_read_uncentred(vocab, facts):
    """Only W_out of layer 1 changed: the MLP's output is linear in the change, and its read is the exact
    difference of the two MLPs' outputs at the subject's state, dotted with the object's unembedding scaled
    by the final RMSNorm's weight (not centred)."""
    before = hand_built(vocab, final_rms=True)
    after = copy_model(before)
    with torch.no_grad():
        # HookedTransformer's parameter; under 4.x a transposed view of the bridge's nn.Linear weight, changed in place
        after.blocks[1].mlp.W_out.add_(0.1 * torch.randn(after.blocks[1].mlp.W_out.shape,
                                                         generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(after.blocks[1].mlp.W_out, before.blocks[1].mlp.W_out)  # the copy changed, not both
    table = weight_change_table(before, after, facts, vocab, vocab.entity_ids, layers=[1], n_controls=4)
    mlp = table[table.circuit == "delta_mlp"].set_index("fact")
    for index in (0, 5):
        example = vocab.example(facts, index, "forward")
        with torch.no_grad():
            _, cache = before.run_with_cache(torch.tensor([example.prompt]))
            x = before.blocks[1].ln2(cache["blocks.1.hook_resid_mid"][:, 0])
            change = (after.blocks[1].mlp(x[:, None]) - before.blocks[1].mlp(x[:, None]))[0, 0]
            target = before.W_U[:, vocab.entity_ids(facts[index].object)[0]] * before.ln_final.w
        read = float(change @ target)
        assert float(mlp.entry_ab[index]) == pytest.approx(read, rel=1e-4, abs=1e-6)
        assert abs(float(change @ (target - target.mean())) - read) > 1e-3 * abs(read)  # centring would have shown


def test_an_answer_outside_a_narrower_output_vocabulary_is_named(vocab, facts):
    """A model that reads every token but predicts fewer (``d_vocab_out`` < ``d_vocab``): an answer it cannot
    predict is refused by name on both scoring paths, not an index error (or a gather past the logits)."""
    model = hand_built(vocab, d_vocab_out=vocab.d_vocab - 100)
    batch = tokenize(facts, vocab)
    assert int(batch.tokens[batch.answer_mask].max()) >= vocab.d_vocab - 100  # answers past the output vocabulary
    with pytest.raises(ValueError, match=r"fact \d+ \((forward|reverse)\) has answer token id \d+, outside the "
                                         f"model's output vocabulary of {vocab.d_vocab - 100}"):
        score_answers(model, batch)
    examples = [[vocab.example(facts, index, direction)] for index in range(len(facts))
                for direction in ("forward", "reverse")]
    with pytest.raises(ValueError, match=f"outside the model's output vocabulary of {vocab.d_vocab - 100}"):
        candidate_logprobs_cached(model, examples)
