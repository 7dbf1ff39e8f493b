import itertools

import pytest
import torch
from tiny_models import BACKENDS_BY_ARCHITECTURE, perturbed

from facts.tokens import Example, tokenize
from models.backend import hooked_state_dict, load_hooked_state_dict
from models.transformer import build_model
from probes.attribution import (
    Patching,
    _last_position_head_results,
    as_examples,
    attribution_patch,
    direct_logit_attribution,
    forward_reverse_pairs,
    logit_lens,
    patch_heads,
    patch_residual,
)


@pytest.fixture(scope="module")
def batch(world, vocab):
    return tokenize(world, vocab)


@pytest.fixture(scope="module")
def sample(batch):
    """The statements of the first 15 facts: both directions, trained and held out."""
    return batch.take(range(30))


@pytest.fixture(scope="module")
def tiny(vocab):
    """A 2-layer model with MLPs whose LayerNorm weights and every bias are random (not 1 and 0 as
    at initialisation), so each term of an attribution, and LayerNorm folding, is exercised."""
    model = build_model("tiny", vocab.d_vocab, seed=0)
    generator = torch.Generator().manual_seed(0)
    state = hooked_state_dict(model)  # HookedTransformer's names under either TransformerLens line
    for name, parameter in state.items():
        kind = name.rsplit(".", 1)[-1]
        if kind in ("w", "b") or kind.startswith("b_"):
            state[name] = 0.3 * torch.randn(parameter.shape, generator=generator) + (1.0 if kind == "w" else 0.0)
    load_hooked_state_dict(model, state)
    return model.eval()


def answer_logits(model, examples):
    """Logits at the last prompt position, by a plain forward pass (prompts of one length)."""
    with torch.no_grad():
        return model(torch.tensor([e.prompt for e in examples]))[:, -1]


def first_answer_logits(model, examples):
    logits = answer_logits(model, examples)
    return logits[torch.arange(len(examples)), [e.answer[0] for e in examples]].cpu()  # the tables are on the CPU


# --- direct logit attribution ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trained_one_layer", "tiny"])
@pytest.mark.parametrize("by", ["head", "layer"])
def test_attributions_sum_to_the_answer_logit(request, sample, name, by):
    model = request.getfixturevalue(name)
    table = direct_logit_attribution(model, sample, by=by)
    totals = torch.tensor(table.groupby("statement").attribution.sum().to_numpy())
    expected = first_answer_logits(model, as_examples(sample))
    assert torch.allclose(totals.float(), expected, atol=1e-4)
    assert (table.groupby("kind").attribution.apply(lambda a: a.abs().max()) > 1e-3).all()  # no term is idle


def test_attributions_of_a_logit_difference_sum_to_the_difference(tiny, world, vocab):
    statements = [(0, "forward"), (0, "reverse"), (3, "forward"), (7, "reverse")]
    examples = [vocab.example(world, i, d) for i, d in statements]
    controls = [vocab.example(world, i, d, answer=world[i + 1].object) for i, d in statements]
    table = direct_logit_attribution(tiny, examples, controls=controls)
    logits = answer_logits(tiny, examples).cpu()
    rows = torch.arange(len(examples))
    expected = logits[rows, [e.answer[0] for e in examples]] - logits[rows, [c.answer[0] for c in controls]]
    assert torch.allclose(torch.tensor(table.groupby("statement").attribution.sum().to_numpy()).float(), expected,
                          atol=1e-4)
    assert (table.control_token.to_numpy() == [c.answer[0] for c in controls for _ in range(15)]).all()


def test_heads_and_the_attention_bias_add_up_to_their_layer(tiny, sample):
    by_head = direct_logit_attribution(tiny, sample, by="head")
    by_layer = direct_logit_attribution(tiny, sample, by="layer")
    attention = by_head[by_head.kind.isin(["head", "attn bias"])].groupby(["statement", "layer"]).attribution.sum()
    layers = by_layer[by_layer.kind == "attn"].set_index(["statement", "layer"]).attribution
    assert torch.allclose(torch.tensor(attention.to_numpy()), torch.tensor(layers.loc[attention.index].to_numpy()),
                          atol=1e-5)
    shared = ["embed", "pos_embed", "mlp", "unembed bias"]
    assert torch.allclose(torch.tensor(by_head[by_head.kind.isin(shared)].attribution.to_numpy()),
                          torch.tensor(by_layer[by_layer.kind.isin(shared)].attribution.to_numpy()))


def final_norm_terms(model, cache, vectors, answers, centre, centre_terms=None):
    """What each vector in ``vectors`` ([component, batch, d_model], written at the last position) adds to the
    answer logit, by the docstring's math done by hand: ``(v − mean(v)) / s · (w ⊙ W_U[:, t])`` (no mean for
    RMSNorm: ``centre`` False), with s recomputed here from the final residual stream r at the last position
    (√(var(r) + ε) for LayerNorm, √(mean(r²) + ε) for RMSNorm) and asserted to be the scale of the run. Float64;
    no helper of the probe is called. ``centre_terms=False`` leaves the mean of each term in (a wrong reading
    of a LayerNorm, to show that the rows tell it apart)."""
    resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, -1].double()
    centred = resid - resid.mean(-1, keepdim=True) if centre else resid
    scale = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()  # [batch, 1]
    assert torch.allclose(scale, cache["ln_final.hook_scale"][:, -1].double(), rtol=1e-6)
    vectors = vectors.double()
    if centre if centre_terms is None else centre_terms:
        vectors = vectors - vectors.mean(-1, keepdim=True)
    directions = model.ln_final.w.double()[:, None] * model.W_U.double()[:, answers]  # [d_model, batch]
    return torch.einsum("cbd,db->cb", vectors / scale, directions)


def rows_by_component(table, labels, n_statements):
    """The table's attributions as [label, statement], in the order of ``labels``."""
    rows = table.set_index(["statement", "component"]).attribution
    return torch.tensor([[float(rows[(s, label)]) for s in range(n_statements)] for label in labels],
                        dtype=torch.float64)


def assert_labels_tell_apart(expected, labels):
    """Every two labels' values differ by > 1e-3 on some statement: so any relabelling (heads permuted, layers
    swapped) moves at least one row by more than the tolerance of 1e-5, and fails the row-by-row check."""
    for (a, x), (b, y) in itertools.combinations(zip(labels, expected), 2):
        assert (x - y).abs().max() > 1e-3, f"{a} and {b} write the same: a swap of their labels would pass"


def test_each_component_row_is_its_own_write_through_the_final_norm(tiny, sample):
    """Row by row, not by sums: each "L{l}H{h}" row is TransformerLens's ``stack_head_results`` for that label
    (z_h W_O^h at the last position), each "L{l} mlp", "L{l} attn bias", "embed" and "pos_embed" row that
    component's own write, projected by hand as ``(v − mean(v)) / s · (w ⊙ W_U[:, t])``; the "unembed bias" row
    is b · W_U[:, t] + b_U[t]. ``tiny`` has random LayerNorm weights and biases and a nonzero b_O, so the
    centring, the scale and every row kind matter; the answers differ by statement."""
    examples = as_examples(sample)[:8]
    answers = [e.answer[0] for e in examples]
    assert len(set(answers)) == len(answers) and tiny.cfg.normalization_type == "LN"
    table = direct_logit_attribution(tiny, examples, by="head")
    with torch.no_grad():
        _, cache = tiny.run_with_cache(torch.tensor([e.prompt for e in examples]))
        heads, head_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        layers = range(tiny.cfg.n_layers)
        others = {"embed": cache["hook_embed"][:, -1], "pos_embed": cache["hook_pos_embed"][:, -1]}
        for layer in layers:
            others[f"L{layer} attn bias"] = tiny.blocks[layer].attn.b_O.expand(len(examples), -1)
            others[f"L{layer} mlp"] = cache[f"blocks.{layer}.hook_mlp_out"][:, -1]
        labels = head_labels + list(others)
        expected = final_norm_terms(tiny, cache, torch.cat([heads, torch.stack(list(others.values()))]), answers,
                                    centre=True)
        unembed_bias = tiny.ln_final.b.double() @ tiny.W_U.double()[:, answers] + tiny.b_U.double()[answers]
        uncentred = final_norm_terms(tiny, cache, heads, answers, centre=True, centre_terms=False)
    assert head_labels == [f"L{l}H{h}" for l in layers for h in range(tiny.cfg.n_heads)]
    assert set(table.component) == set(labels) | {"unembed bias"}
    got = rows_by_component(table, labels, len(examples))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()
    assert torch.allclose(rows_by_component(table, ["unembed bias"], len(examples))[0], unembed_bias, atol=1e-5)
    heads_table = table[table.kind == "head"].drop_duplicates("component")
    assert [f"L{l}H{h}" for l, h in zip(heads_table.layer, heads_table["head"])] == list(heads_table.component)
    assert_labels_tell_apart(expected, labels)
    assert (uncentred - expected[: len(head_labels)]).abs().max() > 1e-2  # a probe that did not centre would fail


@pytest.fixture(scope="module")
def llama(tiny_models):
    """The tiny Llama (RMSNorm, 4 query heads sharing 2 key/value heads) as a HookedTransformer, with random
    norm weights, b_O and b_U."""
    return perturbed(tiny_models["llama"].backends["hooked"])


def test_grouped_query_heads_are_attributed_by_query_head(llama):
    """Under grouped-query attention (4 query heads, 2 key/value groups: query head h reads group h // 2) each
    query head is its own row. Recomputed by hand from the cached attention pattern and the cached values of
    the *groups*, z_h = Σ_k pattern[h, −1, k] · v[k, h // 2] and then z_h W_O^h / s · (w ⊙ W_U[:, t]) (RMSNorm:
    no mean): it matches each "L{l}H{h}" row, L1H3 (the second query head of the second group) included; reading
    head 3 from the first group instead would move its row by more than the tolerance."""
    cfg = llama.cfg
    assert (cfg.n_heads, cfg.n_key_value_heads, cfg.normalization_type) == (4, 2, "RMS")
    prompts = torch.randint(0, 1000, (3, 7), generator=torch.Generator().manual_seed(2))
    answers = [11, 500, 2042]
    examples = [Example(tuple(p), (a,), i, "forward", "heldout")
                for i, (p, a) in enumerate(zip(prompts.tolist(), answers))]
    table = direct_logit_attribution(llama, examples, by="head")
    group_size = cfg.n_heads // cfg.n_key_value_heads
    labels, writes, wrong_group = [], [], {}
    with torch.no_grad():
        _, cache = llama.run_with_cache(prompts)
        for layer, head in itertools.product(range(cfg.n_layers), range(cfg.n_heads)):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][:, head, -1].double()  # [batch, key]
            values = cache[f"blocks.{layer}.attn.hook_v"].double()  # [batch, key, kv_head, d_head]
            assert values.shape[2] == cfg.n_key_value_heads
            z = torch.einsum("bk,bkd->bd", pattern, values[:, :, head // group_size])
            W_O = llama.blocks[layer].attn.W_O[head].double()
            labels.append(f"L{layer}H{head}")
            writes.append(z @ W_O)
            other = (head // group_size + 1) % cfg.n_key_value_heads
            wrong_group[labels[-1]] = torch.einsum("bk,bkd->bd", pattern, values[:, :, other]) @ W_O
        stacked, tl_labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
        assert tl_labels == labels and torch.allclose(torch.stack(writes), stacked.double(), atol=1e-5)
        expected = final_norm_terms(llama, cache, torch.stack(writes), answers, centre=False)
        misread = final_norm_terms(llama, cache, wrong_group["L1H3"][None], answers, centre=False)[0]
    got = rows_by_component(table, labels, len(examples))
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()
    assert_labels_tell_apart(expected, labels)
    assert (misread - expected[labels.index("L1H3")]).abs().max() > 1e-2


def test_last_position_head_results_are_transformer_lens_stack_head_results(tiny, sample):
    """Per-head results at the last position only are bitwise TransformerLens's ``stack_head_results`` (which
    computes every position of every layer first: the peak of `probe` on Gemma 3 270M)."""
    examples = as_examples(sample)[:4]
    with torch.no_grad():
        _, cache = tiny.run_with_cache(torch.tensor([e.prompt for e in examples]))
        expected = cache.stack_head_results(layer=-1, pos_slice=-1)
        ours = _last_position_head_results(tiny, cache).flatten(0, 1)
    assert ours.shape == expected.shape == (tiny.cfg.n_layers * tiny.cfg.n_heads, len(examples), tiny.cfg.d_model)
    assert torch.equal(ours, expected)


def test_the_table_names_every_component_in_model_order(trained_one_layer, sample):
    table = direct_logit_attribution(trained_one_layer, sample)
    first = table[table.statement == 0]
    assert list(first.component) == ["embed", "pos_embed", "L0H0", "L0H1", "L0H2", "L0H3", "L0 attn bias",
                                      "unembed bias"]
    assert list(first.kind) == ["embed", "pos_embed"] + ["head"] * 4 + ["attn bias", "unembed bias"]
    assert first["head"].tolist()[2:6] == [0, 1, 2, 3]
    assert first["layer"].isna().tolist() == [True, True] + [False] * 5 + [True]
    assert len(table) == 8 * len(sample) and table.statement.is_monotonic_increasing
    assert list(table.columns) == ["statement", "fact", "direction", "split", "answer_token", "control_token",
                                   "component", "kind", "layer", "head", "attribution"]
    assert table.control_token.isna().all()
    assert set(table.direction) == {"forward", "reverse"} and set(table.split) == {"train", "heldout"}


def test_trained_answers_get_larger_logits_than_held_out_ones(trained_one_layer, batch):
    table = direct_logit_attribution(trained_one_layer, batch)
    logit = table.groupby(["statement", "split"]).attribution.sum().groupby("split").mean()
    assert logit["train"] > logit["heldout"] + 5.0


def test_bad_controls_are_refused(tiny, world, vocab):
    examples = [vocab.example(world, 0, "forward"), vocab.example(world, 1, "forward")]
    with pytest.raises(ValueError, match="1 controls for 2 statements"):
        direct_logit_attribution(tiny, examples, controls=examples[:1])
    with pytest.raises(ValueError, match=r"fact 1 \(forward\): the control's prompt differs"):
        direct_logit_attribution(tiny, examples, controls=[examples[0], examples[0]])
    with pytest.raises(ValueError, match="by must be"):
        direct_logit_attribution(tiny, examples, by="neuron")
    with pytest.raises(ValueError, match="selection is empty"):
        direct_logit_attribution(tiny, [])


def test_token_ids_outside_the_vocabulary_are_refused_by_every_probe(tiny, world, vocab):
    """``models.scoring.check_token_ids`` at every entry point: a negative id would index W_U or W_E from the end
    (an answer of −1 was attributed as the last token of the vocabulary), one past the end would fail deep in
    a forward pass. The last id of the vocabulary is a token like any other."""
    size = tiny.cfg.d_vocab
    forward, reverse = vocab.example(world, 0, "forward"), vocab.example(world, 0, "reverse")

    def answer(example, token):
        return Example(example.prompt, (token,), example.fact, example.direction, example.split)

    def prompt(example, token):
        return Example((token,) + example.prompt[1:], example.answer, example.fact, example.direction, example.split)

    for bad in (-1, size):
        refused = rf"{tiny.cfg.model_name}, .*: fact 0 \((forward|reverse)\) has token id {bad}, outside the model's vocabulary of {size}"
        calls = {
            "answer": lambda: direct_logit_attribution(tiny, [answer(forward, bad)], by="layer"),
            "control": lambda: direct_logit_attribution(tiny, [forward], controls=[answer(forward, bad)]),
            "prompt": lambda: direct_logit_attribution(tiny, [prompt(forward, bad)]),
            "lens answer": lambda: logit_lens(tiny, [answer(forward, bad)]),
            "lens prompt": lambda: logit_lens(tiny, [prompt(forward, bad)]),
            "patching target": lambda: patch_residual(tiny, [forward], [reverse], targets=[bad]),
            "clean prompt": lambda: patch_residual(tiny, [prompt(forward, bad)], [reverse]),
            "corrupted prompt": lambda: patch_heads(tiny, [forward], [prompt(reverse, bad)]),
            "attribution patching target": lambda: attribution_patch(tiny, [forward], [reverse], targets=[(bad,)]),
            "attribution patching prompt": lambda: attribution_patch(tiny, [forward], [prompt(reverse, bad)]),
        }
        for what, call in calls.items():
            with pytest.raises(ValueError, match=refused):
                call()
    last = direct_logit_attribution(tiny, [answer(forward, size - 1)], by="layer")
    assert set(last.answer_token) == {size - 1}


# --- activation patching --------------------------------------------------------------------------


def test_forward_reverse_pairs_line_up_the_two_prompts_of_each_fact(sample):
    clean, corrupt = forward_reverse_pairs(sample)
    assert len(clean) == 15
    assert [e.fact for e in clean] == [e.fact for e in corrupt] == list(range(15))
    assert {e.direction for e in clean} == {"forward"} and {e.direction for e in corrupt} == {"reverse"}
    assert all(f.prompt[0] == r.answer[0] and r.prompt[0] == f.answer[0] for f, r in zip(clean, corrupt))
    with pytest.raises(ValueError, match="no fact has both"):
        forward_reverse_pairs(sample.where(direction="forward"))
    twice = as_examples(sample)
    restated = twice[2]
    twice.append(Example(restated.prompt, restated.answer[::-1], restated.fact, restated.direction, restated.split))
    with pytest.raises(ValueError, match=rf"fact {restated.fact} \({restated.direction}\) appears twice .*row 30"):
        forward_reverse_pairs(twice)  # which of the two to pair would be a guess


@pytest.mark.parametrize("name", ["trained_one_layer", "tiny"])
def test_patching_the_last_residual_at_the_last_position_recovers_the_clean_run(request, sample, name):
    model = request.getfixturevalue(name)
    last = model.cfg.n_layers - 1
    clean, corrupt = forward_reverse_pairs(sample)
    result = patch_residual(model, clean, corrupt, site="resid_post", layers=[last])
    assert result.metric.shape == (1, 2) and result.layers == (last,)
    assert result.metric[0, 1].item() == pytest.approx(result.clean, abs=1e-5)
    # after the last layer nothing reads position 0 any more
    assert result.metric[0, 0].item() == pytest.approx(result.corrupt, abs=1e-5)
    assert result.recovered[0, 1].item() == pytest.approx(1.0, abs=1e-4)
    with torch.no_grad():
        logits = model(torch.tensor([e.prompt for e in clean]))[:, -1].log_softmax(-1)
    assert result.clean == pytest.approx(logits[torch.arange(15), [e.answer[0] for e in clean]].mean().item(), abs=1e-5)


def test_forward_into_reverse_patching_localises_the_given_entity(trained_one_layer, sample):
    """The trained forward prompt predicts its answer, the reverse prompt does not; patching the
    entity position in the input restores most of it, patching the relation token alone does not."""
    clean, corrupt = forward_reverse_pairs(sample)
    result = patch_residual(trained_one_layer, clean, corrupt, site="resid_pre")
    assert result.clean > result.corrupt + 3.0
    entity, relation = result.recovered[0].tolist()
    assert entity > 0.5 and entity > relation


def test_patching_a_run_into_itself_changes_nothing(tiny, sample):
    clean, _ = forward_reverse_pairs(sample)
    for result in (patch_residual(tiny, clean, clean), patch_heads(tiny, clean, clean)):
        assert result.clean == result.corrupt
        assert torch.allclose(result.metric, torch.full_like(result.metric, result.clean), atol=1e-5)
    frame = patch_heads(tiny, clean, clean, layers=[0]).to_frame()
    assert list(frame.columns) == ["site", "layer", "head", "metric", "recovered"] and len(frame) == 4
    # no gap between the runs: no share of it recovered (it had been 0/0, or noise over noise at a gap of 1e-7)
    assert frame.recovered.isna().all() and list(frame["head"]) == [0, 1, 2, 3]
    near = Patching(torch.tensor([[-3.0, -2.5]]), (0,), "pos", "resid_pre", clean=-2.0000001, corrupt=-2.0)
    assert near.recovered.isnan().all()
    far = Patching(torch.tensor([[-3.0, -2.5]]), (0,), "pos", "resid_pre", clean=-2.0, corrupt=-4.0)
    assert far.recovered.tolist() == [[0.5, 0.75]]
    # positions counted from the end, where clean and corrupted prompts of other lengths are aligned
    assert list(far.to_frame().pos) == [-2, -1]


def test_patching_reads_the_target_tokens_it_is_given(tiny, sample):
    clean, corrupt = forward_reverse_pairs(sample)
    reverse_answers = [e.answer[0] for e in corrupt]
    result = patch_residual(tiny, clean, corrupt, site="resid_pre", layers=[0], targets=reverse_answers)
    with torch.no_grad():
        logits = tiny(torch.tensor([e.prompt for e in corrupt]))[:, -1].log_softmax(-1)
    assert result.corrupt == pytest.approx(logits[torch.arange(15), reverse_answers].mean().item(), abs=1e-5)


def test_patching_refuses_what_it_cannot_patch(tiny, trained_one_layer, sample):
    clean, corrupt = forward_reverse_pairs(sample)
    longer = Example(clean[1].prompt + (0,), clean[1].answer, clean[1].fact, "forward", "train")
    with pytest.raises(ValueError, match=r"same length.*fact 1 \(forward\) has 3"):
        patch_residual(tiny, [clean[0], longer], corrupt[:2])
    with pytest.raises(ValueError, match="as many clean as corrupted"):
        patch_residual(tiny, clean[:3], corrupt[:2])
    with pytest.raises(ValueError, match=r"layer 2 is out of range.*layers 0\.\.1"):
        patch_residual(tiny, clean, corrupt, layers=[0, 2])
    with pytest.raises(ValueError, match="site must be one of"):
        patch_residual(tiny, clean, corrupt, site="resid")
    with pytest.raises(ValueError, match="blocks.0.hook_resid_mid"):  # attention-only: no resid_mid
        patch_residual(trained_one_layer, clean, corrupt, site="resid_mid")
    with pytest.raises(ValueError, match="2 targets for 15 statements"):
        patch_heads(tiny, clean, corrupt, targets=[1, 2])
    shorter = Example(corrupt[0].prompt[1:], corrupt[0].answer, corrupt[0].fact, "reverse", "heldout")
    with pytest.raises(ValueError, match=r"head patching .* same length: the clean fact 0 \(forward\) has 2 tokens, "
                                         r"the corrupted fact 0 \(reverse\) has 1"):
        patch_heads(tiny, clean[:1], [shorter])


def one_site_a_pass(model, clean, corrupt, site, targets, layers):
    """TransformerLens's own activation patching, ``patching.generic_activation_patch``: one forward pass per site
    (layer and position from the prompts' end, or layer and head), the metric read off the whole logits."""
    import pandas as pd

    from models.backend import get_act_name, patching

    goal = torch.tensor(targets)
    teacher = goal[:, :-1]
    clean_tokens = torch.cat([torch.tensor([e.prompt for e in clean]), teacher], 1)
    corrupt_tokens = torch.cat([torch.tensor([e.prompt for e in corrupt]), teacher], 1)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens, names_filter=[get_act_name(site, layer) for layer in layers])
    if site == "z":
        index, setter, axis = range(model.cfg.n_heads), patching.layer_head_vector_patch_setter, "head"
    else:
        width, shift = min(len(clean[0].prompt), len(corrupt[0].prompt)), teacher.shape[1]
        index, setter, axis = range(-width - shift, -shift), patching.layer_pos_patch_setter, "pos"

    def metric(logits):
        logprobs = logits[:, -goal.shape[1]:].float().log_softmax(-1)
        return logprobs.gather(-1, goal[..., None])[..., 0].sum(-1).mean()

    sites = pd.DataFrame(list(itertools.product(layers, index)), columns=["layer", axis])
    with torch.no_grad():
        return patching.generic_activation_patch(model, corrupt_tokens, cache, metric, setter, site, index_df=sites)


@pytest.mark.parametrize("architecture, backend", [("llama", "hooked"), ("llama", "bridge"), ("gemma2", "bridge"),
                                                   ("gpt2", "hooked"), ("gemma3", "hooked")])
def test_patches_sharing_a_pass_give_transformer_lens_s_one_site_a_pass(architecture, backend, tiny_models):
    """Exact patching runs up to PATCHED_ROWS sites in one pass, each on its own copy of the corrupted statements; each
    site's number is the one TransformerLens's ``generic_activation_patch`` gives running that site alone: every
    resid_pre position (prompts of 7 and 9 tokens, past the tiny Gemmas' 4-token window, aligned at their end: 2 or 3
    layers × 9 sites, more than one pass) and every head's z, two statements with two-token targets, on several
    architectures and both backends (each unembedding only the scored positions: the Gemma 2 bridge's soft cap
    too); and on a model with a hook of its own attached (then read off its whole logits, which the hook may
    change: on a HookedTransformer's final norm, on a bridge's unembedding)."""
    from probes.attribution import PATCHED_ROWS

    model = perturbed(tiny_models[architecture].backends[backend])
    generator = torch.Generator().manual_seed(3)
    prompts = lambda length: torch.randint(10, 1000, (2, length), generator=generator).tolist()  # noqa: E731
    clean = [Example(tuple(p), (5, 6), i, "forward", "train") for i, p in enumerate(prompts(7))]
    corrupt = [Example(tuple(p), (7, 8), i, "reverse", "heldout") for i, p in enumerate(prompts(9))]
    targets = [[7, 8], [9, 11]]
    layers = tuple(range(model.cfg.n_layers))
    assert len(layers) * 9 > PATCHED_ROWS  # the positions take more than one pass
    result = patch_residual(model, clean, corrupt, site="resid_pre", targets=targets)
    reference = one_site_a_pass(model, clean, corrupt, "resid_pre", targets, layers)
    torch.testing.assert_close(result.metric.flatten(), reference.flatten().cpu(), atol=2e-6, rtol=0)
    same_length = [Example(e.prompt[:7], e.answer, e.fact, e.direction, e.split) for e in corrupt]
    heads = patch_heads(model, clean, same_length, targets=targets)
    torch.testing.assert_close(heads.metric.flatten(), one_site_a_pass(model, clean, same_length, "z", targets,
                                                                       layers).flatten().cpu(), atol=2e-6, rtol=0)
    def halve_the_last(value, hook):  # a hook that reads positions: it sees every row only when logits are whole
        return torch.cat([value[:, :-1], value[:, -1:] / 2], 1)

    name = ("unembed.hook_in" if backend == "bridge" else
            "ln_final.hook_normalized" if model.cfg.normalization_type else f"blocks.{layers[-1]}.hook_resid_post")
    with model.hooks(fwd_hooks=[(name, halve_the_last)]):
        hooked = patch_residual(model, clean, corrupt, site="resid_pre", targets=targets)
        torch.testing.assert_close(hooked.metric.flatten(), one_site_a_pass(
            model, clean, corrupt, "resid_pre", targets, layers).flatten().cpu(), atol=2e-6, rtol=0)
    assert (hooked.metric - result.metric).abs().max() > 0.01  # the hook was read


# --- logit lens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "llama"])
def test_every_lens_stage_is_the_final_norm_on_its_own_residual(request, sample, name):
    """Every stage, not only the last: stage l ("{l}_pre", the residual before layer l; "final_post", after the
    last layer) is log_softmax(unembed(ln_final(r_l)))[t] at the last position, with the final norm's statistics
    recomputed from r_l itself (the module ``model.ln_final`` run on r_l), and the rank is 1 + the number of
    tokens with a higher logit. Normalising every stage by the final residual's cached scale instead (the
    statistics of the last stage) gives log-probabilities that differ by over 0.01 before the last stage:
    the rows show which normalisation ran. ``tiny`` has a LayerNorm, the Llama an RMSNorm."""
    model = request.getfixturevalue(name)
    examples = as_examples(sample)[:6] if name == "tiny" else [
        Example(tuple(p), (7 + 300 * i,), i, "forward", "heldout")
        for i, p in enumerate(torch.randint(0, 1000, (3, 6), generator=torch.Generator().manual_seed(3)).tolist())]
    answers = torch.tensor([e.answer[0] for e in examples])
    n_layers, pick = model.cfg.n_layers, torch.arange(len(examples))
    lens = logit_lens(model, examples).set_index(["statement", "stage"])
    stages = {f"{layer}_pre": f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)}
    stages["final_post"] = f"blocks.{n_layers - 1}.hook_resid_post"
    assert list(lens.loc[0].index) == list(stages)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([e.prompt for e in examples]))
        final_scale = cache["ln_final.hook_scale"][:, -1:]  # [batch, 1, 1]: the last stage's statistics
        for number, (stage, hook) in enumerate(stages.items()):
            resid = cache[hook][:, -1:]
            logits = model.unembed(model.ln_final(resid))[:, 0]
            logprob = logits.log_softmax(-1)[pick, answers]
            rank = 1 + (logits > logits[pick, answers][:, None]).sum(-1)
            centred = resid - resid.mean(-1, keepdim=True) if model.cfg.normalization_type == "LN" else resid
            cached = centred / final_scale * model.ln_final.w + getattr(model.ln_final, "b", 0.0)
            cached_logprob = model.unembed(cached)[:, 0].log_softmax(-1)[pick, answers]
            rows = lens.xs(stage, level="stage").loc[range(len(examples))]
            assert (rows.layer == number).all()
            assert torch.allclose(torch.tensor(rows.logprob.to_numpy()), logprob, atol=1e-5), stage
            assert rows["rank"].tolist() == rank.tolist(), stage
            gap = (cached_logprob - logprob).abs().max()
            if stage == "final_post":  # the same statistics: the two normalisations agree
                assert gap < 1e-5
            else:
                assert gap > 1e-2, f"{stage}: the cached final scale and r_l's own agree; the check tells nothing"


def test_the_last_lens_stage_is_the_model_output(tiny, sample):
    lens = logit_lens(tiny, sample)
    assert list(lens.stage.iloc[:3]) == ["0_pre", "1_pre", "final_post"] and len(lens) == 3 * len(sample)
    final = lens[lens.stage == "final_post"]
    examples = as_examples(sample)
    logprobs = answer_logits(tiny, examples).cpu().log_softmax(-1)
    chosen = logprobs[torch.arange(len(examples)), [e.answer[0] for e in examples]]
    assert torch.allclose(torch.tensor(final.logprob.to_numpy()), chosen, atol=1e-5)
    ranks = 1 + (logprobs > chosen[:, None]).sum(-1)
    assert final["rank"].tolist() == ranks.tolist()


@pytest.mark.parametrize("backend", BACKENDS_BY_ARCHITECTURE["gemma2"])
def test_the_last_lens_stage_is_the_output_after_the_logit_cap(backend, tiny_models):
    """Gemma 2 caps its logits (c·tanh(x / c), c = 30): the lens's last stage is the capped output, log p and
    rank, as the model's own forward gives them; the uncapped unembedding would differ by over 0.1 nats."""
    model = tiny_models["gemma2"].backends[backend]
    prompts = torch.randint(0, 1000, (4, 7), generator=torch.Generator().manual_seed(1))
    examples = [Example(tuple(p), (5 + i,), i, "forward", "heldout") for i, p in enumerate(prompts.tolist())]
    final = logit_lens(model, examples).query("stage == 'final_post'")
    with torch.no_grad():
        logits = model(prompts)[:, -1].float()
    cap = model.cfg.output_logits_soft_cap
    uncapped = cap * torch.atanh(logits.double() / cap)
    answers = torch.tensor([e.answer[0] for e in examples])
    logprobs = logits.log_softmax(-1)[torch.arange(4), answers]
    assert torch.allclose(torch.tensor(final.logprob.to_numpy()), logprobs, atol=1e-4)
    assert final["rank"].tolist() == (1 + (logits > logits[torch.arange(4), answers][:, None]).sum(-1)).tolist()
    assert (uncapped.log_softmax(-1)[torch.arange(4), answers] - logprobs).abs().max() > 0.1


def test_the_lens_shows_the_curse_at_the_output(trained_one_layer, batch):
    final = logit_lens(trained_one_layer, batch).query("stage == 'final_post'")
    assert (final[final.split == "train"]["rank"] == 1).all()
    assert (final[final.split == "heldout"]["rank"] > 1).all()


# --- TransformerBridge (SmolLM2-135M through models.pretrained) -----------------------------------


@pytest.fixture(scope="module")
def bridge(smollm2_bridge):
    """The session's SmolLM2 TransformerBridge (tests/conftest.py): a real dependency, never skipped."""
    return smollm2_bridge


def test_bridge_attribution_and_lens_are_exact(bridge, smollm2_hooked):
    prompts = {"The capital of France is": " Paris", "The capital of Italy is": " Rome"}
    examples = [Example(tuple(bridge.to_tokens(p)[0].tolist()), tuple(bridge.to_tokens(a)[0].tolist()), i,
                        "forward", "train") for i, (p, a) in enumerate(prompts.items())]
    table = direct_logit_attribution(bridge, examples)  # read as it is: its final norm's scale cached, w in W_U
    # embed, 9 heads and the MLP per layer, the unembed bias: SmolLM2 has no attention output bias, so no row for one
    assert table.groupby("statement").size().tolist() == [1 + 30 * (9 + 1) + 1] * 2
    assert "attn bias" not in set(table.kind)
    totals = torch.tensor(table.groupby("statement").attribution.sum().to_numpy()).float()
    assert torch.allclose(totals, first_answer_logits(bridge, examples), atol=1e-4)
    hooked = direct_logit_attribution(smollm2_hooked, examples)  # the other backend, term by term
    assert list(hooked.component) == list(table.component)
    assert (hooked.attribution - table.attribution).abs().max() < 1e-4
    final = logit_lens(bridge, examples).query("stage == 'final_post'")
    expected = answer_logits(bridge, examples).log_softmax(-1)[[0, 1], [e.answer[0] for e in examples]]
    assert torch.allclose(torch.tensor(final.logprob.to_numpy()), expected, atol=1e-4)


def test_prompts_of_different_lengths_are_patched_aligned_at_the_end(smollm2_hooked, smollm2_tokenizer):
    """SmolLM2 on a people fact: the forward prompt has 13 tokens, the reverse one 14. Column j
    patches position j − 13 from the end of both: the last column carries the clean run's final
    state to the corrupted run's answer slot, the first column (the longer prompt's second token)
    is read by nothing after the last layer."""
    from facts.language import TRAIN_TEMPLATES, TemplateTokenizer, people_world

    facts = people_world(n_per_group=3, seed=1)
    tokenizer = TemplateTokenizer(smollm2_tokenizer, TRAIN_TEMPLATES)
    clean, corrupt = tokenizer.example(facts, 0, "forward"), tokenizer.example(facts, 0, "reverse")
    assert (len(clean.prompt), len(corrupt.prompt)) == (13, 14)
    last = smollm2_hooked.cfg.n_layers - 1
    result = patch_residual(smollm2_hooked, [clean], [corrupt], site="resid_post", layers=[last])
    assert result.metric.shape == (1, 13)
    assert result.metric[0, -1].item() == pytest.approx(result.clean, abs=1e-4)
    assert torch.allclose(result.metric[0, :-1], torch.full((12,), result.corrupt), atol=1e-4)
    assert result.clean != pytest.approx(result.corrupt, abs=0.1)


def test_patching_scores_a_whole_reverse_answer(smollm2_hooked, smollm2_tokenizer):
    """Targets may be token sequences: the reverse answer (a name of several tokens) is scored token
    by token after the reverse prompt. Unpatched, that is the statement's log p in probes.logits; with
    the last layer's output patched at the last prompt position, only the first answer token's
    prediction comes from the forward run, the later ones still from the reverse run."""
    from facts.language import TRAIN_TEMPLATES, TemplateTokenizer, people_world
    from probes.logits import answer_table

    facts = people_world(n_per_group=1, seed=1)
    tokenizer = TemplateTokenizer(smollm2_tokenizer, TRAIN_TEMPLATES)
    clean, corrupt = tokenizer.example(facts, 0, "forward"), tokenizer.example(facts, 0, "reverse")
    answer = corrupt.answer
    assert len(answer) >= 2
    last = smollm2_hooked.cfg.n_layers - 1
    result = patch_residual(smollm2_hooked, [clean], [corrupt], site="resid_post", layers=[last], targets=[answer])
    table = answer_table(smollm2_hooked, facts, tokenizer, n_controls=1, rank_against="controls").query("fact == 0")
    assert result.corrupt == pytest.approx(table.set_index("direction").logprob["reverse"], abs=1e-4)

    def answer_logprobs(prompt):
        with torch.no_grad():
            logits = smollm2_hooked(torch.tensor([prompt + answer[:-1]]))[0, -len(answer):].log_softmax(-1)
        return logits[torch.arange(len(answer)), list(answer)]

    from_forward, from_reverse = answer_logprobs(clean.prompt), answer_logprobs(corrupt.prompt)
    assert result.clean == pytest.approx(from_forward.sum().item(), abs=1e-4)
    assert result.metric[0, -1].item() == pytest.approx(from_forward[0].item() + from_reverse[1:].sum().item(), abs=1e-4)


def test_the_bilinear_model_is_refused_by_every_probe_that_reads_layers(sample, vocab):
    """It has no layers, heads or residual stream: each probe names itself and what to read instead (an
    AttributeError on ``cfg`` had come from deep inside)."""
    from models.bilinear import BilinearModel
    from probes.tracing import trace

    model = BilinearModel(vocab.d_vocab, 16)
    clean, corrupt = forward_reverse_pairs(sample)
    for probe, name in ((lambda: direct_logit_attribution(model, clean), "direct logit attribution"),
                        (lambda: logit_lens(model, clean), "logit lens"),
                        (lambda: patch_residual(model, clean, corrupt), "clean statements"),
                        (lambda: attribution_patch(model, clean, corrupt), "clean statements")):
        with pytest.raises(ValueError, match=f"{name} reads a transformer's layers.*bilinear model has none"):
            probe()
    with pytest.raises(ValueError, match="the bilinear model has no layers"):
        trace(model, clean[0], (0,), n_samples=1)


def test_a_batch_size_below_one_and_a_direction_not_in_play_are_named(tiny, sample, vocab):
    """A batch size of 0 had failed inside range(); a statement of a direction not in play (trained forward, its
    reverse neither trained nor held out) had been made with split None under python -O, where an assert is
    skipped."""
    from facts.schema import Fact, FactError, FactSet

    clean, _ = forward_reverse_pairs(sample)
    for probe in (lambda: direct_logit_attribution(tiny, clean, batch_size=0), lambda: logit_lens(tiny, clean, 0)):
        with pytest.raises(ValueError, match="batch_size must be ≥ 1, got 0"):
            probe()
    with pytest.raises(FactError, match=r"fact 0 \(reverse\): this direction is not in play"):
        vocab.example(FactSet((Fact("e1", "→", "e2", "←", "train", None, "one-way"),)), 0, "reverse")
