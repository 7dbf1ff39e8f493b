"""`revlens` as a user runs it: a real subprocess, real files (the default run and --help). The other
commands run through the CLI's main() in the test process (``revlens_in_process``): the same parser,
exit codes and printed text, without another interpreter start."""

import json
import subprocess
import sys

import pytest

from tests_support import ROOT, revlens, revlens_in_process


def test_help_does_not_import_torch():
    code = "import sys, analyses.cli as c; c.build_parser(); print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert "reproduce" in revlens("--help").stdout


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = revlens("reproduce", "reversal", "--out", str(out), "--quiet")
    return out, result.stdout


def test_default_reversal_run_reproduces_the_curse(default_run):
    out, stdout = default_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_prob"] > 0.99
    assert summary["heldout_reverse_logprob"] <= summary["chance_logprob"] + 0.5
    assert summary["heldout_reverse_accuracy"] <= 2 * summary["chance_accuracy"]
    assert (summary["n_train"], summary["n_heldout"]) == (340, 60)
    for name in ("history.jsonl", "logits.csv", "facts.jsonl", "curves.png", "heatmap.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "REVERSAL CURSE REPRODUCED" in stdout
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == summary["steps"]
    assert set(history[-1]["eval"]) >= {"train", "heldout", "train/forward", "heldout/reverse"}


def test_same_seed_twice_gives_the_same_summary(default_run, tmp_path, capsys):
    """The subprocess's run and one through main() here: the same files."""
    out, _ = default_run
    revlens_in_process(capsys, "reproduce", "reversal", "--out", str(tmp_path), "--quiet")
    first, second = (json.loads((d / "summary.json").read_text()) for d in (out, tmp_path))
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert (out / "logits.csv").read_text() == (tmp_path / "logits.csv").read_text()


@pytest.mark.parametrize("positional", ["rotary", "none"])
def test_other_positional_encodings_and_models(positional, tmp_path, capsys):
    revlens_in_process(capsys, "reproduce", "reversal", "--out", str(tmp_path), "--model", "one-layer",
                       "--positional", positional, "--steps", "40", "--quiet")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["positional"] == positional
    assert summary["train_prob"] > 0.9 and summary["heldout_reverse_accuracy"] <= 2 * summary["chance_accuracy"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "huge"], "invalid choice: 'huge'"),
        (["--k", "0"], "must be ≥ 1"),
        (["--pairs", "300"], "cannot be made from an alphabet of 200"),
    ],
)
def test_bad_arguments_name_the_problem(args, message, tmp_path, capsys):
    result = revlens_in_process(capsys, "reproduce", "reversal", "--out", str(tmp_path), "--quiet", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_finetuned_folder_given_twice_to_mitigations_is_refused_before_the_run(tmp_path, capsys):
    folder = tmp_path / "finetuned"
    folder.mkdir()
    result = revlens_in_process(capsys, "reproduce", "mitigations", "--out", str(tmp_path / "out"), "--quiet",
                                "--finetuned", str(folder), str(tmp_path / "." / "finetuned"), check=False)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert f"{folder}: given twice to --finetuned" in result.stderr


def test_checkpoint_every_leaves_intermediate_checkpoints_to_resume_from(tmp_path):
    from analyses.cli import main
    from models.checkpoint import list_checkpoints

    out = tmp_path / "run"
    assert main(["reproduce", "reversal", "--out", str(out), "--steps", "6", "--checkpoint-every", "2",
                 "--quiet"]) == 0
    steps = sorted(int(path.stem.split("-")[1]) for path in list_checkpoints(out / "checkpoints"))
    assert steps == [2, 4, 6]


def test_make_facts_celebrity_limit_keeps_the_first_pairs(tmp_path, capsys):
    from facts.celebrity import load_celebrity_pairs
    from facts.io import load_jsonl

    revlens_in_process(capsys, "make-facts", "celebrity", "--limit", "5", "--out", str(tmp_path / "c.jsonl"))
    facts, full = load_jsonl(tmp_path / "c.jsonl"), load_celebrity_pairs()
    assert tuple(facts) == tuple(full)[:5]
    assert facts.meta["limit"] == 5 and facts.meta["line"] == full.meta["line"][:5]


def test_reproduce_all_records_finetuned_as_an_input_of_mitigations_only():
    """Only mitigations reads --finetuned: recorded in every experiment's manifest, a rerun of that folder made
    report refuse reversal, chain and the rest as "changed since"."""
    from pathlib import Path

    from analyses.cli import _inputs, build_parser

    args = build_parser().parse_args(["reproduce", "all", "--out", "o", "--finetuned", "f", "--experiments",
                                      "reversal", "mitigations"])
    assert _inputs(args, "reversal") == {} and _inputs(args, "mitigations") == {"finetuned[0]": Path("f")}


def test_make_facts_refuses_a_file_name_read_as_the_other_format(tmp_path, capsys):
    for name, form in (("facts.jsonl", "csv"), ("facts.csv", "jsonl")):
        result = revlens_in_process(capsys, "make-facts", "people", "--size", "2", "--format", form, "--out",
                                    str(tmp_path / name), check=False)
        assert result.returncode == 2 and "readers tell a fact file's format by its name" in result.stderr
        assert not (tmp_path / name).exists()


def test_make_facts_berglund_refuses_a_folder_that_holds_files(tmp_path, capsys):
    """A second write of fewer groups (here p2d alone) kept the first write's other groups' files beside it."""
    folder = tmp_path / "berglund"
    revlens_in_process(capsys, "make-facts", "people", "--size", "2", "--format", "berglund", "--out", str(folder))
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    result = revlens_in_process(capsys, "make-facts", "people", "--size", "2", "--limit", "2", "--format", "berglund",
                                "--out", str(folder), check=False)
    assert result.returncode == 2 and "a folder that holds files already" in result.stderr
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
