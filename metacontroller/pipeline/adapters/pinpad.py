"""Gridworld pinpad behind the pipeline: the adapter, with the pipeline's presets as they are."""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from einops import rearrange
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
        next_events = next_colours,
        events = colour_entries,
        num_event_classes = pinpad.NUM_COLOURS,
    )


def turn_episodes(observations: Tensor, actions: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """(b, t, 637) one-hot grids and (b, t) moves -> the same episodes turned by 1-3 quarter turns (one draw)."""
    cells, moves = (torch.from_numpy(m).to(observations.device) for m in pinpad.quarter_turn(int(rng.integers(1, 4))))
    grid = observations.unflatten(-1, (pinpad.NUM_CELLS, pinpad.NUM_CHANNELS))[..., cells, :]
    return grid.flatten(-2), moves[actions]


def colours_underfoot(observations: Tensor) -> Tensor:
    """(b, t, 637) one-hot grids -> (b, t): the colour of the agent's cell, -1 where it stands on none."""
    grid = rearrange(observations, 'b t (cells channels) -> b t cells channels', channels = pinpad.NUM_CHANNELS)
    agent = grid[..., pinpad.AGENT_CHANNEL].argmax(-1)                                                  # (b, t)
    under = grid[..., :pinpad.NUM_COLOURS].gather(2, agent[..., None, None].expand(-1, -1, 1, pinpad.NUM_COLOURS))[:, :, 0]
    return torch.where(under.sum(-1) > 0, under.argmax(-1), -1)


def colour_entries(observations: Tensor) -> Tensor:
    """(b, t, 637) one-hot grids -> (b, t) bool: the steps at which the agent has entered a colour (padding's
    all-zero steps stand on none). On expert episodes these are each pair's two colours: its second colour
    ends the subgoal (a boundary), its first lies inside it."""
    return entries(colours_underfoot(observations))


def entries(colour: Tensor) -> Tensor:
    """(b, t) colour underfoot (-1: none) -> (b, t) bool: where it changes to a colour."""
    before = torch.cat((torch.full_like(colour[:, :1], -1), colour[:, :-1]), 1)
    return (colour >= 0) & (colour != before)


def next_colours(observations: Tensor) -> Tensor:
    """(b, t, 637) one-hot grids -> (b, t): the colour the agent enters next after each step, -1 where the episode
    shows no later entry (padding included). Read from the episode's own observations, no labels: on expert
    episodes it is the next stage of the current subgoal."""
    colour = colours_underfoot(observations)
    entered = entries(colour)
    # scan backwards: the target at t is the colour of the first entry after t
    targets, upcoming = torch.full_like(colour, -1), torch.full_like(colour[:, 0], -1)
    for t in range(colour.shape[1] - 1, -1, -1):
        targets[:, t] = upcoming
        upcoming = torch.where(entered[:, t], colour[:, t], upcoming)
    return targets
