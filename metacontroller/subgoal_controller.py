"""Ground-truth subgoal controllers (paper §2.2, Fig. 4, App. C.3): is the frozen base controllable?

One controller per true subgoal label k, through the same hypernetwork as the
metacontroller's decoder, with the code z = onehot(k) switched by the label at
every step (β ≡ 1):

    ê_t = e_t + U(onehot(k_t)) e_t

Trained on clean demonstrations by action NLL with the base frozen, then
switched by the live environment's subgoal, these controllers measure whether a
mid-depth linear intervention can steer the base at all: the necessary condition
for discovery and internal RL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metacontroller.checkpoint import Checkpointable
from metacontroller.hypernetwork import ControllerDecoder


class SubgoalController(Checkpointable, nn.Module):
    def __init__(self, dim_model: int, num_subgoals: int, dim_hypernetwork_hidden: int = 32, rank: int | None = 16):
        super().__init__()
        if num_subgoals < 1:
            raise ValueError(f'num_subgoals must be >= 1, got {num_subgoals}')
        self.dim_model, self.num_subgoals = dim_model, num_subgoals
        self.decoder = ControllerDecoder(num_subgoals, dim_model, dim_hypernetwork_hidden, rank)

    def code(self, labels: Tensor) -> Tensor:
        """(...,) subgoal ids -> one-hot codes z (..., K); out-of-range ids are an error."""
        if labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f'subgoal labels must be an integer tensor, got {labels.dtype}')
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_subgoals):
            raise ValueError(f'subgoal labels must lie in [0, {self.num_subgoals}), got values in '
                             f'[{labels.min().item()}, {labels.max().item()}] (unlabelled steps must be masked first)')
        return F.one_hot(labels.long(), self.num_subgoals).float()

    def forward(self, stream: Tensor, labels: Tensor) -> Tensor:
        """ê = e + U(onehot(label)) e for e (..., d) and labels (...,)."""
        if stream.shape[:-1] != labels.shape or stream.shape[-1] != self.dim_model:
            raise ValueError(f'stream must be (..., {self.dim_model}) with labels of shape (...) matching it, '
                             f'got stream {tuple(stream.shape)} and labels {tuple(labels.shape)}')
        return self.decoder.control(self.code(labels).to(stream.dtype), stream)
