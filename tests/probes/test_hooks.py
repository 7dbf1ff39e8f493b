import copy
import re

import numpy as np
import pandas as pd
import pytest
import torch

from models.transformer import build_model
from probes.hooks import ablate_head, check_head, check_layer, collect, edit, editing, hook_names, zero_heads


@pytest.fixture(scope="module")
def tiny(vocab):
    return build_model("tiny", vocab.d_vocab, seed=3).eval()


@pytest.fixture(scope="module")
def tokens(vocab):
    return torch.tensor([[10, 0, 230], [320, 1, 11]])


def test_hook_names_by_glob_exact_name_and_regex(tiny):
    assert hook_names(tiny, "blocks.*.attn.hook_z") == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert hook_names(tiny, "blocks.1.hook_resid_pre") == ["blocks.1.hook_resid_pre"]
    assert hook_names(tiny, "blocks.0.hook_resid_*") == [
        "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"]
    assert hook_names(tiny, re.compile(r"blocks\.[01]\.hook_(attn|mlp)_out")) == [
        "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]
    with pytest.raises(ValueError, match="matches 'hook_z'"):  # a regex must match the whole name
        hook_names(tiny, re.compile(r"hook_z"))


def test_a_pattern_matching_nothing_lists_valid_names(tiny, trained_one_layer):
    with pytest.raises(ValueError, match=r"blocks\.5\.hook_resid_pre.*blocks\.[01]\.hook_resid_pre.*layers 0\.\.1"):
        hook_names(tiny, "blocks.5.hook_resid_pre")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_z"):
        hook_names(trained_one_layer, "blocks.*.attn.hook_zz")
    with pytest.raises(TypeError, match="glob str or a compiled re.Pattern"):
        hook_names(tiny, 3)


def test_collect_returns_exactly_what_run_with_cache_caches(tiny, tokens):
    got = collect(tiny, tokens, "blocks.*.hook_resid_*")
    _, cache = tiny.run_with_cache(tokens)
    assert list(got) == hook_names(tiny, "blocks.*.hook_resid_*") and len(got) == 6
    for name, tensor in got.items():
        assert torch.equal(tensor, cache[name])
    assert got["blocks.0.hook_resid_pre"].shape == (2, 3, 64)


def test_collect_refuses_a_hook_that_did_not_fire(tiny, tokens):
    with pytest.raises(ValueError, match="did not fire.*set_use_attn_result"):
        collect(tiny, tokens, "blocks.0.attn.hook_result")


def test_zero_ablating_a_head_equals_zeroing_its_output_weights(trained_one_layer, tokens):
    with torch.no_grad():
        clean = trained_one_layer(tokens)
        ablated = ablate_head(trained_one_layer, tokens, 0, 2)
        twin = copy.deepcopy(trained_one_layer)
        twin.blocks[0].attn.W_O[2] = 0.0
        expected = twin(tokens)
    assert (ablated - clean).abs().max() > 1e-2
    assert torch.allclose(ablated, expected, atol=1e-5)
    assert torch.equal(trained_one_layer(tokens), clean)  # the hook is gone afterwards


def test_edit_with_an_identity_hook_changes_nothing_and_sees_every_match(tiny, tokens):
    seen = []

    def record(activation, hook):
        seen.append(hook)  # the hook point itself: TransformerLens 4 names it by its canonical name (hook_out)

    logits = edit(tiny, tokens, "blocks.*.hook_resid_post", record)
    assert seen == [tiny.hook_dict["blocks.0.hook_resid_post"], tiny.hook_dict["blocks.1.hook_resid_post"]]
    assert torch.equal(logits, tiny(tokens))


def test_editing_context_applies_inside_only_even_after_an_error(tiny, tokens):
    clean = tiny(tokens)
    with editing(tiny, "blocks.1.attn.hook_z", zero_heads([0, 3])):
        inside = tiny(tokens)
    assert not torch.allclose(inside, clean)
    assert torch.equal(inside, edit(tiny, tokens, "blocks.1.attn.hook_z", zero_heads([0, 3])))
    with pytest.raises(RuntimeError, match="boom"):
        with editing(tiny, "blocks.1.attn.hook_z", zero_heads([0])):
            raise RuntimeError("boom")
    assert torch.equal(tiny(tokens), clean)


def test_an_edit_at_a_hook_that_does_not_fire_is_refused(vocab, tokens):
    """A hook that exists but does not fire took an edit without a word, and the numbers made under it passed for
    edited ones: ``hook_result`` before ``set_use_attn_result(True)`` on 3.9; on 4's bridge over a rotary
    token-world model ``hook_rot_q``, whose attention applies rotary inside. Refused, in ``editing`` once the
    block ends (not when no forward pass ran) and in ``edit``; the hooks that fire still edit."""
    from models.backend import TL_MAJOR

    model = build_model("tiny", vocab.d_vocab, positional="rotary", seed=3).eval()
    silent = "blocks.0.attn.hook_result" if TL_MAJOR < 4 else "blocks.0.attn.hook_rot_q"
    assert silent in model.hook_dict
    double = lambda x, hook: 2 * x  # noqa: E731
    with pytest.raises(ValueError, match=rf"hook\(s\) \['{re.escape(silent)}'\] of this \w+ did not fire, so nothing "
                                         r"was edited there"):
        with editing(model, silent, double):
            model(tokens)
    with pytest.raises(ValueError, match="did not fire"):  # a pass run_with_hooks makes (it calls forward itself)
        with editing(model, silent, double):
            model.run_with_hooks(tokens)
    with editing(model, silent, double):  # no forward pass: nothing to refuse
        pass
    with pytest.raises(ValueError, match="did not fire"):
        edit(model, tokens, silent, double)
    clean = model(tokens)
    with editing(model, "blocks.0.hook_resid_post", double):
        assert not torch.allclose(model(tokens), clean)


def test_attention_scores_are_read_as_scores_or_refused(tiny, tokens):
    """On TransformerLens 4's bridge over a from-scratch model ``hook_attn_scores`` carried the pattern (rows summing
    to 1), where 3.9's HookedTransformer gives the masked scores before the softmax: a read of it differed by line
    with nothing said. It is refused there, naming what to read; elsewhere it holds the scores."""
    from models.backend import is_native_bridge

    name = "blocks.0.attn.hook_attn_scores"
    if is_native_bridge(tiny):
        with pytest.raises(ValueError, match=r"hook_attn_scores: on TransformerLens 4's bridge over a from-scratch "
                                             r"model this hook carries the attention pattern"):
            collect(tiny, tokens, name)
        return
    scores = collect(tiny, tokens, name)[name]
    pattern = collect(tiny, tokens, "blocks.0.attn.hook_pattern")["blocks.0.attn.hook_pattern"]
    assert torch.allclose(scores.softmax(-1), pattern, atol=1e-6)


def test_layer_and_head_out_of_range_name_the_valid_range(tiny, tokens):
    assert check_layer(tiny, 1) == 1 and check_head(tiny, 1, 3) == (1, 3)
    with pytest.raises(ValueError, match=r"layer 2 is out of range.*layers 0\.\.1"):
        ablate_head(tiny, tokens, 2, 0)
    with pytest.raises(ValueError, match=r"head 4 is out of range.*heads 0\.\.3"):
        ablate_head(tiny, tokens, 0, 4)
    with pytest.raises(ValueError, match=r"layer -1 is out of range"):
        check_layer(tiny, -1)
    # a layer read from a table (NumPy) or a tensor is the layer, not "out of range"; a bool or a float is no layer
    layers = pd.Series([1, 0]).unique()
    assert check_head(tiny, layers[0], np.int64(3)) == (1, 3) and type(check_layer(tiny, layers[0])) is int
    assert check_layer(tiny, torch.tensor(1)) == 1
    assert torch.equal(ablate_head(tiny, tokens, layers[1], np.int64(2)), ablate_head(tiny, tokens, 0, 2))
    for bad, named in ((True, "layer True is not an integer"), (1.0, "layer 1.0 is not an integer")):
        with pytest.raises(ValueError, match=named):
            check_layer(tiny, bad)
    with pytest.raises(ValueError, match=r"head 4 is out of range"):
        check_head(tiny, 0, np.int64(4))


# --- TransformerBridge (SmolLM2-135M through models.pretrained) -----------------------------------


@pytest.fixture(scope="module")
def bridge(smollm2_bridge):
    """The session's SmolLM2 TransformerBridge (tests/conftest.py): a real dependency, never skipped."""
    return smollm2_bridge


def test_bridge_hooks_match_run_with_cache_and_edits_take_effect(bridge):
    tokens = bridge.to_tokens("The capital of France is")
    pattern = re.compile(r"blocks\.2\d?\.hook_resid_pre|blocks\.3\.attn\.hook_z")
    names = hook_names(bridge, pattern)
    assert names[0] == "blocks.2.hook_resid_pre" and len(names) == 12  # blocks 2, 20..29 and one hook_z
    got = collect(bridge, tokens, pattern)
    with torch.no_grad():
        clean, cache = bridge.run_with_cache(tokens)
    for name in names:
        assert torch.equal(got[name], cache[name])
    assert got["blocks.3.attn.hook_z"].shape == (1, tokens.shape[1], 9, 64)  # 9 query heads over 3 key/value heads
    ablated = ablate_head(bridge, tokens, 3, 2)
    assert (ablated - clean).abs().max() > 1e-3
    assert torch.allclose(bridge(tokens), clean)
    # the query head's own output, no other: the model with that head's 64 input columns of o_proj zeroed
    # (head 2 is the last of key/value head 0's three query heads)
    out = bridge.original_model.model.layers[3].self_attn.o_proj.weight
    kept = out.detach().clone()
    try:
        with torch.no_grad():
            out[:, 2 * 64 : 3 * 64] = 0
            zeroed = bridge(tokens)
    finally:
        with torch.no_grad():
            out.copy_(kept)
    assert (ablated - zeroed).abs().max() < 1e-4 * clean.abs().max()
    assert (ablate_head(bridge, tokens, 3, 3) - zeroed).abs().max() > 1e-3  # another head is another edit
    with pytest.raises(ValueError, match=r"head 9 is out of range.*heads 0\.\.8"):
        ablate_head(bridge, tokens, 3, 9)
