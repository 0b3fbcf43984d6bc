"""Controller decoder: a hypernetwork z -> U, and the control ê = e + U e (SPEC §3).

Low rank: U = A Bᵀ with A, B ∈ R^{d×r}, applied as e + A (Bᵀ e), O(d r) per
step; no d×d matrix is ever formed. Full rank (rank = None): U ∈ R^{d×d}.

The output layer that produces A (or U) starts at zero, so control starts as
a no-op. B keeps its random init: were both factors zero, U = A Bᵀ would
receive no gradient at all.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from einops import einsum, rearrange
from torch import Tensor, nn


class Controller(NamedTuple):
    a: Tensor        # (..., d, r), or the full U (..., d, d) when b is None
    b: Tensor | None  # (..., d, r)

    def dense(self) -> Tensor:
        """U as a (..., d, d) matrix: for tests and analysis only."""
        return self.a if self.b is None else einsum(self.a, self.b, '... i r, ... j r -> ... i j')

    def apply(self, stream: Tensor) -> Tensor:
        """ê = e + U e, with (U e)_i = Σ_j U_ij e_j."""
        if self.b is None:
            return stream + einsum(self.a, stream, '... i j, ... j -> ... i')
        coeffs = einsum(self.b, stream, '... j r, ... j -> ... r')        # Bᵀ e
        return stream + einsum(self.a, coeffs, '... i r, ... r -> ... i')  # A (Bᵀ e)


class ControllerDecoder(nn.Module):
    def __init__(self, dim_latent: int, dim_model: int, dim_hidden: int = 32, rank: int | None = 16):
        super().__init__()
        self.dim_model, self.rank = dim_model, rank
        self.hidden = nn.Sequential(nn.Linear(dim_latent, dim_hidden), nn.SiLU())

        width = dim_model * (rank if rank is not None else dim_model)
        self.to_a = nn.Linear(dim_hidden, width)
        self.to_b = nn.Linear(dim_hidden, width) if rank is not None else None

        nn.init.zeros_(self.to_a.weight)
        nn.init.zeros_(self.to_a.bias)

    def forward(self, latent: Tensor) -> Controller:
        """latent z: (..., n_z) -> Controller with factors (..., d, r)."""
        hidden = self.hidden(latent)
        shape = dict(d = self.dim_model)
        a = rearrange(self.to_a(hidden), '... (d r) -> ... d r', **shape)
        b = rearrange(self.to_b(hidden), '... (d r) -> ... d r', **shape) if self.to_b is not None else None
        return Controller(a, b)
