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


def test_the_revlens_program_returns_main_s_code_with_its_objects_frozen_for_the_exit(tmp_path, monkeypatch, capsys):
    """The console script and ``python -m analyses.cli`` run :func:`analyses.cli.run`: main's exit code (here a
    refusal's, 2), its one error line, then ``gc.freeze`` (the interpreter's exit then skips ~1 s of garbage
    collection over torch's and TransformerLens's modules); :func:`analyses.cli.main` itself freezes nothing, as tests
    and notebooks call it in a process that goes on."""
    import gc
    import importlib.metadata

    from analyses import cli

    [script] = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "revlens"]
    assert script.value == "analyses.cli:run"
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(len(capsys.readouterr().err.splitlines())))
    monkeypatch.setattr(sys, "argv", ["revlens", "make-facts", "people", "--size", "2", "--format", "csv", "--out",
                                      str(tmp_path / "facts.jsonl")])  # a csv named .jsonl: refused
    assert cli.main() == 2 and frozen == [] and "revlens: error: " in capsys.readouterr().err
    assert cli.run() == 2 and frozen == [1]  # after main's one error line


def test_every_option_of_every_command_says_what_it_does():
    """`revlens COMMAND --help` explains each option (reproduce's own experiments' options among them)."""
    import argparse

    from analyses.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    silent = [f"{name} {action.option_strings[0]}" for name, parser in commands.choices.items()
              for action in parser._actions if action.option_strings and not (action.help or "").strip()]
    assert len(commands.choices) >= 8 and not silent


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


def test_check_asymmetry_records_the_celebrity_csv_it_read_as_an_input(tmp_path, capsys, monkeypatch):
    """With --data left out the CSV comes from $REVLENS_CELEBRITY_CSV (or the package's copy): the manifest
    recorded no input for it, so a run over a CSV edited since passed ``check_run(inputs=True)``."""
    from analyses.runfolder import RunFolderError, check_run
    from facts.celebrity import DEFAULT_CSV

    csv = tmp_path / "pairs.csv"
    csv.write_text("".join(DEFAULT_CSV.read_text(encoding="utf-8").splitlines(keepends=True)[:7]), encoding="utf-8")
    monkeypatch.setenv("REVLENS_CELEBRITY_CSV", str(csv))
    out = tmp_path / "out"
    revlens_in_process(capsys, "check-asymmetry", "--model", "smollm2-135m", "--limit", "2", "--controls", "1",
                       "--out", str(out), "--quiet", "--threads", "1")
    manifest = check_run(out, inputs=True)
    assert manifest["config"]["data"] is None and str(csv) in manifest["inputs"]
    csv.write_text(csv.read_text(encoding="utf-8").replace("Samira Calle", "Samira Callé"), encoding="utf-8")
    with pytest.raises(RunFolderError, match="changed since the run read them"):
        check_run(out, inputs=True)


def test_probe_refuses_a_checkpoint_nested_deep_in_an_incomplete_run(tmp_path, capsys, monkeypatch):
    """identity-bridge writes its checkpoints four folders below its manifest (RUN/<model>/<variant>/seed-S/
    checkpoints): probe looked for the manifest only two folders up, so a checkpoint of a killed run was probed
    as if the run were whole."""
    import analyses.identity_bridge as identity_bridge

    def killed(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(identity_bridge, "write_csv", killed)  # killed once every model has trained
    run = tmp_path / "run"
    result = revlens_in_process(capsys, "reproduce", "identity-bridge", "--out", str(run), "--steps", "2",
                                "--n-seeds", "1", "--quiet", "--threads", "1", check=False)
    assert result.returncode == 130 and json.loads((run / "manifest.json").read_text())["complete"] is False
    seed = run / "tiny" / "baseline" / "seed-0"
    for model in (seed / "checkpoints", seed / "checkpoints" / "step-000002.json"):
        assert model.exists()
        result = revlens_in_process(capsys, "probe", "--model", str(model), "--facts", str(seed / "facts.jsonl"),
                                    "--controls", "2", "--limit", "4", "--out", str(tmp_path / "probe"),
                                    "--threads", "1", check=False)
        assert result.returncode == 2 and "incomplete" in result.stderr, result.stderr
        assert f"{run}: the run folder of --model is incomplete" in result.stderr
        assert not (tmp_path / "probe").exists()


@pytest.fixture(scope="module")
def probe_inputs(tmp_path_factory):
    """What the refused probes below read: a weightless Llama folder (its files declare a convertible model), a
    people CSV, a token-world JSONL and a templates file of the CSV's p2d relation only (no d2p)."""
    import transformers

    from analyses.cli import main

    folder = tmp_path_factory.mktemp("probe-inputs")
    for argv in (["people", "--size", "2", "--out", "facts.csv"], ["reversal", "--size", "20", "--out", "tokens.jsonl"]):
        argv[-1] = str(folder / argv[-1])
        assert main(["make-facts", *argv]) == 0
    (folder / "p2d.jsonl").write_text("".join(
        json.dumps({"relation": "p2d", "split": split, "template": template}) + "\n"
        for split, template in (("train", "{given} is {answer}."), ("test", "{given} was {answer}."))))
    transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1).save_pretrained(folder / "tiny")
    return folder


@pytest.mark.parametrize("args, named", [
    (("--facts", "facts.csv"), "tiny: not a reversal-lens checkpoint (no step-NNNNNN.json), and 'csv' facts come "
                               "without sentences"),
    (("--facts", "tokens.jsonl"), "tiny: not a reversal-lens checkpoint (no step-NNNNNN.json), and 'reversal' facts "
                                  "come without sentences"),
    (("--facts", "facts.csv", "--templates-file", "p2d.jsonl"),
     "facts.csv:2: fact 0 ('Fenella Umber' 'p2d' \"the painter of the mural 'Restless Citadel'\", reverse): no "
     "template number 0 for relation 'd2p' (0 given; templates cover ['p2d']); add a train template of that "
     "relation to --templates-file p2d.jsonl"),
], ids=["csv-without-templates", "token-world-jsonl", "templates-file-without-a-relation"])
def test_probe_refuses_facts_without_sentences_before_the_previous_run_is_touched(probe_inputs, tmp_path, capsys,
                                                                                  monkeypatch, args, named):
    """A CSV or token-world JSONL with no --templates-file was refused only once the run folder had deleted the
    previous run's files (analyses.probe.load_probed), and a templates file lacking a relation of the facts only
    after the model loaded, as "fact N" with no file:line: both now before the folder is touched."""
    import shutil

    from analyses.runfolder import run_folder

    shutil.copytree(probe_inputs, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "previous"
    with run_folder(out, "probe", config={"previous": True}, command="revlens probe (previous)"):
        (out / "summary.json").write_text('{"previous": true}\n')
        (out / "logits.csv").write_text("a,b\n1,2\n")
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    for target in (out, tmp_path / "new"):
        result = revlens_in_process(capsys, "probe", "--model", "tiny", *args, "--controls", "1", "--out", str(target),
                                    "--threads", "1", check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and named in lines[0], result.stderr
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert not (tmp_path / "new").exists()
