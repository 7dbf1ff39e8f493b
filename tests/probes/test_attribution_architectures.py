"""Direct logit attribution is an identity on every decoder architecture we load, or it refuses.

Tiny random-weight Hugging Face models (GPT-2, GPT-NeoX, Qwen2, Llama, Gemma 2, Gemma 3, OLMo 2),
built offline from config objects, with their norm weights and biases perturbed so that every term
is exercised, converted by TransformerLens's own converters; then SmolLM2 itself. Prompts are
longer than Gemma's sliding window (4 tokens here)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens import loading_from_pretrained as tl_loading

from facts.tokens import Example
from probes.attribution import direct_logit_attribution

VOCAB = 96
ANSWER, CONTROL = 5, 9
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, vocab_size=VOCAB)
CONFIGS = {
    "gpt2": (transformers.GPT2Config, dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB)),
    "neox": (transformers.GPTNeoXConfig, SIZES),
    "qwen2": (transformers.Qwen2Config, dict(SIZES, num_key_value_heads=2)),
    "llama": (transformers.LlamaConfig, dict(SIZES, num_key_value_heads=2)),
    "gemma2": (transformers.Gemma2Config, dict(SIZES, num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "gemma3": (transformers.Gemma3TextConfig, dict(SIZES, num_key_value_heads=1, head_dim=8, sliding_window=4)),
    "olmo2": (transformers.Olmo2Config, dict(SIZES, num_key_value_heads=2)),
}
GEMMA_NAMES = {"gemma2": "google/gemma-2-2b", "gemma3": "google/gemma-3-270m"}
"""TransformerLens knows Gemma configs only by official name: the tiny ones take that config's
architecture fields and their own dimensions."""


def tiny_hf(kind: str, vocab: int = VOCAB) -> transformers.PreTrainedModel:
    config_class, sizes = CONFIGS[kind]
    config = config_class(**sizes)
    config.vocab_size = vocab
    config.architectures = [transformers.AutoModelForCausalLM._model_mapping[config_class].__name__]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or ".ln" in name or name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
        if kind == "gemma2":  # logits of tens, so that Gemma 2's cap (30·tanh(x / 30)) is far from the identity
            model.model.norm.weight.add_(40.0)
    return model


def tiny_hooked(kind: str, vocab: int = VOCAB) -> tuple[HookedTransformer, transformers.PreTrainedModel]:
    """A tiny HF model and its HookedTransformer (TransformerLens's config and weight converters)."""
    hf = tiny_hf(kind, vocab)
    config = hf.config
    if kind in GEMMA_NAMES:
        fields = tl_loading.get_pretrained_model_config(GEMMA_NAMES[kind], device="cpu").to_dict()
        fields.pop("n_params", None)
        fields.update(
            d_model=config.hidden_size, n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads,
            d_head=config.head_dim, d_mlp=config.intermediate_size, d_vocab=vocab, d_vocab_out=vocab, n_ctx=64,
            n_key_value_heads=config.num_key_value_heads, window_size=config.sliding_window, rotary_dim=config.head_dim,
            attn_types=["local" if "sliding" in t else "global" for t in config.layer_types],
        )
        cfg = HookedTransformerConfig.from_dict(fields)
        state = tl_loading.get_pretrained_state_dict(GEMMA_NAMES[kind], cfg, hf, dtype=torch.float32)
    else:
        from models.pretrained import _hooked_config_and_weights

        cfg, state = _hooked_config_and_weights(hf, torch.device("cpu"), torch.float32)
    cfg.tokenizer_name = None
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    return model.eval(), hf


def statements(n: int = 3, length: int = 7) -> tuple[list[Example], list[Example]]:
    prompts = torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(1)).tolist()
    return ([Example(tuple(p), (ANSWER,), i, "forward", "heldout") for i, p in enumerate(prompts)],
            [Example(tuple(p), (CONTROL,), i, "forward", "heldout") for i, p in enumerate(prompts)])


def uncapped(model, logits: torch.Tensor) -> torch.Tensor:
    """The logits before a final softcap c·tanh(x / c) (the identity without one)."""
    cap = model.cfg.output_logits_soft_cap
    return logits if cap is None or cap <= 0 else cap * torch.atanh(logits.double() / cap).float()


@pytest.mark.parametrize("kind", ["gpt2", "neox", "qwen2", "llama", "gemma2", "gemma3"])
@pytest.mark.parametrize("by", ["head", "layer"])
def test_attributions_sum_to_the_logit_difference(kind, by):
    model, hf = tiny_hooked(kind)
    examples, controls = statements()
    tokens = torch.tensor([e.prompt for e in examples])
    with torch.no_grad():
        logits = model(tokens)[:, -1]
        assert torch.allclose(logits, hf(tokens).logits[:, -1], atol=1e-4)  # the conversion is faithful
    table = direct_logit_attribution(model, examples, controls=controls, by=by)
    totals = torch.tensor(table.groupby("statement").attribution.sum().to_numpy()).float()
    raw = uncapped(model, logits)
    assert (totals - (raw[:, ANSWER] - raw[:, CONTROL])).abs().max() < 1e-4
    if kind == "gemma2":  # the cap matters here: the capped difference is another number
        assert (totals - (logits[:, ANSWER] - logits[:, CONTROL])).abs().max() > 1e-2
    has_bias = any(bool((block.attn.b_O != 0).any()) for block in model.blocks)
    assert ("attn bias" in set(table.kind)) == (by == "head" and has_bias)  # a bar only for what the model has


def test_gemma_heads_are_read_through_the_post_attention_norm():
    """Gemma's heads write through an RMSNorm (weight w, scale s): head h's term is w ⊙ (z_h W_O^h) / s.
    Recomputed here from the cache by hand, it matches each head's row, and the heads of a layer
    add up to that layer's whole attention output's term."""
    model, _ = tiny_hooked("gemma3")
    examples, _ = statements(n=1)
    heads = direct_logit_attribution(model, examples, by="head")
    layers = direct_logit_attribution(model, examples, by="layer")
    for layer in range(model.cfg.n_layers):
        per_head = heads[(heads.kind == "head") & (heads.layer == layer)].attribution.sum()
        whole = layers[layers.component == f"L{layer} attn"].attribution.item()
        assert per_head == pytest.approx(whole, abs=1e-5)
    from probes.attribution import folded

    plain = folded(model)
    _, cache = plain.run_with_cache(torch.tensor([examples[0].prompt]))
    z = cache["blocks.1.attn.hook_z"][0, -1, 2]  # head 2 of layer 1, last position
    written = z @ plain.blocks[1].attn.W_O[2] * plain.blocks[1].ln1_post.w / cache["blocks.1.ln1_post.hook_scale"][0, -1]
    final = written / cache["ln_final.hook_scale"][0, -1]
    expected = float((final @ plain.W_U[:, ANSWER]).detach())
    row = heads[heads.component == "L1H2"].attribution.item()
    assert row == pytest.approx(expected, abs=1e-5)
    assert abs(expected) > 1e-3


@pytest.mark.parametrize("kind", ["gemma3", "olmo2"])
def test_bridge_models_with_norms_after_attention_are_refused_by_name(kind):
    """TransformerBridge runs Gemma's and OLMo 2's norms as Hugging Face modules, whose scale this probe
    cannot read: attribution refuses and says what to do, instead of returning wrong numbers."""
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge

    from models.pretrained import load_tokenizer

    hf = tiny_hf(kind)
    with tempfile.TemporaryDirectory() as folder:
        hf.config.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=load_tokenizer(), device="cpu",
                                                     dtype=torch.float32).eval()
    examples, _ = statements(n=1)
    for by in ("head", "layer"):
        with pytest.raises(ValueError, match="backend='hooked'"):
            direct_logit_attribution(bridge, examples, by=by)


def test_olmo2_cannot_be_converted_to_a_hooked_transformer():
    """TransformerLens 3.9 converts no OLMo 2 to a HookedTransformer: the loader says so and points to the bridge."""
    from models.pretrained import PretrainedLoadError, _hooked_config_and_weights

    with pytest.raises(PretrainedLoadError, match="backend='bridge'"):
        _hooked_config_and_weights(tiny_hf("olmo2"), torch.device("cpu"), torch.float32)


def test_smollm2_attributions_sum_to_the_logit_difference(smollm2_hooked, smollm2_tokenizer):
    prompt = smollm2_tokenizer.encode("The capital of France is", add_special_tokens=False)
    answer, control = (smollm2_tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Paris", " Rome"))
    examples = [Example(tuple(prompt), (answer,), 0, "forward", "train")]
    table = direct_logit_attribution(smollm2_hooked, examples, controls=[Example(tuple(prompt), (control,), 0,
                                                                                   "forward", "train")])
    with torch.no_grad():
        logits = smollm2_hooked(torch.tensor([prompt]))[0, -1]
    assert table.attribution.sum() == pytest.approx(float(logits[answer] - logits[control]), abs=1e-4)
    assert "attn bias" not in set(table.kind)
