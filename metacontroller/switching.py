"""The switching unit and temporal integration (SPEC §3).

    β_t = f_switch(e_t, h_{t-1}, z_{t-1}) ∈ [0, 1]
    z_t = β_t z̃_t + (1 - β_t) z_{t-1},     z_0 = 0, β_1 forced to 1

β = 1 means "switch to the new proposal z̃_t", β = 0 "keep z_{t-1}". A step
with β ≥ SWITCH_THRESHOLD is a decision step: internal RL takes a new code
there, and the switch metrics count a switch (`decisions`). Because
β_t reads z_{t-1}, the recurrence is sequential in t. Everything that does not
depend on z (the projection of e_t and h_{t-1}) is computed for all t at once,
so each step is one small matmul, an activation, a dot product and a lerp.
When β is given (ablations) the recurrence is linear and runs as a parallel
associative scan; `periodic_beta` builds the fixed-period schedule (not in the paper).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from assoc_scan import AssocScan
from torch import Tensor, nn
from torch_einops_utils import lens_to_mask

from metacontroller.codes import logistic_noise

SWITCH_THRESHOLD = 0.5   # β ≥ 0.5: a hard switch


def decisions(beta: Tensor, lens: Tensor | None = None) -> Tensor:
    """β (b, t) or (b,) -> bool of the same shape: the decision steps (β ≥ SWITCH_THRESHOLD),
    within each row's first `lens` (b,) steps when given."""
    switch = beta >= SWITCH_THRESHOLD
    if lens is None:
        return switch
    return switch & lens_to_mask(lens.to(beta.device), beta.shape[-1])


def periodic_beta(period: int, steps: int, device: torch.device | str | None = None) -> Tensor:
    """A fixed switch schedule (an ablation, not in the paper): β_t = 1 at t = 0, k, 2k, ... else 0, shape (steps,).

    As `force_beta`, it broadcasts over the batch in `MetaController.forward`; the cached step
    at step t takes its t-th entry. k = 1 is the β ≡ 1 baseline."""
    if isinstance(period, bool) or not isinstance(period, int) or period < 1:
        raise ValueError(f'period must be an integer >= 1 (steps from one switch to the next), got {period!r}')
    return (torch.arange(steps, device = device) % period == 0).float()


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

    def forward(self, projected: Tensor, proposals: Tensor) -> Switching:
        """The sequential recurrence over a whole sequence.

        projected: (b, t, hidden) from `project_inputs`; proposals z̃: (b, t, n_z).
        """
        noise, temperature = torch.zeros_like(proposals[..., 0]), 1.
        if self.training and self.gumbel_temperature is not None:
            noise, temperature = logistic_noise(noise), self.gumbel_temperature
        beta, latent = _SwitchRecurrence.apply(
            projected, proposals, self.from_latent.weight, self.to_logit.weight[0], self.to_logit.bias, noise, temperature
        )
        return Switching(beta, latent)

    def integrate(self, beta: Tensor, proposals: Tensor) -> Switching:
        """z for a given β (b, t): linear in z, so a parallel scan. β_1 is forced to 1."""
        beta = beta.clone()
        beta[:, 0] = 1.
        gates = (1. - beta)[..., None].expand_as(proposals)
        return Switching(beta, self.scan(gates, beta[..., None] * proposals))


class _SwitchRecurrence(torch.autograd.Function):
    """β_t = σ((w · silu(P_t + W_z z_{t-1}) + b + noise_t) / τ), z_t = z_{t-1} + β_t (z̃_t - z_{t-1}).

    Forward: one addmm, an activation, a dot product and a lerp per step.
    Backward: everything that does not need the incoming gradient is computed
    for all steps at once first; the loop then carries dL/dz_{t-1} with a few
    fused ops per step, and weight gradients are single matmuls at the end.
    """

    @staticmethod
    def forward(ctx, projected, proposals, w_z, w_out, b_out, noise, temperature):
        w_z_t = w_z.t().contiguous()                                 # (n_z, hidden)
        prev = proposals[:, 0]                                       # β_1 = 1: z_1 = z̃_1
        betas, latents, pres = [torch.ones_like(noise[:, 0])], [prev], []
        for t in range(1, proposals.shape[1]):
            pre = torch.addmm(projected[:, t], prev, w_z_t)
            logit = torch.mv(F.silu(pre), w_out) + b_out
            beta = torch.sigmoid((logit + noise[:, t]) / temperature)
            prev = torch.lerp(prev, proposals[:, t], beta[:, None])
            pres.append(pre)
            betas.append(beta)
            latents.append(prev)

        beta, latent = torch.stack(betas, dim = 1), torch.stack(latents, dim = 1)
        pre = torch.stack(pres, dim = 1) if pres else projected[:, :0]
        ctx.temperature = temperature
        ctx.save_for_backward(proposals, w_z, w_out, pre, beta, latent)
        return beta, latent

    @staticmethod
    def backward(ctx, d_beta, d_latent):
        proposals, w_z, w_out, pre, beta, latent = ctx.saved_tensors
        steps = proposals.shape[1]

        # per-step coefficients, all steps at once (index t - 1 holds step t)
        gate = beta[:, 1:]
        diff = proposals[:, 1:] - latent[:, :-1]                                     # z̃_t - z_{t-1}
        to_logit = gate * (1 - gate) / ctx.temperature                               # dβ -> dlogit
        sig = torch.sigmoid(pre)
        silu_grad = sig * (1 + pre * (1 - sig))
        to_pre = w_out * silu_grad                                                   # dlogit -> dpre

        g = torch.zeros_like(proposals[:, 0])                                        # dL/dz_t from later steps
        d_proposals, d_logits = [], []
        for t in reversed(range(1, steps)):
            g = g + d_latent[:, t]
            b = gate[:, t - 1, None]
            d_proposals.append(g * b)
            d_logit = (d_beta[:, t] + (g * diff[:, t - 1]).sum(-1)) * to_logit[:, t - 1]
            d_logits.append(d_logit)
            g = torch.addmm(g * (1 - b), d_logit[:, None] * to_pre[:, t - 1], w_z)
        d_proposals.append(g + d_latent[:, 0])                                        # z_1 = z̃_1

        d_proposals = torch.stack(d_proposals[::-1], dim = 1)
        d_logit = torch.stack(d_logits[::-1], dim = 1) if d_logits else gate         # (b, t - 1)
        d_pre = d_logit[..., None] * to_pre                                          # (b, t - 1, hidden)
        d_projected = F.pad(d_pre, (0, 0, 1, 0))                                     # step 1 has no projection
        return (
            d_projected,
            d_proposals,
            torch.einsum('bth,btz->hz', d_pre, latent[:, :-1]),
            torch.einsum('bt,bth->h', d_logit, F.silu(pre)),
            d_logit.sum().reshape(1),
            None,
            None,
        )

