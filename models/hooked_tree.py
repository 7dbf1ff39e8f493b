"""A HookedTransformer (TransformerLens 3.9) run on a layout of its own: given position ids and a given
attention mask, which its forward does not take (its positions are 0, 1, … or a 2D mask's running count,
and its mask is causal).

For a batch of rows, row r of w tokens with positions p_r (p_ri ≤ i) and a boolean mask M_r (M_r ⊆ causal, every
token sees itself), each layer computes ``softmax(q_i·k_j / √d + (0 if M_r,ij else −∞))`` with
``q_i = R(p_ri) W_Q x_i`` and ``k_j = R(p_rj) W_K x_j``, R the model's rotary rotation, or adds ``W_pos[p_ri]`` to
the embedding (absolute positions): what teacher forcing computes at token i for the sequence of the tokens i sees,
at the positions they have there. Three things make the model's own forward do that, for the duration of one pass:

- each attention layer's rotary tables (``rotary_cos``, ``rotary_sin``: row t is the rotation of position t, per
  layer, so Gemma 3's local and global bases both hold) are replaced by their rows p_1, …, p_b stacked (row r's
  token i at r·w + i), and the 2D attention mask handed to the forward is all ones but for each row's first entry,
  1 + r·w: the forward reads a token's rotation at its row's running count of that mask, less one, which is then
  r·w + i (TransformerLens's ``get_offset_position_ids``; the mask's other use, padding, sees only that every entry
  is nonzero);
- absolute positions go through ``hook_pos_embed`` (``W_pos[p_r]``), with an all-ones mask;
- a hook on each layer's ``hook_attn_scores`` (after the causal and sliding-window mask) sets the scores outside M_r
  to −∞.

Everything else (norms, soft-caps, grouped-query heads, post-norms, parallel blocks) is the model's own forward. A
row wider than a sliding window, or than the model's rotary table or context, is not run
(:func:`hooked_tree_width`): a window counts sequence indices, not positions. (TransformerLens 3.9 builds its causal
mask at each forward's width, so only the position tables tie a row to the context; rows past it, tried in session
59, computed fewer positions in no less time: ``benchmarks/README.md``.)
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.backend import is_hooked

HOOKED_TREE_ARCHITECTURES = frozenset({
    "GPT2LMHeadModel", "GPTNeoXForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM",
    "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"})
"""``cfg.original_architecture``s of the HookedTransformer conversions this is checked on against teacher
forcing (a tiny model of each, SmolLM2 and Gemma 3 270M: tests/probes/test_shared_prompt.py). TransformerLens
3.9 converts no OLMo 2, so none is listed. A model built from a config (``original_architecture`` None: a
token-world model) runs too, with either positional kind (:func:`scores_by_tree` of :mod:`probes.shared_prompt`)."""


def hooked_tree_width(model: object) -> int:
    """The widest layout :func:`hooked_tree_residual` runs ``model`` on (0: none): a HookedTransformer
    converted from one of :data:`HOOKED_TREE_ARCHITECTURES` or built from a config, causal, with rotary or
    absolute positions (no position-dependent rescaling), on layouts inside its context, every local layer's
    sliding window (a window counts sequence indices, not positions) and every rotary table."""
    if not is_hooked(model):
        return 0
    cfg = model.cfg
    if ((cfg.original_architecture is not None and cfg.original_architecture not in HOOKED_TREE_ARCHITECTURES)
            or cfg.attention_dir != "causal"
            or cfg.positional_embedding_type not in ("rotary", "standard")
            or getattr(cfg, "use_dynamic_ntk_rope", False) or getattr(cfg, "use_logn_attn", False)):
        return 0
    widths = [cfg.n_ctx]
    for block in model.blocks:
        if block.attn.attn_type == "local":
            widths.append(cfg.window_size)
        if cfg.positional_embedding_type == "rotary":
            widths.append(block.attn.rotary_cos.shape[0])
    return min(widths)


def runs_hooked_tree(model: object, width: int) -> bool:
    """Whether :func:`hooked_tree_residual` runs ``model`` on a layout of ``width`` positions
    (:func:`hooked_tree_width`)."""
    return 0 < width <= hooked_tree_width(model)


@contextmanager
def _rotary_rows(model: torch.nn.Module, positions: Int[Tensor, "b w"]) -> Iterator[None]:
    """Each attention layer's rotary tables replaced, for the block's duration, by their rows ``positions``
    stacked row after row (row r's token i at r·w + i: :func:`_running_count` points it there); layers whose
    rows are equal share one copy."""
    flat = positions.flatten()
    saved = [(block.attn, block.attn.rotary_cos, block.attn.rotary_sin) for block in model.blocks]
    distinct: list[tuple[Tensor, Tensor]] = []
    try:
        for attn, cos, sin in saved:
            rows = (cos[flat.to(cos.device)], sin[flat.to(sin.device)])
            same = next((d for d in distinct if d[0].device == rows[0].device
                         and torch.equal(d[0], rows[0]) and torch.equal(d[1], rows[1])), None)
            if same is None:
                distinct.append(same := rows)
            attn.rotary_cos, attn.rotary_sin = same
        yield
    finally:
        for attn, cos, sin in saved:
            attn.rotary_cos, attn.rotary_sin = cos, sin


def _running_count(rows: int, width: int) -> Int[Tensor, "b w"]:
    """A 2D attention mask (every token attended: all entries ≥ 1) whose running count, less one, is r·w + i at row
    r's token i: where a rotary layer reads its table (``get_offset_position_ids``), and so where
    :func:`_rotary_rows` put that token's rotation."""
    count = torch.ones(rows, width, dtype=torch.long)
    count[:, 0] += torch.arange(rows) * width
    return count


@torch.no_grad()
def hooked_tree_residual(
    model: torch.nn.Module,
    tokens: Int[Tensor, "b w"],
    positions: Int[Tensor, "b w"],
    allowed: Bool[Tensor, "b w w"],
) -> Float[Tensor, "b w d_model"]:
    """The residual stream after the last block (before ``ln_final``) at every token of every row, for the layout
    of the module docstring; read it out with :func:`models.scoring.hooked_readout`. ``model`` must pass
    :func:`runs_hooked_tree` for the rows' width."""
    rows, width = tokens.shape
    if not runs_hooked_tree(model, width):
        raise ValueError(f"this model does not run a layout of {width} positions by trie (runs_hooked_tree)")
    device = model.cfg.device or tokens.device
    outside = ~allowed[:, None].to(device)

    def mask(scores: Float[Tensor, "b head w w"], hook) -> Float[Tensor, "b head w w"]:
        return scores.masked_fill_(outside.to(scores.device), float("-inf"))  # the causal mask's own new tensor

    hooks = [(lambda name: name.endswith("attn.hook_attn_scores"), mask)]
    if model.cfg.positional_embedding_type == "standard":
        hooks.append(("hook_pos_embed", lambda embed, hook: model.W_pos[positions.to(model.W_pos.device)]))
    if model.cfg.positional_embedding_type == "rotary":
        rotary, attended = _rotary_rows(model, positions), _running_count(rows, width)
    else:
        rotary, attended = nullcontext(), torch.ones(tokens.shape, dtype=torch.long)
    with rotary, model.hooks(fwd_hooks=hooks):
        return model(tokens.to(device), attention_mask=attended.to(device), stop_at_layer=model.cfg.n_layers)

