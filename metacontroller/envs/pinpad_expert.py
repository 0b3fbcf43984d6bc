"""The pinpad expert and its demonstration datasets (SPEC §5, paper C.1.1).

The expert follows a shortest path to the next target colour, read off the
BFS distance maps the env computed at reset (the same maps decide
solvability), with walls and every non-target colour as obstacles and ties
broken uniformly at random. With probability ε it instead takes a uniformly
random action that does not end the episode as a failure (bumps included).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from metacontroller.demos import ActionSets, DemoDataset
from metacontroller.envs.pinpad import (
    ENV_ID,
    MAX_STEPS,
    NEIGHBOURS,
    NUM_ACTIONS,
    OBS_DIM,
    PRETRAINING_TASKS,
    SUBGOAL_NAMES,
    UNREACHABLE,
    PinpadEnv,
    VecPinpadEnv,
)


class PinpadExpert:
    """Stochastic shortest-path policy, vectorised over the slots of a `VecPinpadEnv`."""

    def __init__(self, epsilon: float = 0.0, seed: int | np.random.SeedSequence | None = None):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f'epsilon must be in [0, 1], got {epsilon}')
        self.epsilon = epsilon
        self.rng = np.random.default_rng(seed)

    def act(self, env: VecPinpadEnv | PinpadEnv) -> np.ndarray:
        """(N,) int64 actions for the env's current states (N = 1 for a PinpadEnv).
        Finished slots get arbitrary actions, which the env ignores."""
        base = env.unwrapped  # see through gymnasium.make's wrappers
        cost, fails = action_costs(base.core if isinstance(base, PinpadEnv) else base)
        # Noise in [0, 0.5) keeps integer costs ordered and picks uniformly among the tied minima.
        actions = np.argmin(cost + 0.5 * self.rng.random(cost.shape), axis = 1)
        if self.epsilon > 0:
            random_safe = np.argmax(self.rng.random(cost.shape) + ~fails, axis = 1)  # uniform over non-failing
            actions = np.where(self.rng.random(len(actions)) < self.epsilon, random_safe, actions)
        return actions


def action_costs(core: VecPinpadEnv) -> tuple[np.ndarray, np.ndarray]:
    """What each action costs in every slot: (cost, fails), both (N, 4).

    cost: moves still needed after the action; walls, edges and dead ends are
    UNREACHABLE, and failing moves rank even later, so a stuck agent (possible
    only after ε-moves) bumps instead. fails: the action enters a non-target
    colour, which ends the episode. Finished slots read an arbitrary map.
    """
    slots = np.arange(core.num_envs)[:, None]
    target = np.maximum(core.target, 0)[:, None]  # (N, 1)
    cells = NEIGHBOURS[core.agent_cell]  # (N, 4) cell each action leads to (OFF_GRID for edges)
    colour = core.cell_colour[slots, cells]
    fails = (colour >= 0) & (colour != target)
    return core.distances[slots, target, cells] + fails * UNREACHABLE, fails


def pinpad_action_sets(dataset: DemoDataset) -> ActionSets:
    """Replay a pinpad dataset (layouts and tasks from its seeds, its stored actions)
    and mark each step's optimal and fatal actions: what a model's action
    distribution is scored against in `imitation_metrics`."""
    tasks = [tuple(task) for task in dataset.metadata['tasks']]
    env = VecPinpadEnv(len(dataset.episode_lens), tasks = tasks, max_steps = dataset.metadata['max_steps'])
    env.reset(seed = dataset.seeds.tolist())
    if not (env.task_id == dataset.task_ids).all():
        raise ValueError("the dataset's seeds do not rebuild its tasks: was it made by generate_pinpad_demos?")
    horizon = int(dataset.episode_lens.max())
    valid = np.arange(horizon) < dataset.episode_lens[:, None]  # (E, T); stored rows are these steps, episode-major
    actions = np.zeros(valid.shape, dtype = np.int64)  # padding steps replay action 0 on finished slots
    actions[valid] = dataset.actions
    optimal, fatal = np.zeros((*valid.shape, NUM_ACTIONS), bool), np.zeros((*valid.shape, NUM_ACTIONS), bool)
    onset = np.zeros(valid.shape, bool)
    for t in range(horizon):
        cost, fatal[:, t] = action_costs(env)
        optimal[:, t] = cost == cost.min(axis = 1, keepdims = True)
        onset[:, t] = env.target % 2 == 0  # heading to a pair's first colour
        env.step(actions[:, t])
    return ActionSets(optimal[valid], fatal[valid], onset[valid])


def generate_pinpad_demos(
    num_episodes: int,
    tasks: Sequence[Sequence[int]] = PRETRAINING_TASKS,
    epsilon: float = 0.0,
    seed: int = 0,
    num_envs: int = 256,
    max_steps: int = MAX_STEPS,
    progress: bool = True,
) -> DemoDataset:
    """Expert episodes on tasks drawn uniformly from `tasks`.

    D (pretraining) uses epsilon > 0 if wanted, D* (discovery) epsilon = 0.
    Only successful episodes are kept, as in the paper; with epsilon = 0 all
    succeed. The result depends only on the arguments (num_envs included):
    the same seed gives the same dataset. Episode i's env was reset with
    seeds[i], so its layout and task can be rebuilt with
    `PinpadEnv(tasks).reset(seed=seeds[i])`.
    """
    if num_episodes < 1:
        raise ValueError(f'num_episodes must be >= 1, got {num_episodes}')
    env = VecPinpadEnv(num_envs, tasks = tasks, max_steps = max_steps)
    seed_sequence, expert_sequence = np.random.SeedSequence(seed).spawn(2)
    expert = PinpadExpert(epsilon, seed = expert_sequence)
    episode_seeds = np.random.default_rng(seed_sequence)
    parts, failed = [], 0
    with tqdm(total = num_episodes, desc = 'pinpad demos', unit = 'episode', disable = not progress) as bar:
        while sum(map(len, parts)) < num_episodes:
            seeds = episode_seeds.integers(0, 2 ** 63 - 1, size = num_envs)
            part = _expert_wave(env, expert, seeds)
            if len(part) == 0:  # would loop forever; only happens for extreme epsilon or max_steps
                raise ValueError(f'no episode out of {num_envs} succeeded with epsilon={epsilon}, max_steps={max_steps}')
            failed += num_envs - len(part)
            parts.append(part.head(num_episodes - sum(map(len, parts))))
            bar.update(len(part))
    metadata = {'env_name': ENV_ID, 'max_steps': max_steps, 'tasks': [list(t) for t in env.tasks], 'num_actions': NUM_ACTIONS,
                'subgoal_names': SUBGOAL_NAMES, 'epsilon': float(epsilon), 'seed': int(seed), 'num_envs': num_envs,
                'expert': 'bfs_shortest_path', 'failed_episodes_dropped': failed}
    dataset = DemoDataset.concatenate(parts)
    return replace(dataset, metadata = {**dataset.metadata, **metadata})


def _expert_wave(env: VecPinpadEnv, expert: PinpadExpert, seeds: np.ndarray) -> DemoDataset:
    """Run one episode per slot to the end; return the successful ones."""
    obs, _ = env.reset(seed = seeds.tolist())
    num, horizon = env.num_envs, env.max_steps
    observations = np.zeros((num, horizon, OBS_DIM), dtype = bool)  # slot-major, so [valid] concatenates episodes
    actions = np.zeros((num, horizon), dtype = np.int8)
    subgoals = np.zeros((num, horizon), dtype = np.int8)
    boundaries = np.zeros((num, horizon), dtype = bool)
    for t in range(horizon):
        observations[:, t] = obs
        actions[:, t] = expert.act(env)
        obs, _, _, _, info = env.step(actions[:, t])
        subgoals[:, t], boundaries[:, t] = info['subgoal'], info['boundary']
        if env.done.all():
            break
    keep = env.succeeded
    lens = env.elapsed[keep]
    valid = np.arange(horizon) < lens[:, None]
    return DemoDataset.from_steps(
        observations[keep][valid], actions[keep][valid], subgoals[keep][valid], boundaries[keep][valid],
        episode_lens = lens, task_ids = env.task_id[keep], seeds = seeds[keep], metadata = {},
    )
