"""Cached one-step decoding for x-transformers `Decoder`s, fast enough for rollouts.

x-transformers' own cached path spends most of a small-batch step in Python
(einops, hooks, growing `torch.cat` KV caches) and in `F.linear`, which on
CPU is several times slower than `x @ W` with `W` stored (in, out) when the
batch is a handful of environments. A `DecoderPlan` reuses the decoder's own
norm, activation and position-bias modules, keeps a transposed copy of each
weight and preallocated KV buffers, and runs one step as a short chain of
matmuls.

Plans are only used where they provably match: on construction a plan decodes
a short random sequence and compares it with the decoder's full forward. Any
configuration that fails (rotary embeddings, GLU, gates, ...) falls back to the
x-transformers cache, which is slower but always correct. So do conditioned
decoders (adaptive norms), whose every step reads the episode's condition.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from loguru import logger
from torch import Tensor, nn
from x_transformers.x_transformers import AttentionLayers
from x_transformers.x_transformers import LayerNorm as XLayerNorm

SELF_CHECK_TOLERANCE = 1e-4


@dataclass
class FastDecodeState:
    keys: list[Tensor]      # per attention layer: (b, h, capacity, dh)
    values: list[Tensor]
    length: int = 0

    def select(self, rows: Tensor) -> FastDecodeState:
        """Keep only `rows` of the batch, moved into the front of the same buffers
        (no fresh allocation): this state is consumed."""
        def take(buffer):
            kept = buffer[:, :, :self.length].index_select(0, rows)  # only the filled positions
            buffer[:len(rows), :, :self.length] = kept
            return buffer[:len(rows)]
        return FastDecodeState([take(k) for k in self.keys], [take(v) for v in self.values], self.length)


@dataclass
class XTransformersDecodeState:
    cache: object | None = None  # x-transformers LayerIntermediates
    length: int = 0

    def select(self, rows: Tensor) -> XTransformersDecodeState:
        """Keep only `rows` of the batch: the per-layer KV caches are all that carries over."""
        if self.cache is None:
            return self
        layers = [replace(inter, cached_kv = tuple(kv[rows] for kv in inter.cached_kv)) for inter in self.cache.attn_intermediates]
        return XTransformersDecodeState(replace(self.cache, attn_intermediates = layers), self.length)


def _transposed(linear: nn.Linear) -> Tensor:
    return linear.weight.detach().t().contiguous()


def _bias(linear: nn.Linear) -> Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def _norm(module: nn.Module):
    """x-transformers' LayerNorm as one fused call (its module chain costs more than the math)."""
    if isinstance(module, XLayerNorm):
        gamma = module.gamma.detach() + float(module.unit_offset)
        eps, shape = module.ln.eps, module.ln.normalized_shape
        return lambda x: F.layer_norm(x, shape, gamma, None, eps)
    return module


class AttentionStep:
    def __init__(self, norm: nn.Module, attn: nn.Module):
        self.norm = _norm(norm)
        self.heads = attn.heads
        self.w_qkv = torch.cat([_transposed(attn.to_q), _transposed(attn.to_k), _transposed(attn.to_v)], dim = -1)
        self.w_out = _transposed(attn.to_out)
        self.dim_head = attn.to_q.out_features // self.heads
        self.scale = getattr(attn.attend, 'scale', None) or self.dim_head ** -0.5

    def __call__(self, x, keys, values, t, bias):
        b = x.shape[0]
        q, k, v = (self.norm(x) @ self.w_qkv).view(b, 3, self.heads, 1, self.dim_head).unbind(1)  # (b, h, 1, dh)
        keys[:, :, t:t + 1] = k
        values[:, :, t:t + 1] = v
        keys, values = keys[:, :, :t + 1], values[:, :, :t + 1]
        if bias is None:
            out = F.scaled_dot_product_attention(q, keys, values, scale = self.scale)
        else:   # with a float mask SDPA takes its math path on CPU: ~2x slower than these three ops
            out = ((q @ keys.transpose(-1, -2)) * self.scale + bias).softmax(dim = -1) @ values
        return x + out.view(b, -1) @ self.w_out                            # (b, h, 1, dh) -> (b, h * dh)


class FeedForwardStep:
    def __init__(self, norm: nn.Module, ff: nn.Module):
        (proj_in, self.activation), _, proj_out = ff.ff
        self.norm = _norm(norm)
        self.w_in, self.b_in = _transposed(proj_in), _bias(proj_in)
        self.w_out, self.b_out = _transposed(proj_out), _bias(proj_out)

    def __call__(self, x):
        hidden = self.norm(x) @ self.w_in
        hidden = self.activation(hidden if self.b_in is None else hidden + self.b_in)
        out = hidden @ self.w_out
        return x + (out if self.b_out is None else out + self.b_out)


class DecoderPlan:
    """One-token-at-a-time inference over a pre-norm x-transformers Decoder."""

    def __init__(self, decoder: AttentionLayers):
        self.decoder = decoder
        self.rel_pos = decoder.rel_pos
        self.final_norm = _norm(decoder.final_norm)
        self.blocks = []

        for layer_type, (norms, block, _) in zip(decoder.layer_types, decoder.layers):
            pre_norm, post_branch_norm, post_main_norm = norms
            if post_branch_norm is not None or post_main_norm is not None:
                raise NotImplementedError('post-norm blocks')
            make = dict(a = AttentionStep, f = FeedForwardStep).get(layer_type)
            if make is None:
                raise NotImplementedError(f'layer type {layer_type!r}')
            self.blocks.append(make(pre_norm, block))

        self.num_attn = sum(isinstance(block, AttentionStep) for block in self.blocks)

    @staticmethod
    def supports(decoder: nn.Module) -> bool:
        return (
            isinstance(decoder, AttentionLayers) and decoder.causal and decoder.pre_norm
            and not decoder.cross_attend and decoder.rotary_pos_emb is None
            and getattr(decoder, 'polar_pos_emb', None) is None
            and all(m is None for m in decoder.layer_integrators)
            and all(m is None for m in decoder.skip_combines)
            and not getattr(decoder, 'need_condition', False)   # adaptive norms read a condition the plan does not carry
        )

    def init_state(self, batch: int, capacity: int, like: Tensor) -> FastDecodeState:
        shapes = [
            (batch, block.heads, capacity, block.dim_head)
            for block in self.blocks if isinstance(block, AttentionStep)
        ]
        # uninitialised: step t writes position t before attention reads positions ≤ t
        make = lambda shape: torch.empty(shape, dtype = like.dtype, device = like.device)
        return FastDecodeState([make(s) for s in shapes], [make(s) for s in shapes])

    def _grow(self, state: FastDecodeState):
        # double the KV buffers: amortised O(1) per step, unlike a per-step cat
        state.keys = [torch.cat((k, torch.empty_like(k)), dim = 2) for k in state.keys]
        state.values = [torch.cat((v, torch.empty_like(v)), dim = 2) for v in state.values]

    def step(self, x: Tensor, state: FastDecodeState) -> Tensor:
        """x: (b, d) -> (b, d), appending one position to `state`."""
        t = state.length
        if self.num_attn and t >= state.keys[0].shape[2]:
            self._grow(state)

        bias = None if self.rel_pos is None else self.rel_pos(1, t + 1).to(x.dtype)  # (h, 1, t + 1)

        keys, values = iter(state.keys), iter(state.values)
        for block in self.blocks:
            x = block(x, next(keys), next(values), t, bias) if isinstance(block, AttentionStep) else block(x)

        state.length = t + 1
        return self.final_norm(x)


class CachedDecoder:
    """Step-wise inference for any x-transformers Decoder: the fast plan where it
    matches the full forward, the x-transformers cache otherwise."""

    def __init__(self, decoder: nn.Module, capacity: int = 128):
        self.decoder = decoder
        self.capacity = capacity
        self.plan = self._verified_plan(decoder)

    @property
    def is_fast(self) -> bool:
        return self.plan is not None

    def _verified_plan(self, decoder):
        if not DecoderPlan.supports(decoder):
            return None
        try:
            plan = DecoderPlan(decoder)
        except (NotImplementedError, AttributeError, TypeError, ValueError):
            return None

        param = next(decoder.parameters())
        generator = torch.Generator(device = param.device).manual_seed(0)
        x = torch.randn(2, 5, decoder.dim, generator = generator, device = param.device, dtype = param.dtype)

        with torch.no_grad():
            full = decoder(x)
            state = plan.init_state(2, 2, x)  # capacity 2 also exercises buffer growth
            stepped = torch.stack([plan.step(x[:, t], state) for t in range(x.shape[1])], dim = 1)

        error = (full - stepped).abs().max().item()
        if error > SELF_CHECK_TOLERANCE:
            logger.debug(f'fast decode plan disagrees with the decoder (max error {error:.2e}); using the x-transformers cache')
            return None
        return plan

    def init_state(self, batch: int, like: Tensor):
        if self.plan is None:
            return XTransformersDecodeState()
        # each rollout re-reads the weights (a copy of O(params), checked once at construction):
        # updates through `.data` (e.g. x-evolution's noise) bump no version counter to notice.
        # A `.data` write mid-rollout takes effect when the next rollout starts (the KV cache holds keys and
        # values of the old weights anyway): reading live weights at every step costs 1.3-2x per matmul
        # (x @ W.t() against a contiguous copy of W.t(), 16 rows on CPU)
        self.plan = DecoderPlan(self.decoder)
        return self.plan.init_state(batch, self.capacity, like)

    def step(self, x: Tensor, state, condition: Tensor | None = None) -> Tensor:
        """x: (b, d) -> (b, d); condition (b, dim_condition) for a conditioned decoder, which always takes the x-transformers cache."""
        if self.plan is not None:
            return self.plan.step(x, state)

        x = rearrange(x, 'b d -> b 1 d')
        out, state.cache = self.decoder(x, cache = state.cache, return_hiddens = True, condition = condition)
        state.length += 1
        return rearrange(out, 'b 1 d -> b d')
