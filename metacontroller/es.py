"""Evolution strategies via x-evolution, set up one way for `Transformer.evolve` and internal RL's ES."""
from __future__ import annotations

import tempfile
from typing import Callable

import torch
from torch import nn


def evolve(module: nn.Module, environment: Callable[[nn.Module], float], num_generations: int, params_to_optimize: list[str], **kwargs):
    """Run x-evolution's `EvoStrategy` on `module`'s parameters named in `params_to_optimize`; returns it, finished.

    environment(module) -> fitness. Unless `kwargs` say otherwise: quiet, on the CPU when CUDA is not
    available, and with x-evolution's checkpoints (it always writes some) in a scratch folder."""
    from x_evolution import EvoStrategy  # heavy (accelerate); only imported when used

    kwargs.setdefault('verbose', False)
    kwargs.setdefault('cpu', not torch.cuda.is_available())
    with tempfile.TemporaryDirectory() as scratch:
        kwargs.setdefault('checkpoint_path', scratch)
        evo = EvoStrategy(module, environment = environment, num_generations = num_generations, params_to_optimize = params_to_optimize, **kwargs)
        evo()
    return evo
