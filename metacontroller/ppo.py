"""PPO-clip with trajectory-level, batch-normalised advantages (SPEC §4, paper Eq. 10).

GRPO without groups: the batch is the group, A = (R - mean R) / (std R + δ),
with the population std (1/B) as in the paper and δ = 1e-3. Each trajectory's
advantage is broadcast to all of its decision steps.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch_einops_utils import lens_to_mask


def normalize_advantages(returns: Tensor, eps: float = 1e-3) -> Tensor:
    """(B,) returns -> (B,) advantages normalised over the batch."""
    returns = returns.float()
    return (returns - returns.mean()) / (returns.std(unbiased = False) + eps)


def compact(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Left-align the masked steps of each row.

    values: (B, T, ...), mask: (B, T) bool -> ((B, K, ...), lens (B,)), K = max row count.
    Rows keep their order in time; the tail past each row's count is zero.
    """
    lens = mask.sum(dim = 1)
    k = max(int(lens.max().item()), 1) if mask.numel() else 1
    # stable sort puts the masked steps first, in their original order
    order = torch.sort((~mask).to(torch.int8), dim = 1, stable = True).indices[:, :k]
    index = order.reshape(*order.shape, *([1] * (values.ndim - 2))).expand(-1, -1, *values.shape[2:])
    gathered = values.gather(1, index)
    keep = lens_to_mask(lens, k)
    keep = keep.reshape(*keep.shape, *([1] * (values.ndim - 2)))
    return gathered * keep, lens


def ppo_clip_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """Negative clipped surrogate, averaged over the masked steps.

    log_probs, old_log_probs: (B, K) joint log-probs (already summed over latent dims);
    advantages: (B,) per trajectory or (B, K); mask: (B, K) bool.
    """
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    ratio = (log_probs - old_log_probs.detach()).exp()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    mask = mask.to(surrogate.dtype)
    return -(surrogate * mask).sum() / mask.sum().clamp_min(1.)
