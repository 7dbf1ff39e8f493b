"""`revlens probe` on a real trained checkpoint and its fact file."""

import json

import pandas as pd
import pytest

from analyses.probe import probe
from facts.io import save_jsonl
from facts.tokens import tokenize
from models.bilinear import BilinearModel, bilinear_card
from models.checkpoint import save_checkpoint
from models.training import TrainConfig, train
from models.transformer import build_model, model_card
from tests_support import revlens


@pytest.fixture(scope="module")
def run(tmp_path_factory, world, vocab):
    folder = tmp_path_factory.mktemp("run")
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=40, progress=False),
          checkpoint_dir=folder / "checkpoints", model_card=model_card("one-layer", vocab.d_vocab, "absolute", 0))
    save_jsonl(world, folder / "facts.jsonl")
    return folder


def test_probe_cli_writes_tables_summary_and_figures(run, tmp_path):
    result = revlens("probe", "--model", str(run / "checkpoints"), "--facts", str(run / "facts.jsonl"),
                     "--out", str(tmp_path))
    assert "most asymmetric circuit: ov" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["logits"]["train/forward"]["accuracy"] == 1.0
    assert summary["logits"]["heldout/forward"]["accuracy"] == 0.0
    assert summary["logits"]["train/reverse"]["margin"] > 5 > summary["logits"]["heldout/reverse"]["margin"]
    ov = [r for r in summary["circuits"] if r["circuit"].startswith("ov")]
    assert len(ov) == 4 and all(r["asymmetry"] > 2 for r in ov)
    circuits = pd.read_csv(tmp_path / "circuits.csv")
    assert len(circuits) == 200 * 9  # direct + 4 OV + 4 QK per fact
    for name in ("logits.csv", "margins.png", "circuits.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_probe_reads_a_bilinear_checkpoint(world, vocab, tmp_path):
    model = BilinearModel(vocab.d_vocab, 128, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=30, lr=0.05, progress=False),
          checkpoint_dir=tmp_path / "ckpt", model_card=bilinear_card(vocab.d_vocab, 128, 0))
    save_jsonl(world, tmp_path / "facts.jsonl")
    summary = probe(tmp_path / "ckpt", tmp_path / "facts.jsonl", tmp_path / "out")
    assert [r["circuit"] for r in summary["circuits"]] == ["theta"]
    assert summary["circuits"][0]["asymmetry"] > 2


def test_probe_refuses_a_folder_without_checkpoints_and_a_mismatched_config(run, tmp_path):
    result = revlens("probe", "--model", str(tmp_path), "--facts", str(run / "facts.jsonl"), "--out",
                     str(tmp_path / "o"), check=False)
    assert result.returncode == 2 and "not a reversal-lens checkpoint" in result.stderr
    meta_path = sorted((run / "checkpoints").glob("step-*.json"))[-1]
    meta = json.loads(meta_path.read_text())
    broken = tmp_path / "broken"  # a tiny model's weights under the run's one-layer model card
    save_checkpoint(broken, meta["step"], build_model("tiny", meta["model"]["d_vocab"]), None, {"model": meta["model"]})
    result = revlens("probe", "--model", str(broken), "--facts", str(run / "facts.jsonl"), "--out",
                     str(tmp_path / "o"), check=False)
    assert result.returncode == 2 and "does not match the model config" in result.stderr


@pytest.mark.parametrize("world, expected", [("reversal", "200 reversal facts (340 trained, 60 held-out"),
                                             ("chain", "600 chain facts"), ("people", "90 people facts")])
def test_make_facts_writes_a_reloadable_world(world, expected, tmp_path):
    from facts.io import load_jsonl

    result = revlens("make-facts", world, "--out", str(tmp_path / "f.jsonl"))
    assert expected in result.stdout
    assert load_jsonl(tmp_path / "f.jsonl").world == world


def test_pretrained_model_on_token_world_facts_is_refused(run, tmp_path):
    result = revlens("probe", "--model", "smollm2-135m", "--facts", str(run / "facts.jsonl"), "--out",
                     str(tmp_path), check=False)
    assert result.returncode == 2 and "natural-language fact set" in result.stderr


def test_pretrained_probe_on_people_facts(smollm2_hooked, tmp_path):
    """The probe pipeline on the real SmolLM2 (model reused from the session fixture)."""
    from analyses.probe import _probe_tables
    from facts.language import people_world

    facts = people_world(n_per_group=3, seed=1)
    table, circuits, info = _probe_tables("smollm2-135m", facts, None, 4, "hooked")
    assert len(table) == 18 and table["rank"].between(1, 5).all()
    assert set(circuits.circuit) == {"direct", "ov", "qk"} and len(circuits) == 9 * (1 + 2 * 270)
    assert info == {"backend": "hooked"}
