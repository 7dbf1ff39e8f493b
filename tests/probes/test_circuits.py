"""Effective-weight circuits on the real one-layer HookedTransformer and the bilinear model."""

import numpy as np
import pandas as pd
import pytest
import torch

from facts.token_worlds import TokenVocab
from facts.tokens import tokenize
from models.bilinear import BilinearModel
from models.training import TrainConfig, train
from models.transformer import build_model
from probes.circuits import circuit_table


def one_way(table, trained):
    rows = table[table.group == "one-way"]
    return rows[rows.forward == ("train" if trained == "forward" else "heldout")]


@pytest.fixture(scope="module")
def ov_table(trained_one_layer, world, vocab):
    return circuit_table(trained_one_layer, world, vocab.entity_ids, kinds=("ov",))


def test_ov_entry_stands_out_only_in_the_trained_direction(ov_table):
    forward_trained = one_way(ov_table, "forward")
    assert forward_trained.z_ab.mean() > 2.5  # trained A→B: far above the off-diagonal
    assert abs(forward_trained.z_ba.mean()) < 0.5  # held-out B→A: like any off-diagonal entry
    reverse_trained = one_way(ov_table, "reverse")
    assert reverse_trained.z_ba.mean() > 2.5 and abs(reverse_trained.z_ab.mean()) < 0.5
    both = ov_table[ov_table.group == "both"]
    assert both.z_ab.mean() > 2.5 and both.z_ba.mean() > 2.5 and abs(both.asymmetry.mean()) < 0.5


def test_entries_equal_the_materialised_product_with_folded_layernorm(trained_one_layer, world, vocab, ov_table):
    """M[A,B] = P(W_E[A])·diag(w1)·W_V·W_O · P·diag(w_f)·W_U[:,B], computed the slow way."""
    model = trained_one_layer
    fact = world[0]
    a, b = vocab.entity_ids(fact.subject)[0], vocab.entity_ids(fact.object)[0]
    layer, head = 0, 2
    centre = lambda v: v - v.mean(-1, keepdim=True)  # noqa: E731
    with torch.no_grad():
        source = centre(model.W_E[a]) * model.blocks[0].ln1.w
        unembed = centre(model.ln_final.w * model.W_U[:, b])
        expected = source @ model.W_V[layer, head] @ model.W_O[layer, head] @ unembed
    row = ov_table[(ov_table.fact == 0) & (ov_table["head"] == head)]
    assert float(row.entry_ab.iloc[0]) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_direct_and_qk_circuits_and_layer_head_selection(trained_one_layer, world, vocab):
    table = circuit_table(trained_one_layer, world, vocab.entity_ids, kinds=("direct", "qk"), heads=[1])
    assert set(table.circuit) == {"direct", "qk"}
    assert set(table[table.circuit == "qk"]["head"]) == {1}
    assert table.z_ab.notna().all()
    with torch.no_grad():
        a, b = (vocab.entity_ids(x)[0] for x in (world[3].subject, world[3].object))
        expected = trained_one_layer.W_E[a] - trained_one_layer.W_E[a].mean()
        expected = expected * trained_one_layer.blocks[0].ln1.w @ trained_one_layer.W_Q[0, 1]
        key = (trained_one_layer.W_E[b] - trained_one_layer.W_E[b].mean()) * trained_one_layer.blocks[0].ln1.w
        expected = float(expected @ (key @ trained_one_layer.W_K[0, 1]))
    row = table[(table.circuit == "qk") & (table.fact == 3)]
    assert float(row.entry_ab.iloc[0]) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # the direct path alone (it had raised IndexError on the layers' empty blocks): the same rows as beside QK
    direct = circuit_table(trained_one_layer, world, vocab.entity_ids, kinds=("direct",))
    assert set(direct.circuit) == {"direct"}
    pd.testing.assert_frame_equal(direct, table[table.circuit == "direct"].reset_index(drop=True), check_categorical=False)


def test_untrained_model_shows_no_structure(world, vocab):
    table = circuit_table(build_model("one-layer", vocab.d_vocab, seed=3), world, vocab.entity_ids, kinds=("ov",))
    assert abs(table.z_ab.mean()) < 0.3 and abs(table.z_ba.mean()) < 0.3


def test_bilinear_theta_has_the_same_asymmetry(world, vocab):
    model = BilinearModel(vocab.d_vocab, d_model=256, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=60, lr=0.05, progress=False))
    table = circuit_table(model, world, vocab.entity_ids)
    assert set(table.circuit) == {"theta"}
    forward_trained = one_way(table, "forward")
    assert forward_trained.z_ab.mean() > 3 and abs(forward_trained.z_ba.mean()) < 0.5
    assert one_way(table, "reverse").z_ba.mean() > 3


def test_bilinear_model_refuses_multi_token_entities(vocab):
    from facts.schema import FactError
    from facts.token_worlds import reversal_world

    two_token = reversal_world(n_pairs=20, k=2, seed=0)
    with pytest.raises(FactError, match=r"has 2 tokens; the bilinear model's Θ relates single tokens"):
        circuit_table(BilinearModel(vocab.d_vocab, d_model=16), two_token, vocab.entity_ids)


def test_multi_token_entities_are_read_as_their_mean_token():
    """k = 2: an entry is the mean of the four token-level entries M[a_i, b_j], and a one-layer model
    trained on two-token words shows the same one-way asymmetry as on one-token words."""
    from facts.token_worlds import reversal_world

    two_token = reversal_world(n_pairs=120, k=2, seed=1)
    vocab = TokenVocab()
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    train(model, tokenize(two_token, vocab).where(split="train"), TrainConfig(steps=60, lr=1e-2, progress=False))
    table = circuit_table(model, two_token, vocab.entity_ids, kinds=("direct", "ov"))
    fact = two_token[5]
    a, b = vocab.entity_ids(fact.subject), vocab.entity_ids(fact.object)
    assert len(a) == len(b) == 2
    centre = lambda v: v - v.mean(-1, keepdim=True)  # noqa: E731
    with torch.no_grad():
        pairs = [float(centre(model.W_E[i]) @ centre(model.ln_final.w * model.W_U[:, j])) for i in a for j in b]
    row = table[(table.circuit == "direct") & (table.fact == 5)]
    assert float(row.entry_ab.iloc[0]) == pytest.approx(sum(pairs) / 4, rel=1e-4, abs=1e-5)
    ov = table[table.circuit == "ov"]
    assert one_way(ov, "forward").z_ab.mean() > 2 and abs(one_way(ov, "forward").z_ba.mean()) < 0.5
    assert one_way(ov, "reverse").z_ba.mean() > 2 and abs(one_way(ov, "reverse").z_ab.mean()) < 0.5


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=[1]), r"layer 1 is out of range: the model has layers 0..0"),
    (dict(heads=[4]), r"head 4 is out of range: the model has heads 0..3"),
    (dict(kinds=("mlp",)), "unknown circuit kind"),
    (dict(n_controls=1), "n_controls must be ≥ 2"),
])
def test_bad_requests_are_named(trained_one_layer, world, vocab, kwargs, message):
    with pytest.raises(ValueError, match=message):
        circuit_table(trained_one_layer, world, vocab.entity_ids, **kwargs)


def test_an_answer_whose_every_other_candidate_is_also_right_says_so(trained_one_layer, world, vocab):
    """Both objects of its kind are right answers for the given entity: no control is left, and the message had
    said the answer was "the only entity of its kind" (there are two)."""
    from facts.schema import Fact, FactError, FactSet

    e = [fact.subject for fact in world.facts[:3]]
    facts = FactSet((Fact(e[0], "r1", e[1]), Fact(e[0], "r2", e[2])), world="two right answers")
    with pytest.raises(FactError, match=rf"no control answers for '{e[1]}': every other entity of its kind is the "
                                        r"given entity or another right answer for it"):
        circuit_table(trained_one_layer, facts, vocab.entity_ids, kinds=("direct",))
    alone = FactSet((Fact(e[0], "r1", e[1]),), world="one fact")
    with pytest.raises(FactError, match=rf"no control answers for '{e[1]}': it is the only entity of its kind"):
        circuit_table(trained_one_layer, alone, vocab.entity_ids, kinds=("direct",))


def test_entities_outside_the_vocabulary_are_named(world):
    small = build_model("one-layer", d_vocab=100)
    from facts.token_worlds import TokenVocab

    with pytest.raises(ValueError, match="outside the model's vocabulary of 100"):
        circuit_table(small, world, TokenVocab().entity_ids)


def test_a_row_never_takes_an_entity_its_given_one_is_paired_with_as_a_control():
    """In a chain world (x → y, y → z, x ⇝ z in one fact set, as a run's facts.jsonl holds them) the objects are
    y's and z's, so Y[x, z]'s controls could draw x's own y, whose entry "x → y" trained; no row's controls
    hold a partner of its given entity, nor the given entity itself (a copying head's largest entry), while the
    plain reversal world's rows draw what they drew before."""
    from facts.token_worlds import chain_world, reversal_world
    from probes.circuits import _entity_tokens, _rows

    vocab = TokenVocab()
    chain = chain_world(n_triples=20, seed=0)
    tokens = _entity_tokens(chain, vocab.entity_ids, vocab.d_vocab)
    names = {index: name for name, index in tokens.index_of.items()}
    partners: dict[str, set[str]] = {}
    for fact in chain:
        partners.setdefault(fact.subject, set()).add(fact.object)
        partners.setdefault(fact.object, set()).add(fact.subject)
    sources, targets = _rows(chain, tokens, 8, 0)
    for source, row in zip(sources.tolist(), targets.tolist()):
        assert not {names[t] for t in row[1:]} & partners[names[source]]
        assert source not in row[1:]  # nor the given entity itself (y is given for z and an answer for x)
    world = reversal_world(n_pairs=30, seed=0)
    plain = _entity_tokens(world, vocab.entity_ids, vocab.d_vocab)
    _, drawn = _rows(world, plain, 8, 0)
    generator = torch.Generator().manual_seed(0)  # one partner per entity: the draws of a slot-only pool
    from probes.circuits import _controls
    objects = list(dict.fromkeys(f.object for f in world))
    subjects = list(dict.fromkeys(f.subject for f in world))
    expected = [[plain.index_of[e] for e in (answer, *_controls(pool, answer, plain.index_of, 8, generator))]
                for fact in world for answer, pool in ((fact.object, objects), (fact.subject, subjects))]
    assert drawn.tolist() == expected


def test_a_kind_smaller_than_k_gives_each_entity_as_a_control_equally_often():
    """16 people's descriptions against K = 64 controls (a fine-tune's circuits): each of the 15 other descriptions
    is a control 4 or 5 times, so the controls' mean and spread are the kind's own; independent draws had
    weighted them 0 to 10 times at random. A kind of K or more is drawn without replacement, as before."""
    from collections import Counter

    from probes.circuits import _controls

    pool = [f"d{i}" for i in range(16)]
    index_of = {name: i for i, name in enumerate(pool)}
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        counts = Counter(_controls(pool, "d0", index_of, 64, generator))
        assert set(counts) == set(pool[1:]) and set(counts.values()) <= {4, 5} and sum(counts.values()) == 64
    large = _controls(pool, "d0", index_of, 8, generator)
    assert len(set(large)) == 8 and "d0" not in large


def materialised_circuits(model, entities, entity_ids, layer, head):
    """Each circuit's matrix over ``entities``, the slow way, in float64: x_E and u_E the mean embedding and
    unembedding over E's tokens, P the centring (under LayerNorm; the identity under RMSNorm),
    s_E = P(x_E) ⊙ w_ln1 and ũ_E = P(w_final ⊙ u_E):
    direct[A, B] = P(x_A)·ũ_B, ov[A, B] = s_A·OV[l,h]·ũ_B, qk[A, B] = s_A·QK[l,h]·s_B, with TransformerLens's
    ``FactoredMatrix`` factors (its own repetition of key/value heads)."""
    layer_norm = str(model.cfg.normalization_type).startswith("LN")
    centre = (lambda v: v - v.mean(-1, keepdim=True)) if layer_norm else (lambda v: v)  # noqa: E731
    with torch.no_grad():
        x = torch.stack([model.W_E[list(entity_ids(e))].double().mean(0) for e in entities])
        u = torch.stack([model.W_U[:, list(entity_ids(e))].double().mean(1) for e in entities])
        unembedded = centre(model.ln_final.w.double() * u)
        given = centre(x) * model.blocks[layer].ln1.w.double()
        ov, qk = model.OV[layer, head], model.QK[layer, head]
        return {"direct": centre(x) @ unembedded.T,
                "ov": given @ ov.A.double() @ ov.B.double() @ unembedded.T,
                "qk": given @ qk.A.double() @ qk.B.double() @ given.T}


def expected_rows(matrix, facts, entity_ids, n_controls, seed):
    """Per fact, (M[A,B], M[B,A], z_ab, z_ba) from the materialised ``matrix`` (over ``facts.entities()``), each
    row z-scored against the controls ``_rows`` draws: z = (M[g,a] − mean_c M[g,c]) / std_c M[g,c] with the
    unbiased (n − 1) std over the K controls alone (the answer is not one of them)."""
    from probes.circuits import _entity_tokens, _rows

    entities = list(facts.entities())
    tokens = _entity_tokens(facts, entity_ids, 1 << 30)
    position = {}  # a token sequence's index → the matrix row of an entity that spells it
    for i, entity in enumerate(entities):
        position.setdefault(tokens.index_of[entity], i)
    sources, targets = _rows(facts, tokens, n_controls, seed)
    m = matrix.numpy()
    entries, zs = [], []
    for source, row in zip(sources.tolist(), targets.tolist()):
        given, (answer, *controls) = position[source], [position[t] for t in row]
        assert len(controls) == n_controls
        assert row[0] not in row[1:] or len(position) < len(entities)  # only where two entities share tokens
        values = m[given, controls]
        entries.append(m[given, answer])
        varies = values.std() > 1e-9 * np.abs(values).max()  # float64 rounding aside
        zs.append((m[given, answer] - values.mean()) / values.std(ddof=1) if varies else float("nan"))
    entries, zs = np.array(entries), np.array(zs)
    return entries[0::2], entries[1::2], zs[0::2], zs[1::2]


def assert_table_matches_the_slow_way(table, model, facts, entity_ids, layer, heads, n_controls, seed=0):
    """Every (fact, circuit) row of ``table`` at ``layer`` and ``heads`` (and the direct path) against
    :func:`expected_rows`: entries to 1e-4 (relative), z-scores and asymmetry to 1e-5 (absolute, or relative
    for a large z: the table's are float32 arithmetic). Returns the number of (circuit, head) blocks checked."""
    n_checked = 0
    for head in heads:
        matrices = materialised_circuits(model, list(facts.entities()), entity_ids, layer, head)
        for kind in sorted(set(table.circuit)):
            rows = table[(table.circuit == kind)
                         & ((table["head"] == head) if kind != "direct" else table["head"].isna())
                         & ((table.layer == layer) if kind != "direct" else table.layer.isna())]
            rows = rows.sort_values("fact")
            assert list(rows.fact) == list(range(len(facts)))
            entry_ab, entry_ba, z_ab, z_ba = expected_rows(matrices[kind], facts, entity_ids, n_controls, seed)
            scale = np.abs(entry_ab).max()
            np.testing.assert_allclose(rows.entry_ab, entry_ab, rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_allclose(rows.entry_ba, entry_ba, rtol=1e-4, atol=1e-5 * scale)
            np.testing.assert_allclose(rows.z_ab, z_ab, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(rows.z_ba, z_ba, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(rows.asymmetry, z_ab - z_ba, rtol=1e-5, atol=1e-5)
            n_checked += 1
    return n_checked


def test_z_scores_and_asymmetry_equal_the_materialised_rows_against_their_controls(trained_one_layer, world, vocab):
    """For every fact and circuit (direct; OV and QK of heads 0 and 2), with M the circuit materialised in
    float64 (:func:`materialised_circuits`) and each row's K = 64 controls as ``_rows`` draws them:
    z_ab = (M[A,B] − mean_c M[A,c]) / std_c M[A,c], z_ba = (M[B,A] − mean_c M[B,c]) / std_c M[B,c] (unbiased std of
    the controls alone), asymmetry = z_ab − z_ba, to 1e-5. A biased std moves a z of 3 by 0.023; the answer among
    its own controls, or the asymmetry's sign or a z of the other direction, by more."""
    table = circuit_table(trained_one_layer, world, vocab.entity_ids, heads=[0, 2])
    assert set(table.circuit) == {"direct", "ov", "qk"} and table.z_ab.notna().all() and table.z_ba.notna().all()
    assert (table.z_ab.abs() > 2.5).sum() > 100  # trained entries stand out: the z-scores are not all near 0
    n_checked = assert_table_matches_the_slow_way(table, trained_one_layer, world, vocab.entity_ids, 0, [0, 2], 64)
    assert n_checked == 2 * 3


def test_z_scores_and_asymmetry_on_a_grouped_query_rms_norm_model(tiny_models):
    """The same identities on a tiny random Llama (RMSNorm: no centring; 4 query heads over 2 key/value heads),
    layer 1, heads 1 and 3 (the second of each key/value group), K = 5 controls from 11 candidates."""
    from facts.schema import Fact, FactSet

    model = tiny_models["llama"].backends["hooked"]
    names = [f"e{i}" for i in range(24)]
    facts = FactSet(tuple(Fact(a, "r", b) for a, b in zip(names[::2], names[1::2])), world="tiny")
    token = {name: [1000 + 37 * i] for i, name in enumerate(names)}
    table = circuit_table(model, facts, lambda entity: token[entity], layers=[1], heads=[1, 3], n_controls=5)
    assert set(table.circuit) == {"direct", "ov", "qk"} and table.z_ab.notna().all() and table.z_ba.notna().all()
    assert assert_table_matches_the_slow_way(table, model, facts, lambda entity: token[entity], 1, [1, 3], 5) == 2 * 3


def test_a_row_whose_controls_spell_the_answer_has_no_z_score(trained_one_layer, world, vocab):
    """Three facts whose objects all map to one token (two spellings a tokenizer merges): the forward rows'
    controls are the other objects, whose entries equal the answer's, so std_c = 0 and z_ab (and the
    asymmetry) is NaN, not a made-up number; the reverse rows' controls, the other subjects, vary, and z_ba
    is the materialised one."""
    from facts.schema import FactSet

    facts = FactSet(world.facts[:3], world="merged objects")
    objects = {fact.object for fact in facts}
    merged = vocab.entity_ids(facts[0].object)

    def ids(entity):
        return merged if entity in objects else vocab.entity_ids(entity)

    table = circuit_table(trained_one_layer, facts, ids, heads=[1], n_controls=4)
    assert table.z_ab.isna().all() and table.asymmetry.isna().all()
    assert table.z_ba.notna().all()
    for kind in ("direct", "ov", "qk"):
        rows = table[table.circuit == kind].sort_values("fact")
        matrix = materialised_circuits(trained_one_layer, list(facts.entities()), ids, 0, 1)[kind]
        _, _, z_ab, z_ba = expected_rows(matrix, facts, ids, 4, 0)
        assert np.isnan(z_ab).all()
        np.testing.assert_allclose(rows.z_ba, z_ba, rtol=1e-5, atol=1e-5)


def test_controls_that_vary_only_by_rounding_give_no_z_score():
    """``_zscores``, per row (entry, controls...): controls one float32 ulp apart do not vary (their spread is
    rounding, ≲ 1e-6 of their size), so NaN, where a cut-off at std > 0 would give z ≈ 10⁷; controls all 0
    and controls equal to the entry, NaN; controls varying by 1e-4 of their size, the exact unbiased z."""
    from probes.circuits import _zscores

    ulp = float(torch.nextafter(torch.tensor(3.0), torch.tensor(4.0)))  # 3 + 2⁻²²
    step = 2.0**-12  # ≈ 8e-5 of 3; every value below is exact in float32
    varying = [3.0, 3.0 + step, 3.0 - step, 3.0 + 2 * step]
    rows = torch.tensor([[5.0, 3.0, ulp, 3.0, ulp],
                         [1.0, 0.0, 0.0, 0.0, 0.0],
                         [3.0, 3.0, 3.0, 3.0, 3.0],
                         [3.0 + 4 * step, *varying]], dtype=torch.float32)[..., None]
    z = _zscores(rows)[:, 0]
    assert torch.isnan(z[:3]).all()
    controls = np.array(varying)
    expected = (3.0 + 4 * step - controls.mean()) / controls.std(ddof=1)  # (7/4)·step / (√(11/12)·step)
    assert float(z[3]) == pytest.approx(expected, rel=1e-6)
