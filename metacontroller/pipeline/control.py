"""Control phase: ground-truth subgoal controllers on the frozen base (paper §2.2, Fig. 4, App. C.3).

The necessary condition for discovery and internal RL: a linear controller at
the cut, one per true subgoal, switched by the true label, must steer the base.
Trained on D* by action NLL (residual streams precomputed, as in discovery),
then scored twice: on held-out demonstrations (NLL, and the probability of an
episode-ending move where the next subgoal is still ambiguous), and in fresh
episodes where the live environment's subgoal picks the controller at every step.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch_einops_utils import lens_to_mask

from metacontroller import Transformer
from metacontroller.demos import NO_SUBGOAL, DemoBatch, DemoDataset
from metacontroller.distributed import SINGLE, Process
from metacontroller.pipeline import pretrain
from metacontroller.pipeline.adapter import EnvAdapter
from metacontroller.pipeline.config import ControlConfig
from metacontroller.pipeline.discover import Resume, StreamBatch, fit, fit_settings
from metacontroller.rl import evaluate
from metacontroller.subgoal_controller import SubgoalController
from metacontroller.transformer import frozen


def step_labels(batch: DemoBatch) -> torch.Tensor:
    """(b, t) subgoal ids with padding set to 0; an unlabelled valid step is an error."""
    valid = lens_to_mask(batch.episode_lens, batch.subgoals.shape[1])
    unlabelled = (valid & (batch.subgoals == NO_SUBGOAL)).sum().item()
    if unlabelled:
        raise ValueError(f'ground-truth controllers need a subgoal label at every step; {unlabelled} valid steps '
                         f'are unlabelled ({NO_SUBGOAL}): build D* with an expert that reports its subgoals')
    return batch.subgoals.masked_fill(~valid, 0)


def controlled_logits(model: Transformer, controller: SubgoalController, batch: DemoBatch, stream: torch.Tensor | None = None) -> torch.Tensor:
    """(b, t, num_actions) action logits of the base with the label's controller at the cut, on the residual
    stream e (b, t, d) when precomputed. No gradient to the base weights: one forward for training and scoring."""
    if stream is None:
        with torch.no_grad():
            stream = model.residual_stream(batch.observations, condition = batch.condition)
    with frozen(*model.base_modules()):
        return model.action_logits(batch.observations, stream = stream, intervention = partial(controller, labels = step_labels(batch)),
                                   condition = batch.condition)


def controlled_nll(model: Transformer, controller: SubgoalController, batch: DemoBatch, stream: torch.Tensor) -> torch.Tensor:
    """The controlled action NLL, mean over valid steps."""
    mask = lens_to_mask(batch.episode_lens, stream.shape[1])
    logits = controlled_logits(model, controller, batch, stream)
    return -model.action_readout.log_prob(logits, batch.actions.masked_fill(~mask, 0))[mask].mean()


def train(model: Transformer, controller: SubgoalController, batches: list[StreamBatch], config: ControlConfig, seed: int,
          progress: bool = True, process: Process = SINGLE, progress_file: Path | None = None, data_sha256: str = '') -> list[float]:
    """AdamW on the controlled action NLL, base frozen; returns the NLL per step (data parallel as in discovery).
    With a `progress_file` path the run saves its progress there and goes on from it, as discovery does."""
    def loss_fn(step, batch, stream):
        loss = controlled_nll(model, controller, batch, stream)
        return loss, loss[None]
    resume = None
    if progress_file is not None:   # the evaluation's episode count does not change the training
        settings = fit_settings(config, 'control', seed, data_sha256, next(model.parameters()).device, process, ignore = ('eval_episodes',))
        resume = Resume(progress_file, settings, 'control', reads = (model,))
    trace = fit(controller, batches, loss_fn, config.steps, config.lr, config.weight_decay, seed, 'control',
                dict(action_nll = '.3f'), progress, process, resume)
    return [nll for nll, in trace]


def subgoal_intervention(controller: SubgoalController):
    """intervention(env, e, rows) for `evaluate`: the controller of each slot's live ground-truth subgoal.
    The env must say which subgoal each slot pursues now (`env.subgoal`, (N,) ints, -1 once done)."""
    def intervene(env, stream: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if not hasattr(env, 'subgoal'):
            raise TypeError(f'{type(env).__name__} does not report its live subgoals (an `env.subgoal` property, (N,) ints): '
                            f'ground-truth controllers cannot be switched on it')
        labels, done = np.asarray(env.subgoal)[rows.numpy()], np.asarray(env.done)[rows.numpy()]
        if (labels[~done] < 0).any():
            raise ValueError(f'{type(env).__name__}.subgoal reports no subgoal (-1) for a running episode: expected a label in '
                             f'[0, {controller.num_subgoals}) for every slot not done')
        # a slot that has just finished reads -1 until the batch drops it; its action is ignored
        return controller(stream, torch.as_tensor(np.maximum(labels, 0), device = stream.device))
    return intervene


class ControlScores(NamedTuple):
    heldout: dict   # kind ('base', 'controlled') -> imitation metrics on the held-out demonstrations
    success: dict   # task set ('post_task', 'pretraining_tasks') -> kind (and kind + '_greedy') -> rollout statistics


def score(model: Transformer, controller: torch.nn.Module, adapter: EnvAdapter, heldout: DemoDataset, episodes: int, seed: int,
          device: str, process: Process = SINGLE) -> ControlScores:
    """The base with and without `controller` (stream (b, t, d), labels (b, t) -> ê): held-out imitation metrics per
    kind ('base', 'controlled'), and per task set ('post_task', 'pretraining_tasks') each kind's rollout statistics,
    sampled and greedy ('_greedy'), the live subgoal switching the controller, on the same seeded episodes."""
    sets = adapter.expert_action_sets(heldout) if adapter.expert_action_sets is not None else None
    scores = {kind: pretrain.imitation_metrics(model, heldout, device, action_sets = sets, logits_fn = logits_fn)
              for kind, logits_fn in (('base', None), ('controlled', lambda m, batch: controlled_logits(m, controller, batch)))}
    # common random numbers: every variant meets the same seeded episodes; sampled actions are the headline
    steer = subgoal_intervention(controller)
    rollouts = dict(base = (None, False), controlled = (steer, False), base_greedy = (None, True), controlled_greedy = (steer, True))
    success = {name: {kind: evaluate(model, adapter.make_envs(tasks), episodes, seed = seed, deterministic = greedy, process = process,
                                     intervention = intervention)._asdict()
                      for kind, (intervention, greedy) in rollouts.items()}
               for name, tasks in (('post_task', (adapter.post_task,)), ('pretraining_tasks', adapter.pretraining_tasks))}
    return ControlScores(scores, success)
