"""One step of an `nn.GRU` as a single fused cell call.

Calling the module for a length-1 sequence costs several times the math at
rollout batch sizes (argument checks, weight flattening, packing); the cell
op on the module's own weights computes exactly the same step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def gru_step(gru: nn.GRU, x: Tensor, hidden: Tensor) -> Tensor:
    """x (b, input), hidden (b, h) -> new hidden (b, h); single-layer, unidirectional GRUs only."""
    return torch.gru_cell(x, hidden, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
