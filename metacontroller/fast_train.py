"""Fast paths for the sequence forward and backward on CPU.

- Sparse observations (a one-hot grid sets about 2% of its entries) are
  embedded by gathering and summing the weight rows their set entries select
  (`F.embedding_bag`) instead of a dense matmul over mostly zeros: ~100x fewer
  FLOPs, forward and backward. The weight is the module's own, so parameter
  names, shapes and checkpoints are unchanged.
- An x-transformers `Decoder` runs as a short chain of fused ops through its
  own parameters: one qkv matmul, the T5 bias and the causal mask added once
  per body instead of once per layer, no einops copies or dropout calls.
  Gradients reach the decoder's parameters exactly as through its forward.

Both compute what the plain path computes, up to float rounding (the parity
tests check values and gradients). `plain_paths()` turns them off: the
benchmark's baseline and the tests' reference.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from loguru import logger
from torch import Tensor, nn
from x_transformers.x_transformers import LayerNorm as XLayerNorm

from metacontroller.fast_decode import SELF_CHECK_TOLERANCE, DecoderPlan

# gathering costs a scan for the set entries plus one row read per entry; past this
# share of set entries a dense matmul, which streams at full FLOP rate, wins
MAX_DENSITY = 1 / 16

_enabled = True


@contextmanager
def plain_paths():
    """Inside, every fast path is off: dense embeddings and x-transformers' own forward."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def fast_paths_enabled() -> bool:
    return _enabled


# sparse embeddings

def set_entries(x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """(rows, cols, values) of the nonzero entries of x (n, f), in row order, where gathering
    pays: x is data (no gradient to it) and mostly zeros. None: use the dense path."""
    if not _enabled or x.requires_grad:
        return None
    rows, cols = x.nonzero(as_tuple = True)
    if rows.numel() > x.numel() * MAX_DENSITY:
        return None
    return rows, cols, x[rows, cols]


def bag_matmul(rows: Tensor, cols: Tensor, values: Tensor, weight: Tensor, num_rows: int) -> Tensor:
    """out[r] = sum of values[i] * weight[cols[i]] over the entries i of row r: (num_rows, d).
    `rows` ascending; a row without entries gives zeros."""
    offsets = torch.searchsorted(rows, torch.arange(num_rows, device = rows.device))
    return F.embedding_bag(cols, weight, offsets, mode = 'sum', per_sample_weights = values.to(weight.dtype))


def sparse_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., f) @ weight (f, d), gathering the rows of `weight` that x's set entries select."""
    flat = rearrange(x, '... f -> (...) f')
    entries = set_entries(flat)
    if entries is None:
        return x @ weight
    return bag_matmul(*entries, weight, flat.shape[0]).reshape(*x.shape[:-1], weight.shape[-1])


# fused decoder

def layer_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """x-transformers' LayerNorm as one fused call, through its own gamma."""
    if isinstance(norm, XLayerNorm):
        return F.layer_norm(x, norm.ln.normalized_shape, norm.gamma + float(norm.unit_offset), None, norm.ln.eps)
    return norm(x)


class FusedDecoder:
    """The full-sequence forward of a pre-norm, causal x-transformers Decoder without padding mask."""

    def __init__(self, decoder: nn.Module):
        if not DecoderPlan.supports(decoder) or any(p > 0 for p in decoder.layer_dropouts):
            raise NotImplementedError('not a pre-norm causal decoder without layer dropout')
        if any(isinstance(m, nn.Dropout) and m.p > 0 for m in decoder.modules()):
            raise NotImplementedError('dropout')
        self.decoder = decoder
        self.layers = []
        used = list(decoder.final_norm.parameters()) + ([] if decoder.rel_pos is None else list(decoder.rel_pos.parameters()))
        for layer_type, (norms, block, _) in zip(decoder.layer_types, decoder.layers):
            pre_norm, post_branch_norm, post_main_norm = norms
            if post_branch_norm is not None or post_main_norm is not None or layer_type not in ('a', 'f'):
                raise NotImplementedError(f'layer {layer_type!r} with post-norms')
            if layer_type == 'a':
                qkv = (block.to_q, block.to_k, block.to_v)
                if any(linear.bias is not None or linear.out_features != block.to_q.out_features for linear in qkv):
                    raise NotImplementedError('qkv biases or grouped keys and values')
                used += [block.to_q.weight, block.to_k.weight, block.to_v.weight, *block.to_out.parameters()]
            else:
                used += list(block.parameters())
            used += list(pre_norm.parameters())
            self.layers.append((layer_type, pre_norm, block))
        # a parameter this forward does not read (gates, residual scales, qk norms ...) may be an
        # identity at initialisation, where the self-check cannot see it: refuse such decoders
        if {id(p) for p in decoder.parameters()} != {id(p) for p in used}:
            raise NotImplementedError('parameters outside the fused forward')

    def attention_mask(self, n: int, like: Tensor) -> Tensor:
        """(h or 1, n, n) additive mask: the relative position bias, -inf above the diagonal."""
        causal = torch.ones(n, n, dtype = torch.bool, device = like.device).triu(1)
        bias = like.new_zeros(1, n, n) if self.decoder.rel_pos is None else self.decoder.rel_pos(n, n)
        return bias.masked_fill(causal, float('-inf'))

    @staticmethod
    def attend(block: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
        qkv = F.linear(x, torch.cat((block.to_q.weight, block.to_k.weight, block.to_v.weight)))
        q, k, v = rearrange(qkv, 'b n (qkv h d) -> qkv b h n d', qkv = 3, h = block.heads)
        scale = getattr(block.attend, 'scale', None) or q.shape[-1] ** -0.5
        # matmul and softmax rather than scaled_dot_product_attention: on CPU, with a bias that
        # needs a gradient, SDPA takes its math path and is no faster (slower under bf16)
        attn = (q @ k.transpose(-1, -2) * scale + mask).softmax(dim = -1)
        return block.to_out(rearrange(attn @ v, 'b h n d -> b n (h d)'))

    def __call__(self, x: Tensor) -> Tensor:
        """(b, n, d) -> (b, n, d)"""
        mask = self.attention_mask(x.shape[1], x)
        for layer_type, norm, block in self.layers:
            h = layer_norm(norm, x)
            x = x + (self.attend(block, h, mask) if layer_type == 'a' else block(h))
        return layer_norm(self.decoder.final_norm, x)


def fused_decoder(decoder: nn.Module) -> FusedDecoder | None:
    """A FusedDecoder that matches `decoder`'s forward on a random sequence, or None."""
    try:
        fused = FusedDecoder(decoder)
        param = next(decoder.parameters())
        generator = torch.Generator(device = param.device).manual_seed(0)
        x = torch.randn(2, 5, decoder.dim, generator = generator, device = param.device, dtype = param.dtype)
        with torch.no_grad(), torch.autocast(param.device.type, enabled = False):
            error = (decoder(x) - fused(x)).abs().max().item()
    except (NotImplementedError, AttributeError, TypeError, ValueError, RuntimeError) as error:
        logger.debug(f'no fused forward for this decoder ({error}); using x-transformers')
        return None
    if error > SELF_CHECK_TOLERANCE:
        logger.debug(f'fused forward disagrees with the decoder (max error {error:.2e}); using x-transformers')
        return None
    return fused
