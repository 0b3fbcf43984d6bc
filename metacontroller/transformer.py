"""The base autoregressive model (SPEC §2).

    tokens_t = embed(o_t) [+ embed(a_{t-1})]     a_0 is "no action" (a zero vector)
    e_t      = lower_body(tokens)_t              the residual stream at layer l = L/2
    h_t      = upper_body(ê_t)                   ê = e without a metacontroller
    p(a_t | o_{1:t}) = action_readout(h_t);  p(o_{t+1} | o_{1:t}) = state_readout(h_t)
    p(next event | o_{1:t}) = event_readout(h_t)  optional (num_event_classes), not the paper's

The bodies are x-transformers `Decoder`s (kwargs dicts or modules). The lower
body has no final norm, so e is the raw residual stream. Because the
metacontroller sits between the bodies, the lower body never sees it: e is a
fixed function of the observations (and of the condition) and can be computed
once per dataset.

Task conditioning (off by default, `dim_condition`): one vector c per episode,
constant over time (a goal, a mission), reaches every norm of both bodies
through x-transformers' adaptive layer norms, LayerNorm(x)·(1 + W c) with W
zero-initialised, so a fresh conditioned model starts as if c were absent.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Callable, NamedTuple

import torch
from discrete_continuous_embed_readout import EmbedAndReadout
from torch import Tensor, nn
from torch_einops_utils import lens_to_mask
from x_transformers import Decoder

from metacontroller.checkpoint import Checkpointable
from metacontroller.es import evolve
from metacontroller.fast_decode import CachedDecoder
from metacontroller.fast_train import fast_paths_enabled, fused_decoder, sparse_matmul
from metacontroller.meta_controller import MetaController, MetaControllerStep, check_episode_lens, shift_right
from metacontroller.readouts import BinaryReadout


class BehaviourCloningLosses(NamedTuple):
    state: Tensor | None   # observation-prediction loss, mean over valid steps with a next observation; None unless predict_state
    action: Tensor   # action NLL, mean over valid steps


class NextEventLosses(NamedTuple):
    state: Tensor | None   # as in BehaviourCloningLosses
    action: Tensor
    event: Tensor    # next-event cross-entropy, mean over valid steps with an event ahead (0 in a batch with none)


class DiscoveryLosses(NamedTuple):
    state_pred: Tensor | None   # next-observation loss through the steered stream; None unless predict_state
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
    batch: int
    length: int = 0
    condition: Tensor | None = None   # (batch, dim_condition), given at the episode's first step

    def select(self, rows: Tensor) -> TransformerCache:
        """The cache of a subset of the batch (e.g. the episodes still running); consumes this cache."""
        meta = self.prev_hiddens.meta_controller
        meta = None if meta is None else MetaControllerStep(*(x[rows] for x in meta))
        condition = None if self.condition is None else self.condition[rows]
        return TransformerCache(self.lower.select(rows), self.upper.select(rows), PrevHiddens(meta), len(rows), self.length, condition)


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


# x-transformers' norms that read no condition; it takes one norm per body, and a conditioned body's is adaptive
UNCONDITIONED_NORMS = ('use_rmsnorm', 'use_simple_rmsnorm', 'use_scalenorm', 'use_dynamic_tanh', 'use_derf')


def check_norm_takes_condition(body: dict, dim_condition: int | None):
    """Checked on the settings as given: x-transformers would only assert, deep inside Decoder."""
    chosen = [key for key in UNCONDITIONED_NORMS if body.get(key)]
    if dim_condition is not None and chosen:
        raise ValueError(f'dim_condition = {dim_condition} conditions each body through its norms, but the body sets '
                         f'{", ".join(f"{key} = {body[key]!r}" for key in chosen)}, a norm that reads no condition: drop it '
                         f'(adaptive layer norm), or set use_adaptive_rmsnorm = True for an RMS norm that reads the condition')


def build_body(dim: int, body: dict | nn.Module, dim_condition: int | None = None, **defaults) -> nn.Module:
    if isinstance(body, nn.Module):
        return body
    if not isinstance(body, dict):
        raise TypeError(f'a body must be a dict of x-transformers Decoder kwargs or an nn.Module, got {type(body).__name__}')
    check_norm_takes_condition(body, dim_condition)
    # fused attention (SDPA) is faster and leaner than the einsum path, but x-transformers
    # does not combine it with T5 relative position bias
    defaults.setdefault('attn_flash', not body.get('rel_pos_bias', False))
    if dim_condition is not None:   # only then: unconditioned bodies keep their exact modules and initial weights
        defaults.update(use_adaptive_layernorm = not body.get('use_adaptive_rmsnorm', False), dim_condition = dim_condition)
    return Decoder(dim = dim, **{**defaults, **body})


def check_body_condition(name: str, body: nn.Module, dim_condition: int | None):
    """A body reads a condition exactly when the model has one, of the model's width."""
    needs = getattr(body, 'need_condition', False)
    if dim_condition is None and needs:
        raise ValueError(f'{name} takes a condition (adaptive norms of width {body.dim_condition}): build the Transformer with '
                         f'dim_condition = {body.dim_condition}')
    if dim_condition is not None and not (needs and body.dim_condition == dim_condition):
        given = f'adaptive norms of width {body.dim_condition}' if needs else 'no adaptive norms'
        raise ValueError(f'dim_condition = {dim_condition} conditions both bodies through adaptive norms of that width, '
                         f'but the {name} module has {given}: pass it as a dict, or build it with use_adaptive_layernorm = True, '
                         f'dim_condition = {dim_condition}')


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
        binary_state_readout: bool = False,
        dim_condition: int | None = None,
        num_event_classes: int | None = None,
    ):
        """state_encoder: optional module (..., *obs) -> (..., dim) whose output is added to the
        observation embedding, e.g. `metacontroller.egocentric.EgocentricEncoder` for grids.
        binary_state_readout: the observations are 0/1 features; predict o_{t+1} with Bernoulli
        logits (`metacontroller.readouts.BinaryReadout`) instead of the readout's Gaussian.
        dim_condition: condition the model on one vector per episode of this width (a goal or
        task embedding): every entry point then takes `condition`, (batch, dim_condition).
        num_event_classes: an auxiliary head on the last layer that classifies, at each step, which of
        this many events the episode shows next (the caller's `event_targets`; pinpad: the next colour
        the agent enters, read from the episode's own later observations). Trained beside the action
        NLL it asks the model to say where it is heading, which makes the stream at the cut steerable
        (docs/reproduction.md, point 6); not the paper's. Off (None) by default."""
        super().__init__()
        for name, value in (('dim_condition', dim_condition), ('num_event_classes', num_event_classes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f'{name} must be a positive int or None, got {value!r}')
        self.dim = dim
        self.dim_condition = dim_condition
        self.embed_past_action = embed_past_action
        self.state_embed, self.state_readout = EmbedAndReadout(dim, **state_embed_readout)
        self.state_encoder = state_encoder
        self.action_embed, self.action_readout = EmbedAndReadout(dim, **action_embed_readout)
        self.lower_body = build_body(dim, lower_body, dim_condition, pre_norm_has_final_norm = False)
        self.upper_body = build_body(dim, upper_body, dim_condition)
        check_body_condition('lower body', self.lower_body, dim_condition)
        check_body_condition('upper body', self.upper_body, dim_condition)
        if binary_state_readout:   # built last, so that the choice of head leaves every other initial weight as it is
            if self.state_embed.num_continuous == 0:
                raise ValueError('binary_state_readout predicts 0/1 observation features: state_embed_readout must set num_continuous')
            self.state_readout = BinaryReadout(dim, self.state_embed.num_continuous)
        # last too, for the same reason
        self.event_readout = nn.Linear(dim, num_event_classes) if num_event_classes is not None else None
        self.meta_controller = None
        self._step_decoders = {}
        self._fused_bodies = {}

    def base_modules(self) -> list[nn.Module]:
        """Everything but an attached metacontroller: what discovery and internal RL keep frozen."""
        modules = [self.state_embed, self.state_readout, self.action_embed, self.action_readout, self.lower_body, self.upper_body]
        return modules + [module for module in (self.state_encoder, self.event_readout) if module is not None]

    # input checks: every message says what was expected and what was given

    def _check_states(self, state: Tensor, what: str = 'state'):
        if not torch.is_tensor(state):
            raise TypeError(f'{what} must be a tensor, got {type(state).__name__}')
        n = self.state_embed.num_continuous
        if n > 0:
            self._check_continuous_states(state, what, n)
        else:
            if state.dtype not in (torch.int64, torch.int32):
                raise TypeError(f'{what} must be an integer tensor (discrete observations), got {state.dtype}')
            if state.ndim not in (2, 3):
                raise ValueError(f'{what} must have shape (batch, time[, sets]), got {tuple(state.shape)}')
        if state.shape[0] == 0 or state.shape[1] == 0:
            raise ValueError(f'{what} must hold at least one episode and one step, got shape {tuple(state.shape)}')

    def _check_continuous_states(self, state: Tensor, what: str, n: int):
        dtype = next(self.parameters()).dtype   # autocast, when on, lowers the precision inside the model
        if state.dtype != dtype:
            raise TypeError(f"{what} must be a float tensor of the model's dtype ({dtype}) for continuous observations, got {state.dtype}")
        if state.ndim != 3 or state.shape[-1] != n:
            raise ValueError(f'{what} must have shape (batch, time, {n}), got {tuple(state.shape)}')
        # padding included: attention would still spread NaN to every step. 0 * x is NaN exactly where x is
        # not finite, and a sum keeps NaN: one pass, ~5x cheaper than isfinite().all() on a training batch
        if state.mul(0).sum().isnan():
            raise ValueError(f'{what} must be finite, got {(~torch.isfinite(state)).sum().item()} NaN or inf entries')

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

    def _check_condition(self, condition, batch: int) -> Tensor | None:
        """None without dim_condition; else the condition (batch, dim_condition) in the model's dtype."""
        if condition is None and self.dim_condition is None:
            return None
        given = f'shape {tuple(condition.shape)} ({condition.dtype})' if torch.is_tensor(condition) else type(condition).__name__
        if self.dim_condition is None:
            raise ValueError(f'this model takes no condition (built with dim_condition = None), got a condition of {given}: '
                             f'build it with Transformer(..., dim_condition = n) to condition it')
        expected = (batch, self.dim_condition)
        if condition is None:
            raise ValueError(f'this model is conditioned (dim_condition = {self.dim_condition}): pass condition, a float tensor '
                             f'of shape {expected} (batch, dim_condition), one vector per episode; got None')
        if not torch.is_tensor(condition) or not condition.is_floating_point() or tuple(condition.shape) != expected:
            raise ValueError(f'condition must be a float tensor of shape {expected} (batch, dim_condition), one vector per episode, '
                             f'constant over time; got {given}')
        if condition.mul(0).sum().isnan():
            raise ValueError(f'condition must be finite, got {(~torch.isfinite(condition)).sum().item()} NaN or inf entries')
        return condition.to(next(self.parameters()).dtype)

    def _valid_mask(self, episode_lens: Tensor | None, batch: int, time: int, device) -> Tensor:
        if episode_lens is None:
            return torch.ones(batch, time, dtype = torch.bool, device = device)
        check_episode_lens(episode_lens, batch, time)
        return lens_to_mask(episode_lens.to(device), time)

    def check_meta_controller(self, meta_controller):
        if not isinstance(meta_controller, MetaController):
            raise TypeError(f'meta_controller must be a MetaController, got {type(meta_controller).__name__}')
        if meta_controller.dim_model != self.dim:
            raise ValueError(f'meta_controller.dim_model ({meta_controller.dim_model}) must equal the transformer dim ({self.dim})')

    # sequence forward

    def embed_states(self, state: Tensor) -> Tensor:
        """(b, t, ...) observations -> (b, t, d)."""
        tokens = self._embed_continuous(state)
        return tokens if self.state_encoder is None else tokens + self.state_encoder(state)

    def _embed_continuous(self, state: Tensor) -> Tensor:
        """The state embedding; a one-hot observation gathers the embedding rows it selects (`sparse_matmul`)."""
        embed = self.state_embed
        selector = embed.selectors[0]
        if not state.is_floating_point() or len(embed.selectors) > 1 or selector.has_discrete or embed.can_norm_continuous:
            return embed(state)
        return sparse_matmul(state, selector.continuous_selector.get_embed())

    def _body(self, name: str, condition: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """The sequence forward of a body: its fused forward where that matches x-transformers' (see fast_train).
        With a condition, x-transformers' own forward: the fused one has no adaptive norms."""
        body = getattr(self, name)
        if condition is not None:
            return partial(body, condition = condition)
        if not fast_paths_enabled():
            return body
        cached = self._fused_bodies.get(name)
        if cached is None or cached[0] is not body:
            cached = self._fused_bodies[name] = (body, fused_decoder(body))
        return cached[1] or body

    def embed(self, state: Tensor, actions: Tensor | None = None) -> Tensor:
        """(b, t, ...) observations [+ actions a_{1:t}] -> tokens (b, t, d); step t sees o_t and a_{t-1}."""
        tokens = self.embed_states(state)
        if self.embed_past_action:
            if actions is None:
                raise ValueError('this model embeds past actions (embed_past_action = True): pass actions')
            tokens = tokens + shift_right(self.action_embed(actions))
        return tokens

    def residual_stream(self, state: Tensor, actions: Tensor | None = None, condition: Tensor | None = None) -> Tensor:
        """e at the cut between the bodies: (b, t, d)."""
        self._check_states(state)
        condition = self._check_condition(condition, state.shape[0])
        return self._body('lower_body', condition)(self.embed(state, actions))

    def layer_residuals(self, state: Tensor, actions: Tensor | None = None, condition: Tensor | None = None) -> list[Tensor]:
        """The residual stream before each transformer layer and after the last: L + 1 tensors (b, t, d)."""
        self._check_states(state)
        condition = self._check_condition(condition, state.shape[0])
        streams = []
        x = self.embed(state, actions)
        for body in (self.lower_body, self.upper_body):
            out, inter = body(x, return_hiddens = True, condition = condition)
            # a layer is two sublayers (attention + MLP, or two MLPs above a feed-forward cut): the input of every other
            # sublayer; x-transformers' `hiddens` would skip layers without attention
            streams += list(inter.layer_hiddens[:-1:2])   # the last entry is the output
            x = inter.last_hidden if body is self.upper_body else out
        return streams + [x]

    def action_logits(
        self,
        state: Tensor,
        actions: Tensor | None = None,
        *,
        stream: Tensor | None = None,
        intervention: Callable[[Tensor], Tensor] | None = None,
        condition: Tensor | None = None,
    ) -> Tensor:
        """The base model's sequence forward to the action logits (b, t, num_actions), with gradients.

        `stream` may hold a precomputed residual stream e (it depends only on the data);
        `intervention` maps e (b, t, d) to the ê the upper body reads, as in `step`."""
        return self.action_readout(self._last_hidden(state, actions, stream = stream, intervention = intervention, condition = condition))

    def event_logits(self, state: Tensor, actions: Tensor | None = None, **inputs) -> Tensor:
        """The next-event head's logits (b, t, num_event_classes); `action_logits`' keywords (stream, intervention,
        condition), e.g. under an intervention: where the model says it is heading once its stream is steered."""
        if self.event_readout is None:
            raise ValueError('this model has no next-event head: build it with Transformer(..., num_event_classes = n)')
        return self.event_readout(self._last_hidden(state, actions, **inputs))

    def _last_hidden(self, state, actions = None, *, stream = None, intervention = None, condition = None) -> Tensor:
        if stream is None:
            stream = self.residual_stream(state, actions, condition)
        condition = self._check_condition(condition, stream.shape[0])
        if intervention is not None:
            stream = intervention(stream)
        return self._body('upper_body', condition)(stream)

    def _prepare(self, state, actions, episode_lens, condition):
        self._check_states(state)
        if actions is None:
            raise ValueError('actions are required for behaviour cloning and discovery (they are the targets)')
        b, t = state.shape[:2]
        mask = self._valid_mask(episode_lens, b, t, state.device)
        self._check_actions(actions, (b, t), mask = mask)
        if actions.dtype in (torch.int64, torch.int32):
            actions = actions.masked_fill(~mask, 0)  # padding may hold anything; keep it a valid id
        return actions, mask, self._check_condition(condition, b)

    def behaviour_cloning_losses(self, state: Tensor, actions: Tensor, episode_lens: Tensor | None = None,
                                 predict_state: bool = True, condition: Tensor | None = None) -> BehaviourCloningLosses:
        """predict_state = False skips the next-observation readout (its loss is None): at λ = 0 it is pure cost."""
        actions, mask, condition = self._prepare(state, actions, episode_lens, condition)
        hidden = self._sequence_hidden(state, actions, condition)
        return self._bc_losses(hidden, state, actions, mask, predict_state)

    def next_event_losses(self, state: Tensor, actions: Tensor, event_targets: Tensor, episode_lens: Tensor | None = None,
                          predict_state: bool = True, condition: Tensor | None = None) -> NextEventLosses:
        """Behaviour cloning and the next-event head (num_event_classes) in one forward. event_targets (b, t): the
        class of the next event each episode shows after each step, -1 where none follows (left out of the loss)."""
        actions, mask, condition = self._prepare(state, actions, episode_lens, condition)
        self._check_event_targets(event_targets, mask)
        hidden = self._sequence_hidden(state, actions, condition)
        return NextEventLosses(*self._bc_losses(hidden, state, actions, mask, predict_state),
                               self._event_loss(hidden, event_targets, mask))

    def action_nll(self, state: Tensor, actions: Tensor, episode_lens: Tensor | None = None, *, stream: Tensor | None = None,
                   condition: Tensor | None = None) -> Tensor:
        """The base's NLL of each recorded action (b, t) in nats, 0 past each episode's end: where the model alone is
        surprised by what the agent does next. `stream` may hold the precomputed residual stream."""
        actions, mask, condition = self._prepare(state, actions, episode_lens, condition)
        hidden = self._last_hidden(state, actions, stream = stream, condition = condition)
        nll = self.action_readout(hidden, targets = actions, return_unreduced_loss = True)   # (b, t, ...) per action part
        return nll.reshape(*mask.shape, -1).sum(-1) * mask

    def _sequence_hidden(self, state, actions, condition) -> Tensor:
        return self._body('upper_body', condition)(self._body('lower_body', condition)(self.embed(state, actions)))

    def _bc_losses(self, hidden, state, actions, mask, predict_state) -> BehaviourCloningLosses:
        action_loss = self.action_readout(hidden, targets = actions, loss_mask = mask)
        if not predict_state:
            return BehaviourCloningLosses(None, action_loss)
        state_loss = self.state_readout(hidden[:, :-1], targets = state[:, 1:], loss_mask = mask[:, 1:])
        return BehaviourCloningLosses(state_loss, action_loss)

    def _check_event_targets(self, targets: Tensor, mask: Tensor):
        if self.event_readout is None:
            raise ValueError('event_targets train the next-event head, which this model lacks: build it with '
                             'Transformer(..., num_event_classes = n)')
        num = self.event_readout.out_features
        if not torch.is_tensor(targets) or targets.dtype not in (torch.int64, torch.int32) or targets.shape != mask.shape:
            given = f'{targets.dtype} {tuple(targets.shape)}' if torch.is_tensor(targets) else type(targets).__name__
            raise ValueError(f'event_targets must be an integer tensor of shape {tuple(mask.shape)} (batch, time), got {given}')
        valid = targets[mask]
        if valid.numel() and (valid.min() < -1 or valid.max() >= num):
            raise ValueError(f'event_targets must be class ids in [0, {num}) or -1 (no event ahead), '
                             f'got values in [{valid.min().item()}, {valid.max().item()}]')

    def _event_loss(self, hidden: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        known = mask & (targets >= 0)   # the steps after an episode's last event have nothing to predict
        if not known.any():
            return hidden.sum() * 0.   # keeps the graph: a batch without events adds nothing
        return nn.functional.cross_entropy(self.event_readout(hidden[known]).float(), targets[known].long())

    def discovery_losses(
        self,
        state: Tensor,
        actions: Tensor,
        meta_controller: MetaController,
        episode_lens: Tensor | None = None,
        stream: Tensor | None = None,
        force_beta: Tensor | float | None = None,
        condition: Tensor | None = None,
        predict_state: bool = True,
    ) -> DiscoveryLosses:
        """Discovery objective with the base frozen: no gradient is computed for its weights.

        `stream` may hold a precomputed residual stream (it depends only on the data and the condition).
        predict_state = False skips the next-observation readout (`state_pred` is None): the paper's objective
        does not use it, and on pinpad it is about a tenth of a training step.
        """
        self.check_meta_controller(meta_controller)
        actions, mask, condition = self._prepare(state, actions, episode_lens, condition)
        if stream is None:
            with torch.no_grad():
                stream = self._body('lower_body', condition)(self.embed(state, actions))

        # under bf16 autocast only the bodies run in bf16: the metacontroller's hand-written recurrences are fp32
        with torch.autocast(stream.device.type, enabled = False):
            out = meta_controller(stream.float(), episode_lens, force_beta)
        with frozen(*self.base_modules()):
            hidden = self._body('upper_body', condition)(out.controlled)
            state_loss, action_loss = self._bc_losses(hidden, state, actions, mask, predict_state)

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
        intervention: Callable[[Tensor], Tensor] | None = None,
        condition: Tensor | None = None,
    ) -> tuple[Tensor, TransformerCache]:
        """One step for a batch of environments: state (b, 1, ...), past action a_{t-1} (b, 1) or (b,).

        Returns action logits (b, 1, num_actions) and the cache for the next step.
        For rollouts, which are data: the frozen base builds no autograd graph, with or
        without torch.no_grad() around the call; train with the sequence forward.
        `intervention` maps e_t (b, d) at the cut to the ê_t the upper body reads, in place
        of a metacontroller (e.g. ground-truth subgoal controllers, or a steering vector).
        `condition` (b, dim_condition) is required at an episode's first step and kept in the
        cache (and `cache.select`): later steps may leave it out.
        """
        self._check_states(state, 'one_state')
        if state.shape[1] != 1:
            raise ValueError(f'step-wise inference takes one step at a time: one_state must be (batch, 1, ...), got {tuple(state.shape)}')
        if meta_controller is not None:
            self.check_meta_controller(meta_controller)
        if meta_controller is not None and intervention is not None:
            raise ValueError('pass a meta_controller or an intervention, not both: each rewrites the residual stream at the cut')

        b = state.shape[0]
        if cache is not None and cache.batch != b:
            raise ValueError(f'the cache holds {cache.batch} episodes but one_state has {b}: step them all together, '
                             f'or keep some with cache.select(rows)')
        condition = cache.condition if cache is not None and condition is None else self._check_condition(condition, b)

        lower, upper = self._step_decoder('lower_body'), self._step_decoder('upper_body')
        # no graph through the frozen base: the plan also writes its KV buffers in place
        with torch.no_grad():
            tokens = self.embed_states(state)[:, 0]
            if self.embed_past_action and past_action is not None:
                past_action = past_action.reshape(b, *past_action.shape[2:] if past_action.ndim > 2 else ())
                self._check_actions(past_action, (b,), 'past_action')
                tokens = tokens + self.action_embed(past_action)
            if cache is None:
                cache = TransformerCache(lower.init_state(b, tokens), upper.init_state(b, tokens), PrevHiddens(None), b)
            stream = lower.step(tokens, cache.lower, condition)

        meta = None
        if meta_controller is not None:
            meta = meta_controller.step(stream, cache.prev_hiddens.meta_controller, force_beta, deterministic)
            stream = meta.controlled[:, 0]
        if intervention is not None:
            stream = intervention(stream)

        with torch.no_grad():
            logits = self.action_readout(upper.step(stream, cache.upper, condition)[:, None])
        return logits, TransformerCache(cache.lower, cache.upper, PrevHiddens(meta), b, cache.length + 1, condition)

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
        predict_state: bool = True,
        condition: Tensor | None = None,
    ):
        """Three modes, one return type each:

        - behaviour cloning: model(state, actions[, predict_state = False]) -> BehaviourCloningLosses
        - discovery: model(state, actions, meta_controller = mc, discovery_phase = True[, predict_state = False]) -> DiscoveryLosses
        - stepping: model(one_state, past_action, cache = cache, return_cache = True) -> (logits, cache)

        A model built with dim_condition takes `condition` (b, dim_condition) in every mode.
        """
        if cache is not None or return_cache:
            logits, cache = self.step(state, actions, cache, meta_controller, force_beta, condition = condition)
            return (logits, cache) if return_cache else logits
        if discovery_phase:
            if meta_controller is None:
                raise ValueError('discovery_phase = True needs a meta_controller')
            return self.discovery_losses(state, actions, meta_controller, episode_lens, force_beta = force_beta, condition = condition,
                                         predict_state = predict_state)
        if meta_controller is not None:
            raise ValueError('a meta_controller over a whole sequence is only used in discovery (discovery_phase = True); step with return_cache = True for control')
        return self.behaviour_cloning_losses(state, actions, episode_lens, predict_state, condition)

    # evolution strategies

    def evolve(self, num_generations: int, environment: Callable[[nn.Module], float], params_to_optimize = None, **kwargs):
        """ES (x-evolution) over the attached metacontroller's policy, or `params_to_optimize`.

        environment(model) -> fitness; use fixed seeds inside it (common random numbers).
        """
        if params_to_optimize is None:
            if self.meta_controller is None:
                raise ValueError('attach a metacontroller first (model.meta_controller = mc) or pass params_to_optimize')
            params_to_optimize = [f'meta_controller.{name}' for name, _ in self.meta_controller.policy.named_parameters(prefix = 'policy')]
        return evolve(self, environment, num_generations, params_to_optimize, **kwargs)

    # checkpoints carry an attached metacontroller

    def _checkpoint_children(self) -> dict:
        return {} if self.meta_controller is None else dict(meta_controller = self.meta_controller)

    def _child_class(self, name: str):
        if name != 'meta_controller':
            return super()._child_class(name)
        return MetaController
