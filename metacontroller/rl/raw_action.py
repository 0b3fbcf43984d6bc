"""Baseline (a): raw-action RL. The same GRPO-style PPO update, on the pretrained model's
own action distribution at every raw step (paper C.5.3), starting from the pretrained
weights; all base weights trainable, or the subset named by `config.raw_trainable`."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from metacontroller.distributed import SINGLE, Process, adamw
from metacontroller.ppo import ppo_clip_loss
from metacontroller.rl.config import RLConfig, RLResult
from metacontroller.rl.evaluate import evaluate
from metacontroller.rl.rollout import Episodes, StepRecord, run_episodes
from metacontroller.rl.seeds import eval_seed
from metacontroller.rl.trainer import local_num_envs, ppo_epochs, run_training
from metacontroller.transformer import Transformer


class RawBatch(NamedTuple):
    states: Tensor      # (N, T, ...) observations the model saw
    actions: Tensor     # (N, T) raw actions taken
    log_probs: Tensor   # (N, T) their log-probs at sampling time
    episodes: Episodes
    condition: Tensor | None = None   # (N, dim_condition) each episode's condition, for a conditioned model

    @property
    def valid(self) -> Tensor:
        """(N, T) bool: steps inside each episode."""
        steps = torch.arange(self.actions.shape[1], device = self.actions.device)
        return steps[None] < self.episodes.lengths.to(self.actions.device)[:, None]


class RawRecorder:
    def __init__(self, model: Transformer):
        self.model = model
        self.states, self.actions, self.log_probs = [], [], []
        self.condition = None

    def record(self, step: StepRecord):
        if self.condition is None and step.condition is not None:   # constant over an episode; every row is in the first step
            self.condition = step.scatter(step.condition)
        self.states.append(step.scatter(step.state))          # finished slots: zeros, masked by `valid`
        self.actions.append(step.scatter(step.action))
        self.log_probs.append(step.scatter(self.model.action_readout.log_prob(step.logits, step.action[:, None])[:, 0]))

    def batch(self, episodes: Episodes) -> RawBatch:
        stack = lambda xs: torch.stack(xs, dim = 1)
        return RawBatch(torch.cat(self.states, dim = 1), stack(self.actions), stack(self.log_probs), episodes, self.condition)


def raw_log_probs(model: Transformer, states: Tensor, actions: Tensor, condition: Tensor | None = None) -> Tensor:
    """Full-sequence recomputation, with gradients: (N, T, ...), (N, T)[, condition (N, c)] -> (N, T) log p(a_t | o_{1:t})."""
    return model.action_readout.log_prob(model.action_logits(states, actions, condition = condition), actions)


def trainable_parameters(model: Transformer, prefixes: tuple[str, ...] | None) -> list[nn.Parameter]:
    """The base model's parameters whose names start with one of `prefixes` (all when None);
    the rest are frozen. An attached metacontroller is never trained here."""
    chosen = []
    for name, param in model.named_parameters():
        keep = not name.startswith('meta_controller.') and (prefixes is None or name.startswith(tuple(prefixes)))
        param.requires_grad_(keep)
        if keep:
            chosen.append(param)
    if not chosen:
        raise ValueError(f'raw_trainable {prefixes!r} selects no parameter of the base model')
    return chosen


def raw_update(model: Transformer, batch: RawBatch, advantages: Tensor, optimizer, params, config: RLConfig,
               process: Process = SINGLE) -> float:
    valid = batch.valid

    def loss_fn(rows):
        horizon = int(batch.episodes.lengths[rows.cpu()].max())   # trim padding past the longest episode
        condition = None if batch.condition is None else batch.condition[rows]
        log_probs = raw_log_probs(model, batch.states[rows, :horizon], batch.actions[rows, :horizon], condition)
        return ppo_clip_loss(log_probs, batch.log_probs[rows, :horizon], advantages[rows], valid[rows, :horizon], config.clip)

    return ppo_epochs(loss_fn, valid.sum(dim = 1), optimizer, params, config, process)


def train_raw_action_rl(
    model: Transformer,
    make_envs: Callable[[int], object],
    config: RLConfig,
    seed: int = 0,
    progress: bool = True,
    process: Process = SINGLE,
    progress_file: str | Path | None = None,
) -> RLResult:
    """PPO on raw actions of a deep copy of `model`; the trained copy is `result.module`.
    With a `progress_file` path the run saves its progress there and goes on from it (`trainer.run_training`).
    With a multi-process `process`, every rank calls this with the same arguments."""
    if not isinstance(config, RLConfig):
        raise TypeError(f'config must be an RLConfig, got {type(config).__name__}')
    if config.algorithm != 'ppo':
        raise ValueError(f'the raw-action baseline is PPO only, got algorithm = {config.algorithm!r}')
    policy = copy.deepcopy(model)
    process.broadcast_parameters(policy)
    params = trainable_parameters(policy, config.raw_trainable)
    optimizer = adamw(params, config.lr, config.weight_decay, config.betas)
    env = make_envs(local_num_envs(config, process))

    def collect(seeds):
        recorder = RawRecorder(policy)
        episodes = run_episodes(policy, env, seeds, recorder = recorder, max_steps = config.max_steps)
        return recorder.batch(episodes)

    def update(batch, advantages):
        return raw_update(policy, batch, advantages, optimizer, params, config, process)

    def evaluate_fn():
        return evaluate(policy, make_envs, config.eval_episodes, seed = eval_seed(seed), deterministic = config.eval_deterministic,
                        batch_size = config.num_envs, max_steps = config.max_steps, process = process)

    return run_training(collect, update, evaluate_fn, policy, config, seed, progress, 'raw-action RL', process, optimizer, progress_file)
