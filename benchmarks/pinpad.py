"""Pinpad env and expert speed: `python -m benchmarks.pinpad`.

Prints env steps/s (one gymnasium env; the batched env with N = 256), expert
success per task with epsilon = 0, and the time and file size for generating
10,000 demonstration episodes. Pins itself to one CPU core where the OS allows.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import gymnasium
import numpy as np

from metacontroller.envs.pinpad import ENV_ID, POST_TRAINING_TASK, POST_TRAINING_TASK_NAME, PRETRAINING_TASK_NAMES, PRETRAINING_TASKS, VecPinpadEnv
from metacontroller.envs.pinpad_expert import PinpadExpert, generate_pinpad_demos


def single_env_steps_per_second(seconds: float) -> float:
    """Random actions through gymnasium.make (with its default wrappers), resetting on episode end."""
    env = gymnasium.make(ENV_ID)
    env.reset(seed = 0)
    env.action_space.seed(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(1000):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        steps += 1000
    return steps / (time.perf_counter() - start)


def vec_env_steps_per_second(num_envs: int, seconds: float, use_expert: bool) -> float:
    """Auto-resetting batched env; random actions (short episodes, so many resets) or expert actions (timed too)."""
    env = VecPinpadEnv(num_envs, autoreset = True)
    env.reset(seed = 0)
    expert, rng = PinpadExpert(seed = 0), np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(expert.act(env) if use_expert else rng.integers(0, 4, num_envs))
        steps += num_envs
    return steps / (time.perf_counter() - start)


def expert_success(task: tuple[int, ...], episodes: int, seed: int) -> tuple[float, float]:
    """Success rate and mean episode length of the epsilon = 0 expert on `task`."""
    env = VecPinpadEnv(episodes, tasks = [task])
    env.reset(seed = seed)
    expert = PinpadExpert(0.0, seed = seed)
    while not env.done.all():
        env.step(expert.act(env))
    return float(env.succeeded.mean()), float(env.elapsed.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type = float, default = 3.0, help = 'duration of each throughput measurement')
    parser.add_argument('--episodes-per-task', type = int, default = 2000)
    parser.add_argument('--demo-episodes', type = int, default = 10_000)
    args = parser.parse_args()
    if hasattr(os, 'sched_setaffinity'):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    print(f'single gymnasium env (gymnasium.make, random actions): {single_env_steps_per_second(args.seconds):,.0f} steps/s')
    for use_expert in (False, True):
        label = 'expert actions, expert included' if use_expert else 'random actions'
        print(f'VecPinpadEnv N=256, autoreset, {label}: {vec_env_steps_per_second(256, args.seconds, use_expert):,.0f} steps/s')

    print(f'expert success, epsilon = 0, {args.episodes_per_task} episodes per task:')
    named = [*zip(PRETRAINING_TASK_NAMES, PRETRAINING_TASKS), (POST_TRAINING_TASK_NAME, POST_TRAINING_TASK)]
    for seed, (name, task) in enumerate(named):
        success, length = expert_success(task, args.episodes_per_task, seed)
        print(f"  {name:7s} {'-'.join(map(str, task)):24s} success {success:.4f}  mean length {length:.1f}")

    for epsilon in (0.0, 0.1):
        start = time.perf_counter()
        dataset = generate_pinpad_demos(args.demo_episodes, epsilon = epsilon, seed = 0, progress = False)
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / 'demos.npz'
            start = time.perf_counter()
            dataset.save(path)
            save_seconds = time.perf_counter() - start
            size = path.stat().st_size
        print(f"generate {len(dataset):,} episodes ({dataset.num_steps:,} steps), epsilon = {epsilon}: {seconds:.2f} s, "
              f"save {save_seconds:.2f} s, file {size / 1e6:.2f} MB, "
              f"failed episodes dropped {dataset.metadata['failed_episodes_dropped']}")


if __name__ == '__main__':
    main()
