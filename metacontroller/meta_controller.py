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
- Not in the paper, default off: Gumbel-sigmoid β (`switch_gumbel_temperature`),
  the H-Net ratio loss (`ratio_loss_weight`), a control multiplier c in
  ê = e + c·U e (`control_scale`, default 1) and discrete codes z (binary or
  categorical, KL against a uniform prior; `latent_code`, see `metacontroller.codes`), and an
  internal-RL policy that chooses among a fixed codebook of K codes (`with_action_codebook`), exactly or
  with a Gaussian draw around the chosen code (`action_codebook_spread`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_einops_utils import lens_to_mask

from metacontroller.checkpoint import Checkpointable
from metacontroller.codes import CodebookCode, CodebookMixtureCode, make_latent_code
from metacontroller.embedder import SequenceEmbedder
from metacontroller.hypernetwork import Controller, ControllerDecoder
from metacontroller.policy import CausalPolicy
from metacontroller.ppo import compact, ppo_clip_loss
from metacontroller.recurrence import gru_sequence, gru_step
from metacontroller.switching import Switching, SwitchingUnit, decisions


class DiscoveryOutput(NamedTuple):
    controlled: Tensor   # ê (b, t, d)
    beta: Tensor         # (b, t)
    latent: Tensor       # z (b, t, n_z)
    proposal: Tensor     # z̃ (b, t, n_z)
    posterior: Tensor    # q(z̃_t) (b, t, n_z, k): (μ, log σ²) for the Gaussian code, logits (k = 1) for a discrete one
    kl: Tensor           # KL(q(z̃_t) ‖ prior) per step, summed over n_z (b, t)

    @property
    def mean(self) -> Tensor:
        """μ (b, t, n_z) of the Gaussian code."""
        return self.posterior[..., 0]

    @property
    def log_var(self) -> Tensor:
        """log σ² (b, t, n_z) of the Gaussian code."""
        return self.posterior[..., 1]


class MetaControllerStep(NamedTuple):
    """One internal-RL step; also the recurrent state carried to the next step."""
    input_residual_stream: Tensor   # e the metacontroller read (b, 1, d)
    controlled: Tensor              # ê (b, 1, d)
    action_dist: Tensor             # policy's distribution over z̃ (b, 1, n_z, k): Gaussian (k = 2) or logits (k = 1),
                                    # or K codebook logits (b, 1, K, 1) with an action codebook
                                    # ((b, 1, K, 1 + 2 n_z) with a spread: logit, offset, log variance);
                                    # on a row that does not decide, the one its held code was drawn from
    actions: Tensor                 # sampled z̃ (b, 1, n_z); on a row that does not decide, the held code
    switch_beta: Tensor             # β (b, 1); 1 at the first step
    latent: Tensor                  # the held code z (b, n_z)
    history: Tensor                 # h_t (b, n_h)
    policy_hidden: Tensor           # policy state (b, n_policy)


def shift_right(values: Tensor) -> Tensor:
    """(b, t, f) -> (b, t, f), row t holding row t - 1 and zeros at t = 0."""
    return F.pad(values, (0, 0, 1, -1))


def check_float_tensor(what: str, value, shape: tuple[int, ...]):
    if not torch.is_tensor(value) or not value.is_floating_point() or tuple(value.shape) != shape:
        given = f'a {value.dtype} tensor of shape {tuple(value.shape)}' if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f'{what} must be a float tensor of shape {shape}, got {given}')


def check_episode_lens(episode_lens, batch: int, time: int):
    """(batch,) integer lengths in [1, time]: every row holds at least one valid step."""
    if not torch.is_tensor(episode_lens) or episode_lens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f'episode_lens must be an integer tensor of shape ({batch},), got {getattr(episode_lens, "dtype", type(episode_lens).__name__)}')
    if tuple(episode_lens.shape) != (batch,):
        raise ValueError(f'episode_lens must have shape ({batch},), got {tuple(episode_lens.shape)}')
    if episode_lens.min() < 1 or episode_lens.max() > time:
        raise ValueError(f'episode_lens must lie in [1, {time}] (the sequence length), got values in [{episode_lens.min().item()}, {episode_lens.max().item()}]')


def forced_beta(force_beta: Tensor | float, shape: torch.Size) -> Tensor:
    """A given β (a number, or a tensor that broadcasts to (b, t)) expanded to `shape`; values must lie in [0, 1]."""
    beta = torch.as_tensor(force_beta, dtype = torch.float32)
    if not torch.all((beta >= 0) & (beta <= 1)):   # NaN fails too
        given = f'{beta.item():g}' if beta.numel() == 1 else f'values in [{beta.min().item():g}, {beta.max().item():g}]'
        raise ValueError(f'force_beta must lie in [0, 1] (1: a new code at every step), got {given}')
    try:
        return beta.expand(shape)
    except RuntimeError:
        raise ValueError(f'force_beta must be a number or broadcast to (batch, time) = {tuple(shape)}, got shape {tuple(beta.shape)}') from None


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
        control_scale: float = 1.,
        latent_code: str = 'gaussian',
        code_temperature: float = 1.,
        code_straight_through: bool = True,
        action_codebook_size: int | None = None,
        action_codebook_spread: float = 0.,
    ):
        """control_scale c: ê = e + c·U e (1: the paper; 0: the base model untouched, an ablation).
        latent_code: 'gaussian' (the paper), 'binary' (n_z bits) or 'categorical' (one of n_z codes);
        the discrete codes sample with Gumbel noise at `code_temperature` in discovery, hard and
        straight-through unless `code_straight_through` is False.
        action_codebook_size K: internal RL's policy chooses among K fixed codes (`with_action_codebook`)
        instead of drawing z from the code family (None: the paper); with `action_codebook_spread` σ0 > 0
        it draws z from a Gaussian around the chosen code, whose mean and variance the policy sets and
        starts within σ0 of the code (`codes.CodebookMixtureCode`)."""
        super().__init__()
        if hypernetwork_low_rank is not None and not 0 < hypernetwork_low_rank <= dim_model:
            raise ValueError(f'hypernetwork_low_rank must be in [1, dim_model={dim_model}] or None (full rank), got {hypernetwork_low_rank}')
        if ratio_loss_weight < 0 or target_segment_length <= 1:
            raise ValueError(f'need ratio_loss_weight >= 0 and target_segment_length > 1 (steps per segment), '
                             f'got {ratio_loss_weight} and {target_segment_length}')

        if action_codebook_size is not None and not (isinstance(action_codebook_size, int) and action_codebook_size >= 2):
            raise ValueError(f'action_codebook_size must be None (the paper) or an int >= 2 (codes to choose among), got {action_codebook_size!r}')
        if not action_codebook_spread >= 0 or (action_codebook_spread > 0 and action_codebook_size is None):
            raise ValueError(f'action_codebook_spread must be 0 (exact codes) or > 0 with an action codebook (the initial std of z '
                             f'around the chosen code), got {action_codebook_spread!r} with action_codebook_size {action_codebook_size!r}')

        self.dim_model, self.dim_latent = dim_model, dim_latent
        self.code = make_latent_code(latent_code, code_temperature, code_straight_through)
        dim_history = dim_summary = dim_meta_controller

        self.history = nn.GRU(dim_model, dim_history, batch_first = True)
        self.embedder = SequenceEmbedder(dim_model, dim_summary)
        self.encoder = nn.Sequential(
            nn.Linear(dim_model + dim_history + dim_summary, dim_encoder_hidden),
            nn.SiLU(),
            nn.Linear(dim_encoder_hidden, dim_latent * self.code.params),
        )
        self.switching = SwitchingUnit(dim_model, dim_history, dim_latent, dim_meta_controller, switch_gumbel_temperature)
        self.decoder = ControllerDecoder(dim_latent, dim_model, dim_hypernetwork_hidden, hypernetwork_low_rank)
        self.action_codebook_size, self.action_codebook_spread = action_codebook_size, action_codebook_spread
        if action_codebook_size is None:
            self.policy = CausalPolicy(dim_model, dim_latent, dim_policy, self.code.params)
        else:
            self.register_buffer('action_codebook', torch.zeros(action_codebook_size, dim_latent))
            # K logits, and with a spread each code's mean offset and log variance
            self.policy = CausalPolicy(dim_model, action_codebook_size, dim_policy, self.action_code.params)

        self.ratio_loss_weight = ratio_loss_weight
        self.target_segment_length = target_segment_length
        self.control_scale = control_scale

    # discovery

    def forward(self, stream: Tensor, episode_lens: Tensor | None = None, force_beta: Tensor | float | None = None) -> DiscoveryOutput:
        """stream e: (b, t, d) residual stream of the frozen base; episode_lens: (b,).

        force_beta: None (learned switching), a float (1. = no temporal
        abstraction) or a (b, t) schedule; β_1 is always 1.
        """
        self._check_stream(stream, 'stream')
        b, t, _ = stream.shape
        if episode_lens is not None:
            check_episode_lens(episode_lens, b, t)
        lens = episode_lens if episode_lens is not None else torch.full((b,), t, device = stream.device)

        history = gru_sequence(self.history, stream)
        prev_history = shift_right(history)                              # h_{t-1}
        summary = self.embedder(stream, lens)[:, None].expand(-1, t, -1)  # s (b, t, n_s)

        encoded = self.encoder(torch.cat((stream, prev_history, summary), dim = -1))
        posterior = torch.stack(encoded.chunk(self.code.params, dim = -1), dim = -1)   # (b, t, n_z, k)
        proposal = self.code.rsample(posterior)

        switching = self._switch(stream, prev_history, proposal, force_beta)
        controlled = self.decoder.control(switching.latent, stream, self.control_scale)
        return DiscoveryOutput(controlled, switching.beta, switching.latent, proposal, posterior, self.code.kl(posterior))

    def _switch(self, stream, prev_history, proposal, force_beta) -> Switching:
        if force_beta is None:
            return self.switching(self.switching.project_inputs(stream, prev_history), proposal)
        return self.switching.integrate(forced_beta(force_beta, proposal.shape[:2]).to(proposal), proposal)

    def _check_stream(self, stream: Tensor, what: str):
        """(b, t, dim_model) with at least one row and one step."""
        if not torch.is_tensor(stream) or stream.ndim != 3 or stream.shape[-1] != self.dim_model or 0 in stream.shape:
            given = tuple(stream.shape) if torch.is_tensor(stream) else type(stream).__name__
            raise ValueError(f'{what} must be (batch >= 1, time >= 1, dim_model = {self.dim_model}), got {given}')

    def ratio_loss(self, beta: Tensor, mask: Tensor) -> Tensor:
        """H-Net ratio loss (not in the paper; weight 0 by default), already weighted: w·N/(N-1)·((N-1)·F·G + (1-F)(1-G))
        for the fraction F of valid steps that switch (hard, β ≥ 0.5) and the mean β G, with N the target segment
        length. The gradient flows through G only, with the sign of N·F - 1: it lowers β while more than 1/N of the
        steps switch and raises it while fewer do. At F = 1/N the loss is w whatever G is."""
        if self.ratio_loss_weight == 0:
            return beta.new_zeros(())
        n = self.target_segment_length
        mask = mask.to(beta.dtype)
        hard = (decisions(beta).to(beta.dtype) * mask).sum() / mask.sum()
        soft = (beta * mask).sum() / mask.sum()
        return self.ratio_loss_weight * n / (n - 1) * ((n - 1) * hard * soft + (1 - hard) * (1 - soft))

    # internal RL

    @property
    def action_code(self):
        """What internal RL's policy draws z from: the code family of discovery (the paper), the codebook's rows,
        or Gaussians around them."""
        if self.action_codebook_size is None:
            return self.code
        if self.action_codebook_spread:
            return CodebookMixtureCode(self.action_codebook, self.action_codebook_spread)
        return CodebookCode(self.action_codebook)

    def with_action_codebook(self, codebook: Tensor, spread: float = 0.) -> MetaController:
        """A copy whose internal-RL policy chooses z among the rows of `codebook` (K, n_z) (not in the paper),
        e.g. `codes.kmeans` centroids of the codes discovery uses: a fresh policy with K logits, started
        near uniform; the switching unit, decoder and encoder are this one's. With `spread` σ0 > 0, z is
        drawn around the chosen row instead, starting at std σ0 (`action_codebook_spread`)."""
        if not torch.is_tensor(codebook) or codebook.ndim != 2 or codebook.shape[1] != self.dim_latent or len(codebook) < 2:
            given = tuple(codebook.shape) if torch.is_tensor(codebook) else type(codebook).__name__
            raise ValueError(f'codebook must be (K >= 2, n_z = {self.dim_latent}) codes, got {given}')
        args, kwargs = self._config
        copy = type(self)(*args, **{**kwargs, 'action_codebook_size': len(codebook), 'action_codebook_spread': spread})
        kept = {k: v for k, v in self.state_dict().items() if not k.startswith('policy.') and k != 'action_codebook'}
        copy.load_state_dict(kept, strict = False)
        copy.action_codebook.copy_(codebook)
        return copy.to(next(self.parameters()).device).train(self.training)

    def with_codebook_spread(self, spread: float) -> MetaController:
        """A copy of this codebook metacontroller (`with_action_codebook`) whose policy draws z around the chosen
        row at std `spread` (0: the rows themselves), keeping this policy's GRU and logits, so that it starts by
        choosing as this one does; each row's offset and log variance start at zero. On pinpad, a choice learned
        first and then let to follow the state beats a spread from the start (docs/reproduction.md)."""
        if self.action_codebook_size is None:
            raise ValueError('with_codebook_spread keeps the choice of a codebook policy: make one with with_action_codebook first')
        copy = self.with_action_codebook(self.action_codebook, spread)
        k, hidden = self.action_codebook_size, self.policy.dim_hidden
        with torch.no_grad():
            copy.policy.rnn.load_state_dict(self.policy.rnn.state_dict())
            weight, bias = copy.policy.head.weight.view(k, -1, hidden), copy.policy.head.bias.view(k, -1)
            weight.zero_()
            bias.zero_()
            # entry 0 of each row's outputs is its logit, with or without a spread
            weight[:, 0], bias[:, 0] = self.policy.head.weight.view(k, -1, hidden)[:, 0], self.policy.head.bias.view(k, -1)[:, 0]
        return copy

    def step(
        self,
        stream: Tensor,
        prev: MetaControllerStep | None = None,
        force_beta: Tensor | float | None = None,
        deterministic: bool = False,
    ) -> MetaControllerStep:
        """One causal step on e_t (b, d): switch (β ≥ 0.5) or hold, and control.
        force_beta: a number, or a tensor that broadcasts to (b,) (e.g. `periodic_beta(k, T)[t]`)."""
        b = stream.shape[0]
        if prev is not None and prev.latent.shape[0] != b:
            raise ValueError(f'the previous step holds {prev.latent.shape[0]} rows but stream has {b}: step every row of a rollout together')
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
            forced = forced_beta(force_beta, beta.shape).to(beta)   # checked at every step; β_1 stays 1
            beta = forced if prev is not None else beta

        switch = decisions(beta)
        if prev is None or bool(switch.all()):
            dist, policy_hidden = self.policy.step(stream, policy_hidden)
            latent = proposal = self.action_code.sample(dist, deterministic)
        else:
            # the policy lives on the abstract timescale: it runs only on the rows that decide (over every row,
            # its GRU was half of this step at 1,024 rows, 12% deciding); the other rows report the code in
            # force and the distribution it was drawn from
            rows = switch.nonzero()[:, 0]
            dist, proposal = prev.action_dist[:, 0], latent
            if len(rows):
                new_dist, new_hidden = self.policy.step(stream[rows], policy_hidden[rows])
                dist, policy_hidden = dist.index_copy(0, rows, new_dist), policy_hidden.index_copy(0, rows, new_hidden)
                latent = proposal = latent.index_copy(0, rows, self.action_code.sample(new_dist, deterministic))
        history = gru_step(self.history, stream, history)
        controlled = self.decoder.control(latent, stream, self.control_scale)

        return MetaControllerStep(
            stream[:, None], controlled[:, None], dist[:, None], proposal[:, None], beta[:, None],
            latent, history, policy_hidden,
        )

    def log_prob(self, action_dist: Tensor, actions: Tensor) -> Tensor:
        """Joint log-prob of sampled latents (..., n_z) under the policy's (..., n_z, k), summed over n_z
        (with an action codebook: of the chosen row under (..., K, 1), or with a spread the mixture's density)."""
        return self.action_code.log_prob(action_dist, actions)

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

        The rollout is data: every input is detached, so a rollout recorded with
        gradients enabled gives the same loss and gradients as one under no_grad.
        """
        self._check_rollout(states, old_log_probs, latent_actions, advantages, switch_betas, episode_lens, clip)
        states, old_log_probs, latent_actions, advantages, switch_betas = (
            x.detach() for x in (states, old_log_probs, latent_actions, advantages, switch_betas))
        mask = decisions(switch_betas, episode_lens)
        decision_states, lens = compact(states, mask)
        decision_actions, _ = compact(latent_actions, mask)
        decision_old, _ = compact(old_log_probs, mask)
        valid = lens_to_mask(lens, decision_states.shape[1])

        log_probs = self.log_prob(self.policy(decision_states), decision_actions)
        return ppo_clip_loss(log_probs, decision_old, advantages, valid, clip)

    def _check_rollout(self, states, old_log_probs, latent_actions, advantages, switch_betas, episode_lens, clip):
        """Every argument of `policy_loss` against states (B, T, d): a mismatch would broadcast silently."""
        self._check_stream(states, 'states')
        b, t, _ = states.shape
        check_float_tensor('old_log_probs', old_log_probs, (b, t))
        check_float_tensor('latent_actions', latent_actions, (b, t, self.dim_latent))
        check_float_tensor('advantages', advantages, (b,))
        check_float_tensor('switch_betas', switch_betas, (b, t))
        if episode_lens is not None:
            check_episode_lens(episode_lens, b, t)
        if not clip > 0:
            raise ValueError(f'clip must be > 0 (the PPO ratio is clipped to [1 - clip, 1 + clip]), got {clip}')

    def controller(self, latent: Tensor) -> Controller:
        """U for a code z (..., n_z): for analysis."""
        return self.decoder(latent)
