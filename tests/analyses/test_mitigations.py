"""Mitigations of the reversal curse (analyses.mitigations) on a real one-layer HookedTransformer."""

import pandas as pd
import pytest

from analyses.mitigations import (
    MitigationConfig, copy_facts, format_mitigations, make_variant, one_way_facts, reproduce_mitigations,
)
from analyses.reproduce import ReversalConfig
from facts.token_worlds import reversal_world

PNG = b"\x89PNG\r\n\x1a\n"


def _statements(facts, split):
    """(given, relation, answer, in context) of every statement with ``split``."""
    return {(*facts[i].given_and_answer(d), facts[i].context) for i, d, s in facts.statements() if s == split}


@pytest.fixture(scope="module")
def small_world():
    return reversal_world(n_pairs=100, seed=0)


def test_augmentation_trains_half_the_held_out_reverses_and_tests_both_halves(small_world):
    variant = make_variant("augmentation", small_world)
    restated, other = variant.tests["restated pairs (trained)"], variant.tests["pairs not restated"]
    assert restated.trained and not other.trained
    assert sorted(restated.facts + other.facts) == one_way_facts(small_world) and len(restated.facts) == 15
    trained = _statements(variant.training, "train")
    for index in restated.facts:
        assert {variant.training[index].forward, variant.training[index].reverse} == {"train"}
    held_out = _statements(small_world, "heldout")
    assert len(trained & held_out) == 15  # exactly the restated reverses joined the training data
    assert variant.training.count("train") == small_world.count("train") + 15


def test_reverse_training_never_trains_a_held_out_statement(small_world):
    variant = make_variant("reverse-training", small_world)
    trained = _statements(variant.training, "train")
    assert len(trained) == 2 * small_world.count("train")
    assert not trained & _statements(small_world, "heldout")
    fact = small_world[one_way_facts(small_world)[0]]
    given, relation, answer = fact.given_and_answer("forward" if fact.forward == "train" else "reverse")
    assert (answer, relation, given, False) in trained  # "x → y" trained adds "y → x"


def test_copy_sequences_never_pair_true_partners_and_let_every_entity_answer(small_world):
    copies = copy_facts(small_world, partners=3, seed=0)
    assert len(copies) == 2 * 3 * len(small_world) and all(f.context for f in copies)
    true_pairs = {frozenset((f.subject, f.object)) for f in small_world}
    assert not {frozenset((f.subject, f.object)) for f in copies} & true_pairs
    answers = pd.Series([f.subject for f in copies]).value_counts()
    assert set(answers.index) == set(small_world.entities()) and set(answers) == {3}
    with pytest.raises(ValueError, match="partners"):
        MitigationConfig(run=ReversalConfig(n_pairs=3), copy_partners=3)


def test_identity_bridge_adds_each_entity_as_its_own_answer_and_trains_no_held_out_statement(small_world):
    variant = make_variant("identity-bridge", small_world)
    trained = _statements(variant.training, "train")
    assert not trained & _statements(small_world, "heldout")
    bridge = trained - _statements(small_world, "train")
    assert len(bridge) == len(small_world.entities()) == 200
    subjects = {f.subject for f in small_world}
    for given, relation, answer, context in bridge:
        assert given == answer and not context
        assert relation == ("←" if given in subjects else "→")  # the relation whose statements answer its kind


@pytest.fixture(scope="module")
def mitigation_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mitigations")
    config = MitigationConfig(models=("one-layer",), run=ReversalConfig(n_pairs=100, steps=60, eval_every=60))
    summary = reproduce_mitigations(out, config, progress=False)
    rows = {(r["variant"], r["test"]): r for r in summary["rows"]}
    return out, summary, rows


def test_baseline_keeps_the_curse_even_with_the_fact_in_the_prompt(mitigation_run):
    _, _, rows = mitigation_run
    plain, in_prompt = rows["baseline", "held-out reverse"], rows["baseline", "held-out reverse, fact in prompt"]
    assert plain["train_accuracy"] == 1.0 and plain["heldout_accuracy"] == 0.0
    assert plain["heldout_logprob"] < plain["chance_logprob"]
    assert abs(plain["z_heldout"]) < 0.5 < 2.5 < plain["z_trained"]  # Y[B,A] flat, Y[A,B] grown
    assert in_prompt["heldout_accuracy"] < 0.1  # never taught to copy: "<->" means nothing to it


def test_each_mitigation_buys_back_what_its_definition_says(mitigation_run):
    _, _, rows = mitigation_run
    baseline = rows["baseline", "held-out reverse"]
    restated = rows["augmentation", "restated pairs (trained)"]
    not_restated = rows["augmentation", "pairs not restated"]
    assert restated["tested_trained"] and restated["heldout_accuracy"] > 0.9 and restated["z_heldout"] > 2
    assert not_restated["heldout_accuracy"] == 0.0 and abs(not_restated["z_heldout"]) < 0.5  # no generalisation
    reverse = rows["reverse-training", "held-out reverse"]
    assert not reverse["tested_trained"] and reverse["heldout_accuracy"] > 0.9 > baseline["heldout_accuracy"]
    assert reverse["z_heldout"] > 2  # the answer comes from a grown Y[B,A]
    in_context = rows["in-context", "held-out reverse, fact in prompt"]
    baseline_in_prompt = rows["baseline", "held-out reverse, fact in prompt"]
    assert in_context["heldout_accuracy"] > 0.7 > baseline_in_prompt["heldout_accuracy"]
    assert rows["in-context", "held-out reverse"]["heldout_accuracy"] < 0.2  # without the prompt, still cursed
    bridge = rows["identity-bridge", "held-out reverse"]
    assert not bridge["tested_trained"] and bridge["heldout_accuracy"] > 0.3 > baseline["heldout_accuracy"]
    assert bridge["z_heldout"] > baseline["z_heldout"] + 1  # the reverse read from a grown Y[B,A]


def test_mitigations_write_table_figure_and_summary(mitigation_run):
    out, summary, rows = mitigation_run
    table = pd.read_csv(out / "mitigations.csv")
    assert len(table) == len(rows) == 8
    assert summary["variants"] == {"baseline": 170, "augmentation": 185, "reverse-training": 340, "in-context": 770,
                                   "identity-bridge": 370}
    assert (out / "mitigations.png").read_bytes()[:8] == PNG
    assert (out / "one-layer" / "in-context" / "facts.jsonl").stat().st_size > 0
    assert "restated pairs (trained) *" in format_mitigations(summary)
