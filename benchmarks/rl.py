"""Throughput of the abstract-timescale rollout and time of one PPO update, gridworld sizes.

    python -m benchmarks.rl [--envs 64 256] [--threads 1] [--repeats 3] [--epochs 2]

Model: Transformer d = 256, lower and upper body 3 blocks each (4 heads of 64,
MLP 512 ReLU, relative position bias), 637-dim observation, 4 actions;
MetaController(256, 32, 8, rank 16), policy GRU 256. Env: VecPinpadEnv on the
post-training task (T = 100). Weights are random, so episodes end as an
untrained agent's do (mostly on a wrong colour). Reported per batch size:

- env steps/s: raw steps of the episodes (their own lengths) per second of rollout.
- the split of rollout time between model.step, env.step, dropping finished rows
  from the cache and the rest (recording, glue), and the share of the rollout's
  wall time spent inside aten kernels (profiler self time): the remainder is Python.
- one PPO update on the first batch (full batch, `--epochs` epochs).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import NamedTuple

import torch
from torch import nn


def build(seed: int = 0):
    from metacontroller import MetaController, Transformer
    from metacontroller.envs.pinpad import NUM_ACTIONS, OBS_DIM

    torch.manual_seed(seed)
    body = dict(depth = 3, heads = 4, attn_dim_head = 64, rel_pos_bias = True, ff_mult = 2, ff_custom_activation = nn.ReLU())
    model = Transformer(
        256, action_embed_readout = dict(num_discrete = NUM_ACTIONS), state_embed_readout = dict(num_continuous = OBS_DIM),
        lower_body = body, upper_body = body,
    )
    meta = MetaController(256, 32, 8, hypernetwork_low_rank = 16)
    return model.eval(), meta.eval()


class Timed:
    """Accumulates the wall time of calls to `fn`."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


class RolloutTiming(NamedTuple):
    batch: object      # AbstractBatch
    total: float       # seconds for the whole batch
    model: float       # in model.step (lower body, metacontroller, upper body)
    env: float         # in env.step
    drop: float        # dropping finished rows from the cache


def timed_rollout(model, meta, num_envs: int, seed: int) -> RolloutTiming:
    """One batch with model.step, env.step and the cache's row selection timed."""
    from metacontroller.envs.pinpad import POST_TRAINING_TASK, VecPinpadEnv
    from metacontroller.rl import rollout
    from metacontroller.rl.abstract_env import collect_abstract

    env = VecPinpadEnv(num_envs, tasks = [POST_TRAINING_TASK])
    env.step = env_step = Timed(env.step)
    model.step = model_step = Timed(model.step)   # instance attribute: shadows the method, for this benchmark only
    drop_rows, rollout.drop_finished_rows = rollout.drop_finished_rows, Timed(rollout.drop_finished_rows)
    drop = rollout.drop_finished_rows
    try:
        start = time.perf_counter()
        batch = collect_abstract(model, meta, env, range(seed, seed + num_envs))
        total = time.perf_counter() - start
    finally:
        del model.step
        rollout.drop_finished_rows = drop_rows
    return RolloutTiming(batch, total, model_step.seconds, env_step.seconds, drop.seconds)


def kernel_share(model, meta, num_envs: int) -> float:
    """Fraction of a rollout's wall time spent inside aten kernels (profiler self CPU time):
    the rest is the Python that drives them."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities = [ProfilerActivity.CPU]) as prof:
        total = timed_rollout(model, meta, num_envs, seed = 10_000).total
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith('aten::')) / 1e6 / total


def ppo_update_seconds(meta, batch, epochs: int) -> float:
    import copy

    from metacontroller.distributed import adamw
    from metacontroller.rl import RLConfig
    from metacontroller.rl.trainer import policy_update, trajectory_advantages

    config = RLConfig(num_envs = len(batch.decisions), epochs = epochs)
    meta = copy.deepcopy(meta)
    optimizer = adamw(meta.policy.parameters(), config.lr, config.weight_decay, config.betas)
    returns = torch.arange(len(batch.decisions), dtype = torch.float32) % 2   # any non-constant returns
    advantages = trajectory_advantages(returns)
    start = time.perf_counter()
    policy_update(meta, batch, advantages, optimizer, config)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--envs', type = int, nargs = '+', default = [64, 256])
    parser.add_argument('--threads', type = int, default = 1, help = 'intra-op threads (1: on a shared machine more threads spin-wait and run 10-100x slower)')
    parser.add_argument('--repeats', type = int, default = 3)
    parser.add_argument('--epochs', type = int, default = 2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, meta = build()
    timed_rollout(model, meta, 8, seed = 99_999)   # warm-up: builds the cached decoders
    print(f'threads {args.threads}; median of {args.repeats} batches; random weights, post-training task')
    print('| envs | env steps/s | raw steps/episode | longest episode | model.step | env.step | drop finished rows | rest | in aten kernels | decisions/episode | PPO update |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for num_envs in args.envs:
        runs = [timed_rollout(model, meta, num_envs, seed = i * num_envs) for i in range(args.repeats)]
        steps_per_s = statistics.median(int(r.batch.episodes.lengths.sum()) / r.total for r in runs)
        total = sum(r.total for r in runs)
        model_s, env_s, drop_s = (sum(getattr(r, f) for r in runs) / total for f in ('model', 'env', 'drop'))
        lengths = torch.cat([r.batch.episodes.lengths for r in runs]).float()
        decisions = torch.cat([r.batch.decisions for r in runs]).float().mean()
        update = statistics.median(ppo_update_seconds(meta, runs[0].batch, args.epochs) for _ in range(args.repeats))
        print(f'| {num_envs} | {steps_per_s:,.0f} | {lengths.mean():.1f} | {lengths.max():.0f} | {model_s:.0%} | {env_s:.0%} | {drop_s:.0%} | '
              f'{1 - model_s - env_s - drop_s:.0%} | {kernel_share(model, meta, num_envs):.0%} | {decisions:.1f} | '
              f'{update * 1e3:.0f} ms ({args.epochs} epochs) |', flush = True)


if __name__ == '__main__':
    main()
