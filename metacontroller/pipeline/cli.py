"""Command line over the pipeline: presets, one flag per config field, phases, seeds.

The same command runs in one process (`python train_pinpad.py`) or in several
(`accelerate launch` / `torchrun`, see `metacontroller.distributed`)."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch
from loguru import logger

from metacontroller import distributed
from metacontroller.pipeline.adapter import EnvAdapter
from metacontroller.pipeline.aggregate import aggregate
from metacontroller.pipeline.config import PRESETS, PipelineConfig, override, sections, validate
from metacontroller.pipeline.phases import PHASES, Run
from metacontroller.pipeline.runner import Plan, execute, parse_phases


def parse_bool(text: str) -> bool:
    if text.lower() in ('1', 'true', 'yes', 'on'):
        return True
    if text.lower() in ('0', 'false', 'no', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')


def parse_floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(',') if x.strip())


def flag_type(value) -> Callable:
    if isinstance(value, bool):
        return parse_bool
    if isinstance(value, tuple):
        return parse_floats
    return type(value)


def add_config_flags(parser: argparse.ArgumentParser, adapter: EnvAdapter):
    """--section.field for every field, documented with each of the environment's presets' value."""
    presets = {name: adapter.preset(name) for name in PRESETS}
    for section, sub in sections(presets['default']).items():
        group = parser.add_argument_group(f'{section} settings')
        for f in fields(sub):
            values = '; '.join(f'{name}: {getattr(sections(c)[section], f.name)!r}' for name, c in presets.items())
            group.add_argument(f'--{section}.{f.name}', dest = f'{section}.{f.name}', type = flag_type(getattr(sub, f.name)),
                               default = argparse.SUPPRESS, metavar = type(getattr(sub, f.name)).__name__.upper(),
                               help = f'{f.metadata["help"]} ({values})')


def build_parser(adapter: EnvAdapter) -> argparse.ArgumentParser:
    env_name = adapter.name
    parser = argparse.ArgumentParser(
        description = f"The paper's {env_name} experiment end to end: " + ' → '.join(PHASES) + '. '
                      'Finished phases are skipped on a rerun (resume); --force redoes them.',
        formatter_class = argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('--preset', choices = sorted(PRESETS), default = 'default',
                        help = "smoke: < 3 min on 2 CPU cores (tests); default: the CPU reproduction; labelfree: the default "
                               "sizes with the study's recipe (ours; pinpad; the subgoal boundaries found without labels on discovery "
                               "seeds 0 and 1 of 3); paper: the paper's sizes (GPU)")
    parser.add_argument('--phases', type = parse_phases, default = ','.join(PHASES), help = 'comma-separated subset, run in pipeline order')
    parser.add_argument('--force', action = 'store_true', help = 'redo the selected phases even if finished')
    parser.add_argument('--seed', type = int, default = 0, help = 'first seed')
    parser.add_argument('--seeds', type = int, default = 1, help = 'number of seeds (seed, seed + 1, ...); > 1 aggregates median and quartiles')
    parser.add_argument('--device', default = 'cpu', help = 'torch device, e.g. cpu or cuda; under accelerate launch or torchrun '
                                                           'each process takes the device of its local rank')
    parser.add_argument('--mixed-precision', choices = distributed.MIXED_PRECISION, default = 'no',
                        help = 'bf16: autocast the pretraining and discovery forward passes (RL stays in fp32)')
    parser.add_argument('--threads', type = int, default = 0, help = 'torch CPU threads (0: torch default)')
    parser.add_argument('--name', default = None, help = 'run name (default: the preset name)')
    parser.add_argument('--run-dir', type = Path, default = None, help = f'run folder (default: runs/{env_name}/<name>)')
    parser.add_argument('--no-progress', action = 'store_true', help = 'no progress bars (logs only)')
    add_config_flags(parser, adapter)
    return parser


def config_from_args(args: argparse.Namespace, adapter: EnvAdapter) -> PipelineConfig:
    values = {key: value for key, value in vars(args).items() if '.' in key}   # only the flags given
    return override(adapter.preset(args.preset), values)


def main(adapter: EnvAdapter, argv: list[str] | None = None) -> dict:
    parser = build_parser(adapter)
    args = parser.parse_args(argv)
    for flag, value, low in (('--seeds', args.seeds, 1), ('--seed', args.seed, 0), ('--threads', args.threads, 0)):
        if value < low:
            parser.error(f'{flag} must be >= {low}, got {value}')
    try:
        config = config_from_args(args, adapter)
        validate(config)   # every setting, before any phase runs or config.json is written
        adapter = adapter.for_config(config)
        adapter.episode_rotations(config.discovery.rotation_consistency)   # an env without them fails here, before any work
        adapter.event_targets(config.pretrain.next_event_weight > 0)        # likewise
        adapter.event_targets(config.discovery.next_event_weight > 0, '--discovery.next_event_weight')
        torch.device(args.device)
    except (ValueError, RuntimeError) as error:
        # a preset's own setting can be what the env lacks (labelfree on babyai): say which preset set it
        parser.error(str(error) + (f' (--preset {args.preset})' if args.preset != 'default' else ''))
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available on this machine')

    with restored_thread_count():
        try:
            process = distributed.setup(args.device, args.mixed_precision)
        except ValueError as error:
            parser.error(str(error))
        if args.threads:   # after setup: on CPUs, accelerate sets its own thread count when OMP_NUM_THREADS is unset
            torch.set_num_threads(args.threads)
        if process.is_main and process.device.type == 'cpu':
            warn_if_busy()
        if process.is_main:
            warn_if_bf16_emulated(process)
        return run_seeds(args, config, adapter, process)


def warn_if_busy():
    """Torch processes that together run more threads than there are cores slow each other down
    10-20x (seen on 2-core machines): say so at start-up when the machine is already loaded."""
    load, cores = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0., os.cpu_count() or 1
    threads = torch.get_num_threads()
    if load >= cores:
        advice = 'lower --threads (e.g. --threads 1)' if threads > 1 else 'it is already at --threads 1: expect it to be slower than alone'
        logger.warning(f'this machine is busy (load {load:.1f} on {cores} cores) and this run uses {threads} threads: '
                       f'competing for cores can slow every run 10-20x; {advice}')


def warn_if_bf16_emulated(process: distributed.Process):
    """bf16 autocast on a device without bf16 matmul kernels is much slower than fp32, not faster."""
    if process.mixed_precision != 'bf16' or distributed.native_bf16(process.device):
        return
    what = f'CPU ({torch.backends.cpu.get_cpu_capability()})' if process.device.type == 'cpu' else str(process.device)
    logger.warning(f'--mixed-precision bf16 on a {what} without bf16 matmul kernels: they are emulated, which is many times '
                   f'slower than fp32 (README, "Speed"); --mixed-precision no is faster here')


@contextmanager
def restored_thread_count():
    """Neither --threads nor accelerate's own count outlives the call (e.g. into a test process)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_seeds(args: argparse.Namespace, config: PipelineConfig, adapter: EnvAdapter, process: distributed.Process) -> dict:
    if not process.is_main:
        quiet_logs()

    run_dir = args.run_dir or Path('runs') / adapter.name / (args.name or args.preset)
    plan = Plan(phases = args.phases, force = args.force)
    progress = not args.no_progress
    device = str(process.device)
    if args.seeds == 1:
        return execute(Run(run_dir, config, adapter, args.seed, device, progress, process), plan)

    seed_dirs = [run_dir / f'seed_{s}' for s in range(args.seed, args.seed + args.seeds)]
    per_seed = override(config, {'report.figure_copy': ''})   # only the aggregate writes the shared figure
    for seed, seed_dir in zip(range(args.seed, args.seed + args.seeds), seed_dirs):
        logger.info(f'seed {seed} → {seed_dir}')
        execute(Run(seed_dir, per_seed, adapter, seed, device, progress, process), plan)
    if not process.is_main:
        return {}   # the aggregate's files and figure are rank 0's to write
    return aggregate(run_dir, seed_dirs, adapter.subgoal_names, config.report.figure_copy)


def quiet_logs():
    """On ranks other than 0: errors only, so that a multi-process run logs each line once."""
    logger.remove()
    logger.add(sys.stderr, level = 'ERROR')


def run_cli(adapter: EnvAdapter):
    try:
        main(adapter)
    except (FileNotFoundError, ValueError) as error:
        logger.error(str(error))
        sys.exit(2)
