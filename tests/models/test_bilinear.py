"""The paper's bilinear model, trained by the common trainer."""

import pytest
import torch

from facts.tokens import tokenize
from models.bilinear import BilinearModel
from models.training import TrainConfig, train


def test_embeddings_are_fixed_gaussian_and_theta_starts_at_zero():
    model = BilinearModel(d_vocab=500, d_model=256, seed=0)
    assert [name for name, _ in model.named_parameters()] == ["theta"]
    assert torch.equal(model.theta, torch.zeros(256, 256))
    norms = model.U.norm(dim=1)
    assert abs(float(norms.mean()) - 1.0) < 0.05  # u ~ N(0, I/d): unit norm in expectation
    cosines = (model.U @ model.U.T)[~torch.eye(500, dtype=torch.bool)]
    assert float(cosines.abs().mean()) < 0.1  # nearly orthogonal for large d


def test_logits_read_the_first_token_as_context():
    model = BilinearModel(d_vocab=20, d_model=8, seed=1)
    torch.nn.init.normal_(model.theta)
    tokens = torch.tensor([[3, 0, 7], [5, 1, 9]])
    logits = model(tokens)
    expected = model.U[torch.tensor([3, 5])] @ model.theta @ model.U.T
    assert torch.allclose(logits[:, 1], expected) and torch.allclose(logits[:, 2], expected)


def test_analytic_gradient_matches_autograd():
    model = BilinearModel(d_vocab=30, d_model=16, seed=2)
    torch.nn.init.normal_(model.theta, std=0.5)
    context, target = torch.tensor([1, 4, 7, 4]), torch.tensor([2, 9, 3, 11])
    loss = torch.nn.functional.cross_entropy(model.scores(context), target)
    (autograd,) = torch.autograd.grad(loss, model.theta)
    assert torch.allclose(model.analytic_gradient(context, target), autograd, atol=1e-6)


def test_training_raises_trained_scores_and_not_their_reverse(world, vocab):
    batch = tokenize(world, vocab)
    model = BilinearModel(vocab.d_vocab, d_model=256, seed=0)
    result = train(model, batch.where(split="train"), TrainConfig(steps=60, lr=0.05, progress=False, eval_every=60),
                   eval_sets={"train": batch.where(split="train"), "heldout": batch.where(split="heldout")})
    final = result.history[-1]["eval"]
    assert final["train"]["accuracy"] == 1.0
    assert final["heldout"]["accuracy"] == 0.0
    one_way = [f for f in world if f.group == "one-way" and f.forward == "train"]
    a = torch.tensor([vocab.entity_ids(f.subject)[0] for f in one_way])
    b = torch.tensor([vocab.entity_ids(f.object)[0] for f in one_way])
    with torch.no_grad():
        forward = (model.U[a] @ model.theta * model.U[b]).sum(1)
        reverse = (model.U[b] @ model.theta * model.U[a]).sum(1)
    assert float(forward.mean()) > 5 * float(reverse.abs().mean())
    assert 0.5 < model.asymmetry() < 1.5


def test_bad_sizes():
    with pytest.raises(ValueError, match="d_vocab ≥ 2"):
        BilinearModel(d_vocab=1, d_model=4)


def test_asymmetry_is_the_antisymmetric_part_over_the_whole_on_known_thetas():
    """asymmetry = ‖Θ − Θᵀ‖_F / ‖Θ‖_F. Writing Θ = S + A (symmetric and antisymmetric parts, orthogonal under
    the Frobenius product) it is 2‖A‖ / √(‖S‖² + ‖A‖²): 0 for a symmetric Θ, 2 for an antisymmetric one, √2 for
    one learnt direction Θ = e_i e_jᵀ (i ≠ j: A = (e_i e_jᵀ − e_j e_iᵀ)/2), 2·4/5 = 1.6 for ‖S‖ = 3, ‖A‖ = 4;
    unchanged by scaling Θ (by −2.5 too); 0 at Θ = 0 (no 0/0)."""
    model = BilinearModel(d_vocab=10, d_model=6, seed=0)
    assert model.asymmetry() == 0.0
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(6, 6, generator=generator)
    symmetric, antisymmetric = random + random.T, random - random.T
    one_way = torch.zeros(6, 6)
    one_way[1, 4] = 0.7
    mixed = 3 * symmetric / symmetric.norm() + 4 * antisymmetric / antisymmetric.norm()
    cases = [(symmetric, 0.0), (antisymmetric, 2.0), (one_way, 2**0.5), (mixed, 1.6), (-2.5 * mixed, 1.6)]
    for theta, expected in cases:
        with torch.no_grad():
            model.theta.copy_(theta)
        assert model.asymmetry() == pytest.approx(expected, abs=1e-6)
    with torch.no_grad():
        model.theta.copy_(symmetric)
    assert model.asymmetry() == 0.0  # exactly: (R + Rᵀ) − (R + Rᵀ)ᵀ is 0 entry by entry
