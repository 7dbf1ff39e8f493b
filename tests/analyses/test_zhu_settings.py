"""Zhu et al.'s other settings (loss on the whole sequence, frozen embeddings, depth; the related-token
chain over num_train) on real HookedTransformers: analyses.zhu_settings, analyses.chain_sizes."""

import json

import pytest
import torch

from analyses.chain_sizes import ChainSizesConfig, format_chain_sizes, reproduce_chain_sizes
from analyses.paper import ChainConfig
from analyses.reproduce import ReversalConfig, train_run
from analyses.zhu_settings import ZhuSettingsConfig, format_zhu_settings, reproduce_zhu_settings
from facts.token_worlds import TokenVocab, chain_world, reversal_world
from facts.tokens import tokenize
from models.load import load_trained
from models.scoring import answer_loss
from models.training import batch_loss

PNG = b"\x89PNG\r\n\x1a\n"


def test_sequence_loss_is_the_mean_cross_entropy_of_every_token_after_the_first(vocab, trained_one_layer):
    world = reversal_world(n_pairs=20, k=2, seed=1, vocab=vocab)
    batch = tokenize(world, vocab)
    whole = batch.with_sequence_loss()
    assert torch.equal(whole.answer_mask & batch.answer_mask, batch.answer_mask)  # answers still in the loss
    with torch.no_grad():
        logits = trained_one_layer(batch.tokens).log_softmax(-1).cpu()
        loss = batch_loss(trained_one_layer, whole.tokens, whole.answer_mask)
    lengths = batch.prompt_len + batch.answer_len
    expected = torch.cat([-logits[row, : n - 1].gather(-1, batch.tokens[row, 1:n, None])[:, 0]
                          for row, n in enumerate(lengths.tolist())]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(answer_loss(trained_one_layer(batch.tokens), batch.tokens,
                                                    batch.answer_mask).item(), rel=1e-3)


def test_frozen_embeddings_stay_put_and_depth_survives_the_checkpoint(tmp_path):
    vocab = TokenVocab()
    world = reversal_world(n_pairs=40, seed=0, vocab=vocab)
    config = ReversalConfig(model="tiny", n_pairs=40, steps=3, eval_every=3, layers=3, freeze_embeddings=True)
    from models.transformer import build_model

    initial = build_model("tiny", vocab.d_vocab, seed=0, n_layers=3)
    model, _ = train_run(world, vocab, config, tmp_path, progress=False)
    assert model.cfg.n_layers == 3
    assert torch.equal(model.W_E, initial.W_E) and torch.equal(model.W_pos, initial.W_pos)
    assert not torch.equal(model.W_U, initial.W_U)  # the rest trains
    rebuilt, _ = load_trained(tmp_path / "checkpoints")
    assert rebuilt.cfg.n_layers == 3 and torch.equal(rebuilt.blocks[2].attn.W_Q, model.blocks[2].attn.W_Q)


def test_the_curse_holds_under_every_setting_and_the_grid_is_written(tmp_path):
    config = ZhuSettingsConfig(run=ReversalConfig(n_pairs=100, steps=60, eval_every=60), depths=(1, 2))
    summary = reproduce_zhu_settings(tmp_path, config, progress=False)
    rows = summary["settings"]
    assert list(rows) == ["default", "loss on whole sequence", "frozen embeddings", "1 layer"]  # depth 2 = default
    assert rows["1 layer"]["layers"] == 1 and rows["loss on whole sequence"]["loss"] == "sequence"
    for name, row in rows.items():
        assert row["train_prob"] > 0.95, name
        assert row["heldout_reverse_accuracy"] == 0.0 and row["heldout_reverse_logprob"] < row["chance_logprob"], name
        assert row["ov_z_trained"] > row["ov_z_heldout"] + 0.3, name
    assert (tmp_path / "zhu_settings.png").read_bytes()[:8] == PNG
    assert "zhu_settings.png" in json.loads((tmp_path / "summary.json").read_text())["captions"]
    assert (tmp_path / "frozen-embeddings" / "summary.json").is_file()
    assert "SETTINGS" in format_zhu_settings(summary)


def test_related_chain_world_fixes_each_kinds_first_token_and_holds_out_exactly_n():
    world = chain_world(n_triples=30, seed=2, n_heldout=7, related=True)
    assert sum(f.forward == "heldout" for f in world) == 7
    kinds = [{f.subject.split()[0] for f in world if f.relation == rel} for rel in ("→", "⇝")]
    x_first = {f.subject.split()[0] for f in world if f.relation == "⇝"}
    z_first = {f.object.split()[0] for f in world if f.relation == "⇝"}
    assert len(x_first) == len(z_first) == 1 and x_first != z_first and len(kinds[0]) == 2  # x's and y's kinds
    assert len({f.subject for f in world if f.relation == "⇝"}) == 30  # distinct entities, shared first token


def test_related_chain_keeps_the_curse_at_every_size(tmp_path):
    config = ChainSizesConfig(chain=ChainConfig(steps=60, eval_every=60), sizes=(10, 40), n_heldout=20)
    summary = reproduce_chain_sizes(tmp_path, config, progress=False)
    assert list(summary["sizes"]) == ["10", "40"]
    for row in summary["sizes"].values():
        assert row["train_prob"] > 0.95 and row["two_step_accuracy"] > 0.9  # chaining works
        assert row["heldout_logprob"] < row["chance_logprob"] and row["heldout_accuracy"] < 0.1  # x ⇝ z not inferred
        assert row["ov_z_trained"] > 1 > 0.3 > row["ov_z_heldout"]
    facts = [json.loads(line) for line in (tmp_path / "num_train=40" / "facts.jsonl").read_text().splitlines()[1:]]
    assert sum(f.get("forward") == "heldout" for f in facts) == 20
    # the config says what each size ran: related-token chains of size + 20 triples (it had said unrelated, 200)
    chain = summary["config"]["chain"]
    assert chain["related"] is True and "n_triples" not in chain and "n_heldout" not in chain
    assert [(r["n_triples"], r["n_heldout"]) for r in summary["sizes"].values()] == [(30, 20), (60, 20)]
    for size in ("10", "40"):
        run = json.loads((tmp_path / f"num_train={size}" / "summary.json").read_text())["config"]
        assert (run["related"], run["n_triples"], run["n_heldout"]) == (True, int(size) + 20, 20)
    from analyses.cli import build_parser, recorded_config  # and the run folder's manifest records the same

    settings = recorded_config(build_parser().parse_args(["reproduce", "chain-sizes", "--out", "o"]))["settings"]
    assert settings["chain"]["related"] is True and "n_triples" not in settings["chain"]
    assert (tmp_path / "chain_sizes.png").read_bytes()[:8] == PNG
    assert "held-out x ⇝ z at or below chance at 2 of 2 sizes" in format_chain_sizes(summary)
