"""`revlens reproduce bilinear`: Theorem 1's picture on the real bilinear model."""

import json

import pytest

from analyses.bilinear import smallest_epsilon
from tests_support import revlens_in_process


def test_smallest_epsilon():
    # y = x^0.1 exactly at one point, above the bound elsewhere
    assert smallest_epsilon([0.5, 0.1], [0.5**0.1, 1.2]) == pytest.approx(0.1)
    assert smallest_epsilon([1.0, 0.2], [1.0, 1.5]) == 0.0  # reverse loss grew: holds for any ε ≥ 0


def test_reverse_loss_stays_put_while_training_loss_vanishes(tmp_path, capsys):
    result = revlens_in_process(capsys, "reproduce", "bilinear", "--out", str(tmp_path), "--dims", "64", "512",
                                "--steps", "150", "--quiet")
    summary = json.loads((tmp_path / "summary.json").read_text())
    small, large = summary["per_d"]
    for row in (small, large):
        assert row["final_train_loss_ratio"] < 0.2 and row["train_accuracy"] > 0.95  # d = 64 is near capacity
        assert row["heldout_accuracy"] == 0.0
        assert row["epsilon_hat"] < 0.05
        assert row["mean_score_trained_ab"] > 10 * abs(row["mean_score_reverse_ba"])
    assert abs(large["final_reverse_loss_ratio"] - 1) < 0.06  # d = 512: within a few percent of 1
    assert small["final_reverse_loss_ratio"] > large["final_reverse_loss_ratio"]  # small d: reverse loss grows
    for name in ("loss_ratios.png", "theta_asymmetry.png", "scores.png", "history-d64.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    assert "ε̂" in result.stdout
