"""BabyAI behind the pipeline: the adapter, with presets sized for BabyAI's short episodes.

The adapter's `preset_overrides` change some of the pipeline's preset values; the
command line's `--section.field` flags still override them, `--help` shows them,
and config.json records the values used.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

from metacontroller.envs.babyai import (
    MAX_STEPS,
    MISSION_DIM,
    NUM_ACTIONS,
    OBS_DIM,
    POST_TRAINING_LEVEL,
    PRETRAINING_LEVELS,
    SCENE_DIM,
    SUBGOAL_NAMES,
    VecBabyAIEnv,
)
from metacontroller.envs.babyai_demos import generate_babyai_demos
from metacontroller.pipeline.adapter import EnvAdapter

# preset -> {'section.field': value} applied on top of the pipeline's preset of that name
BABYAI_OVERRIDES: dict[str, dict[str, Any]] = dict(
    smoke = {'data.pretrain_episodes': 128, 'data.discovery_episodes': 64, 'data.heldout_episodes': 32,
             'data.post_task_episodes': 8, 'pretrain.eval_episodes': 16, 'rl.num_envs': 8, 'rl.total_episodes': 16,
             'rl.eval_every': 8, 'rl.eval_episodes': 8, 'rl.final_eval_episodes': 16},
    # Episodes are short (about 10 steps), so D is larger than pinpad's and BC trains longer
    # (3000 steps: BC success 0.72 of the bot's, 6000: 0.79); the mission is observed, so the
    # KL weight that keeps z informative is smaller (α = 0.1 collapses to one switch per
    # episode); an RL episode costs about 8 ms of env time on CPU, hence 20k per method.
    default = {'data.pretrain_episodes': 20_000, 'data.discovery_episodes': 3_000, 'pretrain.steps': 6_000,
               'discovery.alpha': 0.01, 'rl.total_episodes': 20_000},
    paper = {'discovery.alpha': 0.01},
)


def babyai_adapter(mission_condition: bool = False) -> EnvAdapter:
    """mission_condition (`--model.task_condition`): the mission reaches the base model as a condition
    vector (MISSION_DIM) through its adaptive norms, and the observation is the scene alone."""
    return EnvAdapter(
        name = 'babyai',
        obs_dim = SCENE_DIM if mission_condition else OBS_DIM,
        num_actions = NUM_ACTIONS,
        subgoal_names = SUBGOAL_NAMES,
        pretraining_tasks = PRETRAINING_LEVELS,
        post_task = POST_TRAINING_LEVEL,
        post_task_name = POST_TRAINING_LEVEL,
        # the bot is pure Python: one worker per core (the episodes do not depend on the worker count)
        generate_demos = partial(generate_babyai_demos, workers = min(os.cpu_count() or 1, 8), mission_condition = mission_condition),
        vector_env = partial(VecBabyAIEnv, max_steps = MAX_STEPS, mission_condition = mission_condition),
        preset_overrides = BABYAI_OVERRIDES,
        dim_condition = MISSION_DIM if mission_condition else None,
        task_condition_variant = babyai_adapter,
    )
