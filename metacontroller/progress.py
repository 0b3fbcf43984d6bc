"""Mid-run checkpoints of a training loop, so that a long run goes on where it stopped.

A progress file holds everything the loop's next step depends on: the trained module's and
the optimiser's state, every rank's torch RNG state, and the loop's own records (counters,
curves). It also holds the settings of the run that wrote it, and a run goes on from it only
with the same settings, device, precision and process count, except the budget, which may
grow: a finished run can go on to a larger one. It is read with `weights_only = True`, so
nothing in it is code. Pretraining, discovery and control (`pipeline.discover.fit`) and RL (`rl.resume`)
keep their progress this way.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from loguru import logger
from torch import Tensor, nn

from metacontroller.checkpoint import atomic_path, checksum
from metacontroller.distributed import SINGLE, Process

VERSION = 1
RESERVED = ('format', 'version', 'settings', 'rng', 'module', 'optimizer')


@dataclass(frozen = True)
class ProgressFormat:
    """One kind of progress file."""
    format: str   # its name, e.g. 'metacontroller-rl-progress'
    budget: str   # the setting that may grow, e.g. 'total_episodes'
    done: str     # the record that counts the work done, e.g. 'episodes'
    unit: str     # what it counts, for messages
    records: tuple[str, ...]   # the names of the loop's own records, all of them present in every file


def starting_weights(*modules: nn.Module) -> str:
    """One checksum over the weights a run starts from: the module it trains and those it only reads."""
    return hashlib.sha256(''.join(checksum(module.state_dict()) for module in modules).encode()).hexdigest()


def run_settings(config, fmt: ProgressFormat, device: torch.device, process: Process, ignore: tuple[str, ...] = (),
                 **identity) -> dict:
    """What a progress file must share with the run that goes on from it, as plain JSON values: every
    field of the dataclass `config` but the budget and those in `ignore` (fields that do not change the
    training), `identity` (seed, starting weights, data, ...), and what it runs on (bit-exact only on the same)."""
    fixed = {name: value for name, value in asdict(config).items() if name not in (fmt.budget, *ignore)}
    where = dict(device = device.type, mixed_precision = process.mixed_precision, world_size = process.world_size)
    return json.loads(json.dumps(dict(fixed, **identity, **where), default = str))


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


def save_progress(path: str | Path, fmt: ProgressFormat, settings: dict, budget: int, module: nn.Module,
                  optimizer: torch.optim.Optimizer, records: dict, process: Process = SINGLE):
    """Write a loop's progress to `path`. Rank 0 writes; every rank must call (it gathers the RNG states).
    records: the loop's own plain values (numbers, strings, lists, tuples, dicts, tensors)."""
    if set(records) != set(fmt.records) or set(records) & {*RESERVED, fmt.budget}:
        raise ValueError(f'records must be named {sorted(fmt.records)} and none of {sorted({*RESERVED, fmt.budget})}, got {sorted(records)}')
    device = next(module.parameters()).device
    rngs = process.gather(rng_state(device)[None])           # (world, n), in rank order
    if not process.is_main:
        return
    data = dict(records, format = fmt.format, version = VERSION, settings = json.dumps(settings, sort_keys = True),
                rng = rngs.cpu(), module = module.state_dict(), optimizer = optimizer.state_dict(), **{fmt.budget: budget})
    path = Path(path)
    path.parent.mkdir(parents = True, exist_ok = True)
    with atomic_path(path) as tmp:   # an interruption mid-write leaves the previous file whole
        torch.save(data, tmp)


def load_progress(path: str | Path, fmt: ProgressFormat, settings: dict, budget: int, module: nn.Module,
                  optimizer: torch.optim.Optimizer, name: str, process: Process = SINGLE) -> dict | None:
    """Restore module, optimiser and this rank's RNG from `path`, and return the loop's records; None
    when there is no file. One of another format, made with other settings, or for a larger budget
    is an error. `name` names the run in the log line that says where it goes on from."""
    path = Path(path)
    if not process.broadcast_object(path.is_file()):   # rank 0 decides, so that every rank runs the same steps
        return None
    afresh = 'delete it (in the pipeline: --force) to start afresh'
    try:
        data = torch.load(path, map_location = 'cpu', weights_only = True)
    except Exception as error:   # truncated, not a torch file, or holding code (refused by weights_only); details chained
        raise ValueError(f'{path} could not be read as progress ({type(error).__name__}); {afresh}') from error
    if not isinstance(data, dict) or data.get('format') != fmt.format or data.get('version') != VERSION:
        raise ValueError(f'{path} is not a {fmt.format} file of version {VERSION}; {afresh}')
    saved = json.loads(data['settings'])
    changed = sorted(key for key in saved.keys() | settings.keys() if saved.get(key) != settings.get(key))
    if changed:
        differences = ', '.join(f'{key}: saved {saved.get(key)!r}, now {settings.get(key)!r}' for key in changed)
        raise ValueError(f'{path} holds the progress of a run with other settings ({differences}); '
                         f'continue it with its settings, or {afresh}')
    if budget < data[fmt.budget]:
        raise ValueError(f'{path} holds a run with a budget of {data[fmt.budget]:,} {fmt.unit}; a continued run may '
                         f'keep or raise it, got {fmt.budget} = {budget:,}')

    records = {key: value for key, value in data.items() if key not in {*RESERVED, fmt.budget}}
    if set(records) != set(fmt.records):
        raise ValueError(f'{path} holds the records {sorted(records)}, expected {sorted(fmt.records)}; {afresh}')

    device = next(module.parameters()).device
    module.load_state_dict(data['module'])
    optimizer.load_state_dict(data['optimizer'])
    set_rng_state(data['rng'][process.rank], device)
    if process.is_main:
        logger.info(f'{name}: going on from {path}, at {records[fmt.done]:,} of {budget:,} {fmt.unit}')
    return records
