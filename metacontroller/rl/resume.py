"""The progress of an RL loop (`metacontroller.progress`), so that a long run goes on where it stopped.

Besides the policy, optimiser and RNG, it keeps the loop's counters and curves. Env seeds follow
from the episode count (`seeds`), so a continued run repeats an uninterrupted one exactly;
`total_episodes` may grow, and the evaluation schedule is the one the larger run would have had.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from metacontroller.distributed import SINGLE, Process
from metacontroller.progress import ProgressFormat, load_progress, run_settings, save_progress
from metacontroller.rl.config import EvalStats, RLConfig


@dataclass
class LoopState:
    """The counters and records of an RL loop (`trainer.run_training`)."""
    next_eval: int | None                                    # episodes at which the next evaluation is due
    curve: list[tuple[int, float]] = field(default_factory = list)
    raw_curve: list[tuple[int, float]] = field(default_factory = list)
    evals: list[tuple[int, EvalStats]] = field(default_factory = list)
    episodes: int = 0
    raw_steps: int = 0
    rewarded: int = 0                                        # training episodes that succeeded
    end_eval: bool = False                                   # the last evaluation was due only to the budget's end


RL_PROGRESS = ProgressFormat('metacontroller-rl-progress', budget = 'total_episodes', done = 'episodes', unit = 'episodes',
                             records = tuple(f.name for f in fields(LoopState)))


def settings(config: RLConfig, seed: int, kind: str, start: str, module: nn.Module, process: Process) -> dict:
    """What the progress must share with the run that continues it. `start`: `progress.starting_weights`
    of the modules the run trains and reads (other codes or another base: another run)."""
    device = next(module.parameters()).device
    return run_settings(config, RL_PROGRESS, device, process, seed = seed, kind = kind, starting_weights_sha256 = start)


def save_loop(path: str | Path, state: LoopState, module: nn.Module, optimizer: torch.optim.Optimizer,
              config: RLConfig, seed: int, kind: str, start: str, process: Process = SINGLE):
    """Write the loop's progress to `path` (rank 0 writes; every rank must call)."""
    records = dict(asdict(state), evals = [(episodes, tuple(stats)) for episodes, stats in state.evals])
    save_progress(path, RL_PROGRESS, settings(config, seed, kind, start, module, process), config.total_episodes,
                  module, optimizer, records, process)


def load_loop(path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer, config: RLConfig, seed: int,
              kind: str, start: str, process: Process = SINGLE) -> LoopState | None:
    """Restore module, optimiser and RNG from `path` and return the loop's state; None when there is none."""
    records = load_progress(path, RL_PROGRESS, settings(config, seed, kind, start, module, process), config.total_episodes,
                            module, optimizer, kind, process)
    if records is None:
        return None
    state = LoopState(**{**records, 'curve': [tuple(point) for point in records['curve']],
                         'raw_curve': [tuple(point) for point in records['raw_curve']],
                         'evals': [(episodes, EvalStats(*stats)) for episodes, stats in records['evals']]})
    if state.end_eval and state.episodes < config.total_episodes:
        state.evals.pop()   # made only because the old budget ended there: an uninterrupted run has no such point
        state.end_eval = False
    return state
