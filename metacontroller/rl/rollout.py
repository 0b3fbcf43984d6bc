"""Synchronous batched episodes: N environments reset together and run until all are done.

The KV cache has no per-row reset, so a batch is a set of episodes that start
together (GRPO style: the batch is the group). Any gymnasium-style `VectorEnv`
without auto-reset works: `reset(seed = [ints]) -> (obs (N, ...), info)`,
`step(actions (N,)) -> (obs, reward, terminated, truncated, info)`, finished
slots ignoring their actions. Rewards of slots already done are masked out.

A conditioned model (`Transformer(dim_condition = n)`) reads each episode's
condition from the reset: `info['condition']`, (N, n) floats, one vector per
episode, constant over it (a goal, a mission). An env that gives one to an
unconditioned model, or none to a conditioned one, is an error.

Finished episodes leave the model's batch: once at least 1/8 of the rows are
done, the cache keeps only the live rows, so the model's arithmetic follows the
live episodes rather than the longest one (rows are independent in the model,
so this changes no row's computation).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from metacontroller.distributed import Process
from metacontroller.meta_controller import MetaController, MetaControllerStep
from metacontroller.switching import decisions
from metacontroller.transformer import Transformer, TransformerCache

SHRINK_WHEN_DONE = 1 / 8   # drop finished rows once they are this fraction of the model's batch


class Episodes(NamedTuple):
    returns: Tensor     # (N,) summed rewards (sparse reward: success is a positive return)
    lengths: Tensor     # (N,) raw steps each episode took
    switches: Tensor    # (N,) decision steps (β ≥ 0.5, the first step included); 0 without a metacontroller
    progress: Tensor    # (N,) task steps completed, for envs that count them (`env.progress`: pinpad's colours); else 0

    @property
    def success(self) -> Tensor:
        return self.returns > 0

    def gather(self, process: Process) -> Episodes:
        """Every rank's episodes, in rank order: the global batch (itself when alone)."""
        return Episodes(*map(process.gather, self))


class StepRecord(NamedTuple):
    """One raw step of the rows still in the model's batch (b of the N slots), for a recorder."""
    rows: Tensor                     # (b,) slot index of each row
    num_envs: int                    # N
    live: Tensor                     # (b,) bool: the row's episode is still running
    state: Tensor                    # (b, 1, ...) observation fed to the model
    action: Tensor                   # (b, ...) raw action taken
    logits: Tensor                   # (b, 1, num_actions) raw-action logits
    meta: MetaControllerStep | None  # the metacontroller's step, when one is attached
    condition: Tensor | None = None  # (b, dim_condition) the episodes' condition, for a conditioned model

    def scatter(self, values: Tensor) -> Tensor:
        """(b, ...) -> (N, ...), zeros in the slots not in the batch."""
        rows = self.rows.to(values.device)
        full = values.new_zeros(self.num_envs, *values.shape[1:])
        return full.index_copy_(0, rows, values)


class Recorder(Protocol):
    def record(self, step: StepRecord) -> None: ...


def as_state(obs, device) -> Tensor:
    """Batched env observation (b, ...) -> model input (b, 1, ...)."""
    state = torch.as_tensor(np.asarray(obs), device = device)
    state = state.float() if state.is_floating_point() else state.long()
    return state[:, None]


def raw_action(model: Transformer, logits: Tensor, deterministic: bool) -> Tensor:
    """(b, 1, A) logits -> (b,) actions; greedy = argmax (discrete actions only)."""
    if not deterministic:
        return model.action_readout.sample(logits)[:, 0]
    if not model.action_readout.has_discrete:
        raise ValueError('greedy raw actions are only defined for discrete action spaces; use deterministic = False or greedy_actions = False')
    return logits[:, 0].argmax(dim = -1)


def decision_mask(meta: MetaControllerStep, live: Tensor) -> Tensor:
    """(b,) bool: the policy acted at this step (hard switch β ≥ 0.5) in a live episode."""
    return decisions(meta.switch_beta[:, 0]).cpu() & live


def drop_finished_rows(cache: TransformerCache, past_action: Tensor, rows: Tensor, live: Tensor, device):
    """Keep only the live rows once at least SHRINK_WHEN_DONE of the batch is done."""
    keep = live[rows].nonzero()[:, 0]
    if len(keep) == 0 or len(keep) > (1 - SHRINK_WHEN_DONE) * len(rows):
        return cache, past_action, rows
    keep_device = keep.to(device)
    return cache.select(keep_device), past_action[keep_device], rows[keep]


def reset_condition(model: Transformer, info, device) -> Tensor | None:
    """The episodes' condition, info['condition'] (N, dim_condition) of the reset, for a conditioned model; else None."""
    given = info.get('condition') if isinstance(info, dict) else None
    if model.dim_condition is None:
        if given is not None:
            raise ValueError(f"env.reset gave info['condition'] of shape {np.shape(given)}, but the model takes no condition "
                             f'(dim_condition = None): build it with dim_condition, or reset the env without one')
        return None
    if given is None:
        keys = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"the model is conditioned (dim_condition = {model.dim_condition}): env.reset must return info['condition'], "
                         f'(num_envs, {model.dim_condition}) floats, one vector per episode; got info keys {keys}')
    return torch.as_tensor(np.asarray(given), dtype = torch.float32, device = device)


def check_seeds(env, seeds) -> list[int]:
    seeds = [int(s) for s in seeds]
    if len(seeds) != env.num_envs:
        raise ValueError(f'need one seed per environment: env.num_envs = {env.num_envs}, got {len(seeds)} seeds')
    return seeds


@torch.no_grad()
def run_episodes(
    model: Transformer,
    env,
    seeds,
    *,
    meta_controller: MetaController | None = None,
    force_beta: float | None = None,
    deterministic: bool = False,
    greedy_actions: bool | None = None,
    recorder: Recorder | None = None,
    max_steps: int | None = None,
    drop_finished: bool = True,
    intervention: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Episodes:
    """Run env.num_envs episodes in lockstep (Algorithms 1 and 2, batched).

    With a metacontroller, `model.step` runs the abstract timescale: the policy's
    proposal is taken where the switching unit fires and z, U are held otherwise.
    `intervention(e, rows) -> ê` rewrites the residual stream at the cut instead, for the
    rows `rows` (slot indices, (b,)) still in the batch; it may read the env's live state.
    `deterministic` takes the policy's mean latent and the argmax raw action; `greedy_actions`, when
    given, sets the raw actions alone (e.g. sampled latents with argmax actions), so that the policy's
    own noise and the base model's can be told apart.
    """
    seeds = check_seeds(env, seeds)
    device = next(model.parameters()).device
    n = len(seeds)
    obs, info = env.reset(seed = seeds)
    condition = reset_condition(model, info, device)   # given at the first step; the cache keeps it (and its live rows)
    live, rows = torch.ones(n, dtype = torch.bool), torch.arange(n)
    returns, lengths, switches = torch.zeros(n), torch.zeros(n, dtype = torch.long), torch.zeros(n, dtype = torch.long)
    cache, past_action, t = None, None, 0

    while live.any() and (max_steps is None or t < max_steps):
        state = as_state(np.asarray(obs)[rows.numpy()], device)
        intervene = None if intervention is None else partial(intervention, rows = rows)
        logits, cache = model.step(state, past_action, cache, meta_controller, force_beta, deterministic, intervention = intervene,
                                   condition = condition if cache is None else None)
        action = raw_action(model, logits, deterministic if greedy_actions is None else greedy_actions)
        meta = cache.prev_hiddens.meta_controller
        if meta is not None:
            switches[rows] += decision_mask(meta, live[rows])
        if recorder is not None:
            recorder.record(StepRecord(rows, n, live[rows], state, action, logits, meta, cache.condition))

        chosen = action.cpu().numpy()
        actions = np.zeros((n, *chosen.shape[1:]), dtype = chosen.dtype)
        actions[rows.numpy()] = chosen   # slots no longer in the batch are done and ignore theirs
        obs, reward, terminated, truncated, _ = env.step(actions)
        returns += torch.as_tensor(np.asarray(reward), dtype = torch.float32) * live
        lengths += live
        live &= ~torch.as_tensor(np.logical_or(terminated, truncated))
        past_action, t = action, t + 1

        if drop_finished:
            cache, past_action, rows = drop_finished_rows(cache, past_action, rows, live, device)

    # a copy: the env's own array changes when the env runs its next batch (evaluate reuses one env per batch size)
    progress = torch.tensor(np.asarray(getattr(env, 'progress', np.zeros(n))), dtype = torch.long)
    return Episodes(returns, lengths, switches, progress)
