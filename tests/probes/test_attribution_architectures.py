"""Direct logit attribution is an identity on every decoder architecture we load, or it refuses.

The tiny random models of ``tests/support/tiny_models.py`` (session fixture ``tiny_models``: GPT-2,
GPT-NeoX, Qwen2, Llama, Mistral, Gemma 1/2/3, OLMo 2), copied with their norm weights and biases
perturbed so that every term is exercised; then SmolLM2 and Gemma 3 270M themselves. Prompts are
longer than the tiny Gemmas' 4-token sliding window."""

from __future__ import annotations

import gguf
import pytest
import torch
from tiny_models import ARCHITECTURES, BACKENDS_BY_ARCHITECTURE, VOCAB, perturbed, save_tiny, tiny_config

from analyses.probe import probe
from facts.celebrity import load_celebrity_pairs
from facts.io import save_jsonl
from facts.tokens import Example
from models.backend import architecture_of, copy_model, is_hooked, norm_centres, norm_scale
from probes.attribution import (
    check_attribution_architecture, check_attribution_readable, direct_logit_attribution,
)
from probes.circuits import check_circuits_readable

ANSWER, CONTROL = 5, 9
WRAPPED = [(a, b) for a in ARCHITECTURES for b in BACKENDS_BY_ARCHITECTURE[a]]


def statements(n: int = 3, length: int = 7) -> tuple[list[Example], list[Example]]:
    prompts = torch.randint(0, 1000, (n, length), generator=torch.Generator().manual_seed(1)).tolist()
    return ([Example(tuple(p), (ANSWER,), i, "forward", "heldout") for i, p in enumerate(prompts)],
            [Example(tuple(p), (CONTROL,), i, "forward", "heldout") for i, p in enumerate(prompts)])


def uncapped(model, logits: torch.Tensor) -> torch.Tensor:
    """The logits before a final softcap c·tanh(x / c) (the identity without one)."""
    cap = model.cfg.output_logits_soft_cap
    return logits if cap is None or cap <= 0 else cap * torch.atanh(logits.double() / cap).float()


def sum_deviation(model, examples, controls, by) -> tuple[float, set[str]]:
    """max |Σ attributions − (logit_answer − logit_control)| (before a logit cap), and the row kinds."""
    with torch.no_grad():
        logits = uncapped(model, model(torch.tensor([e.prompt for e in examples]))[:, -1])
    table = direct_logit_attribution(model, examples, controls=controls, by=by)
    totals = torch.tensor(table.groupby("statement").attribution.sum().to_numpy()).float()
    return float((totals - (logits[:, ANSWER] - logits[:, CONTROL])).abs().max()), set(table.kind)


@pytest.mark.parametrize("architecture, backend", WRAPPED)
def test_attributions_sum_to_the_logit_difference_or_are_refused(architecture, backend, tiny_models):
    """Every architecture on every backend sums exactly, by head and by layer, Gemma 1/2/3 on either line's bridge
    included (its norms scale by 1 + w: the final one read as such, Gemma 2/3's heads through the norm after
    attention at its cached scale); OLMo 2 on a bridge is refused. Every model is read as it is, and gives term by
    term what a copy with TransformerLens's own ``fold_ln`` gives (its final norm's scale then in W_U)."""
    model = perturbed(tiny_models[architecture].backends[backend])
    examples, controls = statements()
    if not is_hooked(model) and architecture == "olmo2":
        # a bridge runs OLMo 2's norm after attention (and none before) as a Hugging Face module: refused by name
        # before any work (no forward pass), saying no TransformerLens model attributes it
        why = "Olmo2ForCausalLM normalises each attention layer's output.*no TransformerLens model"
        forward_passes = []
        model.register_forward_pre_hook(lambda *_: forward_passes.append(1))
        with pytest.raises(ValueError, match=why):  # what `probe` asks right after loading
            check_attribution_readable(model)
        for by in ("head", "layer"):
            with pytest.raises(ValueError, match=why):
                direct_logit_attribution(model, examples, controls=controls, by=by)
        assert forward_passes == []
        return
    check_attribution_readable(model)
    for by in ("head", "layer"):
        deviation, kinds = sum_deviation(model, examples, controls, by)
        assert deviation < 1e-4, f"{architecture} ({backend}, by {by}): off by {deviation:.2e}"
        biases = [getattr(block.attn, "b_O", None) for block in model.blocks]
        has_bias = any(b is not None and bool((b != 0).any()) for b in biases)
        assert ("attn bias" in kinds) == (by == "head" and has_bias)  # a bar only for what the model has
    unfolded = direct_logit_attribution(model, examples, controls=controls)
    assert not bool((norm_scale(model, model.ln_final) == 1).all())  # the perturbed final norm has a scale to fold
    twin = fold_ln_copy(model)
    refolded = direct_logit_attribution(twin, examples, controls=controls)
    assert list(unfolded.component) == list(refolded.component)
    assert (unfolded.attribution - refolded.attribution).abs().max() < 1e-4


def fold_ln_copy(model):
    """A copy of ``model`` with TransformerLens's ``fold_ln`` and no other processing (either line, either model
    class): each norm's scale (1 + w for a Gemma bridge's, which is left storing w = 0) moved into the weights after
    it, the final one's into W_U; checked to leave the final norm scaling by 1 and the logits as they were."""
    twin = copy_model(model)
    options = dict(fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    if hasattr(twin, "load_and_process_state_dict"):  # HookedTransformer
        twin.load_and_process_state_dict(dict(model.state_dict()), **options)
    else:
        twin.enable_compatibility_mode(disable_warnings=True, **options)
    scale = norm_scale(twin, twin.ln_final)
    assert scale is None or bool((scale == 1).all())
    tokens = torch.tensor([e.prompt for e in statements()[0]])
    with torch.no_grad():
        assert (twin(tokens) - model(tokens)).abs().max() < 1e-4
    return twin.eval()


def test_glm4_attributions_through_its_norm_after_attention_sum_to_the_logit_difference(tmp_path, tiny_tokenizer):
    """GLM-4 normalises each attention output and each MLP output (a bridge's ``ln1_post``, scaling by w where Gemma
    2/3's scale by 1 + w): its bridge is read through that norm at its cached scale, on either line, and the terms,
    by head and by layer, sum to the logit difference (its norms perturbed; TransformerLens's ``fold_ln`` does not
    fold GLM-4, so no folded copy is compared). 3.9's HookedTransformer refuses it by name (its partial rotary)."""
    import transformers

    from models.backend import TL_MAJOR
    from models.pretrained import PretrainedLoadError, load

    config = transformers.Glm4Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                     max_position_embeddings=128, pad_token_id=0)
    folder = save_tiny(tmp_path / "glm4", config, tiny_tokenizer)
    if TL_MAJOR < 4:
        with pytest.raises(PretrainedLoadError, match=r"cannot convert Glm4ForCausalLM .*partial_rotary_factor"):
            load(folder, backend="hooked", device="cpu")
    model = perturbed(load(folder, backend="bridge", device="cpu"))
    norms = [block.ln1_post.original_component.weight for block in model.blocks]
    assert all(not bool((w == 1).all()) for w in norms)  # a scale other than 1 after every attention layer
    check_attribution_readable(model)
    examples, controls = statements()
    for by in ("head", "layer"):
        deviation, kinds = sum_deviation(model, examples, controls, by)
        assert deviation < 1e-4, f"glm4 (by {by}): off by {deviation:.2e}"
        assert ("head" in kinds) is (by == "head") and ("attn" in kinds) is (by == "layer")


def test_circuits_of_olmo2_are_refused_on_every_backend(tiny_models):
    """OLMo 2 has a norm after attention and none before: its circuits (which read ln1 as the scale of the
    heads' input) cannot be exact on any backend."""
    for model in tiny_models["olmo2"].backends.values():
        with pytest.raises(ValueError, match=r"olmo2: Olmo2ForCausalLM normalises each attention layer's output"
                                             r".*OV/QK circuits would be wrong"):
            check_circuits_readable(model)


def test_a_bridge_norm_is_read_as_the_scale_its_module_applies(tmp_path, tiny_tokenizer):
    """VaultGemma scales by 1 + w like Gemma, but its name does not begin with "Gemma": TransformerLens 3.9's bridge
    over it read w (an untrained model, w = 0: every OV/QK entry 0), and once its config was read, refused it. Which
    of w and 1 + w a bridge's norm applies is now measured on its module (``models.backend.norm_scale``), on either
    line: VaultGemma's 1 + w; Nemotron's LayerNorm1P 1 + w, centring (3.9 had refused it by name); a Llama whose
    config says its norms store the offset (as TransformerLens 3.9's Gemma 3n adapter says over transformers'
    Gemma 3n norms, which scale by w; a 4.x norm then says ``uses_weight_offset``) its w; and a norm module that
    scales by neither is refused, naming it."""
    import transformers

    from models.pretrained import load

    config = transformers.VaultGemmaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16, max_position_embeddings=128, query_pre_attn_scalar=16)
    vault = load(save_tiny(tmp_path / "vaultgemma", config, tiny_tokenizer), backend="bridge", device="cpu")
    check_circuits_readable(vault)
    for block in vault.blocks:
        assert torch.equal(norm_scale(vault, block.ln1), 1 + block.ln1.original_component.weight)
    nemotron = transformers.NemotronConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                           max_position_embeddings=128)
    nemotron = load(save_tiny(tmp_path / "nemotron", nemotron, tiny_tokenizer), backend="bridge", device="cpu")
    check_circuits_readable(nemotron)  # its LayerNorm1P centres (as its config says, LN) and scales by 1 + w
    for norm in [*(block.ln1 for block in nemotron.blocks), nemotron.ln_final]:
        assert norm_centres(norm) is True
        assert torch.equal(norm_scale(nemotron, norm), 1 + norm.original_component.weight)
    llama = load(save_tiny(tmp_path / "llama", tiny_config("llama"), tiny_tokenizer), backend="bridge",
                 device="cpu")
    llama.cfg.rmsnorm_uses_offset = True
    with torch.no_grad():
        for block in llama.blocks:
            block.ln1.original_component.weight.normal_(1.0, 0.5, generator=torch.Generator().manual_seed(0))
    for norm in [*(block.ln1 for block in llama.blocks), llama.ln_final]:
        assert torch.equal(norm_scale(llama, norm), norm.original_component.weight)
    check_circuits_readable(llama)
    llama.blocks[1].ln1.original_component.forward = lambda hidden: hidden  # scales by 1, its weight w ~ N(1, 0.5²)
    with pytest.raises(ValueError, match=r"llama: its norm LlamaRMSNorm scales its normalised input by neither its "):
        check_circuits_readable(llama)


def test_circuits_of_gemma4_are_refused_before_and_after_it_loads(tmp_path, tiny_tokenizer):
    """Gemma 4 multiplies its whole residual stream by a learned number after every layer (``layer_scalar``) and
    normalises each head's values: circuits read as for Gemma 3 would be wrong. Its norms scale by w (no offset),
    which a name-based rule ("Gemma" stores w, scales by 1 + w) had refused for the wrong reason. Refused by
    architecture, from its files before any weight is read and on a loaded bridge (both lines)."""
    import transformers

    from models.pretrained import load

    config = transformers.Gemma4TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16, max_position_embeddings=128,
                                           # its per-layer embeddings' own vocabulary (default 262,144: 0.5 GB)
                                           vocab_size_per_layer_input=VOCAB, hidden_size_per_layer_input=16)
    folder = save_tiny(tmp_path / "gemma4", config, tiny_tokenizer)
    model = load(folder, backend="bridge", device="cpu")
    assert architecture_of(model) == "Gemma4ForCausalLM"
    refusal = r"gemma4: Gemma4ForCausalLM multiplies its residual stream by a learned number after each layer"
    with pytest.raises(ValueError, match=refusal):
        check_circuits_readable(model)
    weights = folder / "model.safetensors"
    weights.unlink()  # its files declare the architecture; no weight is left to read
    facts = tmp_path / "celebrity.jsonl"
    save_jsonl(load_celebrity_pairs().first(2), facts)
    with pytest.raises(ValueError, match=refusal):
        probe(folder, facts, tmp_path / "probe", backend="bridge", n_controls=1)
    assert not (tmp_path / "probe").exists()


def test_circuits_of_a_model_whose_layers_they_do_not_describe_are_refused_naming_why(tmp_path, tiny_tokenizer):
    """Gemma 4 (its causal LM and its multimodal model alike) and Gemma 3n are refused by name before any weight is
    read; a RecurrentGemma's recurrent blocks have no attention and no norm before it (they had passed, and
    circuit_table failed inside TransformerLens); a bridge norm with a weight per head and dimension (Cohere's query
    and key norms under use_qk_norm: n_heads × d_head) is refused, naming the shape, where its scale was measured
    against the wrong width and failed with a shape error mid-table."""
    import transformers

    from models.pretrained import load
    from probes.circuits import check_circuits_architecture

    for architecture in ("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration", "Gemma3nForCausalLM",
                         "Gemma3nForConditionalGeneration"):
        with pytest.raises(ValueError, match=rf"x: {architecture} .*refused on every backend"):
            check_circuits_architecture("x", architecture)
    check_circuits_architecture("x", "Gemma3ForCausalLM")
    recurrent = transformers.RecurrentGemmaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                                  lru_width=64, attention_window_size=16,
                                                  block_types=["recurrent", "attention"])
    model = load(save_tiny(tmp_path / "recurrentgemma", recurrent, tiny_tokenizer), backend="bridge", device="cpu")
    with pytest.raises(ValueError, match=r"recurrentgemma: layer 0 of this RecurrentGemmaForCausalLM has no ln1"):
        check_circuits_readable(model)
    from types import SimpleNamespace

    from transformers.models.cohere.modeling_cohere import CohereLayerNorm

    per_head = CohereLayerNorm((4, 16))  # a Cohere's q_norm under use_qk_norm (TransformerLens 4.3's bridge wraps it)
    with pytest.raises(ValueError, match=r"recurrentgemma: its norm CohereLayerNorm holds a weight of shape \(4, 16\)"):
        norm_scale(model, SimpleNamespace(weight=per_head.weight, original_component=per_head))


@pytest.mark.parametrize("architecture, claimed", [("gpt2", "RMS"), ("llama", "LN")])
def test_a_bridge_whose_config_misstates_whether_its_norms_centre_is_refused(architecture, claimed, tiny_models,
                                                                           monkeypatch):
    """The circuits centre the residual stream where the config's ``normalization_type`` says its norms are
    LayerNorms; a bridge runs the Hugging Face modules, whatever the config says. Whether each norm before attention
    and before the unembedding centres is measured on its module (``models.backend.norm_centres``): a GPT-2 whose
    config says RMS and a Llama whose config says LN are refused, naming the norm; as they are, both pass."""
    model = tiny_models[architecture].backends["bridge"]
    check_circuits_readable(model)
    monkeypatch.setattr(model.cfg, "normalization_type", claimed)
    centres = "subtracts" if claimed == "RMS" else "does not subtract"
    with pytest.raises(ValueError, match=rf"{architecture}: its norm (ln_final|blocks.0.ln1) {centres} the mean of its "
                                         rf"input, but its config \(normalization_type '{claimed}'\) says otherwise"):
        check_circuits_readable(model)


def test_circuits_of_a_model_that_normalises_its_embeddings_are_refused(tmp_path, tiny_tokenizer):
    """BLOOM's residual stream starts from LayerNorm(W_E[token]): the circuits, which read the rows of W_E as the
    entities' residual states, were computed on a bridge over it with nothing said. Refused by architecture."""
    import transformers

    from models.pretrained import load

    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4)
    model = load(save_tiny(tmp_path / "bloom", config, tiny_tokenizer), backend="bridge", device="cpu")
    with pytest.raises(ValueError, match=r"bloom: BloomForCausalLM normalises its token embeddings before the first "
                                         r"layer.*refused on every backend"):
        check_circuits_readable(model)


def weightless(tmp_path, kind: str) -> list:
    """A model folder of ``kind`` holding config.json only, and a GGUF holding its architecture only: files
    that declare an architecture and have no weight to read."""
    folder = tmp_path / kind
    tiny_config(kind).save_pretrained(folder)
    path = tmp_path / f"{kind}.gguf"
    writer = gguf.GGUFWriter(str(path), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return [folder, path]


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_probe_refuses_olmo2_from_its_files_before_reading_any_weight(backend, tmp_path):
    """`probe` runs the circuits and direct logit attribution, neither exact on OLMo 2 on any backend: it is
    refused from the architecture its files declare (a folder's config.json, a GGUF's general.architecture),
    before any weight is read (these files have none), naming the model and why, and writes nothing."""
    facts = tmp_path / "celebrity.jsonl"
    save_jsonl(load_celebrity_pairs().first(2), facts)
    out = tmp_path / "probe"
    for model in weightless(tmp_path, "olmo2"):
        with pytest.raises(ValueError, match=r"olmo2: Olmo2ForCausalLM normalises each attention layer's output"):
            probe(model, facts, out, backend=backend, n_controls=1)
        assert not out.exists()


def test_probe_runs_whole_on_a_gemma_on_either_backend(tiny_models, tmp_path):
    """`probe` refused a Gemma bridge from its files, first for its direct logit attribution, then (under
    TransformerLens 3.9) for its circuits, both now read exactly there (the tests above; the circuits against the
    Hugging Face weights in models/test_architectures.py). It runs whole on a tiny Gemma 3 on either backend of
    either line and draws attribution.png."""
    facts = tmp_path / "celebrity.jsonl"
    save_jsonl(load_celebrity_pairs().first(4), facts)
    out = tmp_path / "probe"
    check_attribution_architecture("gemma3", "Gemma3ForCausalLM", hooked=False)
    for backend in ("hooked", "bridge"):
        summary = probe(tiny_models["gemma3"].folder, facts, out / backend, backend=backend, n_controls=1,
                        patch_layers=[0])
        assert "skipped" not in summary["attribution"] and (out / backend / "attribution.png").is_file()
        assert (out / backend / "circuits.csv").is_file()


def applied_scale(model, norm) -> torch.Tensor:
    """The scale a Gemma norm multiplies by, as transformers defines it: 1 + its Hugging Face module's weight on a
    bridge (which runs that module); a HookedTransformer's converter stores it, 1 added, as its w."""
    return norm.w if is_hooked(model) else 1 + norm.original_component.weight


@pytest.mark.parametrize("backend", BACKENDS_BY_ARCHITECTURE["gemma2"])
def test_gemma2_is_attributed_before_its_logit_cap(backend, tiny_models):
    model = perturbed(tiny_models["gemma2"].backends[backend])
    with torch.no_grad():  # the final norm's scale γ × 40: logits of tens, far from the cap's linear range
        stored_offset = 0.0 if is_hooked(model) else 1.0  # a bridge stores w = γ − 1
        model.ln_final.w.copy_(40.0 * applied_scale(model, model.ln_final) - stored_offset)
    examples, controls = statements()
    table = direct_logit_attribution(model, examples, controls=controls)
    totals = torch.tensor(table.groupby("statement").attribution.sum().to_numpy()).float()
    with torch.no_grad():
        capped = model(torch.tensor([e.prompt for e in examples]))[:, -1]
    raw = uncapped(model, capped)
    assert (totals - (raw[:, ANSWER] - raw[:, CONTROL])).abs().max() < 1e-3 * raw.abs().max()
    assert (totals - (capped[:, ANSWER] - capped[:, CONTROL])).abs().max() > 1.0
    # probe's attribution.png says so in its title (its bars summed to what no plot of the logit shows)
    from analyses.probe import _norm_note

    assert "terms sum to the logit before its soft cap, c·artanh(logit / c), c = 30" in _norm_note(model)
    assert "soft cap" not in _norm_note(tiny_models["gemma3"].backends[backend])  # Gemma 3 caps no logit


@pytest.mark.parametrize("architecture, backend", [(a, b) for a in ("gemma2", "gemma3")
                                                   for b in BACKENDS_BY_ARCHITECTURE[a]])
def test_gemma_heads_are_read_through_the_post_attention_norm(architecture, backend, tiny_models):
    """Gemma 2/3's heads write through an RMSNorm (applied scale γ, cached scale s): head h's term is
    γ ⊙ (z_h W_O^h) / s. Recomputed here from the cache by hand, γ as transformers defines it (``applied_scale``),
    it matches the head's row on every backend of either line (a bridge's included: it stores w, applies 1 + w and
    caches s), and the heads (and bias) of a layer add up to that layer's whole attention output's term."""
    model = perturbed(tiny_models[architecture].backends[backend])
    examples, _ = statements(n=1)
    heads = direct_logit_attribution(model, examples, by="head")
    layers = direct_logit_attribution(model, examples, by="layer")
    for layer in range(model.cfg.n_layers):
        # the perturbed HookedTransformer has an output bias b_O, read through the norm like a head
        per_head = heads[heads.kind.isin(["head", "attn bias"]) & (heads.layer == layer)].attribution.sum()
        assert per_head == pytest.approx(layers[layers.component == f"L{layer} attn"].attribution.item(), abs=1e-5)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([examples[0].prompt]))
        z = cache["blocks.1.attn.hook_z"][0, -1, 2]  # head 2 of layer 1, last position
        gamma = applied_scale(model, model.blocks[1].ln1_post)
        written = z @ model.blocks[1].attn.W_O[2] * gamma / cache["blocks.1.ln1_post.hook_scale"][0, -1]
        final = applied_scale(model, model.ln_final) * model.W_U[:, ANSWER]
        expected = float((written / cache["ln_final.hook_scale"][0, -1]) @ final)
    assert heads[heads.component == "L1H2"].attribution.item() == pytest.approx(expected, abs=1e-5)
    assert abs(expected) > 1e-3


def test_smollm2_attributions_sum_to_the_logit_difference(smollm2_hooked, smollm2_tokenizer):
    prompt = tuple(smollm2_tokenizer.encode("The capital of France is", add_special_tokens=False))
    answer, control = (smollm2_tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Paris", " Rome"))
    table = direct_logit_attribution(smollm2_hooked, [Example(prompt, (answer,), 0, "forward", "train")],
                                     controls=[Example(prompt, (control,), 0, "forward", "train")])
    with torch.no_grad():
        logits = smollm2_hooked(torch.tensor([prompt]))[0, -1]
    assert table.attribution.sum() == pytest.approx(float(logits[answer] - logits[control]), abs=1e-4)
    assert "attn bias" not in set(table.kind)


def test_gemma3_270m_attributions_sum_to_the_logit_difference(gemma3_hooked, gemma3_bridge):
    """The real Gemma 3 270M: per head through its post-attention norms, BOS first as its tokenizer adds it; a
    HookedTransformer and a bridge (either backend under TransformerLens 4) each read as it is (no folded copy of
    the model's 1.6 GiB), the bridge's norms read as the 1 + w they apply, each one's sums checked against its own
    logits. Both backends give the same term for every component (under 3.9 the HookedTransformer's converter adds
    Gemma's 1 itself)."""
    tokenizer = gemma3_hooked.tokenizer
    prompt = tuple(tokenizer.encode("The capital of France is"))
    assert prompt[0] == tokenizer.bos_token_id
    answer, control = (tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Paris", " Rome"))
    examples = [Example(prompt, (answer,), 0, "forward", "train")]
    controls = [Example(prompt, (control,), 0, "forward", "train")]
    logits = {}
    for model in (gemma3_hooked, gemma3_bridge):
        with torch.no_grad():
            logits[id(model)] = model(torch.tensor([prompt]))[0, -1]
    for by in ("head", "layer"):
        tables = []
        for model in (gemma3_hooked, gemma3_bridge):
            table = direct_logit_attribution(model, examples, controls=controls, by=by)
            difference = logits[id(model)][answer] - logits[id(model)][control]
            assert table.attribution.sum() == pytest.approx(float(difference), abs=1e-4)
            assert "attn bias" not in set(table.kind)
            tables.append(table)
        hooked, bridge = tables
        assert list(hooked.component) == list(bridge.component)
        assert (hooked.attribution - bridge.attribution).abs().max() < 1e-4
