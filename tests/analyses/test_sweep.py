"""`revlens sweep` on real Ray: a worker killed mid-trial, a resumed sweep, a failing trial, a
two-node local cluster, and bad input refused before anything starts."""

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analyses.cli import main
from analyses.experiments import EXPERIMENTS
from analyses.sweep import Sweep, Trial, make_sweep, read_sweep_file, sweep_toml
from probes.stats import t_quantile
from tests_support import ROOT, revlens

SMALL = ["--grid", "model=one-layer", "--grid", "pairs=30", "--grid", "eval-every=20"]
"""A one-layer model on 30 pairs: a trial trains in about a second."""
KILLED = "model=one-layer,pairs=30,eval-every=20,steps=200,checkpoint-every=20,seed=0"
TINY = ["model=one-layer", "pairs=20", "steps=2", "eval-every=2"]
"""A sweep's --grid items of a one-layer model on 20 pairs for 2 steps: a trial runs in well under a second."""


def _sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "analyses.cli", "sweep", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "seconds"}


@pytest.fixture(scope="module")
def killed_sweep(tmp_path_factory):
    """Two trials on local Ray; the worker of the first is SIGKILLed once it has checkpointed
    step 20 of 200 and before it finishes."""
    out = tmp_path_factory.mktemp("killed") / "sweep"
    process = _sweep("reversal", "--out", str(out), "--seeds", "0-1", *SMALL, "--grid", "steps=200",
                     "--grid", "checkpoint-every=20", "--workers", "2")
    checkpoints, marker = out / "trials" / KILLED / "checkpoints", out / ".running" / f"{KILLED}.pid"
    deadline = time.monotonic() + 300
    while not ((checkpoints / "step-000020.json").exists() and marker.exists()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the trial never reached its first checkpoint"
        time.sleep(0.02)
    assert not (checkpoints / "step-000200.json").exists()
    os.kill(int(marker.read_text()), signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return out, stdout


def test_a_killed_worker_is_retried_from_its_checkpoints_and_matches_a_sequential_run(killed_sweep, tmp_path):
    out, stdout = killed_sweep
    summary = json.loads((out / "summary.json").read_text())
    records = {r["trial"]: r for r in summary["trials"]}
    assert records[KILLED]["resumed"] is True and "resumed from its checkpoints" in stdout
    assert summary["n_finished"] == 2 and summary["failures"] == []
    sweep = read_sweep_file(out / "sweep.toml")
    for trial in sweep.trials():  # the same commands one after another in this process
        assert main(trial.argv("reversal", tmp_path / trial.name, 1)) == 0
        swept, alone = (json.loads((d / trial.name / "summary.json").read_text()) for d in (out / "trials", tmp_path))
        assert _without_time(swept) == _without_time(alone)
        assert (out / "trials" / trial.name / "logits.csv").read_text() == (tmp_path / trial.name / "logits.csv").read_text()
    aggregate = pd.read_csv(out / "aggregate.csv")
    assert len(aggregate) == 1 and aggregate.n_seeds[0] == 2
    assert aggregate["heldout_reverse_logprob.n"][0] == 2  # each metric's own count of seeds beside its mean


def test_report_renders_the_sweep_as_one_section(killed_sweep, tmp_path, capsys):
    out, _ = killed_sweep
    assert main(["report", "--runs", str(out), "--out", str(tmp_path / "report.html")]) == 0
    assert "1 runs" in capsys.readouterr().out  # the sweep, not its trials
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Sweep across seeds and a grid" in page and "aggregate.csv" in page and "heldout_reverse_logprob.ci95_low" in page
    assert page.count('src="data:image/png;base64,') == 1  # sweep.png


def test_a_rerun_runs_only_the_missing_trials(killed_sweep, cluster):
    out, _ = killed_sweep
    trials = sorted((out / "trials").iterdir())
    kept, removed = trials[0], trials[1]
    run_id = json.loads((kept / "manifest.json").read_text())["run_id"]
    first = {r["trial"]: r for r in json.loads((out / "summary.json").read_text())["trials"]}
    for path in sorted(removed.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    removed.rmdir()
    result = revlens("sweep", "--out", str(out), "--address", cluster)  # reruns out/sweep.toml
    assert "2 trials, 1 finished before, 1 to run" in result.stdout
    assert json.loads((kept / "manifest.json").read_text())["run_id"] == run_id  # untouched
    assert json.loads((removed / "manifest.json").read_text())["complete"] is True
    assert pd.read_csv(out / "aggregate.csv").n_seeds.tolist() == [2]
    again = {r["trial"]: r for r in json.loads((out / "summary.json").read_text())["trials"]}
    assert again[kept.name] == {**first[kept.name], "status": "finished before"}  # its run's seconds and host kept
    assert again[kept.name]["seconds"] > 0 and again[removed.name]["status"] == "ran"


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster of two nodes on this machine, one CPU each, started here and stopped after;
    without the API server and monitors, which a sweep does not use (:func:`_lean_local_head`: up
    1.5-2.5 s sooner, 2 CPU s and a 1 s shutdown less, at load 3)."""
    from ray.cluster_utils import Cluster

    from analyses.sweep import _lean_local_head

    with _lean_local_head():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


@pytest.fixture(scope="module")
def cluster_sweep(cluster, tmp_path_factory):
    """device=cpu trains; device=mps (no node of this Linux machine has one) fails inside the trial: on a cluster
    the trials' device is the nodes', so the sweep does not check it before Ray starts (a grid value every node
    would refuse, such as k=16, is refused before: test_run_folders; a CUDA device whose trials reserve no GPU,
    which Ray would hide from them, too: below)."""
    out = tmp_path_factory.mktemp("cluster") / "sweep"
    process = _sweep("reversal", "--out", str(out), "--seeds", "0-1", *SMALL, "--grid", "steps=20",
                     "--grid", "device=cpu,mps", "--address", cluster)
    stdout, stderr = process.communicate(timeout=600)
    return out, process.returncode, stdout, stderr


def test_a_two_node_cluster_runs_the_sweep_on_both_nodes(cluster_sweep):
    out, _, _, _ = cluster_sweep
    ran = [r for r in json.loads((out / "summary.json").read_text())["trials"] if r["status"] == "ran"]
    assert len(ran) == 2 and len({r["node"] for r in ran}) == 2
    for record in ran:
        assert json.loads((out / "trials" / record["trial"] / "manifest.json").read_text())["complete"] is True


def test_trials_no_node_can_hold_are_refused_not_left_waiting(cluster, tmp_path):
    """Each node of the cluster has one CPU, and a trial of two threads fits none: its runner was never placed and
    the sweep waited for it forever. Runners are counted by what each node holds, and none is refused."""
    process = _sweep("reversal", "--out", str(tmp_path / "sweep"), "--seeds", "0", *SMALL, "--grid", "steps=2",
                     "--address", cluster, "--threads-per-trial", "2")
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 2
    assert "no node of the Ray session can hold a trial of 2 CPU(s) (the largest has 1 CPU(s)" in stderr, stderr


def test_a_rerun_reserves_the_gpus_its_first_run_reserved(cluster, tmp_path, capsys):
    """`sweep --gpus-per-trial 0.5` runs its trials on device=cuda, which joins the grid of its sweep.toml; `sweep --out
    DIR` reran them reserving no GPU, and Ray shows a runner that reserves none no GPU, so every trial failed. The
    rerun asks Ray for what the first run asked: this cluster has no GPU, so no node can hold its trials, and it says
    so (before, its trials ran and failed on their device)."""
    from analyses import sweep as sweeps

    out = tmp_path / "sweep"
    first = sweeps.Resources(address=cluster, gpus=0.5)
    sweeps.prepare(sweeps.with_resources(make_sweep("reversal", "0", TINY), first), out)  # as the first run left it
    assert read_sweep_file(out / "sweep.toml").grid["device"] == ("cuda",)
    assert main(["sweep", "--out", str(out), "--address", cluster]) == 2
    error = capsys.readouterr().err
    assert "no node of the Ray session can hold a trial of 1 CPU(s) and 0.5 GPU(s)" in error, error
    rerun = sweeps.reserved(sweeps.sweep_for(out, None, None, []), sweeps.Resources(address=cluster))
    assert sweeps.runner_options(rerun) == sweeps.runner_options(first)
    assert sweeps.runner_options(rerun)["num_gpus"] == 0.5


def test_a_cuda_grid_whose_trials_reserve_no_gpu_is_refused_before_ray_starts(cluster, tmp_path, capsys):
    """Ray hides every GPU from a trial that reserves none (CUDA_VISIBLE_DEVICES set to nothing), so each trial of
    `--grid device=cuda` without `--gpus-per-trial` had started and failed on its own; the sweep is refused before
    Ray starts, naming the option to give. On a cluster, where a point's device is left to the nodes."""
    import ray

    out = tmp_path / "sweep"
    assert main(["sweep", "reversal", "--out", str(out), "--seeds", "0", *SMALL, "--grid", "steps=2",
                 "--grid", "device=cpu,cuda:0", "--address", cluster]) == 2
    error = capsys.readouterr().err
    assert "--grid device=cuda:0: a trial that reserves no GPU sees none under Ray, so it would fail; give " \
           "--gpus-per-trial" in error and len(error.strip().splitlines()) == 1, error
    assert not out.exists() and not ray.is_initialized()


def test_a_failing_trial_is_recorded_and_the_rest_finish(cluster_sweep):
    out, code, stdout, stderr = cluster_sweep
    assert code == 2 and "2 of 4 trials failed" in stderr and "rerun the same command" in stderr
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["device"], f["seed"]) for f in failures] == [("mps", 0), ("mps", 1)]
    assert all("--device mps: " in f["error"] for f in failures)
    aggregate = pd.read_csv(out / "aggregate.csv")  # only whole runs aggregated; a point with none says so
    assert aggregate.device.tolist() == ["cpu", "mps"] and aggregate.n_seeds.tolist() == [2, 0]
    assert aggregate.filter(like=".mean").iloc[1].isna().all() and aggregate.filter(like=".mean").iloc[0].notna().any()
    assert "n/a" in stdout
    for failure in failures:  # each failed trial printed by name, and no other
        assert f"FAILED {failure['trial']}: " in stdout
    assert not [line for line in stdout.splitlines() if line.startswith("FAILED") and "device=cpu" in line]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["reversal", "--grid", "widht=3"], "reversal has no option --widht; its grid keys are model, positional, k,"),
    (["reversal", "--grid", "model="], "empty value; list the values of model"),
    (["reversal", "--grid", "model=big"], "--model 'big': choose from tiny, one-layer, paper"),
    (["reversal", "--grid", "steps=0"], "--steps '0': must be ≥ 1"),
    (["reversal", "--seeds", "4-0"], "the range 4-0 is empty"),
    (["embeddings", "--grid", "steps=3"], "embeddings has no option --steps; its grid keys are none (only seeds vary)"),
    (["chain", "--grid", "steps=3"], "chain has no option --steps; its grid keys are triples, heldout"),
    (["reversal", "--address", f"127.0.0.1:{_free_port()}"], "nothing answers at 127.0.0.1:"),
    (["reversal", "--workers", "64", "--threads-per-trial", "2"], "--workers 64 × --threads-per-trial 2 > the"),
    (["reversal", "--grid", "lr=0.01,nan"], "--lr 'nan': must be a finite number > 0"),
    (["reversal", "--seeds", ""], "--seeds '': no seeds given"),
    (["reversal", "--seeds", "0-99999999"], "more than 10000 seeds"),  # was a 988 MB sweep.toml
    (["reversal", "--seeds", "0-99", "--grid", "steps=" + ",".join(map(str, range(1, 102)))],
     "100 seeds × 101 grid points = 10100 trials, more than the 10000"),
    (["reversal", "--gpus-per-trial", "-1"], "--gpus-per-trial: must be a finite number ≥ 0, got -1"),
    (["reversal", "--gpus-per-trial", "inf"], "--gpus-per-trial: must be a finite number ≥ 0, got inf"),
    (["reversal", "--retries", "-1"], "--retries: must be ≥ 0, got -1"),
    (["reversal", "--grid", "device=-cpu"], "--grid device=-cpu: "),  # was "--device: expected one argument"
    (["reversal", "--grid", "freeze-embeddings=maybe"], "--freeze-embeddings 'maybe': an on/off flag; give on or off"),
    (["reversal", "--threads", "2", "--threads-per-trial", "1"], "--threads 2 and --threads-per-trial 1: a sweep's"),
    (["reversal", "--threads", "100000"], "--workers 1 × --threads-per-trial 100000 > the"),  # --threads is the trials'
])
def test_bad_sweeps_are_refused_before_anything_starts(args, message, tmp_path, capsys):
    try:
        code = main(["sweep", *args, "--out", str(tmp_path / "sweep")])
    except SystemExit as exit:  # an argparse type's refusal
        code = exit.code
    assert code == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("seeds", [[], ["--seeds", "2"]])
def test_reproduce_all_refuses_more_threads_than_cores_naming_its_own_options(seeds, tmp_path, capsys):
    """``reproduce all`` runs its experiments on Ray runners of ``--threads`` threads each; a request the cores cannot
    give was refused naming ``--threads-per-trial``, a sweep's option, or ``--workers None``."""
    assert main(["reproduce", "all", "--workers", "2", "--threads", "100000", *seeds, "--out", str(tmp_path / "a")]) == 2
    assert "--workers 2 × --threads 100000 > the" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_the_sweep_file_reads_back_as_written():
    sweep = Sweep("reversal", (0, 3, 7), {"lr": (1e-05, 0.01), "positional": ("none", "rotary"), "steps": (40,)})
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sweep.toml"
        for written in (sweep, Sweep(sweep.experiment, sweep.seeds, sweep.grid, gpus_per_trial=0.5)):
            path.write_text(sweep_toml(written))
            assert read_sweep_file(path) == written
    assert Trial((("lr", 1e-05), ("facts", "a/b c")), 2).name == "lr=1e-05,facts=a%2Fb%20c,seed=2"


def test_an_on_off_flag_is_a_grid_key_passed_when_on_and_left_out_when_off(tmp_path):
    """``--grid freeze-embeddings=on,off`` (a flag takes no value, so it used to be "no option --freeze-embeddings"):
    kept as a bool, written to sweep.toml as one, and each trial's command line parses to the value it stands for."""
    from analyses.cli import build_parser

    sweep = make_sweep("reversal", "0", ["freeze-embeddings=on,OFF", "steps=3"])
    assert sweep.grid == {"freeze-embeddings": (True, False), "steps": (3,)}
    (tmp_path / "sweep.toml").write_text(sweep_toml(sweep))
    assert read_sweep_file(tmp_path / "sweep.toml") == sweep
    for trial in sweep.trials():
        parsed = build_parser().parse_args(trial.argv(sweep.experiment, tmp_path / trial.name, 1))
        assert (parsed.freeze_embeddings, parsed.steps) == (dict(trial.point)["freeze-embeddings"], 3)
    assert [t.name for t in sweep.trials()] == ["freeze-embeddings=on,steps=3,seed=0", "freeze-embeddings=off,steps=3,seed=0"]
    assert make_sweep("chain", "0", ["related=on"]).grid == {"related": (True,)}
    import numpy as np

    from analyses.sweep import format_sweep

    table = format_sweep({"command": "reproduce reversal", "config": {"seeds": [0], "grid": {"freeze-embeddings": [1, 0]}},
                          "n_finished": 2, "n_trials": 2, "headline": [], "failures": [],
                          "rows": [{"freeze-embeddings": np.bool_(on), "n_seeds": 1} for on in (True, False)]})
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["on", "off"]  # as the trials are named


@pytest.mark.parametrize("text, message", [
    ("experiment = \"reversal\"\nseeds = 3\n", "seeds = 3: give a list of integers"),  # was a TypeError
    ("experiment = \"reversal\"\nseeds = [0, \"1\"]\n", "seeds = [0, '1']: give a list of integers"),
    (b"experiment = \"r\xe9versal\"\n", "sweep.toml: not valid TOML ('utf-8' codec"),  # named, not a bare codec error
    ("experiment = \"reversal\"\ngpus_per_trial = 2\n", "gpus_per_trial = 2: give the GPUs each trial reserves, a "
                                                        "number from 0 to 1"),
    ("experiment = \"reversal\"\ngpus_per_trial = true\n", "gpus_per_trial = True: give the GPUs each trial"),
])
def test_a_bad_sweep_file_is_refused_naming_it(text, message, tmp_path):
    from analyses.sweep import SweepError

    path = tmp_path / "sweep.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SweepError, match=re.escape(message)):
        read_sweep_file(path)


def test_every_number_of_a_summary_is_aggregated_by_a_dotted_key():
    from analyses.sweep import headline, numbers

    summary = {"experiment": "positional", "config": {"steps": 80}, "seconds": 3.0, "curse_holds_for_all": True,
               "runs": [{"run": "absolute", "train_prob": 0.9}, {"run": "none", "train_prob": 0.8}],
               "control": {"heldout_reverse_accuracy": 0.25}}
    found = numbers(summary)
    assert found == {"curse_holds_for_all": 1.0, "runs.absolute.train_prob": 0.9, "runs.none.train_prob": 0.8,
                     "control.heldout_reverse_accuracy": 0.25}
    assert headline(list(found), EXPERIMENTS["positional"].headline) == ["runs.absolute.train_prob",
                                                                          "runs.none.train_prob"]


def test_timings_settings_and_where_a_peak_is_are_no_metrics_and_a_layer_keys_its_record_in_any_order():
    """A fine-tune's summary nests timings (tracing's seconds a statement), a copy of its settings (``lora``) and
    where each tracing peak is (``peak_layer``): averaged over seeds they were "metrics" (a mean peak layer of
    0.333, a layer no seed had). A record without a naming field was keyed by its index, its layer added only when
    the two differed, so the same layer came under two keys when seeds listed their records in other orders."""
    from analyses.sweep import numbers

    summary = {"lora": {"rank": 2, "trainable_parameters": 384},
               "tracing": {"seconds_per_statement": {"before": 0.4}, "statements": 4,
                           "after": {"train/forward": {"components": {"mlp_out": {"peak_layer": 1, "peak_effect": 0.3}}}}},
               "per_layer": [{"layer": 0, "z": 1.0}, {"layer": 1, "z": 5.0}]}
    found = numbers(summary)
    assert found == {"tracing.after.train/forward.components.mlp_out.peak_effect": 0.3,
                     "per_layer.layer=0.z": 1.0, "per_layer.layer=1.z": 5.0}
    assert numbers({"per_layer": summary["per_layer"][::-1]}) == {"per_layer.layer=0.z": 1.0, "per_layer.layer=1.z": 5.0}


def test_settings_and_counts_a_summary_repeats_are_no_metrics_at_any_depth():
    """Settings a summary repeats (steps, a run's k, a setting's layers and frozen embeddings, a chain size, a config
    nested in a record) and counts of what was asked had been averaged over seeds: columns of mean ± 0, and a yes/no
    setting given Wilson's interval as if it were a verdict."""
    from analyses.sweep import numbers

    found = numbers({"steps": 80, "n_train": 200, "n_candidates": 400, "train_prob": 0.9,
                     "settings": {"frozen": {"layers": 2, "freeze_embeddings": True, "train_prob": 0.5}},
                     "sizes": {"10": {"num_train": 10, "heldout_logprob": -4.0}},
                     "rows": [{"run": "baseline", "heldout_n": 60, "n_train_sequences": 140,
                               "heldout_accuracy": 0.0}],
                     "runs": [{"run": "k=2", "k": 2, "config": {"lr": 0.01}, "train_prob": 0.7}],
                     "groups": {"p2d": {"forward": {"n": 16, "after": {"margin": {"mean": 1.5, "n": 16}}}}}})
    assert found == {"train_prob": 0.9, "settings.frozen.train_prob": 0.5, "sizes.10.heldout_logprob": -4.0,
                     "rows.baseline.heldout_accuracy": 0.0, "runs.k=2.train_prob": 0.7,
                     "groups.p2d.forward.after.margin.mean": 1.5}


class InProcessRunners:
    """Runs a sweep's trials one after another in this process (:func:`analyses.sweep.run_trial`, what each Ray
    runner runs), or stops at the first as ^C would."""

    workers = 1

    def __init__(self, interrupt: bool = False) -> None:
        from analyses.sweep import aggregate

        self.interrupt, self.aggregate = interrupt, aggregate

    def run(self, jobs, running_dir):
        from analyses.sweep import run_trial

        for trial, argv, folder, resumable in jobs:
            if self.interrupt:
                raise KeyboardInterrupt
            yield trial, run_trial(argv, str(folder), str(running_dir), resumable)


def test_a_rerun_cut_short_keeps_the_records_of_the_trials_run_before(tmp_path):
    """A rerun removes the sweep's summary before its trials run, and the trials' records (seconds, host) lived only
    there: a rerun cut short lost the records of every trial run before, and the next rerun listed them bare. A
    trial run outside Ray records no node: asking Ray for one had connected this process to the cluster this
    machine started last, or started a local Ray (seconds), and left it connected."""
    import ray

    from analyses.sweep import run_sweep

    sweep = make_sweep("reversal", "0-1", ["model=one-layer", "pairs=30", "steps=2", "eval-every=2"])
    out = tmp_path / "sweep"
    first = {r["trial"]: r for r in run_sweep(sweep, out, runners=InProcessRunners(), log=lambda line: None)["trials"]}
    kept, removed = (trial.name for trial in sweep.trials())
    assert first[kept]["seconds"] > 0 and first[kept]["run_id"]
    assert first[kept]["node"] is None and not ray.is_initialized()
    for path in sorted((out / "trials" / removed).rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, runners=InProcessRunners(interrupt=True), log=lambda line: None)
    again = {r["trial"]: r for r in run_sweep(sweep, out, runners=InProcessRunners(), log=lambda line: None)["trials"]}
    assert again[kept] == {**first[kept], "status": "finished before"}
    assert again[removed]["status"] == "ran" and again[removed]["run_id"] != first[removed]["run_id"]


def _no_ray(*_, **__):
    raise AssertionError("Ray started: the sweep had trials to run")


@pytest.fixture
def saved_sweep(tmp_path, monkeypatch):
    """(sweep, folder, its sweep.toml's bytes) of a finished `--grid` sweep of one trial, run in this process; Ray is
    kept from starting after it (nothing of the saved sweep is left to run)."""
    from analyses import sweep as sweeps

    sweep, out = make_sweep("reversal", "0", TINY), tmp_path / "sweep"
    sweeps.run_sweep(sweep, out, runners=InProcessRunners(), log=lambda line: None)
    monkeypatch.setattr(sweeps, "ray_session", _no_ray)
    return sweep, out, (out / "sweep.toml").read_bytes()


def test_a_sweep_named_without_its_grid_reruns_the_sweep_its_folder_holds(saved_sweep, capsys):
    """`revlens sweep EXPERIMENT --out DIR` without --grid, into the folder of an earlier `--grid` sweep, replaced its
    sweep.toml by a sweep of seeds 0-4 and no grid (the trials kept, the aggregate rebuilt as the new sweep's): the
    folder came to describe another sweep, unsaid, and Ray ran five new trials. What is left out is the saved sweep's,
    as `revlens sweep --out DIR` reruns it: nothing left to run, the folder as it was."""
    sweep, out, saved = saved_sweep
    assert main(["sweep", "reversal", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "sweep reversal: 1 trials, 1 finished before, 0 to run" in capsys.readouterr().out
    assert (out / "sweep.toml").read_bytes() == saved
    grid = json.loads((out / "summary.json").read_text())["config"]["grid"]
    assert grid == {key: list(values) for key, values in sweep.grid.items()}


@pytest.mark.parametrize("given, named", [
    (["reversal", "--grid", "model=one-layer", "--grid", "pairs=20", "--grid", "steps=2"],
     "(its sweep.toml: grid eval-every 2, given not set);"),
    (["reversal", "--grid", "model=tiny", "--grid", "pairs=20", "--grid", "steps=2", "--grid", "eval-every=2"],
     "(its sweep.toml: grid model one-layer not given);"),
    (["reversal", *[item for pair in zip(["--grid"] * 5, [*TINY, "lr=0.001"]) for item in pair]],
     "(its sweep.toml: grid lr not set, given 0.001);"),
    (["reversal", "--grid", "pairs=20", "--grid", "model=one-layer", "--grid", "steps=2", "--grid", "eval-every=2"],
     "(its sweep.toml: grid keys in the order model, pairs, steps, eval-every, given pairs, model, steps, eval-every);"),
    (["chain"], "(its sweep.toml: experiment reversal, given chain);"),
])
def test_a_sweep_that_leaves_out_trials_of_its_folder_s_sweep_is_refused_naming_them(saved_sweep, given, named,
                                                                                   capsys):
    """A sweep folder describes every trial in it: another sweep given into it that leaves some of them out (a grid
    key or a value it does not run, a key the trials' folders do not name, the keys in another order, another
    experiment; only another experiment was refused before) rewrote its sweep.toml. It is refused, naming the folder
    and what it leaves out, before Ray starts or the folder is touched."""
    _, out, saved = saved_sweep
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["sweep", *given, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"revlens: error: {out}: holds another sweep, of which this one leaves out some trials {named}" in error
    assert "rerun that one" in error, error
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert (out / "sweep.toml").read_bytes() == saved


def test_a_sweep_that_extends_its_folder_s_sweep_reuses_its_trials(saved_sweep):
    """More seeds and more values of the saved sweep's keys extend it: its sweep.toml becomes the larger sweep's, its
    finished trial is reused and only the new ones run."""
    from analyses import sweep as sweeps

    sweep, out, _ = saved_sweep
    extended = make_sweep("reversal", "0-1", ["model=one-layer,tiny", *TINY[1:]])
    result = sweeps.run_sweep(extended, out, runners=InProcessRunners(), log=lambda line: None)
    status = {record["trial"]: record["status"] for record in result["trials"]}
    [reused] = sweep.trials()
    assert status.pop(reused.name) == "finished before" and set(status.values()) == {"ran"} and len(status) == 3
    assert read_sweep_file(out / "sweep.toml") == extended


def test_reproduce_all_across_fewer_seeds_is_refused_before_ray_starts(tmp_path, monkeypatch, capsys):
    """`reproduce all --seeds N` into an OUT whose sweeps ran more seeds rewrote each sweep.toml as it came to it, and
    the folder no longer described its trials of the seeds left out; each folder is checked first, and one holding a
    sweep of which this one leaves trials out is refused by name before Ray starts."""
    from analyses import sweep as sweeps

    sweeps.prepare(make_sweep("chain", "0-1", []), tmp_path / "all" / "chain")
    saved = (tmp_path / "all" / "chain" / "sweep.toml").read_bytes()
    monkeypatch.setattr(sweeps, "ray_session", _no_ray)
    assert main(["reproduce", "all", "--experiments", "chain", "--seeds", "1", "--workers", "1",
                 "--out", str(tmp_path / "all")]) == 2
    error = capsys.readouterr().err
    assert (f"{tmp_path / 'all' / 'chain'}: holds another sweep, of which this one leaves out some trials (its "
            "sweep.toml: seeds 1 not given)") in error
    assert (tmp_path / "all" / "chain" / "sweep.toml").read_bytes() == saved


class ElsewhereRunners(InProcessRunners):
    """Runs each trial from another current folder, as a Ray runner on another node does."""

    def __init__(self, elsewhere: Path) -> None:
        super().__init__()
        self.elsewhere, self.jobs = elsewhere, []

    def run(self, jobs, running_dir):
        from analyses.sweep import run_trial

        for trial, argv, folder, resumable in jobs:
            self.jobs.append((argv, folder, running_dir))
            here = os.getcwd()
            os.chdir(self.elsewhere)
            try:
                result = run_trial(argv, str(folder), str(running_dir), resumable)
            finally:
                os.chdir(here)
            yield trial, result


def test_a_sweep_with_a_relative_out_hands_its_trials_absolute_folders(tmp_path, monkeypatch):
    """`sweep --out sweep` gave the trials `sweep/trials/...` as typed, while the sweep read them back from its
    own folder: a trial on a node whose current folder is another wrote its run there, and was counted failed."""
    from analyses import sweep as sweeps

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    sweep = make_sweep("reversal", "0", ["pairs=20", "steps=2", "eval-every=2"])
    runners = ElsewhereRunners(elsewhere)
    (record,) = sweeps.run_sweep(sweep, Path("sweep"), runners=runners, log=lambda line: None)["trials"]
    assert record["status"] == "ran", record
    ((argv, folder, running_dir),) = runners.jobs
    assert Path(argv[argv.index("--out") + 1]).is_absolute() and folder.is_absolute() and running_dir.is_absolute()
    assert (tmp_path / "sweep" / "trials" / record["trial"] / "summary.json").is_file()
    assert not list(elsewhere.iterdir())


def test_a_summary_that_cannot_be_aggregated_is_named(tmp_path, monkeypatch):
    """Two records a label cannot tell apart were refused without naming the trial whose summary holds them."""
    from analyses import sweep as sweeps

    sweep = sweeps.Sweep("reversal", (0,), {})
    out = tmp_path / "sweep"
    sweeps.prepare(sweep, out)
    folder = out / "trials" / sweep.trials()[0].name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"start_end": [{"model": "tiny", "z_end": 1.0}] * 2}))
    monkeypatch.setattr(sweeps, "finished", lambda folder, config: True)
    with pytest.raises(ValueError, match=rf"{folder.name}/summary.json: two numbers of one summary under the key"):
        sweeps.aggregate(sweep, out)


def test_per_seed_records_are_kept_apart_and_a_seed_is_never_a_metric():
    """The identity bridge's summary lists one row per seed, model and variant: each keeps its own key (before,
    every seed's row was written under one key, so the last seed's replaced the others), and the seed labels the
    row instead of being averaged as a number."""
    from analyses.sweep import numbers

    rows = [{"seed": seed, "model": "one-layer", "variant": variant, "test": "held-out reverse",
             "heldout_accuracy": seed / 10 + (variant == "identity-bridge")}
            for seed in (0, 1) for variant in ("baseline", "identity-bridge")]
    found = numbers({"experiment": "identity-bridge", "rows": rows,
                     "by_model": {"one-layer": {"baseline": {"heldout_accuracy": {"mean": 0.05, "sd": 0.07}}}}})
    assert found == {"rows.one-layer/baseline/held-out reverse/seed=0.heldout_accuracy": 0.0,
                     "rows.one-layer/identity-bridge/held-out reverse/seed=0.heldout_accuracy": 1.0,
                     "rows.one-layer/baseline/held-out reverse/seed=1.heldout_accuracy": 0.1,
                     "rows.one-layer/identity-bridge/held-out reverse/seed=1.heldout_accuracy": 1.1,
                     "by_model.one-layer.baseline.heldout_accuracy.mean": 0.05,
                     "by_model.one-layer.baseline.heldout_accuracy.sd": 0.07}


def test_records_of_one_model_are_told_apart_by_circuit_role_and_layer_and_a_clash_is_refused():
    """Dynamics lists, per model, one record per circuit, role and layer: each keeps its own key (before, a model's
    18 records shared one key and the last, QK's "both" row, stood for the OV trained z); the layer labels the record
    and is no metric; two records a label cannot tell apart are refused, not one kept."""
    from analyses.sweep import numbers

    records = [{"model": model, "circuit": circuit, "layer": layer, "role": role, "n": 60,
                "z_end": 10 * layer + (circuit == "qk") + (role == "trained") / 10}
               for model in ("one-layer", "tiny") for circuit in ("ov", "qk") for layer in (0, 1)
               for role in ("trained", "held-out reverse")]
    found = numbers({"experiment": "dynamics", "start_end": records})
    assert len(found) == len(records)  # z_end of each record (n counts what was read: no metric)
    assert found["start_end.one-layer/ov/trained/layer=0.z_end"] == 0.1
    assert found["start_end.tiny/qk/held-out reverse/layer=1.z_end"] == 11
    assert not any(key.endswith(".layer") for key in found)
    with pytest.raises(ValueError, match=r"two numbers of one summary under the key 'start_end\.tiny/ov"):
        numbers({"start_end": [{"model": "tiny", "circuit": "ov", "z_end": 1.0}] * 2})


def test_trials_of_an_experiment_that_trains_several_seeds_never_share_one(tmp_path):
    """An identity-bridge run trains --n-seeds consecutive seeds from --seed; a sweep's trials of seeds 0 and 1 used to
    train 0-2 and 1-3, so seeds 1 and 2 ran twice and the aggregate counted each twice. Trial S now starts at S·n
    (here n = 2: seeds 0-1, then 2-3), and a sweep whose last trial would pass the largest seed is refused."""
    from analyses.experiments import MAX_SEED
    from analyses.sweep import Sweep

    sweep = Sweep("identity-bridge", (0, 1), {"steps": (2,), "n-seeds": (2,)})
    trained = []
    for trial in sweep.trials():
        assert main(trial.argv(sweep.experiment, tmp_path / trial.name, 1)) == 0
        rows = json.loads((tmp_path / trial.name / "summary.json").read_text())["rows"]
        trained.append({row["seed"] for row in rows})
    assert trained == [{0, 1}, {2, 3}]
    assert main(["sweep", "identity-bridge", "--seeds", f"0,{MAX_SEED // 3}", "--out", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


def test_a_sweep_none_of_whose_trials_finished_aggregates_to_zero_seeds_and_is_reported(tmp_path, capsys):
    """Every trial failed (no trial folder is a whole run): ``aggregate.csv`` still has its point, with n_seeds 0 (it
    was an empty file, which the report then refused to read, and a sweep folder inside ``reproduce all --seeds``'s
    OUT with it), and the report renders the sweep."""
    from analyses.sweep import Sweep, aggregate, format_sweep, prepare

    sweep = Sweep("reversal", (0, 1), {"lr": (1e30,)})
    out = tmp_path / "sweep"
    prepare(sweep, out)
    summary = aggregate(sweep, out, failures=[{"trial": t.name, "seed": t.seed, "lr": 1e30, "error": "NaN loss"}
                                              for t in sweep.trials()])
    table = pd.read_csv(out / "aggregate.csv")
    assert table.to_dict("records") == [{"lr": 1e30, "n_seeds": 0}] and summary["n_finished"] == 0
    assert "1e+30  0" in format_sweep(summary) and "FAILED lr=1e+30,seed=0: NaN loss" in format_sweep(summary)
    assert main(["report", "--runs", str(out), "--out", str(tmp_path / "report.html")]) == 0
    # a rerun cut short leaves none of the earlier run's outputs, its failures (which it runs again) among them
    (out / "failures.jsonl").write_text('{"trial": "lr=1e+30,seed=0", "error": "NaN loss"}\n')
    prepare(sweep, out)
    assert not [name for name in ("summary.json", "aggregate.csv", "sweep.png", "failures.jsonl") if (out / name).exists()]


def test_the_sweep_figure_draws_every_headline_metric(tmp_path, monkeypatch):
    """A mitigations sweep has 16 headline numbers by default (one per model and variant); the figure drew the
    first 8 (every one-layer row, no tiny one) under a caption that promises a panel per headline metric."""
    from analyses import figures
    from analyses.sweep import aggregate

    rows = [{"model": model, "variant": f"variant {v}", "test": "held-out reverse", "heldout_accuracy": v / 10}
            for model in ("one-layer", "tiny") for v in range(5)]
    sweep, _, out = one_finished_trial(tmp_path, "mitigations", [], "reproduce mitigations",
                                       {"experiment": "mitigations", "rows": rows})
    drawn, original = [], figures.sweep_figure
    monkeypatch.setattr(figures, "sweep_figure", lambda table, keys, metrics, **kwargs: drawn.append(metrics)
                        or original(table, keys, metrics, **kwargs))
    summary = aggregate(sweep, out.parent.parent)
    assert len(summary["headline"]) == 10 and drawn == [summary["headline"]]


def one_finished_trial(tmp_path, experiment: str, grid: list[str], kind: str, summary: dict, seeds: str = "0"):
    """(sweep, trial, folder) of a sweep of ``experiment`` over one seed and one grid point, whose trial folder
    holds a run written through the command's own run folder (as main() enters it)."""
    return finished_trial(tmp_path, make_sweep(experiment, seeds, grid), kind, summary)


def finished_trial(out: Path, sweep: Sweep, kind: str, summary: dict):
    """(sweep, trial, folder) of the one trial of ``sweep``, its folder ``out/trials/<name>`` holding a run written
    through the command's own run folder (as main() enters it), its ``summary.json`` being ``summary``."""
    from analyses.cli import _run_folder, build_parser

    [trial] = sweep.trials()
    folder = out / "trials" / trial.name
    args = build_parser().parse_args(trial.argv(sweep.experiment, folder, 1))
    args.argv = trial.argv(sweep.experiment, folder, 1)
    with _run_folder(args, folder, kind):
        (folder / "summary.json").write_text(json.dumps(summary))
    return sweep, trial, folder


def test_reproduce_all_across_seeds_keeps_a_finetuned_folder_whose_name_holds_a_comma(tmp_path, capsys):
    """`reproduce all --seeds N --finetuned DIR` handed the mitigations sweep `--grid finetuned=DIR`, whose values are
    split at commas: a folder named `ft,run` became two grid points, folders `ft` and `run` that do not exist, whose
    trials all failed. The folder is one value, whole: one grid point, whose trial (finished here, as a run of its own
    command line) reads that folder, so nothing is left to run."""
    from test_mitigations import _finetune_folder

    from analyses.sweep import prepare

    finetuned = _finetune_folder(tmp_path / "ft,run")
    out = tmp_path / "all"
    sweep = Sweep("mitigations", (0,), {"finetuned": (str(finetuned),)})
    prepare(sweep, out / "mitigations")
    _, trial, _ = finished_trial(out / "mitigations", sweep, "reproduce mitigations", {"experiment": "mitigations"})
    assert main(["reproduce", "all", "--experiments", "mitigations", "--seeds", "1", "--finetuned", str(finetuned),
                 "--workers", "1", "--out", str(out)]) == 0, capsys.readouterr().err
    assert "1 of 1 trials finished" in capsys.readouterr().out
    assert read_sweep_file(out / "mitigations" / "sweep.toml") == sweep
    assert [p.name for p in (out / "mitigations" / "trials").iterdir()] == [trial.name]


def test_a_trial_whose_facts_changed_since_it_ran_is_run_again(tmp_path):
    """A finished trial of ``finetune-facts --facts F`` is reused only while F hashes as it did when the trial ran:
    before, a rerun after F was rewritten kept (and aggregated) the trial trained on the old facts, since the
    command's manifest did not record F and ``finished`` compared the config (F's name) alone."""
    from analyses.sweep import expected_config, finished

    facts = tmp_path / "facts.csv"
    facts.write_text("subject,relation,object\nAnn,is,a pilot\nBob,is,a chef\n")
    sweep, trial, folder = one_finished_trial(tmp_path, "finetune-facts", [f"facts={facts}"], "finetune-facts",
                                              {"experiment": "finetune-facts", "margin": 1.0})
    assert finished(folder, expected_config(sweep.experiment, trial, folder))
    facts.write_text("subject,relation,object\nAnn,is,a dentist\nBob,is,a judge\n")
    assert not finished(folder, expected_config(sweep.experiment, trial, folder))


def test_a_trial_run_under_other_defaults_is_run_again(tmp_path, monkeypatch):
    """A finetune-facts option left out is None on the command line, so its manifest had recorded None whatever
    the default was: after the defaults changed (session 36: 30 people and 16 controls to 16 and 15), a rerun
    counted trials of the old defaults as finished and averaged them with new ones. The manifest records the
    FinetuneConfig the command line makes now; a trial of other defaults is run again, and a grid point revlens
    refuses (15 controls asked of 10 people) is never finished."""
    from dataclasses import asdict

    from analyses import finetune
    from analyses.runfolder import MANIFEST
    from analyses.sweep import expected_config, finished, make_sweep

    sweep, trial, folder = one_finished_trial(tmp_path, "finetune-facts", ["epochs=1"], "finetune-facts",
                                              {"experiment": "finetune-facts", "margin": 1.0})
    expected = expected_config(sweep.experiment, trial, folder)
    assert expected["settings"] == json.loads(json.dumps(asdict(finetune.FinetuneConfig(epochs=1))))
    assert expected["settings"]["people"] == 16 and expected["settings"]["n_controls"] == 15
    assert finished(folder, expected)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "config": {  # as written before: the options alone
        k: v for k, v in manifest["config"].items() if k != "settings"}}))
    assert not finished(folder, expected)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(finetune, "CONTROLS", 12)  # a later revlens with another default
    assert not finished(folder, expected_config(sweep.experiment, trial, folder))
    refused = make_sweep("finetune-facts", "0", ["people=10", "controls=15"])
    assert expected_config(refused.experiment, refused.trials()[0], folder) is None
    assert not finished(folder, None)


def test_a_reproduce_trial_run_under_other_dataclass_defaults_is_run_again(tmp_path, monkeypatch):
    """A reproduce experiment's settings that no option sets (the chain's 60 steps) live in its config dataclass,
    and the manifest recorded only the options: a later revlens training 30 steps would have counted a 60-step
    trial as finished and averaged the two. Every experiment's manifest records the settings its command line
    makes (``reproduce all`` too, each experiment's own), and the sweep compares them."""
    from dataclasses import asdict, dataclass

    from analyses import paper
    from analyses.cli import build_parser, recorded_config
    from analyses.experiments import REPRODUCE, recorded_settings
    from analyses.sweep import expected_config, finished

    sweep, trial, folder = one_finished_trial(tmp_path, "chain", ["triples=20"], "reproduce chain",
                                              {"experiment": "chain", "train_prob": 0.5})
    expected = expected_config(sweep.experiment, trial, folder)
    assert expected["settings"] == json.loads(json.dumps(asdict(paper.ChainConfig(n_triples=20))))
    assert finished(folder, expected)

    @dataclass(frozen=True)
    class ShorterChain(paper.ChainConfig):  # a later revlens with another default
        steps: int = 30

    monkeypatch.setattr(paper, "ChainConfig", ShorterChain)
    assert expected_config(sweep.experiment, trial, folder)["settings"]["steps"] == 30
    assert not finished(folder, expected_config(sweep.experiment, trial, folder))
    monkeypatch.undo()
    every = build_parser().parse_args(["reproduce", "all", "--out", str(tmp_path / "all"), "--seed", "4"])
    for name in REPRODUCE:
        own = build_parser().parse_args(["reproduce", name, "--out", str(tmp_path / name), "--seed", "4"])
        assert recorded_config(every, name)["settings"] == recorded_config(own)["settings"] == recorded_settings(
            EXPERIMENTS[name].settings(own)), name
    assert "settings" not in recorded_config(every)


def test_a_trial_whose_random_draws_were_made_otherwise_is_run_again_and_never_resumed(tmp_path):
    """When how a run's draws follow from its seed changed (here: epoch orders and tracing noise, in session 34),
    a trial of the same config written before counted as finished, and its old numbers were averaged with new
    ones; a --resume continued its checkpoints with the new batch orders. The manifest records the draws now."""
    from analyses.runfolder import MANIFEST, RunFolderError, run_folder
    from analyses.sweep import expected_config, finished

    sweep, trial, folder = one_finished_trial(tmp_path, "reversal", ["steps=2"], "reproduce reversal",
                                              {"experiment": "reversal", "train_prob": 0.5}, seeds="3")
    assert finished(folder, expected_config(sweep.experiment, trial, folder))
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "draws"}))  # as before
    assert not finished(folder, expected_config(sweep.experiment, trial, folder))
    with pytest.raises(RunFolderError, match="random draws follow from its seed otherwise"):
        with run_folder(folder, "reproduce reversal", resume=True):
            pass


def test_an_unfinished_trial_another_revlens_left_is_run_afresh_not_resumed(tmp_path):
    """A trial left unfinished (killed) under an earlier revlens whose random draws differ: resuming it is refused
    ("rerun without --resume"), and the sweep had resumed it on every rerun, so it failed forever. It runs afresh;
    one left by the same command line and draws is still resumed (the killed-worker test above)."""
    from analyses.runfolder import MANIFEST
    from analyses.sweep import expected_config, finished, run_trial

    sweep, trial, folder = one_finished_trial(tmp_path, "reversal", ["steps=2", "model=one-layer", "pairs=10"],
                                              "reproduce reversal", {"experiment": "reversal"}, seeds="0")
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "complete": False, "draws": 1}))
    result = run_trial(trial.argv(sweep.experiment, folder, 1), str(folder), str(tmp_path / "running"), True)
    assert result["exit_code"] == 0 and result["resumed"] is False, result["error"]
    assert finished(folder, expected_config(sweep.experiment, trial, folder))


def test_each_metric_is_counted_over_the_seeds_that_have_it():
    """``n_seeds`` counts a grid point's trials; a metric NaN in one of them (an undefined z, say) has its mean,
    sd and interval over the others, and ``.n`` says how many: 2 of 3 here, with t(1)'s interval."""
    from analyses.sweep import metric_statistics

    stats = metric_statistics("z_heldout", [0.5, float("nan"), 0.7])
    assert stats["z_heldout.n"] == 2 and stats["z_heldout.mean"] == pytest.approx(0.6)
    assert stats["z_heldout.sd"] == pytest.approx(0.1 * math.sqrt(2))
    half = t_quantile(0.975, 1) * 0.1 * math.sqrt(2) / math.sqrt(2)
    assert (stats["z_heldout.ci95_low"], stats["z_heldout.ci95_high"]) == (pytest.approx(0.6 - half),
                                                                           pytest.approx(0.6 + half))
    alone = metric_statistics("z_heldout", [float("nan"), 0.7, float("nan")])
    assert alone["z_heldout.n"] == 1 and alone["z_heldout.mean"] == 0.7 and math.isnan(alone["z_heldout.ci95_high"])
    assert list(stats) == ["z_heldout.n", "z_heldout.mean", "z_heldout.sd", "z_heldout.ci95_low",
                           "z_heldout.ci95_high"]
    from analyses.sweep import _interval  # the printed cell says over how many seeds, where fewer than the point's

    assert _interval({"n_seeds": 3, **stats}, "z_heldout") == f"0.6 ± {half:.2g} (n=2)"
    assert _interval({"n_seeds": 3, **alone}, "z_heldout") == "0.7 (n=1)"  # was a bare 0.7, as if exact
    none = metric_statistics("z_heldout", [float("nan")] * 3)
    assert _interval({"n_seeds": 3, **none}, "z_heldout") == "n/a"  # was nan
    assert "(n=" not in _interval({"n_seeds": 2, **metric_statistics("z", [0.5, 0.7])}, "z")


def test_reproduce_all_runs_experiments_at_once_on_ray_and_across_seeds(tmp_path):
    """`reproduce all` with two experiments at once on Ray writes the numbers one process writes;
    `--seeds 2` runs each as a sweep and prints every headline number as mean ± interval, the mean
    being the mean of the two seeds' own runs (on one Ray runner here: the runs at once are checked
    above, and a runner's start is ~6 CPU s of imports)."""
    from analyses.sweep import numbers

    at_once = revlens("reproduce", "all", "--experiments", "chain", "embeddings", "--workers", "2",
                      "--out", str(tmp_path / "at-once")).stdout
    assert "(2 at once)" in at_once and "=== chain" in at_once and "=== embeddings" in at_once
    assert main(["reproduce", "chain", "--out", str(tmp_path / "alone"), "--quiet", "--threads", "1"]) == 0
    read = lambda folder: numbers(json.loads((folder / "summary.json").read_text()))  # noqa: E731
    assert read(tmp_path / "at-once" / "chain") == read(tmp_path / "alone")

    seeds = revlens("reproduce", "all", "--experiments", "chain", "--seeds", "2", "--workers", "1",
                    "--out", str(tmp_path / "seeds")).stdout
    assert "=== chain" in seeds and "2 of 2 trials finished" in seeds and " ± " in seeds
    aggregate = pd.read_csv(tmp_path / "seeds" / "chain" / "aggregate.csv")
    trials = [read(tmp_path / "seeds" / "chain" / "trials" / f"seed={s}") for s in (0, 1)]
    assert aggregate.n_seeds.tolist() == [2] and trials[0] == read(tmp_path / "alone")
    assert aggregate["heldout_logprob.mean"].item() == pytest.approx(
        (trials[0]["heldout_logprob"] + trials[1]["heldout_logprob"]) / 2, rel=1e-12)


@pytest.fixture(scope="module")
def local_session():
    """One local Ray session of one runner opened by ``ray_session``, with none of the sweep's
    variables in this process's environment: what it started (command lines, the raylet's
    environment), its runner's and this process's CPU priority and this process's environment while
    it ran; and, once it closed, whether Ray's own start-up is as it was. (One session for the two
    tests below: each Ray start and runner import is ~10 s.)"""
    from contextlib import suppress

    import psutil
    import ray
    from ray._private.node import Node

    from analyses.sweep import MEMORY_MONITOR, PRELOAD, PRESTART, Resources, ray_session

    ray.shutdown()  # a session an earlier test left open would be reused, not started
    create, api_server = Node.__init__, Node.start_api_server
    seen: dict = {"started": [], "raylets": []}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in (MEMORY_MONITOR, PRELOAD, PRESTART, "PYTHONPATH"):
            monkeypatch.delenv(name, raising=False)
        earlier = {p.pid for p in psutil.Process().children(recursive=True)}
        with ray_session(Resources(workers=1)) as runners:
            runner = ray.get(runners.actors[0].__ray_call__.remote(lambda _: os.getpid()), timeout=120)
            seen["nice"] = (psutil.Process(runner).nice(), psutil.Process().nice())
            for child in psutil.Process().children(recursive=True):
                with suppress(psutil.Error):  # a short-lived child gone meanwhile
                    if child.pid not in earlier:
                        seen["started"].append(" ".join(child.cmdline()))
                        seen["raylets"] += [child.environ()] if child.name() == "raylet" else []
            seen["environment"] = dict(os.environ)
    seen["restored"] = (Node.__init__, Node.start_api_server) == (create, api_server)
    return seen


def test_local_ray_runs_without_its_memory_monitor_and_leaves_the_environment_alone(local_session):
    """Ray's memory monitor kills trials when the machine's memory is full of other programs' pages;
    a local session's raylet starts with it off and with the workers' environment (this checkout
    first on the path, one thread, the toolkit preloaded, the workers started with the raylet), and
    this process's environment is as it was."""
    from analyses.sweep import MEMORY_MONITOR, PRELOAD, PRESTART, WARM_MODULES

    raylets, environment = local_session["raylets"], local_session["environment"]
    assert len(raylets) == 1 and raylets[0].get(MEMORY_MONITOR) == "0"
    assert raylets[0].get("PYTHONPATH") == str(ROOT) and raylets[0]["OMP_NUM_THREADS"] == "1"
    assert raylets[0].get(PRELOAD) == ",".join(WARM_MODULES) and raylets[0].get(PRESTART) == "1"
    assert not {MEMORY_MONITOR, PRELOAD, PRESTART, "PYTHONPATH"} & set(environment)


def test_local_ray_starts_without_its_api_server_and_monitors(local_session):
    """A local session's Ray runs no API server (``dashboard.py``), autoscaler monitor or log
    monitor (:func:`analyses.sweep._lean_local_head`), runs its runners all the same and at this
    process's CPU priority, and leaves Ray's own start-up as it was for the next ``ray.init``."""
    runner, here = local_session["nice"]
    assert runner == here  # not Ray's default, 15 lower
    started = local_session["started"]
    assert any("raylet" in line for line in started)
    for daemon in ("dashboard/dashboard.py", "autoscaler/_private/monitor.py", "_private/log_monitor.py"):
        assert not any(daemon in line for line in started), daemon
    assert local_session["restored"]


def test_each_sweep_panel_draws_its_own_chance_and_names_the_varying_key():
    """A nested rate (a fine-tune's ``groups.p2d.reverse.after.top1``) is drawn against the chance beside it, not
    none (top-1 rates had no chance line) nor the summary's top-level one; the x axis names the grid key."""
    import pandas as pd

    from analyses.figures import _chance_column, sweep_figure

    table = pd.DataFrame({"lr": [0.1, 0.1, 0.2, 0.2], "g.top1": [0.5, 0.7, 0.2, 0.4], "g.chance_top1": [1 / 3] * 4,
                          "chance_top1": [0.1] * 4, "heldout_logprob": [-3.0, -2.0, -4.0, -5.0],
                          "chance_logprob": [-5.99] * 4, "train_prob": [0.9, 0.8, 0.7, 0.6]})
    assert _chance_column("g.top1", table) == "g.chance_top1"
    assert _chance_column("heldout_logprob", table) == "chance_logprob"
    assert _chance_column("train_prob", table) is None and _chance_column("g.chance_top1", table) is None
    figure = sweep_figure(table, ["lr"], ["g.top1", "heldout_logprob"])
    top1 = figure.axes[0]
    chance_levels = {round(segment[0][1], 4) for collection in top1.collections if hasattr(collection, "get_segments")
                     for segment in collection.get_segments() if segment[0][1] == segment[1][1]}
    assert round(1 / 3, 4) in chance_levels and 0.1 not in chance_levels
    assert top1.get_xlabel() == "lr" and [t.get_text() for t in top1.get_xticklabels()] == ["0.1", "0.2"]
    # the grid's other point finished no trial: its one point is named, not called "all" (pooled over the grid)
    alone = sweep_figure(table[table.lr == 0.1], ["lr"], ["train_prob"], varying=["lr"]).axes[0]
    assert alone.get_xlabel() == "lr" and [t.get_text() for t in alone.get_xticklabels()] == ["0.1"]


def test_a_probability_s_interval_across_seeds_stays_within_0_and_1():
    """``train_prob`` 0.99, 1.0 and 0.9 over three seeds: Student's t reached 1.007; a probability's, an accuracy's
    and a rate's interval is cut to [0, 1], tracing's effect (a difference of two) to [−1, 1], and a log p or a
    margin is unbounded."""
    from analyses.sweep import metric_range, metric_statistics

    stats = metric_statistics("final.tiny.train_prob", [0.99, 1.0, 0.9])
    assert stats["final.tiny.train_prob.ci95_high"] == 1.0 and stats["final.tiny.train_prob.ci95_low"] < 0.96
    unbounded = metric_statistics("heldout_logprob", [0.99, 1.0, 0.9])
    assert unbounded["heldout_logprob.ci95_high"] > 1.0
    for metric in ("heldout_accuracy", "directions.child_to_parent.top1_rate", "logprob_win_rate.rate",
                   "groups.p2d.reverse.after.top1", "multiple_choice.groups.both.reverse.p_debiased",
                   "train_accuracy_by_link.x→y", "by_model.tiny.baseline.heldout_accuracy.mean",
                   "tracing.after.train/forward.components.mlp_out.max_restored_prob",
                   "berglund_files.d2p_prompts_test.jsonl.after.exact_match"):
        assert metric_range(metric) == (0.0, 1.0), metric
    assert metric_range("tracing.after.train/forward.components.mlp_out.peak_effect") == (-1.0, 1.0)
    for metric in ("heldout_reverse_logprob", "by_model.tiny.baseline.heldout_accuracy.sd", "margin.mean",
                   "directions.child_to_parent.mean_rank", "logprob_win_rate.n"):
        assert metric_range(metric) == (-math.inf, math.inf), metric
    with pytest.raises(ValueError, match="'sample_rate' reads as lying in \\[0, 1\\].*16000"):
        metric_statistics("sample_rate", [16000.0, 16000.0])


def test_a_verdict_across_seeds_is_a_share_with_wilsons_interval():
    """A summary's yes/no (``findings.reverse_not_learnt``, ``curse_holds_for_all``) stays a bool in ``numbers``, and
    across seeds its mean is the share saying yes with Wilson's interval: 3 yes of 3 is [0.44, 1], where Student's
    t of 1, 1, 1 was [1, 1], as if three seeds made the verdict certain. A number that is 1.0 in every seed keeps
    its t interval."""
    from analyses.sweep import _interval, metric_statistics, numbers

    found = numbers({"findings": {"reverse_not_learnt": True, "forward_learnt": False}, "accuracy": 1.0})
    assert found == {"findings.reverse_not_learnt": True, "findings.forward_learnt": False, "accuracy": 1.0}
    assert isinstance(found["findings.reverse_not_learnt"], bool)
    stats = metric_statistics("v", [True, True, True])
    assert stats["v.mean"] == 1.0 and stats["v.ci95_low"] == pytest.approx(0.4385, abs=1e-4)
    assert stats["v.ci95_high"] == 1.0 and stats["v.sd"] == 0.0
    assert _interval({"n_seeds": 3, **stats}, "v") == "1 [0.44, 1]"
    mixed = metric_statistics("v", [True, None, False])
    assert mixed["v.n"] == 2 and mixed["v.mean"] == 0.5 and 0 < mixed["v.ci95_low"] < 0.5 < mixed["v.ci95_high"] < 1
    same = metric_statistics("a", [1.0, 1.0, 1.0])
    assert (same["a.ci95_low"], same["a.ci95_high"]) == (1.0, 1.0)


class RecordingRunners:
    """Ray's runners as `reproduce all` sees them, recording each job's command line and failing it (nothing runs)."""

    workers = 1

    def __init__(self) -> None:
        self.argvs = []

    def run(self, jobs, running_dir):
        for job, argv, folder, resumable in jobs:
            self.argvs.append(argv)
            yield job, {"exit_code": 1, "error": ["not run"]}

    def aggregate(self, *args, **kwargs):
        from analyses.sweep import aggregate

        return aggregate(*args, **kwargs)


@pytest.mark.parametrize("seeds", [[], ["--seeds", "1"]])
def test_reproduce_all_hands_its_runners_the_finetuned_folder_as_an_absolute_path(tmp_path, monkeypatch, seeds):
    """`reproduce all --finetuned ft` handed the runners `--finetuned ft` as typed: a runner whose current folder is
    another (a Ray worker on another node) read another folder or none. Every runner gets the folder's absolute path,
    with --seeds (a sweep's grid value) and without."""
    from test_mitigations import _finetune_folder

    from analyses import sweep as sweeps

    _finetune_folder(tmp_path / "ft")
    monkeypatch.chdir(tmp_path)
    runners = RecordingRunners()
    monkeypatch.setattr(sweeps, "ray_session", lambda resources: contextlib.nullcontext(runners))
    assert main(["reproduce", "all", "--experiments", "mitigations", "chain", "--workers", "2", *seeds,
                 "--finetuned", "ft", "--out", "all"]) == 2
    [given] = [(argv[i + 1] if item == "--finetuned" else item.removeprefix("--finetuned="))
               for argv in runners.argvs for i, item in enumerate(argv) if item.startswith("--finetuned")]
    assert Path(given) == tmp_path / "ft", runners.argvs


def test_a_cpu_sweep_given_gpus_is_told_why_its_trials_are_left_out(tmp_path):
    """A CPU sweep rerun with --gpus-per-trial gains device=cuda in its grid (with_resources), so none of its trials
    is one of the new sweep's: the refusal says that is why, not only that a key was added."""
    from analyses.sweep import Resources, SweepError, check_folder, prepare, with_resources

    sweep = make_sweep("reversal", "0", TINY)
    prepare(sweep, tmp_path / "sweep")
    on_gpus = with_resources(make_sweep("reversal", "0-9", TINY), Resources(gpus=1.0))
    with pytest.raises(SweepError, match=r"grid device not set, given cuda \(--gpus-per-trial runs every trial on "
                                         r"cuda, a grid key of its own, which renames every trial's folder\)"):
        check_folder(on_gpus, tmp_path / "sweep")


def test_every_experiment_s_settings_and_summary_are_made_without_transformer_lens():
    """A sweep's driver makes each trial's settings (what its manifest must record) and ``reproduce all``'s prints
    each summary; neither runs a model, so neither imports TransformerLens and transformers (~4.5 CPU s in a fresh
    process, beside the runners importing them for the trials): each experiment's module imports its probes where
    they run."""
    script = """
import json, sys
from analyses.cli import build_parser, recorded_config
from analyses.experiments import EXPERIMENTS
made = {}
for name, experiment in EXPERIMENTS.items():
    args = build_parser().parse_args([*experiment.command, "--out", "out"])
    made[name] = (bool(recorded_config(args)["settings"]), callable(getattr(experiment.formatter_module(),
                                                                            experiment.formatter.split(":")[1])))
print(json.dumps({"made": made, "imported": sorted(m for m in ("transformer_lens", "transformers") if m in sys.modules)}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["made"] == {name: [True, True] for name in EXPERIMENTS}
    assert report["imported"] == []


def test_work_done_meanwhile_runs_beside_the_caller_and_its_errors_stay_silent(capfd):
    """:func:`analyses.sweep.meanwhile` (a sweep's driver imports its experiment's module while its Ray runners work)
    runs its work in another thread and returns at once; an error there is dropped, not printed: whoever needs the
    result makes it again and meets the error itself."""
    import threading

    from analyses.sweep import meanwhile

    release, seen = threading.Event(), []

    def work() -> None:
        seen.append(threading.current_thread() is not threading.main_thread())
        release.wait(10)
        raise ModuleNotFoundError("No module named 'elsewhere'")

    meanwhile(work)  # returns while the work waits
    assert [t for t in threading.enumerate() if t.name == "revlens-meanwhile" and t.is_alive()]
    release.set()
    for thread in [t for t in threading.enumerate() if t.name == "revlens-meanwhile"]:
        thread.join(10)
    assert seen == [True]
    assert capfd.readouterr().err == ""


def test_a_rerun_starts_ray_before_it_checks_the_trials_that_ran_and_opens_it_for_a_stale_one(tmp_path, monkeypatch):
    """Checking that a trial's folder holds this sweep's run makes the trial's config, which imports the experiment's
    module (seconds): a rerun with a trial surely left to run (its folder holds no summary) opens its Ray session
    first, one runner per such trial, so that the import overlaps the runners' own. Where every folder holds a
    summary, Ray opens only if a check finds a run that is not this sweep's (here its random draws were made
    otherwise), with a runner for it."""
    from analyses import sweep as sweeps
    from analyses.runfolder import MANIFEST

    sweep, out = make_sweep("reversal", "0-2", TINY), tmp_path / "sweep"
    sweeps.run_sweep(sweep, out, runners=InProcessRunners(), log=lambda line: None)
    first, second, third = (out / "trials" / trial.name for trial in sweep.trials())
    events = []

    @contextlib.contextmanager
    def session(resources, jobs=None):
        events.append(("Ray", jobs))
        yield InProcessRunners()

    def config(experiment, trial, folder):
        events.append(("config", trial.name))
        return expected(experiment, trial, folder)

    expected = sweeps.expected_config
    monkeypatch.setattr(sweeps, "ray_session", session)
    monkeypatch.setattr(sweeps, "expected_config", config)
    for path in sorted(third.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    manifest = json.loads((second / MANIFEST).read_text())
    (second / MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "draws"}))
    result = sweeps.run_sweep(sweep, out, log=lambda line: None)
    assert events[:3] == [("Ray", 1), ("config", first.name), ("config", second.name)]
    status = lambda result: {r["trial"]: r["status"] for r in result["trials"]}  # noqa: E731
    assert status(result) == {first.name: "finished before", second.name: "ran", third.name: "ran"}

    events.clear()
    (second / MANIFEST).write_text(json.dumps({k: v for k, v in json.loads((second / MANIFEST).read_text()).items()
                                               if k != "draws"}))
    result = sweeps.run_sweep(sweep, out, log=lambda line: None)
    assert events[:4] == [("config", first.name), ("config", second.name), ("config", third.name), ("Ray", 1)]
    assert status(result) == {first.name: "finished before", second.name: "ran", third.name: "finished before"}
