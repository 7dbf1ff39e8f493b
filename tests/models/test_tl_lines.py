"""The same numbers under TransformerLens 3.9 and 4.x (``models.backend``), checked under whichever is installed.

``tests/data/tl39/`` holds a one-layer model trained under 3.9 (weights only, ~100 KB) and the
answer log-probs, OV/QK entries and direct logit attribution 3.9's probes read of it
(``tests/support/tl39_checkpoint.py`` writes both). ``make test`` runs this under 3.9, ``make test-tl4``
under 4.x, where the checkpoint is loaded into the native bridge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tl39_checkpoint import FOLDER, probe_numbers

from models.backend import hooked_init_state, hooked_state_dict
from models.checkpoint import _is_constant_buffer
from models.load import load_trained
from models.transformer import POSITIONALS, build_model, model_fields


def test_a_checkpoint_trained_under_3_9_gives_3_9s_numbers():
    expected = json.loads((FOLDER / "expected.json").read_text())
    model, checkpoint = load_trained(FOLDER, device="cpu")
    assert checkpoint.step == 30 and expected["transformer_lens"].startswith("3.9")
    got = probe_numbers(model)
    for name in ("logprob", "entry_ab", "entry_ba", "attribution"):
        assert len(got[name]) == len(expected[name]) > 0, name
        deviation = torch.tensor(got[name]) - torch.tensor(expected[name])
        assert deviation.abs().max().item() < 1e-4, name


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("name", ["tiny", "one-layer"])
def test_a_seed_gives_3_9s_initial_weights(name, positional):
    """The weights a seed gives (HookedTransformer's own init under 3.9, the replay under 4.x) are the ones 3.9
    gave when ``tests/data/tl39/`` was written (every parameter's sum and first four entries), and the replay
    :func:`models.backend.hooked_init_state` is them whole."""
    model = build_model(name, 50, positional, seed=11, device="cpu")
    state = {k: v for k, v in hooked_state_dict(model).items() if not _is_constant_buffer(k)}
    recorded = json.loads((FOLDER / "expected.json").read_text())["initial_weights"][f"{name}/{positional}"]
    assert set(state) == set(recorded)
    for key, (total, *first) in recorded.items():
        assert state[key].flatten()[:4].tolist() == pytest.approx(first, abs=1e-7), key
        assert state[key].double().sum().item() == pytest.approx(total, rel=1e-9, abs=1e-9), key
    replay = hooked_init_state(model_fields(name, 50, positional), seed=11)
    if positional == "none":
        replay["pos_embed.W_pos"] = torch.zeros_like(replay["pos_embed.W_pos"])
    assert set(state) == set(replay)
    for key, value in replay.items():
        assert torch.equal(state[key], value), key
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = replay["pos_embed.W_pos"].numel() if positional == "none" else 0
    assert trainable == sum(v.numel() for v in replay.values()) - frozen


def test_resuming_optimizer_state_of_the_other_line_is_refused(tmp_path):
    """Weights load under either line; optimizer state follows each line's parameter layout."""
    from facts.token_worlds import TokenVocab, reversal_world
    from facts.tokens import tokenize
    from models.checkpoint import save_checkpoint
    from models.training import TrainConfig, TrainingError, _optimizer_layout, make_optimizer, train

    vocab = TokenVocab(n_entity_tokens=40)
    batch = tokenize(reversal_world(n_pairs=8, alphabet_size=20, seed=0, vocab=vocab), vocab).where(split="train")
    model = build_model("one-layer", vocab.d_vocab, seed=0, device="cpu")
    config = TrainConfig(steps=2, progress=False)
    other = "transformer-lens-4" if _optimizer_layout(model) is None else None
    meta = {"optimizer_layout": other} if other else {}  # 3.9 checkpoints carry no layout
    save_checkpoint(tmp_path, 1, model, make_optimizer(model, config), meta)
    with pytest.raises(TrainingError, match="optimizer state was written for .*resume under the TransformerLens line"):
        train(model, batch, config, checkpoint_dir=tmp_path, resume=True)
