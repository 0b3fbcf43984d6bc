"""Where every episode's seed comes from, so that runs repeat and the sets never overlap.

Run `seed` owns the env seeds seed·2³² + [0, 2³²): training batches count up
from 0, the fixed ES fitness episodes start at 2³⁰, the held-out evaluation
episodes (the learning curve) at 2³¹ and a final evaluation's fresh episodes
past those, at 2³¹ + 2³⁰. Torch sampling (latents, raw actions) runs in a forked RNG
seeded with the run seed, leaving the caller's RNG untouched. In a multi-process
run, rank r seeds torch with `rank_seed`, so ranks sample independently; rank 0
keeps the run seed.
"""
from __future__ import annotations

import contextlib

import torch

FITNESS_OFFSET, EVAL_OFFSET, FINAL_EVAL_OFFSET, SEED_STRIDE, RANK_STRIDE = 2 ** 30, 2 ** 31, 2 ** 31 + 2 ** 30, 2 ** 32, 2 ** 48


def episode_seeds(seed: int, first_episode: int, num_envs: int, group_size: int | None = None) -> list[int]:
    """Env seeds of one training batch; with groups, each group of `group_size` episodes shares one seed."""
    base = seed * SEED_STRIDE + first_episode
    if group_size is None:
        return [base + i for i in range(num_envs)]
    return [base + i // group_size for i in range(num_envs)]


def fitness_seed(seed: int) -> int:
    return seed * SEED_STRIDE + FITNESS_OFFSET


def eval_seed(seed: int) -> int:
    return seed * SEED_STRIDE + EVAL_OFFSET


def final_eval_seed(seed: int) -> int:
    return seed * SEED_STRIDE + FINAL_EVAL_OFFSET


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of `rank` for a run seeded with `seed`; rank 0 keeps `seed`."""
    return seed + rank * RANK_STRIDE


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Fork the torch RNG and seed it; `None` leaves the RNG alone."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices = [device] if device.type == 'cuda' else []):
        torch.manual_seed(seed)
        yield
