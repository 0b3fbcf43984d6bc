"""Evaluation: success rate, mean return, switches per episode and episode length, sampled or greedy."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from metacontroller.distributed import SINGLE, Process
from metacontroller.meta_controller import MetaController
from metacontroller.rl.config import EvalStats
from metacontroller.rl.rollout import Episodes, run_episodes
from metacontroller.rl.seeds import rank_seed, seeded
from metacontroller.transformer import Transformer


def eval_stats(episodes: Episodes) -> EvalStats:
    return EvalStats(
        success = episodes.success.float().mean().item(),
        mean_return = episodes.returns.mean().item(),
        switches_per_episode = episodes.switches.float().mean().item(),
        mean_length = episodes.lengths.float().mean().item(),
        reached = tuple((episodes.progress >= k).float().mean().item() for k in range(1, int(episodes.progress.max()) + 1)),
    )


def evaluate(
    model: Transformer,
    make_envs: Callable[[int], object],
    num_episodes: int,
    meta_controller: MetaController | None = None,
    seed: int = 0,
    deterministic: bool = False,
    greedy_actions: bool | None = None,
    force_beta: float | None = None,
    batch_size: int = 256,
    max_steps: int | None = None,
    process: Process = SINGLE,
    intervention: Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> EvalStats:
    """Run `num_episodes` episodes with env seeds seed, seed + 1, ... and the torch RNG seeded
    with `seed`, so that the same call gives the same episodes (common random numbers).

    deterministic = True is greedy: the policy's mean latent and the argmax raw action; greedy_actions,
    when given, sets the raw actions alone (see `run_episodes`).
    intervention(env, e, rows) -> ê rewrites the residual stream at the cut (see `run_episodes`);
    it receives the batch's env, so it may read the env's live state (e.g. its current subgoals).
    With a multi-process `process`, each rank runs its share of the episodes, `batch_size` / ranks
    at a time, and the statistics are over all of them."""
    if not isinstance(num_episodes, int) or num_episodes < process.world_size:
        raise ValueError(f'num_episodes must be an int of at least {process.world_size} (one per process), got {num_episodes!r}')
    if meta_controller is not None:
        model.check_meta_controller(meta_controller)
    device = next(model.parameters()).device
    mine = range(num_episodes)[process.shard(num_episodes)]
    batch_size = -(-batch_size // process.world_size)
    sizes = [min(batch_size, len(mine) - start) for start in range(0, len(mine), batch_size)]
    envs = {size: make_envs(size) for size in set(sizes)}

    parts = []
    with seeded(rank_seed(seed, process.rank), device):
        for i, size in enumerate(sizes):
            first = seed + mine.start + i * batch_size
            parts.append(run_episodes(model, envs[size], range(first, first + size), meta_controller = meta_controller,
                                      force_beta = force_beta, deterministic = deterministic, greedy_actions = greedy_actions, max_steps = max_steps,
                                      intervention = None if intervention is None else partial(intervention, envs[size])))
    return eval_stats(Episodes(*(torch.cat(field) for field in zip(*parts))).gather(process))
