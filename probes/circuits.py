"""Effective weights restricted to the entities in play: where the asymmetry lives.

For a fact (A, B) every circuit M gives two entries: M[A, B] ("attending to / reading A
raises B") and M[B, A]. The circuits (docs/SCIENCE.md §3; Zhu et al.'s Y and Z):

* ``direct``: W_E · W_U, the token's own embedding read by the unembedding;
* ``ov`` per layer and head: W_E · W_V^{l,h} · W_O^{l,h} · W_U (Y: attending to s raises t);
* ``qk`` per layer and head: W_E · W_Q^{l,h} · W_K^{l,h}ᵀ · W_Eᵀ (Z: query s attends to key t);
* ``theta`` for the bilinear model: u_sᵀ Θ u_t.

Asymmetry index. Each entry is compared with the same row's entries for K random control
answers of the same kind (other objects for M[A, ·], other subjects for M[B, ·]; never an entity a fact
pairs with the given one, whose entry may have been trained: x's own y for Y[x, z] in a chain world; nor
the given one itself, whose entry M[y, y] a copying head makes large):
``z[A,B] = (M[A,B] − mean_c M[A,c]) / std_c M[A,c]``, and the index is
``z[A,B] − z[B,A]``: large when only A → B was learnt, ≈ 0 when both or neither were.

Cost. Per layer, the entities are projected through all heads at once (one matrix product
per factor, computed once per key/value head under grouped-query attention), then every fact
reads its K + 1 entries per head from the gathered factor rows, a chunk of rows at a time:
time O(N·d·n_heads·d_head + N·K·n_heads·d_head) per layer and memory O(N·n_heads·d_head),
linear in N. Nothing of size d_vocab × d_vocab, nor even N × N, is built. The factors come
from TransformerLens's ``model.OV`` / ``model.QK`` ``FactoredMatrix``, whose key/value heads
are repeated to the query heads (``repeat_interleave``: query head h reads key/value head
h // (n_heads / n_key_value_heads)).

Approximations (stated, not hidden): norms are folded as their learned scale and, for
LayerNorm, the centring projection (on the unembedding side only where the final norm is a
LayerNorm too: an RMS final norm under LayerNorm blocks, ``cfg.final_rms``, does not centre). That
includes the norms inside the circuit: the one a sandwich-norm block (Gemma 2/3) applies to the
attention output (OV: W_V W_O then its scale) and the per-head query and key norms (Gemma 3, Qwen 3: QK
between W_Q and W_Kᵀ); their per-dimension scales change which answers an entity favours, so leaving them
out moved z-scores by up to 21 on Gemma 3 270M. The per-token 1/σ normalisation, biases, rotary
positions (QK is the score at relative distance 0, before any soft cap: Gemma 2's tanh) and all
nonlinear paths through earlier layers are left out, so for layers > 0 the OV and QK entries are the
embedding-to-head ("first-order") circuits. Leaving 1/σ out changes no OV or direct-path z-score (a row's
source, and the readout, have one σ for every answer it compares), but it does change QK's: a row compares
keys, each of its own σ (and, under a key norm, its own per-head σ_k), so a QK entry is the circuit's
W_E W_Q W_Kᵀ W_Eᵀ entry, the field's (TransformerLens's ``model.QK``), not the attention score the model
computes, and its z-score ranks keys partly by their norms.

Entities of several tokens. An entity is read as the mean of its tokens' vectors, on either
side: by bilinearity ``M[mean_i s_i, mean_j t_j] = mean_{i,j} M[s_i, t_j]``, the entry averaged
over every (source token, target token) pair, i.e. what a head attending uniformly over A's
tokens writes towards each of B's tokens. For one-token entities this is the token's own entry.
(Reading one token instead fails on natural language: every description "the …" would be read
as " the", so the controls would all be equal and the z-score undefined.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Iterator, Sequence

import einops
import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from facts.schema import FactError, FactSet
from models.backend import (POST_NORM_ARCHITECTURES, architecture_of, embedding_scale, final_norm_centres, is_hooked,
                            norm_centres, norm_scale)
from models.bilinear import BilinearModel
from models.scoring import in_eval_mode
from probes.logits import check_fact_tokenizer

CIRCUITS = ("direct", "ov", "qk")
EntityIds = Callable[[str], Sequence[int]]


@dataclass
class Circuit:
    """Effective matrices of one kind in one layer, one per head, in factored form:
    ``M_h[s, t] = source[s, h] · target[t, h]``.

    ``source`` and ``target`` are indexed by entity (``EntityTokens.index_of``); ``heads``
    names the head axis (``[None]`` for the direct path and Θ, which have no heads).
    """

    kind: str
    layer: int | None
    heads: list[int | None]
    source: Float[Tensor, "n_entities head rank"]
    target: Float[Tensor, "n_entities head rank"]


@dataclass
class EntityTokens:
    """Every entity's token ids, deduplicated as sequences, in the bag form of
    ``torch.nn.functional.embedding_bag``: the distinct sequences' tokens concatenated in
    ``bags`` (positions in ``token_ids``, the distinct token ids in use), sequence s starting at
    ``offsets[s]``. ``index_of`` maps an entity to its sequence."""

    token_ids: Int[Tensor, " n_tokens"]
    bags: Int[Tensor, " n_positions"]
    offsets: Int[Tensor, " n_entities"]
    index_of: dict[str, int]

    def means(self, vectors: Float[Tensor, "n_tokens d"]) -> Float[Tensor, "n_entities d"]:
        """Each sequence's mean vector, given one vector per id of ``token_ids``."""
        return torch.nn.functional.embedding_bag(self.bags.to(vectors.device), vectors,
                                                 self.offsets.to(vectors.device), mode="mean")


def _entity_tokens(facts: FactSet, entity_ids: EntityIds, d_vocab: int) -> EntityTokens:
    sequences: dict[tuple[int, ...], int] = {}
    index_of = {}
    for entity in facts.entities():
        ids = tuple(entity_ids(entity))
        if not ids:
            raise FactError(f"entity {entity!r} has no tokens")
        bad = [i for i in ids if not 0 <= i < d_vocab]
        if bad:
            raise FactError(f"entity {entity!r}: token id {bad[0]} is outside the model's vocabulary of {d_vocab}")
        index_of[entity] = sequences.setdefault(ids, len(sequences))
    position_of: dict[int, int] = {}
    bags = [position_of.setdefault(i, len(position_of)) for ids in sequences for i in ids]
    lengths = torch.tensor([len(ids) for ids in sequences])
    offsets = torch.cumsum(lengths, 0) - lengths
    return EntityTokens(torch.tensor(list(position_of)), torch.tensor(bags), offsets, index_of)


def _norm_scale(model, norm: torch.nn.Module | None) -> Tensor | None:
    """The learned scale of a LayerNorm/RMSNorm (None once folded into the weights): its weight w, or 1 + w for a
    norm that stores the offset from 1 (:func:`models.backend.norm_scale`), detached."""
    scale = None if norm is None else norm_scale(model, norm)
    return None if scale is None else scale.detach()


def _prepare(model, vectors: Float[Tensor, "n d"], norm: torch.nn.Module | None, centre: bool) -> Float[Tensor, "n d"]:
    """What a norm does to a residual vector, minus the 1/σ scale: centre, then scale."""
    if centre:
        vectors = vectors - vectors.mean(-1, keepdim=True)
    scale = _norm_scale(model, norm)
    return vectors * scale if scale is not None else vectors


def _unembedding_directions(model, tokens: EntityTokens) -> Float[Tensor, "entity d_model"]:
    """ũ_t: each entity's (mean) unembedding column as the residual stream sees it, the final norm's
    1/σ aside: scaled by that norm's weight and, where it centres (a LayerNorm, not an RMS final norm:
    :func:`models.backend.final_norm_centres`), centred: o · P·(w ⊙ u) = P·o · (w ⊙ u), P being symmetric."""
    W_U = model.W_U.detach()
    final = _prepare(model, tokens.means(W_U[:, tokens.token_ids].T.float()), getattr(model, "ln_final", None), False)
    return final - final.mean(-1, keepdim=True) if final_norm_centres(model) else final


def check_layer_head(model, layers: Sequence[int] | None, heads: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """Validate requested layers and heads against the model, naming the valid range."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(n_layers)) if layers is None else list(layers)
    heads = list(range(n_heads)) if heads is None else list(heads)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
    for head in heads:
        if not 0 <= head < n_heads:
            raise ValueError(f"head {head} is out of range: the model has heads 0..{n_heads - 1}")
    return layers, heads


def _shared_heads(model, heads: Sequence[int]) -> list[int]:
    """For each query head, the first query head that reads the same key/value head (itself
    without grouped-query attention): TransformerLens repeats key/value heads with
    ``repeat_interleave``, so query head h reads key/value head h // group."""
    group = model.cfg.n_heads // (getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)
    return [head - head % group for head in heads]


def _project(vectors: Float[Tensor, "n d_model"], weights: Float[Tensor, "head d_model rank"],
             heads: Sequence[int], scale: Float[Tensor, " d_model"] | None = None) -> Float[Tensor, "n head rank"]:
    """``(vectors ⊙ scale) @ weights[h]`` for every h in ``heads``: one matrix product for the
    distinct heads (under grouped-query attention, heads sharing a key/value matrix are computed
    once), with the norm's ``scale`` folded into the weights' rows rather than into the N vectors."""
    distinct = list(dict.fromkeys(heads))
    stacked = einops.rearrange(weights[distinct].float(), "head d_model rank -> d_model (head rank)")
    if scale is not None:
        stacked = stacked * scale.float()[:, None]
    product = einops.rearrange(vectors @ stacked, "n (head rank) -> n head rank", head=len(distinct))
    if distinct == list(heads):
        return product
    return product[:, [distinct.index(head) for head in heads]]


def check_circuits_readable(model) -> None:
    """Refuse a model whose circuits this module cannot read (:func:`check_circuits_architecture`), one with a block
    that has no attention or no norm before it (RecurrentGemma's recurrent blocks), one whose norms before attention
    or before the unembedding centre where its config says they do not, or the reverse (measured on a bridge's
    modules: :func:`models.backend.norm_centres`; the circuits centre by the config), or one of whose
    norms before attention scales by neither its stored weight w nor 1 + w (:func:`models.backend.norm_scale`, which
    measures it on a bridge: Gemma 1/2/3's Hugging Face norms store w and scale by 1 + w, on either
    TransformerLens line; a ``HookedTransformer``'s converter adds the 1 itself). Asked before any circuit is read,
    so a refusal leaves nothing half written."""
    if isinstance(model, BilinearModel):
        return
    name, architecture = model.cfg.model_name, architecture_of(model)
    check_circuits_architecture(name, architecture)
    blocks_centre = str(getattr(model.cfg, "normalization_type", "")).startswith("LN")
    norms = [("ln_final", getattr(model, "ln_final", None), final_norm_centres(model))]
    for layer, block in enumerate(model.blocks):
        missing = [part for part in ("ln1", "attn") if getattr(block, part, None) is None]
        if missing:
            raise ValueError(f"{name}: layer {layer} of this {architecture or 'model'} has no {' or '.join(missing)} "
                             "(an attention layer and the norm before it), so its OV/QK circuits cannot be read")
        _norm_scale(model, block.ln1)
        norms.append((f"blocks.{layer}.ln1", block.ln1, blocks_centre))
    for where, norm, read_as_centring in norms:
        centres = None if norm is None else norm_centres(norm)
        if centres is not None and centres != read_as_centring:
            raise ValueError(f"{name}: its norm {where} {'subtracts' if centres else 'does not subtract'} the mean of "
                             f"its input, but its config (normalization_type {model.cfg.normalization_type!r}) says "
                             "otherwise, so the circuits would centre the residual stream where it does not: refused")


EMBEDDING_NORM_ARCHITECTURES = ("BloomForCausalLM",)
"""Architectures whose residual stream starts from a normalised embedding (BLOOM's ``word_embeddings_layernorm``):
the rows of W_E are not what the heads read."""


UNREAD_RESIDUAL_ARCHITECTURES = {
    "Gemma4": "multiplies its residual stream by a learned number after each layer and normalises each head's values",
    "Gemma3n": "runs several residual streams that it predicts and corrects between layers (AltUp), and adds "
               "per-layer input embeddings",
}
"""transformers class-name prefixes (their causal LMs and multimodal models alike) whose residual stream is more than
the sum the circuits read, one sublayer's output after another: what an earlier layer writes reaches the
unembedding and the later heads otherwise (Gemma 4's ``layer_scalar`` and ``v_norm``; Gemma 3n's AltUp)."""


def check_circuits_architecture(name: str, architecture: str) -> None:
    """The refusals of :func:`check_circuits_readable` that the architecture alone decides, from ``architecture``, the
    transformers class a model's files declare, on every backend: asked before any weight is read. OLMo 2 and 3
    (:data:`~models.backend.POST_NORM_ARCHITECTURES`), BLOOM (:data:`EMBEDDING_NORM_ARCHITECTURES`), Gemma 4 and
    Gemma 3n (:data:`UNREAD_RESIDUAL_ARCHITECTURES`)."""
    for prefix, why in UNREAD_RESIDUAL_ARCHITECTURES.items():
        if architecture.startswith(prefix):
            raise ValueError(f"{name}: {architecture} {why}, which the OV/QK circuits do not read: they would be "
                             "wrong and are refused on every backend")
    if architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(
            f"{name}: {architecture} normalises each attention layer's output, not its input, so "
            "the norm this probe reads as the scale of the heads' input (ln1) is the one after them: its OV/QK "
            "circuits would be wrong and are refused on every backend")
    if architecture in EMBEDDING_NORM_ARCHITECTURES:
        raise ValueError(
            f"{name}: {architecture} normalises its token embeddings before the first layer, so the rows of W_E "
            "that this probe reads as the entities' residual states are not what the heads read: its OV/QK "
            "circuits and direct path would be wrong and are refused on every backend")


@torch.no_grad()
def transformer_circuits(
    model, tokens: EntityTokens, kinds: Sequence[str] = CIRCUITS,
    layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
) -> Iterator[list[Circuit]]:
    """Direct, per-head OV and per-head QK circuits of a HookedTransformer or TransformerBridge.

    Yields one block per list: the direct path, then each layer's OV and QK circuits over the
    chosen heads (the table lists a block head by head: OV of head h, QK of head h, ...).
    """
    unknown = set(kinds) - set(CIRCUITS)
    if unknown:
        raise ValueError(f"unknown circuit kind(s) {sorted(unknown)}; choose from {CIRCUITS}")
    check_circuits_readable(model)
    layers, heads = check_layer_head(model, layers, heads)
    shared = _shared_heads(model, heads)
    W_E = model.W_E.detach()
    final = _unembedding_directions(model, tokens)
    embedded = tokens.means(W_E[tokens.token_ids].float()) * embedding_scale(model)
    # what each layer's first norm makes of the embedding, its 1/σ scale aside: centred under LayerNorm blocks
    source = _prepare(model, embedded, None, str(getattr(model.cfg, "normalization_type", "")).startswith("LN"))
    if "direct" in kinds:  # the embedding reaches the final norm as it is (its centring, if any, is in `final`)
        yield [Circuit("direct", None, [None], (source if final_norm_centres(model) else embedded)[:, None],
                       final[:, None])]
    stacked = {} if is_hooked(model) else {"ov": model.OV if "ov" in kinds else None,
                                            "qk": model.QK if "qk" in kinds else None}
    for layer in layers:
        scale = _norm_scale(model, getattr(model.blocks[layer], "ln1", None))
        block = []
        if "ov" in kinds:
            W_V, W_O = _layer_factors(model, stacked, "ov", layer)
            written = _post_norm_scale(model, layer, "attention")  # (s ⊙ o)·ũ = o·(s ⊙ ũ)
            block.append(Circuit("ov", layer, heads, _project(source, W_V, shared, scale),
                                 _project(final if written is None else final * written, W_O.transpose(-2, -1),
                                          heads)))
        if "qk" in kinds:
            W_Q, W_Kt = _layer_factors(model, stacked, "qk", layer)
            query_scale, key_scale = _qk_norm_scales(model, layer)
            queries = _project(source, W_Q, heads, scale)
            keys = _project(source, W_Kt.transpose(-2, -1), shared, scale)
            block.append(Circuit("qk", layer, heads, queries if query_scale is None else queries * query_scale,
                                 keys if key_scale is None else keys * key_scale))
        if block:  # none when only the direct path is asked for
            yield block


POST_NORMS = {"attention": "ln1_post", "mlp": "ln2_post"}
"""The norm a sandwich-norm block (Gemma 2/3) applies to each sublayer's output before adding it to the residual
stream, by its module name in the block (a HookedTransformer's and a TransformerBridge's alike)."""


def _post_norm_scale(model, layer: int, sublayer: str) -> Float[Tensor, " d_model"] | None:
    """The learned scale of the norm after layer ``layer``'s attention or MLP output (:data:`POST_NORMS`), or None
    where the block has none. A head's (or the MLP's) output o reaches the residual stream as s ⊙ o / σ(Σ o): the
    scale s is per dimension, so it changes which answers o favours and is applied; 1/σ is one number per
    position, the same for every answer a row compares, and is left out as the input norms' is."""
    block = model.blocks[layer]
    norm = getattr(block, POST_NORMS[sublayer], None)
    if norm is None:
        if getattr(model.cfg, "use_normalization_before_and_after", False):
            raise ValueError(f"{model.cfg.model_name}: layer {layer} normalises its {sublayer} output, but its "
                             f"block has no {POST_NORMS[sublayer]} to read the norm's scale from")
        return None
    scale = _norm_scale(model, norm)
    if scale is None or scale.shape != (model.cfg.d_model,):
        raise ValueError(f"{model.cfg.model_name}: the scale of layer {layer}'s {POST_NORMS[sublayer]} cannot be read "
                         f"as one weight per residual dimension ({None if scale is None else tuple(scale.shape)})")
    return scale.float()


def _qk_norm_scales(model, layer: int) -> tuple[Float[Tensor, " d_head"] | None, Float[Tensor, " d_head"] | None]:
    """The learned scales of the norms a layer applies to each head's query and key (Gemma 3's, Qwen 3's
    ``q_norm``/``k_norm``), or (None, None). The query and key are normalised per head, so the score is
    (s_q ⊙ q / σ_q) · (s_k ⊙ k / σ_k): the per-dimension scales change which keys a query favours and are applied
    to the factors' rank axis; the 1/σ's are left out, as the input norm's is (σ_q is one number per row; σ_k is
    each key's own, so the entries are the circuit's, not the scores: the module docstring)."""
    attention = model.blocks[layer].attn
    norms = [getattr(attention, name, None) for name in ("q_norm", "k_norm")]
    if all(norm is None for norm in norms):
        if getattr(model.cfg, "use_qk_norm", False):
            raise ValueError(f"{model.cfg.model_name}: layer {layer} normalises queries and keys, but its attention "
                             "has no q_norm/k_norm to read the scales from")
        return None, None
    scales = [_norm_scale(model, norm) for norm in norms]
    for name, scale in zip(("q_norm", "k_norm"), scales):
        if scale is None or scale.shape != (model.cfg.d_head,):
            raise ValueError(f"{model.cfg.model_name}: the scale of layer {layer}'s {name} cannot be read as one "
                             f"weight per head dimension ({None if scale is None else tuple(scale.shape)}), so "
                             "its QK circuits are refused")
    return scales[0].float(), scales[1].float()


def _layer_factors(model, stacked: dict, kind: str, layer: int) -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s OV factors (W_V, W_O) or QK factors (W_Q, W_Kᵀ), per query head (key/value
    heads repeated under grouped-query attention): ``model.OV`` / ``model.QK``'s A and B at that layer.
    A HookedTransformer's are read from the layer's own attention (the same tensors, one layer at a
    time: TransformerLens's stacks of every layer are 190 MiB for Gemma 3 270M); a bridge's from the
    stacks made once (``stacked``)."""
    if kind in stacked:
        matrix = stacked[kind]
        if matrix.A.shape[0] != model.cfg.n_layers:  # a hybrid model's stack holds its attention blocks alone
            raise ValueError(f"{model.cfg.model_name}: model.{kind.upper()} stacks {matrix.A.shape[0]} attention "
                             f"layers of {model.cfg.n_layers} blocks, so its layer {layer} is not block {layer}; "
                             f"circuits of a model with blocks without attention are not read")
        return matrix.A[layer].detach(), matrix.B[layer].detach()
    attention = model.blocks[layer].attn
    if kind == "ov":
        return attention.W_V.detach(), attention.W_O.detach()
    return attention.W_Q.detach(), attention.W_K.detach().transpose(-2, -1)


def _require_single_tokens(facts: FactSet, entity_ids: EntityIds) -> None:
    """The bilinear model maps one context token to one next token: Θ has no reading of an entity
    of several tokens, so such a fact set is refused rather than read by one of its tokens."""
    for entity in facts.entities():
        ids = list(entity_ids(entity))
        if len(ids) != 1:
            raise FactError(f"entity {entity!r} has {len(ids)} tokens; the bilinear model's Θ relates single "
                            f"tokens (train and probe it on a k = 1 world)")


def bilinear_circuits(model: BilinearModel, tokens: EntityTokens) -> Iterator[list[Circuit]]:
    """The bilinear model's only circuit: M[s, t] = u_sᵀ Θ u_t."""
    U = tokens.means(model.U.detach().float()[tokens.token_ids])
    yield [Circuit("theta", None, [None], (U @ model.theta.detach().float())[:, None], U[:, None])]


def _controls(pool: Sequence[str], answer: str, index_of: dict[str, int], k: int,
              generator: torch.Generator, partners: Collection[str] = ()) -> list[str]:
    """K other entities of the answer's kind whose tokens differ from the answer's, none of the given entity's
    ``partners`` (every entity a fact pairs it with, the answer among them: in a chain world x's own y is no
    control for Y[x, z], its entry was trained).

    Drawn by rejection from random picks (O(K) per fact, so N facts cost O(N·K), not O(N²));
    without replacement when the kind is large enough; otherwise every eligible entity in turn, the kind's
    shuffled order repeated until K are drawn, so each is a control ⌊K/m⌋ or ⌈K/m⌉ times and the controls'
    mean and spread are the kind's own (a fine-tune's 16 people against K = 64: each of the 15 others 4 or
    5 times, where independent draws had weighted them 0 to 10 times at random). When every
    other entity of the kind has the answer's tokens (two spellings the tokenizer merges), the
    entry cannot single the answer out: the controls then equal it, their spread is 0 and the
    z-score comes out NaN rather than a made-up number.
    """
    chosen: dict[str, None] = {}
    for index in torch.randint(len(pool), (8 * k,), generator=generator).tolist():
        entity = pool[index]
        if entity != answer and index_of[entity] != index_of[answer] and entity not in partners:
            chosen.setdefault(entity, None)
            if len(chosen) == k:
                return list(chosen)
    others = [e for e in pool if e != answer and e not in partners]  # small or degenerate kind: scan it once
    if not others:
        why = ("it is the only entity of its kind" if all(e == answer for e in pool) else
               "every other entity of its kind is the given entity or another right answer for it, so none can be "
               "a control")
        raise FactError(f"no control answers for {answer!r}: {why}")
    candidates = [e for e in others if index_of[e] != index_of[answer]] or others
    rounds = -(-k // len(candidates))  # ⌈k / m⌉ shuffles of the whole kind
    order = torch.cat([torch.randperm(len(candidates), generator=generator) for _ in range(rounds)])[:k]
    return [candidates[i] for i in order.tolist()]


def _rows(facts: FactSet, tokens: EntityTokens, n_controls: int, seed: int) -> tuple[Tensor, Tensor]:
    """For every fact, the forward row (A; B + controls) then the reverse row (B; A + controls); a row's controls
    are never an entity a fact pairs with its given one (:func:`_controls`), nor the given one itself: where
    an entity is both a given and an answer (a chain world's y), its own entry M[y, y] is what a copying head
    writes largest, and as a control it inflated the row's spread (31 of 150 rows of a chain world drew it)."""
    if n_controls < 2:
        raise ValueError(f"n_controls must be ≥ 2 to estimate a spread, got {n_controls}")
    generator = torch.Generator().manual_seed(seed)
    objects = list(dict.fromkeys(f.object for f in facts))
    subjects = list(dict.fromkeys(f.subject for f in facts))
    partners: dict[str, set[str]] = {}
    for fact in facts:
        partners.setdefault(fact.subject, set()).add(fact.object)
        partners.setdefault(fact.object, set()).add(fact.subject)
    sources, targets = [], []
    for fact in facts:
        for given, answer, pool in ((fact.subject, fact.object, objects), (fact.object, fact.subject, subjects)):
            controls = _controls(pool, answer, tokens.index_of, n_controls, generator, partners[given] | {given})
            sources.append(tokens.index_of[given])
            targets.append([tokens.index_of[e] for e in (answer, *controls)])
    return torch.tensor(sources), torch.tensor(targets)


def _entries_and_z(circuit: Circuit, sources: Int[Tensor, " rows"], targets: Int[Tensor, "rows k1"],
                  budget: int = 1 << 20) -> tuple[Float[Tensor, "rows head"], Float[Tensor, "rows head"]]:
    """Per head h, the entry ``M_h[source_i, target_i0]`` of every row i and its z-score against the
    row's controls ``M_h[source_i, target_ij]``, j ≥ 1.

    Rows are read ``budget // ((K+1)·heads·rank)`` at a time into one reused buffer, so the
    gathered factor rows stay ≲ ``budget`` floats whatever N is (a fresh large temporary per
    chunk costs page faults and cache misses: 3× slower); only the (rows × heads) results are kept.
    """
    _, n_heads, rank = circuit.target.shape
    k1 = targets.shape[1]
    step = max(1, budget // (k1 * n_heads * rank))
    device = circuit.target.device
    sources, targets = sources.to(device), targets.to(device)
    buffer = torch.empty(min(step, len(sources)) * k1, n_heads, rank, device=device)
    entries = torch.empty(len(sources), n_heads, device=device)
    z = torch.empty(len(sources), n_heads, device=device)
    for start in range(0, len(sources), step):
        rows = slice(start, start + step)
        wanted = targets[rows].reshape(-1)
        answers = torch.index_select(circuit.target, 0, wanted, out=buffer[: len(wanted)])
        products = answers.view(-1, k1, n_heads, rank).mul_(circuit.source[sources[rows]][:, None])
        chunk = products.sum(-1)
        entries[rows] = chunk[:, 0]
        z[rows] = _zscores(chunk)
    return entries, z


def _zscores(entries: Float[Tensor, "rows k1 head"]) -> Float[Tensor, "rows head"]:
    """(entry − mean of controls) / std of controls (unbiased, two-pass); NaN where the controls
    do not vary. Written out: ``Tensor.std`` over a middle axis is 7× slower on CPU."""
    controls = entries[:, 1:]
    centre = controls.mean(1)
    spread = (controls - centre[:, None]).square().sum(1).div(controls.shape[1] - 1).sqrt()
    z = (entries[:, 0] - centre) / spread
    return torch.where(spread > 1e-6 * controls.abs().amax(1).clamp(min=1e-30), z, torch.nan)


def circuit_table(
    model,
    facts: FactSet,
    entity_ids: EntityIds,
    kinds: Sequence[str] = CIRCUITS,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    n_controls: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (fact, circuit): entries [A,B] and [B,A], their z-scores and the asymmetry index.

    ``entity_ids`` maps an entity to its token ids (e.g. ``TokenVocab.entity_ids``).
    Columns: fact, group, forward, reverse, circuit, layer, head, entry_ab, entry_ba, z_ab,
    z_ba, asymmetry.
    """
    d_vocab = model.d_vocab if isinstance(model, BilinearModel) else model.cfg.d_vocab
    if isinstance(model, BilinearModel):
        _require_single_tokens(facts, entity_ids)
    check_fact_tokenizer(model, entity_ids)
    tokens = _entity_tokens(facts, entity_ids, d_vocab)
    sources, targets = _rows(facts, tokens, n_controls, seed)
    blocks = (bilinear_circuits(model, tokens) if isinstance(model, BilinearModel)
              else transformer_circuits(model, tokens, kinds, layers, heads))
    names, layer_of, head_of, entries_ab, entries_ba, z_ab, z_ba = [], [], [], [], [], [], []
    for block in blocks:
        read = [_entries_and_z(circuit, sources, targets) for circuit in block]
        for column, head in enumerate(block[0].heads):
            for circuit, (entries, z) in zip(block, read):
                names.append(circuit.kind)
                layer_of.append(circuit.layer)
                head_of.append(head)
                entries_ab.append(entries[0::2, column])
                entries_ba.append(entries[1::2, column])
                z_ab.append(z[0::2, column])
                z_ba.append(z[1::2, column])
    n, k = len(facts), len(names)
    fact_of_row, circuit_of_row = np.tile(np.arange(n), k), np.repeat(np.arange(k), n)
    table = pd.DataFrame({
        "fact": fact_of_row,
        "group": _categorical([f.group for f in facts], fact_of_row),
        "forward": _categorical([f.forward for f in facts], fact_of_row),
        "reverse": _categorical([f.reverse for f in facts], fact_of_row),
        "circuit": _categorical(names, circuit_of_row),
        "layer": _integers(layer_of, circuit_of_row),
        "head": _integers(head_of, circuit_of_row),
        "entry_ab": torch.cat(entries_ab).cpu().numpy(),
        "entry_ba": torch.cat(entries_ba).cpu().numpy(),
        "z_ab": torch.cat(z_ab).cpu().numpy(),
        "z_ba": torch.cat(z_ba).cpu().numpy(),
    })
    table["asymmetry"] = table.z_ab - table.z_ba
    return table


def _categorical(values: Sequence[str | None], index: np.ndarray) -> pd.Categorical:
    """``values[index]`` as a categorical (None → missing), with no Python object per row."""
    once = pd.Categorical(np.array(values, dtype=object))
    return pd.Categorical.from_codes(once.codes[index], dtype=once.dtype)


def _integers(values: Sequence[int | None], index: np.ndarray) -> pd.arrays.IntegerArray:
    """``values[index]`` as nullable Int64 (None → missing)."""
    missing = np.array([v is None for v in values], dtype=bool)
    numbers = np.array([-1 if v is None else v for v in values], dtype=np.int64)
    return pd.arrays.IntegerArray(numbers[index], missing[index])


def directed_entries(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`circuit_table` in long form: one row per (fact, circuit, direction in play).

    Direction ``forward`` reads the entry M[A, B] (given A, answer B) and its z-score,
    ``reverse`` reads M[B, A]. Each row carries its own direction's ``split`` and the
    opposite direction's (``partner_split``, None when not in play): a fact trained only as
    A → B gives a row (forward, train, partner heldout) and a row (reverse, heldout, partner
    train). Columns: fact, group, circuit, layer, head, direction, split, partner_split, entry, z.
    """
    keys = ["fact", "group", "circuit", "layer", "head"]
    forward = table[keys].assign(direction="forward", split=table.forward.astype(object),
                                 partner_split=table.reverse.astype(object), entry=table.entry_ab, z=table.z_ab)
    reverse = table[keys].assign(direction="reverse", split=table.reverse.astype(object),
                                 partner_split=table.forward.astype(object), entry=table.entry_ba, z=table.z_ba)
    long = pd.concat([forward, reverse], ignore_index=True)
    long = long[long.split.notna()].reset_index(drop=True)
    long["partner_split"] = long.partner_split.where(long.partner_split.notna(), None)
    return long


# ---------------------------------------------------------------------------------------------
# What fine-tuning changed, read at the entities


WEIGHT_CHANGES = ("delta_mlp", "delta_ov")


@in_eval_mode
@torch.no_grad()
def _given_states(model, facts: FactSet, statements, rows: Sequence[tuple[int, str]], layers: Sequence[int]
                  ) -> dict[str, Float[Tensor, "rows d_model"]]:
    """Per hook ``blocks.{l}.hook_resid_pre`` / ``hook_resid_mid``, the residual stream at the given entity's
    last prompt token (:func:`probes.tracing.given_positions`) of every statement in ``rows`` (NaN for a
    statement not in play); prompts of one length run as one batch."""
    from probes.tracing import given_positions

    names = [f"blocks.{layer}.hook_resid_{kind}" for layer in layers for kind in ("pre", "mid")]
    states = {name: torch.full((len(rows), model.cfg.d_model), torch.nan, device=model.cfg.device) for name in names}
    by_length: dict[int, list[tuple[int, tuple[int, ...], int]]] = {}
    for row, (index, direction) in enumerate(rows):
        if facts[index].split(direction) is None:
            continue
        example = statements.example(facts, index, direction)
        position = given_positions(statements, facts, index, direction, example)[-1]
        by_length.setdefault(len(example.prompt), []).append((row, example.prompt, position))
    for group in by_length.values():
        for start in range(0, len(group), 256):
            chunk = group[start : start + 256]
            prompts = torch.tensor([prompt for _, prompt, _ in chunk], device=model.cfg.device)
            _, cache = model.run_with_cache(prompts, names_filter=names)
            where = torch.tensor([position for _, _, position in chunk])
            chosen = torch.tensor([row for row, _, _ in chunk])
            for name in names:
                states[name][chosen] = cache[name][torch.arange(len(chunk)), where].float()
    return states


def _delta_mlp(before_mlp: torch.nn.Module, after_mlp: torch.nn.Module, x: Float[Tensor, "rows d_model"]
               ) -> Float[Tensor, "rows d_model"]:
    """First-order change of the MLP's output at the inputs ``x`` when its weights move from before to after:
    the Jacobian-vector product d/dε MLP_{W + εΔW}(x) at ε = 0 (``torch.func.jvp``).

    ``tie_weights=False``: a TransformerLens 4 bridge reaches each linear layer under two module paths
    (``_original_component.fc_in`` and its alias ``in``); with ties on, ``functional_call`` swaps the one
    parameter slot once per path and restores it from the second swap, which leaves the jvp's dead
    wrappers in ``before_mlp`` (PyTorch issue #164759). Swapping only the deduplicated names of
    ``named_parameters()`` reaches every path (they share the module) and restores each slot once."""
    params = {name: p.detach().float() for name, p in before_mlp.named_parameters()}
    moved = dict(after_mlp.named_parameters())
    tangents = {name: moved[name].detach().float() - value for name, value in params.items()}
    x = x.float()  # a bfloat16 model's norms hand back bfloat16; the weights here are float32

    def output(weights):
        return torch.func.functional_call(before_mlp, weights, (x[:, None],), tie_weights=False)

    _, change = torch.func.jvp(output, (params,), (tangents,))
    return change[:, 0].float()


def _delta_ov(before_attention, after_attention, x: Float[Tensor, "rows d_model"]) -> Float[Tensor, "rows d_model"]:
    """Σ_h x·(W_V'^h W_O'^h − W_V^h W_O^h): what every head would write, attending to ``x`` alone, after
    minus before (exact in the weights; value and output biases left out). Computed as
    Σ_h x·((W_V'^h − W_V^h) W_O'^h + W_V^h (W_O'^h − W_O^h)), the same sum, from the weights' differences: the
    difference of the two products lost ~100× its float32 rounding to cancellation (SmolLM2: products of norm
    ~84, their difference ~0.7)."""
    def factors(attention) -> tuple[Tensor, Tensor]:
        w_v, w_o = attention.W_V.detach().float(), attention.W_O.detach().float()
        if len(w_v) != len(w_o):  # key/value heads not repeated (TransformerLens 4's bridge): query head h reads h // group
            w_v = w_v.repeat_interleave(len(w_o) // len(w_v), dim=0)
        return w_v, w_o

    (v_before, o_before), (v_after, o_after) = factors(before_attention), factors(after_attention)
    x = x.float()
    values_change = einops.einsum(x, v_after - v_before, "rows d_model, head d_model d_head -> rows head d_head")
    values = einops.einsum(x, v_before, "rows d_model, head d_model d_head -> rows head d_head")
    return (einops.einsum(values_change, o_after, "rows head d_head, head d_head d_model -> rows d_model")
            + einops.einsum(values, o_after - o_before, "rows head d_head, head d_head d_model -> rows d_model"))


@torch.no_grad()
def weight_change_table(
    before,
    after,
    facts: FactSet,
    statements,
    entity_ids: EntityIds,
    layers: Sequence[int] | None = None,
    n_controls: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """Fine-tuning's weight change read at the entities: an MLP analog of the OV entries, per layer.

    For a statement (given entity g, answer a) let x_l be the residual stream of the model *before*
    fine-tuning at g's last token of the statement's prompt, before layer l (``resid_pre``) and
    before its MLP (``resid_mid``), and ũ_t = w_final ⊙ mean_{tokens of t} W_U[:, token] the
    unembedding read as the residual stream sees it (final norm's scale, not its 1/σ; as for the
    OV circuits above). Per layer two entries M[g, t] for every answer t:

    * ``delta_mlp``: ΔMLP_l(x) · ũ_t, where ΔMLP_l(x) = J_W MLP_l(n₂(x)) · ΔW is the MLP's output
      change linearised in its weights at the cached input n₂(x_mid) (``torch.func.jvp`` at the
      weights before; n₂ the layer's pre-MLP norm of the model before): first order in ΔW, with
      the pre-activations those of the model before (a gated MLP's gate and up projections both
      enter).
    * ``delta_ov``: Σ_h n₁(x_pre) (W_V'^h W_O'^h − W_V^h W_O^h) · ũ_t: the change of what the
      heads of layer l would write were they to attend only to g's token: exact in the weights,
      attention patterns and biases left out.

    In a sandwich-norm block (Gemma 2/3) each change passes through the norm after its sublayer, at the
    scale of the model before (its 1/σ aside, one number per row: :func:`_post_norm_scale`), as the OV
    circuits do. Both models' norm weights must be readable as the circuits read them
    (:func:`check_circuits_readable`).

    Forward rows read M[A, B] at the subject in the forward prompt, reverse rows M[B, A] at the object
    in the reverse prompt; each entry is z-scored against the same vector read at K random control
    answers of the same kind (:func:`_rows`), and the asymmetry index is z[A,B] − z[B,A], as for
    :func:`circuit_table`, whose columns this table has (``circuit`` = "delta_mlp" / "delta_ov",
    ``head`` missing). A fact with a direction not in play gets NaN entries for it.
    """
    layers = list(range(before.cfg.n_layers)) if layers is None else list(layers)
    check_circuits_readable(before)
    check_circuits_readable(after)
    check_layer_head(before, layers, None)
    shapes = [{name: tuple(p.shape) for name, p in model.named_parameters()} for model in (before, after)]
    if type(before) is not type(after) or shapes[0] != shapes[1]:
        differ = next((name for name in shapes[0] if shapes[0][name] != shapes[1].get(name)), None)
        raise ValueError(f"the models before and after fine-tuning differ ({type(before).__name__} and "
                         f"{type(after).__name__}" + (f"; first in {differ}" if differ else "") + "): one must be "
                         "the other fine-tuned, loaded the same way")
    check_fact_tokenizer(before, entity_ids)
    tokens = _entity_tokens(facts, entity_ids, before.cfg.d_vocab)
    sources, targets = _rows(facts, tokens, n_controls, seed)
    final = _unembedding_directions(before, tokens)
    rows = [(index, direction) for index in range(len(facts)) for direction in ("forward", "reverse")]  # as _rows
    states = _given_states(before, facts, statements, rows, layers)
    answers = final[targets]  # [rows, K + 1, d_model]
    entries = {kind: torch.empty(len(rows), len(layers)) for kind in WEIGHT_CHANGES}
    zs = {kind: torch.empty(len(rows), len(layers)) for kind in WEIGHT_CHANGES}
    for column, layer in enumerate(layers):
        old, new = before.blocks[layer], after.blocks[layer]
        vectors = {"delta_mlp": _delta_mlp(old.mlp, new.mlp, old.ln2(states[f"blocks.{layer}.hook_resid_mid"])),
                   "delta_ov": _delta_ov(old.attn, new.attn, old.ln1(states[f"blocks.{layer}.hook_resid_pre"]))}
        for kind, vector in vectors.items():
            written = _post_norm_scale(before, layer, "mlp" if kind == "delta_mlp" else "attention")
            if written is not None:
                vector = vector * written
            read = einops.einsum(answers, vector, "rows k1 d_model, rows d_model -> rows k1")
            entries[kind][:, column] = read[:, 0].cpu()
            zs[kind][:, column] = _zscores(read[..., None])[:, 0].cpu()
    frames = []
    for kind in WEIGHT_CHANGES:
        for column, layer in enumerate(layers):
            frames.append(pd.DataFrame({
                "fact": np.arange(len(facts)), "group": [f.group for f in facts],
                "forward": [f.forward for f in facts], "reverse": [f.reverse for f in facts],
                "circuit": kind, "layer": layer, "head": pd.array([None] * len(facts), dtype="Int64"),
                "entry_ab": entries[kind][0::2, column].numpy(), "entry_ba": entries[kind][1::2, column].numpy(),
                "z_ab": zs[kind][0::2, column].numpy(), "z_ba": zs[kind][1::2, column].numpy()}))
    table = pd.concat(frames, ignore_index=True)
    table["layer"] = table["layer"].astype("Int64")
    table["asymmetry"] = table.z_ab - table.z_ba
    return table
