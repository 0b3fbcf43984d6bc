"""Throughput of data-parallel pretraining and internal RL at the default preset's sizes.

    python -m benchmarks.distributed                                          # 1 process
    torchrun --standalone --nproc_per_node 2 -m benchmarks.distributed        # 2 processes

The global batch is the same for any number of processes (pretraining: 64 episodes,
internal RL: 256 episodes), so the numbers compare directly. The model is barely
trained: every RL return is 0, so an RL batch is rollouts plus the gather of
returns (no update runs). Rank 0 prints; `--threads` is per process.

Each rate is given twice: per second of wall time, and per CPU second of the busiest
rank. On a machine shared with other jobs the first is what this run got, and the
second is what a quiet machine with a core per thread would give (waiting for other
ranks costs no CPU time).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from metacontroller import distributed
from metacontroller.envs.pinpad_expert import generate_pinpad_demos
from metacontroller.pipeline import pretrain
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import default_config
from metacontroller.pipeline.models import build_meta_controller, build_transformer
from metacontroller.rl import RLConfig, train_internal_rl


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--threads', type = int, default = 1, help = 'torch threads per process')
    parser.add_argument('--device', default = 'cpu')
    parser.add_argument('--mixed-precision', default = 'no', choices = distributed.MIXED_PRECISION)
    parser.add_argument('--pretrain-steps', type = int, default = 30)
    parser.add_argument('--rl-batches', type = int, default = 2)
    args = parser.parse_args()
    process = distributed.setup(args.device, args.mixed_precision)
    torch.set_num_threads(args.threads)   # after setup, which may set its own
    adapter, config = pinpad_adapter(), default_config()
    torch.manual_seed(0)
    model = build_transformer(adapter, config.model).to(process.device)
    meta = build_meta_controller(model.dim, config.discovery).to(process.device)
    demos = generate_pinpad_demos(1024, epsilon = config.data.pretrain_epsilon, seed = 0, progress = False)

    def train(steps):
        return pretrain.train(model, demos, replace(config.pretrain, steps = steps), 0, process.device, False, process)

    def timed(fn) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the busiest rank)"""
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpu = process.gather(torch.tensor([time.process_time() - cpu])).max().item()
        return time.perf_counter() - wall, cpu

    train(3)   # warm-up
    pretrain_s = timed(lambda: train(args.pretrain_steps))

    rl = RLConfig(num_envs = config.rl.num_envs, total_episodes = config.rl.num_envs * args.rl_batches)
    results = []
    rl_s = timed(lambda: results.append(train_internal_rl(model, meta, adapter.make_envs((adapter.post_task,)), rl, progress = False,
                                                          process = process)))
    if process.is_main:
        print(f'{process.world_size} process(es) x {args.threads} thread(s) on {process.device}, mixed precision {args.mixed_precision}')
        print(f'pretraining (batch {config.pretrain.batch_size}, d {config.model.dim}, L {config.model.depth}): '
              + ', '.join(f'{args.pretrain_steps / s:.2f} steps/{unit}' for s, unit in zip(pretrain_s, ('s', 'CPU s'))))
        print(f'internal RL ({results[0].episodes} episodes in batches of {rl.num_envs}): '
              + ', '.join(f'{results[0].raw_steps / s:,.0f} env steps/{unit}' for s, unit in zip(rl_s, ('s', 'CPU s'))))


if __name__ == '__main__':
    main()
