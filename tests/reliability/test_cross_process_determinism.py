"""The same seed gives the same fact world, training history, checkpoints and probe tables in two
fresh processes (:mod:`cli_processes`: process A and process B run `revlens reproduce reversal`
with the same arguments; B also probes A's checkpoint, A probed it too). Files are compared
byte for byte, figures included; only summary.json's wall time ("seconds") and the paths a
summary names are dropped.

Where torch cannot promise this (see ``TrainConfig`` and the README): other devices (CUDA
kernels), other torch / BLAS builds, or a different number of CPU threads may change the last
bits of the floats.
"""

from __future__ import annotations

import pytest

from cli_processes import offline_session, second_session, tree, without

pytestmark = pytest.mark.xdist_group("cli-processes")  # one offline_session per run, shared with the other file

WALL_TIME = {"seconds"}
PATHS = {"model", "facts"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return offline_session(base).out, second_session(base).out


def assert_same(first: dict[str, bytes], second: dict[str, bytes], drop: set[str]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        if name == "summary.json":
            assert without(first[name], drop) == without(second[name], drop)
        else:
            assert first[name] == second[name], f"{name} differs between the two processes"


def test_same_seed_same_world_history_checkpoints_and_tables(runs):
    first, second = (tree(run / "reversal") for run in runs)
    assert {"facts.jsonl", "history.jsonl", "logits.csv", "summary.json", "curves.png", "heatmap.png",
            "checkpoints/step-000006.json", "checkpoints/step-000006.safetensors"} <= first.keys()
    assert_same(first, second, WALL_TIME)


def test_probing_one_checkpoint_twice_gives_the_same_tables(runs):
    first, second = runs
    assert_same(tree(first / "probe"), tree(second / "probe-of-first"), set())
    assert_same(tree(first / "probe"), tree(second / "probe"), PATHS)
