"""`revlens probe` on a real trained checkpoint and its fact file (through the CLI's main() in the test
process: the same parser, exit codes and printed text as the `revlens` command)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from analyses.probe import PRIOR, format_probe, pretrained_probed, probe, write_probe
from facts.io import save_jsonl
from facts.tokens import tokenize
from models.bilinear import BilinearModel, bilinear_card
from models.checkpoint import save_checkpoint
from models.training import TrainConfig, train
from models.transformer import build_model, model_card
from probes.views import remote_references
from tests_support import revlens_in_process

ATTRIBUTION_FIGURES = ["attribution.png", "patching.png", "attention_forward.html", "attention_reverse.html"]
REMOTE_TAG = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def assert_drawn(path):
    """A PNG of real size with many colours: something was drawn, not an empty canvas. Each pixel's 8-bit
    channels are packed into one integer, so the colours are counted by one sort of integers (``np.unique``
    over rows of floats sorted them row by row: ~4 s a figure)."""
    image = imread(path)
    assert min(image.shape[:2]) > 150, f"{path.name}: {image.shape}"
    channels = np.round(image.reshape(-1, image.shape[-1]) * 255).astype(np.uint32)
    colours = sum(channels[:, c] << np.uint32(8 * c) for c in range(channels.shape[1]))
    assert len(np.unique(colours)) > 50, f"{path.name} is nearly blank"


def assert_offline_view(path, *expected):
    """A self-contained circuitsvis page: no script/link from the network, the bundle and data inlined."""
    page = path.read_text(encoding="utf-8")
    assert REMOTE_TAG.findall(page) == [] and remote_references(page) == []
    assert "CircuitsVis.render(" in page and len(page) > 1_000_000
    for text in expected:
        assert text in page, f"{path.name} lacks {text!r}"


@pytest.fixture(scope="module")
def run(tmp_path_factory, world, vocab):
    folder = tmp_path_factory.mktemp("run")
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=40, progress=False),
          checkpoint_dir=folder / "checkpoints", model_card=model_card("one-layer", vocab.d_vocab, "absolute", 0))
    save_jsonl(world, folder / "facts.jsonl")
    return folder


def test_probe_cli_writes_tables_summary_and_figures(run, world, tmp_path, capsys):
    result = revlens_in_process(capsys, "probe", "--model", str(run / "checkpoints"), "--facts",
                                str(run / "facts.jsonl"), "--out", str(tmp_path))
    assert "most asymmetric circuit: ov" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["logits"]["train/forward"]["accuracy"] == 1.0
    assert summary["logits"]["heldout/forward"]["accuracy"] == 0.0
    assert summary["logits"]["train/reverse"]["margin"] > 5 > summary["logits"]["heldout/reverse"]["margin"]
    ov = [r for r in summary["circuits"] if r["circuit"].startswith("ov")]
    assert len(ov) == 4 and all(r["asymmetry"] > 2 for r in ov)
    circuits = pd.read_csv(tmp_path / "circuits.csv")
    assert len(circuits) == 200 * 9  # direct + 4 OV + 4 QK per fact
    assert (tmp_path / "logits.csv").stat().st_size > 0
    assert summary["figures"] == ["margins.png", "circuits.png", *ATTRIBUTION_FIGURES]
    assert "attention_forward.html" in result.stdout
    for name in summary["figures"]:
        if name.endswith(".png"):
            assert_drawn(tmp_path / name)
    attribution = summary["attribution"]
    fact = attribution["fact"]  # the first fact whose reverse direction is held out
    assert world[fact].reverse == attribution["reverse"]["split"] == "heldout"
    assert all(f.reverse != "heldout" for f in list(world)[:fact])
    forward, reverse = attribution["forward"], attribution["reverse"]
    assert forward["prompt_tokens"][1] == "→" and reverse["prompt_tokens"][1] == "←"
    # patching scores the reverse answer: unpatched, the held-out reverse statement's own log p in logits.csv
    table = pd.read_csv(tmp_path / "logits.csv").set_index(["fact", "direction"])
    assert attribution["patching"]["corrupted_logprob"] == pytest.approx(table.logprob[(fact, "reverse")], abs=1e-4)
    assert attribution["reverse"]["answer_token"] == reverse["answer"] and "reverse answer" in attribution["patching"]["metric"]
    assert attribution["patching"]["positions_from_end"] == 2
    for direction in ("forward", "reverse"):
        tokens = attribution[direction]["prompt_tokens"]
        assert_offline_view(tmp_path / f"attention_{direction}.html", '"L0H3"', f'"tokens": {json.dumps(tokens)}')


def test_a_probe_of_a_multi_token_world_names_each_answer_as_its_facts_do(vocab, tmp_path, capsys):
    """An answer of a 2-token world is written as its fact names it ("e26 e480"): the tokens' names were joined
    with nothing between them ("e26e480"), in the summary's statements, the patching metric and its figure."""
    from facts.token_worlds import reversal_world

    world = reversal_world(n_pairs=12, k=2, seed=1, alphabet_size=20)
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=5, progress=False),
          checkpoint_dir=tmp_path / "run" / "checkpoints", model_card=model_card("one-layer", vocab.d_vocab, "absolute", 0))
    save_jsonl(world, tmp_path / "facts.jsonl")
    revlens_in_process(capsys, "probe", "--model", tmp_path / "run" / "checkpoints", "--facts", tmp_path / "facts.jsonl",
                       "--controls", "4", "--out", tmp_path / "probe")
    attribution = json.loads((tmp_path / "probe" / "summary.json").read_text())["attribution"]
    fact = world[attribution["fact"]]
    for direction in ("forward", "reverse"):
        answer = fact.given_and_answer(direction)[2]
        assert " " in answer and attribution[direction]["answer"] == answer, direction
    assert repr(fact.subject) in attribution["patching"]["metric"]


def test_probe_cli_traces_facts(run, world, tmp_path, capsys):
    result = revlens_in_process(capsys, "probe", "--model", str(run / "checkpoints"), "--facts",
                                str(run / "facts.jsonl"), "--limit", "20", "--tracing", "--tracing-facts", "3",
                                "--tracing-samples", "2", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "tracing.png" in summary["figures"] and "causal tracing of" in result.stdout
    assert_drawn(tmp_path / "tracing.png")
    table = pd.read_csv(tmp_path / "tracing.csv")
    statements = [(i, d) for i, d, _ in world.first(3).statements()]
    assert sorted(set(zip(table.fact, table.direction))) == sorted(statements)
    assert set(table.component) == {"resid_post", "attn_out"}  # an attention-only model has no MLP
    assert len(table) == len(statements) * 2 * 1 * 2  # components × layers × positions
    # the last layer's output at the last position is what the one-token answer is read from
    final = table[(table.component == "resid_post") & (table.bucket == "last")]
    assert (final.prob - final.clean_prob).abs().max() < 1e-6
    headline = summary["tracing"]["headline"]
    assert set(headline) == {f"{world[i].split(d)}/{d}" for i, d in statements}
    assert summary["tracing"]["statements"] == len(statements)


def test_probe_reads_a_bilinear_checkpoint(world, vocab, tmp_path):
    model = BilinearModel(vocab.d_vocab, 128, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=30, lr=0.05, progress=False),
          checkpoint_dir=tmp_path / "ckpt", model_card=bilinear_card(vocab.d_vocab, 128, 0))
    save_jsonl(world, tmp_path / "facts.jsonl")
    summary = probe(tmp_path / "ckpt", tmp_path / "facts.jsonl", tmp_path / "out")
    assert [r["circuit"] for r in summary["circuits"]] == ["theta"]
    assert summary["circuits"][0]["asymmetry"] > 2
    assert summary["figures"] == ["margins.png", "circuits.png"]
    assert "bilinear model has no layers, heads" in summary["attribution"]["skipped"]
    assert not any((tmp_path / "out" / name).exists() for name in ATTRIBUTION_FIGURES)


def test_probe_draws_its_controls_with_its_seed(world, vocab, tmp_path):
    """``probe --seed``: the margins' and the circuits' controls are drawn with it (they were seed 0's whatever the
    run), so two seeds read one model's log-probabilities alike and its margins and z-scores against other controls."""
    model = BilinearModel(vocab.d_vocab, 128, seed=0)
    train(model, tokenize(world, vocab).where(split="train"), TrainConfig(steps=5, lr=0.05, progress=False),
          checkpoint_dir=tmp_path / "ckpt", model_card=bilinear_card(vocab.d_vocab, 128, 0))
    save_jsonl(world, tmp_path / "facts.jsonl")
    tables = {}
    for seed in (0, 1):
        summary = probe(tmp_path / "ckpt", tmp_path / "facts.jsonl", tmp_path / f"s{seed}", seed=seed)
        assert summary["seed"] == seed
        tables[seed] = (pd.read_csv(tmp_path / f"s{seed}" / "logits.csv"), pd.read_csv(tmp_path / f"s{seed}" / "circuits.csv"))
    (logits0, circuits0), (logits1, circuits1) = tables[0], tables[1]
    assert logits0.logprob.tolist() == logits1.logprob.tolist()
    assert (logits0.margin != logits1.margin).mean() > 0.5 and (circuits0.z_ab != circuits1.z_ab).mean() > 0.5


def test_probe_refuses_a_folder_without_checkpoints_and_a_mismatched_config(run, tmp_path, capsys):
    result = revlens_in_process(capsys, "probe", "--model", str(tmp_path), "--facts", str(run / "facts.jsonl"),
                                "--out", str(tmp_path / "o"), check=False)
    assert result.returncode == 2 and "not a reversal-lens checkpoint" in result.stderr
    meta_path = sorted((run / "checkpoints").glob("step-*.json"))[-1]
    meta = json.loads(meta_path.read_text())
    broken = tmp_path / "broken"  # a tiny model's weights under the run's one-layer model card
    save_checkpoint(broken, meta["step"], build_model("tiny", meta["model"]["d_vocab"]), None, {"model": meta["model"]})
    result = revlens_in_process(capsys, "probe", "--model", str(broken), "--facts", str(run / "facts.jsonl"), "--out",
                                str(tmp_path / "o"), check=False)
    assert result.returncode == 2 and "does not match the model config" in result.stderr
    # --backend chooses a pretrained model's wrapper; with a checkpoint it did nothing but stand in the manifest
    result = revlens_in_process(capsys, "probe", "--model", str(run / "checkpoints"), "--backend", "bridge", "--facts",
                                str(run / "facts.jsonl"), "--out", str(tmp_path / "backend"), check=False)
    assert result.returncode == 2 and "is a checkpoint, which loads as the model it was trained as" in result.stderr
    assert not (tmp_path / "backend").exists()


@pytest.mark.parametrize("world, expected", [("reversal", "200 reversal facts (340 trained, 60 held-out"),
                                             ("chain", "600 chain facts"), ("people", "90 people facts")])
def test_make_facts_writes_a_reloadable_world(world, expected, tmp_path, capsys):
    from facts.io import load_jsonl

    result = revlens_in_process(capsys, "make-facts", world, "--out", str(tmp_path / "f.jsonl"))
    assert expected in result.stdout
    assert load_jsonl(tmp_path / "f.jsonl").world == world


def test_pretrained_model_on_token_world_facts_is_refused(run, tmp_path, capsys):
    result = revlens_in_process(capsys, "probe", "--model", "smollm2-135m", "--facts", str(run / "facts.jsonl"),
                                "--out", str(tmp_path), check=False)
    assert result.returncode == 2 and "natural-language fact set" in result.stderr


def test_pretrained_probe_on_people_facts(smollm2_hooked, smollm2_tokenizer, tmp_path):
    """The probe pipeline on the real SmolLM2 (model reused from the session fixture), multi-token
    names and descriptions: the forward prompt (13 tokens) and the reverse one (14) are patched
    aligned at their end. Two layers are patched to keep the test short (one pass per cell)."""
    from facts.language import people_world

    facts = people_world(n_per_group=3, seed=1)
    probed = pretrained_probed(smollm2_hooked, smollm2_tokenizer, "people", {"backend": "hooked"})
    summary = write_probe(probed, facts, tmp_path, n_controls=2, patch_layers=[0, 29])
    table, circuits = pd.read_csv(tmp_path / "logits.csv"), pd.read_csv(tmp_path / "circuits.csv")
    assert len(table) == 18 and table["rank"].between(1, 3).all()  # among 2 controls
    assert set(circuits.circuit) == {"direct", "ov", "qk"} and len(circuits) == 9 * (1 + 2 * 270)
    assert summary["backend"] == "hooked"
    assert summary["figures"] == ["margins.png", "circuits.png", *ATTRIBUTION_FIGURES]
    for name in summary["figures"]:
        if name.endswith(".png"):
            assert_drawn(tmp_path / name)
    attribution = summary["attribution"]
    assert attribution["forward"]["prompt_tokens"][-2:] == [" for", " being"]
    assert attribution["reverse"]["answer_token"] == " Barth"  # Bartholomew Holloway, held out
    assert attribution["patching"]["layers"] == [0, 29] and attribution["patching"]["positions_from_end"] == 13
    assert_offline_view(tmp_path / "attention_reverse.html", '"L0H0"', '"L29H8"', "opera")  # 'Quiet Tide' of the opera
    # SmolLM2 never trained on these people: prior knowledge, never "train/forward"
    assert set(table.split) == {PRIOR} and set(summary["logits"]) == {f"{PRIOR}/forward", f"{PRIOR}/reverse"}
    assert not table.trained.any() and set(circuits.forward) | set(circuits.reverse) == {PRIOR}  # no file's split
    assert summary["prior_knowledge"].startswith(PRIOR) and attribution["reverse"]["split"] == PRIOR
    assert "trained direction" not in summary["captions"]["circuits.png"]
    # nothing favours one direction: the most asymmetric circuit is the largest gap either way
    gaps = {row["circuit"]: abs(row["asymmetry"]) for row in summary["circuits"] if np.isfinite(row["asymmetry"])}
    assert summary["most_asymmetric_circuit"] == max(gaps, key=gaps.get)
    # patching scores the reverse answer, the name, all its tokens
    assert attribution["reverse"]["answer"] == " Bartholomew Holloway"
    assert "reverse answer ' Bartholomew Holloway'" in attribution["patching"]["metric"]
    n_tokens = len(smollm2_tokenizer.encode(" Bartholomew Holloway", add_special_tokens=False))
    assert f"all {n_tokens} tokens" in attribution["patching"]["metric"]
    text = format_probe(summary)
    assert PRIOR in text and "train/" not in text and "forward − reverse" in text


def test_pretrained_probe_on_celebrity_facts_defines_every_summary(smollm2_hooked, smollm2_tokenizer, tmp_path):
    """Celebrity facts are held out both ways: read as prior knowledge, their circuits compare forward with
    reverse entries, so the summary is defined and circuits.png is drawn. Facts with no direction pair
    give no circuit summary: no circuits.png, and the summary says why."""
    from facts.celebrity import load_celebrity_pairs
    from facts.schema import FactSet

    celebrities = load_celebrity_pairs()
    oscar = celebrities.facts[429]  # his father "Óscar Gonzalo Hernández-Cano": SmolLM2 splits the Ó over two tokens
    assert (oscar.subject, oscar.object, oscar.reverse) == ("Oscar Isaac", "Óscar Gonzalo Hernández-Cano", "heldout")
    first = FactSet((oscar, *celebrities.facts[:5]), world="celebrity")
    probed = pretrained_probed(smollm2_hooked, smollm2_tokenizer, "celebrity", {"backend": "hooked"})
    summary = write_probe(probed, first, tmp_path / "pairs", n_controls=3, patch_layers=[29])
    assert summary["mean_asymmetry_index"] is not None and np.isfinite(summary["mean_asymmetry_index"])
    assert "circuits.png" in summary["figures"]
    assert_drawn(tmp_path / "pairs" / "circuits.png")
    forward, reverse = summary["attribution"]["forward"], summary["attribution"]["reverse"]
    assert reverse["answer"] == " Oscar Isaac"  # "Name a child of ...": the child
    assert forward["answer"] == " Óscar Gonzalo Hernández-Cano" and forward["answer_token"] == " �"  # decoded whole

    later_siblings = {fact.object: fact for fact in celebrities.facts if fact.reverse is None}  # one per parent
    one_way = FactSet(tuple(later_siblings.values())[:4], world="celebrity")
    summary = write_probe(probed, one_way, tmp_path / "one_way", n_controls=2, patch_layers=[29])
    assert summary["figures"] == ["margins.png"] and not (tmp_path / "one_way" / "circuits.png").exists()
    assert summary["mean_asymmetry_index"] is None and "circuits.png is not written" in summary["circuits_undefined"]
    assert "circuit asymmetry undefined" in format_probe(summary)


def test_a_probe_of_facts_trained_both_ways_has_no_circuits_figure_and_reports(world, vocab, tmp_path, capsys):
    """A checkpoint trained on facts all of whose directions are trained defines no trained − held-out asymmetry, so
    probe writes no circuits.png and says why; the report had refused that whole run as half-written ("circuits.png
    missing (every 'probe' run writes it)")."""
    from facts.schema import FactSet

    both = FactSet(tuple(fact for fact in world if fact.group == "both"), world=world.world)
    model = build_model("one-layer", vocab.d_vocab, seed=0)
    train(model, tokenize(both, vocab).where(split="train"), TrainConfig(steps=2, progress=False),
          checkpoint_dir=tmp_path / "run" / "checkpoints", model_card=model_card("one-layer", vocab.d_vocab, "absolute", 0))
    save_jsonl(both, tmp_path / "run" / "facts.jsonl")
    revlens_in_process(capsys, "probe", "--model", str(tmp_path / "run" / "checkpoints"), "--facts",
                       str(tmp_path / "run" / "facts.jsonl"), "--out", str(tmp_path / "probe"), "--controls", "2",
                       "--patch-layers", "0")
    summary = json.loads((tmp_path / "probe" / "summary.json").read_text())
    assert "circuits.png is not written" in summary["circuits_undefined"]
    assert not (tmp_path / "probe" / "circuits.png").exists()
    revlens_in_process(capsys, "report", "--runs", str(tmp_path / "probe"), "--out", str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Logit and circuit probes" in page and "margins.png" in page and "circuits.png is not written" in page


def test_probe_limit_takes_the_first_facts_and_records_it(run, world, tmp_path, capsys):
    for out, limit in ((tmp_path / "cut", ["--limit", "7"]), (tmp_path / "whole", [])):
        revlens_in_process(capsys, "probe", "--model", str(run / "checkpoints"), "--facts", str(run / "facts.jsonl"),
                           "--out", str(out), *limit, "--controls", "6", "--patch-layers", "0")
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    table = pd.read_csv(tmp_path / "cut" / "logits.csv")
    assert summary["limit"] == 7 and sorted(set(table.fact)) == list(range(7))
    assert len(table) == sum(1 for index, _, _ in world.statements() if index < 7)
    # ranked among the whole file's answers of each kind, as without --limit: the rank and chance do not depend on the cut
    assert set(table.n_candidates) == {len(world.facts)} and len(world.facts) > 2 * 7
    assert all(row["n_candidates"] == len(world.facts) for row in summary["logits"].values())
    whole = pd.read_csv(tmp_path / "whole" / "logits.csv")
    merged = table.merge(whole, on=["fact", "direction"], suffixes=("", "_whole"))
    assert len(merged) == len(table) and (merged["rank"] == merged["rank_whole"]).all()
    assert (merged.chance_logprob == merged.chance_logprob_whole).all()


def test_tracing_on_3_9_s_bridge_is_refused_before_the_model_loads(tmp_path, capsys):
    """3.9's bridge cannot start a run at a layer, so `--tracing --backend bridge` is refused before the folder is made
    or any model is read; under 4.x the bridge traces (tests/probes/test_tracing.py), so the same command is not
    refused for it (given a fact file that does not exist, the refusal is that file's)."""
    from analyses.cli import main
    from facts.language import people_world
    from models.backend import TL_MAJOR

    save_jsonl(people_world(n_per_group=2, seed=0), tmp_path / "people.jsonl")
    facts = tmp_path / ("people.jsonl" if TL_MAJOR < 4 else "missing.jsonl")
    code = main(["probe", "--model", "smollm2-135m", "--backend", "bridge", "--tracing", "--threads", "1", "--controls", "2",
                 "--facts", str(facts), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert ("--tracing runs on --backend hooked only" in error) == (TL_MAJOR < 4), error
    assert TL_MAJOR < 4 or str(facts) in error, error
    assert not (tmp_path / "out").exists()  # refused before the folder is made or any model is read


def test_probe_cli_patches_heads_estimates_by_attribution_and_reads_the_logit_lens(run, world, tmp_path, capsys):
    from analyses.report import find_runs, render_report

    result = revlens_in_process(capsys, "probe", "--model", str(run / "checkpoints"), "--facts",
                                str(run / "facts.jsonl"), "--head-patching", "--attribution-patching", "--logit-lens",
                                "--out", str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    extra = ["head_patching.png", "attribution_patching.png", "attribution_patching.csv"]
    assert summary["figures"] == ["margins.png", "circuits.png", *ATTRIBUTION_FIGURES, *extra,
                                  "logit_lens.png", "logit_lens.csv"]
    for name in ("head_patching.png", "attribution_patching.png", "logit_lens.png"):
        assert_drawn(tmp_path / name)
    attribution = summary["attribution"]
    estimate = attribution["attribution_patching"]
    table = pd.read_csv(tmp_path / "attribution_patching.csv")
    assert list(table.site) == ["resid_pre"] * 2 + ["z"] * 4 and list(table["index"]) == [-2, -1, 0, 1, 2, 3]
    # the exact changes are those of patching.png and head_patching.png: both start from the same corrupted run
    assert estimate["corrupted_logprob"] == pytest.approx(attribution["patching"]["corrupted_logprob"], abs=1e-5)
    assert estimate["clean_logprob"] == pytest.approx(attribution["patching"]["clean_logprob"], abs=1e-5)
    heads = table[table.site == "z"]
    best = attribution["head_patching"]["best_logprob"] - attribution["head_patching"]["corrupted_logprob"]
    assert heads.exact_change.max() == pytest.approx(best, abs=1e-4)
    r = np.corrcoef(table.exact_change, table.estimated_change)[0, 1]
    assert estimate["pearson"]["all"] == pytest.approx(r, abs=1e-6)  # (how close: tests/probes/test_attribution_patching.py)
    assert estimate["pearson"]["resid_pre"] is None  # two positions: no correlation to speak of
    assert estimate["speedup"] == pytest.approx(estimate["exact_seconds"] / estimate["seconds"])
    assert "attribution patching vs exact (6 sites)" in result.stdout and "head patching: best head L0H" in result.stdout
    # the logit lens's last stage is the model's output: its log p is logits.csv's (one-token answers)
    lens = pd.read_csv(tmp_path / "logit_lens.csv")
    final = lens[lens.stage == lens.stage.iloc[-1]].set_index(["fact", "direction"]).logprob
    logits = pd.read_csv(tmp_path / "logits.csv").set_index(["fact", "direction"]).logprob
    assert len(final) == len(logits) and np.allclose(final.loc[logits.index], logits, atol=1e-4)
    assert "logit lens of 400 statements" in result.stdout
    page = render_report(find_runs([tmp_path]))
    assert "Attribution patching (first-order estimate" in page and "Logit lens: mean log p" in page


@pytest.fixture(scope="module")
def tiny_llama_folder(tiny_tokenizer, tmp_path_factory):
    """A two-layer random Llama with SmolLM2's tokenizer cut to its first tokens, as a local Hugging Face folder."""
    from tiny_models import save_tiny, tiny_config

    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), tiny_config("llama"), tiny_tokenizer)


def test_probe_cli_names_a_berglund_folder_s_multiple_choice_questions_by_their_facts(tiny_llama_folder, tmp_path,
                                                                                        capsys):
    """A Berglund folder's questions call the trained direction "forward": a d2p question asked as trained
    (description → name) was labelled "forward" in multiple_choice.csv, where logits.csv calls that direction of
    the same fact (name → description) "reverse", and its ``fact`` was the trained statement's number, not the
    fact's row. Every question now asks for the answer logits.csv gives its fact and direction."""
    folder = tmp_path / "berglund"
    revlens_in_process(capsys, "make-facts", "people", "--size", "2", "--format", "berglund", "--out", str(folder))
    out = tmp_path / "probe"
    revlens_in_process(capsys, "probe", "--model", str(tiny_llama_folder), "--facts", str(folder), "--controls", "1",
                       "--patch-layers", "0", "--multiple-choice", "2", "--threads", "1", "--out", str(out))
    asked = pd.read_csv(out / "multiple_choice.csv")
    logits = pd.read_csv(out / "logits.csv").set_index(["fact", "direction"])
    assert {"p2d", "d2p"} <= set(asked.group) and {"forward", "reverse"} == set(asked.direction)
    for row in asked.itertuples():
        assert logits.loc[(row.fact, row.direction), "answer"].strip() == row.answer, row


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_probe_cli_asks_multiple_choice_on_a_fact_file(tiny_llama_folder, suffix, tmp_path, capsys):
    """`probe --multiple-choice K` of a text model on a fact JSONL or CSV: the questions are the facts' own in
    the default sentences (it failed with a TypeError: no training-paraphrase count reached the questions)."""
    facts = tmp_path / f"people{suffix}"
    revlens_in_process(capsys, "make-facts", "people", "--size", "2", "--out", str(facts))
    templates = []
    if suffix == ".csv":  # a CSV names no world, so its sentences come from a templates file
        (tmp_path / "templates.jsonl").write_text("".join(
            json.dumps({"relation": relation, "split": split, "template": template}) + "\n"
            for relation in ("p2d", "d2p")
            for split, template in (("train", "{given} is {answer}."), ("test", "{given}, famously, is {answer}."))))
        templates = ["--templates-file", str(tmp_path / "templates.jsonl")]
    out = tmp_path / "probe"
    result = revlens_in_process(capsys, "probe", "--model", str(tiny_llama_folder), "--facts", str(facts), *templates,
                                "--controls", "1", "--patch-layers", "0", "--multiple-choice", "2", "--threads", "1",
                                "--out", str(out))
    table = pd.read_csv(out / "multiple_choice.csv")
    assert len(table) and set(table.n_options) == {2}
    # a model never trained on the file: each question is named by its fact's direction, as logits.csv names it
    # (a d2p group's "forward" question, in its trained order, asks the fact's reverse)
    assert set(table.setting) == {"forward", "reverse"} and (table.setting == table.direction).all()
    assert set(table.split) == {PRIOR} and {"p2d", "d2p"} <= set(table.group)
    assert "multiple_choice" in json.loads((out / "summary.json").read_text())
    assert "multiple_choice.csv" in result.stdout
