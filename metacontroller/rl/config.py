"""Settings and results of an RL run (internal RL, its baselines and ES)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

ALGORITHMS = ('ppo', 'es')


class EvalStats(NamedTuple):
    success: float                # fraction of episodes with a positive return
    mean_return: float
    switches_per_episode: float   # decision steps per episode (0 without a metacontroller)
    mean_length: float            # raw steps per episode
    reached: tuple[float, ...] = ()   # fraction of episodes that completed at least k task steps, k = 1, 2, ... (envs that count them)


@dataclass
class RLConfig:
    """One RL run. Paper (Table A13): batch 1024, AdamW lr 3e-5, wd 0, no entropy bonus;
    clip, epochs, grad clipping and everything ES are ours. At CPU scale a larger lr is needed."""
    algorithm: str = 'ppo'            # 'ppo' (GRPO-style PPO-clip) or 'es' (x-evolution)
    num_envs: int = 64                # episodes per update: the batch is the group
    total_episodes: int = 65_536      # training budget in episodes (ES counts every population rollout)
    lr: float = 3e-5
    weight_decay: float = 0.
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 2                   # PPO passes over each batch
    minibatches: int = 1              # per epoch, split over trajectories
    clip: float = 0.2
    max_grad_norm: float = 1.0
    advantage_eps: float = 1e-3       # δ in A = (R - mean R) / (std R + δ)
    group_size: int | None = None     # GRPO groups: episodes of a group share an env seed and are normalised together
    max_steps: int | None = None      # cap on raw steps per episode (episodes run in lockstep); None: the env's own limit
    eval_every: int | None = None     # held-out evaluation every this many training episodes
    eval_episodes: int = 256
    eval_deterministic: bool = False  # greedy (mean z, argmax action) instead of sampled evaluation
    raw_trainable: tuple[str, ...] | None = None  # raw-action baseline: parameter-name prefixes to train (None: all)
    # ES (x-evolution over the policy parameters)
    es_population: int = 16
    es_noise_scale: float = 0.05
    es_lr: float = 1e-2               # x-evolution's optimiser step size (its default SGD)
    es_fitness_episodes: int = 64     # fixed seeded episodes per fitness evaluation (common random numbers)
    es_kwargs: dict = field(default_factory = dict)   # any other EvoStrategy argument

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}')
        positive = dict(num_envs = self.num_envs, total_episodes = self.total_episodes, epochs = self.epochs,
                        minibatches = self.minibatches, eval_episodes = self.eval_episodes,
                        es_population = self.es_population, es_fitness_episodes = self.es_fitness_episodes)
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int, got {value!r}')
        if self.minibatches > self.num_envs:
            raise ValueError(f'minibatches ({self.minibatches}) cannot exceed num_envs ({self.num_envs})')
        if self.group_size is not None and (self.group_size < 1 or self.num_envs % self.group_size):
            raise ValueError(f'group_size must divide num_envs ({self.num_envs}), got {self.group_size}')
        if not 0 < self.clip < 1 or min(self.lr, self.es_lr, self.es_noise_scale, self.max_grad_norm) <= 0:
            raise ValueError(f'need 0 < clip < 1 and lr, es_lr, es_noise_scale, max_grad_norm > 0, got {self}')
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f'eval_every must be a positive number of episodes or None, got {self.eval_every}')


@dataclass
class RLResult:
    curve: list[tuple[int, float]]              # (episodes seen, success rate of that training batch; ES: mean population fitness)
    evals: list[tuple[int, EvalStats]]          # (episodes seen, held-out evaluation)
    success: float                              # final: the last evaluation if any, else the last batch
    episodes: int                               # training episodes used
    raw_steps: int                              # raw environment steps used in training
    module: nn.Module                           # the trained module (metacontroller copy, or base-model copy)
    raw_step_curve: list[tuple[int, float]] = field(default_factory = list)  # (raw steps seen, success)
