"""Where the answer comes from: direct logit attribution, activation patching and the logit lens.

Every probe here reads one number per statement: the logit (or log-probability) of the first
token of the answer, predicted at the last prompt position. Statements come as
``facts.tokens.Example`` objects or as a ``TokenizedFacts`` batch, so forward ("A → ?") and
reverse ("B ← ?") prompts of the same facts sit side by side in every table.

* :func:`direct_logit_attribution`: the answer logit split into what each component (embeddings,
  heads or attention layers, MLPs, biases) writes along the answer's unembedding direction.
* :func:`patch_residual` / :func:`patch_heads`: activation patching from a clean run (e.g. the
  forward prompt) into a corrupted run (the reverse prompt), one (layer, position) or one
  (layer, head) at a time; :func:`forward_reverse_pairs` lines the two prompts of each fact up.
* :func:`logit_lens`: the answer's log-probability and rank read off the residual stream
  before every layer and after the last one.

They are thin over TransformerLens (``ActivationCache.decompose_resid``, ``apply_ln_to_stack``,
``accumulated_resid``; ``stack_head_results`` on a cache of the last position only; exact patching gives
``transformer_lens.patching.generic_activation_patch``'s numbers, several sites a pass) and work on
``HookedTransformer`` and ``TransformerBridge``.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from facts.tokens import Example, TokenizedFacts, collate
from models.backend import (
    POST_NORM_ARCHITECTURES, ActivationCache, apply_softcap, architecture_of, final_norm_centres,
    get_act_name, is_hooked, norm_scale,
)
from models.bilinear import BilinearModel
from models.scoring import (
    ACTIVATION_BUDGET, LOGIT_BUDGET, check_causal, check_token_ids, final_hidden_of, hooked_readout, in_eval_mode,
    kept_logits, widest_activation,
)
from probes.hooks import check_layer, hook_names
from probes.stats import share_of_gap

Statements = Sequence[Example] | TokenizedFacts
PatchSite = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
PATCH_SITES: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]


def as_examples(statements: Statements) -> list[Example]:
    """The examples of a ``TokenizedFacts`` batch (prompt and answer cut at ``prompt_len``), or
    the given examples as a list."""
    if not isinstance(statements, TokenizedFacts):
        return list(statements)
    examples = []
    for row in range(len(statements)):
        start = int(statements.prompt_len[row])
        stop = start + int(statements.answer_len[row])
        tokens = statements.tokens[row].tolist()
        examples.append(Example(tuple(tokens[:start]), tuple(tokens[start:stop]), int(statements.fact[row]),
                                statements.direction[row], statements.split[row]))
    return examples


def _label(example: Example) -> str:
    return f"fact {example.fact} ({example.direction})"


def _by_prompt_length(examples: Sequence[Example], batch_size: int) -> Iterator[list[int]]:
    """Row indices in chunks of ≤ ``batch_size`` whose prompts share one length (no padding)."""
    if not examples:
        raise ValueError("no statements to probe: the selection is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    groups: dict[int, list[int]] = defaultdict(list)
    for row, example in enumerate(examples):
        groups[len(example.prompt)].append(row)
    for rows in groups.values():
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]


def _prompts(model: Any, examples: Sequence[Example]) -> Int[Tensor, "batch pos"]:
    return torch.tensor([e.prompt for e in examples], dtype=torch.long, device=model.cfg.device)


def _first_answer_tokens(model: Any, examples: Sequence[Example]) -> Int[Tensor, " batch"]:
    return torch.tensor([e.answer[0] for e in examples], dtype=torch.long, device=model.cfg.device)


def _refuse_bilinear(model: Any, what: str) -> None:
    """The bilinear model has no layers, heads or residual stream for ``what`` to read: refused by name."""
    if isinstance(model, BilinearModel):
        raise ValueError(f"{what} reads a transformer's layers, heads and residual stream; the bilinear model has "
                         "none (read its Θ with probes.circuits.circuit_table)")


def _check_ids(model: Any, examples: Sequence[Example], where: str) -> None:
    """Refuse token ids outside the model's vocabulary (a negative id would silently index from the end of
    W_U or W_E) and answer ids outside its output vocabulary: ``models.scoring.check_token_ids`` on the
    statements, naming the first offending fact. The bilinear model is refused first (:func:`_refuse_bilinear`)."""
    _refuse_bilinear(model, where)
    if examples:
        check_token_ids(model, collate(examples), f"{model.cfg.model_name}, {where}")


# ---------------------------------------------------------------------------------------------
# Direct logit attribution


def _post_attention_norm(model: Any) -> str | None:
    """The norm between the heads and the residual stream, by its module name in each block
    ("ln1_post" for Gemma 2/3's sandwich norms, "ln1" for OLMo 2's post-norm), or None.

    A ``TransformerBridge`` over Gemma 2/3 runs that norm as its Hugging Face module, which scales by 1 + w,
    and caches its scale as ``blocks.L.ln1_post.hook_scale`` (both TransformerLens lines): its heads are
    read through it as a ``HookedTransformer``'s are (:func:`_head_terms`). OLMo 2's post-norm on a bridge
    is refused (:func:`check_attribution_readable`).
    """
    if hasattr(model, "load_and_process_state_dict"):  # HookedTransformer
        if getattr(model.cfg, "use_normalization_before_and_after", False):
            return "ln1_post"
        return "ln1" if model.cfg.original_architecture in POST_NORM_ARCHITECTURES else None
    check_attribution_readable(model)
    return "ln1_post" if hasattr(model.blocks[0], "ln1_post") else None


def _dla_cache_names(model: Any, by: Literal["head", "layer"]) -> list[str]:
    """The hooks a residual decomposition at the unembed reads (and, per head, the scale of a
    norm after attention). A shortformer model's positional embedding feeds queries and keys only,
    never the residual stream, so it is not cached: TransformerLens's ``decompose_resid`` adds a
    ``pos_embed`` term whenever its hook is in the cache."""
    per_layer = ["hook_attn_out", "hook_mlp_out", "attn.hook_z"]
    norm = _post_attention_norm(model) if by == "head" else None
    if norm is not None:
        per_layer.append(f"{norm}.hook_scale")
    embeddings = ["hook_embed"] + ([] if model.cfg.positional_embedding_type == "shortformer" else ["hook_pos_embed"])
    return embeddings + ["ln_final.hook_scale"] + [
        f"blocks.{layer}.{name}" for layer in range(model.cfg.n_layers) for name in per_layer
    ]


@dataclass(frozen=True)
class _Component:
    name: str
    kind: str
    layer: int | None = None
    head: int | None = None


_LAYER_OUTPUT = re.compile(r"(\d+)_(attn|mlp)_out")


def _component(label: str) -> _Component:
    """Our name for a ``decompose_resid`` label ("embed", "0_attn_out" → "L0 attn", ...)."""
    match = _LAYER_OUTPUT.fullmatch(label)
    if match is None:
        return _Component(label, label)
    layer, kind = int(match[1]), match[2]
    return _Component(f"L{layer} {kind}", kind, layer)


def _head_terms(
    model: Any, cache: Any, layer: int, heads: Float[Tensor, "head batch d_model"], norm: str | None
) -> tuple[list[_Component], list[Float[Tensor, "batch d_model"]]]:
    """Layer ``layer``'s attention output at the last position as one term per head (plus the
    output bias b_O where the model has a nonzero one), each term exact.

    Without a norm after attention, attn_out = Σ_h z_h W_O^h + b_O. With one (an RMSNorm with
    weight w and, cached from the actual run, scale s = √(mean(x²) + ε) of its input
    x = Σ_h z_h W_O^h + b_O), attn_out = w ⊙ x / s, which is linear in x given s: head h's term
    is w ⊙ (z_h W_O^h) / s and the bias's w ⊙ b_O / s, w being the scale the norm applies (1 + w
    stored on a bridge's Gemma norm: :func:`models.backend.norm_scale`). The terms are checked to add up to the
    cached attn_out; a model whose attention output is something else is refused.
    """
    attention = model.blocks[layer].attn
    bias = getattr(attention, "b_O", None)
    names = [_Component(f"L{layer}H{h}", "head", layer, h) for h in range(len(heads))]
    vectors = list(heads)
    if bias is not None and bool((bias != 0).any()):
        names.append(_Component(f"L{layer} attn bias", "attn bias", layer))
        vectors.append(bias.to(heads.dtype).expand_as(heads[0]))
    if norm is not None:
        module = getattr(model.blocks[layer], norm)
        if not hasattr(module, "w") or hasattr(module, "b"):
            raise ValueError(f"{model.cfg.model_name}: L{layer}'s norm after attention ({norm}, "
                             f"{type(module).__name__}) is not an RMSNorm; its heads cannot be attributed one by one")
        scale = cache[f"blocks.{layer}.{norm}.hook_scale"][:, -1]  # [batch, 1]
        weight = norm_scale(model, module)
        vectors = [weight * vector / scale for vector in vectors]
    total, cached = torch.stack(vectors).sum(0), cache[f"blocks.{layer}.hook_attn_out"][:, -1]
    deviation = float((total - cached).abs().max())
    if deviation > 1e-4 * (1.0 + float(cached.abs().max())):
        raise ValueError(
            f"{model.cfg.model_name}: L{layer}'s heads{' and output bias' if len(names) > len(heads) else ''}"
            f"{f' through its {norm} norm' if norm else ''} add up to its attention output only to within "
            f"{deviation:.3g}: something else writes there, so a per-head attribution would not be exact; "
            "attribute by='layer'"
        )
    return names, vectors


def _last_position_head_results(model: Any, cache: Any) -> Float[Tensor, "layer head batch d_model"]:
    """What each head writes at the last position, z_h W_O^h: TransformerLens's own
    ``stack_head_results(pos_slice=-1)``, run on a cache of the last position's ``hook_z`` only.
    On the full cache, TransformerLens 3.9 first computes every position of every layer through a
    [batch, pos, head, d_head, d_model] product (Gemma 3 270M, 2 prompts of 14 tokens: 73 MiB a
    layer, the peak of ``revlens probe``); here that product has one position."""
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    last = ActivationCache({name: cache[name][:, -1:] for name in names}, model)
    heads = last.stack_head_results(layer=-1, pos_slice=-1)
    return einops.rearrange(heads, "(layer head) batch d_model -> layer head batch d_model", head=model.cfg.n_heads)


def _decomposition(
    model: Any, cache: Any, by: Literal["head", "layer"]
) -> tuple[list[_Component], Float[Tensor, "component batch d_model"]]:
    """The final residual stream at the last position as a sum of named components.

    ``by="layer"``: embed, pos_embed, then per layer "L{l} attn" and "L{l} mlp".
    ``by="head"``: each attention layer is split into its heads "L{l}H{h}" (and "L{l} attn bias",
    b_O, only where the model has a nonzero one), exactly, through a norm after attention where
    there is one (:func:`_head_terms`).
    """
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    components = [_component(label) for label in labels]
    if by == "layer":
        return components, stack
    norm = _post_attention_norm(model)
    per_layer = _last_position_head_results(model, cache)
    out_components, out_vectors = [], []
    for component, vector in zip(components, stack):
        if component.kind == "attn":
            names, vectors = _head_terms(model, cache, component.layer, per_layer[component.layer], norm)
            out_components += names
            out_vectors += vectors
        else:
            out_components.append(component)
            out_vectors.append(vector)
    return out_components, torch.stack(out_vectors)


def _check_controls(examples: Sequence[Example], controls: Sequence[Example]) -> None:
    if len(controls) != len(examples):
        raise ValueError(f"{len(controls)} controls for {len(examples)} statements: give one control per statement")
    for example, control in zip(examples, controls):
        if control.prompt != example.prompt:
            raise ValueError(f"{_label(example)}: the control's prompt differs from the statement's prompt; "
                             "a control is the same prompt with another answer")


def _final_norm_affine(model: Any) -> tuple[Tensor | None, Tensor | None]:
    """The final norm's weight w, as the scale it applies (1 + w where it stores the offset from 1:
    :func:`models.backend.norm_scale`), and bias b (None where it has none, or no final norm at all)."""
    norm = getattr(model, "ln_final", None)
    parameters = {} if norm is None else {name.rsplit(".", 1)[-1]: p for name, p in norm.named_parameters()}
    return (None if norm is None else norm_scale(model, norm)), parameters.get("b", parameters.get("bias"))


def _answer_directions(
    model: Any, answers: Int[Tensor, " batch"], wrong: Int[Tensor, " batch"] | None
) -> tuple[Float[Tensor, "d_model batch"], Float[Tensor, " batch"]]:
    """What the normalised final residual is dotted with, and the constant added, to give each
    statement's answer logit (minus the control's): u = w ⊙ (W_U[:, t] − W_U[:, c]) and
    b_U[t] − b_U[c] + b · (W_U[:, t] − W_U[:, c]), with w, b the final norm's weight and bias
    (1 and 0 where it has none). These are the columns of TransformerLens's ``fold_ln`` for the
    scored tokens only: no folded copy of the model is made."""
    unembed = model.W_U[:, answers] - (0 if wrong is None else model.W_U[:, wrong])
    offset = model.b_U[answers] - (0 if wrong is None else model.b_U[wrong])
    weight, bias = _final_norm_affine(model)
    if bias is not None:
        offset = offset + bias @ unembed
    if weight is not None:
        unembed = weight[:, None] * unembed
    return unembed, offset


def _through_final_norm(
    model: Any, cache: Any, stack: Float[Tensor, "component batch d_model"]
) -> Float[Tensor, "component batch d_model"]:
    """Each component as the final norm passes it to its affine part: centred where that norm centres,
    divided by the norm's cached scale at the last position. TransformerLens's ``apply_ln_to_stack``
    does this but centres by ``normalization_type`` alone, so an RMS final norm under LayerNorm blocks
    (``cfg.final_rms``) is divided by its scale here, uncentred."""
    if model.cfg.normalization_type in ("LN", "LNPre") and not final_norm_centres(model):
        return stack / cache["ln_final.hook_scale"][:, -1]
    return cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)


def check_attribution_readable(model: Any) -> None:
    """Refuse, before any work, a model whose direct logit attribution would not be exact: a
    ``TransformerBridge`` (either TransformerLens line) over OLMo 2/3 (a norm after attention and no norm
    before it, run as Hugging Face modules; TransformerLens 3.9's HookedTransformer cannot convert it
    either); and a bridge that does more between its final residual stream and its logits than the
    unembedding and a soft cap: one whose config declares the Granite family's embedding, attention or
    residual multipliers, or whose architecture adapter overrides ``apply_output_logits_transform``
    (Granite's 1 / logits_scaling, Cohere's logit_scale, Falcon-H1's multiplier). :func:`direct_logit_attribution`
    asks it first; ``revlens probe`` asks :func:`check_attribution_architecture` from the model's files before
    loading it, and this right after. A ``HookedTransformer`` passes (read through its norms exactly), and so
    do a bridge over Gemma 1/2/3 (its norms, scaling by 1 + w, read as such: :func:`_answer_directions`,
    :func:`_head_terms`), any other bridge whose blocks hold a norm after attention named ``ln1_post`` (read the
    same way; tested on Gemma 2/3 and GLM-4, whose norm scales by w; elsewhere the checks below are what vouch for
    it: the heads must add up to each layer's cached attention output) and the bilinear model (no heads: it is
    never attributed). Whatever passes is still checked, statement by statement, against the logits of the run it
    attributes (:func:`direct_logit_attribution`)."""
    if isinstance(model, BilinearModel):
        return
    name, architecture = model.cfg.model_name, architecture_of(model)
    if not is_hooked(model):  # what the bridge in hand declares, before the names its files would give
        multipliers = _residual_multipliers(model)
        if multipliers:
            raise ValueError(
                f"{name}: {architecture or 'this model'} scales its embeddings, attention or each layer's residual "
                f"contribution ({', '.join(f'{k}={v:g}' for k, v in multipliers.items())}: the Granite family's "
                "multipliers), which the TransformerBridge applies outside the activations that TransformerLens's "
                "cache decomposes, so direct logit attribution (by head or by layer) would not be exact and is refused")
        owner = _transform_owner(getattr(model, "adapter", None))
        if owner is not None and owner != "ArchitectureAdapter":
            raise ValueError(
                f"{name}: the TransformerBridge's adapter for {architecture or 'this model'} ({owner}) turns the "
                "unembedding into the output logits with more than the shared soft cap (its "
                "apply_output_logits_transform: a scale such as Granite's 1 / logits_scaling or Cohere's "
                "logit_scale), which terms read off W_U and b_U leave out, so direct logit attribution (by head or "
                "by layer) is refused")
    check_attribution_architecture(name, architecture, is_hooked(model))


OUTPUT_TRANSFORM_ARCHITECTURES = ("Cohere", "FalconH1", "Granite", "MuseGlimmer")
"""Architectures (transformers class-name prefixes) whose TransformerBridge adapter scales the unembedding
on its way to the output logits (TransformerLens 3.9 and 4.3: Cohere/Cohere2 by ``logit_scale``, Granite
and its MoE variants by 1 / ``logits_scaling`` (and their blocks by ``residual_multiplier``), Falcon-H1 and
MuseGlimmer by a logits multiplier): refused from their files. A model in hand is refused by its adapter
(:func:`check_attribution_readable`), so one missing here is still caught before any work."""

_MULTIPLIERS = ("embedding_multiplier", "residual_multiplier", "attention_multiplier")


def _transform_owner(adapter: Any) -> str | None:
    """The name of the class that defines ``adapter.apply_output_logits_transform`` ("<class> instance" where
    it is set on the adapter itself; None without one)."""
    if adapter is None:
        return None
    if "apply_output_logits_transform" in getattr(adapter, "__dict__", {}):
        return f"{type(adapter).__name__} instance"
    for cls in type(adapter).__mro__:
        if "apply_output_logits_transform" in vars(cls):
            return cls.__name__
    return None


def _residual_multipliers(model: Any) -> dict[str, float]:
    """The Granite-style multipliers other than 1 that a bridge's config (or its Hugging Face model's) declares."""
    found = {}
    configs = [model.cfg, getattr(getattr(model, "original_model", None), "config", None)]
    for key in _MULTIPLIERS:
        for config in configs:
            value = getattr(config, key, None)
            if isinstance(value, (int, float)) and float(value) != 1.0:
                found[key] = float(value)
                break
    return found


def check_attribution_architecture(name: str, architecture: str, hooked: bool) -> None:
    """:func:`check_attribution_readable` from what a model's files declare, before any weight is read:
    ``architecture`` its transformers class ("Olmo2ForCausalLM"), ``hooked`` whether it will be a
    ``HookedTransformer`` (3.9's ``backend="hooked"``). The same refusals by architecture, with the same words;
    what only a model in hand shows (its adapter's output transform, its config's multipliers) is refused here by
    name (:data:`OUTPUT_TRANSFORM_ARCHITECTURES`). A Gemma 1/2/3 bridge passes: its final norm is read as the scale
    1 + w it applies (:func:`_answer_directions`), and Gemma 2/3's heads through the norm after attention at its
    cached scale (:func:`_post_attention_norm`)."""
    if hooked:
        return
    if architecture.startswith(OUTPUT_TRANSFORM_ARCHITECTURES):
        raise ValueError(
            f"{name}: a TransformerBridge over {architecture} scales the unembedding on its way to the output logits "
            "(its adapter's apply_output_logits_transform), which the terms read off W_U would leave out, so direct "
            "logit attribution (by head or by layer) is refused; TransformerLens's HookedTransformer does not "
            f"convert {architecture}")
    if architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(
            f"{name}: {architecture} normalises each attention layer's output (a norm after attention, none "
            "before), and a TransformerBridge runs that norm and the final one as Hugging Face modules it neither "
            "folds nor caches the scale of, so direct logit attribution (by head or by layer) would not be exact "
            "and is refused; no TransformerLens model of it gives one (3.9's HookedTransformer cannot convert "
            f"{architecture})")


@in_eval_mode
@torch.no_grad()
def direct_logit_attribution(
    model: Any,
    statements: Statements,
    controls: Sequence[Example] | None = None,
    by: Literal["head", "layer"] = "head",
    batch_size: int = 64,
) -> pd.DataFrame:
    """How much each component writes towards the answer's first token at the last prompt position.

    With r = Σ_c r_c the final residual stream, s the final norm's scale cached from the actual
    run, w and b its weight and bias and t the answer token, the answer logit is exactly
    ``logit_t = Σ_c (r_c − mean(r_c)) / s · (w ⊙ W_U[:, t]) + b · W_U[:, t] + b_U[t]``  (no mean
    for RMSNorm), the final norm folded into the unembedding columns of the scored tokens only
    (:func:`_answer_directions`), w being the scale the norm applies (1 + w where it stores the offset from 1,
    as a bridge's Gemma norms do: ``models.backend.norm_scale``). Either model class is read as it is, with no
    folded copy of the model (Gemma 3 270M's copy alone would be 1.6 GiB); a ``TransformerBridge``, which runs
    its norms as Hugging Face modules, caches their scales s all the same. Each row is one term: a component's
    term, plus one "unembed bias" row with b · W_U[:, t] + b_U[t], so a statement's attributions
    sum to its raw (uncentred) answer logit. This is *linear given the scale s*: s depends on all
    components together, and the attribution of a component is not what the logit would lose
    without it (use patching for that).

    The sums are checked against the model's own logits of the same run (a ``HookedTransformer``'s readout
    of its cached final residual, a bridge's output), statement by statement, within float rounding: a model
    that turns its final residual into logits by anything else is refused, as are token ids outside its
    vocabulary (``models.scoring.check_token_ids``: a negative id would index W_U from the end).

    ``controls``: one example per statement with the same prompt and another answer; the rows
    then attribute the logit difference logit_t − logit_control. A model that caps its logits
    (Gemma 2: logit = c·tanh(x / c)) is attributed before the cap: the terms sum to x = c·artanh(logit / c).

    ``by="head"`` splits each attention layer into its query heads, exactly: where a norm sits
    between the heads and the residual stream (Gemma 2/3's post-attention RMSNorm), each head's
    output is divided by that norm's scale cached from the actual run and multiplied by its weight,
    w ⊙ (z_h W_O^h) / s, which is exact because the norm is linear given its scale
    (:func:`_head_terms`); an "attn bias" row appears only where the model has a nonzero b_O. A
    layer whose heads do not add up to its output is refused. Heads are query heads (under
    grouped-query attention each query head's z·W_O is its own term). Statements are run in
    groups of one prompt length, ``batch_size`` at a time, and then put back in input order.

    Columns: statement (row of the input), fact, direction, split, answer_token, control_token,
    component, kind ("embed", "pos_embed", "head", "attn bias", "attn", "mlp", "unembed bias"),
    layer, head, attribution.
    """
    if by not in ("head", "layer"):
        raise ValueError(f"by must be 'head' or 'layer', not {by!r}")
    check_attribution_readable(model)  # before any work: the refusals `revlens probe` gives right after loading
    examples = as_examples(statements)
    _check_ids(model, examples, "direct logit attribution")
    if controls is not None:
        _check_controls(examples, controls)
        _check_ids(model, list(controls), "direct logit attribution's controls")
    hooked = is_hooked(model)
    frames = []
    for rows in _by_prompt_length(examples, batch_size):
        chunk = [examples[r] for r in rows]
        answers = _first_answer_tokens(model, chunk)
        wrong = None if controls is None else _first_answer_tokens(model, [controls[r] for r in rows])
        names = _dla_cache_names(model, by) + ([_last_resid(model)] if hooked else [])
        no_logits = {"return_type": None} if hooked else {}  # the cache is all it reads (ln_final's scale included)
        output, cache = model.run_with_cache(_prompts(model, chunk), names_filter=names, **no_logits)
        # the model's own logits at the last position: a HookedTransformer's readout of the cached final residual
        # (the rows its forward would give, without unembedding every position), a bridge's forward output
        output = hooked_readout(model, cache[_last_resid(model)][:, -1]) if hooked else output[:, -1]
        components, stack = _decomposition(model, cache, by)
        directions, offset = _answer_directions(model, answers, wrong)
        normalised = _through_final_norm(model, cache, stack)
        attrs = einops.einsum(normalised, directions, "component batch d_model, d_model batch -> component batch")
        components.append(_Component("unembed bias", "unembed bias"))
        attrs = torch.cat([attrs, offset[None]])
        _check_sums(model, attrs, output, answers, wrong, chunk)
        frames.append(_attribution_frame(rows, chunk, answers, wrong, components, attrs))
    return _in_input_order(frames)


def _last_resid(model: Any) -> str:
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def _check_sums(
    model: Any,
    attrs: Float[Tensor, "component batch"],
    output: Float[Tensor, "batch d_vocab"],
    answers: Int[Tensor, " batch"],
    wrong: Int[Tensor, " batch"] | None,
    examples: Sequence[Example],
) -> None:
    """Refuse attributions that do not sum to the model's own logit (difference) of the same run.

    The terms sum, by construction, to the unembedding of the final residual stream before any logit cap;
    the model's output is that passed through its soft cap c·tanh(x / c), if any, and nothing else. So
    where the cap is off the sum must equal logit_t (− logit_c); with a cap it must equal
    c·artanh(logit_t / c) (− the control's), which float rounding of a logit near ±c can move by far more
    than it moves the logit, so the tolerance there grows with artanh's slope. An output transform this
    module does not read (a scale, a bias added after the unembedding) makes the sum differ: refused, so it
    cannot pass silently."""
    pick = torch.arange(len(answers), device=output.device)
    real = output.double()
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    capped = cap is not None and cap > 0

    def uncapped(tokens: Int[Tensor, " batch"]) -> tuple[Tensor, Tensor]:
        value = real[pick, tokens]
        if not capped:
            return value, torch.ones_like(value)
        ratio = (value / cap).clamp(-1.0, 1.0)
        return cap * torch.atanh(ratio), 1.0 / (1.0 - ratio**2).clamp_min(1e-300)

    target, slope = uncapped(answers)
    if wrong is not None:
        control, control_slope = uncapped(wrong)
        target, slope = target - control, torch.maximum(slope, control_slope)
    total = attrs.double().sum(0)
    size = attrs.double().abs().sum(0) + real.abs().amax(-1)
    tolerance = torch.tensor([_float_tolerance(output.dtype, float(s)) for s in size], dtype=torch.float64,
                             device=output.device) * slope
    deviation = (total - target).abs()
    bad = ~(deviation <= tolerance)  # NaN included
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        what = "logit difference" if wrong is not None else "logit"
        raise ValueError(
            f"{model.cfg.model_name}: {_label(examples[row])}'s attributions sum to {float(total[row]):.6g}, but the "
            f"model's own {what}{' before its soft cap' if capped else ''} in the same run is {float(target[row]):.6g} "
            f"(off by {float(deviation[row]):.3g}; float rounding allows {float(tolerance[row]):.2g}): the model turns "
            "its final residual stream into logits by something other than its final norm, W_U and b_U, so direct "
            "logit attribution would not be exact and is refused")


def _in_input_order(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenated rows sorted back to the order of the input statements (column ``statement``)."""
    return pd.concat(frames, ignore_index=True).sort_values("statement", kind="stable", ignore_index=True)


def _attribution_frame(
    rows: Sequence[int],
    examples: Sequence[Example],
    answers: Int[Tensor, " batch"],
    controls: Int[Tensor, " batch"] | None,
    components: Sequence[_Component],
    attrs: Float[Tensor, "component batch"],
) -> pd.DataFrame:
    """One row per (statement, component), statements outermost."""
    n_components = len(components)

    def per_statement(values: Sequence[Any]) -> np.ndarray:
        return np.repeat(np.asarray(values, dtype=object), n_components)

    def per_component(values: Sequence[Any]) -> np.ndarray:
        return np.tile(np.asarray(values, dtype=object), len(examples))

    control_tokens = [None] * len(examples) if controls is None else controls.tolist()
    return pd.DataFrame({
        "statement": np.repeat(rows, n_components),
        "fact": np.repeat([e.fact for e in examples], n_components),
        "direction": per_statement([e.direction for e in examples]),
        "split": per_statement([e.split for e in examples]),
        "answer_token": np.repeat(answers.tolist(), n_components),
        "control_token": pd.array(per_statement(control_tokens), dtype="Int64"),
        "component": per_component([c.name for c in components]),
        "kind": per_component([c.kind for c in components]),
        "layer": pd.array(per_component([c.layer for c in components]), dtype="Int64"),
        "head": pd.array(per_component([c.head for c in components]), dtype="Int64"),
        "attribution": einops.rearrange(attrs, "component batch -> (batch component)").float().cpu().numpy(),
    })


# ---------------------------------------------------------------------------------------------
# Activation patching


@dataclass(frozen=True)
class Patching:
    """Answer log-probability of the corrupted run after patching one site from the clean run.

    ``metric[i, j]``: mean over statements of log p(target | corrupted prompt) (a token, or a
    token sequence scored token by token, see :func:`patch_residual`) with the
    activation at (``layers[i]``, j) taken from the clean run, j a position (``axis="pos"``;
    the prompts aligned at their end, see :func:`patch_residual`) or a head (``axis="head"``).
    ``clean`` and ``corrupt``: the same metric unpatched.
    """

    metric: Float[Tensor, "layer index"]
    layers: tuple[int, ...]
    axis: Literal["pos", "head"]
    site: str
    clean: float
    corrupt: float

    @property
    def recovered(self) -> Float[Tensor, "layer index"]:
        """(metric − corrupt) / (clean − corrupt): 0 = no effect, 1 = the clean run's value; NaN where the clean
        and corrupted runs score the same within float32 rounding (:func:`probes.stats.share_of_gap`)."""
        return share_of_gap(self.metric, self.corrupt, self.clean)

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows: layer, pos (counted from the prompts' end, −1 the last position: clean and corrupted prompts
        of other lengths are aligned there) or head, metric, recovered."""
        width = self.metric.shape[1]
        index = range(-width, 0) if self.axis == "pos" else range(width)
        rows = list(itertools.product(self.layers, index))
        return pd.DataFrame({
            "site": self.site,
            "layer": [layer for layer, _ in rows],
            self.axis: [j for _, j in rows],
            "metric": self.metric.reshape(-1).numpy(),
            "recovered": self.recovered.reshape(-1).numpy(),
        })


def forward_reverse_pairs(statements: Statements) -> tuple[list[Example], list[Example]]:
    """(forward prompts, reverse prompts) of every fact that has both directions in ``statements``,
    in order of first appearance: the clean and corrupted runs of forward → reverse patching. A fact
    with two statements of one direction is refused: which of them to pair would be a guess."""
    by_fact: dict[int, dict[str, Example]] = defaultdict(dict)
    for row, example in enumerate(as_examples(statements)):
        if example.direction in by_fact[example.fact]:
            raise ValueError(f"{_label(example)} appears twice in the statements (the second time as row {row}): "
                             "forward → reverse pairs need one statement per fact and direction")
        by_fact[example.fact][example.direction] = example
    pairs = [(d["forward"], d["reverse"]) for d in by_fact.values() if {"forward", "reverse"} <= set(d)]
    if not pairs:
        raise ValueError("no fact has both its forward and its reverse statement in the selection")
    return [f for f, _ in pairs], [r for _, r in pairs]


def _check_patchable(clean: Sequence[Example], corrupt: Sequence[Example], one_length: bool) -> tuple[int, int]:
    """The prompt length of the clean and of the corrupted statements. Each side must have one
    length; with ``one_length`` both sides the same one. Anything else raises."""
    if not clean or len(clean) != len(corrupt):
        raise ValueError(f"patching needs as many clean as corrupted statements (≥ 1), got {len(clean)} and "
                         f"{len(corrupt)}")
    lengths = []
    for name, examples in (("clean", clean), ("corrupted", corrupt)):
        length = len(examples[0].prompt)
        for example in examples:
            if len(example.prompt) != length:
                raise ValueError(
                    f"batched patching needs every {name} prompt to have the same length: the {name} "
                    f"{_label(examples[0])} has {length} tokens, {_label(example)} has {len(example.prompt)}; "
                    f"select statements of one prompt length"
                )
        lengths.append(length)
    if one_length and lengths[0] != lengths[1]:
        raise ValueError(
            f"head patching replaces a head's output at every position, so clean and corrupted prompts need the "
            f"same length: the clean {_label(clean[0])} has {lengths[0]} tokens, the corrupted "
            f"{_label(corrupt[0])} has {lengths[1]}; patch the residual stream position by position instead"
        )
    return lengths[0], lengths[1]


Targets = Sequence[int] | Sequence[Sequence[int]]
"""What patching scores: one token per statement, or one token sequence (a whole answer) per statement."""


def _target_tokens(model: Any, clean: Sequence[Example], targets: Targets | None) -> Int[Tensor, "batch answer"]:
    """The tokens to score, one row per statement (default: each clean statement's first answer token);
    teacher-forced after the prompt, so a model whose attention is not causal is refused."""
    check_causal(model)
    rows = [(e.answer[0],) for e in clean] if targets is None else [
        tuple(int(token) for token in t) if isinstance(t, Sequence) else (int(t),) for t in targets]
    if len(rows) != len(clean):
        raise ValueError(f"{len(rows)} targets for {len(clean)} statements: give one target per statement")
    if not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"batched patching scores target sequences of one length, got lengths {[len(r) for r in rows]}; "
                         "patch statements whose answers have as many tokens, or one statement at a time")
    # each target scored after its clean prompt: the clean statement's fact named if a target is out of range
    _check_ids(model, [Example(e.prompt, r, e.fact, e.direction, e.split) for e, r in zip(clean, rows)],
               "patching targets")
    return torch.tensor(rows, dtype=torch.long, device=model.cfg.device)


def _answer_logprobs(logits: Float[Tensor, "batch answer d_vocab"], targets: Int[Tensor, "batch answer"]
                     ) -> Float[Tensor, " batch"]:
    """log p(target sequence | prompt) = Σ_k log p(t_k | prompt, t_<k) of each row, from the logits of the last
    ``answer`` positions of a run whose input is the prompt followed by t_1 … t_{A−1}."""
    logprobs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(-1)
    return logprobs.gather(-1, targets[..., None])[..., 0].sum(-1)


def _answer_logprob(targets: Int[Tensor, "batch answer"]) -> Metric:
    """Metric: the mean over the batch of :func:`_answer_logprobs`, read off a run's whole logits."""
    length = targets.shape[1]

    def metric(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        return _answer_logprobs(logits[:, -length:], targets).mean()

    return metric


PATCHED_ROWS = 16
"""Patches one pass runs at most, each on its own copy of the corrupted statements (:func:`_patched_logprobs`;
fewer where a pass's activations or logits would pass :data:`models.scoring.ACTIVATION_BUDGET` or
:data:`models.scoring.LOGIT_BUDGET`). SmolLM2, one thread, every resid_pre patch of one 16-token statement
(390 passes one at a time): 8 a pass ×2.96, 16 ×3.42 (2026-12-06, an AMD EPYC)."""


def _patched_logprobs(
    model: Any, corrupt_tokens: Int[Tensor, "batch pos"], clean_cache: Any, goal: Int[Tensor, "batch answer"],
    activation: str, axis: Literal["pos", "head"], sites: Sequence[tuple[int, int]],
) -> Float[Tensor, " site"]:
    """For each (layer, index) of ``sites``: the mean over the statements of log p(``goal`` | the corrupted prompt)
    with ``activation`` at that layer and position (``axis="pos"``: ``[:, index]``) or head (``"head"``:
    ``[:, :, index]``) taken from ``clean_cache``: what ``transformer_lens.patching.generic_activation_patch`` gives
    with the position or head setter, one forward pass per site.

    Here several sites share a pass: the corrupted statements repeated once per site, and each copy patched at
    its own site alone (a hook per layer writes only the copies of its sites), so each copy's forward is the
    one-site pass's, row for row (bitwise on SmolLM2 and the tiny architectures). Where the model allows it (a
    HookedTransformer, or a bridge over a plain ``Linear`` head, with no other hook), only the scored positions are
    unembedded (:func:`models.scoring.kept_logits`); anything else gives its whole logits."""
    statements, length = corrupt_tokens.shape[0], goal.shape[1]
    readout = final_hidden_of(model) is not None  # what kept_logits reads out (its hooks not attached yet)
    vocabulary = max(getattr(model.cfg, "d_vocab_out", 0) or 0, model.cfg.d_vocab)  # -1 where it is d_vocab
    logits_per_site = statements * (length if readout else corrupt_tokens.shape[1]) * vocabulary
    per_pass = max(1, min(PATCHED_ROWS, LOGIT_BUDGET // logits_per_site,
                          ACTIVATION_BUDGET // (statements * corrupt_tokens.shape[1] * widest_activation(model))))

    def patch(value: Tensor, hook: Any, patches: list[tuple[int, int]]) -> Tensor:
        """Copy ``c`` of the corrupted statements (rows c·statements …) gets the clean value at its ``index``."""
        clean = clean_cache[hook.name]
        for copy, index in patches:
            rows = slice(copy * statements, (copy + 1) * statements)
            if axis == "pos":
                value[rows, index] = clean[:, index]
            else:
                value[rows, :, index] = clean[:, :, index]
        return value

    out = []
    for start in range(0, len(sites), per_pass):
        chunk = sites[start:start + per_pass]
        by_layer: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for copy, (layer, index) in enumerate(chunk):
            by_layer[layer].append((copy, index))
        hooks = [(get_act_name(activation, layer), functools.partial(patch, patches=patches))
                 for layer, patches in by_layer.items()]
        tokens = corrupt_tokens.repeat(len(chunk), 1)
        scored = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        scored[:, -length:] = True
        logits = kept_logits(model, scored, functools.partial(model.run_with_hooks, tokens, fwd_hooks=hooks)
                             ).view(len(tokens), length, -1)
        out.append(_answer_logprobs(logits, goal.repeat(len(chunk), 1)).view(len(chunk), statements).mean(-1))
    return torch.cat(out)


def _layers(model: Any, layers: Sequence[int] | None) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(model.cfg.n_layers))
    return tuple(check_layer(model, layer) for layer in layers)


@in_eval_mode
@torch.no_grad()
def _patch(
    model: Any,
    clean: Sequence[Example],
    corrupt: Sequence[Example],
    activation: str,
    axis: Literal["pos", "head"],
    layers: Sequence[int] | None,
    targets: Targets | None,
) -> Patching:
    clean_length, corrupt_length = _check_patchable(clean, corrupt, one_length=axis == "head")
    _check_ids(model, clean, "clean statements")
    _check_ids(model, corrupt, "corrupted statements")
    chosen = _layers(model, layers)
    names = [get_act_name(activation, layer) for layer in chosen]
    for name in names:
        hook_names(model, name)  # a clear error when, e.g., an attention-only model has no resid_mid
    goal = _target_tokens(model, clean, targets)
    metric = _answer_logprob(goal)
    teacher = goal[:, :-1]  # every target token but the last follows the prompt in both runs
    clean_tokens = torch.cat([_prompts(model, clean), teacher], 1)
    corrupt_tokens = torch.cat([_prompts(model, corrupt), teacher], 1)
    clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    if axis == "pos":  # the last `width` positions of both prompts, aligned at the end of the prompts
        width, shift = min(clean_length, corrupt_length), teacher.shape[1]
        index = range(-width - shift, -shift)
    else:
        width = model.cfg.n_heads
        index = range(width)
    flat = _patched_logprobs(model, corrupt_tokens, clean_cache, goal, activation, axis,
                             list(itertools.product(chosen, index)))
    return Patching(
        metric=flat.view(len(chosen), width).cpu(),
        layers=chosen,
        axis=axis,
        site=activation,
        clean=float(metric(clean_logits)),
        corrupt=float(metric(model(corrupt_tokens))),
    )


def patch_residual(
    model: Any,
    clean: Statements,
    corrupt: Statements,
    site: PatchSite = "resid_pre",
    layers: Sequence[int] | None = None,
    targets: Targets | None = None,
) -> Patching:
    """Patch ``site`` at one (layer, position) at a time from the clean into the corrupted run.

    The metric is the mean log-probability of ``targets`` given the patched corrupted prompt:
    one token per statement, read at the last prompt position (default: each clean statement's
    first answer token), or one token sequence per statement (e.g. the corrupted statement's whole
    answer), scored as Σ_k log p(t_k | prompt, t_<k) with t_1 … t_{A−1} appended to both runs
    (they come after every patched position, so the patch is the same). This is
    ``transformer_lens.patching.get_act_patch_resid_pre`` (and its siblings for the other
    sites) restricted to ``layers``, with up to :data:`PATCHED_ROWS` sites a forward pass
    (:func:`_patched_logprobs`). Row i of the clean and corrupted statements are one pair;
    all clean prompts share one length L_c and all corrupted ones one length L_r.

    Positions are aligned at the end: column j patches position j − W (counted from the end)
    of both runs, W = min(L_c, L_r). With L_c = L_r (token worlds: "x →" and "y ←") that is
    simply position j. With different lengths (SmolLM2: "Bartholomew Holloway, known far and
    wide for being" against "Known for being the choreographer of … 'Silent Willow',") the
    last position is the one slot the two prompts surely share, where each predicts its
    answer; aligning there keeps it paired and puts every other column at a fixed distance
    before it. Tokens at the other aligned positions need not mean the same thing (names and
    descriptions of different lengths cannot line up token by token), so read column j as
    "the clean run's state W − j tokens before the answer". The first |L_c − L_r| positions
    of the longer prompt are not patched.
    """
    if site not in PATCH_SITES:
        raise ValueError(f"site must be one of {PATCH_SITES}, not {site!r}")
    return _patch(model, as_examples(clean), as_examples(corrupt), site, "pos", layers, targets)


def patch_heads(
    model: Any,
    clean: Statements,
    corrupt: Statements,
    layers: Sequence[int] | None = None,
    targets: Targets | None = None,
) -> Patching:
    """Patch one head's output (its ``hook_z``, all positions) at a time from clean into corrupted.

    Same metric and pairing as :func:`patch_residual`; this is
    ``transformer_lens.patching.get_act_patch_attn_head_out_all_pos`` restricted to ``layers``, with up to
    :data:`PATCHED_ROWS` heads a forward pass.
    Under grouped-query attention the heads are the query heads.
    """
    return _patch(model, as_examples(clean), as_examples(corrupt), "z", "head", layers, targets)


# ---------------------------------------------------------------------------------------------
# Attribution patching


AttributionSite = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"]


@in_eval_mode
def attribution_patch(
    model: Any,
    clean: Statements,
    corrupt: Statements,
    sites: Sequence[AttributionSite] = ("resid_pre", "z"),
    layers: Sequence[int] | None = None,
    targets: Targets | None = None,
) -> dict[str, Patching]:
    """Every (layer, position) and (layer, head) patch of :func:`patch_residual` / :func:`patch_heads`
    estimated at once, from one clean forward pass and one corrupted forward + backward pass
    (Nanda's *attribution patching*).

    With M(a) the metric of the corrupted run when the activation a at one site (a residual
    vector ``a: Float[Tensor, "batch d_model"]`` at one position, or one head's
    ``z: Float[Tensor, "batch pos d_head"]`` at every position) is set to a, exact patching reads
    M(a_clean) − M(a_corrupt). Attribution patching replaces it by its first-order Taylor term at
    the corrupted run,

        M(a_clean) − M(a_corrupt) ≈ ⟨a_clean − a_corrupt, ∂M/∂a |_corrupt⟩
                                   = d/dt M(a_corrupt + t (a_clean − a_corrupt)) |_{t=0},

    the inner product summed over batch and features (and, for a head, positions; M is the mean over
    the batch, so the batch-mean's 1/B is in the gradient). All gradients come from one backward
    pass of the same M the exact patching reads (:func:`patch_residual`'s mean log-probability of
    ``targets``, default each clean statement's first answer token). The estimate is exact where
    M is affine in a along the segment, and close where the patched difference is small against
    M's curvature; it is worst for large changes through a saturating softmax (attention or the
    answer's own probability near 1), so read it as a map of where to patch exactly.

    Positions are aligned at the end as in :func:`patch_residual`; ``"z"`` (heads, all positions)
    needs clean and corrupted prompts of one length, as :func:`patch_heads` does. Returns one
    :class:`Patching` per site, keyed by site, whose ``metric`` is the *estimated* patched metric,
    M(a_corrupt) + estimate, so it reads like an exact one (``recovered``, ``to_frame``). Works on
    a model whose parameters do not require gradients (the first activation read becomes the
    leaf); the model's parameters get no ``.grad``.
    """
    clean, corrupt = as_examples(clean), as_examples(corrupt)
    for site in sites:
        if site not in (*PATCH_SITES, "z"):
            raise ValueError(f"site must be one of {(*PATCH_SITES, 'z')}, not {site!r}")
    clean_length, corrupt_length = _check_patchable(clean, corrupt, one_length="z" in sites)
    _check_ids(model, clean, "clean statements")
    _check_ids(model, corrupt, "corrupted statements")
    chosen = _layers(model, layers)
    names = {(site, layer): get_act_name(site, layer) for site in sites for layer in chosen}
    for name in names.values():
        hook_names(model, name)
    goal = _target_tokens(model, clean, targets)
    metric = _answer_logprob(goal)
    teacher = goal[:, :-1]
    clean_tokens = torch.cat([_prompts(model, clean), teacher], 1)
    corrupt_tokens = torch.cat([_prompts(model, corrupt), teacher], 1)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=list(names.values()))

    seen: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable[[Tensor, Any], Tensor]:  # by our name: a bridge's hook may call itself another
        def keep(activation: Tensor, hook: Any) -> Tensor:
            if not activation.requires_grad:  # frozen parameters: start the graph here
                # A tensor that needs no gradient is a leaf, so it is marked in place, not replaced by a detached
                # copy: every reader of this very tensor is then downstream of it. A bridge passes one tensor
                # to two hooks (blocks.L.hook_resid_mid is ln2.hook_in) and its residual branch reads the
                # original, not what the hook returns: a copy would reach the MLP's norm only. A parameter
                # itself (never one of our sites) would be changed for good, so it alone is copied.
                if isinstance(activation, torch.nn.Parameter):
                    activation = activation.detach()
                activation.requires_grad_(True)
            seen[name] = activation
            return activation

        return keep

    with torch.enable_grad(), model.hooks(fwd_hooks=[(name, keeper(name)) for name in dict.fromkeys(names.values())]):
        corrupt_value = metric(model(corrupt_tokens))
    order = list(seen)
    gradients = dict(zip(order, torch.autograd.grad(corrupt_value, [seen[n] for n in order], allow_unused=True)))

    width, shift = min(clean_length, corrupt_length), teacher.shape[1]
    aligned = slice(clean_tokens.shape[1] - width - shift, clean_tokens.shape[1] - shift)
    base = float(corrupt_value.detach())
    results = {}
    for site in sites:
        rows = []
        for layer in chosen:
            name = names[site, layer]
            gradient = gradients[name]
            corrupted = seen[name].detach()
            if gradient is None:  # nothing downstream reads this activation
                gradient = torch.zeros_like(corrupted)
            if site == "z":
                per_head: Float[Tensor, "batch pos head d_head"] = clean_cache[name] - corrupted
                rows.append(einops.einsum(per_head.cpu().double(), gradient.cpu().double(),  # MPS has no float64
                                          "b p h d, b p h d -> h"))
            else:
                width_corrupt = corrupted.shape[1]
                picked = slice(width_corrupt - width - shift, width_corrupt - shift)
                per_position: Float[Tensor, "batch width d_model"] = clean_cache[name][:, aligned] - corrupted[:, picked]
                rows.append(einops.einsum(per_position.cpu().double(), gradient[:, picked].cpu().double(),
                                          "b w d, b w d -> w"))  # float64 on the CPU: MPS has none
        results[site] = Patching(
            metric=(base + torch.stack(rows)).float().cpu(), layers=chosen, axis="head" if site == "z" else "pos",
            site=site, clean=float(metric(clean_logits)), corrupt=base,
        )
    return results


# ---------------------------------------------------------------------------------------------
# Logit lens


def _lens_cache_names(model: Any) -> list[str]:
    last = model.cfg.n_layers - 1
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)] + [
        f"blocks.{last}.hook_resid_post"
    ]


def _output_transform(model: Any) -> Callable[[Tensor], Tensor]:
    """The model's own map from its unembedding to its output logits: a ``TransformerBridge``'s
    ``adapter.apply_output_logits_transform`` (the shared soft cap, and whatever its architecture adds:
    Granite's division by ``logits_scaling``, Cohere's ``logit_scale``), as TransformerLens's own logit
    lens calls it; a ``HookedTransformer``'s soft cap (Gemma 2's c·tanh(x / c)), as its forward applies it."""
    transform = None if is_hooked(model) else getattr(getattr(model, "adapter", None), "apply_output_logits_transform",
                                                      None)
    if callable(transform):
        return transform
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return lambda logits: apply_softcap(logits, cap)


def _float_tolerance(dtype: torch.dtype, scale: float) -> float:
    """What float rounding in ``dtype`` may move a sum of terms of total size ``scale`` by (float32: 1e-5
    relative, with 1 as the floor of the scale)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return 100 * max(eps, torch.finfo(torch.float32).eps) * (1.0 + scale)


@in_eval_mode
@torch.no_grad()
def logit_lens(model: Any, statements: Statements, batch_size: int = 64) -> pd.DataFrame:
    """The answer's first token read off the residual stream before each layer and after the last.

    At stage l (l = 0..n_layers − 1: the input of layer l; l = n_layers: the final stream) the
    residual r_l at the last prompt position goes through the *final* norm with statistics
    recomputed from r_l itself (``accumulated_resid(apply_ln=True)``), then the unembedding and the
    model's own output transform: its logit soft-cap, if any (Gemma 2's c·tanh(x / c)), and on a
    ``TransformerBridge`` whatever its architecture adapter applies after the unembedding (Granite divides by
    ``logits_scaling``, Cohere multiplies by ``logit_scale``): ``logits_l = transform(unembed(ln_final(r_l)))``.
    The last stage is exactly the model's output, and is checked against the logits of the same run: a
    model whose output is something else is refused. Earlier stages are the usual logit-lens approximation
    (those layers never wrote for the unembedding).

    Columns: statement (row of the input), fact, direction, split, answer_token, layer (the
    stage l), stage ("0_pre", ..., "final_post"), logprob (log p(answer token)), rank (1 + the
    number of vocabulary tokens with a higher logit).
    """
    examples = as_examples(statements)
    _check_ids(model, examples, "logit lens")
    transform = _output_transform(model)
    frames = []
    for rows in _by_prompt_length(examples, batch_size):
        chunk = [examples[r] for r in rows]
        answers = _first_answer_tokens(model, chunk)
        output, cache = model.run_with_cache(_prompts(model, chunk), names_filter=_lens_cache_names(model))
        resid, stages = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
        logits = transform(model.unembed(resid)).float()
        _check_last_stage(model, logits[-1], output[:, -1], chunk)
        chosen = logits.gather(-1, answers.expand(len(stages), -1)[..., None])
        logprob = chosen[..., 0] - logits.logsumexp(-1)
        rank = 1 + (logits > chosen).sum(-1)
        frames.append(pd.DataFrame({
            "statement": np.repeat(rows, len(stages)),
            "fact": np.repeat([e.fact for e in chunk], len(stages)),
            "direction": np.repeat([e.direction for e in chunk], len(stages)),
            "split": np.repeat([e.split for e in chunk], len(stages)),
            "answer_token": np.repeat(answers.tolist(), len(stages)),
            "layer": np.tile(np.arange(len(stages)), len(chunk)),
            "stage": np.tile(stages, len(chunk)),
            "logprob": einops.rearrange(logprob, "stage batch -> (batch stage)").cpu().numpy(),
            "rank": einops.rearrange(rank, "stage batch -> (batch stage)").cpu().numpy(),
        }))
    return _in_input_order(frames)


def _check_last_stage(
    model: Any, lens: Float[Tensor, "batch d_vocab"], output: Float[Tensor, "batch d_vocab"], examples: Sequence[Example]
) -> None:
    """Refuse a lens whose last stage is not the model's output logits of the same run (an output transform
    the lens does not apply)."""
    deviation = (lens.float() - output.float()).abs().amax(-1).nan_to_num(nan=float("inf"))
    tolerance = _float_tolerance(output.dtype, float(output.float().abs().max()))
    worst = int(deviation.argmax())
    if not float(deviation[worst]) <= tolerance:
        raise ValueError(
            f"{model.cfg.model_name}: the logit lens's last stage differs from the model's own output logits by "
            f"{float(deviation[worst]):.3g} ({_label(examples[worst])}; float rounding allows {tolerance:.2g}): the "
            "model transforms its final residual stream into logits in a way the lens does not reproduce, so its "
            "stages would not be the model's, and the lens is refused")


__all__ = [
    "PATCH_SITES", "AttributionSite", "PatchSite", "Patching", "Statements", "as_examples", "attribution_patch",
    "check_attribution_architecture", "check_attribution_readable", "direct_logit_attribution",
    "forward_reverse_pairs", "logit_lens", "patch_heads", "patch_residual",
]
