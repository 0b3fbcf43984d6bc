"""Evolution strategies over the causal policy's parameters (SPEC §4), via x-evolution.

Fitness of a parameter vector = success rate on a fixed set of seeded episodes
with a fixed torch seed (common random numbers), so that differences between
population members come from the parameters, not from the episodes drawn.

With several processes, x-evolution runs on the process's own `Accelerator`:
it splits the population across ranks, each rank scores its members on the same
fitness episodes, and the fitnesses are gathered for one update on every rank.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from tqdm.auto import tqdm

from metacontroller.distributed import SINGLE, Process
from metacontroller.es import evolve
from metacontroller.meta_controller import MetaController
from metacontroller.rl.config import RLConfig, RLResult
from metacontroller.rl.evaluate import evaluate
from metacontroller.rl.seeds import eval_seed, fitness_seed, seeded
from metacontroller.transformer import Transformer


class Fitness:
    """Success rate of `meta_controller` on the fixed fitness episodes; counts the raw steps used.

    x-evolution perturbs the parameters in place and passes a wrapper around the
    module, so the metacontroller itself is read here, not the argument."""

    def __init__(self, model: Transformer, meta_controller: MetaController, make_envs, config: RLConfig, seed: int, force_beta: float | None):
        self.model, self.meta_controller, self.make_envs = model, meta_controller, make_envs
        self.config, self.force_beta = config, force_beta
        self.seed = fitness_seed(seed)
        self.raw_steps = 0

    def __call__(self, _perturbed) -> float:
        config = self.config
        stats = evaluate(self.model, self.make_envs, config.es_fitness_episodes, meta_controller = self.meta_controller, seed = self.seed,
                         force_beta = self.force_beta, batch_size = config.num_envs, max_steps = config.max_steps)
        self.raw_steps += round(stats.mean_length * config.es_fitness_episodes)
        return stats.success


def episodes_per_generation(config: RLConfig, mirror_sampling: bool = True) -> int:
    return config.es_population * (2 if mirror_sampling else 1) * config.es_fitness_episodes


def train_evolution(
    model: Transformer,
    meta_controller: MetaController,
    make_envs: Callable[[int], object],
    config: RLConfig,
    seed: int = 0,
    force_beta: float | None = None,
    progress: bool = True,
    process: Process = SINGLE,
) -> RLResult:
    """ES on a copy of `meta_controller`'s policy; `result.curve` holds the mean population
    fitness per generation against episodes used; the trained copy is `result.module`."""
    device = next(model.parameters()).device
    meta = copy.deepcopy(meta_controller).to(device)
    fitness = Fitness(model, meta, make_envs, config, seed, force_beta)
    kwargs = dict(config.es_kwargs)
    per_generation = episodes_per_generation(config, kwargs.get('mirror_sampling', True))
    generations = max(1, config.total_episodes // per_generation)
    curve, evals = [], []
    next_eval = config.eval_every
    bar = tqdm(total = generations, desc = 'internal RL (ES)', disable = not (progress and process.is_main), unit = 'gen')

    def on_generation(generation, fitnesses, _module):   # x-evolution calls it on rank 0 only
        nonlocal next_eval
        episodes = generation * per_generation
        curve.append((episodes, fitnesses.mean().item()))
        if next_eval is not None and (episodes >= next_eval or generation == generations):
            evals.append((episodes, evaluate(model, make_envs, config.eval_episodes, meta_controller = meta, seed = eval_seed(seed),
                                             deterministic = config.eval_deterministic, force_beta = force_beta,
                                             batch_size = config.num_envs, max_steps = config.max_steps)))
            next_eval += config.eval_every
        bar.set_postfix(fitness = f'{curve[-1][1]:.2f}')
        bar.update(1)

    defaults = dict(cpu = device.type != 'cuda')
    if process.accelerator is not None:
        defaults['accelerator'] = process.accelerator
    # x-evolution draws its noise seeds from the global torch RNG; seeding a fork makes runs repeat
    with seeded(seed, device):
        evolve(meta, fitness, generations, [f'policy.{name}' for name, _ in meta.policy.named_parameters()],
               noise_population_size = config.es_population, noise_scale = config.es_noise_scale,
               learning_rate = config.es_lr, on_generation = on_generation, **{**defaults, **kwargs})
    bar.close()

    curve, evals = process.broadcast_object((curve, evals))
    raw_steps = int(process.sum(torch.tensor(fitness.raw_steps)))
    final = evals[-1][1].success if evals else curve[-1][1]
    return RLResult(curve, evals, final, generations * per_generation, raw_steps, meta)
