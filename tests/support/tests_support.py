"""Helpers shared by tests: run `revlens` as a user would, in a subprocess; check a fine-tune's history and a bad
model's refusal."""

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


def assert_model_refused_before_any_folder(capsys, model: Path, tmp_path: Path, *named: str) -> None:
    """The three commands that read a pretrained model (check-asymmetry, probe, finetune-facts) refuse ``model`` in
    one line (exit 2) naming it and each of ``named``, before their output folder is made."""
    facts = tmp_path / "facts.jsonl"
    revlens_in_process(capsys, "make-facts", "people", "--size", "4", "--out", facts)
    for command in (["check-asymmetry", "--limit", "1"], ["probe", "--facts", facts, "--controls", "4"],
                    ["finetune-facts", "--people", "2", "--controls", "1"]):
        result = revlens_in_process(capsys, *command, "--model", model, "--out", tmp_path / "out", check=False)
        assert result.returncode == 2 and all(s in result.stderr for s in (str(model), *named)), (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists(), command


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
