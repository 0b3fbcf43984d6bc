"""Gridworld pinpad behind the pipeline: the adapter, with the pipeline's presets as they are."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import Tensor

from metacontroller.egocentric import EgocentricEncoder
from metacontroller.envs import pinpad
from metacontroller.envs.pinpad_expert import generate_pinpad_demos, pinpad_action_sets
from metacontroller.pipeline.adapter import EnvAdapter


def pinpad_adapter() -> EnvAdapter:
    return EnvAdapter(
        name = 'pinpad',
        obs_dim = pinpad.OBS_DIM,
        num_actions = pinpad.NUM_ACTIONS,
        subgoal_names = pinpad.SUBGOAL_NAMES,
        pretraining_tasks = pinpad.PRETRAINING_TASKS,
        post_task = pinpad.POST_TRAINING_TASK,
        post_task_name = pinpad.POST_TRAINING_TASK_NAME,
        generate_demos = generate_pinpad_demos,
        vector_env = partial(pinpad.VecPinpadEnv, max_steps = pinpad.MAX_STEPS),
        # a fixed egocentric re-indexing of the grid: BC learns about twice as fast per step at CPU scale
        state_encoder = partial(EgocentricEncoder, height = pinpad.GRID, width = pinpad.GRID,
                                channels = pinpad.NUM_CHANNELS, agent_channel = pinpad.AGENT_CHANNEL),
        expert_action_sets = pinpad_action_sets,
        parse_task = pinpad.task_from_subgoals,
        reports_entered_subgoal = True,
        rotate_episodes = turn_episodes,
    )


def turn_episodes(observations: Tensor, actions: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """(b, t, 637) one-hot grids and (b, t) moves -> the same episodes turned by 1-3 quarter turns (one draw)."""
    cells, moves = (torch.from_numpy(m).to(observations.device) for m in pinpad.quarter_turn(int(rng.integers(1, 4))))
    grid = observations.unflatten(-1, (pinpad.NUM_CELLS, pinpad.NUM_CHANNELS))[..., cells, :]
    return grid.flatten(-2), moves[actions]
