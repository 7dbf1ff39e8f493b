"""The one place that knows which TransformerLens line is installed (3.9 or 4.x) and what differs.

Everything above ``models/`` imports TransformerLens names from here (``FactoredMatrix``,
``ActivationCache``, ``patching``, ``get_act_name``, the model types) and never asks for the
version. What differs between the lines, and how each is met:

==========================  ==================================  =========================================
what                        TransformerLens 3.9                 TransformerLens 4.x
==========================  ==================================  =========================================
a named from-scratch model  ``HookedTransformer(cfg)``          ``TransformerBridge.boot_native(cfg)`` in
                                                                compatibility mode without weight
                                                                processing (HookedTransformer hook names
                                                                and semantics, weights as trained)
its initial weights         TransformerLens's GPT-2 init:       the same numbers: :func:`hooked_init_state`
                            N(0, 0.8²/d_model) for every        replays 3.9's draws (same seed, same order)
                            ``W_*``, biases 0, norms 1          and they are loaded into the bridge
unembedding bias ``b_U``    a trained parameter                 a trained parameter (the native bridge's
                                                                fixed zero buffer is made one)
rotary positions            pairs (i, i + d/2) rotate together  pairs (2i, 2i+1): the query/key dimensions
                            (GPT-NeoX)                          are permuted on the way in and out
                                                                (q·k, hence QK and every score, unchanged)
checkpoints                 the HookedTransformer state dict    the same keys and shapes (converted on save
                                                                and load), so either line reads the other's
==========================  ==================================  =========================================

Pretrained models (``models.pretrained``): 3.9 converts them to ``HookedTransformer`` or wraps
them in a ``TransformerBridge``; 4.x only wraps (``backend="hooked"`` gives the bridge in compatibility
mode, HookedTransformer's hook names and semantics).
"""

from __future__ import annotations

import math
from importlib.metadata import version
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from transformer_lens import ActivationCache, FactoredMatrix, patching
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.utilities import get_act_name
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

TL_VERSION: str = version("transformer-lens")
TL_MAJOR: int = int(TL_VERSION.split(".")[0])

if TL_MAJOR < 4:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained  # HookedTransformer's config and weight converters
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES
    TL_MODEL_TYPES: tuple[type, ...] = (HookedTransformer, TransformerBridge)
else:  # removed in 4.0; nothing is ever an instance of it
    HookedTransformer = HookedTransformerConfig = loading_from_pretrained = None
    OFFICIAL_MODEL_NAMES: list[str] = []
    TL_MODEL_TYPES = (TransformerBridge,)

HOOKED_HINT: str = (
    "load it with backend='hooked' (a HookedTransformer)" if TL_MAJOR < 4 else
    "TransformerLens 4 has no HookedTransformer: install transformer-lens 3.9 "
    "(pip install 'transformer-lens>=3.9,<4') and load it with backend='hooked'")
"""How a refusal that only a ``HookedTransformer`` avoids names the way out, under the installed line."""

TLModel = Any
"""A ``HookedTransformer`` (3.9) or a ``TransformerBridge`` (either line): what the probes take."""

__all__ = [
    "ActivationCache", "FactoredMatrix", "HOOKED_HINT", "apply_softcap", "HookedTransformer", "HookedTransformerConfig",
    "OFFICIAL_MODEL_NAMES", "POST_NORM_ARCHITECTURES", "loading_from_pretrained",
    "TL_MAJOR", "TL_MODEL_TYPES", "TL_VERSION", "TLModel", "TransformerBridge", "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry", "architecture_of", "build_native", "copy_model", "get_act_name",
    "final_norm_centres", "has_kv_cache", "hooked_init_state", "hooked_state_dict", "hooks_attached", "is_hooked", "is_native_bridge", "is_tl_model", "load_hooked_state_dict", "patching",
    "runs_from_layer",
]


def is_tl_model(model: object) -> bool:
    """Whether ``model`` is a TransformerLens model (``HookedTransformer`` or ``TransformerBridge``)."""
    return isinstance(model, TL_MODEL_TYPES)


def architecture_of(model: object) -> str:
    """The Hugging Face architecture a TransformerLens model was built from ("Gemma3ForCausalLM"; "" if
    unknown): ``cfg.original_architecture`` on a ``HookedTransformer``, ``cfg.architecture`` on a bridge."""
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None) or "")


def embedding_scale(model: object) -> float:
    """The factor a model's embedding multiplies W_E rows by in its forward pass (what ``hook_embed`` outputs is
    that times the row): Gemma's √d_model, ``embed_scale`` of the Hugging Face embedding a bridge wraps (TransformerLens
    4's compatibility mode too); 1 for a HookedTransformer, which has it in W_E, and any other model."""
    scale = getattr(getattr(getattr(model, "embed", None), "original_component", None), "embed_scale", None)
    return float(scale) if scale is not None else 1.0


def is_hooked(model: object) -> bool:
    """Whether ``model`` is a ``HookedTransformer`` (never under TransformerLens 4, which removed it)."""
    return HookedTransformer is not None and isinstance(model, HookedTransformer)


def hooks_attached(model: TLModel) -> bool:
    """Whether a hook is attached to any of the model's hook points (a layout other than the statements' own,
    a trie's or a prefix cache's, would move the positions it sees)."""
    return any(point._forward_hooks or point._forward_pre_hooks for point in model.hook_dict.values())


def wrapper_name(model: object) -> str:
    """What a loaded model runs as, for summaries: "hooked" (a ``HookedTransformer``), "bridge (compatibility
    mode)" (a bridge under HookedTransformer's hook names: what ``backend="hooked"`` gives under TransformerLens 4,
    and any bridge loaded with ``process_weights=True``, on either line) or "bridge". The backend asked for is
    the command's own option, which the run's manifest records."""
    if is_hooked(model):
        return "hooked"
    return "bridge (compatibility mode)" if getattr(model, "compatibility_mode", False) else "bridge"


def is_native_bridge(model: object) -> bool:
    """Whether ``model`` is a bridge over TransformerLens 4's own from-scratch model (``boot_native``)."""
    return isinstance(model, TransformerBridge) and type(model.adapter).__name__ == "NativeArchitectureAdapter"


def norm_scale(model: object, norm: object) -> Tensor | None:
    """The scale s a LayerNorm/RMSNorm ``norm`` of ``model`` multiplies its normalised input by, from its stored
    weight w (None where it has none: folded into the next weights).

    A ``HookedTransformer`` stores s itself (TransformerLens's converter adds Gemma's 1). A ``TransformerBridge``
    runs the Hugging Face module, which stores either s (Llama, GPT-2, Gemma 4, ...) or its offset from 1,
    s = 1 + w (Gemma 1/2/3, VaultGemma, Nemotron's LayerNorm1P): which of the two, is measured on the module
    (:func:`_scales_by_one_plus_w`), not taken from TransformerLens's marks (3.9's bridge sets
    ``rmsnorm_uses_offset`` in some architectures' configs only, and in its Gemma 3n adapter, whose transformers
    module scales by w). A module that scales by neither is refused."""
    weight = next((value for value in (getattr(norm, name, None) for name in ("w", "weight"))
                   if isinstance(value, Tensor)), None)
    if weight is None:
        return None
    module = getattr(norm, "original_component", None)
    if is_hooked(model) or not isinstance(module, torch.nn.Module):
        return weight
    return 1 + weight if _scales_by_one_plus_w(model, module, weight) else weight


@torch.no_grad()
def _scales_by_one_plus_w(model: object, module: torch.nn.Module, weight: Tensor) -> bool:
    """Whether the norm ``module`` multiplies its normalised input by 1 + w rather than by w (its stored ``weight``).

    Measured on x and −x, x a vector of ±1 (and one −2 where the width d is odd) with mean 0 and mean square m:
    a LayerNorm or RMSNorm of it is s ⊙ x/√(m + ε) + b, so r = (norm(x) − norm(−x)) ⊙ √m / (2x) = s·√(m/(m + ε)),
    s to within ε/2m. The two readings of s differ by 1 in every coordinate; the one r matches to 1% is taken,
    and a module r matches neither (not a norm over the last dimension, or one scaling by something else) is
    refused."""
    d = weight.shape[-1]
    if weight.dim() != 1 or d < 2:
        name = getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)
        raise ValueError(f"{name}: its norm {type(module).__name__} holds a weight of shape {tuple(weight.shape)}, "
                         "not one scale for each of two or more dimensions of its input, so no scale of it is read")
    x = _zero_mean_signs(d)
    signed = x.to(weight.dtype).to(weight.device).view(1, 1, d)
    w = weight.detach().double().reshape(-1).cpu()
    try:
        measured = (module(signed) - module(-signed)).double().reshape(-1, d)[0].cpu()
    except (RuntimeError, TypeError, ValueError):  # not a module of one tensor, or not over the last dimension
        measured = torch.full_like(w, float("nan"))
    r = measured * x.pow(2).mean().sqrt() / (2 * x)
    fits = {offset: bool(((r - (w + offset)).abs() <= 1e-2 * (1 + (w + offset).abs())).all()) for offset in (0, 1)}
    if fits[0] == fits[1]:
        name = getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)
        raise ValueError(f"{name}: its norm {type(module).__name__} scales its normalised input by neither its "
                         "weight w nor 1 + w, so no scale of it can be read from its weights")
    return fits[1]


def _zero_mean_signs(d: int) -> Float[Tensor, " d"]:
    """d ≥ 2 numbers ±1 (and one −2 where d is odd) with mean 0: a probe of a norm over d dimensions."""
    x = torch.ones(d, dtype=torch.float64)
    x[1::2] = -1.0
    if d % 2:
        x[-3:] = torch.tensor([1.0, 1.0, -2.0])  # the alternating signs end +1: these three sum to 0 instead
    return x


@torch.no_grad()
def norm_centres(norm: object) -> bool | None:
    """Whether the Hugging Face module a bridge's norm runs subtracts the mean of its input (a LayerNorm) or not (an
    RMSNorm), measured: it centres when it maps x + 1 to what it maps x to (x: :func:`_zero_mean_signs`); None for a
    norm that runs no such module (a ``HookedTransformer``'s, whose ``normalization_type`` says) or fails on the
    probe."""
    module = getattr(norm, "original_component", None)
    if not isinstance(module, torch.nn.Module):
        return None
    weight = next((p for p in module.parameters()), None)
    d = getattr(getattr(norm, "cfg", None), "d_model", None) if weight is None else weight.shape[-1]
    if not isinstance(d, int) or d < 2:
        return None
    x = _zero_mean_signs(d).view(1, 1, d)
    if weight is not None:
        x = x.to(weight.dtype).to(weight.device)
    try:
        plain, shifted = module(x).double(), module(x + 1).double()
    except (RuntimeError, TypeError, ValueError):
        return None
    return bool(((plain - shifted).abs() <= 1e-3 * (1 + plain.abs())).all())


def bridge_starts_at_layer() -> bool:
    """Whether this TransformerLens line's ``TransformerBridge`` runs its blocks from a layer (``start_at_layer``), as
    causal tracing's restored runs need: 4.x's does, 3.9's does not. For a refusal made before a model is loaded
    (:func:`runs_from_layer` asks a model in hand)."""
    return TL_MAJOR >= 4


def runs_from_layer(model: object) -> bool:
    """Whether ``model.run_with_hooks(resid, start_at_layer=l, ...)`` runs its blocks from layer ``l``
    with HookedTransformer's hook names, as causal tracing reads them: a ``HookedTransformer``, or any
    TransformerLens 4 bridge, in compatibility mode or not (outside it, ``hook_dict``, ``run_with_hooks`` and
    ``run_with_cache(names_filter=[...])`` still answer to HookedTransformer's names, the cache keyed by the
    name asked for). 3.9's bridge has no ``start_at_layer``."""
    if is_hooked(model):
        return True
    return bridge_starts_at_layer() and isinstance(model, TransformerBridge)


def copy_model(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` that runs on its own, also after ``model`` is freed.

    TransformerLens 4's bridge blocks install forward hooks whose closures hold weak proxies to the
    block (and its attention); ``copy.deepcopy`` keeps those closures, so the copy's hooks would act
    on the original and fail once it is gone. They are removed from the copy, which installs its
    own at its next forward. Any other model: ``copy.deepcopy``.

    A module may keep a tensor of its last pass as a plain attribute (a bridge's GPT-2 attention keeps its
    pattern): after a pass with gradients it is part of that pass's graph, which ``copy.deepcopy`` refuses
    ("only graph leaves"), and it holds the graph in memory. Such tensors are detached first (the same values).
    """
    import copy

    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(module, name, value.detach())
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "_teardown_capture_hooks"):
            module._teardown_capture_hooks()
    return twin


# --- from-scratch models ---------------------------------------------------------------------------


def hooked_init_state(cfg: dict[str, Any], seed: int) -> dict[str, Tensor]:
    """The parameters ``HookedTransformer(cfg)`` starts from under TransformerLens 3.9, without it.

    TransformerLens's GPT-2 init seeds the global generator with ``seed`` and draws
    N(0, initializer_range²) for every parameter whose name holds ``W_``, in the order of
    ``named_parameters()``: W_E, W_pos (absent with rotary), per block W_Q, W_O, W_K, W_V,
    W_in, W_out, then W_U; initializer_range = 0.8/√d_model. Norm weights are 1, biases 0.
    Drawn here from a private generator seeded alike (the same stream, without touching the
    global one). ``cfg``: the fields of ``models.transformer.model_fields``. Keys and shapes
    are HookedTransformer's state dict without its buffers.
    """
    d_model, d_head, heads, d_vocab = cfg["d_model"], cfg["d_head"], cfg["n_heads"], cfg["d_vocab"]
    generator = torch.Generator().manual_seed(seed)
    std = 0.8 / math.sqrt(d_model)

    def drawn(*shape: int) -> Tensor:
        return torch.empty(shape).normal_(0.0, std, generator=generator)

    state = {"embed.W_E": drawn(d_vocab, d_model)}
    if cfg["positional_embedding_type"] == "standard":
        state["pos_embed.W_pos"] = drawn(cfg["n_ctx"], d_model)
    for layer in range(cfg["n_layers"]):
        block = f"blocks.{layer}"
        state[f"{block}.ln1.w"], state[f"{block}.ln1.b"] = torch.ones(d_model), torch.zeros(d_model)
        if not cfg["attn_only"]:
            state[f"{block}.ln2.w"], state[f"{block}.ln2.b"] = torch.ones(d_model), torch.zeros(d_model)
        state[f"{block}.attn.W_Q"] = drawn(heads, d_model, d_head)
        state[f"{block}.attn.W_O"] = drawn(heads, d_head, d_model)
        state[f"{block}.attn.W_K"] = drawn(heads, d_model, d_head)
        state[f"{block}.attn.W_V"] = drawn(heads, d_model, d_head)
        for bias in ("b_Q", "b_K", "b_V"):
            state[f"{block}.attn.{bias}"] = torch.zeros(heads, d_head)
        state[f"{block}.attn.b_O"] = torch.zeros(d_model)
        if not cfg["attn_only"]:
            state[f"{block}.mlp.W_in"] = drawn(d_model, cfg["d_mlp"])
            state[f"{block}.mlp.W_out"] = drawn(cfg["d_mlp"], d_model)
            state[f"{block}.mlp.b_in"], state[f"{block}.mlp.b_out"] = torch.zeros(cfg["d_mlp"]), torch.zeros(d_model)
    state["ln_final.w"], state["ln_final.b"] = torch.ones(d_model), torch.zeros(d_model)
    state["unembed.W_U"] = drawn(d_model, d_vocab)
    state["unembed.b_U"] = torch.zeros(d_vocab)
    return state


def build_native(cfg: dict[str, Any], seed: int, device: Any) -> TransformerBridge:
    """TransformerLens 4: the bridge over its native model, started from :func:`hooked_init_state`.

    Compatibility mode without processing gives HookedTransformer's hook names and hook
    semantics (TransformerLens issue #1317) and keeps the weights as trained. The unembedding
    bias, a fixed zero buffer in the native model, becomes a parameter as in HookedTransformer.
    """
    from transformer_lens import TransformerBridgeConfig

    bridge_cfg = TransformerBridgeConfig(**cfg, seed=seed, init_weights=False, device=str(device))
    bridge = TransformerBridge.boot_native(bridge_cfg, device=device)
    head = bridge.unembed.original_component
    if "bias" in head._buffers:
        bias = head._buffers.pop("bias")
        head.bias = torch.nn.Parameter(bias.clone())
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    load_hooked_state_dict(bridge, hooked_init_state(cfg, seed))
    return bridge


# --- one checkpoint format for both lines ----------------------------------------------------------

_BUFFERS = (".attn.mask", ".attn.IGNORE", ".attn.rotary_sin", ".attn.rotary_cos")
_LINEAR = {"W_in": "in.", "W_out": "out.", "W_U": ""}  # HookedTransformer name -> bridge key infix
_LINEAR_BIAS = {"b_in": "in.", "b_out": "out.", "b_U": ""}


def _rotary_order(d_head: int) -> Tensor:
    """Query/key dimension order from GPT-NeoX pairs (i, i+d/2) to adjacent pairs (2i, 2i+1)."""
    half = d_head // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()


def hooked_to_bridge(state: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """A HookedTransformer state dict (3.9 keys and shapes) as the native bridge's state dict.

    Per-head weights [head, d_model, d_head] become ``nn.Linear`` weights [(head d_head), d_model];
    with rotary positions the query and key dimensions are reordered by :func:`_rotary_order`.
    Constant buffers (causal mask, rotary tables) are dropped: the bridge makes its own.
    """
    rotary = cfg.positional_embedding_type == "rotary"
    order = _rotary_order(cfg.d_head)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(_BUFFERS):
            continue
        stem, name = key.rsplit(".", 1)
        if name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
            if rotary and name[-1] in "QK":
                value = value[..., order]
            pattern = "h m d -> (h d) m" if name.startswith("W") else "h d -> (h d)"
            out[f"{stem}.{name[-1].lower()}.{'weight' if name.startswith('W') else 'bias'}"] = \
                einops.rearrange(value, pattern).contiguous()
        elif name == "W_O":
            out[f"{stem}.o.weight"] = einops.rearrange(value, "h d m -> m (h d)").contiguous()
        elif name == "b_O":
            out[f"{stem}.o.bias"] = value
        elif name in _LINEAR:  # HookedTransformer [d_in, d_out], nn.Linear [d_out, d_in]
            out[f"{stem}.{_LINEAR[name]}weight"] = value.T.contiguous()
        elif name in _LINEAR_BIAS:
            out[f"{stem}.{_LINEAR_BIAS[name]}bias"] = value
        elif name in ("W_E", "W_pos", "w"):
            out[f"{stem}.weight"] = value
        elif name == "b":
            out[f"{stem}.bias"] = value
        else:
            raise KeyError(f"{key!r} is not a HookedTransformer parameter this toolkit builds")
    return out


def bridge_to_hooked(state: dict[str, Tensor], cfg: Any) -> dict[str, Tensor]:
    """The inverse of :func:`hooked_to_bridge` (HookedTransformer keys and shapes, no buffers)."""
    rotary = cfg.positional_embedding_type == "rotary"
    inverse = torch.argsort(_rotary_order(cfg.d_head))
    heads, d_head = cfg.n_heads, cfg.d_head
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-2] in ("q", "k", "v") and parts[-3] == "attn":
            stem, which = ".".join(parts[:-2]), parts[-2].upper()
            if parts[-1] == "weight":
                value, name = einops.rearrange(value, "(h d) m -> h m d", h=heads, d=d_head), f"W_{which}"
            else:
                value, name = einops.rearrange(value, "(h d) -> h d", h=heads, d=d_head), f"b_{which}"
            if rotary and which in "QK":
                value = value[..., inverse]
            out[f"{stem}.{name}"] = value.contiguous()
        elif parts[-2] == "o" and parts[-3] == "attn":
            stem = ".".join(parts[:-2])
            out[f"{stem}.W_O" if parts[-1] == "weight" else f"{stem}.b_O"] = (
                einops.rearrange(value, "m (h d) -> h d m", h=heads, d=d_head).contiguous()
                if parts[-1] == "weight" else value)
        elif parts[-2] in ("in", "out") and parts[-3] == "mlp":
            stem, name = ".".join(parts[:-2]), parts[-2]
            out[f"{stem}.{'W' if parts[-1] == 'weight' else 'b'}_{name}"] = (
                value.T.contiguous() if parts[-1] == "weight" else value)
        elif parts[0] == "unembed":
            out["unembed.W_U" if parts[-1] == "weight" else "unembed.b_U"] = (
                value.T.contiguous() if parts[-1] == "weight" else value)
        elif parts[0] in ("embed", "pos_embed"):
            out[f"{parts[0]}.{'W_E' if parts[0] == 'embed' else 'W_pos'}"] = value
        else:  # layer norms
            out[f"{'.'.join(parts[:-1])}.{'w' if parts[-1] == 'weight' else 'b'}"] = value
    return out


def hooked_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The state dict a checkpoint stores: HookedTransformer's keys and shapes for a native bridge (without
    constant buffers), else the model's own state dict."""
    if is_native_bridge(model):
        return bridge_to_hooked(model.state_dict(), model.cfg)
    return model.state_dict()


def load_hooked_state_dict(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Load a state dict read from a checkpoint (see :func:`hooked_state_dict`) into ``model``."""
    if is_native_bridge(model):
        model.load_state_dict(hooked_to_bridge(state, model.cfg), strict=True)
    else:
        model.load_state_dict(state)


def final_norm_centres(model: object) -> bool:
    """Whether the norm before the unembedding subtracts the mean of the residual stream: a LayerNorm
    (``normalization_type`` "LN" / "LNPre"), unless ``cfg.final_rms`` makes the final one an RMSNorm
    under LayerNorm blocks (TransformerLens builds ``ln_final`` so). TransformerLens's own
    ``ActivationCache.apply_ln_to_stack`` centres by ``normalization_type`` alone."""
    cfg = getattr(model, "cfg", None)
    return (str(getattr(cfg, "normalization_type", "")) in ("LN", "LNPre")
            and not getattr(cfg, "final_rms", False))


def has_kv_cache(model: object) -> bool:
    """Whether ``model`` can continue prompts from a key/value cache (``probes.shared_prompt``): a
    ``HookedTransformer`` or a bridge over a Hugging Face model; not TransformerLens 4's native model."""
    return is_tl_model(model) and not is_native_bridge(model)
