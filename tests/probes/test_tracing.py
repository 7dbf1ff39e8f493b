"""Causal tracing on real models: exact identities, and the trained fact found where it lives."""

import copy
import json
import math
import re

import pandas as pd
import pytest
import torch

from analyses.probe import circuit_summary
from facts import celebrity
from facts.language import TemplateTokenizer
from facts.schema import FactSet
from facts.tokens import tokenize
from models.training import TrainConfig, train
from models.transformer import build_model
from probes.circuits import weight_change_table
from probes.stats import t_quantile
from probes.tracing import (
    COMPONENTS,
    Site,
    average_over_statements,
    buckets,
    given_positions,
    trace,
    trace_facts,
    trace_sites,
    tracing_headline,
)


@pytest.fixture(scope="module")
def tiny_before_after(world, vocab):
    """The 2-layer ``tiny`` model (attention and MLPs) at initialisation and after 40 full-batch AdamW steps on
    the reversal world."""
    before = build_model("tiny", vocab.d_vocab, seed=0).eval()
    after = build_model("tiny", vocab.d_vocab, seed=0)
    train(after, tokenize(world, vocab).where(split="train"), TrainConfig(steps=40, lr=1e-2, eval_every=40,
                                                                          progress=False))
    return before, after.eval()


@pytest.fixture(scope="module")
def trained_tiny(tiny_before_after):
    return tiny_before_after[1]


def one_way_statements(world, split, direction, n=12):
    """The first n statements of one split and direction."""
    return [(i, d) for i, d, s in world.statements() if s == split and d == direction][:n]


def same(logprobs, expected):
    """Equal as probabilities to 1e-6 (and as log-probabilities to 1e-5 + 1e-6·|log p|: float32 at log p ≈ −11 has
    a spacing of 1e-6, an answer's log p sums several tokens' rounded terms, and the restored runs are batched
    differently from the clean one; SmolLM2's noised answers sit at log p ≈ −22, 1.5e-5 apart)."""
    logprobs, expected = torch.as_tensor(logprobs), torch.as_tensor(expected).expand_as(torch.as_tensor(logprobs))
    return (torch.allclose(logprobs.exp(), expected.exp(), atol=1e-6, rtol=0)
            and torch.allclose(logprobs, expected, atol=1e-5, rtol=1e-6))


def sites_of(model, components, length):
    return [Site(c, layer, (p,)) for c in components for layer in range(model.cfg.n_layers) for p in range(length)]


@pytest.mark.parametrize("name", ["trained_one_layer", "trained_tiny"])
def test_identities_of_restoring_the_clean_run(request, name, world, vocab):
    model = request.getfixturevalue(name)
    components = [c for c in COMPONENTS if not (c == "mlp_out" and model.cfg.attn_only)]
    last = model.cfg.n_layers - 1
    for index, direction in [(0, "forward"), (3, "reverse")]:
        example = vocab.example(world, index, direction)
        given = given_positions(vocab, world, index, direction, example)
        assert given == (0,)  # "A →": the given entity is the first token
        everything = tuple(range(len(example.prompt)))
        sites = sites_of(model, components, len(example.prompt)) + [
            Site("resid_pre", layer, positions) for layer in range(model.cfg.n_layers) for positions in (given, everything)
        ] + [Site("resid_post", last, everything)]
        quiet = trace_sites(model, example, given, sites, noise_multiple=0.0, n_samples=2)
        assert same(quiet.restored, quiet.clean)
        assert same(quiet.corrupted, quiet.clean)

        traced = trace_sites(model, example, given, sites, n_samples=3, seed=index)
        restored = dict(zip(traced.sites, traced.restored))
        assert (traced.corrupted - traced.clean).abs().min() > 1e-3  # the noise does change the answer
        # the input of layer 0 at the noised positions, or of any layer at every position: the clean run
        for site in [Site("resid_pre", 0, given)] + [Site("resid_pre", layer, everything)
                                                     for layer in range(model.cfg.n_layers)]:
            assert same(restored[site], traced.clean)
        clean_everywhere = restored[Site("resid_post", last, everything)]
        assert same(clean_everywhere, traced.clean)
        # one-token answers are read at the last position only: the final state there is the clean answer,
        # the final state at the given entity is never read
        assert same(restored[Site("resid_post", last, (1,))], traced.clean)
        assert same(restored[Site("resid_post", last, (0,))], traced.corrupted)
        # the relation token before layer 0 is untouched by the noise: restoring it changes nothing
        assert same(restored[Site("resid_pre", 0, (1,))], traced.corrupted)


def test_an_average_s_interval_stays_within_what_its_value_can_be():
    """Two statements restored to p = 0.99 and 0.80 at a site: t with one degree of freedom gives 0.895 ± 1.21,
    past both ends of a probability; the interval is cut to [0, 1], an effect's (a difference of two
    probabilities) to [−1, 1], a log-probability's to ≤ 0, and t's interval is kept where it fits; ``recovered`` (a
    ratio) has no bounds, and a column the table lacks is refused by name."""
    rows = [{"fact": fact, "split": "train", "direction": "forward", "component": "resid_post", "layer": layer,
             "bucket": "last", "prob": prob, "effect": effect, "logprob": math.log(prob), "recovered": 2 * effect - 1}
            for layer, values in ((0, ((0.99, 0.98), (0.80, 0.79))), (1, ((0.50, 0.10), (0.52, 0.12))))
            for fact, (prob, effect) in enumerate(values)]
    table = pd.DataFrame(rows)
    half = t_quantile(0.975, 1) * pd.Series([0.99, 0.80]).std() / 2 ** 0.5
    prob = average_over_statements(table, "prob").set_index("layer")
    assert 0.895 - half < 0 and 0.895 + half > 1
    assert (prob.loc[0, "ci_low"], prob.loc[0, "ci_high"]) == (0.0, 1.0)
    effect = average_over_statements(table, "effect").set_index("layer")
    assert (effect.loc[0, "ci_low"], effect.loc[0, "ci_high"]) == pytest.approx((0.885 - half, 1.0))
    inside = t_quantile(0.975, 1) * pd.Series([0.50, 0.52]).std() / 2 ** 0.5
    assert (prob.loc[1, "ci_low"], prob.loc[1, "ci_high"]) == pytest.approx((0.51 - inside, 0.51 + inside))
    logprob = average_over_statements(table, "logprob").set_index("layer")
    assert logprob.loc[0, "ci_high"] == 0.0 and logprob.loc[0, "ci_low"] < math.log(0.80)
    recovered = average_over_statements(table, "recovered").set_index("layer")
    wide = t_quantile(0.975, 1) * pd.Series([0.96, 0.58]).std() / 2 ** 0.5
    assert (recovered.loc[0, "ci_low"], recovered.loc[0, "ci_high"]) == pytest.approx((0.77 - wide, 0.77 + wide))
    assert 0.77 - wide < -1 and 0.77 + wide > 1  # past both ends any bound could have had: none applied
    with pytest.raises(ValueError, match="no column 'restored' to average"):
        average_over_statements(table, "restored")


def test_the_trained_fact_is_recovered_where_it_lives(trained_tiny, world, vocab):
    chosen = one_way_statements(world, "train", "forward") + one_way_statements(world, "heldout", "reverse")
    table = trace_facts(trained_tiny, world, vocab, chosen, components=("resid_pre", "resid_post", "mlp_out"),
                        n_samples=3)
    full = average_over_statements(table).set_index(["split", "direction", "component", "layer", "bucket"])
    average = full["mean"]
    site = ("train", "forward", "resid_post", 0, "given last")  # its interval: Student's t over the statements
    effects = table[(table.split == "train") & (table.component == "resid_post") & (table.layer == 0)
                    & (table.bucket == "given last")].groupby("fact").effect.mean()
    half = t_quantile(0.975, len(effects) - 1) * effects.std() / len(effects) ** 0.5
    assert full.loc[site, "n"] == len(effects) > 1 and full.loc[site, "mean"] == pytest.approx(effects.mean())
    assert (full.loc[site, "ci_low"], full.loc[site, "ci_high"]) == pytest.approx((effects.mean() - half,
                                                                                   effects.mean() + half))
    trained = table[table.split == "train"].drop_duplicates("fact")
    assert trained.clean_prob.mean() > 0.9 and trained.corrupted_prob.mean() < 0.5 * trained.clean_prob.mean()
    gap = trained.clean_prob.mean() - trained.corrupted_prob.mean()
    early, late = average.loc[("train", "forward", "resid_pre", 0)], average.loc[("train", "forward", "resid_post", 1)]
    # early: the subject's own position carries it all; late: the last position
    assert early["given last"] == pytest.approx(gap, abs=1e-6) and early["last"] == pytest.approx(0, abs=1e-6)
    assert late["last"] == pytest.approx(gap, abs=1e-6) and late["given last"] == pytest.approx(0, abs=1e-6)
    # between them the fact moves from the subject to the last position: the MLP of layer 0 at the
    # subject does part of the work, at the last position of the last layer more of it
    mlp = average.loc[("train", "forward", "mlp_out")]
    assert mlp[(1, "last")] > 0.1 * gap
    # the held-out reverse is not known, so nothing recovers it: every restored probability stays at chance
    heldout = table[table.split == "heldout"]
    assert heldout.clean_prob.max() < 0.05 and heldout.prob.max() < 0.05
    headline = tracing_headline(table)
    assert set(headline) == {"train/forward", "heldout/reverse"}
    assert headline["train/forward"]["components"]["resid_pre"]["peak_bucket"] in ("given last", "last")
    assert headline["heldout/reverse"]["components"]["resid_post"]["max_restored_prob"] < 0.05
    for question, entry in headline.items():  # the statements behind each peak's mean: its site's own count
        split, direction = question.split("/")
        for component, peak in entry["components"].items():
            site = (split, direction, component, peak["peak_layer"], peak["peak_bucket"])
            assert peak["peak_n"] == full.loc[site, "n"] == table[
                (table.split == split) & (table.direction == direction) & (table.component == component)
                & (table.layer == peak["peak_layer"]) & (table.bucket == peak["peak_bucket"])].fact.nunique()
    # the sites of at least half the peak rise: resid_pre at layer 0 only at the given entity (the last position is
    # untouched before layer 0), resid_post of the last layer only at the last position (its state at the given
    # entity is never read)
    forward = headline["train/forward"]["components"]
    assert 0 in forward["resid_pre"]["half_peak_layers"]["given last"]
    assert 0 not in forward["resid_pre"]["half_peak_layers"].get("last", [])
    assert 1 in forward["resid_post"]["half_peak_layers"]["last"]
    assert 1 not in forward["resid_post"]["half_peak_layers"].get("given last", [])


def test_a_peak_of_one_statement_says_so():
    """A "given middle" bucket exists only for entities of three or more tokens: here fact 0's alone. Its rise is
    the largest, so it is the peak, the mean of one statement with no interval, under a headline of three."""
    from analyses.finetune_tracing import tracing_words

    rows = [{"fact": fact, "split": "train", "direction": "forward", "component": "resid_pre", "layer": 0,
             "bucket": bucket, "effect": effect, "prob": 0.1 + effect, "clean_prob": 0.95, "corrupted_prob": 0.1}
            for fact in range(3) for bucket, effect in (("given middle", 0.8), ("last", 0.3))
            if bucket == "last" or fact == 0]
    headline = tracing_headline(pd.DataFrame(rows))
    peak = headline["train/forward"]["components"]["resid_pre"]
    assert headline["train/forward"]["n_statements"] == 3
    assert (peak["peak_bucket"], peak["peak_n"]) == ("given middle", 1) and math.isnan(peak["peak_effect_ci95"][0])
    words = tracing_words({"after": headline})
    assert "(peak +0.800 at L0 given middle, 1 statement)" in words


def test_the_headline_in_words_before_and_after_training(tiny_before_after, world, vocab):
    """At initialisation nothing knows the fact (nothing to recover); after training the forward answer is
    recovered at the given entity's last token entering layer 0 and at the last position after layer 1, and the
    held-out reverse stays at chance wherever restored."""
    from analyses.finetune_tracing import tracing_words

    chosen = one_way_statements(world, "train", "forward", 6) + one_way_statements(world, "heldout", "reverse", 6)
    components = ("resid_pre", "resid_post")
    entry = {stage: tracing_headline(trace_facts(model, world, vocab, chosen, components=components, n_samples=2))
             for stage, model in zip(("before", "after"), tiny_before_after)}
    words = tracing_words(entry)
    before, after = words.split("After fine-tuning, ")
    assert before.startswith("Before fine-tuning, the forward answer (p 0.0")
    assert before.count(": nowhere (largest rise +0.00") == 2
    assert ("the residual stream entering the layer: layer 0 at the given entity's last token and layer 1 at the "
            "last prompt token (peak +") in after
    assert re.search(r"\(peak \+[0-9.]+ at L[01] (given last|last), 6 statements\)", after)  # its site's count
    assert "the hidden state: layers 0–1 at the last prompt token" in after
    most = re.search(r"held-out reverse answer \(p ([0-9.e-]+), noised ([0-9.e-]+)\) is restored to at most p "
                     r"([0-9.e-]+) anywhere", after)
    assert most and float(most[3]) < 0.05
    assert float(most[3]) == pytest.approx(max(c["max_restored_prob"] for c in entry["after"]["heldout/reverse"]
                                               ["components"].values()), rel=0.05)


def test_the_noise_is_no_draw_of_the_traced_models_own_initial_weights(trained_tiny, world, vocab):
    """Tracing seed n seeded its noise generator with n, and a token-world model of seed n draws its initial W_E
    from a generator seeded with n: the noise of a seed-0 model's first statement was its own initial embeddings
    of the first tokens, scaled (cosine 1). The noise, read as the corrupted run's minus the clean run's residual
    stream entering block 0 at the given entity, is now unrelated to them."""
    example = vocab.example(world, 0, "forward")
    given = given_positions(vocab, world, 0, "forward", example)
    initial = build_model("tiny", vocab.d_vocab, seed=0).W_E.detach()
    embedded = []
    trained_tiny.add_hook("blocks.0.hook_resid_pre", lambda resid, hook: embedded.append(resid.detach().clone()))
    try:
        trace_sites(trained_tiny, example, given, [Site("resid_pre", 0, (given[0],))], n_samples=2, seed=0)
    finally:
        trained_tiny.reset_hooks()
    clean, corrupted = embedded[0][0], embedded[1]  # the clean run, then the corrupted one
    assert corrupted.shape[0] == 2
    noise = (corrupted[:, list(given)] - clean[list(given)]).reshape(2 * len(given), -1)
    assert noise.norm(dim=-1).min() > 0
    cosine = torch.nn.functional.cosine_similarity(noise, initial[: len(noise)], dim=-1)
    assert cosine.abs().max() < 0.5, cosine


def test_buckets_follow_meng_et_al():
    assert buckets(9, (2, 3, 4)) == ["before", "before", "given first", "given middle", "given last", "after first",
                                     "further", "further", "last"]
    assert buckets(2, (0,)) == ["given last", "last"]


def test_bad_sites_are_refused(trained_one_layer, world, vocab):
    example = vocab.example(world, 0, "forward")
    with pytest.raises(ValueError, match="no MLP"):
        trace_sites(trained_one_layer, example, (0,), [Site("mlp_out", 0, (0,))])
    with pytest.raises(ValueError, match="out of range"):
        trace_sites(trained_one_layer, example, (0,), [Site("resid_pre", 1, (0,))])
    with pytest.raises(ValueError, match="prompt positions"):
        trace_sites(trained_one_layer, example, (5,), [Site("resid_pre", 0, (0,))])


# --- SmolLM2 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def celebrity_pair():
    """Two celebrity facts (child → parent, as check-asymmetry asks them)."""
    facts = celebrity.load_celebrity_pairs()
    return FactSet(tuple(facts)[:2], world="celebrity")


def test_smollm2_identities_and_entity_positions(smollm2_hooked, smollm2_tokenizer, celebrity_pair):
    statements = TemplateTokenizer(smollm2_tokenizer, celebrity.TEMPLATES)
    example = statements.example(celebrity_pair, 0, "forward")
    given = given_positions(statements, celebrity_pair, 0, "forward", example)
    spelled = smollm2_tokenizer.decode([example.prompt[p] for p in given]).strip()
    assert spelled == celebrity_pair[0].subject
    model, last = smollm2_hooked, smollm2_hooked.cfg.n_layers - 1
    assert len(example.answer) > 1  # later answer tokens read the entity through earlier answer positions too
    everything = tuple(range(len(example.prompt) + len(example.answer)))
    sites = [Site("resid_pre", 0, given), Site("resid_pre", 10, everything), Site("resid_post", last, everything)]
    before = [Site("resid_pre", layer, (0,)) for layer in (0, 20)] if given[0] > 0 else []
    assert before  # the celebrity template puts words before the entity
    for every_position in (True, False):  # the sites before the entity run too, or are the corrupted run
        traced = trace_sites(model, example, given, sites + before, n_samples=2, earlier_from_cache=not every_position)
        assert (traced.corrupted - traced.clean).abs().max() > 1e-2
        for restored in traced.restored[:3]:
            assert same(restored, traced.clean)
        for restored in traced.restored[3:]:  # a position before the entity is the same in both runs
            assert same(restored, traced.corrupted)
    table = trace(model, example, given, components=("resid_post",), layers=[0, 15, last], n_samples=2)
    assert len(table) == 3 * len(example.prompt) and math.isfinite(table.prob.sum())


# --- Gemma 2 and 3 (tiny random configs: sliding window, post-attention/MLP norms, scaled embeddings) -----


@pytest.mark.parametrize("architecture", ["gemma2", "gemma3"])
def test_gemma_identities_of_restoring_the_clean_run(architecture, tiny_models):
    """The identities of the token-world models on Gemma 2 and 3's HookedTransformer: a 7-token prompt (past the
    4-token sliding window) and a 2-token answer, the given entity at positions 2 and 3."""
    from facts.tokens import Example

    model = tiny_models[architecture].backends["hooked"]
    prompt = torch.randint(0, 1000, (7,), generator=torch.Generator().manual_seed(2)).tolist()
    example, given, last = Example(tuple(prompt), (5, 9), 0, "forward", "train"), (2, 3), model.cfg.n_layers - 1
    everything = tuple(range(len(example.prompt) + len(example.answer)))
    every_site = sites_of(model, COMPONENTS, len(everything))
    quiet = trace_sites(model, example, given, every_site, noise_multiple=0.0, n_samples=2)
    assert same(quiet.restored, quiet.clean) and same(quiet.corrupted, quiet.clean)

    clean_again = [Site("resid_pre", 0, given), Site("resid_post", last, everything)] + [
        Site("resid_pre", layer, everything) for layer in range(model.cfg.n_layers)]
    untouched = [Site(c, layer, (p,)) for c in COMPONENTS for layer in range(model.cfg.n_layers) for p in (0, 1)]
    for every_position in (True, False):  # the sites before the entity run too, or are the corrupted run
        traced = trace_sites(model, example, given, clean_again + untouched, n_samples=3, seed=1,
                             earlier_from_cache=not every_position)
        assert (traced.corrupted - traced.clean).abs().min() > 1e-3  # the noise does change the answer
        assert same(traced.restored[: len(clean_again)], traced.clean)
        assert same(traced.restored[len(clean_again) :], traced.corrupted)


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "gemma3"])
def test_the_noise_is_scaled_to_the_embeddings_the_model_runs(architecture, tiny_models):
    """σ is the spread of what ``hook_embed`` outputs, on every line: TransformerLens 4's bridge (what
    backend='hooked' gives there) runs Gemma's √d_model inside its embedding and keeps W_E unscaled, and the noise
    had been σ(W_E), √64 = 8 times too weak on a tiny Gemma (25 times on Gemma 3 270M)."""
    from probes import tracing

    model = tiny_models[architecture].backends["hooked"]
    tokens = torch.arange(model.cfg.d_vocab).view(-1, 64)  # every token, in rows the context holds
    _, cache = model.run_with_cache(tokens, names_filter="hook_embed", stop_at_layer=1)
    embedded = cache["hook_embed"].float()
    assert tracing.noise_std(model) == pytest.approx(tracing.NOISE_MULTIPLE * float(embedded.std()), rel=1e-4)


@pytest.mark.parametrize("name", ["trained_tiny", "gpt2", "neox", "qwen2", "llama", "gemma2", "gemma3", "smollm2_hooked"])
def test_restored_rows_read_earlier_positions_from_the_corrupted_cache(request, name, tiny_models, vocab, world):
    """A restored site at position p changes no earlier position: running each restored row from its chunk's first
    restored position, with the corrupted run's keys and values before it, gives every site's answer log-probability
    of the run over all positions (float32 rounding apart). Every component, layer and position (prompt and answer),
    on absolute positions (the token world's ``tiny``, GPT-2 with its biases), rotary grouped-query attention (Llama,
    Qwen2 with its query/key/value biases, SmolLM2), GPT-NeoX's partial rotary and parallel block, and Gemma's
    sliding window (a prompt past its 4 tokens) and post-norms; passes of 4 and 8 rows (SmolLM2: 8, two layers)."""
    from facts.tokens import Example
    from probes.tracing import reads_earlier_from_cache

    if name in ("trained_tiny", "smollm2_hooked"):
        model = request.getfixturevalue(name)
    else:
        model = tiny_models[name].backends["hooked"]
    assert reads_earlier_from_cache(model)  # else both runs below would be one path
    if name == "trained_tiny":
        example = vocab.example(world, 0, "forward")
        given = given_positions(vocab, world, 0, "forward", example)
    elif name == "smollm2_hooked":
        pair, statements = request.getfixturevalue("celebrity_pair"), TemplateTokenizer(
            request.getfixturevalue("smollm2_tokenizer"), celebrity.TEMPLATES)
        example = statements.example(pair, 0, "forward")
        given = given_positions(statements, pair, 0, "forward", example)
    else:
        prompt = torch.randint(0, 1000, (7,), generator=torch.Generator().manual_seed(2)).tolist()
        example, given = Example(tuple(prompt), (5, 9), 0, "forward", "train"), (2, 3)
    length = len(example.prompt) + len(example.answer)
    small = name != "smollm2_hooked"
    layers, components = ((range(model.cfg.n_layers), COMPONENTS) if small
                          else ((20, model.cfg.n_layers - 1), ("resid_post", "mlp_out")))
    sites = [Site(c, layer, (p,)) for c in components for layer in layers for p in range(length)]
    sites.append(Site("resid_post", layers[0], (length - 1, 1)))  # two positions: the chunk starts at the earlier
    for batch_size in (4, 8) if small else (8,):
        whole = trace_sites(model, example, given, sites, n_samples=2, batch_size=batch_size, earlier_from_cache=False)
        cached = trace_sites(model, example, given, sites, n_samples=2, batch_size=batch_size)
        assert torch.equal(cached.corrupted, whole.corrupted) and cached.clean == whole.clean
        assert (whole.restored - whole.corrupted).abs().max() > 1e-3  # restoring does move the answer
        assert same(cached.restored, whole.restored)


@pytest.mark.parametrize("architecture", ["llama", "gemma3", "qwen2"])
def test_tracing_a_bridge_outside_compatibility_mode_gives_the_hooked_backends_table(architecture, tiny_models):
    """Under TransformerLens 4 both backends are bridges over the same Hugging Face modules, ``"bridge"`` outside
    compatibility mode: its ``start_at_layer``, and HookedTransformer's hook names in ``run_with_cache`` and
    ``run_with_hooks``, give every number of the table as ``"hooked"`` does (to float32 rounding). 3.9's bridge
    cannot start at a layer and is refused, naming the backend to use."""
    from facts.tokens import Example
    from models.backend import TL_MAJOR

    backends = tiny_models[architecture].backends
    prompt = torch.randint(0, 1000, (7,), generator=torch.Generator().manual_seed(2)).tolist()
    example, given = Example(tuple(prompt), (5, 9), 0, "forward", "train"), (2, 3)
    if TL_MAJOR < 4:
        with pytest.raises(ValueError, match="TransformerBridge .*backend='hooked'"):
            trace(backends["bridge"], example, given, n_samples=2)
        return
    assert not backends["bridge"].compatibility_mode and backends["hooked"].compatibility_mode
    bridge, hooked = (trace(backends[b], example, given, n_samples=2) for b in ("bridge", "hooked"))
    assert (hooked.logprob - hooked.corrupted_logprob).abs().max() > 1e-3  # restoring does move the answer
    numbers = ["prob", "logprob", "clean_prob", "clean_logprob", "corrupted_prob", "corrupted_logprob", "effect",
               "recovered", "noise_std"]
    pd.testing.assert_frame_equal(bridge.drop(columns=numbers), hooked.drop(columns=numbers))
    pd.testing.assert_frame_equal(bridge[numbers], hooked[numbers], check_exact=False, rtol=0, atol=1e-5)  # NaN alike


# --- the weight change read at the entities --------------------------------------------------------


def test_no_weight_change_reads_zero(tiny_before_after, world, vocab):
    before, _ = tiny_before_after
    parameters = dict(before.named_parameters(remove_duplicate=False))
    table = weight_change_table(before, copy.deepcopy(before), world, vocab, vocab.entity_ids, n_controls=8)
    # the models are left as they were: the same parameter objects under every name (PyTorch issue #164759)
    assert all(p is parameters[name] for name, p in before.named_parameters(remove_duplicate=False))
    assert set(table.circuit) == {"delta_mlp", "delta_ov"} and len(table) == 2 * 2 * len(world)
    assert (table.entry_ab == 0).all() and (table.entry_ba == 0).all()


def test_a_change_of_the_mlp_output_weights_is_read_exactly(tiny_before_after, world, vocab):
    """With only W_out changed the MLP's output is linear in the change: the read is the exact difference
    of the two MLPs' outputs at the subject's state, dotted with the object's unembedding (final norm's
    scale)."""
    before, _ = tiny_before_after
    after = copy.deepcopy(before)
    with torch.no_grad():
        after.blocks[1].mlp.W_out.add_(0.1 * torch.randn(after.blocks[1].mlp.W_out.shape,
                                                         generator=torch.Generator().manual_seed(1)).to(before.cfg.device))
    table = weight_change_table(before, after, world, vocab, vocab.entity_ids, layers=[1], n_controls=8)
    mlp = table[table.circuit == "delta_mlp"].set_index("fact")
    assert (table[table.circuit == "delta_ov"].entry_ab.abs() < 1e-6).all()
    for index in (0, 5):
        example = vocab.example(world, index, "forward")
        with torch.no_grad():
            _, cache = before.run_with_cache(torch.tensor([example.prompt]))
            x = before.blocks[1].ln2(cache["blocks.1.hook_resid_mid"][:, 0])
            change = after.blocks[1].mlp(x[:, None]) - before.blocks[1].mlp(x[:, None])
        target = before.W_U[:, vocab.entity_ids(world[index].object)[0]] * before.ln_final.w
        target = target - target.mean()
        assert float(mlp.entry_ab[index]) == pytest.approx(float((change[0, 0] @ target).detach()), rel=1e-4, abs=1e-6)


def test_a_small_change_of_the_ov_weights_is_read_to_float32_precision(tiny_before_after, world, vocab):
    """W_V and W_O of layer 1 moved by 1e-5 (a short fine-tune's order): ΔOV equals the float64 difference of
    the two products to 1e-4 relative. The difference of the float32 products themselves lost it to
    cancellation (the products are ~10⁴ times the change)."""
    before, _ = tiny_before_after
    after = copy.deepcopy(before)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for weight in (after.blocks[1].attn.W_V, after.blocks[1].attn.W_O):
            weight.add_(1e-5 * torch.randn(weight.shape, generator=generator).to(weight.device))
    table = weight_change_table(before, after, world, vocab, vocab.entity_ids, layers=[1], n_controls=8)
    ov = table[table.circuit == "delta_ov"].set_index("fact")
    largest = 0.0
    for index in (0, 5, 9):
        example = vocab.example(world, index, "forward")
        with torch.no_grad():
            _, cache = before.run_with_cache(torch.tensor([example.prompt]))
            x = before.blocks[1].ln1(cache["blocks.1.hook_resid_pre"][:, 0]).double()
        products = [torch.einsum("hmd,hde->me", model.blocks[1].attn.W_V.detach().double(),
                                 model.blocks[1].attn.W_O.detach().double()) for model in (before, after)]
        target = (before.W_U[:, vocab.entity_ids(world[index].object)[0]] * before.ln_final.w).detach().double()
        target = target - target.mean()
        expected = float(x[0] @ (products[1] - products[0]) @ target)
        assert float(ov.entry_ab[index]) == pytest.approx(expected, rel=1e-4)
        largest = max(largest, abs(expected))
    assert largest > 1e-6  # a change to read


def test_training_moves_the_trained_direction_not_the_held_out_one(tiny_before_after, world, vocab):
    before, after = tiny_before_after
    table = weight_change_table(before, after, world, vocab, vocab.entity_ids)
    summary = {row["circuit"]: row for row in circuit_summary(table)}
    assert set(summary) == {"delta_mlp L0", "delta_mlp L1", "delta_ov L0", "delta_ov L1"}
    for row in summary.values():
        assert row["n_one_way"] == 60
        assert row["z_trained"] > 0.4 and abs(row["z_heldout"]) < 0.4 and row["asymmetry"] > 0.4


def test_a_layer_whose_weights_did_not_change_is_never_the_most_asymmetric(tiny_before_after, world, vocab):
    """Block 0 frozen (as `finetune-facts --trainable-blocks 1` leaves it): its ΔMLP and ΔOV read 0 at every entity,
    so their z-scores, and asymmetry, are NaN; the headline and the top five name L1, never L0 (a NaN sorted first
    used to win), and with every layer unchanged they say that no layer has a finite asymmetry."""
    from analyses.finetune_tracing import format_finetune_tracing, tracing_words, weight_change_summary

    before, trained = tiny_before_after
    frozen = copy.deepcopy(trained)
    frozen.blocks[0].load_state_dict(before.blocks[0].state_dict())
    entry = {"weight_change": weight_change_summary(weight_change_table(before, frozen, world, vocab,
                                                                       vocab.entity_ids, n_controls=8))}
    by_name = {row["circuit"]: row for row in entry["weight_change"]}
    assert math.isnan(by_name["delta_mlp L0"]["asymmetry"]) and math.isnan(by_name["delta_ov L0"]["asymmetry"])
    assert by_name["delta_mlp L1"]["asymmetry"] > 0.4 and by_name["delta_ov L1"]["asymmetry"] > 0.4
    words = tracing_words(entry)
    assert "most asymmetric for ΔMLP at L1 (z trained" in words and "ΔOV at L1 (z trained" in words
    assert "L0" not in words and "nan" not in words
    listed = format_finetune_tracing(entry).split("(z trained / held-out): ")[1]
    largest_first = sorted(["delta_mlp L1", "delta_ov L1"], key=lambda name: -abs(by_name[name]["asymmetry"]))
    assert [" ".join(item.split()[:2]) for item in listed.split(", ")] == largest_first
    unchanged = {"weight_change": weight_change_summary(weight_change_table(before, copy.deepcopy(before), world, vocab,
                                                                            vocab.entity_ids, n_controls=8))}
    words = tracing_words(unchanged)
    assert words == ("ΔMLP and ΔOV: no layer has a finite asymmetry (z is undefined where the controls' entries do "
                     "not vary, as at weights that did not change).")
    assert format_finetune_tracing(unchanged).endswith("(z trained / held-out): no layer has a finite asymmetry "
                                                       "(z is undefined where the controls' entries do not vary, as "
                                                       "at weights that did not change)")


# --- finetune-facts' record: before and after ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tiny_tokenizer, tmp_path_factory):
    """A tiny random Llama over SmolLM2's tokenizer cut to its first tokens, as a HookedTransformer."""
    from models.pretrained import load
    from tiny_models import save_tiny, tiny_config

    folder = save_tiny(tmp_path_factory.mktemp("llama"), tiny_config("llama"), tiny_tokenizer)
    return load(folder, backend="hooked", device="cpu")


def test_finetune_tracing_records_before_and_after(tiny_llama, tiny_tokenizer, tmp_path):
    from analyses.finetune_tracing import FinetuneTracing, format_finetune_tracing
    from facts.language import people_world

    model = copy.deepcopy(tiny_llama)
    facts = people_world(n_per_group=4, seed=0, groups=("p2d",))
    tracer = FinetuneTracing(model, facts, tiny_tokenizer, n_facts=1, n_samples=2)
    with torch.no_grad():  # "fine-tuning" that moves the MLPs' output weights only
        for block in model.blocks:
            block.mlp.W_out.add_(0.2 * torch.randn(block.mlp.W_out.shape, generator=torch.Generator().manual_seed(0)))
    entry = tracer.finish(model, tmp_path)
    assert entry["figures"] == ["tracing_before.png", "tracing_after.png", "weight_change.png"]
    table = pd.read_csv(tmp_path / "tracing.csv")
    assert set(zip(table.stage, table.direction)) == {(s, d) for s in ("before", "after") for d in ("forward", "reverse")}
    assert set(entry["after"]) == {"train/forward", "heldout/reverse"}
    before, after = (table[table.stage == s].clean_logprob.unique() for s in ("before", "after"))
    assert not set(before) & set(after)  # the model did change
    changes = pd.read_csv(tmp_path / "weight_change.csv")
    assert (changes[changes.circuit == "delta_ov"].entry_ab.abs() < 1e-6).all()
    assert (changes[changes.circuit == "delta_mlp"].entry_ab.abs() > 1e-6).all()
    assert "weight change read at the entities" in format_finetune_tracing(entry)
    assert format_finetune_tracing(entry).startswith(entry["headline"])
    assert entry["headline"].startswith("Before fine-tuning, the forward answer (p ")
    assert "After fine-tuning, the forward answer" in entry["headline"]
    assert "The weight change read at the entities is most asymmetric for ΔMLP at L" in entry["headline"]
    # compare's columns for the fine-tuned row read the same entry
    from analyses.compare import tracing_columns

    (tmp_path / "summary.json").write_text(json.dumps({"tracing": entry}))
    columns = tracing_columns(tmp_path)
    components = entry["after"]["heldout/reverse"]["components"].values()
    assert columns["reverse_max_restored"] == max(c["max_restored_prob"] for c in components)
    mlp = entry["after"]["train/forward"]["components"]["mlp_out"]
    assert columns["forward_peak_mlp"] == f"L{mlp['peak_layer']} {mlp['peak_bucket']}"
    assert columns["delta_mlp_peak_layer"].startswith("delta_mlp L")


def test_facts_that_train_the_reverse_are_not_traced_and_say_so_while_their_weight_change_is_read(
        tiny_llama, tiny_tokenizer, tmp_path):
    """d2p facts (description → name trained, the name's forward held out) have no trained forward answer to
    follow: the run traced nothing and said nothing, and compare then dropped the weight change it had read."""
    from analyses.compare import tracing_columns
    from analyses.finetune_tracing import NOT_TRACED, FinetuneTracing, format_finetune_tracing
    from facts.language import people_world

    model = copy.deepcopy(tiny_llama)
    tracer = FinetuneTracing(model, people_world(n_per_group=4, seed=0, groups=("d2p",)), tiny_tokenizer,
                             n_facts=1, n_samples=2)
    with torch.no_grad():
        model.blocks[0].mlp.W_out.add_(0.2)
    entry = tracer.finish(model, tmp_path)
    assert entry["statements"] == 0 and entry["not_traced"] == NOT_TRACED and "after" not in entry
    assert f"tracing: nothing traced: {NOT_TRACED}" in format_finetune_tracing(entry)
    assert any(r["n_one_way"] == 4 for r in entry["weight_change"])
    (tmp_path / "summary.json").write_text(json.dumps({"tracing": entry}))
    columns = tracing_columns(tmp_path)
    assert columns["forward_peak_mlp"] is None and columns["delta_mlp_peak_layer"] == "delta_mlp L0"


def test_finetune_tracing_traces_the_trained_sentence_of_a_templates_file(tiny_llama, tiny_tokenizer):
    """A run trained from a templates file is traced in that file's first (trained) paraphrase, for relations
    the built-in templates do not know (before: "no template number 0 for relation 'job'", after the model
    loaded) and for p2d alike (before: the built-in wording, never trained, reported as the trained sentence)."""
    from analyses.finetune_tracing import FinetuneTracing
    from facts.schema import Fact

    facts = FactSet([Fact(name, "job", job, "job_of", forward="train", reverse="heldout", group="p2d")
                     for name, job in (("Ann Lee", "the author of 'X'"), ("Tom Hardy", "the painter of 'Y'"),
                                       ("Ivy Moss", "the maker of 'Z'"))])
    templates = {"job": ("{given} works as {answer}.",), "job_of": ("Known for being {given}, {answer} lives.",)}
    tracer = FinetuneTracing(copy.deepcopy(tiny_llama), facts, tiny_tokenizer, n_facts=1, n_samples=1,
                             templates=templates)
    prompt = tiny_tokenizer.decode(tracer.statements.example(facts, 0, "forward").prompt)
    assert prompt.endswith("Ann Lee works as") and set(tracer.tables["before"].direction) == {"forward", "reverse"}


def test_a_bfloat16_model_reads_the_weight_change_of_its_float32_self(tiny_before_after, world, vocab):
    """A bfloat16 model's norms hand bfloat16 states to the float32 weight differences (TransformerLens's norms
    return ``cfg.dtype``); the reads failed on mixed dtypes. They now read the float32 model's entries to
    bfloat16's rounding."""
    before, after = tiny_before_after
    full = weight_change_table(before, after, world, vocab, vocab.entity_ids, layers=[1], n_controls=8)
    halves = []
    for model in (before, after):
        half = copy.deepcopy(model).to(torch.bfloat16)
        half.cfg.dtype = torch.bfloat16
        halves.append(half)
    half = weight_change_table(*halves, world, vocab, vocab.entity_ids, layers=[1], n_controls=8)
    for column in ("entry_ab", "entry_ba"):
        scale = full[column].abs().max()
        assert scale > 0 and (half[column] - full[column]).abs().max() < 0.05 * scale
