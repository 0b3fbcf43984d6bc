"""The metacontroller (SPEC §3, paper D.2).

Discovery (non-causal, trained on clean demonstrations with the base frozen):

    h_t      = GRU(e_t, h_{t-1})                          history, n_h
    s        = f_emb(e_{1:T})                             whole-sequence summary, n_s
    μ_t, σ²_t = f_enc(e_t, h_{t-1}, s);  z̃_t = μ_t + σ_t ε  proposals, n_z
    β_t      = f_switch(e_t, h_{t-1}, z_{t-1})            causal switching unit
    z_t      = β_t z̃_t + (1 - β_t) z_{t-1}
    U_t      = f_hyp(z_t);  ê_t = e_t + U_t e_t

Internal RL (causal): the encoder and embedder are dropped; a causal policy
proposes z̃ and a switch happens when β_t ≥ 0.5, at which point z_t = z̃_t;
otherwise z (and U) are held.

Choices where the paper is silent or differs (documented in the README):
- f_emb: the paper uses a Hawk SSM; ours is its recurrence alone (RG-LRU),
  run as a parallel scan, read at each row's last valid step.
- f_enc and f_switch are one-hidden-layer MLPs (SiLU); β is a scalar.
- Not in the paper, default off: Gumbel-sigmoid β (`switch_gumbel_temperature`)
  and the H-Net ratio loss (`ratio_loss_weight`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_einops_utils import lens_to_mask

from metacontroller.checkpoint import Checkpointable
from metacontroller.embedder import SequenceEmbedder
from metacontroller.hypernetwork import Controller, ControllerDecoder
from metacontroller.policy import CausalPolicy, gaussian_log_prob, gaussian_sample
from metacontroller.ppo import compact, ppo_clip_loss
from metacontroller.recurrence import gru_sequence, gru_step
from metacontroller.switching import Switching, SwitchingUnit


class DiscoveryOutput(NamedTuple):
    controlled: Tensor   # ê (b, t, d)
    beta: Tensor         # (b, t)
    latent: Tensor       # z (b, t, n_z)
    proposal: Tensor     # z̃ (b, t, n_z)
    mean: Tensor         # μ (b, t, n_z)
    log_var: Tensor      # log σ² (b, t, n_z)
    kl: Tensor           # KL(N(μ, σ²) ‖ N(0, I)) per step, summed over n_z (b, t)


class MetaControllerStep(NamedTuple):
    """One internal-RL step; also the recurrent state carried to the next step."""
    input_residual_stream: Tensor   # e the metacontroller read (b, 1, d)
    controlled: Tensor              # ê (b, 1, d)
    action_dist: Tensor             # policy's Gaussian over z̃ (b, 1, n_z, 2)
    actions: Tensor                 # sampled z̃ (b, 1, n_z)
    switch_beta: Tensor             # β (b, 1); 1 at the first step
    latent: Tensor                  # the held code z (b, n_z)
    history: Tensor                 # h_t (b, n_h)
    policy_hidden: Tensor           # policy state (b, n_policy)


def shift_right(values: Tensor) -> Tensor:
    """(b, t, f) -> (b, t, f), row t holding row t - 1 and zeros at t = 0."""
    return F.pad(values, (0, 0, 1, -1))


class MetaController(Checkpointable, nn.Module):
    def __init__(
        self,
        dim_model: int,
        dim_meta_controller: int = 32,
        dim_latent: int = 8,
        *,
        dim_encoder_hidden: int = 64,
        dim_hypernetwork_hidden: int = 32,
        hypernetwork_low_rank: int | None = 16,
        dim_policy: int = 256,
        switch_gumbel_temperature: float | None = None,
        ratio_loss_weight: float = 0.,
        target_segment_length: float = 8.,
    ):
        super().__init__()
        if hypernetwork_low_rank is not None and not 0 < hypernetwork_low_rank <= dim_model:
            raise ValueError(f'hypernetwork_low_rank must be in [1, dim_model={dim_model}] or None (full rank), got {hypernetwork_low_rank}')

        self.dim_model, self.dim_latent = dim_model, dim_latent
        dim_history = dim_summary = dim_meta_controller

        self.history = nn.GRU(dim_model, dim_history, batch_first = True)
        self.embedder = SequenceEmbedder(dim_model, dim_summary)
        self.encoder = nn.Sequential(
            nn.Linear(dim_model + dim_history + dim_summary, dim_encoder_hidden),
            nn.SiLU(),
            nn.Linear(dim_encoder_hidden, dim_latent * 2),
        )
        self.switching = SwitchingUnit(dim_model, dim_history, dim_latent, dim_meta_controller, switch_gumbel_temperature)
        self.decoder = ControllerDecoder(dim_latent, dim_model, dim_hypernetwork_hidden, hypernetwork_low_rank)
        self.policy = CausalPolicy(dim_model, dim_latent, dim_policy)

        self.ratio_loss_weight = ratio_loss_weight
        self.target_segment_length = target_segment_length

    # discovery

    def forward(self, stream: Tensor, episode_lens: Tensor | None = None, force_beta: Tensor | float | None = None) -> DiscoveryOutput:
        """stream e: (b, t, d) residual stream of the frozen base; episode_lens: (b,).

        force_beta: None (learned switching), a float (1. = no temporal
        abstraction) or a (b, t) schedule; β_1 is always 1.
        """
        b, t, _ = stream.shape
        lens = episode_lens if episode_lens is not None else torch.full((b,), t, device = stream.device)

        history = gru_sequence(self.history, stream)
        prev_history = shift_right(history)                              # h_{t-1}
        summary = self.embedder(stream, lens)[:, None].expand(-1, t, -1)  # s (b, t, n_s)

        mean, log_var = self.encoder(torch.cat((stream, prev_history, summary), dim = -1)).chunk(2, dim = -1)
        proposal = mean + (0.5 * log_var).exp() * torch.randn_like(mean)

        switching = self._switch(stream, prev_history, proposal, force_beta)
        controlled = self.decoder.control(switching.latent, stream)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1.).sum(dim = -1)

        return DiscoveryOutput(controlled, switching.beta, switching.latent, proposal, mean, log_var, kl)

    def _switch(self, stream, prev_history, proposal, force_beta) -> Switching:
        if force_beta is None:
            return self.switching(self.switching.project_inputs(stream, prev_history), proposal)
        beta = torch.as_tensor(force_beta, dtype = proposal.dtype, device = proposal.device)
        return self.switching.integrate(beta.expand(proposal.shape[:2]), proposal)

    def ratio_loss(self, beta: Tensor, mask: Tensor) -> Tensor:
        """H-Net ratio loss (not in the paper; weight 0 by default), already weighted."""
        if self.ratio_loss_weight == 0:
            return beta.new_zeros(())
        n = self.target_segment_length
        mask = mask.to(beta.dtype)
        hard = ((beta >= 0.5).to(beta.dtype) * mask).sum() / mask.sum()
        soft = (beta * mask).sum() / mask.sum()
        return self.ratio_loss_weight * n / (n - 1) * ((n - 1) * hard * soft + (1 - hard) * (1 - soft))

    # internal RL

    def step(
        self,
        stream: Tensor,
        prev: MetaControllerStep | None = None,
        force_beta: float | None = None,
        deterministic: bool = False,
    ) -> MetaControllerStep:
        """One causal step on e_t (b, d): switch (β ≥ 0.5) or hold, and control."""
        b = stream.shape[0]
        if prev is None:
            history = stream.new_zeros(b, self.history.hidden_size)
            latent = stream.new_zeros(b, self.dim_latent)
            policy_hidden = stream.new_zeros(b, self.policy.dim_hidden)
            beta = stream.new_ones(b)
        else:
            history, latent, policy_hidden = prev.history, prev.latent, prev.policy_hidden
            projected = self.switching.project_inputs(stream, history)
            beta = torch.sigmoid(self.switching.logit(projected, latent))

        if force_beta is not None:
            beta = torch.full_like(beta, force_beta) if prev is not None else beta

        switch = beta >= 0.5
        dist, new_policy_hidden = self.policy.step(stream, policy_hidden)
        proposal = gaussian_sample(dist, deterministic)

        latent = torch.where(switch[:, None], proposal, latent)
        policy_hidden = torch.where(switch[:, None], new_policy_hidden, policy_hidden)  # the policy lives on the abstract timescale
        history = gru_step(self.history, stream, history)
        controlled = self.decoder.control(latent, stream)

        return MetaControllerStep(
            stream[:, None], controlled[:, None], dist[:, None], proposal[:, None], beta[:, None],
            latent, history, policy_hidden,
        )

    def log_prob(self, action_dist: Tensor, actions: Tensor) -> Tensor:
        """Joint log-prob of sampled latents (..., n_z) under (..., n_z, 2), summed over n_z."""
        return gaussian_log_prob(action_dist, actions)

    def policy_loss(
        self,
        states: Tensor,
        old_log_probs: Tensor,
        latent_actions: Tensor,
        advantages: Tensor,
        switch_betas: Tensor,
        episode_lens: Tensor | None = None,
        clip: float = 0.2,
    ) -> Tensor:
        """PPO-clip on the policy, evaluated at decision steps only.

        states (B, T, d): streams the metacontroller read; old_log_probs (B, T);
        latent_actions (B, T, n_z); advantages (B,) per trajectory; switch_betas
        (B, T). Decision steps = (β ≥ 0.5) ∧ valid; the policy is replayed over
        each row's decision steps in order, as it ran during the rollout.
        """
        if states.ndim != 3 or states.shape[-1] != self.dim_model:
            raise ValueError(f'states must be (B, T, dim_model={self.dim_model}), got {tuple(states.shape)}')
        b, t, _ = states.shape
        mask = switch_betas >= 0.5
        if episode_lens is not None:
            mask = mask & lens_to_mask(episode_lens, t)

        decision_states, lens = compact(states, mask)
        decision_actions, _ = compact(latent_actions, mask)
        decision_old, _ = compact(old_log_probs, mask)
        valid = lens_to_mask(lens, decision_states.shape[1])

        log_probs = self.log_prob(self.policy(decision_states), decision_actions)
        return ppo_clip_loss(log_probs, decision_old, advantages, valid, clip)

    def controller(self, latent: Tensor) -> Controller:
        """U for a code z (..., n_z): for analysis."""
        return self.decoder(latent)
