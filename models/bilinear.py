"""The bilinear model of Zhu et al. (2024, section 3): only Θ is trained.

Tokens v have fixed embeddings u_v ~ N(0, I/d), never trained (nearly orthonormal for large
d). Given a context token x the next-token distribution is

    p(y | x) = softmax_y(u_xᵀ Θ u_y),        Θ ∈ R^{d×d},  Θ_0 = 0.

A gradient step on the pair (x → y) moves Θ along u_x (u_y − E_{p(·|x)} u)ᵀ: it raises
u_xᵀ Θ u_y but leaves u_yᵀ Θ u_x almost unchanged because u_x ⊥ u_y. That asymmetry is the
reversal curse.

As a sequence model (so the common trainer and probes apply), the context of every position
is the sequence's first token, the subject: in "x → y" the answer y is predicted from x, the
relation token carrying no information, exactly the paper's pairs (x → y).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class BilinearModel(nn.Module):
    """``logits[b, p, y] = u_{tokens[b, 0]}ᵀ Θ u_y`` with fixed Gaussian embeddings U."""

    def __init__(self, d_vocab: int, d_model: int, seed: int = 0, device: Any = None) -> None:
        super().__init__()
        if d_vocab < 2 or d_model < 1:
            raise ValueError(f"bilinear model needs d_vocab ≥ 2 and d_model ≥ 1, got {d_vocab} and {d_model}")
        generator = torch.Generator().manual_seed(seed)
        embeddings = torch.randn(d_vocab, d_model, generator=generator) / d_model**0.5
        self.register_buffer("U", embeddings.to(device))
        self.theta = nn.Parameter(torch.zeros(d_model, d_model, device=device))
        self.seed = seed

    @property
    def d_vocab(self) -> int:
        return int(self.U.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.U.shape[1])

    def scores(self, context: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_vocab"]:
        """``u_xᵀ Θ U ᵀ``: the logit of every token after each context token."""
        return self.U[context] @ self.theta @ self.U.T

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.scores(tokens[:, 0])[:, None, :].expand(-1, tokens.shape[1], -1)

    def asymmetry(self) -> float:
        """‖Θ − Θᵀ‖_F / ‖Θ‖_F: 0 for a symmetric Θ, 2 for an antisymmetric one (0 at Θ = 0)."""
        theta = self.theta.detach()
        norm = theta.norm()
        return float((theta - theta.T).norm() / norm) if norm > 0 else 0.0

    def analytic_gradient(
        self, context: Int[Tensor, " n"], target: Int[Tensor, " n"]
    ) -> Float[Tensor, "d_model d_model"]:
        """∇_Θ of the mean cross-entropy over pairs (x_i → y_i), in closed form:

        ∇_Θ = −(1/n) Σ_i u_{x_i} (u_{y_i} − Σ_v p(v | x_i) u_v)ᵀ.
        """
        probs = self.scores(context).softmax(-1)
        expected = probs @ self.U
        return -(self.U[context].T @ (self.U[target] - expected)) / len(context)


def bilinear_card(d_vocab: int, d_model: int, seed: int) -> dict[str, Any]:
    """What :class:`BilinearModel` needs to be rebuilt: stored in checkpoint metadata."""
    return {"kind": "bilinear", "d_vocab": d_vocab, "d_model": d_model, "seed": seed}
