"""A run folder is one run (analyses/runfolder.py): locked while written, its manifest written last,
refused by every reader when its files are not all the manifest's; and the CLI's error boundary:
one line, exit 2 (130 for Ctrl-C), nothing written outside --out. Each test is a case of issue #19.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyses.cli import main
from analyses.report import ReportError, write_report
from analyses.runfolder import LOCK, MANIFEST, RunFolderError, check_run, inputs_unchanged, run_folder
from facts.io import atomic_write, load_jsonl, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
TINY = ("--steps", "2", "--pairs", "20", "--eval-every", "1", "--quiet")
"""The cheapest `reproduce reversal`: tiny model, 20 pairs, 2 steps (about a second in-process)."""


def revlens(capsys, *args) -> tuple[int, str, str]:
    """``revlens ARGS`` in this process: exit code (argparse's SystemExit included), stdout, stderr."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single line an error prints; fails on a traceback or anything else on stderr."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("revlens: error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (to see that nothing was touched)."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished `reproduce reversal` run folder (read-only for the tests: copy it to change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["reproduce", "reversal", "--out", str(out), *TINY]) == 0
    return out


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, to, symlinks=True))


# --- the manifest ------------------------------------------------------------------------------

def test_manifest_lists_every_file_with_its_hash(finished):
    manifest = check_run(finished)
    assert manifest["complete"] is True and manifest["kind"] == "reproduce reversal"
    written = {str(p.relative_to(finished)) for p in finished.rglob("*") if p.is_file()} - {MANIFEST, LOCK}
    assert set(manifest["files"]) == written
    assert {"summary.json", "logits.csv", "checkpoints/step-000002.safetensors"} <= written
    assert manifest["config"]["pairs"] == 20 and manifest["command"].startswith("revlens reproduce reversal")


def test_a_failed_rerun_leaves_the_folder_refused_then_a_rerun_cleans_it(finished, tmp_path, capsys):
    """Issue case 2: a rerun that fails after replacing some files (here: after writing a new
    summary.json) must not leave a folder that renders as a whole run."""
    run = copy_run(finished, tmp_path / "run")
    with pytest.raises(RuntimeError, match="fault injected"):
        with run_folder(run, "reproduce reversal"):
            write_text_atomic(run / "summary.json", json.dumps({"experiment": "reversal", "train_prob": 0.0}))
            (run / "half.csv").write_text("a\n1\n")
            raise RuntimeError("fault injected")
    with pytest.raises(RunFolderError, match="incomplete"):
        check_run(run)
    with pytest.raises(ReportError, match="incomplete"):
        write_report([run], tmp_path / "report.html")
    code, _, err = revlens(capsys, "compare", "--out", tmp_path / "c", "--finetuned", run)
    assert code == 2 and "incomplete" in one_error_line(err) and not (tmp_path / "c").exists()
    code, _, err = revlens(capsys, "probe", "--model", run / "checkpoints", "--facts", finished / "facts.jsonl",
                           "--out", tmp_path / "p")
    assert code == 2 and "incomplete" in one_error_line(err)
    assert revlens(capsys, "reproduce", "reversal", "--out", run, *TINY, "--seed", "3")[0] == 0
    assert not (run / "half.csv").exists()  # what the failed run left is its own: removed
    assert check_run(run)["config"]["seed"] == 3
    assert json.loads((run / "summary.json").read_text())["config"]["seed"] == 3


def test_a_file_changed_or_added_after_the_run_is_refused(finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    (run / "stale.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ReportError, match=r"stale.png not written by this run"):
        write_report([run], tmp_path / "report.html")
    (run / "stale.png").unlink()
    (run / "logits.csv").write_text("fact\n0\n")
    with pytest.raises(ReportError, match=r"logits.csv changed since the run wrote them"):
        write_report([run], tmp_path / "report.html")


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys):
    """Issue case 3: another process holds the folder's lock (a real second process)."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; import sys, time\n"
                               f"lock = FileLock({str(out / LOCK)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = revlens(capsys, "reproduce", "reversal", "--out", out, *TINY)
        assert code == 2 and "another revlens process is writing this folder" in one_error_line(err)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()
    assert revlens(capsys, "reproduce", "reversal", "--out", out, *TINY)[0] == 0


def test_another_kind_of_run_is_refused_and_force_replaces_only_its_files(finished, tmp_path, capsys):
    """Issue case 5: `probe --out` into a reversal run would replace its summary."""
    run = copy_run(finished, tmp_path / "run")
    before = (run / "summary.json").read_bytes()
    args = ("probe", "--model", finished / "checkpoints", "--facts", finished / "facts.jsonl", "--out", run,
            "--controls", "4", "--patch-layers", "0")
    code, _, err = revlens(capsys, *args)
    assert code == 2 and "holds a 'reproduce reversal' run" in one_error_line(err) and "--force" in err
    assert (run / "summary.json").read_bytes() == before
    (run / "notes.txt").write_text("mine")  # added after the run: no run's file, never deleted
    assert revlens(capsys, *args, "--force")[0] == 0
    manifest = check_run(run)
    assert manifest["kind"] == "probe" and manifest["kept"] == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "heatmap.png").exists() and not (run / "checkpoints" / "step-000002.json").exists()
    page = (tmp_path / "r.html")
    write_report([run], page)
    assert "notes.txt" not in page.read_text(encoding="utf-8")


def test_a_folder_of_unknown_files_is_refused_and_force_keeps_them(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("keep me")
    code, _, err = revlens(capsys, "reproduce", "reversal", "--out", out, *TINY)
    assert code == 2 and "holds files no revlens run manifest lists (thesis.tex)" in one_error_line(err)
    assert revlens(capsys, "reproduce", "reversal", "--out", out, *TINY, "--force")[0] == 0
    assert check_run(out)["kept"] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "keep me"


def test_force_refuses_a_folder_without_a_manifest_holding_files_a_run_would_write_over(tmp_path, capsys):
    """A run written by the Python API has no manifest: `--force` promised to keep its files ("kept, never
    deleted"), then train() deleted every checkpoints/step-*, and summary.json was written over and listed as the
    new run's own; `--force --resume` resumed its checkpoints unchecked. Both are refused, naming the files, before
    anything is written; a folder holding other files only is still written beside them."""
    from analyses.reproduce import ReversalConfig, reproduce_reversal

    out = tmp_path / "api"
    reproduce_reversal(out, ReversalConfig(steps=2, n_pairs=20, eval_every=1), progress=False)
    (out / "notes.txt").write_text("mine")
    before = contents(out)
    assert "summary.json" in before and "checkpoints/step-000002.safetensors" in before and MANIFEST not in before
    for extra in ((), ("--resume",)):
        code, _, err = revlens(capsys, "reproduce", "reversal", "--out", out, *TINY, "--force", *extra)
        line = one_error_line(err)
        assert code == 2 and "holds files no revlens run manifest lists (checkpoints/step-000002.json, " in line, line
        assert "which it could write over or delete" in line and f"move them out of {out}" in line
        assert ("no manifest says how their random draws were made" in line) == bool(extra)
        assert {name: data for name, data in contents(out).items() if name != LOCK} == before  # not even a manifest
    for name in sorted(before, reverse=True):
        if name != "notes.txt":
            (out / name).unlink()
    assert revlens(capsys, "reproduce", "reversal", "--out", out, *TINY, "--force")[0] == 0
    assert check_run(out)["kept"] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_report_refuses_to_write_into_a_run_and_never_inlines_its_own_output(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    for target in (run / "summary.json", run / "report.html", run / "checkpoints" / "r.html"):
        code, _, err = revlens(capsys, "report", "--runs", run, "--out", target)
        assert code == 2 and "inside the run folder" in one_error_line(err)
    assert snapshot(run) == before
    code, _, err = revlens(capsys, "make-facts", "reversal", "--out", run / "facts.jsonl")
    assert code == 2 and "inside the run folder" in one_error_line(err) and snapshot(run) == before


def test_report_on_a_folder_with_symlink_loops_terminates(finished, tmp_path, capsys):
    """Issue: a folder with two `.` links made `report` loop (857 MB)."""
    parent = tmp_path / "all"
    copy_run(finished, parent / "reversal")
    (parent / "a").symlink_to(".")
    (parent / "reversal" / "b").symlink_to("..")
    code, _, err = revlens(capsys, "report", "--runs", parent, "--out", tmp_path / "r.html")
    assert code == 2 and "reversal: run folder does not match its manifest: b not written by" in one_error_line(err)
    (parent / "reversal" / "b").unlink()
    assert revlens(capsys, "report", "--runs", parent, "--out", tmp_path / "r.html")[0] == 0
    assert (tmp_path / "r.html").stat().st_size < 2_000_000


def test_reproduce_all_writes_one_run_per_folder_and_refuses_a_run_folder(finished, tmp_path, capsys):
    code, _, err = revlens(capsys, "reproduce", "all", "--out", finished / "inner", "--quiet")
    assert code == 2 and "inside the run folder" in one_error_line(err)
    code, _, err = revlens(capsys, "reproduce", "all", "--out", finished, "--quiet")
    assert code == 2 and "holds a run" in one_error_line(err)


# --- resume ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, named", [
    (("--pairs", "30"), "run.world_meta.n_pairs: checkpoint 20, now 30"),
    (("--pairs", "20", "--k", "2"), "run.world_meta.k: checkpoint 1, now 2"),
    (("--pairs", "20", "--model", "one-layer"), "model.name: checkpoint 'tiny', now 'one-layer'"),
    (("--pairs", "20", "--eval-every", "2"), "train_config.eval_every: checkpoint 1, now 2"),
])
def test_resume_names_what_differs_from_the_checkpoint(finished, tmp_path, capsys, change, named):
    """Issue case 1: `--resume` with another --pairs reported accuracy 0.800 and exited 0."""
    run = copy_run(finished, tmp_path / "run")
    before = contents(run)
    args = ["reproduce", "reversal", "--out", run, "--steps", "4", "--eval-every", "1", "--quiet", *change, "--resume"]
    code, _, err = revlens(capsys, *args)
    assert code == 2 and named in one_error_line(err)
    # refused before it wrote anything: the finished run stays finished (its manifest had been left unfinished, so
    # report, compare and sweeps refused a run whose files were never touched)
    assert check_run(run)["complete"] is True and contents(run) == before
    assert revlens(capsys, "reproduce", "reversal", "--out", run, "--steps", "4", "--pairs", "20", "--eval-every",
                   "1", "--quiet", "--resume")[0] == 0
    assert check_run(run)["config"]["steps"] == 4


# --- inputs ------------------------------------------------------------------------------------

def test_inputs_are_recorded_by_absolute_path_and_checked_as_the_file_read_from_any_folder(tmp_path, monkeypatch):
    """`--facts facts.jsonl` was recorded as typed: checked from another folder it named nothing there (an edit
    went unnoticed) or another file (here an unedited copy, which passed). A model name stays as given."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "facts.jsonl").write_text('{"subject": "a"}\n')
    (second / "facts.jsonl").write_text('{"subject": "a"}\n')
    monkeypatch.chdir(first)
    with run_folder(tmp_path / "run", "probe", inputs={"model": "smollm2-135m", "facts": "facts.jsonl"}):
        (tmp_path / "run" / "summary.json").write_text("{}\n")
    manifest = check_run(tmp_path / "run", inputs=True)
    assert sorted(manifest["inputs"]) == sorted([str((first / "facts.jsonl").resolve()), "smollm2-135m"])
    assert manifest["inputs"]["smollm2-135m"] is None
    (first / "facts.jsonl").write_text('{"subject": "b"}\n')
    for folder in (second, tmp_path):
        monkeypatch.chdir(folder)
        with pytest.raises(RunFolderError, match=r"first/facts.jsonl, changed since the run read them"):
            check_run(tmp_path / "run", inputs=True)
        assert not inputs_unchanged(manifest)


def test_a_model_folder_too_large_to_hash_is_still_told_apart_when_it_changes(tmp_path, monkeypatch):
    """A folder over HASHED_FOLDER_BYTES (a model's weights) was recorded with hash None, and a sweep compared
    None with None: the trials of a model retrained in place counted as finished. Its small files are hashed, its
    large ones stand by size and modification time."""
    from analyses import runfolder
    from analyses import sweep as sweeps

    monkeypatch.setattr(runfolder, "HASHED_FOLDER_BYTES", 0)
    monkeypatch.setattr(runfolder, "HASHED_FILE_BYTES", 16)
    model, run = tmp_path / "model", tmp_path / "run"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 16}')
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    with run_folder(run, "probe", config={}, inputs={"model": model}):
        (run / "summary.json").write_text("{}\n")
    manifest = check_run(run, inputs=True)
    assert list(manifest["inputs"].values())[0] is not None
    assert inputs_unchanged(manifest) and sweeps.finished(run, {})
    modified = weights.stat().st_mtime_ns
    weights.write_bytes(b"\1" * 64)  # retrained: the same size, written later
    os.utime(weights, ns=(modified + 10**9, modified + 10**9))
    assert not inputs_unchanged(manifest) and not sweeps.finished(run, {})
    with pytest.raises(RunFolderError, match="changed since the run read them"):
        check_run(run, inputs=True)


# --- temporary files ---------------------------------------------------------------------------

def test_temporary_files_never_follow_a_link_and_never_outlive_an_error(tmp_path):
    """Issue case 4: a link planted at the fixed `<path>.tmp` made make-facts overwrite its target."""
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (tmp_path / "facts.jsonl.tmp").symlink_to(target)  # the old fixed name
    (tmp_path / "out.txt").symlink_to(target)  # the path itself a link: replaced, its target untouched
    write_text_atomic(tmp_path / "facts.jsonl", "new")
    write_text_atomic(tmp_path / "out.txt", "new")
    assert target.read_text() == "precious" and not (tmp_path / "out.txt").is_symlink()

    def fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary))

    with pytest.raises(OSError):
        atomic_write(tmp_path / "big.bin", fail)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".big.bin.{int(dead.stdout)}.abcdefgh.tmp"  # what a SIGKILL mid-write leaves
    left.write_text("half")
    live = tmp_path / f".big.bin.{os.getpid()}.zyxwvuts.tmp"  # a write in progress (this process)
    live.write_text("in progress")
    write_text_atomic(tmp_path / "big.bin", "whole")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted([
        "facts.jsonl.tmp", live.name])  # the dead writer's is gone; the planted link is no temporary of ours


# --- the error boundary ------------------------------------------------------------------------

OUT = ("--out", "out")
FACTS = ("--facts", "facts.jsonl")


@pytest.mark.parametrize("args, named", [
    (("make-facts", "reversal", *OUT, "--seed", "-5"), "--seed: a seed is an integer from 0 to 4294967295, got -5"),
    (("make-facts", "reversal", *OUT, "--seed", str(2**64)), "--seed: a seed is an integer from 0 to 4294967295"),
    (("make-facts", "in-context", *OUT, "--k", "3"), "make-facts in-context: --k would be ignored"),
    (("make-facts", "celebrity", *OUT, "--size", "3"), "make-facts celebrity: --size would be ignored"),
    (("make-facts", "people", "--out", ""), "--out: empty path"),
    (("make-facts", "reversal", "--out", "FILE/x.jsonl"), "FILE: a file is in the way of a folder to be made there"),
    (("reproduce", "reversal", *OUT, "--k", "100", *TINY), "do not fit the 'tiny' model's context of 32"),
    (("reproduce", "reversal", "--out", "", *TINY), "--out: empty path"),
    (("reproduce", "reversal", *OUT, "--device", "cuda:7", *TINY), "--device cuda:7"),
    (("reproduce", "reversal", *OUT, "--device", "nonsense", *TINY), "--device 'nonsense': not a device torch knows"),
    (("reproduce", "reversal", *OUT, "--device", "meta", *TINY), "--device meta: a meta tensor holds no values"),
    (("reproduce", "reversal", *OUT, "--device", "hpu", *TINY), "--device hpu: no hpu device on this machine"),
    (("reproduce", "reversal", "--out", "FILE", *TINY), "is a file, not a folder"),
    (("reproduce", "reversal", "--out", "FILE/sub", *TINY), "is a file, so no folder can be made under it"),
    (("reproduce", "reversal", *OUT, "--steps", "0"), "--steps: must be ≥ 1, got 0"),
    (("reproduce", "reversal", *OUT, "--steps"), "--steps: expected one argument"),
    (("probe", "--model", "run/checkpoints", *FACTS, *OUT, "--controls", "100000"), "--controls 100000: "),
    (("probe", "--model", "smollm2-135m", *FACTS, *OUT), "'reversal' facts come without sentences"),
    (("probe", "--model", "smollm2-135m", "--facts", "FILE/under", *OUT), "no such fact file"),
    (("probe", "--model", "run/checkpoints", "--facts", "far.jsonl", *OUT), "far.jsonl:3: entity 'e9999"),
    # a CSV's line had been looked up as a JSONL file's: "not valid JSON"
    (("probe", "--model", "run/checkpoints", "--facts", "far.csv", *OUT), "far.csv:3: entity 'e9999"),
    (("report", "--runs", "FILE", "--out", "r.html"), "not a folder"),
    (("compare", *OUT, "--finetuned", "FILE"), "not a folder"),
])
def test_bad_arguments_are_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch, args, named):
    monkeypatch.chdir(tmp_path)
    Path("FILE").write_text("a file")
    assert main(["make-facts", "reversal", "--size", "20", "--out", "facts.jsonl"]) == 0
    lines = Path("facts.jsonl").read_text().splitlines()
    Path("far.jsonl").write_text("\n".join([lines[0], lines[1], lines[2].replace('"object": "e', '"object": "e9999', 1),
                                            *lines[3:]]) + "\n")  # an entity id past the vocabulary on line 3
    Path("far.csv").write_text("subject,relation,object\ne1,r,e2\ne3,r,e9999\n")
    (Path("run") / "checkpoints").mkdir(parents=True)
    (Path("run") / "checkpoints" / "step-000001.json").write_text("{}")
    capsys.readouterr()
    before = snapshot(tmp_path)
    started = time.perf_counter()
    code, _, err = revlens(capsys, *args)
    assert code == 2 and named in one_error_line(err), err
    assert time.perf_counter() - started < 15  # refused before any model is built or trained
    added = set(snapshot(tmp_path)) - set(before)
    assert added <= {"out", f"out/{LOCK}", f"out/{MANIFEST}"}  # at most the run folder, marked unfinished
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before


def test_an_os_error_mid_run_is_one_line_and_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    """A full disk while the figures are written (fault injected at os.replace, as ENOSPC)."""
    real = os.replace

    def full_disk(source, destination):
        if str(destination).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device", str(destination))
        real(source, destination)

    monkeypatch.setattr(os, "replace", full_disk)
    out = tmp_path / "run"
    code, _, err = revlens(capsys, "reproduce", "reversal", "--out", out, *TINY)
    assert code == 2 and one_error_line(err).endswith("curves.png: no space left on the disk; free some space or "
                                                      "choose another --out, then rerun")
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(RunFolderError, match="incomplete"):
        check_run(out)
    monkeypatch.setattr(os, "replace", real)
    assert revlens(capsys, "reproduce", "reversal", "--out", out, *TINY)[0] == 0


def test_ctrl_c_exits_130_with_one_line_and_the_run_resumes(tmp_path):
    """SIGINT in a real process while it trains: exit 130, one line, no traceback; --resume finishes."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "analyses.cli", "reproduce", "reversal", "--out", str(out), "--steps", "30",
               "--pairs", "20", "--eval-every", "10", "--checkpoint-every", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a shell's background job ignores SIGINT, and Python keeps an ignored SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list((out / "checkpoints").glob("step-*.json"))) < 3:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("revlens: interrupted;") and "--resume" in lines[0], err
    with pytest.raises(RunFolderError, match="incomplete"):
        check_run(out)
    assert main([*command[3:], "--resume"]) == 0  # resumed in this process (a fresh process costs a torch import)
    assert check_run(out)["complete"] and load_jsonl(out / "facts.jsonl")


def _in_mount_namespace(tmp_path: Path, mount: str, *commands: str) -> str:
    """Run ``commands`` (``revlens`` argument strings) in a private mount namespace where
    ``tmp_path/disk`` is a real mount made by ``mount`` (a shell line); each prints its exit code, its
    stderr and every leftover temporary under the mount, which vanishes with the namespace."""
    disk = tmp_path / "disk"
    disk.mkdir()
    cli = f"{sys.executable} -m analyses.cli"
    lines = [f"({mount.format(disk=disk)}) || exit 90"] + [
        f"{cli} {command.format(disk=disk)} >/dev/null 2>{tmp_path}/err{index}; echo \"exit $?\"; "
        f"cat {tmp_path}/err{index}; find {disk} -name '*.tmp' | sed 's/^/LEFTOVER /'"
        for index, command in enumerate(commands)]
    result = subprocess.run(["unshare", "-m", "sh", "-uc", "\n".join(lines)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _errors(stdout: str) -> list[str]:
    """The one error line of each command of :func:`_in_mount_namespace`; nothing left behind."""
    assert "LEFTOVER " not in stdout and "Traceback" not in stdout, stdout
    chunks = stdout.split("exit ")[1:]
    lines = []
    for chunk in chunks:
        code, *rest = chunk.strip().splitlines()
        assert code == "2", chunk
        lines.append(one_error_line("\n".join(rest)))
    return lines


def test_a_real_read_only_file_system_is_one_line_per_command(tmp_path):
    """A read-only bind mount (not a simulated error): every writing command says so in one line."""
    out = _in_mount_namespace(
        tmp_path, "mount --bind {disk} {disk} && mount -o remount,bind,ro {disk}",
        "make-facts reversal --out {disk}/facts.jsonl", f"reproduce reversal --out {{disk}}/run {' '.join(TINY)}",
        "report --runs {disk} --out {disk}/report.html")
    errors = _errors(out)
    assert len(errors) == 3
    assert all("read-only file system" in line or "not a run" in line or "no run" in line for line in errors), errors
    assert sum("read-only file system" in line for line in errors) >= 2, errors


def test_a_really_full_disk_is_one_line_and_leaves_no_temporary(tmp_path):
    """A 64 KiB tmpfs fills while the run writes its figures: one line naming the file, no temporary left."""
    out = _in_mount_namespace(tmp_path, "mount -t tmpfs -o size=64k revlens-full {disk}",
                              f"reproduce reversal --out {{disk}}/run {' '.join(TINY)}")
    (line,) = _errors(out)
    assert "no space left on the disk" in line and "/run/" in line, line


def test_two_revlens_processes_on_one_out_one_run_and_one_refusal(tmp_path):
    """Issue case 3 with two real `revlens` processes (seeds 0 and 1, one --out): while the first trains,
    the second exits 2 with one line; the folder ends as the first run alone (its seed, its manifest)."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def argv(seed: int) -> list[str]:
        return ["reproduce", "reversal", "--out", str(out), "--seed", str(seed), "--steps", "60", "--pairs", "20",
                "--eval-every", "10", "--checkpoint-every", "1", "--quiet"]

    # The second has imported torch and revlens before the first starts, and runs `revlens` when told: on a slow
    # machine its imports outlasted the first's whole run, and it found the folder free.
    second = subprocess.Popen([sys.executable, "-c", "import sys, torch, analyses.cli; print('ready', flush=True); "
                               "sys.stdin.readline(); sys.exit(analyses.cli.main(sys.argv[1:]))", *argv(1)],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert second.stdout.readline() == "ready\n", second.communicate()
    first = subprocess.Popen([sys.executable, "-m", "analyses.cli", *argv(0)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step-*.json")):  # the first is writing: it holds the lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    _, err = second.communicate("go\n", timeout=120)
    assert second.returncode == 2 and "another revlens process is writing this folder" in one_error_line(err)
    assert first.wait(timeout=300) == 0, first.communicate()
    manifest = check_run(out)
    assert manifest["complete"] and json.loads((out / "summary.json").read_text())["config"]["seed"] == 0


def test_a_folder_another_process_holds_is_refused_before_torch_is_imported(tmp_path):
    """The lock is taken before the run's settings are made (they import torch and TransformerLens, seconds on a
    slow machine): a command refused because another revlens writes its folder answers at once."""
    from analyses.runfolder import locked

    out = tmp_path / "run"
    code = ("import sys, analyses.cli; code = analyses.cli.main(['reproduce', 'reversal', '--out', sys.argv[1], "
            "'--quiet']); print(code, 'torch' in sys.modules)")
    with locked(out):
        done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert "another revlens process is writing this folder" in one_error_line(done.stderr)


# --- refused before the folder is touched --------------------------------------------------------

def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the manifest and the lock too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def previous_run(out: Path, kind: str) -> dict[str, bytes]:
    """A complete run of ``kind`` in ``out`` (written through :func:`run_folder`, as a command writes
    one); returns its files' bytes."""
    with run_folder(out, kind, config={"previous": True}, command=f"revlens {kind} (previous)"):
        (out / "summary.json").write_text('{"previous": true}\n')
        (out / "logits.csv").write_text("a,b\n1,2\n")
    return contents(out)


def previous_sweep(out: Path) -> dict[str, bytes]:
    """A finished sweep folder of reproduce reversal: its sweep.toml and aggregate files."""
    from analyses import sweep as sweeps

    out.mkdir()
    (out / sweeps.SWEEP_FILE).write_text(sweeps.sweep_toml(sweeps.make_sweep("reversal", "0", [])))
    for name in (sweeps.AGGREGATE, sweeps.SUMMARY, sweeps.FIGURE):
        (out / name).write_text(f"previous {name}\n")
    (out / sweeps.TRIALS).mkdir()
    return contents(out)


FT = ("finetune-facts", "--model", "tiny", "--facts", "people.jsonl", "--controls", "1")
PROBE = ("probe", "--model", "run/checkpoints", "--facts", "run/facts.jsonl", "--controls", "2")
ASYM = ("check-asymmetry", "--model", "tiny", "--limit", "5", "--controls", "3")
SWEEP = ("sweep", "reversal", "--seeds", "0", "--workers", "1")


@pytest.fixture(scope="module")
def refused_inputs(finished, tmp_path_factory) -> Path:
    """The files the refused commands below read, made once: a finished run, fact files, a bad celebrity CSV, a
    templates file whose answer boundary the tokenizer merges, and two weightless Llama folders."""
    import shutil

    import transformers

    folder = tmp_path_factory.mktemp("refused-inputs")
    copy_run(finished, folder / "run")
    for argv in (["people", "--size", "2", "--out", "people.jsonl"],
                 ["reversal", "--size", "20", "--seed", "1", "--out", "other.jsonl"],
                 ["celebrity", "--limit", "4", "--out", "celeb.jsonl"]):
        argv[argv.index("--out") + 1] = str(folder / argv[argv.index("--out") + 1])
        assert main(["make-facts", *argv]) == 0
    (folder / "bad_celeb.csv").write_text("child,parent,parent_type,child_prediction,can_reverse\nA,B,aunt,,True\n")
    (folder / "merge.csv").write_text("subject,relation,object\nAnn Lee,says,ld\nBo Kim,says,rd\n")
    (folder / "merge.jsonl").write_text("".join(
        json.dumps({"relation": "says", "split": split, "template": template}) + "\n"
        for split, template in (("train", "{given} says wor{answer}."), ("test", "{given} said {answer}."))))
    transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1).save_pretrained(folder / "tiny")
    transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1,
                             rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 10000.0}
                             ).save_pretrained(folder / "rope")  # RoPE scaling the hooked converter would drop
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("kind, args, named", [
    ("check-asymmetry", (*ASYM, "--data", "bad_celeb.csv"), "bad_celeb.csv:2: parent_type must be one of"),
    ("check-asymmetry", (*ASYM, "--controls", "5000"), "--controls 5000: "),
    *[("finetune-facts", (*FT, "--lr", lr), "argument --lr: must be a finite number > 0") for lr in
      ("nan", "inf", "0", "-1")],
    ("finetune-facts", (*FT, "--controls", "50"),
     "50 controls asked, but the 'p2d/object' answers hold only 1 other(s); use --controls 1 or fewer"),
    ("finetune-facts", (*FT, "--people", "2"), "--people with --facts: --people sizes the built-in people world"),
    ("finetune-facts", (*FT, "--lora-rank", "2", "--lora-targets", "bogus_proj"),
     "--lora-targets bogus_proj: not linear layers of tiny's blocks; valid: down_proj"),
    ("finetune-facts", (*FT, "--trainable-blocks", "99"),
     "--trainable-blocks 99: tiny has 2 blocks; use 1…2"),
    # more facts to trace than the facts hold had been traced fewer, unsaid
    ("finetune-facts", (*FT, "--tracing-facts", "3"), "--tracing-facts 3: people.jsonl holds 2 fact(s) trained "
                                                      "forward with the reverse held out, the facts tracing reads; use "
                                                      "--tracing-facts 2 or fewer"),
    ("probe", (*PROBE, "--tracing", "--tracing-facts", "999"), "--tracing-facts 999: run/facts.jsonl holds only "),
    ("probe", (*PROBE, "--tracing", "--tracing-facts", "3", "--limit", "2"),
     "--tracing-facts 3: the first 2 facts of run/facts.jsonl (--limit 2) hold only 2 facts; use --tracing-facts 2"),
    # a sentence whose answer boundary the tokenizer merges had been found once the folder was entered
    ("finetune-facts", ("finetune-facts", "--model", "smollm2-135m", "--facts", "merge.csv", "--templates-file",
                        "merge.jsonl", "--train-paraphrases", "1", "--controls", "1"),
     "training pair 'Ann Lee says wor': prompt 'Ann Lee says wor' and answer 'ld' do not tokenize apart"),
    ("probe", (*PROBE, "--limit", "1"), "--controls 2: the first 1 facts of run/facts.jsonl (--limit 1) hold only 0"),
    ("probe", (*PROBE[:-1], "3", "--limit", "3"),
     "--controls 3: the first 3 facts of run/facts.jsonl (--limit 3) hold only 2 wrong answers of one kind per "
     "question; use --controls 2"),
    ("probe", (*PROBE, "--patch-layers", "99"), "--patch-layers 99: out of range; this model has layers 0…1"),
    ("probe", (*PROBE, "--patch-layers", "0", "0"), "--patch-layers 0 0: 0 given more than once"),
    ("probe", (*PROBE, "--tracing-facts", "2"), "--tracing-facts without --tracing: nothing is traced"),
    # these had deleted the previous run first
    ("probe", (*PROBE, "--multiple-choice", "2"), "--multiple-choice: run/checkpoints is a checkpoint of token ids"),
    ("probe", ("probe", "--model", "tiny", "--facts", "celeb.jsonl", "--controls", "1", "--multiple-choice", "2"),
     "--multiple-choice: celebrity facts: no statement is trained (multiple choice asks the held-out"),
    ("probe", (*PROBE, "--patch-layers", "0", "-1"), "--patch-layers -1: out of range"),
    *[(kind, args, "cannot convert LlamaForCausalLM (rope: its config sets rope_parameters['rope_type'] = 'linear'")
      for kind, args in (("probe", ("probe", "--model", "rope", "--facts", "people.jsonl", "--controls", "1")),
                         ("check-asymmetry", (*ASYM[:2], "rope", *ASYM[3:], "--backend", "hooked")),
                         ("finetune-facts", ("finetune-facts", "--model", "rope", *FT[3:])))],
    ("probe", ("probe", "--model", "run/checkpoints", "--facts", "other.jsonl", "--controls", "2"),
     "--facts other.jsonl: not the facts the checkpoint was trained on"),
    ("reproduce reversal", ("reproduce", "reversal", *TINY, "--lr", "nan"), "argument --lr: must be a finite number"),
    ("reproduce reversal", ("reproduce", "reversal", *TINY, "--k", "50"),
     "--k 50: sentences of 101 tokens do not fit the 'tiny' model's context of 32"),
    ("reproduce reversal", ("reproduce", "reversal", *TINY[:2], "--pairs", "1"),
     "--pairs 1: the reversal world needs at least 2 pairs"),
    # each had trained, then failed (a chain of one triple), or written one run twice (--dims 64 64)
    ("reproduce chain", ("reproduce", "chain", "--triples", "1"), "--triples 1: the chain world needs at least 2"),
    ("reproduce chain", ("reproduce", "chain", "--triples", "5", "--heldout", "5"),
     "--heldout 5: must be below --triples 5"),
    # each had deleted the previous run, then failed building its world
    ("reproduce reversal", ("reproduce", "reversal", *TINY[:2], "--pairs", "300"),
     "--pairs 300 with --k 1: 300 distinct 1-token words cannot be made from an alphabet of 200 tokens"),
    ("reproduce chain", ("reproduce", "chain", "--triples", "201"),
     "--triples 201: 201 distinct 1-token words cannot be made"),
    ("reproduce chain", ("reproduce", "chain", "--related", "--triples", "800"),
     "--related --triples 800: 800 related-token entities per kind need 800 second tokens; the vocabulary has 797"),
    ("reproduce chain-sizes", ("reproduce", "chain-sizes", "--sizes", "10", "800", "--steps", "2"),
     "--sizes 800 (800 trained + 50 held-out related-token triples): 850 related-token entities"),
    # ignored, and recorded as an input of every experiment
    ("reproduce all", ("reproduce", "all", "--experiments", "chain", "--finetuned", "run", "--workers", "1"),
     "--finetuned: its rows join the mitigations table, and --experiments leaves mitigations out"),
    ("reproduce all", ("reproduce", "all", "--seeds", "2", "--force"), "--force with --seeds: "),
    ("reproduce bilinear", ("reproduce", "bilinear", "--dims", "8", "16", "8", "--steps", "2"),
     "--dims 8 16 8: 8 given more than once; give each value once"),
    ("reproduce all", ("reproduce", "all", "--experiments", "chain", "chain", "--workers", "2"),
     "--experiments chain chain: chain given more than once"),
    ("sweep", (*SWEEP, "--gpus-per-trial", "1000"), "--gpus-per-trial 1000: more than the "),
    ("sweep", (*SWEEP, "--gpus-per-trial", "2", "--address", "127.0.0.1:1"),
     "--gpus-per-trial 2: a trial runs on one GPU"),
    ("sweep", (*SWEEP, "--gpus-per-trial", "-1"), "argument --gpus-per-trial: must be a finite number ≥ 0, got -1"),
    ("sweep", (*SWEEP, "--gpus-per-trial", "nan"), "argument --gpus-per-trial: must be a finite number ≥ 0, got nan"),
    ("sweep", (*SWEEP, "--retries", "-1"), "argument --retries: must be ≥ 0, got -1"),
    ("sweep", (*SWEEP, "--grid", "k=1,50"),
     "--grid k=50: --k 50: sentences of 101 tokens do not fit the 'tiny' model's context of 32"),
    ("sweep", (*SWEEP, "--grid", "device=cuda:1000"), "--grid device=cuda:1000: --device cuda:1000: "),
    ("sweep", (*SWEEP, "--grid", "device=cuda:1000", "--address", "127.0.0.1:1"),
     "--address 127.0.0.1:1: nothing answers"),  # on a cluster, the device is the nodes'
    ("sweep", ("sweep", "reversal", "--seeds", "0-12000"), "--seeds '0-12000': more than 10000 seeds"),
    ("sweep", ("sweep", "reversal", "--seeds", ""), "--seeds '': no seeds given"),
])
def test_a_refused_option_leaves_the_previous_run_byte_identical(refused_inputs, tmp_path, capsys, monkeypatch, kind,
                                                                 args, named):
    """Arguments and inputs are checked before the run folder is entered (which would mark the old
    manifest unfinished and delete the old run's files): a refusal exits 2 with one line naming the
    option, the previous run in --out is left byte for byte, and a new --out is not even created."""
    import shutil

    from analyses import sweep as sweeps

    shutil.copytree(refused_inputs, tmp_path, symlinks=True, dirs_exist_ok=True)  # each case its own copy
    monkeypatch.chdir(tmp_path)

    def no_ray(*_, **__):
        raise AssertionError("Ray started: the sweep was not refused first")

    monkeypatch.setattr(sweeps, "ray_session", no_ray)
    out = tmp_path / "previous"
    before = previous_sweep(out) if kind == "sweep" else previous_run(out, kind)
    capsys.readouterr()
    for target in (out, tmp_path / "new"):
        code, _, err = revlens(capsys, *args, "--out", target, "--threads", "1")
        assert code == 2 and named in one_error_line(err), err
    assert contents(out) == before
    assert not (tmp_path / "new").exists()


def test_an_input_the_run_would_delete_before_reading_it_is_refused_and_the_old_run_kept(finished, tmp_path, capsys,
                                                                                        monkeypatch):
    """A run writes its folder afresh: it deletes the old run's files before it starts. A fact file of that run
    given as the new run's --facts (``finetune-facts --facts R/facts.jsonl --out R``) was deleted before it was
    read: the old run was lost and the new one failed. So was a run folder read under --force. Both are refused
    by name, the old run byte for byte as it was; the same input beside the folder runs on."""
    import shutil

    import transformers

    monkeypatch.chdir(tmp_path)
    assert main(["make-facts", "people", "--size", "2", "--out", "people.jsonl"]) == 0
    transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1).save_pretrained("tiny")  # no weights
    with run_folder("ft", "finetune-facts", config={"previous": True}, command="revlens finetune-facts (previous)"):
        shutil.copy("people.jsonl", "ft/facts.jsonl")
        Path("ft/summary.json").write_text('{"previous": true}\n')
    before = contents(Path("ft"))
    capsys.readouterr()
    code, _, err = revlens(capsys, FT[0], "--model", "smollm2-135m", "--facts", "ft/facts.jsonl", "--controls", "1",
                           "--out", "ft", "--threads", "1")  # a model with a tokenizer: its sentences are checked first
    assert code == 2 and "ft: --facts ft/facts.jsonl is the run there, or one of its files, which this run replaces" \
        in one_error_line(err)
    assert contents(Path("ft")) == before
    run = copy_run(finished, tmp_path / "run")
    before = contents(run)
    code, _, err = revlens(capsys, "probe", "--model", "run/checkpoints", "--facts", "run/facts.jsonl", "--controls",
                           "2", "--out", "run", "--force", "--threads", "1")
    assert code == 2 and "run: --model run/checkpoints is the run there, or one of its files" in one_error_line(err)
    assert contents(run) == before
    with run_folder("ft", "finetune-facts", inputs={"facts": "people.jsonl"}):  # an input outside it: as before
        pass
    shutil.copy("people.jsonl", "ft/mine.jsonl")  # a file no run wrote: kept, so it may be read
    with run_folder("ft", "finetune-facts", inputs={"facts": "ft/mine.jsonl"}):
        pass
    assert Path("ft/mine.jsonl").read_bytes() == Path("people.jsonl").read_bytes()


@pytest.mark.parametrize("model, args, named", [
    ("smollm2-135m", ("probe", "--controls", "1", "--patch-layers", "30"),
     "--patch-layers 30: out of range; this model has layers 0…29"),
    ("smollm2-135m", ("finetune-facts", "--controls", "1", "--trainable-blocks", "31"),
     "--trainable-blocks 31: smollm2-135m has 30 blocks; use 1…30"),
    ("smollm2-135m", ("finetune-facts", "--controls", "1", "--lora-rank", "2", "--lora-targets", "qkv"),
     "--lora-targets qkv: not linear layers of smollm2-135m's blocks; valid: down_proj, gate_proj, k_proj"),
    ("gemma3-270m", ("finetune-facts", "--controls", "1", "--trainable-blocks", "19"),
     "--trainable-blocks 19: gemma3-270m has 18 blocks; use 1…18"),
], ids=["smollm2-patch-layers", "smollm2-trainable-blocks", "smollm2-lora-targets", "gemma3-trainable-blocks"])
def test_options_of_a_gguf_never_read_before_are_checked_before_the_folder(tmp_path, capsys, monkeypatch, model,
                                                                           args, named):
    """With no cache entry for the GGUF file (an empty cache, as on a new machine), the layer counts and
    linear-layer names are read from the file's metadata (its configuration only: no weight is
    dequantised, nothing is cached), so the refusal still comes before the previous run in --out is
    touched."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REVLENS_GGUF_CACHE", str(tmp_path / "empty-cache"))
    assert main(["make-facts", "people", "--size", "2", "--out", "people.jsonl"]) == 0
    out = tmp_path / "previous"
    before = previous_run(out, args[0])
    capsys.readouterr()
    code, _, err = revlens(capsys, *args, "--model", model, "--facts", "people.jsonl", "--out", out, "--threads", "1")
    assert code == 2 and named in one_error_line(err), err
    assert contents(out) == before
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_make_facts_refuses_an_out_that_is_a_run_folder(tmp_path, capsys):
    """`make-facts --format berglund --out RUN` would write its folder's files into the run itself."""
    out = tmp_path / "run"
    before = previous_run(out, "check-asymmetry")
    code, _, err = revlens(capsys, "make-facts", "people", "--size", "2", "--format", "berglund", "--out", out)
    assert code == 2 and f"--out {out}: is a run folder (it holds manifest.json)" in one_error_line(err)
    assert contents(out) == before
