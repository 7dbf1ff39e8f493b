"""A real ``kill -9`` of a training process at a random step, then ``resume``: nothing is lost.

The run (:mod:`killable_training`) writes a checkpoint every 10 of its 200 steps. The test
waits until a randomly chosen number of checkpoints exists and a random 0-60 ms more, sends
SIGKILL (the process may be mid-step, mid-evaluation or mid-write), resumes from what the killed
process left (in this process: the kill is the real thing, the resume needs no fresh interpreter,
whose torch and TransformerLens imports cost ~6 CPU s), and compares every checkpoint file, byte for
byte, with those of an uninterrupted run of the same seed: the same weights, optimizer state and
history at every step.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import killable_training
from analyses.cli import main
from cli_processes import REVERSAL, offline_session, tree, without
from models.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(killable_training.__file__)
N_CHECKPOINTS = killable_training.STEPS // killable_training.CHECKPOINT_EVERY
pytestmark = pytest.mark.xdist_group("cli-processes")  # reads offline_session's run: one per run, not per worker


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill_after(process: subprocess.Popen, folder: Path, n_checkpoints: int, delay: float, timeout: float = 300) -> bool:
    """SIGKILL ``process`` ``delay`` s after ``folder`` holds ``n_checkpoints``; False if it exited first."""
    deadline = time.monotonic() + timeout
    while len(list_checkpoints(folder)) < n_checkpoints:
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.002)
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_checkpoints(folder) for p in (p, p.with_suffix(".safetensors"))}


def test_kill_9_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    rng = random.Random()
    killed = tmp_path / "killed"
    for attempt in range(3):  # a loaded machine may let the run finish before the kill lands
        wait_for, delay = rng.randint(1, N_CHECKPOINTS // 2 - attempt * 3), rng.uniform(0, 0.06)
        if kill_after(start(str(SCRIPT), str(killed)), killed / "checkpoints", wait_for, delay):
            died_at = load_checkpoint(killed / "checkpoints").step  # the latest checkpoint loads whole
            if died_at < killable_training.STEPS:
                break
    else:
        raise AssertionError("three runs finished before they could be killed")
    half_written = sorted(p.name for p in (killed / "checkpoints").glob("*.tmp"))

    killable_training.run(killed, resume=True)

    reference = tmp_path / "uninterrupted"
    killable_training.run(reference)
    expected, got = files(reference / "checkpoints"), files(killed / "checkpoints")
    assert len(expected) == 2 * N_CHECKPOINTS
    assert got.keys() == expected.keys()
    differing = [name for name in expected if got[name] != expected[name]]
    assert not differing, f"killed after step {died_at}; resumed files differ: {differing}"
    print(f"killed with SIGKILL {delay * 1000:.0f} ms after checkpoint {wait_for} appeared (attempt {attempt + 1}); "
          f"latest intact checkpoint: step {died_at}; temporary files left: {half_written}; "
          f"resumed: all {len(expected)} checkpoint files equal the uninterrupted run's")


def test_revlens_reproduce_killed_after_training_resumes_to_the_same_files(tmp_path, tmp_path_factory):
    """`revlens reproduce reversal` checkpoints at its end; killed while it probes and draws,
    `--resume` skips training and writes the files an uninterrupted run wrote (process A of the
    determinism test, same arguments), byte for byte but for the wall time."""
    uninterrupted = offline_session(tmp_path_factory.getbasetemp()).out / "reversal"
    out = tmp_path / "reversal"
    command = ["-m", "analyses.cli", "reproduce", "reversal", "--out", str(out), *REVERSAL]
    for attempt in range(3):
        if kill_after(start(*command), out / "checkpoints", 1, delay=0.0) and not (out / "summary.json").exists():
            break  # killed after training, before its results were written
    else:
        raise AssertionError("three runs finished before they could be killed")
    assert main([*command[2:], "--resume"]) == 0  # resumed in this process (a fresh one costs its imports)
    expected, got = tree(uninterrupted), tree(out)
    assert got.keys() == expected.keys()
    for name in expected:
        if name == "summary.json":
            assert without(got[name], {"seconds"}) == without(expected[name], {"seconds"})
        else:
            assert got[name] == expected[name], name
