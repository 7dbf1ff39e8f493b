"""Config features TransformerLens 3.9's HookedTransformer converter does not carry are refused, not dropped.

Its converter reads a Hugging Face config field by field, and what it does not read it drops with no error:
RoPE scaling other than Llama's ``llama3`` (``linear``, ``yarn``, ``dynamic``; Gemma 3's per-layer-type
``rope_parameters`` included) and Llama's ``attention_bias``/``mlp_bias``. A HookedTransformer of such a model
computes another function (max |Δ log-softmax| 3-18 nats on these tiny models), so ``backend="hooked"`` refuses
it, naming the model, the field and its value, before any weight is read (a folder's ``config.json``) or
converted (``to_hooked``), and points to the bridge, which runs the transformers modules: its log-probabilities
equal transformers' here (< 1e-4). What the converter does carry still loads and matches: ``llama3`` scaling on
Llama and Qwen2's q/k/v biases. Under TransformerLens 4 "hooked" is the bridge: nothing is refused, and its
log-probabilities equal transformers'.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers
from tiny_models import INIT, VOCAB, save_tiny, tiny_config

from models import pretrained
from models.backend import TL_MAJOR
from analyses.cli import main
from facts.tokens import Example, collate
from models.pretrained import PretrainedLoadError, declared_bos, load, load_hf, load_tokenizer, resolve, to_hooked
from models.rope_layout import PassDependentRopeError
from probes.shared_prompt import candidate_logprobs_cached

TOLERANCE = 1e-4
LINEAR = {"rope_type": "linear", "factor": 8.0, "rope_theta": 10_000.0}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10_000.0}
DYNAMIC = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10_000.0}
LONGROPE = {"rope_type": "longrope", "rope_theta": 10_000.0, "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
            "original_max_position_embeddings": 32}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16, "rope_theta": 10_000.0}
GLOBAL, LOCAL = {"rope_type": "default", "rope_theta": 1_000_000.0}, {"rope_type": "default", "rope_theta": 10_000.0}
SLIDING = {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0, "layer_types": None}


def _ids(n: int) -> torch.Tensor:
    return torch.randint(3, 1000, (1, n), generator=torch.Generator().manual_seed(0))


IDS = _ids(40)  # past llama3's original 16 positions, yarn's 32 and Gemma 3's 4-token window


def _config(kind: str, **overrides) -> transformers.PretrainedConfig:
    """``tiny_config(kind)`` with ``overrides`` (built again from its dict, so that derived fields follow them:
    Qwen2's ``layer_types`` from ``use_sliding_window``/``max_window_layers``)."""
    config = tiny_config(kind)
    return type(config)(**{**config.to_dict(), **overrides})


def _build(folder, kind: str, tokenizer, **overrides):
    """A tiny random ``kind`` folder with ``overrides`` in its config (biases random, not 0), and its transformers
    model as :func:`models.pretrained.load_hf` reads it."""
    save_tiny(folder, _config(kind, **overrides), tokenizer)
    hf, _ = load_hf(folder, device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        biases = [p for name, p in hf.named_parameters() if name.endswith(".bias")]
        for bias in biases:
            bias.add_(0.3 * torch.randn(bias.shape, generator=generator))
    if biases:
        hf.save_pretrained(folder)
    return hf


def _log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out).double().log_softmax(-1)


def _difference(model, hf, ids: torch.Tensor = IDS) -> float:
    return float((_log_probs(model, ids) - _log_probs(hf, ids)).abs().max())


# (kind, config overrides, what the refusal names): each computes another function than its default-config twin
REFUSED = {
    "llama-rope-linear": ("llama", {"rope_parameters": LINEAR},
                          r"rope_parameters\['rope_type'\] = 'linear' \(factor 8.0\)"),
    "qwen2-rope-yarn": ("qwen2", {"rope_parameters": YARN}, r"rope_parameters\['rope_type'\] = 'yarn' \(factor 4.0"),
    "llama-rope-dynamic": ("llama", {"rope_parameters": DYNAMIC}, r"rope_parameters\['rope_type'\] = 'dynamic'"),
    "gemma3-global-rope-linear": (
        "gemma3",
        {"rope_parameters": {"full_attention": dict(LINEAR, rope_theta=1_000_000.0), "sliding_attention": LOCAL}},
        r"rope_parameters\['full_attention'\]\['rope_type'\] = 'linear' \(factor 8.0\)"),
    "gemma3-local-rope-linear": (
        "gemma3", {"rope_parameters": {"full_attention": GLOBAL, "sliding_attention": LINEAR}},
        r"rope_parameters\['sliding_attention'\]\['rope_type'\] = 'linear'"),
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}, r"attention_bias = True; mlp_bias = True"),
    # before: hooked 13.5 nats off (window 4 on both layers), 4.40 (NeoX base 50), 8.41 (bidirectional Gemma 3)
    "qwen2-sliding-window": ("qwen2", SLIDING, r"sliding_window = 4 on layers \[0, 1\] \(layer_types 'sliding_attention'; "
                                              r"use_sliding_window True, max_window_layers 0\)"),
    "neox-rope-theta": ("neox", {"rope_parameters": {"rope_type": "default", "rope_theta": 50.0,
                                                     "partial_rotary_factor": 0.25}},
                        r"rope_parameters\['rope_theta'\] = 50.0 \(the converter uses 10000\)"),
    "gemma3-bidirectional": ("gemma3", {"use_bidirectional_attention": True}, r"use_bidirectional_attention = True"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_hooked_refuses_what_its_converter_drops_and_the_bridge_computes_it(case, tiny_tokenizer, tmp_path,
                                                                            monkeypatch):
    """3.9: ``load(backend="hooked")`` refuses the folder before reading a weight, ``to_hooked`` the model before
    converting one, and :func:`check_convertible` from its files alone, each naming the model, the field, its
    value and the bridge; the bridge's log-probabilities equal transformers' (so the advice is right). 4.x: "hooked"
    is the bridge, and matches."""
    kind, overrides, field = REFUSED[case]
    folder = tmp_path / case
    hf = _build(folder, kind, tiny_tokenizer, **overrides)
    if overrides.get("rope_parameters") is not DYNAMIC:  # dynamic RoPE changes it past the context alone, where
        # every pass is refused (test_rope_that_depends_on_the_pass_is_refused_past_its_first_positions)
        plain = transformers.AutoModelForCausalLM.from_config(tiny_config(kind), attn_implementation="eager").eval()
        plain.load_state_dict(hf.state_dict(), strict=False)  # the same weights without the feature (and its biases)
        assert _difference(plain, hf) > 0.1  # the feature changes the function: dropping it would show
    bridge = load(folder, backend="bridge", device="cpu")
    assert _difference(bridge, hf) < TOLERANCE
    if TL_MAJOR >= 4:
        assert _difference(load(folder, backend="hooked", device="cpu"), hf) < TOLERANCE
        return
    message = (rf"cannot convert {type(hf).__name__} \({case}: its config sets {field}"
               r".*backend='bridge' \(--backend bridge\)")

    def never(*args, **kwargs):
        raise AssertionError("a weight was read or converted before the refusal")

    monkeypatch.setattr(pretrained, "_read_hf_folder", never)
    monkeypatch.setattr(pretrained, "_convert_weights", never)
    with pytest.raises(PretrainedLoadError, match=message):
        load(folder, backend="hooked", device="cpu")
    with pytest.raises(PretrainedLoadError, match=message):
        to_hooked(hf, tiny_tokenizer, folder, device="cpu")
    with pytest.raises(PretrainedLoadError, match=message):
        pretrained.check_convertible(folder)


def test_llama3_rope_scaling_converts_exactly(tiny_tokenizer, tmp_path):
    """Llama's llama3 RoPE scaling is carried (NTK-by-parts): hooked = transformers within 1e-4 past its original
    16 positions, where the same weights with plain RoPE differ by nats."""
    folder = tmp_path / "llama-llama3"
    hf = _build(folder, "llama", tiny_tokenizer, rope_parameters=LLAMA3)
    hooked = load(folder, backend="hooked", device="cpu")
    assert _difference(hooked, hf) < TOLERANCE
    assert _difference(to_hooked(hf, tiny_tokenizer, folder, device="cpu"), hf) < TOLERANCE
    plain = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="eager").eval()
    plain.load_state_dict(hf.state_dict())
    assert _difference(plain, hf) > 0.1


def test_gemma_1_runs_the_activation_transformers_runs(tiny_tokenizer, tmp_path):
    """A Gemma 1 config carrying a stale ``hidden_activation`` ("gelu", exact) beside its ``hidden_act`` (tanh's
    approximation, what transformers' Gemma 1 MLP reads): the conversion runs tanh's too, within 1e-4 of
    transformers (exact GELU had moved log-probabilities by less than the reference check's 1e-3)."""
    folder = tmp_path / "gemma-stale-activation"
    hf = _build(folder, "gemma", tiny_tokenizer, hidden_activation="gelu")
    assert hf.config.hidden_act == "gelu_pytorch_tanh" and hf.config.hidden_activation == "gelu"
    model = load(folder, backend="hooked", device="cpu")
    assert _difference(model, hf) < TOLERANCE
    if TL_MAJOR < 4:  # 4.x's "hooked" is the bridge, which runs transformers' own MLP
        assert model.cfg.act_fn == "gelu_pytorch_tanh"


def test_a_temporary_folder_whose_path_names_an_architecture_is_refused(tiny_tokenizer, tmp_path, monkeypatch):
    """TransformerLens 3.9 takes "llama" or "gemma" anywhere in a local folder's path for the architecture: with
    TMPDIR under such a folder a Qwen2 model was refused as Gemma. The load says what to change instead."""
    import tempfile

    folder = tmp_path / "qwen2"
    _build(folder, "qwen2", tiny_tokenizer)
    scratch = tmp_path / "my-gemma-scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    if TL_MAJOR >= 4:  # its "hooked" is the bridge, which writes no config for TransformerLens to read
        load(folder, backend="hooked", device="cpu")
        return
    with pytest.raises(PretrainedLoadError, match="has 'gemma' in its path.*set TMPDIR to a folder"):
        load(folder, backend="hooked", device="cpu")


def test_qwen2_query_key_value_biases_convert_exactly(tiny_tokenizer, tmp_path):
    """Qwen2's q/k/v biases (fixed by the architecture, not switched by its config) are carried: with random
    biases, hooked = transformers within 1e-4, where the same weights without them differ by nats."""
    folder = tmp_path / "qwen2-biases"
    hf = _build(folder, "qwen2", tiny_tokenizer)
    assert {name.rsplit(".", 2)[-2] for name, _ in hf.named_parameters() if name.endswith(".bias")} \
        == {"q_proj", "k_proj", "v_proj"}
    for model in (load(folder, backend="hooked", device="cpu"), to_hooked(hf, tiny_tokenizer, folder, device="cpu")):
        assert _difference(model, hf) < TOLERANCE
    unbiased = transformers.AutoModelForCausalLM.from_config(tiny_config("qwen2"), attn_implementation="eager").eval()
    unbiased.load_state_dict({k: v for k, v in hf.state_dict().items() if not k.endswith(".bias")}, strict=False)
    assert _difference(unbiased, hf) > 0.1


RULE = [  # (kind, config overrides, what the converter does not carry: none, or the field named)
    ("llama", {}, None),
    ("llama", {"rope_parameters": LLAMA3}, None),
    ("llama", {"rope_parameters": LINEAR}, "rope_parameters['rope_type'] = 'linear' (factor 8.0)"),
    ("llama", {"rope_parameters": YARN}, "rope_parameters['rope_type'] = 'yarn'"),
    ("llama", {"rope_parameters": DYNAMIC}, "rope_parameters['rope_type'] = 'dynamic' (factor 4.0)"),
    ("llama", {"attention_bias": True}, "attention_bias = True"),
    ("llama", {"mlp_bias": True}, "mlp_bias = True"),
    ("qwen2", {}, None),
    ("qwen2", {"rope_parameters": YARN}, "rope_parameters['rope_type'] = 'yarn' (factor 4.0, "
                                         "original_max_position_embeddings 32)"),
    ("qwen2", {"rope_parameters": LLAMA3}, "rope_parameters['rope_type'] = 'llama3'"),  # llama3 is Llama's alone
    ("mistral", {}, None),
    ("mistral", {"rope_parameters": LLAMA3}, "rope_parameters['rope_type'] = 'llama3'"),
    ("mistral", {"rope_parameters": LINEAR}, "rope_parameters['rope_type'] = 'linear'"),
    ("gemma", {}, None),
    ("gemma", {"rope_parameters": LINEAR}, "rope_parameters['rope_type'] = 'linear'"),
    ("gemma", {"attention_bias": True}, "attention_bias = True"),
    ("gemma2", {}, None),
    ("gemma2", {"rope_parameters": LINEAR}, "rope_parameters['rope_type'] = 'linear'"),
    ("gemma3", {}, None),  # per layer type: its two bases are carried
    ("gemma3", {"rope_parameters": {"full_attention": LINEAR, "sliding_attention": LOCAL}},
     "rope_parameters['full_attention']['rope_type'] = 'linear'"),
    ("gemma3", {"rope_parameters": {"full_attention": GLOBAL, "sliding_attention": YARN}},
     "rope_parameters['sliding_attention']['rope_type'] = 'yarn'"),
    ("gemma3", {"attention_bias": True}, "attention_bias = True"),
    ("neox", {}, None),  # rotary on a quarter of each head, q/k/v and output biases: carried
    ("neox", {"attention_bias": False}, "attention_bias = False"),  # its converter reads the biases, and fails
    ("neox", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10_000.0,
                                  "partial_rotary_factor": 0.25}}, "rope_parameters['rope_type'] = 'linear'"),
    ("gpt2", {}, None),
    ("qwen2", SLIDING, "sliding_window = 4 on layers [0, 1]"),
    ("qwen2", dict(SLIDING, max_window_layers=1), "sliding_window = 4 on layers [1]"),
    ("qwen2", dict(SLIDING, sliding_window=128), None),  # a window as long as the context slides over nothing
    ("qwen2", {"use_sliding_window": False, "sliding_window": 4}, None),
    ("mistral", {"sliding_window": 4}, None),  # every layer local: carried
    ("gemma2", {}, None),  # its sliding layers: carried (tiny_config's gemma2 and gemma3 slide)
    ("neox", {"rope_parameters": {"rope_type": "default", "rope_theta": 50.0, "partial_rotary_factor": 0.25}},
     "rope_parameters['rope_theta'] = 50.0"),
    ("neox", {"rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.25}},
     None),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention = True"),
    ("gemma2", {"use_bidirectional_attention": True}, None),  # eager attention ignores it: causal, as converted
    ("gemma3", {"attn_logit_softcapping": 1.0}, "attn_logit_softcapping = 1.0"),
    ("gemma3", {"final_logit_softcapping": 1.0}, None),
    ("olmo2", {}, None),
    ("olmo2", {"attention_bias": True}, "attention_bias = True"),  # its converter writes zero biases
]


@pytest.mark.parametrize(("kind", "overrides", "gap"), RULE)
def test_the_rule_names_what_the_converter_does_not_carry(kind, overrides, gap):
    """:func:`hooked_conversion_gaps` on configs alone (no model): empty where the converter carries the config,
    else the field and its value; :func:`check_hooked_config` refuses exactly those under 3.9 (pointing to the bridge
    unless :func:`bridge_conversion_gaps` refuses it too), and under 4.x the bridge's."""
    config = _config(kind, **overrides)
    gaps = pretrained.hooked_conversion_gaps(config)
    assert gaps == [] if gap is None else any(g.startswith(gap) for g in gaps), gaps
    bridge_gaps = pretrained.bridge_conversion_gaps(config)  # under 4.x "hooked" is the bridge: its gaps alone
    if not (bridge_gaps if TL_MAJOR >= 4 else gap):
        pretrained.check_hooked_config("tiny", config)
    else:
        advice = "no backend computes it" if bridge_gaps else "backend='bridge'"
        with pytest.raises(PretrainedLoadError, match=f"tiny: its config sets .*{advice}"):
            pretrained.check_hooked_config("tiny", config)


@pytest.mark.parametrize("config_class", ["OlmoConfig", "Olmo3Config", "OlmoeConfig", "ApertusConfig"])
def test_a_bias_the_olmo_and_apertus_converters_write_as_zeros_is_named(config_class):
    """OLMo (1, 3), OLMoE and Apertus: TransformerLens's converters write zero attention biases, so a config with
    ``attention_bias`` is named by the rule (it had been left to the float32 reference check alone, which a
    half-precision load skips)."""
    config = getattr(transformers, config_class)(attention_bias=True)
    assert "attention_bias = True" in pretrained.hooked_conversion_gaps(config)
    unbiased = pretrained.hooked_conversion_gaps(getattr(transformers, config_class)(attention_bias=False))
    assert not any("bias" in gap for gap in unbiased)  # (Apertus's default RoPE is llama3's: a gap of its own)


@pytest.mark.parametrize(("rope", "limit"), [(DYNAMIC, 128), (LONGROPE, 32)], ids=["dynamic", "longrope"])
def test_rope_that_depends_on_the_pass_is_refused_past_its_first_positions(rope, limit, tiny_tokenizer, tmp_path):
    """``dynamic`` RoPE (frequencies grown from the pass's longest position past the 128-position context) and
    ``longrope`` (long factors past its original 32): transformers' own model gives one token another log-probability
    in a longer pass of the same prefix (what scoring by trie against teacher forcing meets). Every model the toolkit
    reads (transformers' and the bridge) runs a pass within the first ``limit`` positions as transformers does and
    refuses one past them, naming the RoPE and the limit, by trie as well as in a plain forward."""
    folder = tmp_path / rope["rope_type"]
    save_tiny(folder, _config("llama", rope_parameters=rope), tiny_tokenizer)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = _ids(limit + 8)
    within, longer = _log_probs(theirs, ids[:, :limit])[0, -1], _log_probs(theirs, ids)[0, limit - 1]
    assert (within - longer).abs().max() > 0.1  # the same position, the same prefix: the pass decides
    message = rf"RoPE \({rope['rope_type']}\) .* past its first {limit} positions.*reaches position {limit}"
    bridge = load(folder, backend="bridge", device="cpu")
    for model in (load_hf(folder, device="cpu")[0], bridge):
        assert (_log_probs(model, ids[:, :limit])[0, -1] - within).abs().max() < TOLERANCE
        with pytest.raises(PassDependentRopeError, match=message):
            _log_probs(model, ids[:, : limit + 1])
    answers = [Example(prompt=tuple(ids[0, : limit - 1].tolist()), answer=tuple(ids[0, limit - 1 : limit + 2].tolist()),
                       fact=0, direction="forward", split="trained")]
    with pytest.raises(PassDependentRopeError, match=message):
        candidate_logprobs_cached(bridge, [answers])


# (kind, config overrides, what the refusal names, whether 3.9's HookedTransformer computes it exactly): the bridge
# runs its own attention here, not transformers'. Before: bridge 7.45 nats off (GPT-2 without the attention scale),
# 2.71 (Gemma 3 with an attention soft cap, which transformers' Gemma 3 does not apply; hooked 2.71 too).
BRIDGE_REFUSED = {
    "gpt2-unscaled-attention": ("gpt2", {"scale_attn_weights": False}, r"scale_attn_weights = False", True),
    "gemma3-attention-soft-cap": ("gemma3", {"attn_logit_softcapping": 1.0},
                                  r"attn_logit_softcapping = 1.0 \(transformers' Gemma3ForCausalLM does not apply it\)",
                                  False),
}


@pytest.mark.parametrize("case", BRIDGE_REFUSED)
def test_the_bridge_refuses_what_it_computes_otherwise(case, tiny_tokenizer, tmp_path, monkeypatch):
    """``load(backend="bridge")`` refuses, before reading a weight, a config its own attention computes otherwise
    than transformers (unchecked, the bridge is nats off transformers), naming the model, the field and its
    value, and the backend that is exact: 3.9's HookedTransformer for GPT-2 without the attention scale (= transformers
    within 1e-4), none for Gemma 3's attention soft cap (refused by both, under both lines)."""
    kind, overrides, field, hooked_exact = BRIDGE_REFUSED[case]
    folder = tmp_path / case
    hf = _build(folder, kind, tiny_tokenizer, **overrides)
    assert any(gap.startswith(field.replace("\\", "")[:20]) for gap in pretrained.bridge_conversion_gaps(hf.config))
    with monkeypatch.context() as unchecked:
        unchecked.setattr(pretrained, "check_bridge_config", lambda *args, **kwargs: None)
        # without the rule that names the field, the load's comparison with transformers refuses it
        with pytest.raises(PretrainedLoadError, match=r"TransformerBridge computes other log-probabilities than "
                                                      r"transformers' own model \(max \|Δ log-softmax\| \d"):
            load(folder, backend="bridge", device="cpu")
        unchecked.setattr(pretrained, "_check_reference", lambda *args, **kwargs: None)
        assert _difference(load(folder, backend="bridge", device="cpu"), hf) > 0.1  # what the refusals prevent
    hooked_works = hooked_exact and TL_MAJOR < 4
    if hooked_works:  # in float64: without the 1/sqrt(d_head) scale float32 rounding reaches 1.3e-4
        hooked = load(folder, backend="hooked", device="cpu", dtype=torch.float64)
        assert _difference(hooked, hf.double()) < TOLERANCE
        hf.float()
    advice = r"backend='hooked' \(--backend hooked\) under TransformerLens 3.9" if hooked_works \
        else r"no backend computes it"

    def never(*args, **kwargs):
        raise AssertionError("a weight was read before the refusal")

    monkeypatch.setattr(pretrained, "_read_hf_folder", never)
    for backend in ("bridge",) if hooked_works else ("bridge", "hooked"):
        with pytest.raises(PretrainedLoadError, match=rf"\({case}: its config sets {field}.*{advice}"):
            load(folder, backend=backend, device="cpu")
    if TL_MAJOR >= 4 or not hooked_works:
        with pytest.raises(PretrainedLoadError, match=rf"\({case}: its config sets {field}"):
            pretrained.check_convertible(folder)
    with pytest.raises(PretrainedLoadError, match=rf"\({case}: its config sets {field}"):
        pretrained.check_convertible(folder, "bridge")  # what a command asks before it touches its folder
    out = tmp_path / "asymmetry"
    assert main(["check-asymmetry", "--model", str(folder), "--backend", "bridge", "--limit", "2", "--controls", "1",
                 "--out", str(out)]) == 2
    assert not out.exists()
    with pytest.raises(PretrainedLoadError, match=field):
        pretrained._to_bridge(hf, tiny_tokenizer, pretrained.resolve(folder), torch.device("cpu"), torch.float32,
                              False)


@pytest.mark.parametrize("kind, window, layers", [
    ("gemma2", None, r"its layers \[0, 2\] are 'sliding_attention'"),
    ("gemma3", None, r"its layers \[0, 1\] are 'sliding_attention'"),
    ("gemma3", 0, r"its layers \[0, 1\] are 'sliding_attention'"),
])
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_sliding_window_that_is_not_set_is_refused_before_any_weight_is_read(kind, window, layers, backend,
                                                                                tiny_tokenizer, tmp_path,
                                                                                monkeypatch):
    """A Gemma 2/3 folder whose config.json has ``sliding_window`` null (or 0) for its 'sliding_attention' layers:
    transformers' own model fails at its first forward (a TypeError, a ValueError or a shape mismatch, which the load
    had raised as they were, after reading every weight). Both backends refuse it with PretrainedLoadError, naming the
    folder and the field, before a weight is read; :func:`check_convertible` from its files alone and
    :func:`to_hooked` of the model in memory too, before transformers runs it."""
    folder = save_tiny(tmp_path / kind, _config(kind, sliding_window=window), tiny_tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with pytest.raises((TypeError, ValueError, RuntimeError)), torch.no_grad():
        hf(IDS)  # what the refusal is for: transformers cannot run it either
    message = rf"{kind} \({folder}\): its config sets sliding_window = {window}, but {layers}"

    def never(*args, **kwargs):
        raise AssertionError("a weight was read or converted before the refusal")

    monkeypatch.setattr(pretrained, "_read_hf_folder", never)
    monkeypatch.setattr(pretrained, "_convert_weights", never)
    with pytest.raises(PretrainedLoadError, match=message):
        load(folder, backend=backend, device="cpu")
    with pytest.raises(PretrainedLoadError, match=message):
        pretrained.check_convertible(folder, backend)
    with pytest.raises(PretrainedLoadError, match=rf"{kind}: its config sets sliding_window = {window}, but {layers}"):
        to_hooked(hf, tiny_tokenizer, folder, device="cpu")


def test_a_gemma_without_sliding_layers_still_needs_its_window(tiny_tokenizer, tmp_path):
    """Gemma 2's transformers model builds a sliding-window mask even where every layer is 'full_attention': with
    ``sliding_window`` null it fails ("Could not find a `sliding_window` argument"), so that folder is refused too;
    with a window set it loads and matches transformers."""
    full = ["full_attention"] * 3
    folder = save_tiny(tmp_path / "windowless", _config("gemma2", sliding_window=None, layer_types=full),
                       tiny_tokenizer)
    with pytest.raises(PretrainedLoadError, match=r"sliding_window = None, but Gemma2ForCausalLM always slides a "
                                                  r"window"):
        load(folder, backend="bridge", device="cpu")
    folder = save_tiny(tmp_path / "windowed", _config("gemma2", layer_types=full), tiny_tokenizer)
    hf, _ = load_hf(folder, device="cpu")
    assert _difference(load(folder, backend="bridge", device="cpu"), hf) < TOLERANCE


def test_bidirectional_attention_is_not_scored(tiny_tokenizer, tmp_path):
    """Gemma 3 with ``use_bidirectional_attention``: each position sees the tokens after it (transformers' own
    model: changing token 10 moves positions 0-9 by nats). The bridge computes it (= transformers within 1e-4) but
    ``check_causal`` refuses to score it or transformers' model, naming the model and the field, although the bridge's
    ``attention_dir`` says "causal"; 3.9's hooked load refuses it (it would convert it as causal: 8.4 nats off).
    Gemma 2's flag only sets ``is_causal``, which eager attention ignores: causal, and scored."""
    from models.scoring import check_causal

    folder = tmp_path / "gemma3-bidirectional"
    hf = _build(folder, "gemma3", tiny_tokenizer, use_bidirectional_attention=True)
    changed = IDS.clone()
    changed[0, 10] += 1
    assert (_log_probs(hf, IDS)[0, :10] - _log_probs(hf, changed)[0, :10]).abs().max() > 0.1
    bridge = load(folder, backend="bridge", device="cpu")
    assert bridge.cfg.attention_dir == "causal"
    assert _difference(bridge, hf) < TOLERANCE
    from models.hf_training import CausalLM
    from models.scoring import score_answers

    for model in (bridge, hf, CausalLM(hf)):  # the trainer's wrapper too: score_answers(CausalLM(hf)) had scored it
        with pytest.raises(ValueError, match=r"sets use_bidirectional_attention = True, so its attention is not causal"):
            check_causal(model)
    with pytest.raises(ValueError, match=r"not causal"):
        score_answers(CausalLM(hf), collate([Example((5, 6, 7), (8, 9), fact=0, direction="forward", split="heldout")], 0))
    if TL_MAJOR < 4:
        with pytest.raises(PretrainedLoadError, match=r"use_bidirectional_attention = True"):
            load(folder, backend="hooked", device="cpu")
    gemma2 = _build(tmp_path / "gemma2-bidirectional", "gemma2", tiny_tokenizer, use_bidirectional_attention=True)
    assert (_log_probs(gemma2, IDS)[0, :10] - _log_probs(gemma2, changed)[0, :10]).abs().max() == 0
    check_causal(gemma2)
    check_causal(load(tmp_path / "gemma2-bidirectional", backend="bridge", device="cpu"))


def test_processed_weights_keep_log_probs_under_an_output_soft_cap(tiny_tokenizer, tmp_path):
    """Gemma 2 caps its logits (final_logit_softcapping 30): centring the unembedding shifts the logits before the
    cap squashes them unevenly, so ``process_weights=True`` leaves it out (as TransformerLens's from_pretrained
    does). Before: 7.5e-2 nats off transformers; now within 1e-4, where centring is still done without a cap."""
    folder = tmp_path / "gemma2"
    hf = _build(folder, "gemma2", tiny_tokenizer)
    model = load(folder, backend="hooked", device="cpu", process_weights=True)
    assert _difference(model, hf) < TOLERANCE
    if TL_MAJOR < 4:
        assert model.cfg.output_logits_soft_cap == 30.0
        _build(tmp_path / "llama", "llama", tiny_tokenizer)
        centred = load(tmp_path / "llama", backend="hooked", device="cpu", process_weights=True)
        assert centred.W_U.mean(-1).abs().max() < 1e-6  # no cap: centred as before


# (config, what the refusal names): TransformerLens 3.9's config converter reads one size, its weight converter
# another (or weights the model has none of); before: a bare RuntimeError (size mismatch) or KeyError.
MISCONVERTED = {
    "llama-head-dim": (lambda: _config("llama", head_dim=32), r"blocks.0.attn.W_Q \[4, 64, 32\] where the model has "
                                                              r"\[4, 64, 16\]"),
    "gpt2-n-inner": (lambda: _config("gpt2", n_inner=100), r"blocks.0.mlp.W_in \[64, 100\]"),
    "opt-projection": (lambda: transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, word_embed_proj_dim=32, init_std=0.3), rf"embed.W_E \[{VOCAB}, 32\]"),
    "phi3": (lambda: transformers.Phi3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, initializer_range=0.3, pad_token_id=0, bos_token_id=1,
        eos_token_id=2), r"parameters it has none of \(blocks.0.ln1.b"),
}


@pytest.mark.parametrize("case", MISCONVERTED)
def test_a_conversion_that_does_not_fit_is_named(case, tiny_tokenizer, tmp_path):
    """3.9: a converter that does not fit the model it built is a :class:`PretrainedLoadError` naming the model, the
    parameter and both shapes, and pointing to the bridge, which computes the model (= transformers within 1e-4).
    4.x: "hooked" is the bridge, and matches."""
    make, what = MISCONVERTED[case]
    folder = save_tiny(tmp_path / case, make(), tiny_tokenizer)
    hf, _ = load_hf(folder, device="cpu")
    if TL_MAJOR >= 4:
        assert _difference(load(folder, backend="hooked", device="cpu"), hf) < TOLERANCE
        return
    with pytest.raises(PretrainedLoadError, match=rf"cannot convert {type(hf).__name__} \({case}: its converted "
                                                  rf"weights do not fit .*{what}.*backend='bridge'"):
        load(folder, backend="hooked", device="cpu")
    with pytest.raises(PretrainedLoadError, match=what):
        load(folder, backend="hooked", device="cpu", process_weights=True)
    assert _difference(load(folder, backend="bridge", device="cpu"), hf) < TOLERANCE


def _write_gguf(path, scaling=None, extra=None, leave_out=(), pre="default", add_bos=None):
    """A tiny random Llama GGUF (a character-level BPE tokenizer, BOS ``<s>`` id 0, of pre-tokenizer ``pre``, its
    ``tokenizer.ggml.add_bos_token`` set only where ``add_bos`` is not None), with RoPE scaling metadata
    (``scaling``: type, factor) and ``extra`` tensors (name: array) where given, without the tensors named in
    ``leave_out``."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    d, heads, kv, ff, layers = 64, 4, 2, 128, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10_000.0)
    writer.add_rope_dimension_count(d // heads)
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType(scaling[0]))
        writer.add_rope_scaling_factor(scaling[1])
    chars = [chr(c) for c in range(33, 127)] + ["Ġ", "Ġa"]
    tokens = ["<s>", "</s>"] + chars
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * len(chars))
    writer.add_token_merges(["Ġ a"])
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_vocab_size(len(tokens))
    weight = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    writer.add_tensor("token_embd.weight", weight(len(tokens), d))
    for i in range(layers):
        for name, shape in (("attn_norm", (d,)), ("attn_q", (d, d)), ("attn_k", (kv * d // heads, d)),
                            ("attn_v", (kv * d // heads, d)), ("attn_output", (d, d)), ("ffn_norm", (d,)),
                            ("ffn_gate", (ff, d)), ("ffn_up", (ff, d)), ("ffn_down", (d, ff))):
            if f"blk.{i}.{name}.weight" not in leave_out:
                writer.add_tensor(f"blk.{i}.{name}.weight", weight(*shape) + (1 if len(shape) == 1 else 0))
    writer.add_tensor("output_norm.weight", 1 + weight(d))
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_model_whose_files_lack_a_weight_is_refused_not_filled_with_random_values(tmp_path, monkeypatch,
                                                                                     tiny_tokenizer):
    """transformers fills a weight its files lack with random values and only logs it: a Hugging Face folder
    without its untied unembedding, or a GGUF without one layer's MLP output, loaded, and every number read from it
    was noise. Both are refused, naming the tensors; the whole files load (a tied unembedding is not missing)."""
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("REVLENS_GGUF_CACHE", "off")
    folder = save_tiny(tmp_path / "untied", _config("llama", tie_word_embeddings=False), tiny_tokenizer)
    assert load_hf(folder, device="cpu", keep=False)[0].lm_head.weight is not None
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "lm_head.weight"}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(PretrainedLoadError, match=r"its weights lack 1 tensor\(s\) the LlamaForCausalLM needs "
                                                  r"\(lm_head.weight\); transformers would fill them with random"):
        load_hf(folder, device="cpu", keep=False)
    load_hf(_write_gguf(tmp_path / "whole.gguf"), device="cpu", keep=False)  # no output.weight: tied
    with pytest.raises(PretrainedLoadError, match=r"lack 1 tensor\(s\).*\(model.layers.1.mlp.down_proj.weight\)"):
        load_hf(_write_gguf(tmp_path / "holed.gguf", leave_out=("blk.1.ffn_down.weight",)), device="cpu", keep=False)


def _damage(folder, damage: str) -> None:
    """``folder``'s files damaged as ``damage`` says: a file cut 100 bytes short (its weights first written as
    torch's ``pytorch_model.bin`` for that one), or one shard of its weights, written in three, missing."""
    if damage == "a shard missing":
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
        size = (folder / "model.safetensors").stat().st_size
        (folder / "model.safetensors").unlink()
        hf.save_pretrained(folder, max_shard_size=size // 4)
        shards = sorted(folder.glob("model-*.safetensors"))
        assert len(shards) >= 3, shards
        shards[1].unlink()
        return
    if damage == "pytorch_model.bin":
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / damage)
        (folder / "model.safetensors").unlink()
    with open(folder / damage, "r+b") as file:
        file.truncate((folder / damage).stat().st_size - 100)


@pytest.mark.parametrize("damage", ["model.safetensors", "tokenizer.json", "pytorch_model.bin", "a shard missing"])
def test_a_folder_whose_file_is_damaged_is_refused_before_any_output_folder(damage, tmp_path, capsys, tiny_tokenizer):
    """A Hugging Face folder whose model.safetensors, tokenizer.json or pytorch_model.bin ends early (an unfinished
    download or copy), or whose weights' index lists a shard that is not there, is refused by the checks every
    command runs before its output folder (each in one line naming the folder or file, no folder made: entering one
    deletes an earlier run's files) and by the load itself where the file is damaged after those checks. The
    safetensors file had failed as "SafetensorError ... (unexpected; rerun with --debug)", the .bin file as torch's
    "PytorchStreamReader failed reading zip archive" naming no file, and the missing shard inside the output
    folder; check-asymmetry and probe had read a damaged tokenizer only after the model, inside the output
    folder."""
    from tests_support import assert_model_refused_before_any_folder

    folder = save_tiny(tmp_path / "llama", _config("llama"), tiny_tokenizer)
    _damage(folder, damage)
    said = {"model.safetensors": rf"could not read the weights in {folder}/model.safetensors: "
                                 r".*not fully covered; the file is cut short or damaged",
            "pytorch_model.bin": rf"could not read the weights in {folder}/pytorch_model.bin: a zip archive without "
                                 r"its central directory; the file is cut short or damaged",
            "a shard missing": rf"{folder}/model.safetensors.index.json lists \d+ weight files, 1 of which are not in "
                               rf"{folder}: model-00002-of-\d+.safetensors; copy or download them"}
    if damage in said:
        with pytest.raises(PretrainedLoadError, match=said[damage]):
            pretrained.declared_config(folder)  # what every command checks first
    else:
        said[damage] = rf"could not read its tokenizer .* from {folder}: .* \(tokenizer.json is no valid JSON: cut short"
    with pytest.raises(PretrainedLoadError, match=said[damage]):
        load_hf(folder, device="cpu", keep=False)
    assert_model_refused_before_any_folder(capsys, folder, tmp_path)


def test_a_gguf_whose_config_transformers_builds_is_judged_by_the_fields_its_builder_reads(tmp_path):
    """transformers builds a Qwen 3.5 (or LFM2) GGUF's config with a function of its own, not its mapping table, so
    every qwen35.* field had counted as dropped and such a file was refused with a false reason. The fields the
    builder reads are read; one it does not read is still named."""
    import gguf

    from models.gguf_weights import unread_metadata

    def qwen35(path, extra: dict):
        writer = gguf.GGUFWriter(str(path), "qwen35")
        for key, value in {"context_length": 4096, "embedding_length": 64, "block_count": 4,
                           "feed_forward_length": 128, "attention.head_count": 4, "attention.head_count_kv": 2,
                           "attention.key_length": 16, "attention.value_length": 16,
                           "attention.layer_norm_rms_epsilon": 1e-6, "full_attention_interval": 4,
                           "ssm.conv_kernel": 4, "ssm.state_size": 16, "ssm.group_count": 2,
                           "ssm.time_step_rank": 4, "ssm.inner_size": 64, "rope.freq_base": 1e6,
                           "rope.dimension_count": 8, **extra}.items():
            (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"qwen35.{key}", value)
        writer.add_array("qwen35.rope.dimension_sections", [2, 2, 0, 0])
        writer.add_token_list(["a", "b", "c"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        return gguf.GGUFReader(path)

    assert unread_metadata(qwen35(tmp_path / "plain.gguf", {})) == []
    assert unread_metadata(qwen35(tmp_path / "extra.gguf", {"attention.new_scale": 2.0})) == [
        "qwen35.attention.new_scale = 2.0"]


@pytest.mark.parametrize("architecture", ["gemma2", "gemma3"])
def test_a_gemma_gguf_whose_heads_are_not_256_wide_is_refused(tmp_path, architecture):
    """llama.cpp scales a Gemma 2/3 GGUF's attention by its head size (key_length), transformers by
    query_pre_attn_scalar, which its GGUF reader leaves at 256: a Gemma 3 with 128-wide heads loaded with the
    wrong scale. Refused from the metadata, before any weight is read; 256-wide heads (Gemma 3 270M's) pass."""
    import gguf

    from models.gguf_weights import unread_metadata

    def metadata_only(width: int):
        path = tmp_path / f"{architecture}-{width}.gguf"
        writer = gguf.GGUFWriter(str(path), architecture)
        writer.add_embedding_length(640)
        writer.add_head_count(4)
        writer.add_key_length(width)
        writer.add_value_length(width)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        return path

    assert unread_metadata(gguf.GGUFReader(metadata_only(256))) == []
    with pytest.raises(PretrainedLoadError, match=rf"its GGUF metadata sets {architecture}.attention.key_length = 128 "
                                                  r"\(llama.cpp scales attention by 128\^-1/2.*query_pre_attn_scalar "
                                                  r"256\^-1/2"):
        pretrained.declared_config(metadata_only(128))


def test_a_gguf_field_transformers_reads_into_nothing_is_refused(tmp_path):
    """transformers' GGUF table maps Gemma 4's ``rope.freq_base`` to nothing: its config keeps its own default base,
    whatever the file sets, so the model built would not be the file's. Named, and the file refused from its
    metadata before any weight is read; ``rope.dimension_count`` equal to the head size (read into nothing, and
    nothing to apply) still passes."""
    import gguf

    from models.gguf_weights import unread_metadata

    def gemma4(path, **fields):
        writer = gguf.GGUFWriter(str(path), "gemma4")
        writer.add_embedding_length(640)
        writer.add_head_count(4)
        writer.add_rope_dimension_count(160)
        for key, value in fields.items():
            writer.add_float32(f"gemma4.{key}", value)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
        return path

    assert unread_metadata(gguf.GGUFReader(gemma4(tmp_path / "plain.gguf"))) == []
    based = gemma4(tmp_path / "based.gguf", **{"rope.freq_base": 20_000.0})
    assert unread_metadata(gguf.GGUFReader(based)) == ["gemma4.rope.freq_base = 20000.0 (transformers reads it into "
                                                       "nothing)"]
    with pytest.raises(PretrainedLoadError, match=r"based \(.*based.gguf\): its GGUF metadata sets "
                                                  r"gemma4.rope.freq_base = 20000.0"):
        pretrained.declared_config(based)


def test_a_gguf_that_does_not_say_whether_to_add_bos_follows_llama_cpp(tmp_path, monkeypatch):
    """A GGUF that does not set ``tokenizer.ggml.add_bos_token`` means what llama.cpp, whose format it is, does: a BPE
    vocabulary with Llama 3's pre-tokenizer (``llama-bpe``) starts every text with BOS, one with the ``default``
    pre-tokenizer does not; a file that sets the field is followed. The tokenizer, both backends' prompts and a
    read from the cache of GGUF reads say the same, and where the rule comes from."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("REVLENS_GGUF_CACHE", str(cache))
    for pre, add_bos, starts in (("llama-bpe", None, True), ("default", None, False), ("llama-bpe", False, False)):
        path = _write_gguf(tmp_path / f"{pre}-{add_bos}.gguf", pre=pre, add_bos=add_bos)
        declared = declared_bos(resolve(path))
        assert declared.add is starts
        assert ("llama.cpp then" in declared.where) is (add_bos is None), declared.where
        assert (load_tokenizer(path, keep=False).encode("a b")[0] == 0) is starts
        for backend in ("hooked", "bridge"):
            model = load(path, backend=backend, device="cpu")
            assert model.cfg.default_prepend_bos is starts and (int(model.to_tokens("a b")[0, 0]) == 0) is starts
        for per_process in ("_GGUF_MODELS", "_GGUF_TOKENIZERS", "_GGUF_DECLARED_BOS"):
            monkeypatch.setattr(pretrained, per_process, {})  # the next reads come from the cache's entry
        assert declared_bos(resolve(path)) == declared
        assert (load_tokenizer(path, keep=False).encode("a b")[0] == 0) is starts
    shutil.rmtree(cache)


def test_a_gguf_whose_rope_scaling_transformers_drops_is_refused(tmp_path, monkeypatch):
    """transformers' GGUF reader maps no ``{arch}.rope.scaling.*`` field (it logs them) and skips llama.cpp's
    ``rope_freqs.weight``: both backends would run the model unscaled (linear ×8: 13.3 nats from the scaled model
    before). Refused on both backends, by :func:`declared_config` and :func:`check_convertible` from the
    metadata alone, before any weight is read, naming the file, the field and its value. The same file without them
    loads, and both backends equal transformers."""
    import numpy as np

    monkeypatch.setenv("REVLENS_GGUF_CACHE", "off")
    plain = _write_gguf(tmp_path / "plain.gguf")
    hf, _ = load_hf(plain, device="cpu", keep=False)
    ids = _ids(40) % 90 + 2
    for backend in ("hooked", "bridge"):
        assert _difference(load(plain, backend=backend, device="cpu"), hf, ids) < TOLERANCE
    scaled = hf.config.to_dict()
    scaled["rope_parameters"] = {"rope_type": "linear", "factor": 8.0, "rope_theta": 10_000.0}
    twin = transformers.AutoModelForCausalLM.from_config(type(hf.config)(**scaled),
                                                         attn_implementation="eager").eval()
    twin.load_state_dict(hf.state_dict())
    assert _difference(twin, hf, ids) > 0.1  # the scaling changes the function
    files = {"linear": (_write_gguf(tmp_path / "linear.gguf", scaling=("linear", 8.0)),
                        r"llama.rope.scaling.type = 'linear'; llama.rope.scaling.factor = 8.0"),
             "rope-freqs": (_write_gguf(tmp_path / "freqs.gguf",
                                        extra={"rope_freqs.weight": np.linspace(1, 8, 8).astype(np.float32)}),
                            r"tensor rope_freqs.weight = \[1.0, 2.0"),
             "scaling-none": (_write_gguf(tmp_path / "none.gguf", scaling=("none", 1.0)), None),
             # all ones scales nothing: passed by the metadata check, it had been refused once the weights were read
             "rope-freqs-ones": (_write_gguf(tmp_path / "ones.gguf", extra={"rope_freqs.weight": np.ones(8, np.float32)}),
                                 None)}

    def never(*args, **kwargs):
        raise AssertionError("a weight was read before the refusal")

    for path, field in files.values():
        if field is None:
            for backend in ("hooked", "bridge"):
                assert _difference(load(path, backend=backend, device="cpu"), hf, ids) < TOLERANCE
            continue
        message = rf"{path.stem} \({path}\): its GGUF metadata sets {field}.*no backend reads it exactly"
        with pytest.raises(PretrainedLoadError, match=message):
            pretrained.declared_config(path)
        with pytest.raises(PretrainedLoadError, match=message):
            pretrained.check_convertible(path)
        with monkeypatch.context() as patch:
            patch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
            for backend in ("hooked", "bridge"):
                with pytest.raises(PretrainedLoadError, match=message):
                    load(path, backend=backend, device="cpu")


def test_a_gguf_tensor_transformers_has_no_parameter_for_is_refused(tmp_path, monkeypatch):
    """A tensor transformers maps to no parameter (its reader skips it) is refused, not skipped."""
    import numpy as np

    monkeypatch.setenv("REVLENS_GGUF_CACHE", "off")
    path = _write_gguf(tmp_path / "extra.gguf", extra={"blk.0.attn_q.bias": np.ones(64, dtype=np.float32)})
    with pytest.raises(PretrainedLoadError, match=r"holds the tensor 'blk.0.attn_q.bias', which transformers' GGUF "
                                                  r"reader maps to no parameter of LlamaForCausalLM"):
        load_hf(path, device="cpu", keep=False)


def test_a_gguf_link_to_a_file_without_the_suffix_loads(tmp_path, monkeypatch):
    """A ``.gguf`` link to a file named by its hash alone (the Hugging Face cache's blobs) is a GGUF model, as its
    target is; a file that is neither named ``.gguf`` nor starts with GGUF's magic is still refused."""
    monkeypatch.setenv("REVLENS_GGUF_CACHE", "off")
    blob = _write_gguf(tmp_path / "0123abcd")
    link = tmp_path / "model.gguf"
    link.symlink_to(blob)
    source = pretrained.resolve(link)
    assert source.is_gguf and source.name == "model"
    hf, _ = load_hf(link, device="cpu", keep=False)
    assert _difference(load(link, backend="bridge", device="cpu"), hf, _ids(20) % 90 + 2) < TOLERANCE
    other = tmp_path / "notes"
    other.write_text("not a model")
    (tmp_path / "notes.gguf").symlink_to(other)
    with pytest.raises(PretrainedLoadError, match=r"could not read it as a causal language model from .*notes"):
        load(tmp_path / "notes.gguf")  # read as a folder or Hub id (no GGUF magic), not as a GGUF


def test_a_bridge_that_computes_another_model_than_transformers_is_refused_at_load(tiny_tokenizer, tmp_path):
    """No rule names what TransformerLens 3.9's bridge over Cohere computes otherwise (its log-probabilities are 1.3
    nats from transformers' on a tiny random Cohere), so the load's own comparison on a short text refuses it, naming
    the difference (4.3's bridge computes Cohere as transformers does, and loads it); a model both compute alike (a
    tiny Llama) loads on both backends, and to_hooked is compared too. A half-precision load is compared as well (in
    float32, before its cast): it had been compared by nothing, and 3.9's Cohere bridge loaded in bfloat16."""
    cohere = transformers.CohereConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       initializer_range=INIT, logit_scale=0.25)
    folder = save_tiny(tmp_path / "cohere", cohere, tiny_tokenizer)
    if TL_MAJOR < 4:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            with pytest.raises(PretrainedLoadError, match=r"cohere: TransformerLens's TransformerBridge computes other "
                                                          r"log-probabilities .* \(max \|Δ log-softmax\| (\d\.\d+) over a"):
                load(folder, backend="bridge", device="cpu", dtype=dtype)
    else:
        assert _difference(load(folder, backend="bridge", device="cpu"), load_hf(folder, device="cpu")[0]) < TOLERANCE
    llama = save_tiny(tmp_path / "llama", tiny_config("llama"), tiny_tokenizer)
    hf = load_hf(llama, device="cpu")[0]
    for model in (load(llama, backend="bridge", device="cpu"), load(llama, backend="hooked", device="cpu"),
                  to_hooked(hf, tiny_tokenizer, llama, device="cpu")):
        assert _difference(model, hf) < TOLERANCE
