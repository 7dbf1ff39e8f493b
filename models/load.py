"""Rebuild a trained model from its checkpoint: the model card in the JSON says how."""

from __future__ import annotations

import os
from typing import Any

import torch

from models.bilinear import BilinearModel
from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore_model
from models.transformer import build_model, default_device


def build_from_card(card: dict[str, Any], device: Any = None) -> torch.nn.Module:
    """A fresh model of the architecture a model card describes (weights not loaded), on ``device``
    (default: CUDA when present, else the CPU, for either kind)."""
    kind = card.get("kind")
    if kind == "hooked":
        return build_model(card["name"], card["d_vocab"], card.get("positional", "absolute"), card.get("seed", 0),
                           device, card.get("n_layers"))
    if kind == "bilinear":
        return BilinearModel(card["d_vocab"], card["d_model"], card.get("seed", 0), device or default_device())
    raise CheckpointError(f"model card of kind {kind!r} cannot be rebuilt; expected 'hooked' or 'bilinear'")


def load_trained(path: str | os.PathLike[str], device: Any = None) -> tuple[torch.nn.Module, Checkpoint]:
    """The model saved in a checkpoint (a ``step-N.json`` or its folder: the latest), in eval mode."""
    checkpoint = load_checkpoint(path)
    card = checkpoint.meta.get("model") or {}
    if not card:
        raise CheckpointError(f"{checkpoint.path}: has no model card, so the architecture is unknown")
    model = build_from_card(card, device)
    restore_model(model, checkpoint)
    return model.eval(), checkpoint
