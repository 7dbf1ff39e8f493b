"""The trainer on a real HookedTransformer: learning, determinism, exact resume, faults."""

import json

import pytest
import torch

from facts.tokens import tokenize
from models.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, restore_model
from models.scoring import score_answers
from models.training import TrainConfig, TrainingError, batch_rows, train
from models.transformer import build_model

CONFIG = TrainConfig(steps=12, lr=1e-2, batch_size=64, eval_every=4, progress=False)


@pytest.fixture(scope="module")
def batch(world, vocab):
    return tokenize(world, vocab)


def fresh(vocab):
    return build_model("one-layer", vocab.d_vocab, seed=0)


def test_training_fits_trained_facts_and_not_heldout_reverse(batch, vocab):
    model = fresh(vocab)
    result = train(model, batch.where(split="train"), TrainConfig(steps=40, progress=False, eval_every=10),
                   eval_sets={"train": batch.where(split="train"), "heldout": batch.where(split="heldout")})
    first, last = result.history[0]["eval"], result.history[-1]["eval"]
    assert last["train"]["prob"] > 0.99 > first["train"]["prob"]
    assert last["heldout"]["accuracy"] == 0.0
    assert [h["step"] for h in result.history] == [0, 10, 20, 30, 40]


def test_loss_is_on_answer_tokens_only(batch, vocab):
    """Changing a prompt token's target would change the loss if prompts carried loss: they don't. The loss is
    the mean −log p of the answer tokens, read at the positions before them, and the scorer's sum of the same."""
    from models.scoring import answer_loss

    model = fresh(vocab)
    train_set = batch.where(split="train")
    logits = model(train_set.tokens).detach()
    loss = answer_loss(logits, train_set.tokens, train_set.answer_mask)
    other = torch.where(train_set.answer_mask, train_set.tokens, (train_set.tokens + 1) % vocab.d_vocab)
    assert not torch.equal(other, train_set.tokens)  # every prompt target changed, the logits kept
    assert torch.equal(answer_loss(logits, other, train_set.answer_mask), loss)
    rows, columns = train_set.answer_mask.nonzero(as_tuple=True)  # by hand: the answer tokens and their positions
    by_hand = -logits.log_softmax(-1)[rows, columns - 1, train_set.tokens[rows, columns]].mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)
    scores = score_answers(model, train_set)  # one answer token a statement: the mean of the scorer's log p
    assert torch.allclose(loss.cpu(), -scores.logprob.mean().cpu(), atol=1e-5)


def test_same_seed_same_history(batch, vocab):
    runs = [train(fresh(vocab), batch.where(split="train"), CONFIG, eval_sets={"all": batch}) for _ in range(2)]
    assert runs[0].history == runs[1].history


def test_batches_are_a_pure_function_of_the_step():
    assert torch.equal(batch_rows(100, 7, 32, seed=3), batch_rows(100, 7, 32, seed=3))
    epoch = torch.cat([batch_rows(100, s, 32, seed=3) for s in range(4)])
    assert sorted(epoch.tolist()) == list(range(100))
    assert not torch.equal(batch_rows(100, 0, 32, seed=3), batch_rows(100, 4, 32, seed=3))


def test_runs_of_different_seeds_share_no_epoch_order():
    """Seeds of a sweep are independent draws: no epoch's batch order of one seed is another seed's (with epoch e
    seeded ``seed + e``, seed 4's epoch 0 was seed 3's epoch 1). Seed 0 keeps its orders, and so its numbers."""
    orders = {(seed, epoch): tuple(torch.cat([batch_rows(40, epoch * 4 + k, 10, seed) for k in range(4)]).tolist())
              for seed in range(6) for epoch in range(8)}
    assert len(set(orders.values())) == len(orders)
    seed_zero = [torch.randperm(40, generator=torch.Generator().manual_seed(epoch)) for epoch in range(8)]
    assert all(torch.equal(batch_rows(40, epoch * 4, 10, seed=0), seed_zero[epoch][:10]) for epoch in range(8))


def test_a_step_s_dropout_draws_from_a_stream_of_its_own_not_its_epoch_s_batch_order():
    """Step e's generator (dropout inside the forward pass) was seeded as epoch e's batch order: step 0 of every run
    drew the permutation that ordered its first epoch."""
    from models.training import derived_seed, seed_generators, step_seed

    for seed in range(4):
        for step in range(3):
            seed_generators(step_seed(seed, step), torch.device("cpu"))
            drawn = torch.randperm(40)
            order = torch.randperm(40, generator=torch.Generator().manual_seed(derived_seed(seed, step)))
            assert not torch.equal(drawn, order)
    assert len({step_seed(seed, step) for seed in range(20) for step in range(20)}) == 400


def test_resume_from_a_mid_run_checkpoint_gives_the_same_final_numbers(batch, vocab, tmp_path):
    train_set = batch.where(split="train")
    card = {"kind": "hooked", "name": "one-layer"}
    whole = fresh(vocab)
    uninterrupted = train(whole, train_set, CONFIG, eval_sets={"all": batch})

    interrupted = TrainConfig(**{**CONFIG.__dict__, "steps": 8, "checkpoint_every": 4})
    train(fresh(vocab), train_set, interrupted, eval_sets={"all": batch}, checkpoint_dir=tmp_path, model_card=card)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004.json", "step-000008.json"]
    resumed_model = fresh(vocab)
    resumed = train(resumed_model, train_set, CONFIG, eval_sets={"all": batch}, checkpoint_dir=tmp_path,
                    model_card=card, resume=True)
    assert resumed.history == uninterrupted.history
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name
    meta = json.loads(list_checkpoints(tmp_path)[-1].read_text())
    assert meta["step"] == 12 and meta["model"] == card


def test_a_finished_run_resumed_with_more_steps_has_the_longer_run_s_history(batch, vocab, tmp_path):
    """A run of 6 steps evaluated every 4 records its last step (6) too; resumed to 12 steps, that off-schedule
    record had stayed in the history ([0, 4, 6, 8, 12]), which the uninterrupted 12 steps never make."""
    train_set = batch.where(split="train")
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 6, "eval_every": 4, "checkpoint_every": 4})
    long = TrainConfig(**{**CONFIG.__dict__, "steps": 12, "eval_every": 4, "checkpoint_every": 4})
    assert [h["step"] for h in train(fresh(vocab), train_set, short, checkpoint_dir=tmp_path).history] == [0, 4, 6]
    resumed = train(fresh(vocab), train_set, long, checkpoint_dir=tmp_path, resume=True)
    uninterrupted = train(fresh(vocab), train_set, long)
    assert [h["step"] for h in resumed.history] == [0, 4, 8, 12]
    assert resumed.history == uninterrupted.history


def test_a_run_resumed_to_an_intermediate_checkpoint_s_step_ends_with_its_evaluation(batch, vocab, tmp_path):
    """A 12-step run killed after step 6 (checkpoints every 2, evaluated every 8) resumed with --steps 6 trained
    nothing and kept the checkpoint's history, [0]: its last record, read as the final numbers, was the untrained
    model's. It ends with step 6's evaluation and training loss, as the uninterrupted 6 steps do (the loss had been
    None: a checkpoint did not keep it), and a final checkpoint holding it. A callback's values read back as a
    checkpoint keeps them ({0: x} as {"0": x}) in both runs."""
    train_set = batch.where(split="train")
    long = TrainConfig(**{**CONFIG.__dict__, "steps": 12, "eval_every": 8, "checkpoint_every": 2})
    short = TrainConfig(**{**CONFIG.__dict__, "steps": 6, "eval_every": 8, "checkpoint_every": 2})
    train(fresh(vocab), train_set, long, eval_sets={"all": batch}, checkpoint_dir=tmp_path)
    for later in list_checkpoints(tmp_path)[3:]:  # killed after step 6
        later.unlink()
        later.with_suffix(".safetensors").unlink()
    by_layer = [lambda step, model: {"by_layer": {0: float(step)}, "pair": (1, 2)}]
    resumed = train(fresh(vocab), train_set, short, eval_sets={"all": batch}, checkpoint_dir=tmp_path, resume=True,
                    callbacks=by_layer)
    uninterrupted = train(fresh(vocab), train_set, short, eval_sets={"all": batch}, callbacks=by_layer)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in uninterrupted.history] == [0, 6]
    assert resumed.history[-1] == uninterrupted.history[-1]
    assert uninterrupted.history[-1]["by_layer"] == {"0": 6.0} and uninterrupted.history[-1]["pair"] == [1, 2]
    assert resumed.history[-1]["loss"] > 0
    with pytest.raises(TrainingError, match=r"step 0: a callback returned a value a history cannot hold"):
        train(fresh(vocab), train_set, short, callbacks=[lambda step, model: {"w": torch.ones(1)}])
    assert json.loads(list_checkpoints(tmp_path)[-1].read_text())["history"][-1]["step"] == 6


def test_truncated_checkpoint_is_refused_whole(batch, vocab, tmp_path):
    train(fresh(vocab), batch.where(split="train"), TrainConfig(steps=2, progress=False), checkpoint_dir=tmp_path)
    tensors = tmp_path / "step-000002.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_another_config_is_refused(batch, vocab, tmp_path):
    train(fresh(vocab), batch.where(split="train"), TrainConfig(steps=1, progress=False), checkpoint_dir=tmp_path)
    other = build_model("tiny", vocab.d_vocab)
    with pytest.raises(CheckpointError, match="does not match the model config"):
        restore_model(other, load_checkpoint(tmp_path))


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(batch, vocab, tmp_path):
    model = fresh(vocab)
    train_set = batch.where(split="train")
    train(model, train_set, TrainConfig(steps=2, progress=False), checkpoint_dir=tmp_path)
    with torch.no_grad():
        model.unembed.W_U.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train(model, train_set, TrainConfig(steps=4, progress=False), checkpoint_dir=tmp_path / "next")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002.json"]
    assert list_checkpoints(tmp_path / "next") == []


@pytest.mark.parametrize("kwargs, named", [
    (dict(steps=0), "steps must be ≥ 1"), (dict(lr=0.0), "lr must be"), (dict(lr=float("nan")), "lr must be"),
    (dict(batch_size=0), "batch_size must be ≥ 1"),
    # a NaN weight decay passed torch's SGD and made the loss NaN ("lower the learning rate"); a float step count
    # failed later inside range()
    (dict(weight_decay=float("nan")), "weight_decay must be a finite number ≥ 0"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number ≥ 0"),
    (dict(steps=2.5), "steps must be an integer"), (dict(eval_every=True), "eval_every must be an integer"),
])
def test_bad_train_config(kwargs, named):
    with pytest.raises(TrainingError, match=named):
        TrainConfig(**kwargs)
    assert TrainConfig(steps=__import__("numpy").int64(3)).steps == 3  # a numpy integer is an integer


@pytest.mark.parametrize("cap", [None, 3.0])
def test_chosen_logprobs_equal_the_full_logits_log_softmax(monkeypatch, cap):
    """A slice of the vocabulary at a time (here 16 columns: 50 tokens make slices of 16, 16, 16 and 2), from given
    logits (``chosen_logprobs``) or from the residual stream and the unembedding (``unembedded_logprobs``, the
    logits never held, its products 3 rows at a time: 7 rows make blocks of 3, 3 and 1), the chosen tokens'
    log-probabilities are those of one log-softmax over ``softcap(x · W + b)`` computed in float64 (to 1e-5), and
    the hits are argmax's, ties going to the lowest token id: columns 5 and 40 are the same, so a row whose
    maximum they are hits 5 and not 40."""
    import models.scoring as scoring

    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(8, 50, generator=generator), torch.randn(50, generator=generator)
    weight[:, 40], bias[40] = weight[:, 5], bias[5]
    residual = torch.randn(7, 8, generator=generator)
    residual[0] = 3 * weight[:, 5] / weight[:, 5].norm()  # row 0's largest logit: tokens 5 and 40, tied
    chosen = torch.randint(0, 50, (7, 4), generator=generator)
    chosen[0, :2] = torch.tensor([5, 40])
    exact = residual.double() @ weight.double() + bias.double()
    exact = cap * torch.tanh(exact / cap) if cap else exact
    assert exact[0].argmax() == 5 and exact[0, 40] == exact[0, 5]
    logits = residual @ weight + bias
    logits = cap * torch.tanh(logits / cap) if cap else logits
    given = logits.clone()
    monkeypatch.setattr(scoring, "UNEMBED_ROWS", 3)
    monkeypatch.setattr(scoring, "UNEMBED_SLICE", 16)
    for logprob, hit in (scoring.chosen_logprobs(logits, chosen),
                         scoring.unembedded_logprobs(residual, scoring.Unembedding(weight, bias, cap), chosen)):
        assert (logprob.double() - exact.log_softmax(-1).gather(-1, chosen)).abs().max() < 1e-5
        assert torch.equal(hit, exact.argmax(-1, keepdim=True) == chosen) and hit[0, 0] and not hit[0, 1]
    assert torch.equal(logits, given)  # the logits given are read, not written
    for scores in (lambda ids: scoring.chosen_logprobs(logits, ids),
                   lambda ids: scoring.unembedded_logprobs(residual, scoring.Unembedding(weight, bias, cap), ids)):
        many, many_hit = scores(chosen)
        one, one_hit = scores(chosen[:, 0])  # one id a row: shape [n]
        assert torch.equal(one, many[:, 0]) and torch.equal(one_hit, many_hit[:, 0])


def test_teacher_forcing_reads_a_transformers_head_input_as_its_logits_and_refuses_a_head_it_cannot_read(tiny_models):
    """``score_answers`` of a transformers causal LM (as ``CausalLM``) and of a bridge with no hook reads the head's
    input at the answer-predicting rows a slice of the vocabulary at a time: the same log-probabilities and hits as
    the model's own full logits (Llama; Gemma 2, soft-capped), and the same through a bridge with a hook, which
    runs its logits. A Cohere's head scales its logits (``logit_scale`` 0.5 here): its unembedding is refused by
    name, and its scores are read from its logits, so they are still its own."""
    import transformers

    from facts.tokens import Example, collate
    from models.hf_training import CausalLM
    from models.scoring import model_unembedding, score_answers, token_logprobs

    examples = [Example((3, 17, 5, 9), (11, 4, 8), 0, "forward", "train"), Example((3, 2), (30, 7), 1, "forward", "train"),
                Example((6, 1, 12), (40,), 2, "reverse", "train")]
    batch = collate(examples, 0)

    def own(hf):
        with torch.no_grad():
            logprob, hit = token_logprobs(hf(input_ids=batch.tokens).logits, batch.tokens, batch.answer_mask)
        return logprob.sum(1), hit.all(1)

    for name in ("llama", "gemma2"):
        tiny = tiny_models[name]
        reference = own(tiny.hf)
        bridge = tiny.backends["bridge"]
        read = [score_answers(CausalLM(tiny.hf), batch), score_answers(bridge, batch)]
        with bridge.hooks(fwd_hooks=[("unembed.hook_out", lambda x, hook: x)]):
            read.append(score_answers(bridge, batch))
        for scores in read:
            torch.testing.assert_close(scores.logprob, reference[0], rtol=0, atol=1e-5)
            assert torch.equal(scores.correct, reference[1]), name

    config = transformers.CohereConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, logit_scale=0.5)
    cohere = transformers.CohereForCausalLM(config).eval()
    with pytest.raises(TypeError, match=r"CohereForCausalLM \(cohere\)'s unembedding is not read here"):
        model_unembedding(cohere)
    scores, reference = score_answers(CausalLM(cohere), batch), own(cohere)
    torch.testing.assert_close(scores.logprob, reference[0], rtol=0, atol=1e-5)
    assert torch.equal(scores.correct, reference[1])


def test_the_unembedding_read_is_the_one_each_model_applies(tiny_models):
    """What :func:`models.scoring.model_unembedding` reads gives each model's own logits: a HookedTransformer's
    ``ln_final`` output through W_U and b_U, a transformers model's (and a bridge's, under its wrapper) last hidden
    state through its head; soft-capped Gemma 2 included. A model with no such head is refused by name."""
    from models.backend import is_hooked
    from models.bilinear import BilinearModel
    from models.scoring import hooked_final_norm, model_unembedding

    tokens = torch.tensor([[1, 5, 9, 3, 7]])
    for name in ("llama", "gemma2"):
        tiny = tiny_models[name]
        for model in [*tiny.backends.values(), tiny.hf]:
            runs = getattr(model, "original_model", model)  # a bridge's transformers model
            unembedding = model_unembedding(runs)
            with torch.no_grad():
                if is_hooked(model):
                    logits = model(tokens)[0]
                    final = hooked_final_norm(model, model(tokens, stop_at_layer=model.cfg.n_layers)[0])
                else:
                    logits = runs(input_ids=tokens).logits[0]
                    final = runs.base_model(input_ids=tokens).last_hidden_state[0]
                z = final @ unembedding.weight + (0 if unembedding.bias is None else unembedding.bias)
                z = unembedding.softcap * torch.tanh(z / unembedding.softcap) if unembedding.softcap else z
            assert (unembedding.softcap is not None) == (name == "gemma2"), (name, type(model).__name__)
            torch.testing.assert_close(z, logits, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="BilinearModel"):
        model_unembedding(BilinearModel(10, 4))
