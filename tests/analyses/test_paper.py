"""The paper's token-level experiments (analyses.paper) on real HookedTransformers, small settings."""

import json
import math

import pytest
import torch

from analyses.paper import (
    ChainConfig, EmbeddingConfig, InContextConfig, MultiTokenConfig, PositionalConfig, chain_triples, cosine_stats,
    curse_holds, format_chain, format_embeddings, format_in_context, format_multi_token, format_positional,
    one_partner_context_world, reproduce_chain, reproduce_embeddings, reproduce_in_context, reproduce_multi_token,
    reproduce_positional,
)
from analyses.reproduce import ReversalConfig
from facts.token_worlds import BACKWARD, FORWARD, LEADS_TO, chain_world

PNG = b"\x89PNG\r\n\x1a\n"
SMALL_REVERSAL = ReversalConfig(n_pairs=100, steps=60, eval_every=20)


def _history(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _written(out, *names):
    for name in names:
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG, name


def test_chain_triples_link_x_to_y_to_z():
    world = chain_world(n_triples=20, seed=1)
    triples = chain_triples(world)
    assert len(triples) == 20
    for first, second, leads in triples:
        assert (world[first].relation, world[second].relation, world[leads].relation) == (FORWARD, FORWARD, LEADS_TO)
        assert world[first].object == world[second].subject
        assert (world[leads].subject, world[leads].object) == (world[first].subject, world[second].object)


def test_one_partner_control_world_splits_pairs_70_30_with_one_x_per_y():
    world = one_partner_context_world(n_pairs=50, seed=0)
    assert (world.count("train"), world.count("heldout")) == (35, 15)
    assert all(f.context and f.forward is None for f in world)
    assert len({f.object for f in world}) == 50  # "y ←" names exactly one x: memorisable


def test_cosine_stats_tell_structure_from_noise():
    n = 200
    noise = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    paired = cosine_stats(torch.eye(n) + 0.01 * noise)
    assert paired["paired_mean_rank"] == 1 and paired["nearest_accuracy"] == 1 and paired["effect_size"] > 10
    none = cosine_stats(noise)
    assert abs(none["effect_size"]) < 0.3
    assert abs(none["paired_mean_rank"] - none["chance_mean_rank"]) < 15 and none["chance_mean_rank"] == (n + 1) / 2
    assert none["chance_nearest_accuracy"] == 1 / n


def test_curse_verdict():
    base = {"train_prob": 0.995, "heldout_reverse_logprob": -9.0, "chance_logprob": -math.log(200),
            "heldout_reverse_accuracy": 0.0, "n_heldout": 60, "chance_accuracy": 1 / 200,
            "heldout_reverse_mean_rank": 150.0, "chance_mean_rank": 100.5}
    assert curse_holds(base)
    assert not curse_holds(base | {"train_prob": 0.9})
    assert not curse_holds(base | {"heldout_reverse_logprob": -2.0})
    # a mean log p below chance from half the answers right (log p ≈ 0) and half far below: not at chance
    assert not curse_holds(base | {"heldout_reverse_logprob": -7.5, "heldout_reverse_accuracy": 0.5})
    # one lucky answer of 60 at a chance of 1/200 is what 26% of models at chance do: still at chance; two (3.7%) are not
    assert curse_holds(base | {"heldout_reverse_accuracy": 1 / 60})
    assert not curse_holds(base | {"heldout_reverse_accuracy": 2 / 60})
    # the true answer second of the candidates everywhere, at 0.4% each: log p about chance, accuracy 0, but it knows
    # the pairs; its mean rank gives it away (at chance: no better than half of chance's, 50.25)
    second = base | {"heldout_reverse_logprob": math.log(0.004), "heldout_reverse_mean_rank": 2.0}
    assert second["heldout_reverse_logprob"] <= second["chance_logprob"] + 0.5 and not curse_holds(second)
    assert not curse_holds(base | {"heldout_reverse_mean_rank": 50.0})
    assert curse_holds(base | {"heldout_reverse_mean_rank": 50.25})


class KindOnly(torch.nn.Module):
    """Knows its trained statements (all its probability on the answer) and, for a held-out one, only the kind its
    relation token asks for: equal logits on the 200 entities of that kind ("→": the objects, "←": the subjects),
    −1e9 elsewhere. Its held-out answers are at log p = −log 200, a kind's chance."""

    def __init__(self, world, vocab):
        super().__init__()
        self.d_vocab = vocab.d_vocab
        self.trained, kinds = {}, {FORWARD: set(), BACKWARD: set()}
        for fact in world:
            kinds[fact.relation].add(vocab.entity_ids(fact.object)[0])
            kinds[fact.inverse_relation].add(vocab.entity_ids(fact.subject)[0])
            for direction in ("forward", "reverse"):
                if fact.split(direction) == "train":
                    given, relation, answer = fact.given_and_answer(direction)
                    self.trained[vocab.entity_ids(given)[0], vocab.relation_id(relation)] = vocab.entity_ids(answer)[0]
        self.kinds = {vocab.relation_id(r): sorted(ids) for r, ids in kinds.items()}

    def forward(self, tokens):
        logits = torch.full((*tokens.shape, self.d_vocab), -1e9)
        for i, row in enumerate(tokens.tolist()):
            for p in range(1, len(row)):
                if row[p] in self.kinds:
                    answer = self.trained.get((row[p - 1], row[p]))
                    logits[i, p, [answer] if answer is not None else self.kinds[row[p]]] = 0.0
        return logits


def test_a_model_that_knows_only_the_answer_s_kind_is_at_chance():
    """Chance is the answer's own kind: "←" only ever answers a subject, so a model that learnt nothing of a held-out
    pair but the kind asked for spreads over the 200 subjects (log p −log 200 = −5.30). Chance over both kinds,
    −log 400 = −5.99, had put it 0.7 nats above chance and failed the verdict (threshold −5.49); its mean rank
    chance, 200.5, had been that of 400 candidates."""
    from analyses.reproduce import format_summary, summarize
    from probes.logits import answer_table
    from facts.token_worlds import TokenVocab, reversal_world

    vocab = TokenVocab()
    world = reversal_world(seed=0, vocab=vocab)
    table = answer_table(KindOnly(world, vocab), world, vocab)  # the run's logits.csv: its ranks among the kind
    heldout = table[table.split == "heldout"]
    assert heldout.logprob.to_numpy() == pytest.approx(-math.log(200))
    summary = summarize(table, ReversalConfig(), 0.0, 0)
    assert summary["train_prob"] == pytest.approx(1.0)
    assert summary["n_candidates"] == 200 and summary["chance_logprob"] == pytest.approx(-math.log(200))
    assert summary["chance_accuracy"] == pytest.approx(1 / 200) and summary["chance_mean_rank"] == 100.5
    assert summary["heldout_reverse_mean_rank"] == 200  # every other entity of its kind ties it, and a tie ranks above
    assert curse_holds(summary) and "REVERSAL CURSE REPRODUCED" in format_summary(summary)


def test_chain_is_intransitive_but_chaining_works(tmp_path):
    summary = reproduce_chain(tmp_path, ChainConfig(n_triples=100, steps=50, eval_every=10), progress=False)
    assert (summary["n_train"], summary["n_heldout"], summary["n_candidates"]) == (270, 30, 100)
    assert summary["train_prob"] > 0.99
    assert summary["heldout_accuracy"] == 0.0
    assert summary["heldout_logprob"] <= summary["chance_logprob"] + 0.5
    assert summary["heldout_mean_rank"] >= 0.8 * summary["chance_mean_rank"]
    assert summary["two_step_accuracy"] > 0.9  # x → ŷ → ẑ recovers z
    assert summary["ov_z_trained"] > 1.0 > abs(summary["ov_z_heldout"]) + 0.5  # Y[x, z] grew only where trained
    _written(tmp_path, "summary.json", "history.jsonl", "facts.jsonl", "curves.png", "heatmap.png", "circuits.png")
    assert set(_history(tmp_path / "history.jsonl")[-1]["eval"]) == {"train", "heldout", "train/x→y", "train/y→z",
                                                                     "train/x⇝z"}
    assert "INTRANSITIVITY REPRODUCED" in format_chain(summary)
    failed = format_chain({**summary, "two_step_accuracy": 0.2})  # the conclusion was printed after either verdict
    assert "not reproduced (see numbers)" in failed and "chaining works" not in failed


def test_a_head_without_a_z_is_left_out_of_the_chain_s_ov_means():
    """A head that writes nothing (its W_V zeroed) has Y entries that do not vary, so its z is NaN: the chain's
    ov_z_* had been NaN for the whole model; they are the mean over the heads that have a z, as elsewhere."""
    from analyses.paper import leads_to_circuits, ov_z_means
    from facts.schema import FactSet
    from facts.token_worlds import LEADS_TO, TokenVocab, chain_world
    from models.transformer import build_model

    vocab = TokenVocab()
    world = chain_world(n_triples=20, seed=0, vocab=vocab)
    leads_to = FactSet(tuple(f for f in world if f.relation == LEADS_TO), world="x ⇝ z", meta=world.meta)
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    with torch.no_grad():
        model.blocks[0].attn.W_V[0] = 0
    circuits = leads_to_circuits(model, leads_to, vocab)
    heads = {r["circuit"]: r for r in circuits if r["circuit"].startswith("ov")}
    assert math.isnan(heads["ov L0H0"]["z_trained"]) and len(heads) > 1
    others = [r for name, r in heads.items() if name != "ov L0H0"]
    means = ov_z_means(circuits)
    assert means["ov_z_trained"] == pytest.approx(sum(r["z_trained"] for r in others) / len(others))
    assert means["ov_z_heldout"] == pytest.approx(sum(r["z_heldout"] for r in others) / len(others))


def test_in_context_reversal_has_no_curse_but_one_partner_pairs_are_memorised(tmp_path, monkeypatch):
    from analyses import figures

    drawn, original = [], figures.logprob_curves
    monkeypatch.setattr(figures, "logprob_curves", lambda *args, **kwargs: drawn.append(original(*args, **kwargs))
                        or drawn[-1])
    config = InContextConfig(n_x=50, steps=30, eval_every=10, control_pairs=100)
    summary = reproduce_in_context(tmp_path, config, progress=False)
    assert (summary["n_train"], summary["n_heldout"]) == (350, 150)
    assert summary["train_prob"] > 0.99
    assert summary["heldout_reverse_accuracy"] > 0.9  # copied from the prompt
    control = summary["control"]
    assert control["train_prob"] > 0.99
    assert control["heldout_reverse_accuracy"] <= 0.1
    assert control["heldout_reverse_logprob"] <= control["chance_logprob"] + 0.5
    _written(tmp_path, "summary.json", "history.jsonl", "logits.csv", "curves.png", "control/history.jsonl")
    text = format_in_context(summary)
    assert "NO CURSE IN CONTEXT" in text and "copied from the prompt" in text
    # the control's held-out tokens are in no training sequence: its failure does not by itself show memorising
    assert "memorises" not in text and "does not show memorising" in text
    failed = format_in_context({**summary, "heldout_reverse_accuracy": 0.3})
    assert "not reproduced (see numbers)" in failed and "copied from the prompt" not in failed
    # curves.png draws each world's own chance, its answers' kind: the grid's "y ←" asks for one of its 50 x's, the
    # control's for one of its 100 subjects (one line for both put one curve under the other's chance)
    [axis] = drawn[0].axes
    chances = {line.get_label(): line.get_ydata()[0] for line in axis.lines if line.get_label().startswith("chance")}
    assert list(chances.values()) == [summary["chance_logprob"], control["chance_logprob"]]
    assert summary["chance_logprob"] == pytest.approx(-math.log(50))
    assert control["chance_logprob"] == pytest.approx(-math.log(100))


def test_logprob_curves_draw_the_chance_line_of_every_run():
    """One chance line per world however many are given (three line styles zipped against the runs dropped the
    fourth run's and later ones' lines without a word)."""
    from analyses.figures import logprob_curves

    history = [{"step": s, "eval": {"heldout": {"logprob": -float(s)}}} for s in range(3)]
    chances = {f"world {i}": -1.0 - i for i in range(6)}
    [axis] = logprob_curves(history, chance_logprob=chances).axes
    drawn = {line.get_label(): line.get_ydata()[0] for line in axis.lines if line.get_label().startswith("chance")}
    assert drawn == {f"chance ({run}: {value:.2f})": value for run, value in chances.items()}


def test_multi_token_entities_keep_the_curse(tmp_path):
    summary = reproduce_multi_token(tmp_path, MultiTokenConfig(ks=(2, 3), reversal=SMALL_REVERSAL), progress=False)
    assert summary["curse_holds_for_all"]
    for row, k in zip(summary["runs"], (2, 3)):
        assert row["k"] == k and row["n_candidates"] == 100  # the 100 entities of the answer's kind
        assert row["heldout_reverse_accuracy"] == 0.0
        assert row["heldout_reverse_logprob_per_token"] == pytest.approx(row["heldout_reverse_logprob"] / k)
        assert row["chance_logprob"] == pytest.approx(-math.log(100))
        assert row["chance_logprob_per_token"] == pytest.approx(-math.log(100) / k)
        _written(tmp_path / f"k{k}", "summary.json", "heatmap.png")
    _written(tmp_path, "summary.json", "history.jsonl", "comparison.png")
    assert {r["run"] for r in _history(tmp_path / "history.jsonl")} == {"k2", "k3"}
    assert "REVERSAL CURSE HOLDS FOR EVERY k" in format_multi_token(summary)


def test_the_multi_token_screen_prints_each_run_s_per_token_chance():
    """Per token the screen shows log p / k against the chance of the same per-token mean, −log(#entities of the
    answer's kind) / k (a model uniform over the kind's k-token words); it had named "chance / k" without printing
    it, and that chance was over both kinds (−log 400 / k)."""
    def row(k: int) -> dict:
        return {"run": f"k{k}", "k": k, "train_prob": 0.999, "heldout_reverse_logprob": -12.0,
                "heldout_reverse_logprob_per_token": -12.0 / k, "chance_logprob": -math.log(100),
                "heldout_reverse_accuracy": 0.0, "heldout_reverse_mean_rank": 80.0, "chance_mean_rank": 50.5}

    summary = {"config": {"reversal": {"n_pairs": 100, "model": "tiny", "steps": 60, "lr": 0.01}},
               "runs": [row(2), row(3)], "curse_holds_for_all": True, "seconds": 1.0}
    text = format_multi_token(summary)
    header = next(line for line in text.splitlines() if line.lstrip().startswith("run"))
    assert "chance/token" in header
    for k in (2, 3):
        line = next(line for line in text.splitlines() if line.lstrip().startswith(f"k{k} "))
        assert line.split()[4:6] == [f"{-12.0 / k:.2f}", f"{-math.log(100) / k:.2f}"], line


def test_curse_holds_for_every_positional_encoding(tmp_path):
    summary = reproduce_positional(tmp_path, PositionalConfig(reversal=SMALL_REVERSAL), progress=False)
    assert [r["positional"] for r in summary["runs"]] == ["absolute", "rotary", "none"]
    assert summary["curse_holds_for_all"]
    assert all(r["heldout_reverse_accuracy"] <= 2 * r["chance_accuracy"] for r in summary["runs"])
    _written(tmp_path, "summary.json", "history.jsonl", "comparison.png", "none/curves.png")
    assert "REVERSAL CURSE HOLDS FOR EVERY POSITIONAL ENCODING" in format_positional(summary)


def test_embeddings_of_paired_entities_show_no_structure(tmp_path):
    summary = reproduce_embeddings(tmp_path, EmbeddingConfig(n_pairs=100, steps=60, eval_every=20), progress=False)
    assert summary["train_prob"] > 0.99  # the pairs were learnt...
    assert abs(summary["effect_size"]) < 0.5  # ...but not written into W_E
    assert summary["nearest_accuracy"] < 0.1
    assert abs(summary["paired_mean_rank"] - summary["chance_mean_rank"]) < 0.25 * summary["chance_mean_rank"]
    history = _history(tmp_path / "history.jsonl")
    assert {"cosine_paired", "cosine_unpaired"} <= set(history[0])
    _written(tmp_path, "summary.json", "curves.png", "cosines.png")
    assert "NO PAIRING STRUCTURE" in format_embeddings(summary)


def test_every_curve_of_a_chain_can_be_told_apart():
    """A chain's train sets x→y, y→z and x⇝z are one colour (train) and each needs its own dash pattern: every
    direction but forward had been dotted, three legend entries alike."""
    from analyses.figures import logprob_curves

    names = ["train", "train/x→y", "train/y→z", "train/x⇝z", "heldout", "heldout/x⇝z", "train/forward",
             "train/reverse"]
    history = [{"step": s, "eval": {name: {"logprob": -float(s)} for name in names}} for s in range(3)]
    [axis] = logprob_curves(history, chance_logprob=-5.0).axes
    looks = {line.get_label(): (line.get_color(), line.get_linestyle(), str(line._unscaled_dash_pattern))
             for line in axis.lines if not line.get_label().startswith("chance")}  # matplotlib has no public getter
    assert len(set(looks.values())) == len(names)  # every curve its own colour and dashes
    assert looks["train/forward"][1] == "--" and looks["train/reverse"][1] == ":"
