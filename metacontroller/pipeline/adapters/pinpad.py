"""Gridworld pinpad behind the pipeline: the adapter, with the pipeline's presets as they are."""
from __future__ import annotations

from functools import partial

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
    )
