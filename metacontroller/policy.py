"""The causal internal-RL policy π(z | e at past decision steps) (SPEC §4, paper D.3).

The paper uses a 1-layer recurrent model (Hawk SSM) of width 256; ours is a
GRU of the same width. It acts on the abstract timescale: its state advances
only at decision steps (Algorithm 3), so replaying a trajectory means running
it over the residual streams of that trajectory's decision steps.

The output is a diagonal Gaussian over z as a (..., n_z, 2) tensor of
(mean, log variance), or logits (..., n_z, 1) for a discrete code
(`metacontroller.codes`); the head starts near zero, i.e. near the prior
(N(0, I), or uniform) the metacontroller was regularised towards.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metacontroller.recurrence import gru_step


def gaussian_log_prob(dist: Tensor, value: Tensor) -> Tensor:
    """Joint log-density of `value` (..., n_z) under dist (..., n_z, 2), summed over n_z."""
    mean, log_var = dist.unbind(dim = -1)
    return (-0.5 * ((value - mean) ** 2 * (-log_var).exp() + log_var + math.log(2 * math.pi))).sum(dim = -1)


def gaussian_sample(dist: Tensor, deterministic: bool = False) -> Tensor:
    mean, log_var = dist.unbind(dim = -1)
    return mean if deterministic else mean + (0.5 * log_var).exp() * torch.randn_like(mean)


class CausalPolicy(nn.Module):
    def __init__(self, dim_model: int, dim_latent: int, dim_hidden: int = 256, params_per_latent: int = 2):
        super().__init__()
        self.dim_hidden, self.params_per_latent = dim_hidden, params_per_latent
        self.rnn = nn.GRU(dim_model, dim_hidden, batch_first = True)
        self.head = nn.Linear(dim_hidden, dim_latent * params_per_latent)
        nn.init.normal_(self.head.weight, std = 1e-3)
        nn.init.zeros_(self.head.bias)

    def _dist(self, hidden: Tensor) -> Tensor:
        return self.head(hidden).unflatten(-1, (-1, self.params_per_latent))

    def forward(self, streams: Tensor) -> Tensor:
        """Decision-step streams (b, k, d) -> dists (b, k, n_z, params_per_latent)."""
        out, _ = self.rnn(streams)
        return self._dist(out)

    def step(self, stream: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor]:
        """One decision step: (b, d), (b, h) | None -> (dist (b, n_z, params_per_latent), new hidden (b, h))."""
        if hidden is None:
            hidden = stream.new_zeros(stream.shape[0], self.dim_hidden)
        hidden = gru_step(self.rnn, stream, hidden)
        return self._dist(hidden), hidden
