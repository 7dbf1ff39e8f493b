"""`revlens reproduce identity-bridge` (analyses.identity_bridge) on real one-layer HookedTransformers."""

import json
import math

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
    assert written["chance_accuracy"] == pytest.approx(1 / 100)  # a held-out answer's kind: 100 subjects or objects
    assert written["chance_logprob"] == pytest.approx(-math.log(100))


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


def _rows(bridge: list[int], baseline: list[int], n: int = 60) -> list[dict]:
    """Summary rows of one model: per seed, the held-out reverse answered right ``bridge[s]`` / ``baseline[s]`` times
    of ``n``."""
    return [{"model": "one-layer", "seed": seed, "variant": variant, "heldout_accuracy": right / n, "heldout_n": n}
            for seed, (with_bridge, without) in enumerate(zip(bridge, baseline))
            for variant, right in (("baseline", without), ("identity-bridge", with_bridge))]


def test_the_verdict_tests_each_seed_of_each_variant_against_chance():
    """Each seed by its own exact binomial test over its 60 statements at a chance of 1/200 (the answer's kind):
    1 right is what chance gives (P(X ≥ 1) = 0.26), 2 are not (0.036). The bridge must be above chance in every seed
    and the baseline in none."""
    from analyses.identity_bridge import bridge_breaks_the_curse

    chance = 1 / 200
    assert bridge_breaks_the_curse(_rows([39, 40, 38], [0, 0, 0]), chance)  # 0.65, as measured on the one-layer model
    assert bridge_breaks_the_curse(_rows([2, 3, 2], [1, 0, 1]), chance)
    assert not bridge_breaks_the_curse(_rows([39, 40, 1], [0, 0, 0]), chance)  # one seed at chance
    assert not bridge_breaks_the_curse(_rows([39, 40, 38], [0, 2, 0]), chance)  # one baseline seed answers
    assert not bridge_breaks_the_curse([], chance)


def test_one_lucky_seed_does_not_break_the_curse_for_the_model():
    """Bridge seeds at 6/60, 0 and 0 had been pooled into one count, 6 of 180 (their mean accuracy times every
    statement), above chance by one binomial test: "IDENTITY BRIDGE BREAKS THE CURSE". Two of the three seeds are at
    chance, so the verdict is not given, and the screen says what it asks."""
    from analyses.identity_bridge import aggregate, format_identity_bridge

    rows = [{**row, "heldout_margin": 0.0, "heldout_logprob": -9.0, "z_heldout": 0.0, "z_trained": 2.0,
             "train_accuracy": 1.0} for row in _rows([6, 0, 0], [0, 0, 0])]
    summary = {"config": {"run": {"seed": 0, "n_pairs": 200, "steps": 80}, "seeds": 3},
               "n_heldout_reverse": 60, "n_bridge_statements": 400, "chance_accuracy": 1 / 200,
               "chance_logprob": -5.3, "by_model": aggregate(rows), "rows": rows, "source": "source", "seconds": 1.0}
    text = format_identity_bridge(summary)
    assert "IDENTITY BRIDGE BREAKS THE CURSE" not in text and "the bridge did not break the curse here" in text
    assert "in every seed with the bridge and in none without" in text
    fixed = [{**row, "heldout_accuracy": 0.5} if row["variant"] == "identity-bridge" else row for row in rows]
    assert "IDENTITY BRIDGE BREAKS THE CURSE for one-layer" in format_identity_bridge(
        {**summary, "rows": fixed, "by_model": aggregate(fixed)})
