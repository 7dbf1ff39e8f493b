"""A property-based fuzzer of the `revlens` command line (issue #19): hypothesis draws argv from
cheap commands (make-facts, report, probe of a tiny checkpoint, a 2-step reproduce reversal),
fact files with injected faults, and kill points; for every case the command either exits 0
leaving a consistent result (a folder that passes its manifest, a loadable fact file, a report)
or exits ≠ 0 with exactly one error line and no traceback, and no file outside --out is touched.

Bounded: 150 argv cases (``FUZZ``, about 15 s) and 2 kill points (``KILLS``, about 13 s), derandomized.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyses.cli import main
from analyses.runfolder import LOCK, MANIFEST, RunFolderError, check_run
from facts.io import load_jsonl

ROOT = Path(__file__).resolve().parents[2]
TINY = ("--pairs", "20", "--eval-every", "1", "--quiet")
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KILLS = settings(FUZZ, max_examples=2)
TALLY: dict[str, int] = {}
"""Outcomes per command kind (printed with -s: the case table of the closing note)."""


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Size and mtime of every path under ``folder`` but ``skip`` and what is under it (links not followed)."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root, name)
            if skip is not None and (path == skip or skip in path.parents):
                continue
            info = path.lstat()
            found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What the fuzzed commands read: a finished tiny run, a parent of runs with a link loop, a file."""
    root = tmp_path_factory.mktemp("fuzz-inputs")
    assert main(["reproduce", "reversal", "--out", str(root / "run"), "--steps", "2", *TINY]) == 0
    (root / "all").mkdir()
    shutil.copytree(root / "run", root / "all" / "reversal")
    (root / "all" / "loop").symlink_to(".")
    (root / "FILE").write_text("not a folder")
    return root


FAULTS = {
    "none": lambda lines: lines,
    "truncated": lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]],
    "zero-width space": lambda lines: [lines[0], lines[1].replace('"e', '"\u200be', 1), *lines[2:]],
    "repeated key": lambda lines: [lines[0], lines[1].replace("{", '{"subject": "e1", ', 1), *lines[2:]],
    "meta []": lambda lines: [json.dumps({"world": "reversal", "meta": []}), *lines[1:]],
    "not UTF-8": lambda lines: [lines[0], lines[1] + "\udcff", *lines[2:]],
    "text line": lambda lines: [lines[0], "Ann Smith", *lines[2:]],
    "empty": lambda lines: [],
}


def write_facts(path: Path, source: Path, fault: str) -> Path:
    lines = FAULTS[fault](source.read_text(encoding="utf-8").splitlines())
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape"))
    return path


def outs(work: Path, inputs: Path):
    """Where --out may point: new, nested new, an existing empty folder, a file, under a file, inside a run, ''."""
    return st.sampled_from([work / "out", work / "a" / "b" / "out", work / "empty", inputs / "FILE",
                            inputs / "FILE" / "under", inputs / "run" / "inner", ""])


@st.composite
def cases(draw, work: Path, inputs: Path):
    """One argv (and the fault in the fact file it reads)."""
    kind = draw(st.sampled_from(["make-facts", "report", "probe", "reproduce"]))
    out = draw(outs(work, inputs))
    fault = "none"
    if kind == "make-facts":
        world = draw(st.sampled_from(["reversal", "chain", "in-context", "people"]))
        argv = ["make-facts", world, "--out", out if out == "" else Path(str(out) + ".jsonl")]
        for option, values in (("--seed", [0, 7, -1, 2**40]), ("--k", [1, 2, 0, 200]), ("--size", [3, 20, 0])):
            if draw(st.booleans()):
                argv += [option, draw(st.sampled_from(values))]
    elif kind == "report":
        runs = draw(st.lists(st.sampled_from([inputs / "run", inputs / "all", inputs / "FILE", work / "nowhere"]),
                             min_size=1, max_size=2))
        target = draw(st.sampled_from([work / "report.html", inputs / "run" / "summary.json", work, ""]))
        argv = ["report", "--runs", *runs, "--out", target]
    elif kind == "probe":
        fault = draw(st.sampled_from(["none"] * 4 + sorted(FAULTS)))  # a good file half the time
        facts = write_facts(work / "facts.jsonl", inputs / "run" / "facts.jsonl", fault)
        model = draw(st.sampled_from([inputs / "run" / "checkpoints", inputs / "run" / "checkpoints" / "step-000002.json",
                                      inputs / "run" / "checkpoints", work / "nowhere"]))
        argv = ["probe", "--model", model, "--facts", facts, "--out", out,
                "--controls", draw(st.sampled_from([2, 4, 1000])),
                "--patch-layers", draw(st.sampled_from([0, 1, 99]))]
    else:
        shutil.copytree(inputs / "run", work / "previous")
        out = draw(st.sampled_from([out, work / "previous", work / "previous"]))
        argv = ["reproduce", "reversal", "--out", out, "--steps", draw(st.sampled_from([1, 2])),
                "--k", draw(st.sampled_from([1, 2, 100])), "--seed", draw(st.sampled_from([0, 1, -1])), *TINY]
        if draw(st.booleans()):
            argv.append("--resume")
    return kind, fault, [str(a) for a in argv]


def consistent(argv: list[str]) -> None:
    """What a command that exited 0 must leave."""
    out = Path(argv[argv.index("--out") + 1])
    if argv[0] == "make-facts":
        assert len(load_jsonl(out))
    elif argv[0] == "report":
        assert out.read_text(encoding="utf-8").rstrip().endswith("</html>")
    else:
        assert check_run(out)["complete"] is True


def one_error_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("revlens: error: ") and "Traceback" not in err, err


def test_every_command_exits_0_consistent_or_with_one_error_line(inputs, tmp_path_factory, capsys):
    @FUZZ
    @given(data=st.data())
    def check(data):
        work = tmp_path_factory.mktemp("fuzz")
        (work / "empty").mkdir()
        kind, fault, argv = data.draw(cases(work, inputs))
        out = argv[argv.index("--out") + 1]
        target = Path(out) if out else None
        before_inputs, before_work = snapshot(inputs, target), snapshot(work, target)
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse
            code = exit.code
        _, err = capsys.readouterr()
        if code == 0:
            consistent(argv)
        else:
            assert code == 2, (argv, code, err)
            one_error_line(err)
        assert snapshot(inputs, target) == before_inputs, argv
        after_work = snapshot(work, target)
        assert {k: v for k, v in after_work.items() if k in before_work} == before_work, argv
        case = f"{kind} exit {code}" + (f" (facts: {fault})" if fault != "none" else "")
        TALLY[case] = TALLY.get(case, 0) + 1

    check()
    print("fuzzed cases:", json.dumps(dict(sorted(TALLY.items())), indent=1))
    for kind in ("make-facts", "report", "probe", "reproduce"):  # a CLI that refused everything would pass the rest
        assert TALLY.get(f"{kind} exit 0"), (kind, TALLY)


@KILLS
@given(delay=st.floats(0.0, 4.0), steps=st.sampled_from([20, 40]))
def test_a_run_killed_at_any_point_is_refused_then_resumes_to_the_uninterrupted_files(tmp_path_factory, delay, steps):
    """SIGKILL at a drawn moment (loading, training, drawing, writing the manifest): the folder is
    never taken for a whole run, and `--resume` ends with the files of a run never interrupted."""
    work = tmp_path_factory.mktemp("kill")
    args = ["reproduce", "reversal", "--steps", str(steps), "--checkpoint-every", "1", *TINY]
    reference = work / "reference"
    assert main([*args[:2], "--out", str(reference), *args[2:]]) == 0
    out = work / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "analyses.cli", *args[:2], "--out", str(out), *args[2:]],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / MANIFEST).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    state = "finished before the kill"
    code = process.wait()
    if code == -signal.SIGKILL:
        try:
            check_run(out)
            state = "killed after its manifest: a whole run"
        except RunFolderError:  # killed while writing: never taken for a whole run
            state = "killed mid-run: refused until resumed"
        if state.endswith("a whole run"):  # taken for a whole run: it must be the uninterrupted one, before --resume
            assert_same_run(out, reference)
    else:
        assert code == 0, code
    TALLY[state] = TALLY.get(state, 0) + 1
    assert main([*args[:2], "--out", str(out), *args[2:], "--resume"]) == 0
    assert_same_run(out, reference)
    check_run(out)
    print("kill cases:", TALLY)


def assert_same_run(out: Path, reference: Path) -> None:
    """``out`` holds the files of the run in ``reference``, byte for byte (its manifest and lock aside, and the
    summary's seconds)."""
    expected = {p.relative_to(reference): p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got.keys() == expected.keys()
    for name in expected:
        if name.name in (MANIFEST, LOCK):
            continue
        if name.name == "summary.json":
            assert {**json.loads(got[name]), "seconds": 0} == {**json.loads(expected[name]), "seconds": 0}
        else:
            assert got[name] == expected[name], name
