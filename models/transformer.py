"""Transformer configurations by name, for training from scratch on token worlds: a
``HookedTransformer`` under TransformerLens 3.9, the native ``TransformerBridge`` under 4.x, with
the same initial weights for the same seed (``models.backend``).

=============  ======  =======  =====  =====  =========================================
name           layers  d_model  heads  d_mlp  use
=============  ======  =======  =====  =====  =========================================
``tiny``       2       64       4      256    default: smallest multi-layer model that
                                              shows the curse in seconds on a CPU
``one-layer``  1       64       4      —      attention-only, the theory's model (its
                                              OV/QK circuits are Zhu et al.'s Y and Z)
``paper``      24      768      12     3072   the paper's GPT-2-sized model
=============  ======  =======  =====  =====  =========================================

Positional encoding: ``absolute`` (learned, TransformerLens "standard"), ``rotary``, or
``none`` (no positional signal: the learned table is zeroed and frozen, under both lines, so a
model with ``none`` has exactly the parameters of ``absolute`` and loads the same checkpoints
shape-wise).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Literal

import torch

Positional = Literal["absolute", "rotary", "none"]
POSITIONALS: tuple[str, ...] = ("absolute", "rotary", "none")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a from-scratch transformer (the vocabulary comes from the world)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int | None  # None: attention-only
    n_ctx: int = 32


SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(n_layers=2, d_model=64, n_heads=4, d_mlp=256),
    "one-layer": ModelSpec(n_layers=1, d_model=64, n_heads=4, d_mlp=None),
    "paper": ModelSpec(n_layers=24, d_model=768, n_heads=12, d_mlp=3072, n_ctx=64),
}

_DEPRECATION = re.escape("HookedTransformer is deprecated")


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_fields(name: str, d_vocab: int, positional: Positional = "absolute",
                 n_layers: int | None = None) -> dict[str, Any]:
    """The architecture of a named spec over a ``d_vocab``-token vocabulary, as config fields both
    ``HookedTransformerConfig`` (TransformerLens 3.9) and ``TransformerBridgeConfig`` (4.x) take;
    ``n_layers`` replaces the spec's depth (Zhu et al.'s ``--n_layers``), every other size kept."""
    if name not in SPECS:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(SPECS)}")
    if positional not in POSITIONALS:
        raise ValueError(f"unknown positional encoding {positional!r}; choose one of {POSITIONALS}")
    if d_vocab < 2:
        raise ValueError(f"d_vocab must be at least 2, got {d_vocab}")
    if n_layers is not None and n_layers < 1:
        raise ValueError(f"n_layers must be ≥ 1, got {n_layers}")
    spec = SPECS[name] if n_layers is None else replace(SPECS[name], n_layers=n_layers)
    return dict(
        n_layers=spec.n_layers,
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        d_head=spec.d_model // spec.n_heads,
        d_mlp=spec.d_mlp,
        attn_only=spec.d_mlp is None,
        act_fn=None if spec.d_mlp is None else "gelu",
        d_vocab=d_vocab,
        n_ctx=spec.n_ctx,
        normalization_type="LN",
        positional_embedding_type="rotary" if positional == "rotary" else "standard",
        default_prepend_bos=False,
    )


def hooked_config(name: str, d_vocab: int, positional: Positional = "absolute", seed: int = 0, device: Any = None,
                  n_layers: int | None = None):
    """The ``HookedTransformerConfig`` for a named spec (TransformerLens 3.9 only)."""
    from models.backend import HookedTransformerConfig

    if HookedTransformerConfig is None:
        raise RuntimeError("HookedTransformerConfig was removed in TransformerLens 4; use build_model")
    return HookedTransformerConfig(**model_fields(name, d_vocab, positional, n_layers), seed=seed,
                                   device=str(device or default_device()))


@contextlib.contextmanager
def callers_random_state() -> Iterator[None]:
    """torch's (CPU and CUDA), Python's and numpy's global generators as they were before the block: building a
    model from a TransformerLens config seeds all three with the model's seed (``set_seed_everywhere``), which
    would otherwise leave a notebook's later draws fixed by the last model built."""
    import random

    import numpy as np

    python, numpy = random.getstate(), np.random.get_state()
    # CUDA's generators only where CUDA already runs: reading their state would start it (a CPU model never does)
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def build_model(name: str, d_vocab: int, positional: Positional = "absolute", seed: int = 0, device: Any = None,
                n_layers: int | None = None):
    """A freshly initialised model of a named spec: a ``HookedTransformer`` under TransformerLens 3.9, a
    ``TransformerBridge`` over the native model under 4.x (``models.backend``); the same seed gives the same
    weights under both. ``n_layers``: the spec's depth replaced (:func:`model_fields`).

    Positional ``none`` under both: the learned position table (``W_pos``) is zeroed and frozen
    (``requires_grad=False``, so no optimizer ever moves it).
    """
    from models.backend import TL_MAJOR, HookedTransformer, build_native

    with callers_random_state():  # a config's seed reseeds torch, random and numpy everywhere
        if TL_MAJOR >= 4:
            fields = model_fields(name, d_vocab, positional, n_layers)
            model = build_native(fields, seed, torch.device(device or default_device()))
        else:
            cfg = hooked_config(name, d_vocab, positional, seed, device, n_layers)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
                model = HookedTransformer(cfg)
    if positional == "none":
        model.W_pos.data.zero_()
        model.W_pos.requires_grad_(False)
    return model


def freeze_embeddings(model) -> None:
    """Zhu et al.'s ``--freeze_wte_wpe``: the token and (learned) position embeddings keep their
    initial values; the unembedding and every block still train."""
    model.embed.W_E.requires_grad_(False)
    if hasattr(model, "pos_embed"):
        model.pos_embed.W_pos.requires_grad_(False)


def model_card(name: str, d_vocab: int, positional: Positional, seed: int, n_layers: int | None = None
               ) -> dict[str, Any]:
    """What :func:`build_model` needs to rebuild the model: stored in checkpoint metadata
    (``n_layers`` only when it replaces the spec's depth, so older cards read the same)."""
    spec = SPECS[name] if n_layers is None else replace(SPECS[name], n_layers=n_layers)
    card = {"kind": "hooked", "name": name, "d_vocab": d_vocab, "positional": positional, "seed": seed,
            "spec": asdict(spec)}
    if n_layers is not None:
        card["n_layers"] = n_layers
    return card
