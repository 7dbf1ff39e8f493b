"""`revlens compare` (analyses.compare): bilinear, one-layer, tiny and a probed run, same metrics."""

import dataclasses
import json
import math
import shutil

import pandas as pd
import pytest
import torch

from analyses.bilinear import BilinearConfig
from analyses.cli import main
from analyses.compare import THEORY, CompareConfig, RunDirError, compare, finetuned_row, format_compare
from analyses.probe import load_probed, probe, write_probe
from analyses.reproduce import RunConfig, train_run
from facts.io import load_jsonl
from facts.token_worlds import TokenVocab, reversal_world

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = CompareConfig(n_pairs=100, steps=40, bilinear=BilinearConfig(steps=100))


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """`revlens probe` output of the one-layer model compare trains (same world, seed and steps)."""
    folder = tmp_path_factory.mktemp("trained")
    vocab = TokenVocab()
    world = reversal_world(n_pairs=CONFIG.n_pairs, seed=CONFIG.seed, vocab=vocab)
    train_run(world, vocab, RunConfig(model="one-layer", seed=CONFIG.seed, steps=CONFIG.steps, eval_every=CONFIG.steps),
              folder, progress=False)
    probe(folder / "checkpoints", folder / "facts.jsonl", folder / "probe")
    return folder / "probe"


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, probed_run):
    out = tmp_path_factory.mktemp("compare")
    return out, compare(out, probed_run, CONFIG, progress=False)


def test_compare_has_five_rows_and_the_curse_in_every_trained_kind(comparison):
    out, summary = comparison
    rows = {r["kind"]: r for r in summary["rows"]}
    assert list(rows) == ["bilinear", "one-layer", "tiny", "identity-bridge", "checkpoint"]
    assert len(pd.read_csv(out / "compare.csv")) == 5
    for kind in ("bilinear", "one-layer", "tiny"):
        row = rows[kind]
        assert (row["train_n"], row["heldout_n"]) == (30, 30)  # the one-way facts, both directions
        assert row["train_accuracy"] == 1.0 and row["heldout_accuracy"] == 0.0
        assert row["train_margin"] > 5 > 1 > row["heldout_margin"]
        assert row["z_trained"] > row["z_heldout"] + 1 and abs(row["z_heldout"]) < 0.5
    assert abs(rows["bilinear"]["heldout_margin"]) < 1  # Theorem 1: the reverse stays where it started
    assert rows["bilinear"]["n_y_circuits"] == 1 and rows["one-layer"]["n_y_circuits"] == 4
    assert rows["tiny"]["n_y_circuits"] == 8
    bridge, plain = rows["identity-bridge"], rows["one-layer"]  # the same one-layer model, the bridge added
    assert bridge["heldout_n"] == plain["heldout_n"] and bridge["train_accuracy"] == 1.0
    assert bridge["heldout_accuracy"] > plain["heldout_accuracy"] + 0.3 and bridge["heldout_margin"] > 3
    assert bridge["z_heldout"] > plain["z_heldout"] + 1  # Y[B,A] grown, B → A never trained
    assert {kind: row["theory_predicts"] for kind, row in rows.items()} == {  # each row its own kind's prediction
        **{kind: THEORY[kind] for kind in ("bilinear", "one-layer", "tiny", "identity-bridge")},
        "checkpoint": THEORY["one-layer"]}
    assert (out / "compare.png").read_bytes()[:8] == PNG
    assert "what theory predicts" in format_compare(summary)


def test_a_row_read_from_csv_files_equals_the_same_model_measured_in_memory(comparison, probed_run):
    _, summary = comparison
    rows = {r["kind"]: r for r in summary["rows"]}
    from_files, in_memory = rows["checkpoint"], rows["one-layer"]
    # a probe of a token-world checkpoint is that model, with its theory: not a "(fine-tuned)" pretrained LLM
    assert from_files["model"].startswith("one-layer transformer (checkpoint ") and "fine-tuned" not in from_files["model"]
    assert from_files["theory_predicts"] == in_memory["theory_predicts"]
    for key, value in in_memory.items():
        if isinstance(value, float):
            assert from_files[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    probed = json.loads((probed_run / "summary.json").read_text())
    heldout = [probed["logits"][name] for name in ("heldout/forward", "heldout/reverse")]
    pooled = sum(g["margin"] * g["n"] for g in heldout) / sum(g["n"] for g in heldout)
    assert from_files["heldout_margin"] == pytest.approx(pooled)  # the numbers `revlens probe` reports
    ov = [c for c in probed["circuits"] if c["circuit"].startswith("ov")]
    assert from_files["asymmetry_index"] == pytest.approx(sum(c["asymmetry"] for c in ov) / len(ov))


def test_a_probe_of_an_identity_bridge_checkpoint_stands_beside_the_bridge_s_theory(comparison, tmp_path):
    """A probe of the one-layer model trained with the Identity Bridge was read as a plain one-layer checkpoint:
    named "one-layer transformer", beside the prediction that its reverse stays at chance, which the bridge lifts."""
    out, _ = comparison
    folder = out / "identity-bridge"
    probe(folder / "checkpoints", folder / "facts.jsonl", tmp_path / "probe")
    row = finetuned_row(tmp_path / "probe")
    assert row["model"].startswith("one-layer transformer + identity bridge (checkpoint ")
    assert row["theory_predicts"] == THEORY["identity-bridge"] and row["kind"] == "checkpoint"


def test_compare_refuses_a_half_written_or_broken_run_folder(probed_run, tmp_path, capsys):
    def refused(*folders) -> str:
        assert main(["compare", "--out", str(tmp_path / "o"), "--finetuned", *map(str, folders), "--quiet"]) == 2
        assert not (tmp_path / "o").exists()  # refused before anything is trained or written
        return capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "missing logits.csv, circuits.csv, summary.json" in refused(empty)
    half = tmp_path / "half"
    half.mkdir()
    (half / "logits.csv").write_bytes((probed_run / "logits.csv").read_bytes())
    assert "missing circuits.csv, summary.json" in refused(half)
    (half / "summary.json").write_bytes((probed_run / "summary.json").read_bytes())
    pd.read_csv(probed_run / "circuits.csv").drop(columns="z_ba").to_csv(half / "circuits.csv", index=False)
    assert "circuits.csv: missing column(s) ['z_ba']" in refused(half)
    assert "not a folder" in refused(tmp_path / "nowhere")
    # a probe of a model never trained on its facts (prior knowledge): train_n = 0, not a "(fine-tuned)" row
    trained = probed_run.parent
    facts = load_jsonl(trained / "facts.jsonl")
    prior = tmp_path / "prior"
    write_probe(dataclasses.replace(load_probed(trained / "checkpoints", facts), trained_on_facts=False), facts, prior)
    assert (f"{prior}: a probe of a model never trained on these facts (prior knowledge: 0 trained statements)"
            in refused(prior))
    both_ways = shutil.copytree(probed_run, tmp_path / "both-ways")  # every fact trained both ways: none one-way
    pd.read_csv(probed_run / "logits.csv").replace({"split": {"heldout": "train"}}).to_csv(
        both_ways / "logits.csv", index=False)
    assert f"{both_ways}: 0 trained statements of one-way facts" in refused(both_ways)
    # one folder twice would be two identical rows, however it is spelled
    assert f"{probed_run}: given twice to --finetuned; its row would appear twice" in refused(probed_run, probed_run)
    again = probed_run / ".." / probed_run.name
    assert f"{again}: given twice to --finetuned (also as {probed_run})" in refused(probed_run, again)
    with pytest.raises(RunDirError, match="given twice to --finetuned"):
        compare(tmp_path / "o", [probed_run, again], CONFIG, progress=False)
    assert not (tmp_path / "o").exists()


def test_finetuned_rows_of_one_model_are_named_apart_by_mitigation_and_groups(comparison):
    """`compare --finetuned` on a default run, an Identity Bridge run and Berglund's grid: three names,
    read from the configs `finetune-facts` writes (through JSON, as summary.json holds them), printed whole."""
    from dataclasses import asdict

    from analyses.compare import finetuned_label
    from analyses.finetune import FinetuneConfig

    configs = [FinetuneConfig(), FinetuneConfig(mitigation="identity-bridge"), FinetuneConfig(groups=("p2d",)),
               FinetuneConfig(groups=("p2d", "d2p", "both"))]
    labels = [finetuned_label("smollm2-135m", json.loads(json.dumps(asdict(c)))) for c in configs]
    assert labels == ["smollm2-135m (fine-tuned)", "smollm2-135m (fine-tuned, identity-bridge)",
                      "smollm2-135m (fine-tuned)", "smollm2-135m (fine-tuned, groups p2d d2p both)"]
    assert finetuned_label("smollm2-135m", {}) == "smollm2-135m (fine-tuned)"  # a `revlens probe` folder's
    _, summary = comparison
    row = {**next(r for r in summary["rows"] if r["kind"] == "checkpoint"), "kind": "finetuned",
           "theory_predicts": THEORY["finetuned"]}
    text = format_compare({**summary, "rows": [{**row, "model": label} for label in labels]})
    table = text.split("what theory predicts")[0]
    assert all(f"  {label}  " in table for label in set(labels))  # not cut to the column's old 33 characters
    assert "fine-tuned rows: A→B is each fact's trained paraphrase, B→A its first reverse question" in table
    prediction = text.split("what theory predicts:")[1]
    assert prediction.count(row["theory_predicts"]) == 1  # said once for the four fine-tuned rows
    assert f"  {', '.join(labels)}: {row['theory_predicts']}" in prediction


def test_two_fine_tuned_runs_named_alike_keep_their_own_row_and_bar(probed_run, tmp_path):
    """Two folders whose configs name them alike (another seed, say) each get their folder in their name, as
    `reproduce mitigations` names them: one name for both made two identical rows and two identical ticks."""
    again = shutil.copytree(probed_run, tmp_path / "again")
    logits = pd.read_csv(again / "logits.csv")
    logits["margin"] += 1.0  # a run whose numbers differ, under the same name
    logits.to_csv(again / "logits.csv", index=False)
    config = CompareConfig(n_pairs=100, steps=2, bilinear=BilinearConfig(steps=2))
    summary = compare(tmp_path / "out", [probed_run, again], config, progress=False)
    finetuned = [row for row in summary["rows"] if row["kind"] == "checkpoint"]
    alike = finetuned_row(probed_run)["model"]
    assert [row["model"] for row in finetuned] == [f"{alike} [{probed_run}]", f"{alike} [{again}]"]
    assert finetuned[1]["heldout_margin"] == pytest.approx(finetuned[0]["heldout_margin"] + 1.0)
    written = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert written.model.tolist()[-2:] == [row["model"] for row in finetuned]


def test_a_nan_asymmetry_is_never_the_most_asymmetric_circuit(probed_run):
    """A circuit whose z-scores are NaN (its controls' entries do not vary) listed first used to win `max`;
    it never ranks, and with no finite asymmetry there is no most asymmetric circuit (None, NaN), not the first."""
    from analyses.compare import y_circuit_metrics
    from analyses.probe import circuit_summary

    circuits = pd.read_csv(probed_run / "circuits.csv")
    first = circuits.groupby(["circuit", "layer", "head"], dropna=False, sort=False).ngroup() == 0
    circuits.loc[first, ["z_ab", "z_ba"]] = float("nan")  # the circuit listed first
    per_circuit = circuit_summary(circuits)
    assert math.isnan(per_circuit[0]["asymmetry"]) and len(per_circuit) > 2
    finite = max(per_circuit[1:], key=lambda r: r["asymmetry"])
    metrics = y_circuit_metrics(circuits)
    assert metrics["most_asymmetric_circuit"] == finite["circuit"] != per_circuit[0]["circuit"]
    assert metrics["max_asymmetry"] == finite["asymmetry"]
    none_finite = y_circuit_metrics(circuits.assign(z_ab=float("nan"), z_ba=float("nan")))
    assert none_finite["most_asymmetric_circuit"] is None and math.isnan(none_finite["max_asymmetry"])


def test_a_head_whose_ov_z_is_undefined_is_left_out_of_the_run_s_ov_asymmetry(probed_run):
    """The reversal run's headline OV numbers average over heads; a head whose OV reads nothing (W_V zeroed: its
    entries equal, their z-scores NaN) made them NaN; it is now left out, as compare's circuit row leaves it out."""
    from analyses.probe import circuit_summary
    from analyses.reproduce import ov_asymmetry
    from facts.io import load_jsonl
    from models.load import load_trained
    from probes.circuits import circuit_table

    run = probed_run.parent
    model, _ = load_trained(run / "checkpoints")
    world, vocab = load_jsonl(run / "facts.jsonl"), TokenVocab()
    assert model.cfg.n_heads > 1
    with torch.no_grad():
        model.blocks[0].attn.W_V[0] = 0.0  # head 0 reads nothing
    heads = [r for r in circuit_summary(circuit_table(model, world, vocab.entity_ids, kinds=("ov",))) if r["n_one_way"]]
    assert math.isnan(heads[0]["asymmetry"]) and all(math.isfinite(r["asymmetry"]) for r in heads[1:])
    found = ov_asymmetry(model, world, vocab)
    assert found["ov_asymmetry"] == pytest.approx(sum(r["asymmetry"] for r in heads[1:]) / (len(heads) - 1))


def _finetune_summary_with_weight_changes(folder, asymmetries):
    """A `finetune-facts` summary.json whose tracing entry holds ΔMLP rows L0, L1, ... with these asymmetries."""
    folder.mkdir()
    question = {"clean_prob": 0.5, "corrupted_prob": 0.1, "components": {
        "mlp_out": {"peak_layer": 1, "peak_bucket": "given last", "peak_effect": 0.2, "max_restored_prob": 0.4}}}
    changes = [{"circuit": f"delta_mlp L{layer}", "n_one_way": 10, "z_trained": a + 0.1,
                "z_heldout": 0.1 if math.isfinite(a) else a, "asymmetry": a} for layer, a in enumerate(asymmetries)]
    (folder / "summary.json").write_text(json.dumps({"experiment": "finetune-facts", "tracing": {
        "after": {"train/forward": question, "heldout/reverse": question}, "weight_change": changes}}))
    return folder


def test_the_most_asymmetric_weight_change_is_a_finite_one(tmp_path):
    """ΔMLP of a frozen layer (NaN asymmetry, layer 0 here) is not "the most asymmetric weight change"; when no
    layer has a finite one the row says so (None, NaN, and in words), not L0."""
    from analyses.compare import tracing_columns

    nan = float("nan")
    columns = tracing_columns(_finetune_summary_with_weight_changes(tmp_path / "frozen", [nan, 0.3, 1.2, -2.0]))
    assert columns["delta_mlp_peak_layer"] == "delta_mlp L2"
    assert columns["delta_mlp_z_trained"] == pytest.approx(1.3) and columns["delta_mlp_z_heldout"] == 0.1
    columns = tracing_columns(_finetune_summary_with_weight_changes(tmp_path / "unchanged", [nan, nan]))
    assert columns["delta_mlp_peak_layer"] is None
    assert math.isnan(columns["delta_mlp_z_trained"]) and math.isnan(columns["delta_mlp_z_heldout"])
    row = {"model": "m (fine-tuned)", "theory_predicts": "-", **columns,
           **{key: 0.0 for key in ("train_margin", "heldout_margin", "train_accuracy", "heldout_accuracy",
                                   "z_trained", "z_heldout", "asymmetry_index")}}
    text = format_compare({"rows": [row], "seconds": 1.0})
    assert "no layer's weight change (ΔMLP) has a finite asymmetry" in text and "L0" not in text and "nan" not in text


def test_a_run_whose_inputs_changed_since_is_refused_by_compare_and_report(tmp_path, capsys):
    """A probe's numbers are of the checkpoint and facts it read: once its facts file is rewritten (or the model
    retrained into the same folder) the probe folder is still whole, but `compare` showed its old numbers under the
    inputs' names as today's and `report` rendered it without a word. Both refuse it now, naming the input."""
    vocab = TokenVocab()
    world = reversal_world(n_pairs=40, seed=0, vocab=vocab)
    train_run(world, vocab, RunConfig(model="one-layer", seed=0, steps=5, eval_every=5), tmp_path / "run", progress=False)
    assert main(["probe", "--model", str(tmp_path / "run" / "checkpoints"), "--facts", str(tmp_path / "run" / "facts.jsonl"),
                 "--out", str(tmp_path / "probe")]) == 0  # the CLI writes the manifest and its inputs
    assert main(["report", "--runs", str(tmp_path / "probe"), "--out", str(tmp_path / "before.html")]) == 0
    facts = tmp_path / "run" / "facts.jsonl"
    facts.write_text(facts.read_text() + "\n")  # edited since the probe read it
    capsys.readouterr()
    assert main(["compare", "--out", str(tmp_path / "o"), "--finetuned", str(tmp_path / "probe"), "--quiet"]) == 2
    said = capsys.readouterr().err
    assert f"{tmp_path / 'probe'}: the --finetuned folder was made from {facts}, changed since the run read them" in said
    assert not (tmp_path / "o").exists()
    assert main(["report", "--runs", str(tmp_path / "probe"), "--out", str(tmp_path / "after.html")]) == 2
    assert f"was made from {facts}, changed since" in capsys.readouterr().err and not (tmp_path / "after.html").exists()
