"""Pretraining phase: behaviour cloning of the base model on D (SPEC §2)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller import Transformer
from metacontroller.demos import ActionSets, DemoBatch, DemoDataset
from metacontroller.distributed import SINGLE, Process, adamw
from metacontroller.pipeline.config import PretrainConfig
from metacontroller.pipeline.data import bucketed_batches, length_order, ordered_batches, to_device
from metacontroller.progress import ProgressFormat, load_progress, run_settings, save_progress, starting_weights

PRETRAIN_PROGRESS = ProgressFormat('metacontroller-pretrain-progress', budget = 'steps', done = 'step', unit = 'steps',
                                   records = ('step', 'trace'))
# observations (b, t, ...) -> (b, t) next-event class ids, -1 where none follows (the adapter's next_events)
EventTargets = Callable[[torch.Tensor], torch.Tensor]
SAVE_EVERY = 500   # steps between progress saves: at the default size a save takes well under a second


def train(model: Transformer, dataset: DemoDataset, config: PretrainConfig, seed: int, device: str, progress: bool = True,
          process: Process = SINGLE, progress_file: Path | None = None, save_every: int = SAVE_EVERY,
          event_targets: EventTargets | None = None) -> list[float]:
    """AdamW on action NLL + λ · next-observation loss [+ next_event_weight · next-event cross-entropy, whose
    targets `event_targets` reads from each batch's observations]; returns the action-NLL trace (one value per step).
    Data parallel over `process`'s ranks: every rank draws the same global batches and trains on its part.
    With a `progress_file` path, the progress is saved there every `save_every` steps and at the end, and a
    run that finds it there goes on from it (`metacontroller.progress`), exactly as if never stopped."""
    if (config.next_event_weight > 0) != (event_targets is not None) or (event_targets is not None and model.event_readout is None):
        raise ValueError(f'next_event_weight > 0 takes event_targets and a model built with num_event_classes, 0 takes no event_targets; '
                         f'got weight {config.next_event_weight}, event_targets {event_targets is not None}, head {model.event_readout is not None}')
    params = list(model.parameters())
    process.broadcast_parameters(model)
    optimizer = adamw(params, config.lr, config.weight_decay)
    batches = bucketed_batches(dataset, config.batch_size, np.random.default_rng(seed), min_size = process.world_size)
    trace, event_trace, start = [], [], 0
    if progress_file is not None:
        # eval_episodes is read after training; init's file is in the starting weights, wherever it lies
        settings = run_settings(config, PRETRAIN_PROGRESS, next(model.parameters()).device, process, ignore = ('eval_episodes', 'init'),
                                seed = seed, starting_weights_sha256 = starting_weights(model), data_sha256 = dataset.fingerprint(),
                                cooldown_ends_at = cooldown_end(config))
        records = load_progress(progress_file, PRETRAIN_PROGRESS, settings, config.steps, model, optimizer, 'pretrain', process)
        if records is not None:
            trace, start = records['trace'], records['step']
            for _ in range(start):   # draw the batches the saved run drew: the sampler goes on from the same place
                next(batches)
    model.train()
    with tqdm(range(start, config.steps), initial = start, total = config.steps, desc = 'pretrain',
              disable = not (progress and process.is_main)) as bar:
        for step in bar:
            indices = next(batches)
            batch = to_device(dataset.batch(indices[process.shard(len(indices))]), device)
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(config, step)
            losses = train_step(model, batch, optimizer, params, config, process, event_targets)
            trace.append(losses.action.item())
            if losses.event is not None:
                event_trace.append(losses.event.item())
            if step % 10 == 0:
                shown = dict(action_nll = f'{np.mean(trace[-50:]):.3f}')
                if event_trace:
                    shown['next_event_ce'] = f'{np.mean(event_trace[-50:]):.3f}'
                bar.set_postfix(shown)
            if progress_file is not None and ((step + 1) % save_every == 0 or step + 1 == config.steps):
                save_progress(progress_file, PRETRAIN_PROGRESS, settings, config.steps, model, optimizer,
                              dict(step = step + 1, trace = trace), process)
    model.eval()
    return trace


def cooldown_end(config: PretrainConfig) -> int | None:
    """The step a cool-down decays the rate to, the budget itself (None without one). Every late step's rate
    depends on it, so a run with a cool-down cannot go on to a larger budget: its progress and the runner refuse."""
    return config.steps if config.cooldown_steps else None


def learning_rate(config: PretrainConfig, step: int) -> float:
    """The rate of step `step` (from 0): constant, then over the last `cooldown_steps` a linear decay whose
    last step takes lr / cooldown_steps (warmup-stable-decay without the warm-up)."""
    left = config.steps - step   # this step included
    return config.lr * min(1.0, left / config.cooldown_steps) if config.cooldown_steps else config.lr


class StepLosses(NamedTuple):
    action: torch.Tensor          # action NLL, averaged over ranks
    event: torch.Tensor | None    # next-event cross-entropy, averaged over ranks; None without the head


def train_step(model: Transformer, batch: DemoBatch, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
               config: PretrainConfig, process: Process = SINGLE, event_targets: EventTargets | None = None) -> StepLosses:
    """One optimiser step on `batch`; returns its losses, detached."""
    # at λ = 0 the next-observation readout is skipped: it would only cost time
    inputs = dict(episode_lens = batch.episode_lens, predict_state = config.state_loss_weight > 0, condition = batch.condition)
    # each loss is a mean over its own steps: the action's every valid step, the state's those with a next one,
    # the next event's those with an event ahead
    counts = [batch.episode_lens.sum(), (batch.episode_lens - 1).sum()]
    with process.autocast():
        if event_targets is None:
            losses = model(batch.observations, batch.actions, **inputs)
        else:
            targets = event_targets(batch.observations)   # (b, t), -1: no event ahead
            counts.append(((targets >= 0) & lens_to_mask(batch.episode_lens, targets.shape[1])).sum())
            losses = model.next_event_losses(batch.observations, batch.actions, targets, **inputs)
    share = process.share(torch.stack(counts))
    loss = losses.action * share[0]
    if losses.state is not None:
        loss = loss + config.state_loss_weight * losses.state * share[1]
    if event_targets is not None:
        loss = loss + config.next_event_weight * losses.event * share[2]
    process.optimizer_step(loss, optimizer, params, config.max_grad_norm)
    event = process.mean(losses.event.detach() * share[2]) if event_targets is not None else None
    return StepLosses(process.mean(losses.action.detach() * share[0]), event)


@torch.no_grad()
def imitation_metrics(model: Transformer, dataset: DemoDataset, device: str, batch_size: int = 256,
                      action_sets: ActionSets | None = None,
                      logits_fn: Callable[[Transformer, DemoBatch], torch.Tensor] | None = None) -> dict:
    """Action NLL and expert-match rate (argmax action = the expert's) over valid steps.
    The expert breaks ties at random, so expert_match < 1 even for a perfect imitator.

    With the expert's `action_sets` (rows as in `dataset`), also where the model
    falls short of it: `action_nll_floor` (the NLL of the expert itself, uniform
    over its tied optimal actions), `p_optimal` and `p_fatal` (mean probability
    the model puts on optimal and on episode-ending actions), and
    `expert_path_survival` (mean over episodes of the chance that sampling never
    picks a fatal action along the expert's path; on-policy drift makes the
    model's own success lower still). Where the sets mark onsets, `p_fatal_onset`
    is `p_fatal` over the steps heading to a subgoal's first stage.

    `logits_fn(model, batch)` scores another policy than the base model alone on the
    same footing, e.g. the base under ground-truth subgoal controllers."""
    nll, match, probs = [], [], []
    for batch in ordered_batches(dataset, batch_size, device):
        logits = model.action_logits(batch.observations, condition = batch.condition) if logits_fn is None else logits_fn(model, batch)
        mask = lens_to_mask(batch.episode_lens, logits.shape[1])
        log_probs = logits.log_softmax(dim = -1)
        nll.append(-log_probs.gather(-1, batch.actions[..., None])[..., 0][mask])
        match.append((logits.argmax(dim = -1) == batch.actions)[mask])
        probs.append(log_probs.exp()[mask])
    metrics = dict(action_nll = torch.cat(nll).mean().item(), expert_match = torch.cat(match).float().mean().item())
    if action_sets is None:
        return metrics

    order = length_order(dataset)
    rows = dataset.rows(order)   # the stored row of each step above, in the same order
    probs = torch.cat(probs).cpu().numpy()
    optimal, fatal = action_sets.optimal[rows], action_sets.fatal[rows]
    p_fatal = (probs * fatal).sum(-1)
    episode = np.repeat(np.arange(len(order)), dataset.episode_lens[order])
    log_survival = np.bincount(episode, weights = np.log1p(-np.minimum(p_fatal, 1 - 1e-7)))
    metrics = dict(metrics, action_nll_floor = float(np.log(optimal.sum(-1)).mean()), p_optimal = float((probs * optimal).sum(-1).mean()),
                   p_fatal = float(p_fatal.mean()), expert_path_survival = float(np.exp(log_survival).mean()))
    if action_sets.onset is not None:
        metrics['p_fatal_onset'] = float(p_fatal[action_sets.onset[rows]].mean())
    return metrics


@torch.no_grad()
def next_event_metrics(model: Transformer, dataset: DemoDataset, event_targets: EventTargets, device: str, batch_size: int = 256) -> dict:
    """The next-event head on `dataset`: cross-entropy and accuracy over valid steps with an event ahead, and
    the share of steps that have one (pinpad: the steps after an episode's last colour entered have none)."""
    ce, hits, known_share = [], [], []
    for batch in ordered_batches(dataset, batch_size, device):
        targets = event_targets(batch.observations)
        mask = lens_to_mask(batch.episode_lens, targets.shape[1])
        known = mask & (targets >= 0)
        logits = model.event_logits(batch.observations, condition = batch.condition)[known]
        ce.append(F.cross_entropy(logits, targets[known], reduction = 'none'))
        hits.append(logits.argmax(-1) == targets[known])
        known_share.append(known[mask])
    return dict(next_event_ce = torch.cat(ce).mean().item(), next_event_accuracy = torch.cat(hits).float().mean().item(),
                next_event_steps = torch.cat(known_share).float().mean().item())
