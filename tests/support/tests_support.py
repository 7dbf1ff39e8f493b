"""Helpers shared by tests: run `revlens` as a user would, in a subprocess; check a fine-tune's history."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def revlens(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m analyses.cli ARGS`` from the project root, offline; raises on failure if ``check``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "analyses.cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def revlens_in_process(capsys, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``revlens ARGS`` through ``analyses.cli.main`` in this process (no interpreter start, no second
    import of torch), for tests that are not about the process boundary: the same exit code (argparse's
    SystemExit included), stdout and stderr (read through ``capsys``) as :func:`revlens`'s."""
    from analyses.cli import main

    capsys.readouterr()  # what the test printed before is not the command's
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(captured.err)
    return subprocess.CompletedProcess(["revlens", *map(str, args)], code, captured.out, captured.err)


def assert_first_record_is_the_model_s_evaluation(record, hf_model, tokenizer, config):
    """``record`` (history.jsonl's step 0, :func:`analyses.finetune.history_evaluation` of the questions asked
    before training) is :func:`models.training.evaluate` of ``hf_model`` (untrained) on the evaluation sets of
    ``config``'s questions: log-probs within 1e-4, the same exact matches."""
    import pytest

    from analyses.finetune import evaluation_sets, read_questions
    from models.hf_training import CausalLM
    from models.training import evaluate

    expected = evaluate(CausalLM(hf_model), evaluation_sets(read_questions(config), tokenizer))
    assert set(record["eval"]) == set(expected) == {"forward", "reverse"}
    for name, numbers in expected.items():
        assert record["eval"][name]["logprob"] == pytest.approx(numbers["logprob"], abs=1e-4), name
        assert record["eval"][name]["prob"] == pytest.approx(numbers["prob"], rel=1e-4, abs=1e-12), name
        assert record["eval"][name]["accuracy"] == numbers["accuracy"], name
