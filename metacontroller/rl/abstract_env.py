"""The abstract-timescale environment, batched (SPEC §4, paper Algorithms 1 and 2).

The policy's action is a latent z, taken only at decision steps: where the
frozen switching unit fires (β ≥ 0.5) or an episode starts. Between decisions
the base model acts on its own under the held controller U = f_hyp(z), and the
rewards of those raw steps accrue to the last decision. With a sparse
trajectory-level reward, a trajectory is then fully described for PPO by its
decision steps: the residual streams the policy read, the sampled latents and
their log-probs (joint over latent dims), plus its return.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch_einops_utils import lens_to_mask

from metacontroller.meta_controller import MetaController
from metacontroller.ppo import compact
from metacontroller.rl.rollout import Episodes, StepRecord, decision_mask, run_episodes
from metacontroller.transformer import Transformer


class AbstractBatch(NamedTuple):
    """N trajectories on the abstract timescale; decision steps left-aligned, K = max decisions."""
    streams: Tensor      # (N, K, d) residual stream e the policy read at each decision
    latents: Tensor      # (N, K, n_z) sampled z̃
    log_probs: Tensor    # (N, K) log π(z̃ | e at past decisions), summed over n_z, at sampling time
    betas: Tensor        # (N, K) β of the switching unit at each decision (≥ 0.5; 1 at the first), 0 in the padding
    times: Tensor        # (N, K) raw step of each decision
    decisions: Tensor    # (N,) decisions per trajectory (the tail of each row past it is padding)
    episodes: Episodes

    @property
    def valid(self) -> Tensor:
        """(N, K) bool: real decision steps, not padding."""
        return lens_to_mask(self.decisions, self.streams.shape[1])

    def policy_loss_args(self, advantages: Tensor, rows: Tensor | slice = slice(None)) -> tuple[Tensor, ...]:
        """The positional arguments of `MetaController.policy_loss` for the trajectories `rows`, given
        the advantages (N,) of all: streams, log-probs, latents, advantages, betas, decisions as lengths."""
        return tuple(x[rows] for x in (self.streams, self.log_probs, self.latents, advantages, self.betas, self.decisions))


class AbstractRecorder:
    """Keeps, per raw step, what the policy saw and did; `batch` keeps the decision steps only."""

    def __init__(self, meta_controller: MetaController):
        self.meta_controller = meta_controller
        self.streams, self.latents, self.log_probs, self.betas, self.decided = [], [], [], [], []

    def record(self, step: StepRecord):
        meta = step.meta
        if meta is None:
            raise ValueError('the abstract-timescale recorder needs a metacontroller in the rollout')
        log_probs = self.meta_controller.log_prob(meta.action_dist[:, 0], meta.actions[:, 0])
        self.streams.append(step.scatter(meta.input_residual_stream[:, 0]))                 # (N, d)
        self.latents.append(step.scatter(meta.actions[:, 0]))                               # (N, n_z)
        self.log_probs.append(step.scatter(log_probs))                                      # (N,)
        self.betas.append(step.scatter(meta.switch_beta[:, 0]))                             # (N,)
        self.decided.append(step.scatter(decision_mask(meta, step.live)))                   # (N,)

    def batch(self, episodes: Episodes) -> AbstractBatch:
        device = self.streams[0].device
        mask = torch.stack(self.decided, dim = 1).to(device)                                # (N, T)
        streams, decisions = compact(torch.stack(self.streams, dim = 1), mask)
        latents, _ = compact(torch.stack(self.latents, dim = 1), mask)
        log_probs, _ = compact(torch.stack(self.log_probs, dim = 1), mask)
        betas, _ = compact(torch.stack(self.betas, dim = 1), mask)
        times, _ = compact(torch.arange(mask.shape[1], device = device).expand_as(mask), mask)
        return AbstractBatch(streams, latents, log_probs, betas, times, decisions, episodes)


def collect_abstract(
    model: Transformer,
    meta_controller: MetaController,
    env,
    seeds,
    force_beta: float | None = None,
    deterministic: bool = False,
    max_steps: int | None = None,
) -> AbstractBatch:
    """One synchronous batch of abstract-timescale trajectories (no gradients)."""
    recorder = AbstractRecorder(meta_controller)
    episodes = run_episodes(model, env, seeds, meta_controller = meta_controller, force_beta = force_beta,
                            deterministic = deterministic, recorder = recorder, max_steps = max_steps)
    return recorder.batch(episodes)
