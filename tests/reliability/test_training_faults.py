"""Faults injected into real training runs and real checkpoint files.

* a loss that becomes inf (the NaN case is in tests/models/test_training.py) and weights that
  turn NaN between checkpoints: the run stops with a message and the last checkpoint on disk
  is a good one;
* truncated and bit-flipped checkpoint files, tensors or metadata: refused by the checksums,
  and the model a resume was given is left untouched (never half-loaded);
* a write that fails half-way, and a crash between the tensors and the JSON: the previous
  checkpoint stays intact and is still the latest;
* checkpoints of an earlier run in the same folder, and a resume with other settings.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from facts import io as io_module
from facts.tokens import tokenize
from models import checkpoint as checkpoint_module
from models.backend import hooked_state_dict
from models.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from models.training import TrainConfig, TrainingError, train
from models.transformer import build_model

CONFIG = TrainConfig(steps=8, lr=1e-2, batch_size=64, eval_every=2, checkpoint_every=2, progress=False)


@pytest.fixture(scope="module")
def train_set(world, vocab):
    return tokenize(world, vocab).where(split="train")


def fresh(vocab):
    return build_model("tiny", vocab.d_vocab, seed=0)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def at_step(step: int, fault):
    """A trainer callback that applies ``fault(model)`` once, at evaluation step ``step``."""
    def callback(now: int, model: torch.nn.Module):
        if now == step:
            fault(model)
    return callback


def test_inf_loss_stops_and_keeps_the_last_good_checkpoint(train_set, vocab, tmp_path):
    """From step 4 on, every entity logit is −inf: the loss is +inf at step 5."""
    def minus_inf_entity_logits(model):
        model.unembed.register_forward_hook(lambda _, __, logits: logits.index_fill(-1, entities.to(logits.device), float("-inf")))

    entities = torch.arange(len(vocab.relations), vocab.d_vocab)
    clean_dir, faulty_dir = tmp_path / "clean", tmp_path / "faulty"
    train(fresh(vocab), train_set, CONFIG, checkpoint_dir=clean_dir)
    with pytest.raises(TrainingError, match=r"loss became inf at step 5; stopping\. The last good checkpoint is "
                                            r".*step-000004\.json"):
        train(fresh(vocab), train_set, CONFIG, checkpoint_dir=faulty_dir,
              callbacks=[at_step(4, minus_inf_entity_logits)])
    assert [p.name for p in list_checkpoints(faulty_dir)] == ["step-000002.json", "step-000004.json"]
    kept, clean = load_checkpoint(faulty_dir), load_checkpoint(clean_dir / "step-000004.json")
    assert states_equal(kept.model_state, clean.model_state)
    assert kept.meta["history"] == clean.meta["history"]


def test_weights_that_turn_nan_are_never_checkpointed(train_set, vocab, tmp_path):
    """A NaN weight at step 4 (as a NaN gradient would leave it, with a finite loss): step 4 is
    not written, step 2 stays the latest, and resuming from it replays the clean run."""
    def nan_weight(model):
        with torch.no_grad():
            model.blocks[0].attn.W_Q[0, 0, 0] = float("nan")

    with pytest.raises(CheckpointError, match=r"step 4: parameter\(s\) \['blocks.0.attn.W_Q'\] hold NaN or inf"):
        train(fresh(vocab), train_set, CONFIG, checkpoint_dir=tmp_path, callbacks=[at_step(4, nan_weight)])
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002.json"]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "step-000004.safetensors").exists()
    resumed = fresh(vocab)
    train(resumed, train_set, CONFIG, checkpoint_dir=tmp_path, resume=True)
    clean = fresh(vocab)
    train(clean, train_set, CONFIG)
    assert states_equal(resumed.state_dict(), clean.state_dict())


@pytest.fixture(scope="module")
def saved_run(train_set, vocab, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4; tests corrupt copies of it."""
    folder = tmp_path_factory.mktemp("saved")
    config = TrainConfig(**{**CONFIG.__dict__, "steps": 4})
    train(fresh(vocab), train_set, config, checkpoint_dir=folder)
    return folder, config


def copy_of(saved_run, tmp_path):
    folder, _ = saved_run
    for path in folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return tmp_path


CORRUPTIONS = [("safetensors", "truncate"), ("safetensors", "flip"), ("json", "truncate"), ("json", "flip"),
               ("json", "digit")]
"""``digit``: one digit of a number in the JSON changed to another, so the JSON stays valid."""


@pytest.mark.parametrize(("suffix", "how"), CORRUPTIONS)
@pytest.mark.parametrize("draw", range(3))
def test_corrupted_checkpoints_are_refused_and_never_half_loaded(saved_run, train_set, vocab, tmp_path,
                                                                suffix, how, draw):
    folder = copy_of(saved_run, tmp_path)
    target = folder / f"step-000004.{suffix}"
    data = bytearray(target.read_bytes())
    rng = random.Random(f"{suffix}-{how}-{draw}")
    if how == "truncate":
        del data[rng.randrange(len(data)):]
    elif how == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    else:
        history = data.index(b'"history"')
        at = rng.choice([i for i in range(history, len(data)) if chr(data[i]).isdigit()])
        data[at] = ord(rng.choice([d for d in "0123456789" if ord(d) != data[at]]))
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(folder)
    model = fresh(vocab)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        train(model, train_set, TrainConfig(**{**saved_run[1].__dict__, "steps": 6}), checkpoint_dir=folder,
              resume=True)
    assert states_equal(model.state_dict(), before)
    load_checkpoint(folder / "step-000002.json")  # the earlier checkpoint is untouched


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint(saved_run, vocab, tmp_path, monkeypatch):
    folder = copy_of(saved_run, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_open = open

    class FillsUp:  # the tensors' temporary file (atomic_write's) fills the disk after its first 100 bytes
        def __init__(self, path, mode):
            self.handle, self.left = real_open(path, mode), 100

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            if len(data) > self.left:
                self.handle.write(data[: self.left])
                raise OSError(28, "No space left on device")
            self.left -= len(data)
            return self.handle.write(data)

    monkeypatch.setattr(io_module, "open", lambda path, mode: FillsUp(path, mode) if str(path).endswith(".tmp")
                        else real_open(path, mode), raising=False)
    for step in (4, 6):  # overwrite the latest, or add a new one
        with pytest.raises(OSError, match=rf"No space left on device: '.*step-00000{step}.safetensors'"):
            save_checkpoint(folder, step, fresh(vocab), None, {})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary file left either
    assert load_checkpoint(folder).step == 4


def test_a_crash_between_tensors_and_json_leaves_the_previous_checkpoint_latest(saved_run, vocab, tmp_path,
                                                                               monkeypatch):
    folder = copy_of(saved_run, tmp_path)
    real_replace = checkpoint_module.os.replace

    def crash_on_json(source, destination):
        if str(destination).endswith(".json"):
            raise OSError(5, "Input/output error")
        real_replace(source, destination)

    monkeypatch.setattr(checkpoint_module.os, "replace", crash_on_json)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(folder, 6, fresh(vocab), None, {})
    monkeypatch.undo()
    assert (folder / "step-000006.safetensors").exists()  # the orphan has no JSON, so it is no checkpoint
    assert [p.name for p in list_checkpoints(folder)][-1] == "step-000004.json"
    assert load_checkpoint(folder).step == 4


def test_a_fresh_run_does_not_inherit_an_earlier_runs_later_checkpoints(train_set, vocab, tmp_path):
    """Before: a 4-step rerun into a folder holding an 8-step run's step-8 left step 8 as the latest,
    so `revlens probe --model DIR` probed the old model and `--resume` returned the old history."""
    train(fresh(vocab), train_set, CONFIG, checkpoint_dir=tmp_path)
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 4, "seed": 1})
    rerun = fresh(vocab)
    train(rerun, train_set, short, checkpoint_dir=tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002.json", "step-000004.json"]
    latest = load_checkpoint(tmp_path)
    assert latest.meta["train_config"]["seed"] == 1 and states_equal(latest.model_state, hooked_state_dict(rerun))


@pytest.mark.parametrize(("change", "message"), [
    ({"steps": 2}, "checkpoint is at step 4, past this run's 2 steps"),
    ({"steps": 6, "lr": 1e-3}, r"differs from its checkpoint \(train_config.lr: checkpoint 0.01, now 0.001\)"),
    ({"steps": 6, "seed": 5, "batch_size": None},
     "train_config.batch_size: checkpoint 64, now None; train_config.seed: checkpoint 0, now 5"),
])
def test_resume_with_other_settings_is_refused(saved_run, train_set, vocab, tmp_path, change, message):
    folder = copy_of(saved_run, tmp_path)
    with pytest.raises(TrainingError, match=message):
        train(fresh(vocab), train_set, TrainConfig(**{**saved_run[1].__dict__, **change}), checkpoint_dir=folder,
              resume=True)


def test_checkpoint_metadata_carries_its_own_checksum(saved_run):
    folder, _ = saved_run
    record = json.loads((folder / "step-000004.json").read_text())  # checked against the bytes, not their length
    assert record["sha256"] == hashlib.sha256((folder / "step-000004.safetensors").read_bytes()).hexdigest()
    body = {key: value for key, value in record.items() if key != "meta_sha256"}
    assert record["meta_sha256"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
