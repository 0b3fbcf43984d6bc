"""GRUs for the metacontroller: native forward, a lean hand-written backward.

`nn.GRU` runs its forward in one native call, but on the CPU its backward goes
through autograd over every unrolled step, several times the cost of the
forward at our sizes. `gru_sequence` keeps the native forward; its backward
recomputes all gates at once from the stored hidden states (two matmuls),
folds them into per-step coefficients, and leaves only the truly sequential
part, dh_{t-1} = dh_t ⊙ z_t + (dh_t ⊙ K_t) W_hh, for the loop. Weight and
input gradients are single matmuls over all steps. It computes exactly
`nn.GRU` (gate order r, z, n) and is tested against it, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def gru_step(gru: nn.GRU, x: Tensor, hidden: Tensor) -> Tensor:
    """x (b, input), hidden (b, h) -> new hidden (b, h); single-layer, unidirectional GRUs only."""
    return torch.gru_cell(x, hidden, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)


class _GRUSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gru: nn.GRU, x: Tensor, h0: Tensor, w_ih, w_hh, b_ih, b_hh):
        hidden, _ = gru(x, h0[None])                                       # native, no graph
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, hidden)
        return hidden

    @staticmethod
    def backward(ctx, grad_hidden: Tensor):
        x, h0, w_ih, w_hh, b_ih, b_hh, hidden = ctx.saved_tensors
        prev = torch.cat((h0[:, None], hidden[:, :-1]), dim = 1)           # h_{t-1}: (b, t, h)

        # every gate of every step at once
        ir, iz, i_n = F.linear(x, w_ih, b_ih).chunk(3, dim = -1)
        hr, hz, hn = F.linear(prev, w_hh, b_hh).chunk(3, dim = -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(i_n + r * hn)

        # h_t = (1 - z) n + z h_{t-1}: each pre-activation's gradient is dh_t times a coefficient
        to_n = (1 - z) * (1 - n * n)
        to_r = to_n * hn * r * (1 - r)
        to_z = (prev - n) * z * (1 - z)
        to_gh = torch.stack((to_r, to_z, to_n * r), dim = 2)              # (b, t, 3, h)

        dh, dhs = torch.zeros_like(h0), []
        for t in reversed(range(hidden.shape[1])):
            dh = dh + grad_hidden[:, t]
            dhs.append(dh)
            dh = torch.addmm(dh * z[:, t], rearrange(dh[:, None] * to_gh[:, t], 'b g h -> b (g h)'), w_hh)
        dhs = torch.stack(dhs[::-1], dim = 1)                              # dL/dh_t in total: (b, t, h)

        d_gh = rearrange(dhs[:, :, None] * to_gh, 'b t g h -> b t (g h)')
        d_gi = rearrange(dhs[:, :, None] * torch.stack((to_r, to_z, to_n), dim = 2), 'b t g h -> b t (g h)')
        return (
            None,
            d_gi @ w_ih,
            dh,
            torch.einsum('btg,bti->gi', d_gi, x),
            torch.einsum('btg,bth->gh', d_gh, prev),
            d_gi.sum(dim = (0, 1)),
            d_gh.sum(dim = (0, 1)),
        )


def gru_sequence(gru: nn.GRU, x: Tensor, h0: Tensor | None = None) -> Tensor:
    """Equivalent of `gru(x, h0)[0]` for a batch-first, single-layer GRU: (b, t, input) -> (b, t, h)."""
    if h0 is None:
        h0 = x.new_zeros(x.shape[0], gru.hidden_size)
    return _GRUSequence.apply(gru, x, h0, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
