"""A rollout store: internal-RL batches on disk, for off-policy reuse and offline analysis.

One batch is one numpy `.npz` archive. It is read with `allow_pickle = False`,
so nothing in it is code: every entry is a plain numeric (or string) array.
Its entries are the fields of an `AbstractBatch`, the `Episodes` it came from
and, optionally, the advantages it was (or will be) trained with. N
trajectories, K = the most decisions in any of them, decision steps
left-aligned; the tail of row n past `decisions[n]` is padding (zeros):

| key         | shape, dtype         | meaning                                                      |
|-------------|----------------------|--------------------------------------------------------------|
| format      | (), str              | 'metacontroller-rollouts'                                    |
| version     | (), int64            | 1                                                            |
| streams     | (N, K, d), float32   | residual stream e the policy read at each decision           |
| latents     | (N, K, n_z), float32 | sampled latent z̃                                             |
| log_probs   | (N, K), float32      | log π(z̃) at sampling time, summed over n_z                  |
| betas       | (N, K), float32      | β of the switching unit at each decision (≥ 0.5)             |
| times       | (N, K), int64        | raw step of each decision                                    |
| decisions   | (N,), int64          | decisions per trajectory (its length on the abstract scale)  |
| returns     | (N,), float32        | summed rewards                                               |
| lengths     | (N,), int64          | raw steps per episode                                        |
| switches    | (N,), int64          | decision steps per episode                                   |
| advantages  | (N,), float32        | optional: per-trajectory advantages                          |

    save_rollouts('batch.npz', batch, advantages)
    batch, advantages = load_rollouts('batch.npz')
    loss = meta_controller.policy_loss(*batch.policy_loss_args(advantages))
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from metacontroller.rl.abstract_env import AbstractBatch
from metacontroller.rl.rollout import Episodes

FORMAT, VERSION = 'metacontroller-rollouts', 1
BATCH_FIELDS = tuple(name for name in AbstractBatch._fields if name != 'episodes')


class StoredRollouts(NamedTuple):
    batch: AbstractBatch
    advantages: Tensor | None   # (N,), None when none were saved


def save_rollouts(path: str | Path, batch: AbstractBatch, advantages: Tensor | None = None):
    """Write one batch (and optionally its advantages (N,)) to `path` as an .npz archive (format: module docstring)."""
    tensors = {**{name: getattr(batch, name) for name in BATCH_FIELDS}, **batch.episodes._asdict()}
    if advantages is not None:
        if not torch.is_tensor(advantages) or tuple(advantages.shape) != (len(batch.decisions),):
            given = tuple(advantages.shape) if torch.is_tensor(advantages) else type(advantages).__name__
            raise ValueError(f'advantages must be a tensor of shape ({len(batch.decisions)},), one per trajectory, got {given}')
        tensors['advantages'] = advantages
    arrays = {name: value.detach().cpu().numpy() for name, value in tensors.items()}
    with open(path, 'wb') as file:   # a file object: numpy would append '.npz' to a name without it
        np.savez(file, format = np.array(FORMAT), version = np.array(VERSION), **arrays)


def load_rollouts(path: str | Path, device: torch.device | str = 'cpu') -> StoredRollouts:
    """Read a batch written by `save_rollouts`; object (pickled) entries are refused, never run."""
    with np.load(path, allow_pickle = False) as data:
        if 'format' not in data.files or data['format'].item() != FORMAT or data['version'].item() != VERSION:
            raise ValueError(f'{path} is not a {FORMAT} file of version {VERSION}')
        missing = [name for name in (*BATCH_FIELDS, *Episodes._fields) if name not in data.files]
        if missing:
            raise ValueError(f'{path} lacks {", ".join(missing)}: expected every field of {", ".join((*BATCH_FIELDS, *Episodes._fields))}')
        tensors = {name: torch.from_numpy(data[name]).to(device) for name in data.files if name not in ('format', 'version')}

    episodes = Episodes(*(tensors[name] for name in Episodes._fields))
    batch = AbstractBatch(**{name: tensors[name] for name in BATCH_FIELDS}, episodes = episodes)
    return StoredRollouts(batch, tensors.get('advantages'))
