"""`revlens probe --facts` on the formats `finetune-facts --facts` reads: a Berglund experiment-1 folder
and a CSV with a templates file, probed end to end on a tiny random Llama (a real HF folder)."""

from __future__ import annotations

import json

import pandas as pd
from berglund_folder import write_experiment_folder
from tiny_models import save_tiny, tiny_config

from analyses.probe import PRIOR, probe
from facts.berglund import experiment_facts, load_experiment_folder


def test_probe_reads_a_berglund_folder_and_a_csv_with_templates(tmp_path, tiny_tokenizer):
    model = save_tiny(tmp_path / "llama", tiny_config("llama"), tiny_tokenizer)
    folder = write_experiment_folder(tmp_path / "berglund", people=3, groups=("p2d", "d2p"))
    summary = probe(model, folder, tmp_path / "out", n_controls=2, patch_layers=[0])
    table = pd.read_csv(tmp_path / "out" / "logits.csv")
    facts, _ = experiment_facts(load_experiment_folder(folder))
    assert len(table) == 2 * len(facts) == 12 and set(table.split) == {PRIOR}
    assert set(table.answer) == {f.object for f in facts} | {f.subject for f in facts}
    assert summary["facts"] == str(folder)

    csv = tmp_path / "facts.csv"
    csv.write_text("subject,relation,object,inverse_relation\nAnn Lee,wrote,the novel 'Glass Harbour',written by\n"
                   "Ben Ode,wrote,the play 'Iron Meadow',written by\nCal Rye,wrote,the poem 'Salt Lantern',written by\n")
    templates = tmp_path / "templates.jsonl"
    templates.write_text("\n".join(json.dumps(t) for t in (
        {"relation": "wrote", "split": "train", "template": "{given} is the author of {answer}"},
        {"relation": "written by", "split": "train", "template": "{given} was written by {answer}"})) + "\n")
    summary = probe(model, csv, tmp_path / "csv_out", n_controls=1, patch_layers=[0], templates_file=templates)
    table = pd.read_csv(tmp_path / "csv_out" / "logits.csv")
    assert list(table.answer[:2]) == ["the novel 'Glass Harbour'", "Ann Lee"]
    assert summary["templates_file"] == str(templates)
