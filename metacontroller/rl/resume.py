"""Mid-run checkpoints of an RL loop, so that a long run goes on where it stopped.

A checkpoint holds everything the next batch depends on: the trained module's and the
optimiser's state, every rank's torch RNG state, and the loop's counters and curves. Env
seeds follow from the episode count (`seeds`), so a continued run repeats an uninterrupted
one exactly. Its settings (and device, precision and process count) must match the continuing
run's, except `total_episodes`, which may grow: a finished run can go on to a larger budget. It is read with
`weights_only = True`, so nothing in it is code.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from loguru import logger
from torch import Tensor, nn

from metacontroller.checkpoint import atomic_path, checksum
from metacontroller.distributed import SINGLE, Process
from metacontroller.rl.config import EvalStats, RLConfig

FORMAT, VERSION = 'metacontroller-rl-progress', 1
FREE = ('total_episodes',)   # the settings a continued run may change


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


def starting_weights(*modules: nn.Module) -> str:
    """One checksum over the weights a run starts from: the module it trains and those it only reads."""
    return hashlib.sha256(''.join(checksum(module.state_dict()) for module in modules).encode()).hexdigest()


def settings(config: RLConfig, seed: int, kind: str, start: str, device: torch.device, process: Process) -> dict:
    """What a checkpoint must share with the run that continues it, as plain JSON values: every RL
    setting but the budget, and what the run starts from and runs on (bit-exact only on the same)."""
    fixed = {name: value for name, value in asdict(config).items() if name not in FREE}
    where = dict(device = device.type, mixed_precision = process.mixed_precision, world_size = process.world_size)
    return json.loads(json.dumps(dict(fixed, seed = seed, kind = kind, starting_weights_sha256 = start, **where), default = str))


def rng_state(device: torch.device) -> Tensor:
    """(n,) uint8: the CPU generator's state, then the device's when it is a GPU."""
    states = [torch.get_rng_state()]
    if device.type == 'cuda':
        states.append(torch.cuda.get_rng_state(device))
    return torch.cat(states)


def set_rng_state(state: Tensor, device: torch.device):
    cpu = torch.get_rng_state().numel()
    torch.set_rng_state(state[:cpu].contiguous())
    if device.type == 'cuda':
        torch.cuda.set_rng_state(state[cpu:].contiguous(), device)


def save_progress(path: str | Path, state: LoopState, module: nn.Module, optimizer: torch.optim.Optimizer,
                  config: RLConfig, seed: int, kind: str, start: str, process: Process = SINGLE):
    """Write the loop's progress to `path` (rank 0 writes; every rank must call: it gathers the RNG states)."""
    device = next(module.parameters()).device
    rngs = process.gather(rng_state(device)[None])           # (world, n), in rank order
    if not process.is_main:
        return
    data = dict(
        format = FORMAT, version = VERSION, settings = json.dumps(settings(config, seed, kind, start, device, process), sort_keys = True),
        total_episodes = config.total_episodes, rng = rngs.cpu(), module = module.state_dict(), optimizer = optimizer.state_dict(),
        next_eval = state.next_eval, curve = state.curve, raw_curve = state.raw_curve,
        evals = [(episodes, tuple(stats)) for episodes, stats in state.evals], end_eval = state.end_eval,
        episodes = state.episodes, raw_steps = state.raw_steps, rewarded = state.rewarded,
    )
    path = Path(path)
    path.parent.mkdir(parents = True, exist_ok = True)
    with atomic_path(path) as tmp:   # an interruption mid-write leaves the previous checkpoint whole
        torch.save(data, tmp)


def load_progress(path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer, config: RLConfig, seed: int,
                  kind: str, start: str, process: Process = SINGLE) -> LoopState | None:
    """Restore module, optimiser and this rank's RNG from `path` and return the loop's state; None when
    there is no checkpoint. A checkpoint of another kind of run, made with other settings or on another
    device, or for a larger budget, is an error."""
    path = Path(path)
    if not process.broadcast_object(path.is_file()):   # rank 0 decides, so that every rank runs the same batches
        return None
    afresh = 'delete it (in the pipeline: --force) to start afresh'
    try:
        data = torch.load(path, map_location = 'cpu', weights_only = True)
    except Exception as error:   # truncated, not a torch file, or holding code (refused by weights_only); details chained
        raise ValueError(f'{path} could not be read as RL progress ({type(error).__name__}); {afresh}') from error
    if not isinstance(data, dict) or data.get('format') != FORMAT or data.get('version') != VERSION:
        raise ValueError(f'{path} is not a {FORMAT} file of version {VERSION}; {afresh}')
    device = next(module.parameters()).device
    saved, now = json.loads(data['settings']), settings(config, seed, kind, start, device, process)
    changed = sorted(name for name in saved.keys() | now.keys() if saved.get(name) != now.get(name))
    if changed:
        differences = ', '.join(f'{name}: saved {saved.get(name)!r}, now {now.get(name)!r}' for name in changed)
        raise ValueError(f'{path} holds the progress of a run with other settings ({differences}); '
                         f'continue it with its settings, or {afresh}')
    if config.total_episodes < data['total_episodes']:
        raise ValueError(f'{path} holds a run with a budget of {data["total_episodes"]:,} episodes; a continued run may '
                         f'keep or raise it, got total_episodes = {config.total_episodes:,}')

    module.load_state_dict(data['module'])
    optimizer.load_state_dict(data['optimizer'])
    set_rng_state(data['rng'][process.rank], device)
    if process.is_main:
        logger.info(f'{kind}: going on from {path}, at {data["episodes"]:,} of {config.total_episodes:,} episodes')
    state = LoopState(
        next_eval = data['next_eval'], curve = [tuple(point) for point in data['curve']],
        raw_curve = [tuple(point) for point in data['raw_curve']],
        evals = [(episodes, EvalStats(*stats)) for episodes, stats in data['evals']], end_eval = data['end_eval'],
        episodes = data['episodes'], raw_steps = data['raw_steps'], rewarded = data['rewarded'],
    )
    if state.end_eval and state.episodes < config.total_episodes:
        state.evals.pop()   # made only because the old budget ended there: an uninterrupted run has no such point
        state.end_eval = False
    return state
