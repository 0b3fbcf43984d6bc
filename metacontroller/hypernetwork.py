"""Controller decoder: a hypernetwork z -> U, and the control ê = e + U e (SPEC §3).

Low rank: U = A Bᵀ with A, B ∈ R^{d×r}; full rank (rank = None): U ∈ R^{d×d}.
The factors are a linear function of the hidden code g = act(W z):

    A = W_a g + a_0,   B = W_b g + b_0       (W_a, W_b: (d·r) × n_hidden)

so `control` contracts the weights with e and g directly:

    Bᵀe = (e W_b) · g + b_0ᵀ e        A c = W_a (c ⊗ g) + a_0 c

two plain matmuls over all steps and O(d·r·n_hidden) per step, without ever
materialising a d×d matrix (nor the per-step d×r factors). An optional multiplier c
(ê = e + c·U e, default 1) scales the control for ablations. `forward` returns
the factors themselves, for analysis and for the dense reference in tests.

The output layer that produces A (or U) starts at zero, so control starts as
a no-op. B keeps its random init: were both factors zero, U = A Bᵀ would
receive no gradient at all.
"""
from __future__ import annotations

from typing import NamedTuple

from einops import einsum, rearrange
from torch import Tensor, nn


class Controller(NamedTuple):
    a: Tensor         # (..., d, r), or the full U (..., d, d) when b is None
    b: Tensor | None  # (..., d, r)

    def dense(self) -> Tensor:
        """U as a (..., d, d) matrix: for analysis and tests only."""
        return self.a if self.b is None else einsum(self.a, self.b, '... i r, ... j r -> ... i j')


def _outer(x: Tensor, g: Tensor) -> Tensor:
    """(..., k), (..., h) -> (..., k * h): the inputs of a bilinear map, flattened."""
    return (x[..., :, None] * g[..., None, :]).flatten(-2)


class ControllerDecoder(nn.Module):
    def __init__(self, dim_latent: int, dim_model: int, dim_hidden: int = 32, rank: int | None = 16):
        super().__init__()
        self.dim_model, self.dim_hidden, self.rank = dim_model, dim_hidden, rank
        self.hidden = nn.Sequential(nn.Linear(dim_latent, dim_hidden), nn.SiLU())

        width = dim_model * (rank if rank is not None else dim_model)
        self.to_a = nn.Linear(dim_hidden, width)
        self.to_b = nn.Linear(dim_hidden, width) if rank is not None else None

        nn.init.zeros_(self.to_a.weight)
        nn.init.zeros_(self.to_a.bias)

    def forward(self, latent: Tensor) -> Controller:
        """latent z: (..., n_z) -> Controller with factors (..., d, r) (or U (..., d, d))."""
        hidden = self.hidden(latent)
        a = rearrange(self.to_a(hidden), '... (d r) -> ... d r', d = self.dim_model)
        b = rearrange(self.to_b(hidden), '... (d r) -> ... d r', d = self.dim_model) if self.to_b is not None else None
        return Controller(a, b)

    def _bilinear(self, linear: nn.Linear, x: Tensor, g: Tensor) -> Tensor:
        """M x for M = reshape(W g + m_0) of shape (d, k): (..., k), (..., h) -> (..., d)."""
        d = self.dim_model
        weight = linear.weight.view(d, -1)                            # (d, k * h)
        return _outer(x, g) @ weight.t() + x @ linear.bias.view(d, -1).t()

    def control(self, latent: Tensor, stream: Tensor, scale: float = 1.) -> Tensor:
        """ê = e + c·U e for z (..., n_z) and e (..., d), c = `scale`: 1 is the paper's control,
        0 leaves e (and so the base model) exactly as it is (an ablation, not in the paper)."""
        return stream + scale * self.steer(latent, stream)

    def steer(self, latent: Tensor, stream: Tensor) -> Tensor:
        """U e for z (..., n_z) and e (..., d)."""
        g = self.hidden(latent)                                       # (..., h)
        if self.to_b is None:
            return self._bilinear(self.to_a, stream, g)

        d, r, h = self.dim_model, self.rank, self.dim_hidden
        # Bᵀe: contract e with W_b over d first, then with g over h
        projected = (stream @ self.to_b.weight.view(d, r * h)).unflatten(-1, (r, h))
        coeffs = (projected * g[..., None, :]).sum(-1) + stream @ self.to_b.bias.view(d, r)   # (..., r)
        return self._bilinear(self.to_a, coeffs, g)
