"""A synthetic base whose behaviour depends only on a hidden piecewise-constant code.

An episode is `segments` segments of about `length` steps. Inside a segment the action is the
segment's code (one of `codes`, never the previous segment's). The observation is the previous
action, one-hot, and a cue bit on each segment's first step: the cue says *when* the code
changes, never *to what*. A base trained on these episodes is certain inside a segment and at
chance on each segment's first step, so a metacontroller gains only by supplying the new code
there. One held code can do the same only by acting as a table from each code to the next, which
a low-rank controller cannot hold; with a rank-16 one both solutions fit, and discovery may keep
one code for all or part of an episode (docs/reproduction.md, synthetic rows).

This isolates the method from base-model quality: a known answer for discovery.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from metacontroller import MetaController, Transformer
from metacontroller.pipeline.metrics import SwitchCounts, switch_counts


class CodeEpisodes(NamedTuple):
    observations: Tensor   # (b, t, codes + 1): previous action one-hot, cue bit
    actions: Tensor        # (b, t) the hidden code
    boundaries: Tensor     # (b, t) bool, True on each segment's first step

    @property
    def lens(self) -> Tensor:
        return torch.full((self.actions.shape[0],), self.actions.shape[1])


def code_episodes(num: int, codes: int, segments: int, length: int, generator: torch.Generator) -> CodeEpisodes:
    """Segment starts at k·length, each jittered by up to ±length // 4 (the first stays at 0)."""
    jitter = length // 4
    offsets = torch.randint(-jitter, jitter + 1, (num, segments), generator = generator)
    offsets[:, 0] = 0
    starts = torch.arange(segments) * length + offsets                                   # (b, segments)
    steps = torch.arange(segments * length)
    segment = (steps[None, None] >= starts[..., None]).sum(1) - 1                        # (b, t)

    # each code differs from the one before it, so every boundary is a visible change of action
    shifts = torch.randint(1, codes, (num, segments), generator = generator)
    shifts[:, 0] = torch.randint(0, codes, (num,), generator = generator)
    sequence = shifts.cumsum(1) % codes                                                   # (b, segments)
    actions = sequence.gather(1, segment)

    boundaries = torch.zeros_like(actions, dtype = torch.bool).scatter_(1, starts, True)
    previous = F.pad(F.one_hot(actions, codes).float(), (0, 0, 1, -1))                  # a_{t-1}, zeros at t = 0
    return CodeEpisodes(torch.cat((previous, boundaries[..., None].float()), -1), actions, boundaries)


def code_base(codes: int, dim: int = 32) -> Transformer:
    body = dict(depth = 1, heads = 2, attn_dim_head = 16)
    return Transformer(dim, action_embed_readout = dict(num_discrete = codes), state_embed_readout = dict(num_continuous = codes + 1),
                       lower_body = body, upper_body = body)


def train_base(model: Transformer, sample, steps: int, lr: float = 3e-3) -> float:
    """Behaviour cloning on fresh episodes each step; returns the last action NLL. Freezes the model."""
    optimizer = torch.optim.AdamW(model.parameters(), lr = lr)
    for _ in range(steps):
        episodes = sample()
        _, loss = model(episodes.observations, episodes.actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.requires_grad_(False)
    return loss.item()


def discover(model: Transformer, meta_controller: MetaController, sample, steps: int, alpha: float, lr: float = 3e-3):
    """The paper's objective: action NLL + α·KL, base frozen."""
    optimizer = torch.optim.AdamW(meta_controller.parameters(), lr = lr)
    for _ in range(steps):
        episodes = sample()
        losses = model.discovery_losses(episodes.observations, episodes.actions, meta_controller, episodes.lens)
        optimizer.zero_grad()
        (losses.action_recon + alpha * losses.kl).backward()
        optimizer.step()


@torch.no_grad()
def switch_score(model: Transformer, meta_controller: MetaController, episodes: CodeEpisodes) -> SwitchCounts:
    """Switches (β ≥ 0.5) against the segment starts, ±1 step, t = 0 excluded."""
    meta_controller.eval()
    beta = meta_controller(model.residual_stream(episodes.observations), episodes.lens).beta
    return switch_counts(beta, episodes.boundaries, episodes.lens)


class SyntheticRun(NamedTuple):
    base_nll: float        # the base's last behaviour-cloning NLL
    counts: SwitchCounts   # switches against the segment starts, over `episodes`
    episodes: int


def synthetic_run(codes: int, segments: int, length: int, seed: int, rank: int = 2, gumbel: float | None = 1.,
                  alpha: float = 0.05, steps: int = 1_000, episodes: int = 512) -> SyntheticRun:
    """Seed, train the base (200 steps), discover on it (64 episodes a step), score on fresh episodes."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sample = partial(code_episodes, 64, codes, segments, length, generator)
    model = code_base(codes)
    base_nll = train_base(model, sample, steps = 200)
    meta_controller = MetaController(dim_model = 32, dim_meta_controller = 32, dim_latent = 4, dim_policy = 16,
                                     hypernetwork_low_rank = rank, switch_gumbel_temperature = gumbel)
    discover(model, meta_controller, sample, steps = steps, alpha = alpha)
    counts = switch_score(model, meta_controller, code_episodes(episodes, codes, segments, length, generator))
    return SyntheticRun(base_nll, counts, episodes)
