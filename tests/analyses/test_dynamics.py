"""Training dynamics of the effective weights (analyses.dynamics) on real HookedTransformers."""

import json

import pandas as pd
import pytest

from analyses.dynamics import DynamicsConfig, format_dynamics, reproduce_dynamics, role_stats
from analyses.reproduce import ReversalConfig
from probes.circuits import circuit_table, directed_entries

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ov_table(trained_one_layer, world, vocab):
    return circuit_table(trained_one_layer, world, vocab.entity_ids, kinds=("ov",))


def test_directed_entries_orient_each_direction_with_its_split(ov_table, world):
    long = directed_entries(ov_table)
    assert len(long) == 2 * len(ov_table)  # every reversal fact has both directions in play
    index = next(i for i, f in enumerate(world) if f.forward == "train" and f.reverse == "heldout")
    rows = long[(long.fact == index) & (long["head"] == 0)].set_index("direction")
    source = ov_table[(ov_table.fact == index) & (ov_table["head"] == 0)].iloc[0]
    assert (rows.loc["forward", "split"], rows.loc["forward", "partner_split"]) == ("train", "heldout")
    assert (rows.loc["reverse", "split"], rows.loc["reverse", "partner_split"]) == ("heldout", "train")
    assert rows.loc["forward", "entry"] == source.entry_ab and rows.loc["reverse", "z"] == source.z_ba


def test_role_stats_match_the_circuit_table_read_by_hand(ov_table, world):
    stats = role_stats(ov_table)
    head = stats[stats["head"].notna()].set_index(["head", "role"])
    one_way = ov_table[(ov_table.group == "one-way") & (ov_table["head"] == 2)]
    forward_trained = one_way.forward == "train"
    trained_z = one_way.z_ab.where(forward_trained, one_way.z_ba)
    heldout_entry = one_way.entry_ba.where(forward_trained, one_way.entry_ab)
    assert head.loc[(2, "trained"), "z_mean"] == pytest.approx(trained_z.mean())
    assert head.loc[(2, "trained"), "z_std"] == pytest.approx(trained_z.std())
    assert head.loc[(2, "held-out reverse"), "entry_mean"] == pytest.approx(heldout_entry.mean(), abs=1e-7)
    counts = stats[stats["head"].isna()].set_index("role").n
    assert counts.to_dict() == {"trained": 60, "held-out reverse": 60, "both": 280}
    layer = stats[stats["head"].isna()].set_index("role")
    heads = stats[stats["head"].notna()].groupby("role").z_mean.mean()
    assert layer.loc["trained", "z_mean"] == pytest.approx(heads["trained"])  # equal-size heads: mean of means
    assert layer.loc["trained", "z_mean"] > 2.5 > 0.5 > abs(layer.loc["held-out reverse", "z_mean"])


@pytest.fixture(scope="module")
def dynamics_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamics")
    config = DynamicsConfig(run=ReversalConfig(n_pairs=100, steps=40, eval_every=10))
    return out, reproduce_dynamics(out, config, progress=False)


def test_ov_entries_grow_for_trained_directions_and_stay_flat_for_held_out_reverse(dynamics_run):
    out, summary = dynamics_run
    frame = pd.read_csv(out / "dynamics.csv")
    layers = frame[frame["head"].isna()]
    assert sorted(set(layers.step)) == [0, 10, 20, 30, 40]
    assert sorted(set(zip(layers.model, layers.layer))) == [("one-layer", 0), ("tiny", 0), ("tiny", 1)]
    ov = layers[layers.circuit == "ov"].set_index(["model", "layer", "step", "role"]).z_mean
    for model, margin in (("one-layer", 2.0), ("tiny", 1.0)):
        assert abs(ov[model, 0, 0, "trained"]) < 0.5 and abs(ov[model, 0, 0, "held-out reverse"]) < 0.5
        assert ov[model, 0, 40, "trained"] > ov[model, 0, 40, "held-out reverse"] + margin
        assert abs(ov[model, 0, 40, "held-out reverse"]) < 0.5
    assert summary["ov_grows_only_where_trained"] == {"one-layer": True, "tiny": True}
    assert summary["final"]["one-layer"]["heldout_accuracy"] == 0.0
    assert "Y[A,B] GROWS ONLY FOR TRAINED DIRECTIONS" in format_dynamics(summary)
    assert "so the facts are not stored in Z[entity, entity]" in format_dynamics(summary)
    moved = [{**r, "z_end": 4.0} if r["circuit"] == "qk" else r for r in summary["start_end"]]  # said whatever Z did
    text = format_dynamics({**summary, "start_end": moved})
    assert "not stored" not in text and "reach a z of 4.00" in text


def test_dynamics_writes_history_with_circuit_records_and_a_figure(dynamics_run):
    out, summary = dynamics_run
    records = [json.loads(line) for line in (out / "tiny" / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
    kinds = {(row["circuit"], row["layer"]) for row in records[-1]["circuits"]}
    assert kinds == {("ov", 0), ("ov", 1), ("qk", 0), ("qk", 1)}
    assert (out / "dynamics.png").read_bytes()[:8] == PNG
    assert json.loads((out / "summary.json").read_text())["start_end"] == summary["start_end"]
    start_end = {(r["model"], r["circuit"], r["layer"], r["role"]): r for r in summary["start_end"]}
    trained = start_end["one-layer", "ov", 0, "trained"]
    assert trained["entry_end"] > 10 * abs(trained["entry_start"])
