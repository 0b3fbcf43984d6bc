"""Latent codes z: the paper's diagonal Gaussian, or discrete codes (an option, not in the paper).

A code family reads a distribution as raw network outputs `dist` (..., n_z, k) and
knows how to sample z from it (with gradients for discovery, without for internal
RL), the joint log-prob of a sampled z (summed over n_z, what PPO's ratio reads) and
the KL to its prior (discovery's rate term). Everything downstream of z (switching,
integration, the hypernetwork, PPO) takes z as a float vector and does not care
which family made it.

| code        | k | z                              | prior          | discovery sample                            |
|-------------|---|--------------------------------|----------------|---------------------------------------------|
| gaussian    | 2 | R^{n_z}; dist = (μ, log σ²)    | N(0, I)        | μ + σ ε (reparameterised)                   |
| binary      | 1 | {0, 1}^{n_z}; dist = logits    | Bernoulli(1/2) | Gumbel-sigmoid; straight-through: hard bits |
| categorical | 1 | one-hot over n_z; dist = logits| uniform        | Gumbel-softmax; straight-through: one-hot   |

Internal RL can also choose among a fixed codebook of K codes instead of the whole code space
(`CodebookCode`, not in the paper): the policy's `dist` is then K logits (..., K, 1) and z is a
codebook row, or with `CodebookMixtureCode` a Gaussian draw around the chosen row whose mean and
spread the policy sets. `kmeans` finds such a codebook among the codes discovery uses, without labels.

Straight-through samples are hard in the forward pass and carry the relaxed
sample's gradient; without it, discovery feeds the relaxed (soft) sample to the
decoder, while internal RL always samples hard codes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metacontroller.policy import gaussian_log_prob, gaussian_sample

CODES = ('gaussian', 'binary', 'categorical')


def logistic_noise(like: Tensor) -> Tensor:
    """log u - log(1 - u), u ~ U(0, 1): the difference of two Gumbels, for Gumbel-sigmoid samples."""
    u = torch.rand_like(like).clamp(1e-6, 1 - 1e-6)
    return u.log() - (-u).log1p()


def choose(logits: Tensor, deterministic: bool = False) -> Tensor:
    """An index drawn from the categorical of `logits` (..., K), or its most likely one: (...)."""
    return logits.argmax(dim = -1) if deterministic else torch.distributions.Categorical(logits = logits).sample()


def straight_through(soft: Tensor, hard: Tensor) -> Tensor:
    """`hard`'s values with `soft`'s gradient (in this order, exact where hard = round(soft))."""
    return hard - soft.detach() + soft


class GaussianCode:
    params = 2

    def rsample(self, dist: Tensor) -> Tensor:
        return gaussian_sample(dist)

    def sample(self, dist: Tensor, deterministic: bool = False) -> Tensor:
        return gaussian_sample(dist, deterministic)

    def log_prob(self, dist: Tensor, value: Tensor) -> Tensor:
        return gaussian_log_prob(dist, value)

    def nearest(self, value: Tensor) -> Tensor:
        """The code nearest to `value` (..., n_z), e.g. a mean of codes: any vector is one."""
        return value

    def kl(self, dist: Tensor) -> Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)), summed over n_z: (..., n_z, 2) -> (...)."""
        mean, log_var = dist.unbind(dim = -1)
        return 0.5 * (mean.pow(2) + log_var.exp() - log_var - 1.).sum(dim = -1)


class BinaryCode:
    params = 1

    def __init__(self, temperature: float = 1., hard: bool = True):
        self.temperature, self.hard = temperature, hard

    def rsample(self, dist: Tensor) -> Tensor:
        logits = dist[..., 0]
        soft = torch.sigmoid((logits + logistic_noise(logits)) / self.temperature)
        return straight_through(soft, (soft >= 0.5).to(soft)) if self.hard else soft

    def sample(self, dist: Tensor, deterministic: bool = False) -> Tensor:
        logits = dist[..., 0]
        return (logits > 0).to(logits) if deterministic else torch.bernoulli(torch.sigmoid(logits))

    def log_prob(self, dist: Tensor, value: Tensor) -> Tensor:
        logits = dist[..., 0]
        return (value * F.logsigmoid(logits) + (1 - value) * F.logsigmoid(-logits)).sum(dim = -1)

    def nearest(self, value: Tensor) -> Tensor:
        """The code nearest to `value` (..., n_z), e.g. a mean of codes: each bit rounded."""
        return (value >= 0.5).to(value)

    def kl(self, dist: Tensor) -> Tensor:
        """KL(Bernoulli(σ(l)) ‖ Bernoulli(1/2)), summed over the n_z bits."""
        logits = dist[..., 0]
        p = torch.sigmoid(logits)
        return (p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits) + math.log(2)).sum(dim = -1)


class CategoricalCode:
    params = 1

    def __init__(self, temperature: float = 1., hard: bool = True):
        self.temperature, self.hard = temperature, hard

    def rsample(self, dist: Tensor) -> Tensor:
        return F.gumbel_softmax(dist[..., 0], tau = self.temperature, hard = self.hard)

    def sample(self, dist: Tensor, deterministic: bool = False) -> Tensor:
        logits = dist[..., 0]
        index = choose(logits, deterministic)
        return F.one_hot(index, logits.shape[-1]).to(logits)

    def log_prob(self, dist: Tensor, value: Tensor) -> Tensor:
        """value: one-hot (..., n_z)."""
        return (value * dist[..., 0].log_softmax(dim = -1)).sum(dim = -1)

    def nearest(self, value: Tensor) -> Tensor:
        """The code nearest to `value` (..., n_z), e.g. a mean of codes: the one-hot of its largest entry."""
        return F.one_hot(value.argmax(dim = -1), value.shape[-1]).to(value)

    def kl(self, dist: Tensor) -> Tensor:
        """KL(Categorical(softmax(l)) ‖ uniform over the n_z codes)."""
        log_q = dist[..., 0].log_softmax(dim = -1)
        return (log_q.exp() * (log_q + math.log(log_q.shape[-1]))).sum(dim = -1)


class CodebookCode:
    """z is one of the K rows of `codebook` (K, n_z), chosen by K logits (..., K, 1); internal RL only."""
    params = 1

    def __init__(self, codebook: Tensor):
        self.codebook = codebook

    def index(self, value: Tensor) -> Tensor:
        """The index of the codebook row nearest to each z (..., n_z) -> (...)."""
        return (value[..., None, :] - self.codebook.to(value)).pow(2).sum(dim = -1).argmin(dim = -1)

    def sample(self, dist: Tensor, deterministic: bool = False) -> Tensor:
        logits = dist[..., 0]
        index = choose(logits, deterministic)
        return self.codebook.to(logits)[index]

    def log_prob(self, dist: Tensor, value: Tensor) -> Tensor:
        """value: codebook rows (..., n_z)."""
        return dist[..., 0].log_softmax(dim = -1).gather(-1, self.index(value)[..., None])[..., 0]

    def nearest(self, value: Tensor) -> Tensor:
        return self.codebook.to(value)[self.index(value)]


class CodebookMixtureCode(CodebookCode):
    """z is drawn around one of the K rows of `codebook` (K, n_z): a mixture of K diagonal Gaussians, read from
    dist (..., K, 1 + 2 n_z) as each row's logit, mean offset and log variance, both relative to `spread` σ0
    (mean = row + σ0·offset, log σ² = 2 log σ0 + raw), so a head that starts near zero draws within σ0 of a
    row; internal RL only. The codes can then follow the state, which fixed rows cannot."""

    def __init__(self, codebook: Tensor, spread: float):
        super().__init__(codebook)
        self.spread = spread
        self.params = 1 + 2 * codebook.shape[-1]

    def components(self, dist: Tensor) -> tuple[Tensor, Tensor]:
        """dist (..., K, 1 + 2 n_z) -> the K logits (..., K) and the K Gaussians (..., K, n_z, 2)."""
        n = self.codebook.shape[-1]
        offset, log_var = dist[..., 1:1 + n], dist[..., 1 + n:]
        mean = self.codebook.to(dist) + self.spread * offset
        return dist[..., 0], torch.stack((mean, log_var + 2 * math.log(self.spread)), dim = -1)

    def sample(self, dist: Tensor, deterministic: bool = False) -> Tensor:
        logits, gaussians = self.components(dist)
        index = choose(logits, deterministic)
        chosen = torch.take_along_dim(gaussians, index[..., None, None, None], dim = -3)[..., 0, :, :]   # (..., n_z, 2)
        return gaussian_sample(chosen, deterministic)

    def log_prob(self, dist: Tensor, value: Tensor) -> Tensor:
        """The mixture's density at value (..., n_z): log Σ_k π_k N(value; μ_k, σ_k²), whichever row drew it."""
        logits, gaussians = self.components(dist)
        return (logits.log_softmax(dim = -1) + gaussian_log_prob(gaussians, value[..., None, :])).logsumexp(dim = -1)


def kmeans(points: Tensor, k: int, iters: int = 100, seed: int = 0) -> Tensor:
    """(k, n) centroids of points (N, n) by Lloyd's algorithm from a k-means++ start (seeded); a centroid
    that loses all its points stays where it was."""
    if not 1 <= k <= len(points):
        raise ValueError(f'k-means needs 1 <= k <= the number of points ({len(points)}), got k = {k}')
    generator = torch.Generator(device = points.device).manual_seed(seed)
    centroids = points[torch.randint(len(points), (1,), generator = generator, device = points.device)]
    for _ in range(k - 1):   # k-means++: the next centroid with probability ∝ squared distance to the nearest so far
        weight = torch.cdist(points, centroids).min(dim = -1).values.pow(2)
        centroids = torch.cat((centroids, points[torch.multinomial(weight, 1, generator = generator)]))
    for _ in range(iters):
        assigned = torch.cdist(points, centroids).argmin(dim = -1)
        sums = torch.zeros_like(centroids).index_add_(0, assigned, points)
        counts = torch.bincount(assigned, minlength = k)[:, None]
        updated = torch.where(counts > 0, sums / counts.clamp(min = 1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def make_latent_code(kind: str, temperature: float = 1., hard: bool = True) -> GaussianCode | BinaryCode | CategoricalCode:
    """The code family named `kind`; temperature and hard (straight-through) apply to the discrete ones."""
    if kind not in CODES:
        raise ValueError(f'latent_code must be one of {CODES}, got {kind!r}')
    if not temperature > 0:
        raise ValueError(f"code_temperature must be > 0 (the Gumbel relaxation's temperature), got {temperature}")
    if kind == 'gaussian':
        return GaussianCode()
    return (BinaryCode if kind == 'binary' else CategoricalCode)(temperature, hard)
