"""`revlens reproduce identity-bridge` (analyses.identity_bridge) on real one-layer HookedTransformers."""

import json

import pandas as pd
import pytest

from analyses.identity_bridge import IdentityBridgeConfig, format_identity_bridge, reproduce_identity_bridge
from analyses.reproduce import ReversalConfig

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bridge_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity-bridge")
    config = IdentityBridgeConfig(models=("one-layer",), seeds=2,
                                  run=ReversalConfig(n_pairs=100, steps=60, eval_every=60))
    return out, reproduce_identity_bridge(out, config, progress=False)


def test_the_bridge_lets_every_seed_answer_the_held_out_reverse_through_y_b_a(bridge_run):
    _, summary = bridge_run
    rows = pd.DataFrame(summary["rows"])
    assert sorted(rows.seed.unique()) == [0, 1] and set(rows.variant) == {"baseline", "identity-bridge"}
    for _, seed in rows.groupby("seed"):
        plain, bridge = (seed[seed.variant == v].iloc[0] for v in ("baseline", "identity-bridge"))
        assert plain.heldout_n == bridge.heldout_n == 30  # the same held-out statements asked of both
        assert plain.train_accuracy == bridge.train_accuracy == 1.0
        assert plain.heldout_accuracy == 0.0 and bridge.heldout_accuracy > 0.3
        assert bridge.heldout_margin > plain.heldout_margin + 3
        assert abs(plain.z_heldout) < 0.5 and bridge.z_heldout > 1  # Y[B,A] flat without, grown with
    means = summary["by_model"]["one-layer"]
    assert means["identity-bridge"]["heldout_accuracy"]["mean"] == pytest.approx(
        rows[rows.variant == "identity-bridge"].heldout_accuracy.mean())


def test_identity_bridge_writes_table_figure_caption_and_summary(bridge_run):
    out, summary = bridge_run
    assert len(pd.read_csv(out / "identity_bridge.csv")) == 4
    assert (out / "identity_bridge.png").read_bytes()[:8] == PNG
    written = json.loads((out / "summary.json").read_text())
    assert written["experiment"] == "identity-bridge" and "identity_bridge.png" in written["captions"]
    assert (out / "one-layer" / "identity-bridge" / "seed-1" / "facts.jsonl").stat().st_size > 0
    assert "IDENTITY BRIDGE BREAKS THE CURSE for one-layer" in format_identity_bridge(summary)


def test_one_seed_has_no_sd_and_the_screen_says_so(bridge_run):
    """The sd of one seed is undefined: NaN in the summary (it read 0.0, "± 0.000", as if the seeds agreed),
    "± n/a" on the screen; two seeds give the sample sd."""
    import math
    import statistics

    from analyses.identity_bridge import aggregate

    _, summary = bridge_run
    one_seed = [row for row in summary["rows"] if row["seed"] == 0]
    by_model = aggregate(one_seed)
    bridge = by_model["one-layer"]["identity-bridge"]["heldout_accuracy"]
    assert bridge["mean"] == next(r["heldout_accuracy"] for r in one_seed if r["variant"] == "identity-bridge")
    assert all(math.isnan(metric["sd"]) for variant in by_model["one-layer"].values() for metric in variant.values())
    both = [r["heldout_accuracy"] for r in summary["rows"] if r["variant"] == "identity-bridge"]
    assert summary["by_model"]["one-layer"]["identity-bridge"]["heldout_accuracy"]["sd"] == pytest.approx(
        statistics.stdev(both))
    text = format_identity_bridge({**summary, "by_model": by_model, "config": {**summary["config"], "seeds": 1}})
    line = next(line for line in text.splitlines() if line.startswith("  one-layer  identity-bridge"))
    assert line.count("± n/a") == 4 and f"{bridge['mean']:.3f} ± n/a" in line
    assert "nan" not in text and "± 0.0" not in text


def test_the_verdict_tests_each_variant_against_chance():
    """Over 180 held-out statements at a chance of 1/400: 2 right answers with the bridge are what chance gives
    (P(X ≥ 2) = 0.076), 5 are not; one right baseline answer is chance too, 3 are not. Ten times chance (2.5%)
    had called 5 of 180 a broken curse and one lucky baseline answer (0.56% > 2 × chance) an answering baseline."""
    from analyses.identity_bridge import bridge_breaks_the_curse

    def variants(bridge: int, baseline: int) -> dict:
        return {"identity-bridge": {"heldout_accuracy": {"mean": bridge / 180}},
                "baseline": {"heldout_accuracy": {"mean": baseline / 180}}}

    assert bridge_breaks_the_curse(variants(117, 0), 180, 1 / 400)  # 0.65, as measured on the one-layer model
    assert bridge_breaks_the_curse(variants(5, 1), 180, 1 / 400)
    assert not bridge_breaks_the_curse(variants(2, 0), 180, 1 / 400)
    assert not bridge_breaks_the_curse(variants(117, 3), 180, 1 / 400)
