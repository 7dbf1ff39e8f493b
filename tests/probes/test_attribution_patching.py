"""Attribution patching (probes.attribution.attribution_patch) against exact activation patching.

The identity that must hold: each estimate is the derivative, at t = 0, of the metric of the corrupted
run with the patched activation set to a_corrupt + t (a_clean − a_corrupt). The derivative is taken in
forward mode (a dual number through the patched forward pass: no step, and a pass independent of the
backward pass the estimate reads), in float64 on the trained token-world model and on a tiny random
Llama (rotary, RMSNorm, grouped-query attention, gated MLP) with prompts of different lengths and
two-token answers. Not by central differences: TransformerLens 4's bridge over a Hugging Face Llama
computes in float32 inside a float64 model (HF's RMSNorm, the bridge's rotary embedding and softmax
cast to float32), so its metric moves in steps of about 3e-7 and a difference quotient is off by
1.6e-3 (relative) at a step of 1e-4. Exact patching then checks how good the first-order estimate is
on the trained model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad
from models.backend import copy_model, get_act_name

from facts.tokens import Example, tokenize
from probes.attribution import attribution_patch, forward_reverse_pairs, patch_heads, patch_residual

def slope_along_segment(model, clean, corrupt, targets, site, layer, index) -> float:
    """d/dt at t = 0 of the corrupted run's mean Σ_k log p(target_k) with the activation at ``site``/``layer``,
    ``index`` (a position counted from the end of the prompt, or a head) moved to a_corrupt + t (a_clean − a_corrupt):
    the hook gives that activation the tangent a_clean − a_corrupt (zero elsewhere) and the forward pass carries it."""
    name = get_act_name(site, layer)
    teacher = [tuple(t_[:-1]) for t_ in targets]
    clean_tokens = torch.tensor([e.prompt + s for e, s in zip(clean, teacher)])
    corrupt_tokens = torch.tensor([e.prompt + s for e, s in zip(corrupt, teacher)])
    with torch.no_grad():
        _, cache = model.run_with_cache(clean_tokens, names_filter=[name])
    shift = len(teacher[0])

    def move(activation, hook):
        tangent = torch.zeros_like(activation)
        if site == "z":
            tangent[:, :, index] = cache[name][:, :, index] - activation[:, :, index]
        else:
            where_clean, where_corrupt = clean_tokens.shape[1] - shift + index, corrupt_tokens.shape[1] - shift + index
            tangent[:, where_corrupt] = cache[name][:, where_clean] - activation[:, where_corrupt]
        return forward_ad.make_dual(activation, tangent)

    with torch.no_grad(), forward_ad.dual_level():
        logits = model.run_with_hooks(corrupt_tokens, fwd_hooks=[(name, move)])
        logprobs = logits[:, -len(targets[0]):].log_softmax(-1)
        goal = torch.tensor(targets, device=logprobs.device)
        metric = logprobs.gather(-1, goal[..., None])[..., 0].sum(-1).mean()
        return float(forward_ad.unpack_dual(metric).tangent)


def check_derivatives(model, clean, corrupt, targets, sites) -> float:
    """max |estimate − forward-mode derivative| over every site, layer and index, relative to the largest estimate."""
    estimates = attribution_patch(model, clean, corrupt, sites=sites, targets=targets)
    deviation, largest = 0.0, 0.0
    for site, result in estimates.items():
        effects = result.metric.double() - result.corrupt
        for row, layer in enumerate(result.layers):
            for column in range(effects.shape[1]):
                index = column if site == "z" else column - effects.shape[1]
                slope = slope_along_segment(model, clean, corrupt, targets, site, layer, index)
                deviation = max(deviation, abs(slope - float(effects[row, column])))
                largest = max(largest, abs(slope))
    assert largest > 0.1  # the estimates are not all zero: the identity is not vacuous
    return deviation / largest


@pytest.fixture(scope="module")
def trained64(trained_one_layer):
    return copy.deepcopy(trained_one_layer).to(torch.float64)


@pytest.fixture(scope="module")
def pairs(world, vocab):
    return forward_reverse_pairs(tokenize(world, vocab).take(range(30)))


def test_each_estimate_is_the_derivative_of_patching_along_the_segment(trained64, pairs):
    clean, corrupt = pairs
    targets = [f.answer for f in clean[:4]]  # the forward answers: improbable after the reverse prompt
    assert check_derivatives(trained64, clean[:4], corrupt[:4], targets, ("resid_pre", "resid_post", "z")) < 1e-6


def test_the_identity_holds_on_a_llama_with_prompts_of_different_lengths(tiny_models):
    model = copy.deepcopy(tiny_models["llama"].backends["hooked"]).to(torch.float64)
    generator = torch.Generator().manual_seed(3)
    clean = [Example(tuple(torch.randint(0, 1000, (7,), generator=generator).tolist()), (5, 9), i, "forward", "train")
             for i in range(2)]
    corrupt = [Example(tuple(torch.randint(0, 1000, (5,), generator=generator).tolist()), (5, 9), i, "reverse",
                       "heldout") for i in range(2)]
    targets = [(11, 12), (13, 14)]
    assert check_derivatives(model, clean, corrupt, targets, ("resid_pre",)) < 1e-6
    same_length = [Example(e.prompt[:5], e.answer, e.fact, e.direction, e.split) for e in clean]
    assert check_derivatives(model, same_length, corrupt, targets, ("z",)) < 1e-6


def test_nothing_after_the_last_layer_reads_earlier_positions(trained_one_layer, pairs):
    """Exact patching of resid_post at the last layer changes nothing at earlier positions; the estimate is 0 there
    too, exactly (no gradient reaches them)."""
    clean, corrupt = pairs
    last = trained_one_layer.cfg.n_layers - 1
    estimate = attribution_patch(trained_one_layer, clean, corrupt, sites=("resid_post",), layers=[last])["resid_post"]
    exact = patch_residual(trained_one_layer, clean, corrupt, site="resid_post", layers=[last])
    assert estimate.metric[0, 0].item() == estimate.corrupt == pytest.approx(exact.metric[0, 0].item(), abs=1e-5)
    assert estimate.clean == pytest.approx(exact.clean) and estimate.corrupt == pytest.approx(exact.corrupt)


def test_attribution_patching_tracks_exact_patching_fact_by_fact(trained_one_layer, pairs):
    """Per fact (forward prompt clean, reverse prompt corrupted, the forward answer scored), the estimated
    and exact changes of log p over every (layer, position) and (layer, head) of the trained one-layer
    model, pooled: 15 facts × 6 sites.

    Threshold 0.7: the estimate is first order, and these patches move log p by up to 18 nats through
    softmaxes that saturate (attention to the entity, the answer's own probability): heads come out at
    about half their exact effect and the entity position over by up to a quarter, so the pooled
    Pearson r is 0.77 here (0.86 on the two-layer `tiny`; within one fact's heads the median r is 0.99).
    The same estimate with its two positions swapped scores below 0.5 (checked on the last line), so
    0.7 still separates a correct estimate from one read at the wrong site."""
    clean, corrupt = pairs
    estimated, exact, slipped = [], [], []
    for forward, reverse in zip(clean, corrupt):
        estimate = attribution_patch(trained_one_layer, [forward], [reverse])
        truth = (patch_residual(trained_one_layer, [forward], [reverse]), patch_heads(trained_one_layer, [forward], [reverse]))
        for guess, patched in zip((estimate["resid_pre"], estimate["z"]), truth):
            assert guess.clean == pytest.approx(patched.clean, abs=1e-5)
            estimated.append((guess.metric - guess.corrupt).flatten())
            exact.append((patched.metric - patched.corrupt).flatten())
        slipped.append((estimate["resid_pre"].metric - estimate["resid_pre"].corrupt).flatten().flip(0))
        slipped.append(estimated[-1])
    estimated, exact, slipped = (torch.cat(v).numpy() for v in (estimated, exact, slipped))
    r = np.corrcoef(estimated, exact)[0, 1]
    assert r > 0.7, f"Pearson r = {r:.3f}"
    assert np.corrcoef(slipped, exact)[0, 1] < 0.5, np.corrcoef(slipped, exact)[0, 1]  # positions swapped: caught


def test_frozen_parameters_give_the_same_estimate_and_no_gradients(trained_one_layer, pairs):
    clean, corrupt = pairs
    frozen = copy.deepcopy(trained_one_layer).requires_grad_(False)
    free = copy.deepcopy(trained_one_layer)
    for a, b in zip(attribution_patch(frozen, clean, corrupt).values(), attribution_patch(free, clean, corrupt).values()):
        assert torch.allclose(a.metric, b.metric, atol=1e-6)
    assert all(p.grad is None for p in free.parameters())


def test_attribution_patching_refuses_what_exact_patching_refuses(trained_one_layer, pairs):
    clean, corrupt = pairs
    shorter = Example(corrupt[0].prompt[1:], corrupt[0].answer, 0, "reverse", "heldout")
    with pytest.raises(ValueError, match="head patching .* same length"):
        attribution_patch(trained_one_layer, clean[:1], [shorter])
    assert attribution_patch(trained_one_layer, clean[:1], [shorter], sites=("resid_pre",))["resid_pre"].metric.shape == (1, 1)
    with pytest.raises(ValueError, match="site must be one of"):
        attribution_patch(trained_one_layer, clean, corrupt, sites=("pattern",))
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        attribution_patch(trained_one_layer, clean, corrupt, layers=[3])


def test_the_bridge_gives_the_hooked_models_estimates(tiny_models):
    """The same Llama weights wrapped by TransformerBridge: the same hook names, the same estimates."""
    tiny = tiny_models["llama"]
    generator = torch.Generator().manual_seed(4)
    clean, corrupt = ([Example(tuple(torch.randint(0, 1000, (6,), generator=generator).tolist()), (5,), 0, d, "train")]
                      for d in ("forward", "reverse"))
    hooked, bridge = (attribution_patch(tiny.backends[b], clean, corrupt, sites=("resid_pre", "z"))
                      for b in ("hooked", "bridge"))
    for site in ("resid_pre", "z"):
        scale = float((hooked[site].metric - hooked[site].corrupt).abs().max())
        assert scale > 0.1
        assert torch.allclose(hooked[site].metric, bridge[site].metric, atol=1e-3 * scale), site


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_frozen_bridge_gives_the_hooked_models_estimates_at_every_site(tiny_models, architecture):
    """A bridge whose parameters need no gradient: each activation read becomes a leaf of the graph in place, so
    every reader of it is downstream. The bridge hands one tensor to blocks.L.hook_resid_mid and ln2.hook_in and
    adds the original, not what the hook returns, to the residual stream: a detached copy reached only the MLP's
    norm, and resid_mid's estimate on the tiny Llama fell from 3.024 to 0.206 (layer 1, last position). Every site,
    each alone (where it is the only place the graph starts) and all together, against the (trainable) hooked
    model's estimates; the bridge's parameters stay frozen and get no gradient."""
    tiny = tiny_models[architecture]
    generator = torch.Generator().manual_seed(5)
    clean, corrupt = ([Example(tuple(torch.randint(3, 1000, (6,), generator=generator).tolist()),
                               tuple(torch.randint(3, 1000, (2,), generator=generator).tolist()), i, "forward", "heldout")
                       for i in range(2)] for _ in range(2))
    targets = [e.answer for e in corrupt]
    sites = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z")
    hooked = attribution_patch(copy_model(tiny.backends["hooked"]), clean, corrupt, sites=sites, targets=targets)
    frozen_bridge = copy_model(tiny.backends["bridge"]).requires_grad_(False)
    together = attribution_patch(frozen_bridge, clean, corrupt, sites=sites, targets=targets)
    for site in sites:
        alone = attribution_patch(frozen_bridge, clean, corrupt, sites=(site,), targets=targets)[site]
        change = hooked[site].metric - hooked[site].corrupt
        scale = float(change.abs().max())
        assert scale > 0.1, site
        for frozen in (alone, together[site]):
            assert torch.allclose(frozen.metric - frozen.corrupt, change, atol=1e-4 * scale), (site, frozen.metric, change)
    assert all(not p.requires_grad and p.grad is None for p in frozen_bridge.parameters())
    # a bridge over GPT-2 keeps its last attention pattern (JointQKVAttentionBridge._pattern), which the passes with
    # gradients left in their graph: copy_model failed on it ("only graph leaves"); now it copies
    twin, ids = copy_model(frozen_bridge), torch.tensor([list(clean[0].prompt)])
    with torch.no_grad():
        assert torch.equal(twin(ids), frozen_bridge(ids))
