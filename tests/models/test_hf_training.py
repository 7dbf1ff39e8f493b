"""Training on the transformers model, converting to a HookedTransformer, LoRA: exact identities on
tiny random HF models (``tests/support/tiny_models.py``; no SmolLM2 fine-tune here: the real-model
figures are in ``benchmarks/finetune_throughput.py``).

- (the answer-only unembedding and the trainer's cut batch against the full forward pass, on
  every architecture: ``tests/models/test_architectures.py``)
- a model trained through the trainer converts to a HookedTransformer with the same log-probs
  (< 1e-4), on a tied-embedding Llama (SmolLM2's architecture), on Qwen2 and on Gemma 3;
- `finetune-facts` runs end to end on a tiny Gemma 3 (BOS declared by its files);
- LoRA changes only the adapted matrices, and the merged, converted model equals the HF model
  with its adapters; bad LoRA options are refused naming the valid ones.
- `finetune-facts` draws its circuit controls with the run's seed.
"""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from tests_support import assert_first_record_is_the_model_s_evaluation
from tiny_models import padded_answers, save_tiny, tiny_config

from analyses.finetune import FinetuneConfig
from models.hf_training import CausalLM, add_lora, lora_target_names, merge_lora
from models.pretrained import check_equivalence, freeze_except_last_blocks, load_hf, load_tokenizer, to_hooked
from models.training import TrainConfig, train

PROMPTS = ["Ann Lee, known for", "The first person to walk on the moon was", "a b c d e f g"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny_hf(tiny_tokenizer, tmp_path_factory):
    """Folders of tiny random models: a Llama with tied embeddings (as SmolLM2), Qwen2, Gemma 2, and a
    Gemma 3 whose tokenizer_config.json declares BOS before every encoding (as Gemma's files do)."""
    root = tmp_path_factory.mktemp("hf-training")
    configs = {"llama": tiny_config("llama"), "qwen2": tiny_config("qwen2"), "gemma2": tiny_config("gemma2"),
               "gemma3": tiny_config("gemma3")}
    configs["llama"].tie_word_embeddings = True
    folders = {name: save_tiny(root / name, config, tiny_tokenizer) for name, config in configs.items()}
    settings = folders["gemma3"] / "tokenizer_config.json"
    settings.write_text(json.dumps(dict(json.loads(settings.read_text()), add_bos_token=True)))
    return folders


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    return padded_answers(tiny_tokenizer)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3"])
def test_trained_transformers_model_converts_to_the_same_hooked_model(name, tiny_hf, batch):
    hf, tokenizer = load_hf(tiny_hf[name], device="cpu")
    before = copy.deepcopy(hf)
    train(CausalLM(hf), batch, TrainConfig(steps=3, lr=1e-2, weight_decay=0.0, eval_every=3, progress=False))
    moved = max((a - b).abs().max().item() for a, b in zip(hf.parameters(), before.parameters()))
    assert moved > 1e-3  # the weights did change
    hooked = to_hooked(hf.eval(), tokenizer, tiny_hf[name], device="cpu")
    assert check_equivalence(hooked, hf, PROMPTS, tokenizer) < TOLERANCE
    assert check_equivalence(hooked, before, PROMPTS, tokenizer) > 100 * TOLERANCE  # and the trained one is read
    if name == "llama":  # tied: the one trained matrix is both the hooked model's embedding and unembedding
        assert torch.equal(hooked.W_E, hooked.W_U.T) and torch.equal(hooked.W_E, hf.get_input_embeddings().weight)
    assert_forward_copies_no_weight(hooked)
    hf_weights = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    assert not any(p.untyped_storage().data_ptr() in hf_weights for p in hooked.parameters())  # its own copy


def assert_forward_copies_no_weight(hooked):
    """Every matrix is laid out as TransformerLens 3.9's forward hands it to ``F.linear`` (``W_in.T``, W_Q
    rearranged to ``(h d) m``, W_O to ``m (h d)``, ``W_U.T``: transformers' own layout), so those are views,
    not a copy of the weights on every forward pass."""
    for block in hooked.blocks:
        attention, mlp = block.attn, block.mlp
        for weight in (attention.W_Q, getattr(attention, "_W_K", attention.W_K), getattr(attention, "_W_V", attention.W_V)):
            assert weight.permute(0, 2, 1).is_contiguous()  # h m d -> h d m
        assert attention.W_O.permute(2, 0, 1).is_contiguous()  # h d m -> m h d
        for weight in (mlp.W_in, mlp.W_gate, mlp.W_out):
            assert weight.T.is_contiguous()
    assert hooked.W_U.T.is_contiguous()


def test_freezing_blocks_of_a_transformers_model(tiny_hf):
    hf, _ = load_hf(tiny_hf["qwen2"], device="cpu")
    trainable = freeze_except_last_blocks(hf, 1)
    assert trainable and all(name.startswith("model.layers.1.") for name in trainable)
    assert sum(p.requires_grad for p in hf.parameters()) == len(list(hf.model.layers[1].parameters()))
    with pytest.raises(ValueError, match="trainable blocks must be 1…2"):
        freeze_except_last_blocks(hf, 3)


def test_lora_changes_only_adapted_matrices_and_merges_exactly(tiny_hf, batch):
    hf, tokenizer = load_hf(tiny_hf["llama"], device="cpu")
    original = {name: p.detach().clone() for name, p in hf.named_parameters()}
    adapted, targets = add_lora(hf, rank=2, targets=["q_proj", "down_proj"])
    assert targets == ["q_proj", "down_proj"]
    assert all("lora_" in name for name, p in adapted.named_parameters() if p.requires_grad)
    train(CausalLM(adapted), batch, TrainConfig(steps=3, lr=1e-2, weight_decay=0.0, eval_every=3, progress=False))
    adapted.eval()
    with_adapters = copy.deepcopy(adapted)
    merged = merge_lora(adapted)
    changed = {name for name, p in merged.named_parameters() if not torch.equal(p, original[name])}
    assert changed == {f"model.layers.{layer}.{part}.weight" for layer in range(2)
                       for part in ("self_attn.q_proj", "mlp.down_proj")}
    hooked = to_hooked(merged, tokenizer, tiny_hf["llama"], device="cpu")
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    with torch.no_grad():
        reference = with_adapters(input_ids=ids).logits.log_softmax(-1)
        assert (hooked(ids).log_softmax(-1) - reference).abs().max() < TOLERANCE


def test_a_seed_fixes_the_lora_start_and_the_dropout_of_training(tiny_hf, batch, tiny_tokenizer, tmp_path):
    """The same seed gives the same LoRA adapters and the same trained weights under dropout, whatever state
    torch's generator was in (another process's, or one a sweep's earlier trial moved): peft draws the adapters'
    start and transformers' dropout draws in train mode from that generator. Before, two runs of one seed
    differed (a LoRA fine-tune's margin 8.7 against 9.9)."""
    def adapters(seed: int, noise: int) -> dict[str, torch.Tensor]:
        hf, _ = load_hf(tiny_hf["llama"], device="cpu")
        torch.manual_seed(noise)
        adapted, _ = add_lora(hf, rank=2, targets=["v_proj"], seed=seed)
        return {name: p.detach().clone() for name, p in adapted.named_parameters() if "lora_" in name}

    first, again, other = adapters(0, noise=1), adapters(0, noise=2), adapters(1, noise=1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)  # the seed is what chose them

    gpt2 = save_tiny(tmp_path / "gpt2", tiny_config("gpt2"), tiny_tokenizer)
    assert load_hf(gpt2, device="cpu")[0].config.resid_pdrop > 0  # dropout in train mode

    def trained(noise: int) -> list[torch.Tensor]:
        hf, _ = load_hf(gpt2, device="cpu")
        torch.manual_seed(noise)
        dropped = []  # whether the embedding dropout ran in train mode, and what it dropped
        hook = hf.transformer.drop.register_forward_hook(
            lambda module, inputs, output: dropped.append((module.training, bool((output == 0).any()))))
        try:
            train(CausalLM(hf), batch, TrainConfig(steps=2, lr=1e-2, weight_decay=0.0, eval_every=2, progress=False))
        finally:
            hook.remove()
        assert (True, True) in dropped  # dropout drew during training: the runs' equality is not eval mode's
        return [p.detach().clone() for p in hf.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(1), trained(2)))


def test_tracing_own_facts_whose_reverse_has_only_questions_runs(tiny_hf, tmp_path):
    """A templates file with training sentences for the trained relation and questions alone for its inverse (all
    questions_from_facts needs): causal tracing had failed on the held-out reverse, after the model loaded and the
    questions were asked ("no template number 0 for relation 'was taught by'"); it traces it as it is asked."""
    from analyses.cli import main

    (tmp_path / "facts.csv").write_text("subject,relation,object,inverse_relation\n"
                                        + "".join(f"{a},taught,{b},was taught by\n" for a, b in
                                                  (("Ann Lee", "Bo Kim"), ("Cy Fox", "Di Park"), ("Ed Gray", "Flo Hart"))))
    lines = [("taught", "train", "{given} taught {answer}."), ("taught", "test", "Who did {given} teach? {answer}"),
             ("was taught by", "test", "Who taught {given}? {answer}")]
    (tmp_path / "templates.jsonl").write_text("".join(json.dumps({"relation": r, "split": split, "template": t}) + "\n"
                                                      for r, split, t in lines))
    out = tmp_path / "out"
    assert main(["finetune-facts", "--model", str(tiny_hf["llama"]), "--facts", str(tmp_path / "facts.csv"),
                 "--templates-file", str(tmp_path / "templates.jsonl"), "--train-paraphrases", "1", "--controls", "1",
                 "--epochs", "1",
                 "--tracing-facts", "1", "--quiet", "--out", str(out)]) == 0
    traced = pd.read_csv(out / "tracing.csv")
    assert set(traced.direction) == {"forward", "reverse"} and traced.effect.notna().any()


def test_finetune_facts_runs_on_gemma3_end_to_end(tiny_hf, tmp_path):
    """The command on a tiny random Gemma 3 (sandwich norms, sliding window, BOS declared by its files): it
    trains the transformers model, converts it to a HookedTransformer through the Gemma config, and asks (in open
    completion and as multiple choice), traces and reads circuits before and after, every prompt starting with
    BOS."""
    from analyses.cli import main

    folder = tiny_hf["gemma3"]
    tokenizer = load_tokenizer(folder)
    assert tokenizer.encode("Ann")[0] == tokenizer.bos_token_id  # the declaration is followed
    out = tmp_path / "gemma3"
    assert main(["finetune-facts", "--model", str(folder), "--people", "4", "--controls", "2", "--epochs", "1",
                 "--tracing-facts", "1", "--multiple-choice", "4", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for prefix, stage in (("before_", "before"), ("", "after")):
        choices = pd.read_csv(out / f"{prefix}multiple_choice.csv")
        assert summary["multiple_choice"][stage]["options"] == 4 and len(choices) > 0
        assert (choices[[f"p_{letter}" for letter in "ABCD"]].sum(axis=1) - 1).abs().max() < 1e-6
    assert summary["steps"] >= 1 and {"forward_trained_paraphrase", "reverse"} <= set(summary["groups"]["p2d"])
    for setting in summary["groups"]["p2d"].values():
        assert all(math.isfinite(setting[stage]["logprob"]) for stage in ("before", "after"))
    assert (out / "questions.csv").read_text() != (out / "before_questions.csv").read_text()  # training moved them
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [0, summary["steps"]]
    assert_first_record_is_the_model_s_evaluation(history[0], *load_hf(folder), FinetuneConfig(
        model=str(folder), people=4, n_controls=2))
    assert summary["tracing"]["headline"] and (out / "tracing_after.png").is_file()
    # the stages' times are disjoint intervals of the run, so the total holds them all, the tracing after
    # fine-tuning (the run's last stage) too
    seconds, tracing = summary["seconds"], summary["tracing"]
    assert seconds["trace"] >= tracing["statements"] * sum(tracing["seconds_per_statement"].values())
    assert seconds["total"] >= sum(seconds[stage] for stage in ("load", "train", "convert", "evaluate", "trace"))


def test_bad_lora_options_are_refused(tiny_hf):
    hf, _ = load_hf(tiny_hf["llama"], device="cpu")
    valid = lora_target_names(hf)
    assert valid == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with pytest.raises(ValueError, match="LoRA rank must be an integer ≥ 1, got 0"):
        add_lora(hf, rank=0)
    with pytest.raises(ValueError, match="LoRA alpha must be a finite number > 0, got -1.0"):
        add_lora(hf, rank=2, alpha=-1.0)
    with pytest.raises(ValueError, match=r"\['qkv'\] are not linear layers.*valid: down_proj, gate_proj, k_proj"):
        add_lora(hf, rank=2, targets=["q_proj", "qkv"])
    assert not any("lora_" in name for name, _ in hf.named_parameters())  # nothing was wrapped
    import transformers  # GPT-2's projections are Conv1D: the refusal said "valid: " and nothing after it

    gpt2 = transformers.AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel's blocks hold no torch Linear layer for LoRA to adapt"):
        add_lora(gpt2, rank=2)


def test_finetune_facts_with_lora_end_to_end(tiny_hf, tmp_path, capsys):
    """The command on a tiny Llama folder: LoRA recorded in summary.json, the trained model probed;
    bad LoRA options refused in one line, before anything is trained."""
    import json

    from analyses.cli import main

    small = ["--model", str(tiny_hf["llama"]), "--people", "4", "--controls", "2", "--epochs", "1", "--quiet"]
    out = tmp_path / "lora"
    assert main(["finetune-facts", *small, "--lora-rank", "2", "--lora-targets", "v_proj", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["lora_rank"] == 2 and summary["config"]["lora_targets"] == ["v_proj"]
    assert summary["questions_asked_of"] == "TransformerLens conversion, by trie"  # LoRA wraps the transformers model
    assert summary["lora"] == {"rank": 2, "alpha": 4, "targets": ["v_proj"],
                               "trainable_parameters": 2 * 2 * (64 + 32)}  # 2 layers × r·(d_in + d_out)
    questions = (out / "questions.csv").read_text()
    assert questions != (out / "before_questions.csv").read_text()  # the adapters moved the answers
    capsys.readouterr()
    refused = {("--lora-rank", "2", "--lora-targets", "qkv"): "valid: down_proj, gate_proj, k_proj",
               ("--lora-alpha", "4"): "lora_alpha (--lora-alpha) set without lora_rank (--lora-rank)",
               ("--lora-rank", "2", "--trainable-blocks", "1"):
                   "LoRA (lora_rank, --lora-rank) and trainable_blocks (--trainable-blocks): choose one"}
    for number, (options, message) in enumerate(refused.items()):
        assert main(["finetune-facts", *small, *options, "--out", str(tmp_path / f"bad{number}")]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' loading bar, if any)
        assert last.startswith("revlens: error: ") and message in last
    with pytest.raises(SystemExit):
        main(["finetune-facts", *small, "--lora-rank", "0", "--out", str(tmp_path / "zero")])
    assert "--lora-rank" in capsys.readouterr().err


def test_finetune_facts_draws_its_circuit_controls_with_the_runs_seed(tiny_hf, tmp_path):
    """On one fact file the model before fine-tuning is the same for every seed, so its circuit z-scores differ
    between seeds only through their controls; those were drawn with seed 0 whatever ``--seed`` said, so every
    seed of a sweep reported the same "before" circuits, and their interval left out the controls' variance."""
    import pandas as pd

    from analyses.cli import main

    facts = tmp_path / "people.jsonl"
    assert main(["make-facts", "people", "--size", "4", "--out", str(facts)]) == 0
    before = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert main(["finetune-facts", "--model", str(tiny_hf["llama"]), "--facts", str(facts), "--controls", "2",
                     "--epochs", "1", "--tracing-facts", "0", "--multiple-choice", "0", "--seed", str(seed),
                     "--quiet", "--out", str(out)]) == 0
        table = pd.read_csv(out / "before_circuits.csv")
        before[seed] = table.sort_values(["fact", "circuit"])[["entry_ab", "z_ab"]].to_numpy()
    assert before[0][:, 0].tolist() == before[1][:, 0].tolist()  # the same model, the same entries
    assert (before[0][:, 1] != before[1][:, 1]).mean() > 0.5  # read against other controls
