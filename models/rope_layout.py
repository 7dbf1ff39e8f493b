"""RoPE whose frequencies depend on the longest position of a pass: refused past the length where they start to.

transformers' ``dynamic`` RoPE (dynamic NTK scaling) recomputes a layer's rotary frequencies from
``L = max(position_ids) + 1`` of each forward once ``L`` passes the model's original context ``C``
(and keeps the grown frequencies for later, shorter passes above ``C``); ``longrope`` switches from
its short to its long factors when ``L > C``. Past ``C`` the log-probability of one answer token then
depends on what else its pass holds: a statement scored alone or beside a longer one, by trie (one
pass for all of its answers, ``L`` = the deepest answer prefix) or teacher-forced (one sequence an
answer), gives different numbers (a tiny random Llama with ``dynamic`` ×4 past its 128 positions:
0.90 nats between trie and teacher forcing). There is no one right number to give, so every forward
that reaches past ``C`` is refused, naming the model, the RoPE type and ``C``. Up to ``C`` both types
use fixed frequencies (``dynamic``: the unscaled ones), and scores do not depend on the pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_GUARDED = "_revlens_rope_layout_limit"


class PassDependentRopeError(ValueError):
    """A forward pass reaches past the positions where a model's RoPE stops depending on the pass alone."""


def layout_free_positions(rotary: nn.Module) -> int | None:
    """How many positions (``C``) a pass of this rotary module may hold before its frequencies depend on the
    pass: ``dynamic``'s ``max_position_embeddings`` (its frequencies grow past it), ``longrope``'s
    ``original_max_position_embeddings`` (its long factors start past it); the least over a model's layer
    types. None for a module that is not such a rotary embedding (or any other module)."""
    rope_type, config = getattr(rotary, "rope_type", None), getattr(rotary, "config", None)
    if config is None or not isinstance(rope_type, (str, dict)):
        return None
    parameters = getattr(config, "rope_parameters", None) or {}
    per_layer = rope_type if isinstance(rope_type, dict) else {None: rope_type}
    limits = []
    for layer_type, kind in per_layer.items():
        if kind == "dynamic":
            limits.append(int(getattr(rotary, "original_max_seq_len", config.max_position_embeddings)))
        elif kind == "longrope":
            entry = parameters.get(layer_type, {}) if layer_type is not None else parameters
            limits.append(int(entry.get("original_max_position_embeddings") or config.max_position_embeddings))
    return min(limits) if limits else None


def refuse_pass_dependent_rope(model: nn.Module, name: str) -> nn.Module:
    """Make every rotary embedding of ``model`` whose frequencies depend on the pass (``dynamic``,
    ``longrope``) refuse a forward with a position at or past its limit ``C``
    (:func:`layout_free_positions`), with :class:`PassDependentRopeError`; other models are untouched.
    Idempotent; the guard is a forward pre-hook, so it survives ``copy.deepcopy`` and wrapping (a
    TransformerBridge calls the same module). Returns ``model``."""
    for module in model.modules():
        limit = layout_free_positions(module)
        if limit is None or getattr(module, _GUARDED, None) is not None:
            continue
        setattr(module, _GUARDED, limit)
        module.register_forward_pre_hook(_Guard(name, limit, module.rope_type), with_kwargs=True)
    return model


class _Guard:
    """The pre-hook: a plain object (not a closure over the module), so deep copies of a model copy it."""

    def __init__(self, name: str, limit: int, rope_type: Any):
        self.name, self.limit = name, limit
        self.rope_type = rope_type if isinstance(rope_type, str) else sorted(set(rope_type.values()))

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        positions = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        if isinstance(positions, torch.Tensor) and positions.numel() and int(positions.max()) >= self.limit:
            raise PassDependentRopeError(
                f"{self.name}: its RoPE ({self.rope_type}) recomputes its frequencies from the longest position "
                f"of each pass past its first {self.limit} positions, so a score there depends on what else the "
                f"pass holds (one statement alone or beside a longer one, by trie or teacher-forced); this pass "
                f"reaches position {int(positions.max())}: keep prompt and answer within {self.limit} tokens")
