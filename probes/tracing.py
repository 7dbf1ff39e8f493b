"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"): which
hidden states carry a fact from the given entity to the answer.

For one statement (prompt c of L tokens, answer a = a_1 … a_A, the given entity at prompt
positions G ⊂ {0 … L−1}) three kinds of run are made:

* **clean**: the model reads c;
* **corrupted**: the token embeddings at G get Gaussian noise, e_p ← e_p + ε_p for p ∈ G,
  ε_p ~ N(0, (ν·σ)² I), where σ is the standard deviation of the entries of the model's own
  token embedding matrix W_E (as its ``hook_embed`` outputs them: Gemma's √d_model, which TransformerLens
  3.9's HookedTransformer folds into W_E, is multiplied in where 4's bridge runs it in the embedding) and ν the
  noise multiple (default 3, Meng et al.'s); the noise
  is drawn ``n_samples`` times (one draw per sample, shared by every site) from a generator seeded by a
  hash of the seed (:func:`noise_seed`);
* **restored**: the corrupted run in which one site, the activation h^{(l)}_p of a component
  (``resid_pre``, ``resid_post``, ``mlp_out`` or ``attn_out`` of layer l) at position p, is set
  to its value in the clean run; everything downstream is recomputed.

The score of a run is the answer's log-probability over all its tokens, the project's scoring
(:func:`models.scoring.token_logprobs`, teacher forcing: the run reads c followed by a_1 … a_A
and log p(a | c) = Σ_k log p(a_k | c, a_<k)); a_1 … a_{A−1} are never noised nor restored (they
follow every traced position). Per site, over the S noise samples s:

    prob(l, p) = (1/S) Σ_s p_s(a | c, restored h^{(l)}_p)  ,  logprob(l, p) = (1/S) Σ_s log p_s(…),

and the same means for the corrupted run. The *indirect effect* of a site is
IE(l, p) = prob(l, p) − prob_corrupted, and the fraction recovered (prob(l, p) − prob_corrupted)
/ (prob_clean − prob_corrupted). Meng et al. restore a window of 10 layers for MLP and attention
outputs; here every site is one layer.

Exact identities (tested): with ν = 0 every site gives the clean probability; restoring
``resid_pre`` of layer 0 at every position of G, or of any layer at every position, gives the clean run
back (above layer 0 the positions after G have already read the noised G),
as does ``resid_post`` of the last layer at every position; restoring a site the noise cannot
reach (a position before G, at any layer) gives the corrupted probability.

Speed. The restored runs of layer l share everything below l with the corrupted run, so they
start at layer l from the corrupted run's cached ``resid_pre`` (``start_at_layer``), and the
(site, sample) pairs of one layer go through the model in batches of ``batch_size`` rows, sites in
order of position: about half the cost of running every row from the embeddings (on a HookedTransformer;
TransformerLens 4.3's bridge still runs the blocks below l, so there the saving is the batching alone). A
restored site at position p changes no position before p, so on a HookedTransformer a batch runs positions p₀ on (p₀
its first site's position, at most the last prompt position) and attention reads the keys and values
of positions before p₀ from the corrupted run (:func:`reads_earlier_from_cache`). A site before the
given entity is the corrupted run itself (its activation is the same in both runs) and is not run.
On a HookedTransformer the restored runs stop after the last block, and only the positions that
predict an answer token go through the final norm and W_U (each per position: those rows of the full
logits). On SmolLM2, W_U is 28 M multiply-adds a position against ~3.5 M for a block, so a restored
run that starts in the top 8 of its 30 layers was mostly unembedding; on Gemma 3 (a 262,144-token
vocabulary) it was for every layer. TransformerLens 3.9's TransformerBridge has no
``start_at_layer`` and is refused (load the model with ``backend="hooked"``, a HookedTransformer); under 4.x
either backend's bridge is traced, in compatibility mode or not, with the same numbers
(:func:`models.backend.runs_from_layer`).

Averaging over facts. Prompts differ in length, so positions are put in Meng et al.'s buckets
(:data:`BUCKETS`): tokens before the given entity, its first, middle and last tokens, the first
token after it, further tokens, and the last prompt token (which predicts the answer). Per
statement, a bucket's IE is the mean over its positions; across statements the mean and its 95%
interval, mean ± t₀.₉₇₅(n − 1)·s/√n (:func:`average_over_statements`; Student's t: a run traces a few
statements, and over 2 the normal 1.96 would make the interval 6.5 times too narrow).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from facts.language import render_statement
from facts.schema import Direction, FactError, FactSet
from facts.tokens import Example
from models.backend import (TL_VERSION, TransformerLensKeyValueCache, TransformerLensKeyValueCacheEntry,
                            embedding_scale, is_hooked, runs_from_layer)
from models.bilinear import BilinearModel
from models.scoring import answer_token_logprobs, check_causal, in_eval_mode, kept_logits, token_logprobs
from models.training import derived_seed, stream_seed
from probes.hooks import check_layer, hook_names
from probes.stats import UNBOUNDED, t95

COMPONENTS: tuple[str, ...] = ("resid_pre", "resid_post", "mlp_out", "attn_out")
DEFAULT_COMPONENTS: tuple[str, ...] = ("resid_post", "mlp_out", "attn_out")
"""Meng et al.'s three heatmaps: the hidden state after layer l, the MLP's and the attention's output."""
BUCKETS: tuple[str, ...] = ("before", "given first", "given middle", "given last", "after first", "further", "last")
NOISE_MULTIPLE = 3.0
RESTORED_ROWS = 24
"""Rows (site × noise sample) of one restored pass. Smaller passes start later in the sequence (a pass runs from its
first restored position, :func:`reads_earlier_from_cache`) but each costs a fixed ~3 ms a block; on SmolLM2's
people-world statements (2 components, 2 samples), the default took 0.77-0.86 of the CPU time of 64-row passes
over every site and position, and passes of 16 or 32 rows no less than 24 (benchmarks/README.md, "Causal tracing")."""


@dataclass(frozen=True)
class Site:
    """Restore ``component`` of ``layer`` at ``positions`` (positions of the prompt or answer, together) from the clean run."""

    component: str
    layer: int
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Traced:
    """Answer log-probabilities of one statement: ``clean``; ``corrupted[s]`` per noise sample;
    ``restored[i, s]`` for site i and sample s."""

    clean: float
    corrupted: Float[Tensor, " sample"]
    restored: Float[Tensor, "site sample"]
    sites: tuple[Site, ...]
    noise_std: float


def noise_seed(seed: int) -> int:
    """The seed of the noise generator of tracing seed ``seed``: a hash of it, a stream of its own. The seed itself
    would make statement n's noise the first draws of ``torch.Generator().manual_seed(n)``, which are the initial
    token embeddings of a token-world model built with seed n (``models.backend.hooked_init_state``): the noise
    of a seed-0 model's first statement was 3.6× its own initial embeddings of the relation tokens, still close
    to their trained values (cosine 0.89), and corrupted the statement less than independent noise does."""
    return stream_seed("causal tracing noise", seed)


def noise_std(model: Any, multiple: float = NOISE_MULTIPLE) -> float:
    """ν·σ: ``multiple`` times the standard deviation of the entries of the token embeddings as ``hook_embed``
    outputs them: W_E's, times Gemma's √d_model where the forward multiplies it in (:func:`models.backend.embedding_scale`:
    TransformerLens 4's bridge, whose W_E is the stored, unscaled matrix)."""
    if not (math.isfinite(multiple) and multiple >= 0):
        raise ValueError(f"noise_multiple must be a finite number ≥ 0, got {multiple}")
    return multiple * float(model.W_E.detach().float().std()) * embedding_scale(model)


def _check_model(model: Any) -> None:
    if isinstance(model, BilinearModel):
        raise ValueError("causal tracing restores a layer's hidden states; the bilinear model has no layers (trace a "
                         "transformer)")
    check_causal(model)  # the answer is teacher-forced after the prompt
    if not runs_from_layer(model):
        raise ValueError(
            f"causal tracing runs the restored runs from their layer (start_at_layer) under HookedTransformer's "
            f"hook names, which a {type(model).__name__} of TransformerLens {TL_VERSION} does not offer; load the "
            f"model with backend='hooked'")


def _check_sites(model: Any, sites: Sequence[Site], length: int) -> None:
    """Each site names a component, a layer the model has and positions of the scored sequence
    (the prompt, then the teacher-forced answer: restoring every position of it gives the clean run)."""
    for site in sites:
        if site.component not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, not {site.component!r}")
        check_layer(model, site.layer)
        if site.component == "mlp_out" and getattr(model.cfg, "attn_only", False):
            raise ValueError(f"{model.cfg.model_name}: an attention-only model has no MLP output to restore")
        hook_names(model, f"blocks.{site.layer}.hook_{site.component}")  # e.g. no mlp_out in an attention-only model
        if not site.positions or any(not 0 <= p < length for p in site.positions):
            raise ValueError(f"site {site}: positions must be positions 0…{length - 1} of the prompt and answer")


@in_eval_mode
@torch.no_grad()
def trace_sites(
    model: Any,
    example: Example,
    given: Sequence[int],
    sites: Sequence[Site],
    noise_multiple: float = NOISE_MULTIPLE,
    n_samples: int = 5,
    seed: int = 0,
    batch_size: int = RESTORED_ROWS,
    earlier_from_cache: bool = True,
) -> Traced:
    """Clean, corrupted and restored answer log-probabilities of ``example`` with the prompt
    positions ``given`` noised (see the module docstring). ``earlier_from_cache=False`` runs every
    position of every restored row, sites before the given entity too (the same numbers to float32
    rounding: the way to check the shortcuts)."""
    _check_model(model)
    length = len(example.prompt)
    if not given or any(not 0 <= p < length for p in given):
        raise ValueError(f"fact {example.fact} ({example.direction}): the given entity's positions {list(given)} "
                         f"must be prompt positions 0…{length - 1}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
    _check_sites(model, sites, length + len(example.answer))
    device = model.cfg.device
    sequence = torch.tensor([example.prompt + example.answer], device=device)
    mask = torch.zeros_like(sequence, dtype=torch.bool)
    mask[:, length:] = True

    def score(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, " batch"]:
        rows = len(logits)
        return token_logprobs(logits, sequence.expand(rows, -1), mask.expand(rows, -1))[0].sum(1).float().cpu()

    def run_restored(resid: Float[Tensor, "batch pos d_model"], layer: int, hooks: list, first: int = 0,
                     past: Any = None) -> Float[Tensor, " batch"]:
        """The restored rows' answer log-probabilities, the answer-predicting positions alone unembedded where the
        model allows it (:func:`models.scoring.kept_logits`: those rows of the full logits). ``resid`` holds
        positions ``first`` on, and ``past`` the keys and values of the positions before it."""
        rows = len(resid)
        predicting = torch.zeros(resid.shape[:2], dtype=torch.bool, device=resid.device)
        predicting[:, length - 1 - first : -1] = True
        earlier = {} if past is None else {"past_kv_cache": past}
        logits = kept_logits(model, predicting, functools.partial(model.run_with_hooks, resid, start_at_layer=layer,
                                                                  fwd_hooks=hooks, **earlier))
        return answer_token_logprobs(logits, sequence.expand(rows, -1), mask.expand(rows, -1))[0].sum(1).float().cpu()

    scale = noise_std(model, noise_multiple)
    generator = torch.Generator().manual_seed(noise_seed(seed))
    noise = (torch.randn(n_samples, len(given), model.cfg.d_model, generator=generator) * scale).to(
        device=device, dtype=model.W_E.dtype)
    given_index = torch.tensor(list(given), device=device)

    def add_noise(embed: Float[Tensor, "batch pos d_model"], hook: Any) -> Float[Tensor, "batch pos d_model"]:
        embed = embed.clone()
        embed[:, given_index] += noise.repeat(len(embed) // n_samples, 1, 1)
        return embed

    layers = sorted({site.layer for site in sites})
    names = sorted({f"blocks.{s.layer}.hook_{s.component}" for s in sites})
    clean_logits, clean_cache = model.run_with_cache(sequence, names_filter=names)
    starts = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    from_cache = earlier_from_cache and reads_earlier_from_cache(model)
    corrupt_logits, corrupt_cache, corrupt_kv = _run_noised(model, sequence.expand(n_samples, -1), add_noise, starts,
                                                            keep_keys_and_values=from_cache)
    restored = torch.empty(len(sites), n_samples)
    corrupted = score(corrupt_logits)
    untouched = {i for i, site in enumerate(sites) if max(site.positions) < min(given)} if earlier_from_cache else set()
    restored[sorted(untouched)] = corrupted  # the noise never reaches them: the same activation in both runs
    per_chunk = max(1, batch_size // n_samples)
    for layer in layers:
        chosen = sorted((i for i, site in enumerate(sites) if site.layer == layer and i not in untouched),
                        key=lambda i: min(sites[i].positions))
        for start in range(0, len(chosen), per_chunk):
            chunk = chosen[start : start + per_chunk]
            # positions before the chunk's first restored one are the corrupted run's: their keys and values are read
            first = min(min(sites[chunk[0]].positions), length - 1) if from_cache else 0
            hooks = _restoring_hooks([sites[i] for i in chunk], clean_cache, n_samples, offset=first)
            resid = corrupt_cache[f"blocks.{layer}.hook_resid_pre"][:, first:].repeat(len(chunk), 1, 1)
            past = _earlier_keys_and_values(corrupt_kv, layer, first, len(chunk)) if from_cache else None
            restored[chunk] = run_restored(resid, layer, hooks, first, past).view(len(chunk), n_samples)
    return Traced(clean=float(score(clean_logits)[0]), corrupted=corrupted, restored=restored,
                  sites=tuple(sites), noise_std=scale)


def reads_earlier_from_cache(model: Any) -> bool:
    """Whether :func:`trace_sites` runs a restored row from its first restored position on, reading the keys
    and values of the positions before it from the corrupted run (TransformerLens's key-value cache), which they
    equal: a restored site at position p changes no position before p, at any layer (causal attention). A
    HookedTransformer whose positions enter as absolute embeddings before the blocks or as rotary angles inside
    attention (offset by the cache's length); ALiBi and shortformer models, and a bridge, run every position."""
    return is_hooked(model) and model.cfg.positional_embedding_type in ("standard", "rotary")


def _run_noised(model: Any, tokens: Int[Tensor, "batch pos"], add_noise: Any, names: Sequence[str],
                keep_keys_and_values: bool = False):
    """Logits, cache (``names``) and, with ``keep_keys_and_values``, TransformerLens's key-value cache (the keys
    and values attention reads, per layer; else None) of the corrupted run: ``add_noise`` at ``hook_embed``."""
    cache: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:  # by the name asked for: a bridge's hook point calls itself by its own name
        def keep(activation: Tensor, hook: Any) -> None:
            cache[name] = activation.detach()
        return keep

    hooks = [("hook_embed", add_noise)] + [(name, keeper(name)) for name in names]
    if not keep_keys_and_values:
        return model.run_with_hooks(tokens, fwd_hooks=hooks), cache, None
    keys_and_values = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, len(tokens))
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks, past_kv_cache=keys_and_values,
                                  attention_mask=torch.ones_like(tokens))
    return logits, cache, keys_and_values


def _earlier_keys_and_values(keys_and_values: Any, layer: int, first: int, repeats: int) -> Any:
    """The corrupted run's keys and values of positions 0 … ``first`` − 1, for ``repeats`` sites × every sample
    (rows site-major, as the restored batch), at ``layer`` and above (None below: those blocks do not run)."""
    entries = [None if number < layer else TransformerLensKeyValueCacheEntry(
        entry.past_keys[:, :first].repeat(repeats, 1, 1, 1), entry.past_values[:, :first].repeat(repeats, 1, 1, 1),
        frozen=True) for number, entry in enumerate(keys_and_values.entries)]
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=None, frozen=True)


def _restoring_hooks(sites: Sequence[Site], clean_cache: Any, n_samples: int, offset: int = 0
                     ) -> list[tuple[str, Any]]:
    """One hook per activation name: rows ``i·S … i·S + S − 1`` (site i of ``sites``, every sample)
    get the clean activation at site i's positions (in a run of positions ``offset`` on)."""
    by_name: dict[str, tuple[list[int], list[int]]] = {}
    for number, site in enumerate(sites):
        rows, positions = by_name.setdefault(f"blocks.{site.layer}.hook_{site.component}", ([], []))
        for sample in range(n_samples):
            for position in site.positions:
                rows.append(number * n_samples + sample)
                positions.append(position)
    hooks = []
    for name, (rows, positions) in by_name.items():
        clean = clean_cache[name][0]
        row_index, position_index = torch.tensor(rows), torch.tensor(positions)

        def restore(activation: Tensor, hook: Any, clean=clean, row_index=row_index, position_index=position_index
                    ) -> Tensor:
            activation[row_index.to(activation.device), (position_index - offset).to(activation.device)] = clean[
                position_index.to(clean.device)]
            return activation

        hooks.append((name, restore))
    return hooks


def buckets(length: int, given: Sequence[int]) -> list[str]:
    """Meng et al.'s bucket (:data:`BUCKETS`) of every prompt position: the last position first,
    then the given entity's last, first and middle tokens, then the first token after it, further
    tokens after it, and tokens before it."""
    first, last = min(given), max(given)
    out = []
    for p in range(length):
        if p == length - 1:
            out.append("last")
        elif p == last:
            out.append("given last")
        elif p == first:
            out.append("given first")
        elif first < p < last:
            out.append("given middle")
        elif p == last + 1:
            out.append("after first")
        elif p > last:
            out.append("further")
        else:
            out.append("before")
    return out


def trace(
    model: Any,
    example: Example,
    given: Sequence[int],
    components: Sequence[str] = DEFAULT_COMPONENTS,
    layers: Sequence[int] | None = None,
    noise_multiple: float = NOISE_MULTIPLE,
    n_samples: int = 5,
    seed: int = 0,
    batch_size: int = RESTORED_ROWS,
    token_label: Any = None,
) -> pd.DataFrame:
    """The layer × position heatmap of one statement, every component: one row per (component,
    layer, position) with ``prob``, ``logprob`` (means over the noise samples), ``clean_prob``,
    ``clean_logprob``, ``corrupted_prob``, ``corrupted_logprob``, ``effect`` (IE = prob −
    corrupted_prob), ``recovered`` ((prob − corrupted) / (clean − corrupted); NaN when the two are
    equal), ``bucket`` and ``token``."""
    _check_model(model)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    length = len(example.prompt)
    sites = [Site(c, layer, (p,)) for c in components for layer in layers for p in range(length)]
    traced = trace_sites(model, example, given, sites, noise_multiple, n_samples, seed, batch_size)
    clean_prob = math.exp(traced.clean)
    corrupted_prob = float(traced.corrupted.double().exp().mean())
    prob = traced.restored.double().exp().mean(1).numpy()  # float64: a gap below float32's range is not 0/0
    gap = clean_prob - corrupted_prob
    kinds = buckets(length, given)
    label = token_label or str
    return pd.DataFrame({
        "fact": example.fact, "direction": example.direction, "split": example.split,
        "component": [s.component for s in sites], "layer": [s.layer for s in sites],
        "position": [s.positions[0] for s in sites], "bucket": [kinds[s.positions[0]] for s in sites],
        "token": [label(example.prompt[s.positions[0]]) for s in sites],
        "prob": prob, "logprob": traced.restored.mean(1).numpy(),
        "clean_prob": clean_prob, "clean_logprob": traced.clean,
        "corrupted_prob": corrupted_prob, "corrupted_logprob": float(traced.corrupted.mean()),
        "effect": prob - corrupted_prob,
        "recovered": (prob - corrupted_prob) / gap if gap != 0 else np.nan,
        "noise_std": traced.noise_std, "n_samples": n_samples,
    })


# ---------------------------------------------------------------------------------------------
# Where the given entity sits in the prompt


def _last_occurrence(sequence: Sequence[int], part: Sequence[int]) -> int | None:
    for start in range(len(sequence) - len(part), -1, -1):
        if tuple(sequence[start : start + len(part)]) == tuple(part):
            return start
    return None


def text_entity_positions(tokenizer: Any, prompt_text: str, entity: str, prompt: Sequence[int]) -> tuple[int, ...]:
    """Positions in ``prompt`` (token ids, possibly after a BOS prefix) of the tokens that overlap
    the last occurrence of ``entity`` in ``prompt_text``, by the tokenizer's character offsets. The
    prompt's tokens must be ``prompt_text``'s own (after the prefix), else FactError."""
    text = prompt_text.rstrip(" ")  # as facts.language.encode_pair cuts it
    begin = text.rfind(entity)
    if begin < 0:
        raise FactError(f"the prompt {text!r} does not contain its given entity {entity!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    prefix = len(prompt) - len(ids)
    if prefix < 0 or tuple(prompt[prefix:]) != tuple(ids):
        raise FactError(f"the prompt {text!r} does not tokenize to the statement's prompt tokens; cannot locate "
                        f"{entity!r} in it")
    end = begin + len(entity)
    positions = tuple(prefix + i for i, (start, stop) in enumerate(offsets) if start < end and stop > begin)
    if not positions:
        raise FactError(f"no token of the prompt {text!r} covers its given entity {entity!r}")
    return positions


def given_positions(statements: Any, facts: FactSet, index: int, direction: Direction, example: Example
                    ) -> tuple[int, ...]:
    """Prompt positions of the given entity of statement (index, direction): for a
    :class:`facts.language.TemplateTokenizer` by the characters of the rendered prompt
    (:func:`text_entity_positions`), for a token world (``TokenVocab``) as the last occurrence
    of the entity's tokens in the prompt."""
    given = facts[index].given_and_answer(direction)[0]
    if hasattr(statements, "templates") and hasattr(statements, "tokenizer"):
        rendered = render_statement(facts, index, direction, statements.templates, statements.template)
        return text_entity_positions(statements.tokenizer, rendered.prompt, given, example.prompt)
    ids = statements.entity_ids(given)
    start = _last_occurrence(example.prompt, ids)
    if start is None:
        raise FactError(f"fact {index} ({direction}): the given entity {given!r} is not in its prompt")
    return tuple(range(start, start + len(ids)))


def components_of(model: Any, components: Sequence[str] = DEFAULT_COMPONENTS) -> tuple[str, ...]:
    """``components`` less ``mlp_out`` for an attention-only model."""
    return tuple(c for c in components if not (c == "mlp_out" and getattr(model.cfg, "attn_only", False)))


def trace_facts(
    model: Any,
    facts: FactSet,
    statements: Any,
    chosen: Sequence[tuple[int, Direction]] | None = None,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    noise_multiple: float = NOISE_MULTIPLE,
    n_samples: int = 5,
    seed: int = 0,
    batch_size: int = RESTORED_ROWS,
    token_label: Any = None,
    layers: Sequence[int] | None = None,
) -> pd.DataFrame:
    """:func:`trace` (at ``layers``, default all) for every directed statement in ``chosen`` (default: every statement in play),
    the given entity located by :func:`given_positions`; the tables concatenated. Each statement's
    noise is drawn with seed :func:`models.training.derived_seed` (``seed``, its row number): runs of different
    seeds share no statement's noise."""
    chosen = [(i, d) for i, d, _ in facts.statements()] if chosen is None else list(chosen)
    frames = []
    for number, (index, direction) in enumerate(chosen):
        example = statements.example(facts, index, direction)
        given = given_positions(statements, facts, index, direction, example)
        frames.append(trace(model, example, given, components, layers, noise_multiple, n_samples,
                            derived_seed(seed, number), batch_size, token_label))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Averages over facts


VALUE_RANGES = {**dict.fromkeys(("prob", "clean_prob", "corrupted_prob"), (0.0, 1.0)), "effect": (-1.0, 1.0),
                **dict.fromkeys(("logprob", "clean_logprob", "corrupted_logprob"), (-math.inf, 0.0))}
"""The range of each bounded column of :func:`trace`'s table: a probability, the difference of two, a log-probability
(``recovered``, a ratio of differences, has none)."""


def average_over_statements(table: pd.DataFrame, value: str = "effect") -> pd.DataFrame:
    """Per (split, direction, component, layer, bucket): the mean of ``value`` over statements and its
    95% interval (mean ± t₀.₉₇₅(n − 1)·s/√n, :func:`probes.stats.ci95_half_width`, cut to the range of
    ``value``, :data:`VALUE_RANGES`: [0, 1] for a probability, [−1, 1] for an effect, a difference of two, ≤ 0 for a
    log-probability, none for ``recovered``), each statement's
    bucket first averaged over its positions. Columns: split, direction, component, layer, bucket, mean, ci_low,
    ci_high, n."""
    if value not in table.columns:
        raise ValueError(f"average_over_statements: no column {value!r} to average; the table's: {list(table.columns)}")
    keys = ["split", "direction", "component", "layer", "bucket"]
    per_statement = table.groupby(["fact", *keys], observed=True)[value].mean().reset_index()
    grouped = per_statement.groupby(keys, observed=True)[value]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    half = out["count"].map(t95) * out["std"] / np.sqrt(out["count"])  # NaN for one statement
    low, high = VALUE_RANGES.get(value, UNBOUNDED)
    out["ci_low"], out["ci_high"] = (out["mean"] - half).clip(lower=low), (out["mean"] + half).clip(upper=high)
    out["bucket"] = pd.Categorical(out["bucket"], categories=BUCKETS, ordered=True)
    return out.rename(columns={"count": "n"}).drop(columns="std").sort_values(keys, ignore_index=True)


def tracing_headline(table: pd.DataFrame) -> dict[str, Any]:
    """Per "split/direction" (e.g. "train/forward", "heldout/reverse"): clean and corrupted
    probability (means over statements), and per component the site (layer, bucket) of the largest
    mean indirect effect with its interval, the largest mean restored probability anywhere (how
    much of the answer is recoverable at all), ``peak_n``: the statements the peak's site averages (a bucket
    such as "given middle" exists only for entities of three or more tokens, so it can be fewer than
    ``n_statements``: one, with no interval), and ``half_peak_layers``: per bucket, the layers whose
    mean indirect effect is at least half the peak's (empty when the peak is not above 0). The peak is the
    largest of many sites' means, so it and its interval lean high (the site was chosen for being largest):
    read it as where the effect is, and the interval as that site's spread over statements, not as a test."""
    average = average_over_statements(table, "effect")
    restored = average_over_statements(table, "prob")
    out: dict[str, Any] = {}
    for (split, direction), part in table.groupby(["split", "direction"]):
        statements = part.drop_duplicates("fact")
        entry: dict[str, Any] = {"n_statements": int(len(statements)),
                                 "clean_prob": float(statements.clean_prob.mean()),
                                 "corrupted_prob": float(statements.corrupted_prob.mean()), "components": {}}
        mine = (average.split == split) & (average.direction == direction)
        for component, rows in average[mine].groupby("component"):
            best = rows.loc[rows["mean"].idxmax()]
            most = restored[(restored.split == split) & (restored.direction == direction)
                            & (restored.component == component)]["mean"].max()
            strong = rows[rows["mean"] >= 0.5 * best["mean"]] if best["mean"] > 0 else rows.iloc[:0]
            entry["components"][component] = {
                "peak_layer": int(best.layer), "peak_bucket": str(best.bucket), "peak_effect": float(best["mean"]),
                "peak_effect_ci95": [float(best.ci_low), float(best.ci_high)], "peak_n": int(best.n),
                "max_restored_prob": float(most),
                "half_peak_layers": {str(bucket): sorted(int(layer) for layer in part.layer)
                                     for bucket, part in strong.groupby("bucket", observed=True)}}
        out[f"{split}/{direction}"] = entry
    return out


__all__ = [
    "BUCKETS", "COMPONENTS", "DEFAULT_COMPONENTS", "NOISE_MULTIPLE", "RESTORED_ROWS", "Site", "Traced", "average_over_statements",
    "buckets", "components_of", "given_positions", "noise_seed", "noise_std", "reads_earlier_from_cache", "text_entity_positions", "trace", "trace_facts", "trace_sites",
    "tracing_headline",
]
