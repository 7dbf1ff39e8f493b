"""One reader for ``--facts`` (:func:`facts.sources.read_fact_source`), used by ``finetune-facts`` and
``probe``; ``make-facts`` writes each format it reads."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from berglund_folder import write_experiment_folder

from analyses.cli import main
from analyses.finetune import FinetuneConfig, read_questions
from facts.berglund import experiment_facts, load_experiment_folder
from facts.language import TEST_TEMPLATES, TRAIN_TEMPLATES, TemplateTokenizer, people_world, render_statement
from facts.questions import load_fact_csv, questions_from_facts
from facts.schema import FactError
from facts.sources import read_fact_source


def test_make_facts_writes_each_format_the_reader_reads_back(tmp_path):
    world = people_world(n_per_group=3, seed=0)
    for name in ("facts.jsonl", "facts.csv"):
        assert main(["make-facts", "people", "--size", "3", "--out", str(tmp_path / name), "--threads", "1"]) == 0
        assert tuple(read_fact_source(tmp_path / name).facts) == tuple(world)
    assert main(["make-facts", "people", "--size", "3", "--format", "berglund", "--out", str(tmp_path / "berglund"),
                 "--threads", "1"]) == 0
    source = read_fact_source(tmp_path / "berglund")
    assert source.experiment == load_experiment_folder(tmp_path / "berglund")
    one_way = [f for f in world if f.group in ("p2d", "d2p")]  # "both" facts name one side per prompt
    assert [(f.subject, f.object, f.forward, f.reverse, f.group) for f in source.facts] == [
        (f.subject, f.object, f.forward, f.reverse, f.group) for f in one_way]


def test_finetune_reads_its_facts_through_the_shared_reader(tmp_path):
    folder = write_experiment_folder(tmp_path / "folder", people=2)
    config = replace(FinetuneConfig(), facts=str(folder), templates=2)
    read, experiment = read_questions(config), load_experiment_folder(folder, 2)
    assert (read.train, read.questions, read.source) == (experiment.train, experiment.questions, experiment.source)
    assert (read.facts, read.sentence_templates) == experiment_facts(experiment)  # what probe reads of it too
    main(["make-facts", "people", "--size", "3", "--out", str(tmp_path / "f.csv"), "--threads", "1"])
    config = replace(FinetuneConfig(), facts=str(tmp_path / "f.csv"))
    assert read_questions(config) == questions_from_facts(load_fact_csv(tmp_path / "f.csv"), TRAIN_TEMPLATES,
                                                          TEST_TEMPLATES, 2)


def test_berglund_facts_are_asked_in_their_own_prompts(tmp_path, smollm2_tokenizer):
    folder = write_experiment_folder(tmp_path / "folder", people=2, groups=("p2d", "d2p"))
    experiment = load_experiment_folder(folder)
    facts, templates = experiment_facts(experiment)
    asked = TemplateTokenizer(smollm2_tokenizer, templates)
    prompts = {(q.prompt, q.completion) for q in experiment.questions}
    for index, direction, _ in facts.statements():  # every statement the probe asks is a prompt of the folder
        rendered = render_statement(facts, index, direction, templates)
        assert (rendered.prompt, rendered.answer) in prompts
        assert asked.example(facts, index, direction).answer  # tokenizes apart
    assert {f.group: (f.forward, f.reverse) for f in facts} == {"p2d": ("train", "heldout"),
                                                                "d2p": ("heldout", "train")}


def test_bad_input_is_refused_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,relation,object\nAnn,p2d,the author\nBen,p2d\n")
    with pytest.raises(FactError, match=rf"{bad}:3: expected 3 fields"):
        read_fact_source(bad)
    templates = tmp_path / "templates.jsonl"
    templates.write_text(json.dumps({"relation": "p2d", "split": "train", "template": "{given} wrote"}) + "\n")
    with pytest.raises(FactError, match=rf"{templates}:1: template .* needs one {{answer}} slot"):
        read_fact_source(_csv(tmp_path), templates)
    mentors = tmp_path / "mentors.csv"  # the third fact's relation has no sentences: named by its line
    mentors.write_text("subject,relation,object,inverse_relation\nAnn Lee,p2d,the author of 'X',d2p\n\n"
                       "Bo Ray,p2d,the painter of 'Y',d2p\nCy Orr,is the mentor of,Di Poe,is the student of\n")
    with pytest.raises(FactError, match=rf"^{mentors}:5: fact 2 \('Cy Orr' 'is the mentor of' 'Di Poe'\): no train "
                                        r"template for relation 'is the mentor of'"):
        read_fact_source(mentors).questions(TRAIN_TEMPLATES, TEST_TEMPLATES, 1)
    main(["make-facts", "people", "--size", "2", "--out", str(tmp_path / "people.jsonl"), "--threads", "1"])
    jsonl = read_fact_source(tmp_path / "people.jsonl")
    with pytest.raises(FactError, match=rf"^{tmp_path / 'people.jsonl'}:4: fact 2 .*: no train template for relation "
                                        r"'d2p'"):  # the first fact trained in its reverse (the header is line 1)
        jsonl.questions({**TRAIN_TEMPLATES, "d2p": ()}, TEST_TEMPLATES, 1)
    folder = write_experiment_folder(tmp_path / "folder", people=2)
    with pytest.raises(FactError, match="brings its own prompts"):
        read_fact_source(folder, templates)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FactError, match="without any of Berglund"):
        read_fact_source(tmp_path / "empty")
    with pytest.raises(FactError, match="Berglund's layout states a p2d fact only as"):
        from facts.berglund import save_experiment_folder

        world = people_world(n_per_group=2, seed=0)
        save_experiment_folder(replace(world, facts=(replace(world[0], reverse=None),) + tuple(world)[1:]),
                               tmp_path / "out", TRAIN_TEMPLATES, TEST_TEMPLATES)


def _csv(tmp_path):
    path = tmp_path / "good.csv"
    path.write_text("subject,relation,object,inverse_relation\nAnn Lee,p2d,the author of 'X',d2p\n")
    return path


def test_probe_check_reads_every_format_and_refuses_a_templates_file_with_a_checkpoint(tmp_path, capsys):
    from analyses.cli import _check_probe_facts

    folder = write_experiment_folder(tmp_path / "folder", people=3, groups=("p2d", "d2p"))
    _check_probe_facts(folder, 2, checkpoint=False)
    with pytest.raises(ValueError, match="--controls 9: .* holds only 5 wrong answers"):
        _check_probe_facts(folder, 9, checkpoint=False)
    with pytest.raises(ValueError, match="a checkpoint reads token ids"):
        _check_probe_facts(_csv(tmp_path), 1, checkpoint=True, templates_file=tmp_path / "t.jsonl")
