"""The latent-code steering check (paper App. B.3.2): does a discovered code, injected into a
fresh episode, send the agent to the subgoal it was active for in the demonstrations?

The code of subgoal X is the mean z over the steps of clean episodes labelled X. It is held from
the first step of fresh episodes (ê = e + U(z̄_X) e at every step, never switched), and the first
subgoal the agent enters says where it headed. The base alone on the same seeded episodes is the
reference: at the first step it cannot know the task, so it heads to each pair about equally.
The env reports what was entered as info['entered_subgoal'] ((N,) ints, -1 none). It is pair-level
on pinpad: entering either colour of pair X first counts as heading to X.

`code_transfer` asks the question a mean code cannot answer: whether a code names the subgoal (it steers in
any layout) or a place (it steers only in the layout of the episode it was read from).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from metacontroller import MetaController, Transformer
from metacontroller.demos import DemoDataset
from metacontroller.pipeline.codebook import held_code_batches
from metacontroller.pipeline.data import to_device
from metacontroller.rl.rollout import run_episodes
from metacontroller.rl.seeds import eval_seed, seeded


@torch.no_grad()
def subgoal_codes(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, num_subgoals: int,
                  device: str, batch_size: int = 256) -> torch.Tensor:
    """(K, n_z): the mean held code z over the valid labelled steps of each subgoal (z is built from sampled
    proposals, as in training), snapped to the nearest code: a discrete code's mean is not itself a code."""
    sums, counts = torch.zeros(num_subgoals, meta_controller.dim_latent, device = device), torch.zeros(num_subgoals, device = device)
    for codes, subgoals in held_code_batches(model, meta_controller, dataset, device, batch_size):
        labelled = subgoals >= 0   # -1: an unlabelled step
        sums.index_add_(0, subgoals[labelled], codes[labelled])
        counts += torch.bincount(subgoals[labelled], minlength = num_subgoals)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f'the steering check needs steps of every subgoal in 0..{num_subgoals - 1}, but subgoals {missing} never occur in the data')
    return meta_controller.code.nearest(sums / counts[:, None])


class FirstEntered:
    """A batched env that remembers, per slot, the first subgoal entered this episode (-1: none yet)."""

    def __init__(self, env):
        self.env, self.first = env, np.full(env.num_envs, -1)

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, **kwargs):
        self.first = np.full(self.env.num_envs, -1)
        return self.env.reset(**kwargs)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        if 'entered_subgoal' not in info:
            raise ValueError(f"{type(self.env).__name__}.step must report info['entered_subgoal'] ((N,) ints, -1 none) for the steering check")
        self.first = np.where(self.first < 0, info['entered_subgoal'], self.first)
        return obs, reward, terminated, truncated, info


def holding(meta_controller: MetaController, codes: torch.Tensor) -> Callable:
    """The intervention that holds codes[i] (codes: (N, n_z)) in env slot i at every step, never switched:
    ê = e + c·U(z_i) e, as the metacontroller's decoder applies it."""
    def hold(stream, rows):
        return meta_controller.decoder.control(codes[rows].to(stream.dtype), stream, meta_controller.control_scale)
    return hold


def first_subgoals(model: Transformer, env, seeds, torch_seed: int, intervention = None) -> np.ndarray:
    """(N,) the first subgoal each episode enters (-1: none), the env reset to `seeds`, sampling under `torch_seed`."""
    env = FirstEntered(env)
    with seeded(torch_seed, next(model.parameters()).device):
        run_episodes(model, env, seeds, intervention = intervention)
    return env.first


def first_entered(model: Transformer, make_envs: Callable[[int], object], episodes: int, num_subgoals: int, seed: int,
                  intervention = None) -> list[float]:
    """Fractions of episodes whose first subgoal entered is each of the K subgoals, then none (K + 1,)."""
    first = first_subgoals(model, make_envs(episodes), range(seed, seed + episodes), seed, intervention)
    return (np.bincount(np.where(first >= 0, first, num_subgoals), minlength = num_subgoals + 1) / episodes).tolist()


def steering_table(model: Transformer, meta_controller: MetaController, codes: torch.Tensor, subgoal_names: str,
                   make_envs: Callable[[int], object], episodes: int, seed: int) -> dict:
    """{'base': fractions, 'A': fractions with z̄_A held, ..., 'hit_rate': mean over X of P(X first | z̄_X),
    'base_rate': mean over X of P(X first | base alone)}. Fractions: over the K subgoals in order, then none.
    Every row runs on the same env seeds."""
    num_subgoals, first_seed = len(codes), eval_seed(seed)
    table = dict(base = first_entered(model, make_envs, episodes, num_subgoals, first_seed))
    for name, code in zip(subgoal_names, codes):
        hold = holding(meta_controller, code.expand(episodes, -1))   # the same code in every slot
        table[name] = first_entered(model, make_envs, episodes, num_subgoals, first_seed, hold)
    table['hit_rate'] = float(np.mean([table[name][x] for x, name in enumerate(subgoal_names)]))
    table['base_rate'] = float(np.mean(table['base'][:num_subgoals]))
    return table


class CodeTransfer(NamedTuple):
    """P(the first pair entered is the subgoal an episode's first code was taken from), the code held from the first step."""
    own_layout: float     # the episode's own code, in its own layout and task
    other_layout: float   # the next episode's code, in this episode's layout: only a code that names the subgoal hits
    base: float           # the base alone in its own layout, against the episode's first subgoal


@torch.no_grad()
def code_transfer(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, make_envs: Callable[[int], object],
                  episodes: int, seed: int, sampled: bool = False) -> CodeTransfer:
    """Do the codes name subgoals or places? The mean-code steering check cannot tell a code that names a place
    (it steers only in its own layout) from one that names nothing; this can. Each of the first `episodes` recorded
    episodes of `dataset` is rebuilt from its seed by `make_envs` (its env on the dataset's tasks) and run with its
    own first code z_0 held (the encoder's posterior mean, or the sampled z_0 with `sampled`), then with the next
    episode's z_0 in its layout."""
    n = min(episodes, len(dataset.episode_lens))
    device = next(model.parameters()).device
    batch = to_device(dataset.batch(np.arange(n)), device)
    with seeded(seed, device):   # the sampled z_0 too
        out = meta_controller(model.residual_stream(batch.observations, condition = batch.condition), batch.episode_lens)
    codes = (out.latent if sampled else out.mean)[:, 0]                      # (n, n_z): each episode's first code
    own = batch.subgoals[:, 0].cpu().numpy()                                # the subgoal z_0 was taken from
    moved = np.roll(np.arange(n), -1)                                       # layout i gets episode i + 1's code
    seeds = [int(s) for s in dataset.seeds[:n]]

    def hit(held, target):   # held: (n, n_z), row i held in episode i's env; None: the base alone
        hold = None if held is None else holding(meta_controller, held)
        return float(np.mean(first_subgoals(model, make_envs(n), seeds, seed, hold) == target))

    return CodeTransfer(own_layout = hit(codes, own), other_layout = hit(codes[moved], own[moved]), base = hit(None, own))
