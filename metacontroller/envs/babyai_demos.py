"""BabyAI demonstrations from minigrid's `BabyAIBot`, in the `DemoDataset` format.

The bot plans with a stack of subgoals built from the mission (go next to X;
pick up; drop; ...). The ground-truth subgoal of a step is the mission
instruction that owns the top-most of those original subgoals still on the
stack (detours the bot pushes while replanning belong to it too), labelled
2 · slot + kind (`SUBGOAL_NAMES`); a boundary is a step where that instruction
changes (and the first step). With probability ε a step takes a random move
(left, right, forward) instead; the bot is told and replans. Never a random
toggle or done: toggling a box destroys it and makes the mission unsolvable.

Episode k of a call is played from seed `episode_seed(seed, k)`: attempts are
cut into fixed chunks, so the dataset depends only on the arguments, whatever
the number of worker processes. Only successful episodes are kept.

With `mission_condition` the stored observations are the same, and the dataset's
metadata says that their last MISSION_DIM features are the episode's condition:
its batches hold the scene as observations and the mission as `condition`.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import NamedTuple, Sequence

import numpy as np
from minigrid.utils.baby_ai_bot import BabyAIBot, DisappearedBoxError
from tqdm.auto import tqdm

from metacontroller.demos import DemoDataset
from metacontroller.envs.babyai import (
    KINDS,
    MAX_STEPS,
    MISSION_DIM,
    MOVE_ACTIONS,
    NUM_ACTIONS,
    OBS_DIM,
    PRETRAINING_LEVELS,
    SUBGOAL_NAMES,
    SequenceLevel,
    encode_obs,
    reset_episode,
    validate_levels,
)

CHUNK = 64   # attempts per unit of work


class Episode(NamedTuple):
    observations: np.ndarray   # (T, OBS_DIM) bool
    actions: np.ndarray        # (T,) int8
    subgoals: np.ndarray       # (T,) int8
    success: bool
    task_id: int
    seed: int


def episode_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def plan_owners(bot: BabyAIBot, env: SequenceLevel) -> dict[int, tuple[object, int]]:
    """Rebuild the bot's initial stack one instruction at a time -> {id(subgoal): (subgoal, slot)}.
    The stack's bottom holds the instruction done last. The subgoal objects are kept in the map
    so that their ids stay theirs: a freed id can be reused by a later detour subgoal."""
    bot.stack.clear()
    owners = {}
    for slot in reversed(env.execution_order):
        start = len(bot.stack)
        bot._process_instr(env.slot_instrs[slot])
        owners.update({id(subgoal): (subgoal, slot) for subgoal in bot.stack[start:]})
    return owners


def current_label(bot: BabyAIBot, env: SequenceLevel, owners: dict[int, tuple[object, int]]) -> int:
    """Label (2 · slot + kind) of the instruction owning the top-most original subgoal on the stack."""
    original = (owners[id(s)][1] for s in reversed(bot.stack) if id(s) in owners and owners[id(s)][0] is s)
    slot = next(original, env.execution_order[-1])
    return 2 * slot + KINDS.index(env.instructions[slot].kind)


def play(env: SequenceLevel, levels: Sequence[str], seed: int, epsilon: float) -> Episode:
    """One bot episode (ε-random moves drawn from the episode seed)."""
    obs, level = reset_episode(env, levels, seed)
    rng = np.random.default_rng([seed, 1])
    bot = BabyAIBot(env)
    owners = plan_owners(bot, env)
    observations, actions, labels = [], [], []
    taken, reward, done = None, 0., False
    try:
        while not done:
            suggested = bot.replan(taken)
            taken = int(rng.choice(MOVE_ACTIONS)) if rng.random() < epsilon else int(suggested)
            observations.append(obs)
            actions.append(taken)
            labels.append(current_label(bot, env, owners))
            raw, reward, terminated, truncated, _ = env.step(taken)
            obs, done = encode_obs(env, raw), terminated or truncated
    except DisappearedBoxError:   # an ε-move can leave the bot in front of a box it then toggles
        reward = 0.
    return Episode(np.array(observations, dtype = bool).reshape(-1, OBS_DIM), np.array(actions, dtype = np.int8),
                   np.array(labels, dtype = np.int8), reward > 0, level, seed)


def play_chunk(levels: tuple[str, ...], seed: int, chunk: int, epsilon: float, max_steps: int) -> list[Episode]:
    env = SequenceLevel(max_steps)
    return [play(env, levels, episode_seed(seed, attempt), epsilon) for attempt in range(chunk * CHUNK, (chunk + 1) * CHUNK)]


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(T,) bool: the first step and every step where the pursued instruction (slot = label // 2) changes."""
    slots = labels // 2
    return np.concatenate([[True], slots[1:] != slots[:-1]])


def to_dataset(episodes: list[Episode]) -> DemoDataset:
    return DemoDataset.from_steps(
        np.concatenate([e.observations for e in episodes]), np.concatenate([e.actions for e in episodes]),
        np.concatenate([e.subgoals for e in episodes]), np.concatenate([boundaries(e.subgoals) for e in episodes]),
        episode_lens = np.array([len(e.actions) for e in episodes]), task_ids = np.array([e.task_id for e in episodes]),
        seeds = np.array([e.seed for e in episodes]), metadata = {},
    )


def generate_babyai_demos(num_episodes: int, tasks: Sequence[str] = PRETRAINING_LEVELS, epsilon: float = 0., seed: int = 0,
                          max_steps: int = MAX_STEPS, workers: int = 1, progress: bool = True,
                          mission_condition: bool = False) -> DemoDataset:
    """`num_episodes` successful bot episodes on levels drawn uniformly from `tasks` (level names)."""
    if num_episodes < 1:
        raise ValueError(f'num_episodes must be >= 1, got {num_episodes}')
    if not 0. <= epsilon <= 1.:
        raise ValueError(f'epsilon must be in [0, 1], got {epsilon}')
    if workers < 1:
        raise ValueError(f'workers must be >= 1, got {workers}')
    levels = validate_levels(tasks)
    kept, attempts, chunk = [], 0, 0
    pool = ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext()
    with tqdm(total = num_episodes, desc = 'babyai demos', unit = 'episode', disable = not progress) as bar, pool:
        mapper = pool.map if workers > 1 else map
        while len(kept) < num_episodes:
            wave = range(chunk, chunk + workers)   # one chunk per worker
            for part in mapper(play_chunk, *zip(*[(levels, seed, c, epsilon, max_steps) for c in wave])):
                wins = [e for e in part if e.success]
                kept += wins
                attempts += len(part)
                bar.update(len(wins))
            chunk += len(wave)
            if not kept and attempts >= 4 * CHUNK:
                raise ValueError(f'the bot solved none of {attempts} episodes with epsilon={epsilon}, max_steps={max_steps}')
    dataset = to_dataset(kept[:num_episodes])
    metadata = dict(env_name = 'babyai', levels = list(levels), tasks = list(levels), subgoal_names = SUBGOAL_NAMES, num_actions = NUM_ACTIONS,
                    max_steps = max_steps, epsilon = float(epsilon), seed = int(seed), expert = 'minigrid BabyAIBot',
                    attempts = attempts, bot_success_rate = len(kept) / attempts)
    if mission_condition:
        metadata['condition_features'] = MISSION_DIM
    return replace(dataset, metadata = {**dataset.metadata, **metadata})
