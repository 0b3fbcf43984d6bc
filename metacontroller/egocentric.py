"""An egocentric view of a one-hot grid observation, as a model-side encoder.

The observation stays what the environment emits (for pinpad, 7×7 cells of
one-hot channels, the agent in the last channel). This module re-indexes it
around the agent, on a (2H - 1) × (2W - 1) canvas with the agent at the centre,
and maps it linearly to the model width. "Colour c lies to the left" and "the
agent stands on colour c" then become linear features instead of products of
one-hots the network must learn to form. That is the difference between a
base model that imitates the expert after a few hundred CPU steps and one
that has barely started. It adds an inductive bias to the *model*; data,
training and RL all keep the one observation encoding.

Not in the paper, whose base model learns from the raw grid at GPU scale.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from metacontroller.checkpoint import Checkpointable
from metacontroller.fast_train import bag_matmul, set_entries


def egocentric_index(height: int, width: int) -> Tensor:
    """(H·W, (2H-1)(2W-1)) long: for each agent cell, the source cell of every canvas
    cell, or H·W (a zero pad cell) where the canvas reaches past the grid."""
    rows, cols = torch.arange(2 * height - 1) - (height - 1), torch.arange(2 * width - 1) - (width - 1)
    agent = torch.arange(height * width)
    r = agent[:, None, None] // width + rows[None, :, None]
    c = agent[:, None, None] % width + cols[None, None, :]
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    return torch.where(inside, r * width + c, height * width).flatten(1)


class EgocentricEncoder(Checkpointable, nn.Module):   # Checkpointable: a model's checkpoint can name it as its state encoder
    # the grid defaults are pinpad's (`envs.pinpad`: GRID, NUM_CHANNELS, AGENT_CHANNEL; a test holds them equal), which its
    # adapter passes explicitly; they stay for checkpoints written before the grid was recorded, which give `dim` only
    def __init__(self, dim: int, height: int = 7, width: int = 7, channels: int = 13, agent_channel: int = 12):
        super().__init__()
        self.shape = (height, width, channels)
        self.agent_channel = agent_channel
        self.register_buffer('index', egocentric_index(height, width), persistent = False)
        self.proj = nn.Linear(self.index.shape[1] * (channels - 1), dim)

    @property
    def obs_dim(self) -> int:
        height, width, channels = self.shape
        return height * width * channels

    def forward(self, obs: Tensor) -> Tensor:
        """(..., H·W·C) one-hot grid -> (..., dim)."""
        *lead, size = obs.shape
        if size != self.obs_dim:
            raise ValueError(f'EgocentricEncoder expects observations of size {self.obs_dim} {self.shape}, got {size}')
        height, width, channels = self.shape
        grid = obs.reshape(-1, height * width, channels)
        agent = grid[..., self.agent_channel].argmax(dim = -1)                             # (n,) agent cell
        entries = set_entries(grid.flatten(1))
        if entries is not None:
            return self.sparse_forward(agent, *entries).reshape(*lead, -1)
        others = torch.cat([grid[..., :self.agent_channel], grid[..., self.agent_channel + 1:]], dim = -1)
        padded = nn.functional.pad(others, (0, 0, 0, 1))                                   # cell H·W is all zeros
        index = self.index[agent][..., None].expand(-1, -1, channels - 1)                  # (n, canvas, C - 1)
        canvas = padded.gather(1, index)
        return self.proj(canvas.flatten(1)).reshape(*lead, -1)

    def sparse_forward(self, agent: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
        """The same map from the set entries (rows, cols, values) of the flat grids: each entry is
        sent to its canvas feature by index arithmetic, no canvas is built. (n, dim)"""
        height, width, channels = self.shape
        cell, channel = cols // channels, cols % channels
        keep = channel != self.agent_channel
        rows, cell, channel, values = rows[keep], cell[keep], channel[keep], values[keep]
        centre = agent[rows]
        # grid cell (r, c) lies at canvas cell (r - r_agent + H - 1, c - c_agent + W - 1)
        r = cell // width - centre // width + height - 1
        c = cell % width - centre % width + width - 1
        feature = (r * (2 * width - 1) + c) * (channels - 1) + channel - (channel > self.agent_channel).long()
        return bag_matmul(rows, feature, values, self.proj.weight.t().contiguous(), len(agent)) + self.proj.bias
