"""The switching unit and temporal integration (SPEC §3).

    β_t = f_switch(e_t, h_{t-1}, z_{t-1}) ∈ [0, 1]
    z_t = β_t z̃_t + (1 - β_t) z_{t-1},     z_0 = 0, β_1 forced to 1

β = 1 means "switch to the new proposal z̃_t", β = 0 "keep z_{t-1}". Because
β_t reads z_{t-1}, the recurrence is sequential in t. Everything that does not
depend on z (the projection of e_t and h_{t-1}) is computed for all t at once,
so each step is one small matmul, an activation, a dot product and a lerp.
When β is given (ablations) the recurrence is linear and runs as a parallel
associative scan.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from assoc_scan import AssocScan
from torch import Tensor, nn


class Switching(NamedTuple):
    beta: Tensor    # (b, t)
    latent: Tensor  # (b, t, n_z) the integrated code z_t


class SwitchingUnit(nn.Module):
    """β_t = σ(w · act(W_eh [e_t, h_{t-1}] + W_z z_{t-1}) + b): small MLP + sigmoid, scalar β.

    `gumbel_temperature` (not in the paper, default off) samples a relaxed
    Bernoulli β during training (Gumbel-sigmoid), as the paper's appendix
    mentions for its rate-distortion sweep.
    """

    def __init__(self, dim_model: int, dim_history: int, dim_latent: int, dim_hidden: int, gumbel_temperature: float | None = None):
        super().__init__()
        self.from_stream = nn.Linear(dim_model + dim_history, dim_hidden)
        self.from_latent = nn.Linear(dim_latent, dim_hidden, bias = False)
        self.to_logit = nn.Linear(dim_hidden, 1)
        self.gumbel_temperature = gumbel_temperature
        self.scan = AssocScan()

    def project_inputs(self, stream: Tensor, history: Tensor) -> Tensor:
        """(b, t, d), (b, t, n_h) -> (b, t, hidden): the z-independent part, for all t at once."""
        return self.from_stream(torch.cat((stream, history), dim = -1))

    def logit(self, projected: Tensor, prev_latent: Tensor) -> Tensor:
        """One step: (b, hidden), (b, n_z) -> (b,)."""
        hidden = F.silu(projected + prev_latent @ self.from_latent.weight.t())
        return (hidden @ self.to_logit.weight.t()).squeeze(-1) + self.to_logit.bias

    def beta(self, logit: Tensor) -> Tensor:
        if self.training and self.gumbel_temperature is not None:
            u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
            return torch.sigmoid((logit + u.log() - (-u).log1p()) / self.gumbel_temperature)
        return torch.sigmoid(logit)

    def forward(self, projected: Tensor, proposals: Tensor) -> Switching:
        """The sequential recurrence over a whole sequence.

        projected: (b, t, hidden) from `project_inputs`; proposals z̃: (b, t, n_z).
        """
        prev = torch.zeros_like(proposals[:, 0])
        w_z, w_out, b_out = self.from_latent.weight.t(), self.to_logit.weight[0], self.to_logit.bias
        betas, latents = [], []

        for t in range(proposals.shape[1]):
            if t == 0:
                beta = torch.ones_like(proposals[:, 0, 0])   # β_1 = 1: the first step always takes z̃_1
            else:
                hidden = F.silu(torch.addmm(projected[:, t], prev, w_z))
                beta = self.beta(torch.mv(hidden, w_out) + b_out)
            prev = torch.lerp(prev, proposals[:, t], beta[:, None])  # β z̃ + (1 - β) z_{t-1}
            betas.append(beta)
            latents.append(prev)

        return Switching(torch.stack(betas, dim = 1), torch.stack(latents, dim = 1))

    def integrate(self, beta: Tensor, proposals: Tensor) -> Switching:
        """z for a given β (b, t): linear in z, so a parallel scan. β_1 is forced to 1."""
        beta = beta.clone()
        beta[:, 0] = 1.
        gates = (1. - beta)[..., None].expand_as(proposals)
        return Switching(beta, self.scan(gates, beta[..., None] * proposals))


def reference_switching(unit: SwitchingUnit, projected: Tensor, proposals: Tensor) -> Switching:
    """A deliberately naive loop straight from the equations; the fast path is tested against it."""
    b, t, n_z = proposals.shape
    z_prev = torch.zeros(b, n_z, dtype = proposals.dtype, device = proposals.device)
    betas, latents = [], []
    for i in range(t):
        if i == 0:
            beta = torch.ones(b, dtype = proposals.dtype, device = proposals.device)
        else:
            beta = unit.beta(unit.logit(projected[:, i], z_prev))
        z_prev = beta[:, None] * proposals[:, i] + (1 - beta[:, None]) * z_prev
        betas.append(beta)
        latents.append(z_prev)
    return Switching(torch.stack(betas, 1), torch.stack(latents, 1))
