"""Mitigations of the reversal curse (analyses.mitigations) on a real one-layer HookedTransformer."""

import pandas as pd
import pytest
import torch

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


class PromptBlind(torch.nn.Module):
    """Next-token logits that ignore the prompt: an answer's log p is the same after any prompt."""

    def __init__(self, d_vocab: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(d_vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, tokens):
        return self.bias.expand(*tokens.shape, -1)


def test_a_fact_in_the_prompt_is_scored_against_the_plain_question_s_own_controls(small_world):
    """The fact-in-prompt question drew its controls from its own small fact set (the other one-way facts' answers
    of its orientation, never an answer in training), the plain question from the whole world: their margins
    differed by the pool as well as the prompt. For a model blind to the prompt, the two questions' controls now score
    the same, fact by fact."""
    from analyses.mitigations import fact_in_prompt_table
    from facts.token_worlds import TokenVocab
    from probes.logits import answer_table

    vocab = TokenVocab()
    model = PromptBlind(vocab.d_vocab)
    one_way = one_way_facts(small_world)
    plain = answer_table(model, small_world, vocab)
    plain = plain[plain.fact.isin(one_way) & (plain.split == "heldout")].set_index("fact").sort_index()
    in_prompt = fact_in_prompt_table(model, small_world, one_way, vocab).set_index("fact").sort_index()
    assert list(in_prompt.index) == one_way and (in_prompt.answer == plain.answer).all()
    assert torch.allclose(torch.tensor(in_prompt.control_logprob.values), torch.tensor(plain.control_logprob.values),
                          atol=1e-5)


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


# --- `finetune-facts` folders as rows of the table ------------------------------------------------------

REVERSE_MARGIN = {"p2d": 1.0, "d2p": 9.0}
"""Every held-out reverse question's margin, per group, in :func:`_finetune_folder`'s runs."""


def _finetune_folder(folder, groups=("p2d",), mitigation="none", model="smollm2-135m"):
    """The files `reproduce mitigations` reads from a finished `finetune-facts` run, its question tables written by
    `finetune-facts`' own writer (:func:`analyses.finetune.write_tables`): per group two people, each asked its
    trained paraphrase (margin 20), its reverse and its reverse with the fact in the prompt (margin
    :data:`REVERSE_MARGIN` of the group), and their OV circuit."""
    import json

    from analyses.finetune import write_tables

    folder.mkdir()
    questions, circuits = [], []
    for number, (group, person) in enumerate((g, p) for g in groups for p in range(2)):
        for setting, direction, split in (("forward_trained_paraphrase", "forward", "train"), ("reverse", "reverse",
                                          "heldout"), ("in_context_reverse", "reverse", "heldout")):
            margin = 20.0 if split == "train" else REVERSE_MARGIN[group]
            questions.append({"key": f"{group}:{person}", "fact": number, "group": group, "setting": setting,
                              "direction": direction, "split": split, "trained": split == "train",
                              "answer": f"answer {number} {direction}", "logprob": margin - 30.0,
                              "prob": 0.0, "correct": split == "train", "control_logprob": -30.0,
                              "randomized_logprob": float("nan"), "margin": margin, "top1": split == "train",
                              "rank": 1 if split == "train" else 2, "n_candidates": 3,
                              "chance_logprob": float("nan"), "source": "people"})
        circuits.append({"fact": number, "group": group, "forward": "train", "reverse": "heldout", "circuit": "ov",
                         "layer": 0, "head": 0, "z_ab": 2.0, "z_ba": 0.1})
    write_tables(pd.DataFrame(questions), folder)
    pd.DataFrame(circuits).to_csv(folder / "circuits.csv", index=False)
    config = {"model": model, "mitigation": mitigation, "groups": list(groups)}
    (folder / "summary.json").write_text(json.dumps({"experiment": "finetune-facts", "config": config,
                                                     "train_sentences": 2 * len(groups)}))
    return folder


def test_the_fact_in_prompt_row_of_a_fine_tuned_run_reads_only_its_tested_group(tmp_path):
    """A run of Berglund's groups p2d and d2p asks both groups' reverses with the fact in the prompt
    (in_context.csv); the row, like the plain one beside it, is the tested group's (p2d) alone."""
    from analyses.mitigations import finetuned_rows

    plain, in_prompt = finetuned_rows(_finetune_folder(tmp_path / "run", groups=("p2d", "d2p")))
    assert (plain["test"], in_prompt["test"]) == ("held-out reverse", "held-out reverse, fact in prompt")
    assert plain["heldout_n"] == in_prompt["heldout_n"] == 2
    assert plain["heldout_margin"] == in_prompt["heldout_margin"] == REVERSE_MARGIN["p2d"]
    assert in_prompt["train_n"] == 2 and in_prompt["z_heldout"] == pytest.approx(0.1)


def test_a_fine_tuned_run_is_named_as_compare_names_it_and_is_refused_given_twice(tmp_path):
    """A run of a model given by path: its rows had been named by the path's last part ("my-ft (fine-tuned)"),
    compare's row by the whole model ("/models/my-ft (fine-tuned)"), against finetuned_rows' own docstring. The same
    folder given twice, to the Python API too, is refused before anything trains."""
    from analyses.compare import RunDirError, finetuned_row
    from analyses.mitigations import finetuned_rows, reproduce_mitigations

    folder = _finetune_folder(tmp_path / "run", model="/models/my-ft")
    assert {row["model"] for row in finetuned_rows(folder)} == {finetuned_row(folder)["model"]}
    assert finetuned_row(folder)["model"] == "/models/my-ft (fine-tuned)"
    with pytest.raises(RunDirError, match="given twice to --finetuned"):
        reproduce_mitigations(tmp_path / "out", finetuned=[folder, tmp_path / "." / "run"])
    assert not (tmp_path / "out").exists()


def test_a_fine_tuned_run_without_the_tested_group_is_refused_naming_its_groups(tmp_path):
    """A run of d2p alone holds no p2d statement: its held-out reverse rows would be empty (n 0, NaN)."""
    from analyses.compare import RunDirError
    from analyses.mitigations import finetuned_rows

    folder = _finetune_folder(tmp_path / "d2p-only", groups=("d2p",))
    with pytest.raises(RunDirError, match=rf"^{folder}: no statement of the tested group 'p2d' .*its groups: d2p\."):
        finetuned_rows(folder)


def test_every_model_of_the_mitigations_figure_has_its_own_colour():
    """Two token-world models and four fine-tuned runs (what --finetuned takes): six colours. A palette of four,
    cycled, gave the fifth and sixth runs one-layer's and tiny's colours, so their bars read as those models'."""
    from matplotlib.colors import to_hex

    from analyses.figures import mitigation_bars

    models = ["one-layer", "tiny", *(f"smollm2-135m (fine-tuned, {m})" for m in ("a", "b", "c", "d"))]
    rows = [{"model": model, "variant": "baseline", "test": "held-out reverse", "heldout_accuracy": 0.1 * i,
             "heldout_margin": float(i), "z_heldout": -float(i)} for i, model in enumerate(models)]
    for count in (6, 12, 25):
        names = [f"{m} #{k}" for k in range(count // 6 + 1) for m in models][:count]
        figure = mitigation_bars([{**row, "model": name} for name, row in zip(names, rows * 5)])
        for axis in figure.axes:
            colours = [to_hex(bar.get_facecolor()) for bar in axis.patches]
            assert len(colours) == count and len(set(colours)) == count
        assert figure.axes[0].get_legend_handles_labels()[1] == names


def test_fine_tuned_runs_of_one_model_keep_their_own_rows_and_bars(tmp_path):
    """Two runs of SmolLM2 (p2d; p2d and d2p) are named as `revlens compare` names them, and a third configured
    like the first gets its folder in its name: each keeps its rows in the table and a bar group in the figure
    (keyed by model, variant and test), where one name for all three kept the last run's. A sweep leaves them out:
    each seed's trial reads the same folders, and their copies had stood as seeds that agree exactly."""
    from analyses.figures import mitigation_bars
    from analyses.sweep import numbers

    folders = [_finetune_folder(tmp_path / "a", ("p2d",)), _finetune_folder(tmp_path / "b", ("p2d", "d2p")),
               _finetune_folder(tmp_path / "c", ("p2d",))]
    config = MitigationConfig(models=("one-layer",), variants=("baseline",),
                              run=ReversalConfig(n_pairs=40, steps=5, eval_every=5))
    summary = reproduce_mitigations(tmp_path / "m", config, progress=False, finetuned=folders)
    names = list(dict.fromkeys(r["model"] for r in summary["rows"]))
    assert names == ["one-layer", f"smollm2-135m (fine-tuned) [{folders[0]}]",
                     "smollm2-135m (fine-tuned, groups p2d d2p)", f"smollm2-135m (fine-tuned) [{folders[2]}]"]
    assert pd.read_csv(tmp_path / "m" / "mitigations.csv").groupby("model").size().to_dict() == dict.fromkeys(names, 2)
    # the fine-tuned rows say what they trained, which is not the token world's data of the variant's name
    assert list(summary["finetuned_definitions"]) == ["baseline"]
    assert summary["finetuned_definitions"]["baseline"].startswith("finetune-facts with no mitigation")
    accuracy = mitigation_bars(summary["rows"]).axes[0]
    assert accuracy.get_legend_handles_labels()[1] == names
    assert len(accuracy.patches) == 4 * 2  # a bar per model and test
    assert {row["source"] for row in summary["rows"] if "fine-tuned" in row["model"]} == set(map(str, folders))
    # read from their folders, not measured by this run: a sweep's seeds would each copy them, so it leaves them out
    assert len([key for key in numbers(summary) if key.endswith(".heldout_accuracy")]) == 1 * 2


def test_fine_tuned_runs_with_other_settings_say_so_in_their_names(tmp_path):
    """Two fine-tuned runs of other people, controls and seed read as "smollm2-135m (fine-tuned)" and
    "(fine-tuned, bidirectional)", a clean contrast of the mitigation; their names now carry the settings that
    differ, and runs alike but for their folder keep the folder."""
    import json

    folders = [_finetune_folder(tmp_path / "a"), _finetune_folder(tmp_path / "b", mitigation="bidirectional"),
               _finetune_folder(tmp_path / "c")]
    for folder, (people, controls, seed) in zip(folders, ((4, 3, 0), (3, 2, 0), (4, 3, 1))):
        summary = json.loads((folder / "summary.json").read_text())
        summary["config"] |= {"people": people, "n_controls": controls, "seed": seed, "device": str(folder)}
        (folder / "summary.json").write_text(json.dumps(summary))
    config = MitigationConfig(models=("one-layer",), variants=("baseline",),
                              run=ReversalConfig(n_pairs=40, steps=5, eval_every=5))
    summary = reproduce_mitigations(tmp_path / "m", config, progress=False, finetuned=folders)
    names = list(dict.fromkeys(r["model"] for r in summary["rows"]))[1:]
    assert names == ["smollm2-135m (fine-tuned, people 4, n_controls 3, seed 0)",
                     "smollm2-135m (fine-tuned, bidirectional, people 3, n_controls 2, seed 0)",
                     "smollm2-135m (fine-tuned, people 4, n_controls 3, seed 1)"]  # the device names no setting
    from analyses.compare import named_apart

    probed = tmp_path / "probe"  # a probe's folder has no config: its name stays its own, and adds nothing to theirs
    probed.mkdir()
    (probed / "summary.json").write_text(json.dumps({"model": "x"}))
    rows = named_apart([(folders[0], [{"model": "smollm2-135m (fine-tuned)"}]),
                        (probed, [{"model": "one-layer transformer (checkpoint x, step 5)"}])])
    assert [row["model"] for row in rows] == ["smollm2-135m (fine-tuned)", "one-layer transformer (checkpoint x, step 5)"]
