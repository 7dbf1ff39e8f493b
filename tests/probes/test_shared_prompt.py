"""The fast scorer (:func:`probes.shared_prompt.candidate_logprobs_cached`: each prompt once, each
answer's continuation once, the unembedding only where a next token is scored) gives the numbers of
the straightforward one (:func:`models.scoring.score_answers`: teacher forcing every prompt ++ answer
through the model's own forward), on SmolLM2 (Llama, no BOS) and on a tiny random Gemma 2 (BOS before
every prompt, logit soft-cap, a 4-token sliding window the prompts pass), on both backends; both
backends score by trie (passes of statements as rows, each with its own positions and mask; a HookedTransformer
through :mod:`models.hooked_tree`) on every tiny architecture, and by their prefix cache where a hook or a
sliding window rules the trie out; and on a HookedTransformer, continuation passes run together
(``extend_bundle``) give the numbers of the same passes run one by one (``extend``; bitwise on this
project's CPUs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import BACKENDS_BY_ARCHITECTURE, VOCAB, save_tiny, tiny_config

from analyses.asymmetry import draw_controls
from facts.celebrity import QUESTION_TEMPLATES, load_celebrity_pairs
from facts.language import TemplateTokenizer
from facts.tokens import Example, collate
from models.backend import HookedTransformer, copy_model, is_hooked
from models.cpu_matmul import float32_matmul
from models.hooked_tree import HOOKED_TREE_ARCHITECTURES, hooked_tree_width
from models.pretrained import load
from models.scoring import chosen_logprobs, hooked_readout, score_answers
from probes.shared_prompt import (
    SMALL_PRODUCT,
    TREE_ARCHITECTURES,
    PrefixCache,
    _Readout,
    _tree_batch,
    _tree_fits,
    answer_trie,
    answer_tries,
    candidate_logprobs_cached,
    scores_by_tree,
)

STATEMENTS = [(0, "forward"), (0, "reverse"), (2, "forward"), (5, "forward"), (3, "reverse")]


def candidate_rows(tokenizer, prefix=None, n_controls=6):
    """Real celebrity questions (prompts of two lengths) with the truth and ``n_controls`` controls each."""
    facts = load_celebrity_pairs()
    asked = TemplateTokenizer(tokenizer, QUESTION_TEMPLATES, prefix=prefix)
    drawn = draw_controls(facts, STATEMENTS, n_controls)
    return [[asked.example(facts, i, d)] + [asked.example(facts, i, d, answer=a) for a in wrong]
            for (i, d), wrong in zip(STATEMENTS, drawn)]


def assert_fast_equals_teacher_forcing(model, rows, by_tree=None):
    """``by_tree``: whether the statements run by trie."""
    widest = max(len(answer_trie(row).tokens) for row in rows)
    assert (scores_by_tree(model) and _tree_fits(model, widest)) == by_tree
    fast = candidate_logprobs_cached(model, rows, batch_size=3)  # several prompt and continuation passes
    reference = score_answers(model, collate([e for row in rows for e in row], 0))
    delta = (fast.logprob.flatten() - reference.logprob).abs().max().item()
    assert delta < 1e-4, delta
    assert fast.correct.flatten().tolist() == reference.correct.tolist()
    assert {len(row[0].prompt) for row in rows} != {len(rows[0][0].prompt)}  # prompts of several lengths
    assert max(len(e.answer) for row in rows for e in row) >= 3  # continuations of several tokens


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_fast_scoring_equals_teacher_forcing_on_smollm2(backend, request, smollm2_tokenizer):
    model = request.getfixturevalue(f"smollm2_{backend}")
    assert_fast_equals_teacher_forcing(model, candidate_rows(smollm2_tokenizer), by_tree=True)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_fast_scoring_equals_teacher_forcing_on_a_gemma2_with_bos(backend, tiny_models):
    tiny = tiny_models["gemma2"]
    model = tiny.backends[backend]
    assert model.cfg.output_logits_soft_cap > 0  # the soft-cap is part of what the readout must repeat
    rows = candidate_rows(tiny.tokenizer, prefix=(tiny.tokenizer.bos_token_id,))
    assert all(row[0].prompt[0] == tiny.tokenizer.bos_token_id for row in rows)
    # the prompts pass the 4-token window, which a trie's given mask would not slide: both run cached
    assert_fast_equals_teacher_forcing(model, rows, by_tree=False)


def test_an_answer_trie_shares_prefixes_and_sees_only_its_ancestors():
    """Answers (5, 6, 7), (5, 6, 8), (5, 9) and (4,) after the prompt (1, 2, 3): nodes (5), (5, 6) and none
    for (4,) (a one-token answer is read at the prompt's last position); a node sits where teacher
    forcing puts its token and attends to the prompt, its ancestors and itself, never to a sibling."""
    row = [Example(prompt=(1, 2, 3), answer=a, fact=0, direction="forward", split="heldout")
           for a in ((5, 6, 7), (5, 6, 8), (5, 9), (4,))]
    trie = answer_trie(row)
    assert trie.tokens == [1, 2, 3, 5, 6] and trie.positions == [0, 1, 2, 3, 4] and trie.parent == [-1, 0]
    assert trie.reads == [[0, 1, 2], [0, 1, 2], [0, 1], [0]]
    deeper = answer_trie([row[2], Example(prompt=(1, 2, 3), answer=(7, 8), fact=0, direction="forward",
                                          split="heldout")])
    assert deeper.tokens == [1, 2, 3, 5, 7] and deeper.positions == [0, 1, 2, 3, 3]  # siblings: one position
    ids, positions, sees = _tree_batch([trie, deeper, answer_trie(row[3:])])
    assert ids.tolist()[2] == [1, 2, 3, 0, 0] and positions.shape == (3, 5)
    assert sees[0].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert sees[1, 4].tolist() == [1, 1, 1, 0, 1]  # (7) sees the prompt, not its sibling (5)
    assert sees[2, 3].tolist() == [0, 0, 0, 1, 0]  # padding sees itself only


BACKENDS = [(architecture, backend) for architecture, backends in BACKENDS_BY_ARCHITECTURE.items()
            for backend in backends if backend == "bridge" or HookedTransformer is not None]
"""Every tiny architecture on each backend that is a model of its own (under TransformerLens 4 "hooked" is a
bridge too)."""


@pytest.mark.parametrize(("architecture", "backend"), BACKENDS)
def test_every_backend_scores_by_trie_as_teacher_forcing_on_every_architecture(architecture, backend, tiny_models,
                                                                                tmp_path):
    """Every architecture, on both backends, scores by trie, on prompts of two lengths whose answers share
    prefixes (the truth, controls, and the truth continued by " Jr" and " Sr."): the same log-probabilities
    and greedy hits as teacher forcing. Gemma 2 and 3 with an 8,192-token window here (the shared tiny
    ones slide 4 tokens, where the trie is not used)."""
    tiny = tiny_models[architecture]
    model = tiny.backends[backend]
    if architecture.startswith("gemma"):
        config = tiny_config(architecture)
        config.sliding_window = 8192
        model = load(save_tiny(tmp_path / architecture, config, tiny.tokenizer), backend=backend, device="cpu")
    if is_hooked(model):
        assert model.cfg.original_architecture in HOOKED_TREE_ARCHITECTURES
    else:
        assert model.original_model.config.model_type in TREE_ARCHITECTURES
    prefix = (tiny.tokenizer.bos_token_id,) if architecture.startswith("gemma") else None
    suffixes = [tiny.tokenizer.encode(word, add_special_tokens=False) for word in (" Jr", " Sr.")]
    rows = [row + [dataclasses.replace(row[0], answer=row[0].answer + tuple(s)) for s in suffixes]
            for row in candidate_rows(tiny.tokenizer, prefix=prefix)]  # the truth, then the truth and more
    tries = [answer_trie(row) for row in rows]
    assert all(len(t.parent) < sum(len(a) - 1 for a in t.answers) for t in tries)  # prefixes shared
    assert_fast_equals_teacher_forcing(model, rows, by_tree=True)


def test_the_hooked_trie_lists_exactly_the_conversions_checked_above(tiny_models):
    """``HOOKED_TREE_ARCHITECTURES`` claims a teacher-forcing check for each entry: it is the set of the tiny
    architectures TransformerLens converts to a HookedTransformer (3.9; none under 4.x, whose "hooked" is a
    bridge), each of which the test above runs by trie."""
    converted = {model.cfg.original_architecture for architecture in BACKENDS_BY_ARCHITECTURE
                 for model in tiny_models[architecture].backends.values() if is_hooked(model)}
    assert converted == (set(HOOKED_TREE_ARCHITECTURES) if HookedTransformer is not None else set())


def test_a_hooked_transformer_runs_statements_as_rows_inside_its_sliding_window(tiny_models, tmp_path):
    """A HookedTransformer's trie runs statements as rows of a pass, each row no wider than its sliding window (which
    counts sequence indices): on a Gemma 2 (rotary, local and global layers) whose window just holds the widest
    statement, every statement whole, in fewer passes than statements; with a window one narrower, the widest as
    several tries of its answers, each with its prompt again; teacher forcing's numbers either way."""
    tiny = tiny_models["gemma2"]
    rows = candidate_rows(tiny.tokenizer, prefix=(tiny.tokenizer.bos_token_id,))
    widest = max(len(answer_trie(row).tokens) for row in rows)
    config = tiny_config("gemma2")
    for window in (widest, widest - 1):
        config.sliding_window = window
        model = load(save_tiny(tmp_path / str(window), config, tiny.tokenizer), backend="hooked", device="cpu")
        assert model.cfg.positional_embedding_type == "rotary" and hooked_tree_width(model) == window
        tries = [trie for row in rows for trie in answer_tries(row, window)]
        assert (len(tries) > len(rows)) == (window < widest) and max(len(t.tokens) for t in tries) <= window
        passes = []
        handle = model.blocks[-1].mlp.register_forward_hook(lambda module, args, out: passes.append(args[0].shape))
        try:
            fast = candidate_logprobs_cached(model, rows, batch_size=len(rows))
        finally:
            handle.remove()
        assert scores_by_tree(model) and 1 <= len(passes) < len(tries)
        assert sum(shape[0] for shape in passes) == len(tries) and max(shape[1] for shape in passes) <= window
        reference = score_answers(model, collate([e for row in rows for e in row], 0))
        torch.testing.assert_close(fast.logprob.flatten(), reference.logprob, rtol=0, atol=1e-4)
        assert fast.correct.flatten().tolist() == reference.correct.tolist()


@pytest.mark.parametrize("architecture", ["llama", "gemma2"])
def test_a_transformers_model_scores_by_trie_or_teacher_forced_as_teacher_forcing(architecture, tiny_models):
    """A transformers causal LM itself (what finetune-facts asks after training): by trie where its statements
    fit (Llama), teacher-forced where they pass its sliding window (the tiny Gemma 2's 4 tokens); the
    numbers of teacher forcing through its own forward either way."""
    from models.hf_training import CausalLM

    tiny = tiny_models[architecture]
    prefix = (tiny.tokenizer.bos_token_id,) if architecture == "gemma2" else None
    rows = candidate_rows(tiny.tokenizer, prefix=prefix)
    widest = max(len(answer_trie(row).tokens) for row in rows)
    assert scores_by_tree(tiny.hf) and _tree_fits(tiny.hf, widest) == (architecture == "llama")
    fast = candidate_logprobs_cached(tiny.hf, rows, batch_size=3)
    reference = score_answers(CausalLM(tiny.hf), collate([e for row in rows for e in row], 0))
    assert (fast.logprob.flatten() - reference.logprob).abs().max() < 1e-4
    assert fast.correct.flatten().tolist() == reference.correct.tolist()


def test_a_transformers_model_the_trie_is_not_checked_on_is_refused(tiny_tokenizer):
    import transformers

    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    assert not scores_by_tree(model)
    with pytest.raises(ValueError, match=r"Qwen3ForCausalLM \(qwen3\) is scored by trie only on .*to_hooked"):
        candidate_logprobs_cached(model, candidate_rows(tiny_tokenizer, n_controls=1))
    from models.hf_training import CausalLM  # a model of neither kind is named, not failed on an attribute

    with pytest.raises(TypeError, match=r"scores a TransformerLens model .* not a CausalLM; score another model by "
                                        r"teacher forcing"):
        candidate_logprobs_cached(CausalLM(model), candidate_rows(tiny_tokenizer, n_controls=1))


@pytest.mark.parametrize("backend", ["bridge", "hooked"] if HookedTransformer is not None else ["bridge"])
def test_a_model_with_a_hook_is_teacher_forced(backend, request, smollm2_tokenizer):
    """A hook would see the trie's layout, or a prefix cache's (continuations from position 0), not the
    statements': the model then runs every (prompt, answer) sequence whole, and the hook sees only those."""
    model = request.getfixturevalue(f"smollm2_{backend}")
    rows = candidate_rows(smollm2_tokenizer, n_controls=2)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: seen.append(x.shape[1]))]):
        assert not scores_by_tree(model)
        assert_fast_equals_teacher_forcing(model, rows, by_tree=False)
    assert seen and min(seen) >= min(len(row[0].prompt) for row in rows)  # every pass from position 0: no continuation
    assert scores_by_tree(model)  # and by trie again once the hook is gone


@pytest.mark.parametrize(("k", "positional"), [(2, "absolute"), (3, "absolute"), (3, "rotary")])
def test_a_token_world_model_scores_multi_token_answers_as_teacher_forcing(k, positional):
    """A model built from a named config (a HookedTransformer under 3.9, a bridge over TransformerLens 4's own
    model under 4.x) ranks every entity of a k-token world after every statement's prompt with teacher forcing's
    numbers. By trie, statements as rows of a pass, on either line with either positional kind, a 3-token world's
    statements, wider than the model's 32-token context, as several tries of their answers each: its last MLP then
    sees the tries' positions (and some padding), less than half of teacher forcing's."""
    from facts.token_worlds import TokenVocab, reversal_world
    from models.transformer import build_model

    vocab = TokenVocab()
    world = reversal_world(n_pairs=12, k=k, seed=2, alphabet_size=12)
    model = build_model("tiny", vocab.d_vocab, positional=positional, seed=1).eval()
    assert getattr(model.cfg, "original_architecture", None) is None
    rows = [[vocab.example(world, i, d, answer) for answer in world.entities()] for i, d, _ in world.statements()]
    tries = [trie for row in rows for trie in answer_tries(row, model.cfg.n_ctx)]
    assert (len(tries) > len(rows)) == (k == 3) and max(len(t.tokens) for t in tries) <= model.cfg.n_ctx
    seen = []
    handle = last_mlp(model).register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
    try:
        fast = candidate_logprobs_cached(model, rows, batch_size=8)
    finally:
        handle.remove()
    assert scores_by_tree(model)
    forced = sum(len(e.prompt) + len(e.answer) for row in rows for e in row)
    assert sum(len(t.tokens) for t in tries) <= sum(seen) < forced / 2
    reference = score_answers(model, collate([e for row in rows for e in row], 0))
    torch.testing.assert_close(fast.logprob.flatten(), reference.logprob, rtol=0, atol=1e-4)
    assert fast.correct.flatten().tolist() == reference.correct.tolist()


def test_a_first_token_whose_answers_are_wider_than_the_context_is_scored_without_the_trie():
    """A token-world model's statement whose answers after one first token alone pass its 32-token context (40
    three-token answers after one first token) cannot run as tries (a layout past the context fails in either
    line's forward): it is scored from the prefix cache (3.9) or teacher-forced (4.x), with teacher forcing's
    numbers, as is a narrower statement of the same call, which runs as two tries."""
    from models.transformer import build_model

    model = build_model("tiny", 64, seed=1).eval()
    wide = [Example((1, 2), (5, 10 + n, 7), 0, "forward", "train") for n in range(40)]
    narrow = [Example((3, 4), (5 + n % 2, 10 + n, 7), 1, "forward", "train") for n in range(40)]
    assert [len(t.tokens) for t in answer_tries(wide, model.cfg.n_ctx)] == [2 + 41]
    assert [len(t.tokens) for t in answer_tries(narrow, model.cfg.n_ctx)] == [2 + 21, 2 + 21]
    rows = [wide, narrow]
    fast = candidate_logprobs_cached(model, rows, batch_size=1)  # one statement a chunk
    reference = score_answers(model, collate([e for row in rows for e in row], 0))
    torch.testing.assert_close(fast.logprob.flatten(), reference.logprob, rtol=0, atol=1e-4)
    assert fast.correct.flatten().tolist() == reference.correct.tolist()


def test_a_statement_wider_than_a_context_splits_into_tries_of_whole_first_token_groups():
    """``answer_tries``: a statement that fits is its one trie; a wider one splits into tries of consecutive groups
    of its answers, no answer's first token in two of them, each no wider than asked and holding the prompt, every
    candidate in exactly one, scored at the rows its own trie gives it; a first token whose answers alone are wider
    stays one (too wide) trie."""
    prompt = (1, 2, 3)
    answers = [(10 + n % 4, 20 + n, 30) for n in range(12)]  # 4 first tokens of 3 answers: 1 + 3 nodes each
    row = [Example(prompt, answer, 0, "forward", "train") for answer in answers]
    assert [len(t.tokens) for t in answer_tries(row, 3 + 16)] == [3 + 16]
    tries = answer_tries(row, 3 + 9)
    assert [len(t.tokens) for t in tries] == [3 + 8, 3 + 8]
    assert sorted(c for t in tries for c in t.columns) == list(range(12))
    assert all(t.tokens[:3] == list(prompt) and len({a[0] for a in t.answers}) == 2 for t in tries)
    for trie in tries:
        assert trie.answers == [answers[c] for c in trie.columns]
        for answer, read in zip(trie.answers, trie.reads):  # each token read after its own prefix, at its position
            nodes = [trie.prompt_length + r - 1 for r in read[1:]]
            assert [trie.tokens[n] for n in nodes] == list(answer[:-1])
            assert [trie.positions[n] for n in nodes] == [len(prompt) - 1 + d for d in range(1, len(answer))]
    assert [len(t.tokens) for t in answer_tries(row, 3 + 7)] == [3 + 4] * 4
    assert [len(t.tokens) for t in answer_tries(row, 3 + 3)] == [3 + 4] * 4  # wider than asked: the caller checks


def last_mlp(model) -> torch.nn.Module:
    """The module of ``model``'s last MLP, as the model runs it (a bridge: the transformers model's own)."""
    from probes.shared_prompt import _transformers_model

    hf = _transformers_model(model)
    return hf.model.layers[-1].mlp if hf is not None else model.blocks[-1].mlp


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_answers_fed_the_same_tokens_share_one_continuation_from_the_prefix_cache(backend, tiny_models):
    """From a prefix cache (the tiny Gemma 2, whose prompts pass its window), a statement's answers fed the same
    tokens (all but their last) run one continuation row: the model's last MLP sees each prompt position once and
    each statement's distinct fed tokens once (for two-token answers, one position per distinct first token: the
    trie's nodes, what the floor counts; each three-token answer two), and every answer's log-prob and greedy
    success are teacher forcing's."""
    tiny = tiny_models["gemma2"]
    model = tiny.backends[backend]
    generator = torch.Generator().manual_seed(0)

    def tokens(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(1, VOCAB, (n,), generator=generator).tolist())

    rows = []
    for statement in range(6):
        prompt = tokens(7 + statement % 2)  # two lengths, both past the 4-token window
        firsts = [tokens(1) for _ in range(3)]  # 8 two-token answers over 3 first tokens
        pairs = [firsts[int(torch.randint(3, (1,), generator=generator))] + tokens(1) for _ in range(8)]
        stems = [tokens(2) for _ in range(2)]  # 4 three-token answers over 2 fed pairs
        triples = [stems[n % 2] + tokens(1) for n in range(4)]
        rows.append([Example(prompt, answer, statement, "forward", "train") for answer in pairs + triples])
    expected = sum(len(row[0].prompt) + len({e.answer[:-1] for e in row[:8]}) + 2 * len({e.answer[:-1] for e in row[8:]})
                   for row in rows)
    assert expected < sum(len(row[0].prompt) + sum(len(e.answer) - 1 for e in row) for row in rows)  # answers share
    seen = []
    handle = last_mlp(model).register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
    try:
        assert not scores_by_tree(model) or not _tree_fits(model, max(len(answer_trie(r).tokens) for r in rows))
        fast = candidate_logprobs_cached(model, rows, batch_size=4)
    finally:
        handle.remove()
    assert sum(seen) == expected
    reference = score_answers(model, collate([e for row in rows for e in row], 0))
    torch.testing.assert_close(fast.logprob.flatten(), reference.logprob, rtol=0, atol=1e-4)
    assert fast.correct.flatten().tolist() == reference.correct.tolist()


def hooked_models(request):
    tiny = request.getfixturevalue("tiny_models")["gemma2"]
    return {"smollm2": (request.getfixturevalue("smollm2_hooked"), request.getfixturevalue("smollm2_tokenizer"), None),
            "gemma2": (tiny.backends["hooked"], tiny.tokenizer, (tiny.tokenizer.bos_token_id,))}


@pytest.mark.parametrize("name", ["smollm2", "gemma2"])
def test_bundled_continuations_equal_pass_by_pass(name, request):
    """Several continuation passes of one prompt cache in one ``extend_bundle`` (each pass's attention on
    its own, the MLPs and unembedding of all together) give each pass's ``extend`` logits, and candidate
    scoring without a hook (SmolLM2: by trie; the Gemma 2, whose prompts pass its window: cached, with
    bundles) gives what it gives pass by pass with one (a hook turns the trie and bundling off). The
    Gemma 2 has post-attention and post-MLP norms, a sliding window and a soft-cap.

    On this project's CPUs the numbers are bitwise equal (a row of a matrix product of ≥ 4 rows does
    not depend on the other rows there; ``SMALL_PRODUCT``); the test allows float32 rounding, which
    another BLAS may sum in another order."""
    model, tokenizer, prefix = hooked_models(request)[name]
    scorer = PrefixCache(model)
    if not is_hooked(model):  # TransformerLens 4: a bridge, always pass by pass
        assert not scorer.bundles()
        return
    assert scorer.bundles()
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 1000, (3, 7), generator=generator)
    _, cache = scorer.prefix(prompts)
    shapes = [(4, 1), (2, 3), (5, 2), (1, 4)]  # rows × width, every pass ≥ SMALL_PRODUCT positions
    assert min(r * w for r, w in shapes) >= SMALL_PRODUCT
    parts = [(torch.randint(0, 3, (r,), generator=generator), torch.randint(0, 1000, (r, w), generator=generator))
             for r, w in shapes]
    with torch.no_grad():
        residual = scorer.extend_bundle(cache, parts).split([tokens.numel() for _, tokens in parts])
        for (rows, tokens), final in zip(parts, residual):
            alone = scorer.extend(cache, rows, tokens, torch.ones(tokens.shape, dtype=torch.bool))
            torch.testing.assert_close(hooked_readout(model, final), alone, rtol=1e-5, atol=1e-4)

    rows = candidate_rows(tokenizer, prefix=prefix)
    bundled = candidate_logprobs_cached(model, rows, batch_size=3)
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        assert not PrefixCache(model).bundles()  # a hook would see a bundle's shapes: pass by pass
        one_by_one = candidate_logprobs_cached(model, rows, batch_size=3)
    torch.testing.assert_close(bundled.logprob, one_by_one.logprob, rtol=0, atol=1e-4)
    assert torch.equal(bundled.correct, one_by_one.correct)


def test_readout_rows_of_several_passes_read_together_are_each_pass_s_own():
    """Passes of 2, 3 and 4 readout rows reading 1, 3 and 2 token ids a row, gathered until 5 rows wait: the
    first two are read in one call (the first's ids padded to three), the last at the flush, and each pass is
    handed, in the order they came, exactly what reading it alone gives. With ``at_once=1`` each pass is read
    as it comes."""
    generator = torch.Generator().manual_seed(0)
    passes = [(torch.randn(rows, 50, generator=generator), torch.randint(0, 50, (rows, k), generator=generator))
              for rows, k in ((2, 1), (3, 3), (4, 2))]
    for at_once, reads_expected in ((5, [(5, 3), (4, 2)]), (1, [(2, 1), (3, 3), (4, 2)])):
        reads, handed = [], []

        def read(rows, chosen):
            reads.append(tuple(chosen.shape))
            return chosen_logprobs(rows, chosen)

        readout = _Readout(read, at_once)
        for number, (rows, chosen) in enumerate(passes):
            readout.add(rows, chosen, lambda lp, hit, number=number: handed.append((number, lp, hit)))
        assert reads == reads_expected[:len(reads)] and len(reads) == len(reads_expected) - (at_once == 5)
        readout.flush()
        readout.flush()  # nothing waits: no read
        assert reads == reads_expected
        assert [number for number, _, _ in handed] == [0, 1, 2]
        for (number, lp, hit), (rows, chosen) in zip(handed, passes):
            alone = chosen_logprobs(rows, chosen)
            assert torch.equal(lp, alone[0]) and torch.equal(hit, alone[1]), number


def assert_scores_agree_across_float32_kernels(model, tokenizer):
    """log p of the truth and six controls for five real questions, by trie, under PyTorch's default kernels and
    under oneDNN's products (:func:`models.cpu_matmul.onednn_products`). Where oneDNN keeps float32 (any x86 CPU
    without AMX), the same within float32 rounding in another order (measured: 1.3e-4 at most over 512 answers of
    SmolLM2). Where it rounds the inputs to bfloat16 (a CPU with AMX), :func:`~models.cpu_matmul.float32_matmul`
    keeps PyTorch's default, and this shows why: oneDNN's numbers are more than 1e-2 away (0.35 nats measured over
    all of SmolLM2's 1,511 pairs)."""
    from models import cpu_matmul

    rows = candidate_rows(tokenizer)
    default = candidate_logprobs_cached(model, rows)
    float32_onednn = torch.backends.mkldnn.is_available() and cpu_matmul.onednn_keeps_float32()
    with cpu_matmul.onednn_products():
        onednn = candidate_logprobs_cached(model, rows)
    distance = (onednn.logprob - default.logprob).abs().max()
    if float32_onednn:
        assert distance < 5e-4
        assert onednn.correct.tolist() == default.correct.tolist()
    else:
        assert distance > 1e-2
        with float32_matmul("cpu") as kernels:
            kept = candidate_logprobs_cached(model, rows)
        assert kernels == cpu_matmul.DEFAULT and torch.equal(kept.logprob, default.logprob)


def test_smollm2_scores_agree_across_float32_kernels(smollm2_bridge, smollm2_tokenizer):
    assert_scores_agree_across_float32_kernels(smollm2_bridge, smollm2_tokenizer)


def test_gemma3_scores_agree_across_float32_kernels(gemma3_bridge):
    assert_scores_agree_across_float32_kernels(gemma3_bridge, gemma3_bridge.tokenizer)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_gemma3_270m_scores_by_trie_as_teacher_forcing_a_block_of_the_readout_at_a_time(backend, gemma3_hooked,
                                                                                       gemma3_bridge, monkeypatch):
    """Gemma 3 270M (BOS before every prompt, a 262,144-token vocabulary) by trie against teacher forcing, with the
    readout cut to blocks of 3 rows and slices of 10,000 tokens, the last one 2,144 (at the default 512 rows these
    statements are one block, and 1,024 divides the vocabulary)."""
    from models import scoring

    model = gemma3_hooked if backend == "hooked" else gemma3_bridge  # both named: the test joins the gemma3 group
    monkeypatch.setattr(scoring, "UNEMBED_ROWS", 3)
    monkeypatch.setattr(scoring, "UNEMBED_SLICE", 10_000)
    rows = candidate_rows(model.tokenizer, prefix=(model.tokenizer.bos_token_id,), n_controls=1)
    assert_fast_equals_teacher_forcing(model, rows, by_tree=True)


def test_scores_are_the_model_s_not_a_draw_of_its_dropout(tiny_models):
    """A transformers GPT-2 (dropout 0.1) left in training mode, as a training run hands its callbacks a model,
    scored twice: every path gives the eval-mode numbers (they had been two draws of the dropout), and each module's
    own mode is put back, the one left in eval mode included."""
    import copy

    from probes.attribution import direct_logit_attribution

    tiny = tiny_models["gpt2"]
    rows = candidate_rows(tiny.tokenizer, n_controls=2)
    truths = collate([row[0] for row in rows], 0)
    model = copy.deepcopy(tiny.hf).eval()
    assert model.config.resid_pdrop > 0
    reference = candidate_logprobs_cached(model, rows).logprob
    bridge = copy_model(tiny.backends["bridge"]).eval()  # the session's own stays as it is
    attributed = direct_logit_attribution(bridge, [row[0] for row in rows]).attribution
    model.train()
    model.transformer.h[0].eval()
    bridge_reference = score_answers(bridge.eval(), truths).logprob
    bridge.train()  # the wrapped transformers model too: the bridge runs its embedding dropout, not a submodule
    for _ in range(2):
        assert torch.equal(candidate_logprobs_cached(model, rows).logprob, reference)
        assert torch.equal(score_answers(bridge, truths).logprob, bridge_reference)
        assert direct_logit_attribution(bridge, [row[0] for row in rows]).attribution.equals(attributed)
    assert model.training and model.transformer.h[1].training and not model.transformer.h[0].training
    assert bridge.training and bridge.original_model.transformer.drop.training
    # converting or comparing a model handed over in training mode reads its own numbers, not dropout's (the
    # conversion's reference check had refused it as "other log-probabilities than transformers'")
    from models.pretrained import check_equivalence, to_hooked

    prompts = ["The capital of France is", "Q: Who is Tom Cruise's mother?\nA:"]
    assert check_equivalence(bridge, model, prompts, tiny.tokenizer) < 1e-4
    converted = to_hooked(model, tiny.tokenizer, tiny.folder, device="cpu")
    assert check_equivalence(converted, model, prompts, tiny.tokenizer) < 1e-4 and model.training
