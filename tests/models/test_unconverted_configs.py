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

import pytest
import torch
import transformers
from tiny_models import save_tiny, tiny_config

from models import pretrained
from models.backend import TL_MAJOR
from facts.tokens import Example
from models.pretrained import PretrainedLoadError, load, load_hf, to_hooked
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


def _ids(n: int) -> torch.Tensor:
    return torch.randint(3, 1000, (1, n), generator=torch.Generator().manual_seed(0))


IDS = _ids(40)  # past llama3's original 16 positions, yarn's 32 and Gemma 3's 4-token window


def _config(kind: str, **overrides) -> transformers.PretrainedConfig:
    config = tiny_config(kind)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


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
}


@pytest.mark.parametrize("case", REFUSED)
def test_hooked_refuses_what_its_converter_drops_and_the_bridge_computes_it(case, smollm2_tokenizer, tmp_path,
                                                                            monkeypatch):
    """3.9: ``load(backend="hooked")`` refuses the folder before reading a weight, ``to_hooked`` the model before
    converting one, and :func:`check_hooked_convertible` from its files alone, each naming the model, the field, its
    value and the bridge; the bridge's log-probabilities equal transformers' (so the advice is right). 4.x: "hooked"
    is the bridge, and matches."""
    kind, overrides, field = REFUSED[case]
    folder = tmp_path / case
    hf = _build(folder, kind, smollm2_tokenizer, **overrides)
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
        to_hooked(hf, smollm2_tokenizer, folder, device="cpu")
    with pytest.raises(PretrainedLoadError, match=message):
        pretrained.check_hooked_convertible(folder)


def test_llama3_rope_scaling_converts_exactly(smollm2_tokenizer, tmp_path):
    """Llama's llama3 RoPE scaling is carried (NTK-by-parts): hooked = transformers within 1e-4 past its original
    16 positions, where the same weights with plain RoPE differ by nats."""
    folder = tmp_path / "llama-llama3"
    hf = _build(folder, "llama", smollm2_tokenizer, rope_parameters=LLAMA3)
    hooked = load(folder, backend="hooked", device="cpu")
    assert _difference(hooked, hf) < TOLERANCE
    assert _difference(to_hooked(hf, smollm2_tokenizer, folder, device="cpu"), hf) < TOLERANCE
    plain = transformers.AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="eager").eval()
    plain.load_state_dict(hf.state_dict())
    assert _difference(plain, hf) > 0.1


def test_qwen2_query_key_value_biases_convert_exactly(smollm2_tokenizer, tmp_path):
    """Qwen2's q/k/v biases (fixed by the architecture, not switched by its config) are carried: with random
    biases, hooked = transformers within 1e-4, where the same weights without them differ by nats."""
    folder = tmp_path / "qwen2-biases"
    hf = _build(folder, "qwen2", smollm2_tokenizer)
    assert {name.rsplit(".", 2)[-2] for name, _ in hf.named_parameters() if name.endswith(".bias")} \
        == {"q_proj", "k_proj", "v_proj"}
    for model in (load(folder, backend="hooked", device="cpu"), to_hooked(hf, smollm2_tokenizer, folder, device="cpu")):
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
]


@pytest.mark.parametrize(("kind", "overrides", "gap"), RULE)
def test_the_rule_names_what_the_converter_does_not_carry(kind, overrides, gap):
    """:func:`hooked_conversion_gaps` on configs alone (no model): empty where the converter carries the config,
    else the field and its value; :func:`check_hooked_config` refuses exactly those under 3.9."""
    config = _config(kind, **overrides)
    gaps = pretrained.hooked_conversion_gaps(config)
    assert gaps == [] if gap is None else any(g.startswith(gap) for g in gaps), gaps
    if gap is None or TL_MAJOR >= 4:
        pretrained.check_hooked_config("tiny", config)
    else:
        with pytest.raises(PretrainedLoadError, match="tiny: its config sets .*backend='bridge'"):
            pretrained.check_hooked_config("tiny", config)


@pytest.mark.parametrize(("rope", "limit"), [(DYNAMIC, 128), (LONGROPE, 32)], ids=["dynamic", "longrope"])
def test_rope_that_depends_on_the_pass_is_refused_past_its_first_positions(rope, limit, smollm2_tokenizer, tmp_path):
    """``dynamic`` RoPE (frequencies grown from the pass's longest position past the 128-position context) and
    ``longrope`` (long factors past its original 32): transformers' own model gives one token another log-probability
    in a longer pass of the same prefix (what scoring by trie against teacher forcing meets). Every model the toolkit
    reads (transformers' and the bridge) runs a pass within the first ``limit`` positions as transformers does and
    refuses one past them, naming the RoPE and the limit, by trie as well as in a plain forward."""
    folder = tmp_path / rope["rope_type"]
    save_tiny(folder, _config("llama", rope_parameters=rope), smollm2_tokenizer)
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
