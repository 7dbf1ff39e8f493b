"""The training run the kill test starts, kills with SIGKILL, and resumes (also importable).

``python tests/reliability/killable_training.py OUT [--resume]`` trains the one-layer model on
a 100-pair reversal world, minibatches of 32, for :data:`STEPS` steps, evaluating and writing
a checkpoint into ``OUT/checkpoints`` every :data:`CHECKPOINT_EVERY` steps. One CPU thread, so
the numbers do not depend on how the process was started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

STEPS, CHECKPOINT_EVERY, SEED = 200, 10, 3


def run(out: Path, resume: bool = False) -> None:
    from facts.token_worlds import TokenVocab, reversal_world
    from facts.tokens import tokenize
    from models.training import TrainConfig, train
    from models.transformer import build_model, model_card

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vocab = TokenVocab()
        batch = tokenize(reversal_world(n_pairs=100, seed=SEED, vocab=vocab), vocab)
        model = build_model("one-layer", vocab.d_vocab, seed=SEED)
        config = TrainConfig(steps=STEPS, lr=1e-2, batch_size=32, eval_every=CHECKPOINT_EVERY,
                             checkpoint_every=CHECKPOINT_EVERY, seed=SEED, progress=False)
        train(model, batch.where(split="train"), config,
              eval_sets={"train": batch.where(split="train"), "heldout": batch.where(split="heldout")},
              checkpoint_dir=out / "checkpoints", model_card=model_card("one-layer", vocab.d_vocab, "absolute", SEED),
              resume=resume)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run(Path(sys.argv[1]), resume="--resume" in sys.argv[2:])
