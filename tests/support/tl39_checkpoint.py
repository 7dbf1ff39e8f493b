"""Writes tests/data/tl39/: a one-layer model trained under TransformerLens 3.9 and what 3.9's probes read of it.

Run once with the 3.9 line (``python tests/support/tl39_checkpoint.py`` from the repository root);
``tests/models/test_tl_lines.py`` then checks, under whichever line is installed, that the checkpoint
loads and gives the same log-probs, OV/QK circuit entries and direct logit attribution, and that a seed gives
3.9's initial weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from facts.token_worlds import TokenVocab, reversal_world  # noqa: E402
from facts.tokens import tokenize  # noqa: E402
from models.backend import TL_MAJOR, TL_VERSION  # noqa: E402
from models.checkpoint import remove_checkpoints, save_checkpoint  # noqa: E402
from models.training import TrainConfig, train  # noqa: E402
from models.transformer import build_model, model_card  # noqa: E402

FOLDER = ROOT / "tests" / "data" / "tl39"
VOCAB = TokenVocab(n_entity_tokens=40)
N_PAIRS = 16


def world():
    """The fixture's fact world: 16 reversal pairs over two alphabets of 20 entity tokens."""
    return reversal_world(n_pairs=N_PAIRS, alphabet_size=20, seed=0, vocab=VOCAB)


def probe_numbers(model) -> dict[str, list[float]]:
    """What the test compares: answer log-probs, OV and QK entries, direct logit attribution."""
    from probes.attribution import direct_logit_attribution
    from probes.circuits import circuit_table
    from probes.logits import answer_table

    facts = world()
    logits = answer_table(model, facts, VOCAB, n_controls=8)
    circuits = circuit_table(model, facts, VOCAB.entity_ids, kinds=("ov", "qk"), n_controls=8)
    dla = direct_logit_attribution(model, tokenize(facts, VOCAB).where(split="heldout"))
    return {"logprob": logits.logprob.tolist(), "entry_ab": circuits.entry_ab.tolist(),
            "entry_ba": circuits.entry_ba.tolist(), "attribution": dla.attribution.tolist()}


def initial_weights() -> dict[str, dict[str, list[float]]]:
    """What a seed gives: for each named config and positional embedding, every parameter of
    ``build_model(name, 50, positional, seed=11)`` as its float64 sum and first four entries (under 3.9,
    HookedTransformer's own init)."""
    from models.backend import hooked_state_dict
    from models.checkpoint import _is_constant_buffer
    from models.transformer import POSITIONALS

    weights = {}
    for name in ("tiny", "one-layer"):
        for positional in POSITIONALS:
            model = build_model(name, 50, positional, seed=11, device="cpu")
            weights[f"{name}/{positional}"] = {
                key: [value.double().sum().item(), *value.flatten()[:4].tolist()]
                for key, value in hooked_state_dict(model).items() if not _is_constant_buffer(key)}
    return weights


def main() -> None:
    if TL_MAJOR != 3:
        raise SystemExit(f"run this under TransformerLens 3.9 (found {TL_VERSION})")
    torch.set_num_threads(1)
    model = build_model("one-layer", VOCAB.d_vocab, seed=0, device="cpu")
    batch = tokenize(world(), VOCAB)
    train(model, batch.where(split="train"), TrainConfig(steps=30, lr=1e-2, progress=False))
    remove_checkpoints(FOLDER)  # weights only (no optimizer state): ~70 KB
    save_checkpoint(FOLDER, 30, model, None, {"model": model_card("one-layer", VOCAB.d_vocab, "absolute", 0)})
    expected = {"transformer_lens": TL_VERSION, **probe_numbers(model.eval()), "initial_weights": initial_weights()}
    (FOLDER / "expected.json").write_text(json.dumps(expected, indent=0))


if __name__ == "__main__":
    main()
