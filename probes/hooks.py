"""Read and edit activations by hook name: thin helpers over TransformerLens hook points.

Works on ``HookedTransformer`` and ``TransformerBridge`` alike: both expose ``hook_dict``
(name → ``HookPoint``), ``run_with_cache(names_filter=...)``, ``run_with_hooks`` and the
``hooks(...)`` context manager, and the bridge also answers to the HookedTransformer names
(``blocks.0.hook_resid_pre``, ``blocks.0.attn.hook_z``, ...).

A *pattern* names hooks in one of two ways:

* a ``str`` is a glob (``fnmatch``, case-sensitive): ``"blocks.*.attn.hook_z"``,
  ``"blocks.0.hook_resid_*"``; a name without wildcards selects that one hook. ``*`` also
  matches dots, so ``"blocks.*.hook_z"`` finds ``blocks.3.attn.hook_z``;
* a compiled ``re.Pattern`` must match the whole name: ``re.compile(r"blocks\\.[01]\\.attn\\.hook_z")``.

A hook function is ``fn(activation, hook) -> replacement or None`` (None keeps the activation,
e.g. after editing it in place).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import operator
import re
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from models.scoring import in_eval_mode

Pattern = str | re.Pattern[str]
HookFn = Callable[..., Tensor | None]

_EXAMPLES_IN_ERROR = 8


def hook_names(model: Any, pattern: Pattern) -> list[str]:
    """Names in ``model.hook_dict`` matched by ``pattern`` (model order); none matched raises.

    The error lists the few valid names closest to the pattern.
    """
    names = list(model.hook_dict)
    if isinstance(pattern, re.Pattern):
        chosen = [n for n in names if pattern.fullmatch(n)]
        shown = pattern.pattern
    elif isinstance(pattern, str):
        chosen = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        shown = pattern
    else:
        raise TypeError(f"a hook pattern is a glob str or a compiled re.Pattern, not {type(pattern).__name__}")
    if not chosen:
        raise ValueError(
            f"no hook of this {type(model).__name__} matches {shown!r}; "
            f"valid names include {_suggestions(names, shown)} ({len(names)} hooks in all, on layers "
            f"0..{model.cfg.n_layers - 1})"
        )
    from models.backend import is_native_bridge

    scores = [name for name in chosen if name.endswith("attn.hook_attn_scores")]
    if scores and is_native_bridge(model):
        raise ValueError(
            f"{scores[0]}: on TransformerLens 4's bridge over a from-scratch model this hook carries the attention "
            "pattern (after the softmax), not the scores it carries on a HookedTransformer, and an edit there is "
            "dropped; read blocks.L.attn.hook_pattern, or the scores from hook_q and hook_k")
    return chosen


def _suggestions(names: Sequence[str], pattern: str) -> list[str]:
    """The valid hook names most similar to ``pattern`` (difflib ratio), best first."""
    return difflib.get_close_matches(pattern, names, n=_EXAMPLES_IN_ERROR, cutoff=0.0)


def _device_tokens(model: Any, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    return tokens.to(model.cfg.device)


@in_eval_mode
@torch.no_grad()
def collect(model: Any, tokens: Int[Tensor, "batch pos"], pattern: Pattern) -> dict[str, Tensor]:
    """Activations of every hook matched by ``pattern`` on one forward pass of ``tokens``.

    Exactly ``run_with_cache(tokens, names_filter=names)``, as a plain dict. A matched hook that
    does not fire (e.g. ``blocks.0.attn.hook_result`` before ``model.set_use_attn_result(True)``)
    raises instead of silently missing from the result.
    """
    names = hook_names(model, pattern)
    _, cache = model.run_with_cache(_device_tokens(model, tokens), names_filter=names)
    silent = [n for n in names if n not in cache]
    if silent:
        raise ValueError(
            f"hook(s) {silent[:_EXAMPLES_IN_ERROR]} exist but did not fire on this forward pass; some need a "
            "switch first (hook_result: model.set_use_attn_result(True); hook_*_input: set_use_split_qkv_input)"
        )
    return {name: cache[name] for name in names}


@contextlib.contextmanager
def editing(model: Any, pattern: Pattern, fn: HookFn) -> Iterator[Any]:
    """Within the block, every forward pass of ``model`` runs ``fn`` at the matched hooks.

    ``with editing(model, "blocks.0.attn.hook_z", fn): answer_table(model, ...)`` scores any
    probe under the edit; the hooks are removed on exit, also after an error. A matched hook that never fired
    while the model ran forward is refused when the block ends (:func:`_refuse_silent`): the numbers made in the
    block were not edited there.
    """
    names = hook_names(model, pattern)
    fired: set[str] = set()
    ran = [False]  # a pass runs at least one block, whether called as model(...) or by run_with_hooks (from any layer)
    counting = [block.register_forward_hook(lambda *_: ran.__setitem__(0, True)) for block in model.blocks]
    try:
        with model.hooks(fwd_hooks=[(name, _noting(fn, name, fired)) for name in names]):
            yield model
    finally:
        for handle in counting:
            handle.remove()
    if ran[0]:
        _refuse_silent(model, names, fired)


@in_eval_mode
@torch.no_grad()
def edit(
    model: Any, tokens: Int[Tensor, "batch pos"], pattern: Pattern, fn: HookFn
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of one forward pass with ``fn`` applied at every hook matched by ``pattern`` (a matched hook that
    does not fire is refused, :func:`_refuse_silent`)."""
    names = hook_names(model, pattern)
    fired: set[str] = set()
    logits = model.run_with_hooks(_device_tokens(model, tokens),
                                  fwd_hooks=[(name, _noting(fn, name, fired)) for name in names])
    _refuse_silent(model, names, fired)
    return logits


def _noting(fn: HookFn, name: str, fired: set[str]) -> HookFn:
    """``fn``, noting in ``fired`` that the hook ``name`` ran."""
    def noted(activation: Tensor, hook: Any) -> Tensor | None:
        fired.add(name)
        return fn(activation, hook)

    return noted


def _refuse_silent(model: Any, names: Sequence[str], fired: set[str]) -> None:
    """Refuse an edit at hooks that exist but did not fire (``hook_result`` before ``set_use_attn_result(True)``;
    ``hook_rot_q``/``hook_rot_k`` on TransformerLens 4's bridge over a token-world model, whose attention applies
    rotary inside): nothing was edited there, and numbers made under the edit would pass for edited ones."""
    silent = [name for name in names if name not in fired]
    if silent:
        raise ValueError(
            f"hook(s) {silent[:_EXAMPLES_IN_ERROR]} of this {type(model).__name__} did not fire, so nothing was edited "
            "there; some need a switch first (hook_result: model.set_use_attn_result(True); hook_*_input: "
            "set_use_split_qkv_input), and some never fire on this model")


def _integer(value: Any, what: str) -> int:
    """``value`` as an int: a Python, NumPy or 0-d tensor integer (``df.layer.unique()``'s too), never a bool."""
    try:
        if not isinstance(value, bool):
            return operator.index(value)
    except TypeError:
        pass
    raise ValueError(f"{what} {value!r} is not an integer")


def check_layer(model: Any, layer: int) -> int:
    """``layer`` (an int) if ``0 ≤ layer < n_layers``, else a ValueError naming the valid range."""
    n_layers = model.cfg.n_layers
    layer = _integer(layer, "layer")
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer!r} is out of range: this model has layers 0..{n_layers - 1}")
    return layer


def check_head(model: Any, layer: int, head: int) -> tuple[int, int]:
    """``(layer, head)`` (ints) if both are in range (query heads, also under grouped-query attention)."""
    layer = check_layer(model, layer)
    n_heads = model.cfg.n_heads
    head = _integer(head, "head")
    if not 0 <= head < n_heads:
        raise ValueError(f"head {head!r} is out of range: layer {layer} has heads 0..{n_heads - 1}")
    return layer, head


def zero_heads(heads: Sequence[int]) -> HookFn:
    """A ``hook_z`` function that zeroes the given heads: z[:, :, h] = 0, so head h adds nothing to
    the residual stream (the output bias b_O stays: it belongs to no head)."""
    index = list(heads)

    def zero(z: Float[Tensor, "batch pos head d_head"], hook: Any) -> Float[Tensor, "batch pos head d_head"]:
        z = z.clone()
        z[:, :, index] = 0.0
        return z

    return zero


def ablate_head(
    model: Any, tokens: Int[Tensor, "batch pos"], layer: int, head: int
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits with head ``(layer, head)`` zero-ablated at its ``hook_z`` (all positions)."""
    check_head(model, layer, head)
    return edit(model, tokens, f"blocks.{layer}.attn.hook_z", zero_heads([head]))


__all__ = [
    "HookFn", "Pattern", "ablate_head", "check_head", "check_layer", "collect", "edit", "editing", "hook_names",
    "zero_heads",
]
