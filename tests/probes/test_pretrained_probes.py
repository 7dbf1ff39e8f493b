"""Every probe answers the same on SmolLM2 as HookedTransformer and as TransformerBridge."""

import pytest
import torch

from facts.language import TRAIN_TEMPLATES, TemplateTokenizer, people_world
from probes.circuits import circuit_table
from probes.logits import answer_table


@pytest.fixture(scope="module")
def people():
    return people_world(n_per_group=4, seed=0)


@pytest.fixture(scope="module")
def tables(people, smollm2_tokenizer, smollm2_hooked, smollm2_bridge):
    tokenizer = TemplateTokenizer(smollm2_tokenizer, TRAIN_TEMPLATES)
    return {
        name: answer_table(model, people, tokenizer, n_controls=2, rank_against="controls")
        for name, model in (("hooked", smollm2_hooked), ("bridge", smollm2_bridge))
    }


def test_logit_probe_agrees_across_backends(tables):
    hooked, bridge = tables["hooked"], tables["bridge"]
    assert len(hooked) == 24  # 12 people, both directions in play
    assert (hooked.logprob - bridge.logprob).abs().max() < 1e-3
    assert (hooked.control_logprob - bridge.control_logprob).abs().max() < 1e-3
    assert (hooked["rank"] == bridge["rank"]).all()


def test_untrained_fictitious_facts_are_not_known(tables):
    table = tables["hooked"]
    assert table["rank"].between(1, 3).all() and table["rank"].max() > 1  # among 2 controls
    assert not table.correct.any()  # no fictitious description is produced verbatim
    assert abs(table.margin.mean()) < 3.0  # no systematic preference for the true (random) pairing


def test_circuit_probe_agrees_across_backends(people, smollm2_tokenizer, smollm2_hooked, smollm2_bridge):
    def ids(entity):
        return smollm2_tokenizer.encode(" " + entity, add_special_tokens=False)

    kwargs = dict(layers=[0, 29], heads=[0, 8], n_controls=4)
    hooked = circuit_table(smollm2_hooked, people, ids, **kwargs)
    bridge = circuit_table(smollm2_bridge, people, ids, **kwargs)
    assert len(hooked) == 12 * (1 + 2 * 2 * 2)  # direct + (OV, QK) × 2 layers × 2 heads
    for column in ("entry_ab", "entry_ba"):
        assert (hooked[column] - bridge[column]).abs().max() < 1e-3 * hooked[column].abs().max(), column
    for column in ("z_ab", "z_ba", "asymmetry"):
        assert (hooked[column] - bridge[column]).abs().max() < 1e-3, column
    # every description begins with " the"; read as the mean of all its tokens it is still told
    # apart from the other descriptions, so person → description entries have a z-score too
    assert hooked.z_ab.notna().all() and hooked.z_ba.notna().all()


def test_circuit_entries_equal_the_factored_matrix_entries_of_grouped_query_heads(people, smollm2_tokenizer,
                                                                                 smollm2_hooked):
    """The batched, key/value-deduplicated computation reads the same entries as TransformerLens's
    FactoredMatrix (x_A ⊙ w_ln1)·OV[l,h]·(w_final ⊙ u_B) and (x_A ⊙ w_ln1)·QK[l,h]·(x_B ⊙ w_ln1)ᵀ,
    where x_E and u_E are the mean embedding and unembedding over entity E's tokens, on heads that
    are not the first of their key/value group (SmolLM2: 9 query heads over 3)."""
    model = smollm2_hooked

    def ids(entity):
        return smollm2_tokenizer.encode(" " + entity, add_special_tokens=False)

    layers, heads = [2, 17], [1, 5, 7]
    table = circuit_table(model, people, ids, kinds=("ov", "qk"), layers=layers, heads=heads, n_controls=4)
    sources = [f.subject for f in people] + [f.object for f in people]
    targets = [f.object for f in people] + [f.subject for f in people]
    n = len(people)
    with torch.no_grad():
        embedding = lambda entities: torch.stack([model.W_E[ids(e)].mean(0) for e in entities])  # noqa: E731
        unembedding = torch.stack([model.W_U[:, ids(e)].mean(1) for e in targets], 1)
        for layer in layers:
            w_ln1 = model.blocks[layer].ln1.w
            given = embedding(sources) * w_ln1
            for head in heads:
                ov = (given @ model.OV[layer, head] @ (model.ln_final.w[:, None] * unembedding)).AB
                qk = (given @ model.QK[layer, head] @ (embedding(targets) * w_ln1).T).AB
                for kind, full in (("ov", ov), ("qk", qk)):
                    rows = table[(table.circuit == kind) & (table.layer == layer) & (table["head"] == head)]
                    expected_ab, expected_ba = full.diagonal()[:n], full.diagonal()[n:]
                    scale = float(full.abs().max())
                    assert torch.allclose(torch.tensor(rows.entry_ab.to_numpy()), expected_ab, atol=1e-5 * scale)
                    assert torch.allclose(torch.tensor(rows.entry_ba.to_numpy()), expected_ba, atol=1e-5 * scale)
