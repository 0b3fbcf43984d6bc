"""The base autoregressive model (SPEC §2).

    tokens_t = embed(o_t) [+ embed(a_{t-1})]     a_0 is "no action" (a zero vector)
    e_t      = lower_body(tokens)_t              the residual stream at layer l = L/2
    h_t      = upper_body(ê_t)                   ê = e without a metacontroller
    p(a_t | o_{1:t}) = action_readout(h_t);  p(o_{t+1} | o_{1:t}) = state_readout(h_t)

The bodies are x-transformers `Decoder`s (kwargs dicts or modules). The lower
body has no final norm, so e is the raw residual stream. Because the
metacontroller sits between the bodies, the lower body never sees it: e is a
fixed function of the observations and can be computed once per dataset.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn
from discrete_continuous_embed_readout import EmbedAndReadout
from torch_einops_utils import lens_to_mask
from x_transformers import Decoder

from metacontroller.checkpoint import Checkpointable
from metacontroller.fast_decode import CachedDecoder
from metacontroller.meta_controller import MetaController, MetaControllerStep, shift_right


class BehaviourCloningLosses(NamedTuple):
    state: Tensor    # observation-prediction loss, mean over valid steps with a next observation
    action: Tensor   # action NLL, mean over valid steps


class DiscoveryLosses(NamedTuple):
    state_pred: Tensor
    action_recon: Tensor   # -log p(a_t | ê), mean over valid steps
    kl: Tensor             # KL(q(z̃_t) ‖ N(0, I)), summed over n_z, mean over valid steps; weight it by α yourself, once
    aux_ratio: Tensor      # optional H-Net ratio loss (already weighted; 0 unless enabled)


class PrevHiddens(NamedTuple):
    meta_controller: MetaControllerStep | None


@dataclass
class TransformerCache:
    lower: object
    upper: object
    prev_hiddens: PrevHiddens
    length: int = 0

    def select(self, rows: Tensor) -> TransformerCache:
        """The cache of a subset of the batch (e.g. the episodes still running); consumes this cache."""
        meta = self.prev_hiddens.meta_controller
        meta = None if meta is None else MetaControllerStep(*(x[rows] for x in meta))
        return TransformerCache(self.lower.select(rows), self.upper.select(rows), PrevHiddens(meta), self.length)


@contextmanager
def frozen(*modules: nn.Module):
    """Inside, the modules' weights take no part in autograd: gradients flow through
    them to their inputs, and none is computed for the weights themselves.
    Autograd records requires_grad when each op runs, so restoring it afterwards is safe."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def build_body(dim: int, body: dict | nn.Module, **defaults) -> nn.Module:
    if isinstance(body, nn.Module):
        return body
    if not isinstance(body, dict):
        raise TypeError(f'a body must be a dict of x-transformers Decoder kwargs or an nn.Module, got {type(body).__name__}')
    # fused attention (SDPA) is faster and leaner than the einsum path, but x-transformers
    # does not combine it with T5 relative position bias
    defaults.setdefault('attn_flash', not body.get('rel_pos_bias', False))
    return Decoder(dim = dim, **{**defaults, **body})


class Transformer(Checkpointable, nn.Module):
    def __init__(
        self,
        dim: int,
        *,
        action_embed_readout: dict,
        state_embed_readout: dict,
        lower_body: dict | nn.Module,
        upper_body: dict | nn.Module,
        embed_past_action: bool = False,
        state_encoder: nn.Module | None = None,
    ):
        """state_encoder: optional module (..., *obs) -> (..., dim) whose output is added to the
        observation embedding, e.g. `metacontroller.envs.egocentric.EgocentricEncoder` for grids."""
        super().__init__()
        self.dim = dim
        self.embed_past_action = embed_past_action
        self.state_embed, self.state_readout = EmbedAndReadout(dim, **state_embed_readout)
        self.state_encoder = state_encoder
        self.action_embed, self.action_readout = EmbedAndReadout(dim, **action_embed_readout)
        self.lower_body = build_body(dim, lower_body, pre_norm_has_final_norm = False)
        self.upper_body = build_body(dim, upper_body)
        self.meta_controller = None
        self._step_decoders = {}

    def base_modules(self) -> list[nn.Module]:
        """Everything but an attached metacontroller: what discovery and internal RL keep frozen."""
        modules = [self.state_embed, self.state_readout, self.action_embed, self.action_readout, self.lower_body, self.upper_body]
        return modules + ([self.state_encoder] if self.state_encoder is not None else [])

    # input checks: every message says what was expected and what was given

    def _check_states(self, state: Tensor, what: str = 'state'):
        if not torch.is_tensor(state):
            raise TypeError(f'{what} must be a tensor, got {type(state).__name__}')
        n = self.state_embed.num_continuous
        if n > 0:
            if not state.is_floating_point():
                raise TypeError(f'{what} must be a float tensor (continuous observations), got {state.dtype}')
            if state.ndim != 3 or state.shape[-1] != n:
                raise ValueError(f'{what} must have shape (batch, time, {n}), got {tuple(state.shape)}')
        else:
            if state.dtype not in (torch.int64, torch.int32):
                raise TypeError(f'{what} must be an integer tensor (discrete observations), got {state.dtype}')
            if state.ndim not in (2, 3):
                raise ValueError(f'{what} must have shape (batch, time[, sets]), got {tuple(state.shape)}')

    def _check_actions(self, actions: Tensor, batch_time: tuple[int, ...], what: str = 'actions', mask: Tensor | None = None):
        if not torch.is_tensor(actions):
            raise TypeError(f'{what} must be a tensor, got {type(actions).__name__}')
        if self.action_readout.has_discrete:
            if actions.dtype not in (torch.int64, torch.int32):
                raise TypeError(f'{what} must be an integer tensor of action ids, got {actions.dtype}')
            if tuple(actions.shape) != batch_time:
                raise ValueError(f'{what} must have shape {batch_time} (batch, time), got {tuple(actions.shape)}')
            num = self.action_readout.embedding_offset
            valid = actions if mask is None else actions[mask]   # padding may hold anything
            if valid.numel() and (valid.min() < 0 or valid.max() >= num):
                raise ValueError(f'{what} must be action ids in [0, {num}), got values in [{valid.min().item()}, {valid.max().item()}]')
        else:
            n = self.action_readout.num_continuous
            if not actions.is_floating_point() or tuple(actions.shape) != (*batch_time, n):
                raise ValueError(f'{what} must be a float tensor of shape {(*batch_time, n)}, got {actions.dtype} {tuple(actions.shape)}')

    def _valid_mask(self, episode_lens: Tensor | None, batch: int, time: int, device) -> Tensor:
        if episode_lens is None:
            return torch.ones(batch, time, dtype = torch.bool, device = device)
        if not torch.is_tensor(episode_lens) or episode_lens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f'episode_lens must be an integer tensor of shape ({batch},), got {getattr(episode_lens, "dtype", type(episode_lens).__name__)}')
        if tuple(episode_lens.shape) != (batch,):
            raise ValueError(f'episode_lens must have shape ({batch},), got {tuple(episode_lens.shape)}')
        if episode_lens.min() < 1 or episode_lens.max() > time:
            raise ValueError(f'episode_lens must lie in [1, {time}] (the sequence length), got values in [{episode_lens.min().item()}, {episode_lens.max().item()}]')
        return lens_to_mask(episode_lens.to(device), time)

    def _check_meta_controller(self, meta_controller):
        if not isinstance(meta_controller, MetaController):
            raise TypeError(f'meta_controller must be a MetaController, got {type(meta_controller).__name__}')
        if meta_controller.dim_model != self.dim:
            raise ValueError(f'meta_controller.dim_model ({meta_controller.dim_model}) must equal the transformer dim ({self.dim})')

    # sequence forward

    def embed_states(self, state: Tensor) -> Tensor:
        """(b, t, ...) observations -> (b, t, d)."""
        tokens = self.state_embed(state)
        return tokens if self.state_encoder is None else tokens + self.state_encoder(state)

    def embed(self, state: Tensor, actions: Tensor | None = None) -> Tensor:
        """(b, t, ...) observations [+ actions a_{1:t}] -> tokens (b, t, d); step t sees o_t and a_{t-1}."""
        tokens = self.embed_states(state)
        if self.embed_past_action:
            if actions is None:
                raise ValueError('this model embeds past actions (embed_past_action = True): pass actions')
            tokens = tokens + shift_right(self.action_embed(actions))
        return tokens

    def residual_stream(self, state: Tensor, actions: Tensor | None = None) -> Tensor:
        """e at the cut between the bodies: (b, t, d)."""
        self._check_states(state)
        return self.lower_body(self.embed(state, actions))

    def layer_residuals(self, state: Tensor, actions: Tensor | None = None) -> list[Tensor]:
        """The residual stream before each transformer layer and after the last: L + 1 tensors (b, t, d)."""
        self._check_states(state)
        streams = []
        x = self.embed(state, actions)
        for body in (self.lower_body, self.upper_body):
            out, inter = body(x, return_hiddens = True)
            streams += list(inter.hiddens)   # x-transformers keeps one hidden per block (attention + MLP)
            x = inter.last_hidden if body is self.upper_body else out
        return streams + [x]

    def _readout_losses(self, hidden, state, actions, mask) -> tuple[Tensor, Tensor]:
        action_loss = self.action_readout(hidden, targets = actions, loss_mask = mask)
        state_loss = self.state_readout(hidden[:, :-1], targets = state[:, 1:], loss_mask = mask[:, 1:])
        return state_loss, action_loss

    def _prepare(self, state, actions, episode_lens):
        self._check_states(state)
        if actions is None:
            raise ValueError('actions are required for behaviour cloning and discovery (they are the targets)')
        b, t = state.shape[:2]
        mask = self._valid_mask(episode_lens, b, t, state.device)
        self._check_actions(actions, (b, t), mask = mask)
        if actions.dtype in (torch.int64, torch.int32):
            actions = actions.masked_fill(~mask, 0)  # padding may hold anything; keep it a valid id
        return actions, mask

    def behaviour_cloning_losses(self, state: Tensor, actions: Tensor, episode_lens: Tensor | None = None) -> BehaviourCloningLosses:
        actions, mask = self._prepare(state, actions, episode_lens)
        hidden = self.upper_body(self.lower_body(self.embed(state, actions)))
        return BehaviourCloningLosses(*self._readout_losses(hidden, state, actions, mask))

    def discovery_losses(
        self,
        state: Tensor,
        actions: Tensor,
        meta_controller: MetaController,
        episode_lens: Tensor | None = None,
        stream: Tensor | None = None,
        force_beta: Tensor | float | None = None,
    ) -> DiscoveryLosses:
        """Discovery objective with the base frozen: no gradient is computed for its weights.

        `stream` may hold a precomputed residual stream (it depends only on the data).
        """
        self._check_meta_controller(meta_controller)
        actions, mask = self._prepare(state, actions, episode_lens)
        if stream is None:
            with torch.no_grad():
                stream = self.lower_body(self.embed(state, actions))

        # under bf16 autocast only the bodies run in bf16: the metacontroller's hand-written recurrences are fp32
        with torch.autocast(stream.device.type, enabled = False):
            out = meta_controller(stream.float(), episode_lens, force_beta)
        with frozen(*self.base_modules()):
            hidden = self.upper_body(out.controlled)
            state_loss, action_loss = self._readout_losses(hidden, state, actions, mask)

        maskf = mask.to(out.kl.dtype)
        kl = (out.kl * maskf).sum() / maskf.sum()
        return DiscoveryLosses(state_loss, action_loss, kl, meta_controller.ratio_loss(out.beta, mask))

    # step-wise inference

    def _step_decoder(self, name: str) -> CachedDecoder:
        body = getattr(self, name)
        cached = self._step_decoders.get(name)
        params = cached[1] if cached is not None and cached[0] is body else list(body.parameters())
        # rebuild when weights were updated in place (version counters) or moved (storage)
        key = (tuple(p._version for p in params), params[0].data_ptr())
        if cached is None or cached[0] is not body or cached[2] != key:
            cached = (body, params, key, CachedDecoder(body))
            self._step_decoders[name] = cached
        return cached[3]

    def step(
        self,
        state: Tensor,
        past_action: Tensor | None = None,
        cache: TransformerCache | None = None,
        meta_controller: MetaController | None = None,
        force_beta: float | None = None,
        deterministic: bool = False,
    ) -> tuple[Tensor, TransformerCache]:
        """One step for a batch of environments: state (b, 1, ...), past action a_{t-1} (b, 1) or (b,).

        Returns action logits (b, 1, num_actions) and the cache for the next step.
        For rollouts (no gradient to the base weights); train with the sequence forward.
        """
        self._check_states(state, 'one_state')
        if state.shape[1] != 1:
            raise ValueError(f'step-wise inference takes one step at a time: one_state must be (batch, 1, ...), got {tuple(state.shape)}')
        if meta_controller is not None:
            self._check_meta_controller(meta_controller)

        b = state.shape[0]
        tokens = self.embed_states(state)[:, 0]
        if self.embed_past_action and past_action is not None:
            past_action = past_action.reshape(b, *past_action.shape[2:] if past_action.ndim > 2 else ())
            self._check_actions(past_action, (b,), 'past_action')
            tokens = tokens + self.action_embed(past_action)

        lower, upper = self._step_decoder('lower_body'), self._step_decoder('upper_body')
        if cache is None:
            cache = TransformerCache(lower.init_state(b, tokens), upper.init_state(b, tokens), PrevHiddens(None))

        stream = lower.step(tokens, cache.lower)
        meta = None
        if meta_controller is not None:
            meta = meta_controller.step(stream, cache.prev_hiddens.meta_controller, force_beta, deterministic)
            stream = meta.controlled[:, 0]

        logits = self.action_readout(upper.step(stream, cache.upper)[:, None])
        return logits, TransformerCache(cache.lower, cache.upper, PrevHiddens(meta), cache.length + 1)

    def forward(
        self,
        state: Tensor,
        actions: Tensor | None = None,
        *,
        episode_lens: Tensor | None = None,
        meta_controller: MetaController | None = None,
        discovery_phase: bool = False,
        cache: TransformerCache | None = None,
        return_cache: bool = False,
        force_beta: Tensor | float | None = None,
    ):
        """Three modes, one return type each:

        - behaviour cloning: model(state, actions) -> BehaviourCloningLosses
        - discovery: model(state, actions, meta_controller = mc, discovery_phase = True) -> DiscoveryLosses
        - stepping: model(one_state, past_action, cache = cache, return_cache = True) -> (logits, cache)
        """
        if cache is not None or return_cache:
            logits, cache = self.step(state, actions, cache, meta_controller, force_beta)
            return (logits, cache) if return_cache else logits
        if discovery_phase:
            if meta_controller is None:
                raise ValueError('discovery_phase = True needs a meta_controller')
            return self.discovery_losses(state, actions, meta_controller, episode_lens, force_beta = force_beta)
        if meta_controller is not None:
            raise ValueError('a meta_controller over a whole sequence is only used in discovery (discovery_phase = True); step with return_cache = True for control')
        return self.behaviour_cloning_losses(state, actions, episode_lens)

    # evolution strategies

    def evolve(self, num_generations: int, environment: Callable[[nn.Module], float], params_to_optimize = None, **kwargs):
        """ES (x-evolution) over the attached metacontroller's policy, or `params_to_optimize`.

        environment(model) -> fitness; use fixed seeds inside it (common random numbers).
        """
        from x_evolution import EvoStrategy  # heavy (accelerate); only imported when used

        if params_to_optimize is None:
            if self.meta_controller is None:
                raise ValueError('attach a metacontroller first (model.meta_controller = mc) or pass params_to_optimize')
            params_to_optimize = [f'meta_controller.{name}' for name, _ in self.meta_controller.policy.named_parameters(prefix = 'policy')]

        kwargs.setdefault('verbose', False)
        kwargs.setdefault('cpu', not torch.cuda.is_available())
        # x-evolution always writes checkpoints; unless asked for, keep them out of the working directory
        with tempfile.TemporaryDirectory() as scratch:
            kwargs.setdefault('checkpoint_path', scratch)
            evo = EvoStrategy(self, environment = environment, num_generations = num_generations, params_to_optimize = params_to_optimize, **kwargs)
            evo()
        return evo

    # checkpoints carry an attached metacontroller

    def _checkpoint_children(self) -> dict:
        return {} if self.meta_controller is None else dict(meta_controller = self.meta_controller)

    def _child_class(self, name: str):
        if name != 'meta_controller':
            return super()._child_class(name)
        return MetaController
