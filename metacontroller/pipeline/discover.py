"""Discovery phase: train the metacontroller on D* with the base frozen (SPEC §3).

The residual stream at the cut depends only on the observations (the lower
body never sees the intervention), so it is computed once per dataset and
reused every epoch: each step then costs the metacontroller plus the upper body.
With several processes, each rank keeps the streams of its part of every batch.
With --discovery.rotation_consistency a step also runs the lower body on the
turned batch (a fresh turn each step) and the upper body on it; with
--discovery.cut_history, on the batch cut at one of each episode's switches; with
--discovery.next_event_weight, a head on the codes predicts each step's next event.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller import MetaController, Transformer
from metacontroller.demos import DemoBatch, DemoDataset
from metacontroller.distributed import SINGLE, Process, adamw
from metacontroller.pipeline.config import DiscoveryConfig
from metacontroller.pipeline.data import epoch_batches, ordered_batches, to_device
from metacontroller.pipeline.metrics import SwitchCounts, beta_binary_fraction, decision_steps, switch_counts
from metacontroller.progress import ProgressFormat, load_progress, run_settings, save_progress, starting_weights
from metacontroller.switching import decisions
from metacontroller.transformer import frozen


class NextEvents(NamedTuple):
    """--discovery.next_event_weight (ours, not the paper's objective): a head on the held code z_t predicts the next
    event the episode shows after step t (the adapter's `next_events`; pinpad: the next colour the agent enters), so
    that a code must say where it leads by itself, whatever came before it. Trained with the metacontroller, then dropped."""
    targets: Callable[[torch.Tensor], torch.Tensor]   # observations (b, t, ...) -> (b, t) class ids, -1 where none follows
    head: torch.nn.Linear                              # n_z -> number of event classes


class StreamBatch(NamedTuple):
    batch: DemoBatch
    stream: torch.Tensor   # e at the cut (b, t, d), no grad


@torch.no_grad()
def precompute(model: Transformer, dataset: DemoDataset, batch_size: int, seed: int, device: str,
               process: Process = SINGLE) -> list[StreamBatch]:
    """One epoch of length-bucketed batches (this rank's part of each) with their residual streams."""
    out = []
    for indices in epoch_batches(dataset, batch_size, np.random.default_rng(seed), min_size = process.world_size):
        batch = to_device(dataset.batch(indices[process.shard(len(indices))]), device)
        out.append(StreamBatch(batch, model.residual_stream(batch.observations, condition = batch.condition)))
    return out


def kl_weight(alpha: float, step: int, warmup_steps: int = 0) -> float:
    """The KL weight at optimiser step `step` (counted from 0): α·min(step / warmup_steps, 1).
    warmup_steps = 0 is the paper's constant α; the warm-up is ours (SPEC §3 optional extras)."""
    if warmup_steps < 0:
        raise ValueError(f'kl_warmup_steps must be >= 0 (0: constant alpha), got {warmup_steps}')
    return alpha if warmup_steps == 0 else alpha * min(step / warmup_steps, 1.)


FIT_PROGRESS = ProgressFormat('metacontroller-fit-progress', budget = 'steps', done = 'step', unit = 'steps',
                              records = ('step', 'trace', 'numpy_streams'))
SAVE_EVERY = 200   # steps between progress saves: a few minutes of discovery at the default size, a save well under a second


class Resume(NamedTuple):
    """Where `fit` keeps its progress, and what a run must share to go on from it: `settings` (`fit_settings`),
    and the weights it starts from, those of the module it trains and of the modules in `reads`."""
    path: Path
    settings: dict
    name: str                              # names the run in the log line
    reads: tuple[torch.nn.Module, ...] = ()


def fit_settings(config, kind: str, seed: int, data_sha256: str, device: torch.device, process: Process,
                 ignore: tuple[str, ...] = (), **identity) -> dict:
    """The settings a `fit` run's progress must share with the run that goes on from it: `config` but its step
    budget and the fields in `ignore` (those that do not change the training), the seed and the data."""
    if not data_sha256:
        raise ValueError('a progress file needs the fingerprint of the episodes it trains on (data_sha256 = '
                         'DemoDataset.fingerprint()), to tell a run on other data from this one')
    return run_settings(config, FIT_PROGRESS, device, process, ignore, kind = kind, seed = seed, data_sha256 = data_sha256, **identity)


def fit(module: torch.nn.Module, batches: list[StreamBatch], loss_fn: Callable, steps: int, lr: float, weight_decay: float,
        seed: int, desc: str, formats: dict[str, str], progress: bool = True, process: Process = SINGLE,
        resume: Resume | None = None, streams: tuple[np.random.Generator, ...] = ()) -> list[tuple[float, ...]]:
    """The loop of every phase that trains a module on precomputed streams, base frozen (discovery, control):
    AdamW, one batch drawn per step, the same on every rank, each rank training on its part (from `precompute`).

    loss_fn(step, batch, stream) -> (loss, logged): logged is a 1-d tensor of means over valid steps, one per
    name in `formats` (name -> format spec of the progress bar); returns the logged values per step.
    With `resume`, the progress is saved every `SAVE_EVERY` steps and at the end, and a run that finds it
    goes on from it exactly; `streams` are the loss's own numpy generators, saved and restored with it."""
    params = list(module.parameters())
    process.broadcast_parameters(module)
    optimizer = adamw(params, lr, weight_decay)
    rng = np.random.default_rng(seed)
    generators = (rng, *streams)
    trace, start = [], 0
    if resume is not None:
        # after the broadcast, so that every rank names the same starting weights
        settings = dict(resume.settings, starting_weights_sha256 = starting_weights(module, *resume.reads))
        records = load_progress(resume.path, FIT_PROGRESS, settings, steps, module, optimizer, resume.name, process)
        if records is not None:
            trace, start = [tuple(values) for values in records['trace']], records['step']
            for generator, state in zip(generators, records['numpy_streams'], strict = True):
                generator.bit_generator.state = json.loads(state)
    module.train()
    bar = tqdm(range(start, steps), initial = start, total = steps, desc = desc, disable = not (progress and process.is_main))
    with bar, process.autocast():   # bf16 or a no-op; `process.backward` runs the backward outside it
        for step in bar:
            batch, stream = batches[rng.integers(len(batches))]
            share = process.share(batch.episode_lens.sum())   # the losses are means over valid steps
            loss, logged = loss_fn(step, batch, stream)
            process.optimizer_step(loss * share, optimizer, params)
            trace.append(tuple(process.mean(logged.detach() * share).tolist()))
            if step % 10 == 0:
                means = np.mean(trace[-50:], axis = 0)
                bar.set_postfix({name: format(value, spec) for (name, spec), value in zip(formats.items(), means)})
            if resume is not None and ((step + 1) % SAVE_EVERY == 0 or step + 1 == steps):
                # numpy states as JSON: their 128-bit integers are plain values to weights_only loading that way
                numpy_streams = [json.dumps(generator.bit_generator.state) for generator in generators]
                save_progress(resume.path, FIT_PROGRESS, settings, steps, module, optimizer,
                              dict(step = step + 1, trace = trace, numpy_streams = numpy_streams), process)
    module.eval()
    return trace


def train(model: Transformer, meta_controller: MetaController, batches: list[StreamBatch], alpha: float,
          config: DiscoveryConfig, seed: int, progress: bool = True, process: Process = SINGLE,
          rotate_episodes: Callable | None = None, progress_file: Path | None = None, data_sha256: str = '',
          next_events: NextEvents | None = None) -> list[tuple[float, ...]]:
    """AdamW on action NLL + α·KL (α applied here and only here, warmed up over `config.kl_warmup_steps`
    counted by this loop's step); returns (nll, kl) per step. Data parallel, as `fit`.

    With `rotate_episodes` (the adapter's, for --discovery.rotation_consistency; not the paper's objective) the
    codes read from each episode must also steer that episode under a symmetry of the env that moves its
    subgoals (pinpad: quarter turns), so that a code naming a place rather than a subgoal pays for it: the action
    NLL is the mean of the episode's and the turned episode's. Returns (nll, turned nll, kl) per step then.

    With `config.cut_history` (not the paper's objective either) each code must also steer its segment with the
    episode's past cut off (`cut_action_nll`), so that a code naming a branch relative to the last subgoal pays for
    it; the action NLL is then the mean over the episode and each of these variants, and each is logged.

    With `config.next_event_weight` > 0 (`next_events` then required; not the paper's objective) the loss adds that
    weight times the cross-entropy of `next_events.head(z_t)` against the next event after step t (`config.next_event_at`
    'step') or after the step z_t was chosen ('segment'), trained with the metacontroller; it is logged after the KL.

    With a `progress_file` path the run saves its progress there and goes on from it (`fit`); `data_sha256`, the
    fingerprint of the episodes `batches` hold, tells a run on other data from this one."""
    if (config.next_event_weight > 0) != (next_events is not None):
        raise ValueError(f'--discovery.next_event_weight > 0 takes next_events (targets and a head), 0 takes none; '
                         f'got weight {config.next_event_weight}, next_events {next_events is not None}')
    turns = np.random.default_rng([seed, 1])   # the symmetry of each step, apart from the batch draws
    cuts = np.random.default_rng([seed, 2])    # where each episode is cut, apart from both

    def loss_fn(step, batch, stream):
        if config.freeze_switching_steps:   # no gradient while frozen, so AdamW leaves them as they are
            switching_frozen(meta_controller, step < config.freeze_switching_steps)
        with recorded_outputs(meta_controller) as outputs:
            losses = model.discovery_losses(batch.observations, batch.actions, meta_controller, batch.episode_lens, stream = stream,
                                            condition = batch.condition, predict_state = False)
        logged = [losses.action_recon]
        if rotate_episodes is not None:
            logged.append(turned_action_nll(model, meta_controller, outputs[0].latent, batch, rotate_episodes, turns))
        if config.cut_history:
            logged.append(cut_action_nll(model, meta_controller, outputs[0].latent, outputs[0].beta, batch, cuts))
        nll = torch.stack(logged).mean()
        loss = nll + kl_weight(alpha, step, config.kl_warmup_steps) * losses.kl + losses.aux_ratio
        if next_events is None:
            return loss, torch.stack((*logged, losses.kl))
        event = next_event_ce(next_events, outputs[0].latent, batch, outputs[0].beta, config.next_event_at == 'segment')
        return loss + config.next_event_weight * event, torch.stack((*logged, losses.kl, event))

    formats = dict(action_nll = '.3f', **trained_nll_names(config.cut_history, rotate_episodes is not None), kl = '.2f',
                   **(dict(next_event_ce = '.3f') if next_events is not None else {}))
    # the head trains beside the metacontroller (and is saved in its progress) but is not part of it
    trained = meta_controller if next_events is None else torch.nn.ModuleList((meta_controller, next_events.head))
    resume = None
    if progress_file is not None:
        # the sweep, the pick, the steering check and the RL policy's width do not change this training;
        # init's file is in the starting weights, wherever it lies; starts differ by seed and first weights, and the
        # number of them, or their steps before the pick, leave each start's own training as it is
        ignore = ('alpha', 'sweep_alphas', 'select_alpha', 'steering_episodes', 'dim_policy', 'init', 'first_stage_restarts',
                  'first_stage_restart_steps', 'first_stage_stop_contrast', 'first_stage_stop_switches', 'restarts', 'restart_steps',
                  'third_stage_steps')
        # a setting added after runs were made is recorded only when on, so that their progress (made with it off) still matches
        ignore += () if config.freeze_switching_steps else ('freeze_switching_steps',)
        settings = fit_settings(config, 'discovery', seed, data_sha256, next(model.parameters()).device, process, ignore, alpha = alpha)
        resume = Resume(progress_file, settings, f'discovery α={alpha:g}', reads = (model,))
    desc = (f'discover α={alpha:g}' + (', rotation-consistent' if rotate_episodes else '') + (', history cut' if config.cut_history else '')
            + (', next event' if next_events else '') + (', switching frozen' if config.freeze_switching_steps else ''))
    try:
        return fit(trained, batches, loss_fn, config.steps, config.lr, config.weight_decay, seed, desc, formats, progress, process,
                   resume, streams = (turns, cuts) if config.cut_history else (turns,))
    finally:
        if config.freeze_switching_steps:
            switching_frozen(meta_controller, False)


def switching_frozen(meta_controller: MetaController, frozen: bool):
    """--discovery.freeze_switching_steps: the switching unit and the history GRU it reads take no gradient while
    `frozen`; β then moves only as the codes z_{t-1} it also reads do."""
    for part in (meta_controller.history, meta_controller.switching):
        part.requires_grad_(not frozen)


def next_event_ce(next_events: NextEvents, latent: torch.Tensor, batch: DemoBatch, beta: torch.Tensor,
                  from_segment_start: bool = False) -> torch.Tensor:
    """Cross-entropy of the head on the codes z (b, t, n_z) against the next event after each step, mean over the
    valid steps that have one (0 where none has). `from_segment_start`: after the step each code was chosen instead,
    by the switches β (b, t), the same target over a segment, so that a switch inside a subgoal (at one of its own
    events) earns nothing from the head."""
    targets = next_events.targets(batch.observations)                                     # (b, t), -1: none ahead
    if from_segment_start:
        targets = targets.gather(1, segment_starts(beta, batch.episode_lens))
    known = lens_to_mask(batch.episode_lens, targets.shape[1]) & (targets >= 0)
    logits = next_events.head(latent[known].float())
    return F.cross_entropy(logits, targets[known], reduction = 'sum') / known.sum().clamp(min = 1)


def segment_starts(beta: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """β (b, t) -> (b, t): the step at which each step's code was chosen, the last decision (β ≥ 0.5) at or before
    it; 0 before the first (the first step always chooses)."""
    steps = torch.arange(beta.shape[1], device = beta.device)
    return torch.where(decisions(beta.detach(), lens), steps, 0).cummax(-1).values


def trained_nll_names(cut_history: bool, rotations: bool) -> dict[str, str]:
    """The action NLLs a discovery step logs besides the episode's own, in order (name -> progress-bar format)."""
    return dict(**(dict(turned_nll = '.3f') if rotations else {}), **(dict(cut_nll = '.3f') if cut_history else {}))


@contextmanager
def recorded_outputs(module: torch.nn.Module) -> Iterator[list]:
    """Inside, the list collects `module`'s forward outputs: the codes z that `discovery_losses` samples
    are reused for the turned episodes, so that one sample steers both."""
    outputs = []
    handle = module.register_forward_hook(lambda _module, _args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def turned_action_nll(model: Transformer, meta_controller: MetaController, latent: torch.Tensor, batch: DemoBatch,
                      rotate_episodes: Callable, rng: np.random.Generator) -> torch.Tensor:
    """-log p(turned a_t | turned e_t steered by z_t), mean over valid steps, for codes z (b, t, n_z) read from the
    *original* episodes: a code that names a subgoal steers both alike, one that names a place does not."""
    observations, actions = rotate_episodes(batch.observations, batch.actions, rng)
    mask = lens_to_mask(batch.episode_lens, actions.shape[1])
    return steered_action_nll(model, meta_controller, latent, observations, actions, mask, batch.condition)


def steered_action_nll(model: Transformer, meta_controller: MetaController, latent: torch.Tensor, observations: torch.Tensor,
                       actions: torch.Tensor, mask: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    """-log p(a_t | e_t of `observations` steered by z_t), mean over the `mask`ed steps: the lower body runs afresh (no
    grad) on episodes the precomputed streams do not hold. The lower body and the control run in fp32, only the upper
    body autocasts, as in `discovery_losses` (and `precompute`)."""
    with torch.no_grad(), torch.autocast(observations.device.type, enabled = False):
        stream = model.residual_stream(observations, condition = condition)
    with torch.autocast(observations.device.type, enabled = False):
        controlled = meta_controller.decoder.control(latent, stream, meta_controller.control_scale)
    with frozen(*model.base_modules()):
        logits = model.action_logits(observations, stream = controlled, condition = condition)
    return F.cross_entropy(logits[mask].float(), actions[mask])


def history_cuts(beta: torch.Tensor, lens: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Where each episode is cut (b,): the step after one of its switches (β ≥ 0.5 at a step t ≥ 1 with t + 1 inside
    the episode), drawn uniformly; 0 (the whole episode) for an episode without one."""
    t = beta.shape[1]
    steps = torch.arange(t, device = beta.device)
    eligible = decisions(beta.detach(), lens) & (steps >= 1) & (steps + 1 < lens[:, None].to(beta.device))
    scores = torch.from_numpy(rng.random(eligible.shape)).to(beta.device).masked_fill(~eligible, -1.)
    return torch.where(eligible.any(-1), scores.argmax(-1) + 1, 0)


def cut_action_nll(model: Transformer, meta_controller: MetaController, latent: torch.Tensor, beta: torch.Tensor, batch: DemoBatch,
                   rng: np.random.Generator) -> torch.Tensor:
    """-log p(a_t | e_t of the episode cut at `history_cuts`, steered by z_t), mean over the steps after the cuts, for
    the codes z (b, t, n_z) read from the *whole* episodes: the lower body sees the rest of each episode as an
    episode of its own, so a code that steers by where the agent has been (a branch of the task graph relative
    to the last subgoal) loses its reference, and one that names the subgoal itself does not."""
    start = history_cuts(beta, batch.episode_lens, rng)                                  # (b,)
    t = batch.actions.shape[1]
    rows = torch.arange(len(start), device = start.device)[:, None]
    steps = (torch.arange(t, device = start.device) + start[:, None]).clamp(max = t - 1)  # (b, t): gathered shifted left
    observations, actions, latent = batch.observations[rows, steps], batch.actions[rows, steps], latent[rows, steps]
    mask = lens_to_mask(batch.episode_lens.to(start.device) - start, t)
    return steered_action_nll(model, meta_controller, latent, observations, actions, mask, batch.condition)


class SwitchAnalysis(NamedTuple):
    action_nll: float
    kl: float
    counts: SwitchCounts
    switches_per_episode: float    # β ≥ 0.5 at steps 1 .. len - 1, plus the forced switch at t = 0
    subgoals_per_episode: float
    beta_binary_fraction: float
    # the base's mean action NLL at the switch steps (β ≥ 0.5, steps 1 .. len - 1) over its mean at every such step: read
    # without labels, above 1 where codes start where the base alone cannot tell what comes next; nan without a switch
    switch_surprise: float
    # the base's mean action NLL at the switch steps over its mean at the other steps 1 .. len - 1: as switch_surprise,
    # and it also falls where surprising steps go without a switch (a code set switching at some boundaries only)
    switch_contrast: float
    # with the env's events (None without): switches on an event's own step, and matched (±1) against the events
    # inside a subgoal (pinpad: each pair's first colour), the other place a switch per subgoal can fall
    on_events: SwitchCounts | None = None
    inner_events: SwitchCounts | None = None

    def summary(self) -> dict:
        summary = dict(
            switch_f1 = self.counts.f1,
            switch_precision = self.counts.precision,
            switch_recall = self.counts.recall,
            switches_per_episode = self.switches_per_episode,
            subgoals_per_episode = self.subgoals_per_episode,
            switches_per_subgoal = self.switches_per_episode / self.subgoals_per_episode,
            beta_binary_fraction = self.beta_binary_fraction,
            switch_surprise = self.switch_surprise,
            switch_contrast = self.switch_contrast,
            action_nll = self.action_nll,
            kl = self.kl,
        )
        if self.on_events is not None:
            summary.update(switches_on_events = self.on_events.precision, inner_event_switch_f1 = self.inner_events.f1,
                           inner_event_switch_precision = self.inner_events.precision, inner_event_switch_recall = self.inner_events.recall)
        return summary


@torch.no_grad()
def analyse(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, device: str, batch_size: int = 256,
            events: Callable[[torch.Tensor], torch.Tensor] | None = None) -> SwitchAnalysis:
    """Losses and switch statistics over clean episodes (one posterior sample per step, as in training); with
    `events` (observations -> (b, t) bool, the adapter's), where the switches fall against them too."""
    nll = kl = 0.
    surprise = torch.zeros(4, dtype = torch.float64)   # base NLL summed at the switch steps, their count, summed at every step, their count
    counts, betas, lens_all = SwitchCounts(0, 0, 0), [], []
    on_events = inner_events = SwitchCounts(0, 0, 0) if events is not None else None
    for batch in ordered_batches(dataset, batch_size, device):
        stream = model.residual_stream(batch.observations, condition = batch.condition)
        losses = model.discovery_losses(batch.observations, batch.actions, meta_controller, batch.episode_lens, stream = stream,
                                        condition = batch.condition, predict_state = False)
        steps = batch.episode_lens.sum().item()
        nll, kl = nll + losses.action_recon.item() * steps, kl + losses.kl.item() * steps
        beta = meta_controller(stream, batch.episode_lens).beta
        counts = counts + switch_counts(beta, batch.boundaries, batch.episode_lens)
        surprise += base_surprise(model.action_nll(batch.observations, batch.actions, batch.episode_lens, stream = stream,
                                                   condition = batch.condition), beta, batch.episode_lens)
        if events is not None:
            marked = events(batch.observations)                                           # (b, t) bool
            on_events = on_events + switch_counts(beta, marked, batch.episode_lens, tolerance = 0)
            inner_events = inner_events + switch_counts(beta, marked & ~batch.boundaries, batch.episode_lens)
        betas.append(beta.flatten(1).cpu())
        lens_all.append(batch.episode_lens.cpu())
    total_steps = int(dataset.episode_lens.sum())
    episodes = len(dataset)
    binary = np.average([beta_binary_fraction(b, l) for b, l in zip(betas, lens_all)],
                        weights = [max(int(l.sum()) - len(l), 1) for l in lens_all])
    return SwitchAnalysis(
        action_nll = nll / total_steps,
        kl = kl / total_steps,
        counts = counts,
        switches_per_episode = counts.predicted / episodes + 1,
        subgoals_per_episode = counts.actual / episodes + 1,
        beta_binary_fraction = float(binary),
        **surprise_scores(surprise),
        on_events = on_events,
        inner_events = inner_events,
    )


def surprise_scores(sums: torch.Tensor) -> dict[str, float]:
    """base_surprise's sums (4,) -> the base's mean NLL at the switch steps over its mean at every step (switch_surprise)
    and over its mean at the other steps (switch_contrast); nan where a mean has no step."""
    at_switches, switches, total, steps = sums.tolist()
    ratio = lambda a, b: a / b if b else float('nan')
    at_switch = ratio(at_switches, switches)
    return dict(switch_surprise = ratio(at_switch, ratio(total, steps)),
                switch_contrast = ratio(at_switch, ratio(total - at_switches, steps - switches)))


def base_surprise(base_nll: torch.Tensor, beta: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """base_nll, beta (b, t), lens (b,) -> (4,): the base's NLL summed over the switch steps, their number, the NLL
    summed over every step, their number; steps 1 .. len - 1 (the first step always chooses)."""
    valid = decision_steps(beta, lens)
    switched = decisions(beta) & valid
    return torch.stack([base_nll[switched].sum(), switched.sum(), base_nll[valid].sum(), valid.sum()]).double().cpu()


@torch.no_grad()
def episode_betas(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, count: int, device: str) -> list[dict]:
    """β and ground-truth subgoals of the first `count` episodes, for plots."""
    batch = to_device(dataset.batch(np.arange(min(count, len(dataset)))), device)
    beta = meta_controller(model.residual_stream(batch.observations, condition = batch.condition), batch.episode_lens).beta
    return [
        dict(beta = beta[i, :n].tolist(), subgoals = batch.subgoals[i, :n].tolist(), switches = decisions(beta[i, :n]).sum().item())
        for i, n in enumerate(batch.episode_lens.tolist())
    ]
