"""A next-observation head for binary observations (one-hot grids and the like).

The readout library's continuous head is a Gaussian with learned variance. On
0/1 features that never change (most of a one-hot grid) its NLL is unbounded
below: the variance collapses and the auxiliary loss swamps the action loss at
any λ > 0. Independent Bernoulli logits are the proper likelihood of 0/1 data,
bounded below by 0 nats, so λ weighs a loss of the same kind as the action NLL.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BinaryReadout(nn.Module):
    def __init__(self, dim: int, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.to_logits = nn.Linear(dim, num_features)

    def forward(self, hidden: Tensor, targets: Tensor | None = None, loss_mask: Tensor | None = None) -> Tensor:
        """hidden (b, t, d) -> logits (b, t, f); with 0/1 targets (b, t, f): -log p(o_{t+1}) in nats,
        summed over features and averaged over the steps `loss_mask` (b, t) keeps."""
        logits = self.to_logits(hidden)
        if targets is None:
            return logits
        nll = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction = 'none').sum(-1)
        if loss_mask is None:
            return nll.mean()
        return nll[loss_mask].mean() if loss_mask.any() else nll.sum() * 0.
