"""Phase orchestration: resume, --force, logging, results.json.

A phase is finished when its record `phases/<phase>.json` exists; it is
written last, after the phase's checkpoints, so an interrupted phase simply
runs again; its training loops go on from the progress they saved
(`metacontroller.progress`), which --force drops. A larger budget (`BUDGETS`)
on a finished run needs no --force: the phases it drives run again from their
progress. Each phase seeds torch from (seed, phase), so a resumed run repeats
what an uninterrupted one would have done.

With several processes, every rank reads the run folder and decides the same
plan; rank 0 alone writes config.json, the records, results.json and run.log,
and a barrier after each phase lets the next one, on every rank, read its files.
Rank 0 holds the folder's lock for the whole run, and every JSON file is
written whole or not at all (see `files`).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from loguru import logger

from metacontroller.pipeline.config import from_dict
from metacontroller.pipeline.files import read_json, run_lock, write_json
from metacontroller.pipeline.phases import BUDGETS, NEEDS, PHASES, SECTION_READERS, SETTING_READERS, SHARDED, Run, fixed_budgets, gather_results
from metacontroller.rl.seeds import rank_seed

CONFIG_FILE, RESULTS_FILE, LOG_FILE = 'config.json', 'results.json', 'run.log'


@dataclass(frozen = True)
class Plan:
    phases: tuple[str, ...] = tuple(PHASES)
    force: bool = False


def parse_phases(text: str) -> tuple[str, ...]:
    """'discover,rl' -> in pipeline order; unknown names are an error."""
    names = [p.strip() for p in text.split(',') if p.strip()]
    unknown = [p for p in names if p not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'unknown phase(s) {unknown or text!r}; choose from {",".join(PHASES)}')
    return tuple(p for p in PHASES if p in names)


def check_config(run: Run, plan: Plan) -> tuple[str, ...]:
    """A run folder holds one configuration: refuse to mix phases trained under another. A setting that no
    finished phase has read, nor read the files of, may change freely (`unread`). The one other change
    allowed without --force is a larger budget (`BUDGETS`): the finished phases it drives must then be in
    the plan, and they go on from their progress. Returns those phases."""
    path = run.run_dir / CONFIG_FILE
    if not path.is_file():
        return ()
    current = run.config.to_dict()
    recorded = read_json(path)['config']
    saved = from_dict(recorded).to_dict()
    # a setting the folder's config.json does not record (made by an older version) counts as changed:
    # its phases ran under whatever that version did, not necessarily today's default
    changed = {f'{s}.{k}': (saved.get(s, {}).get(k), kw[k], k in recorded.get(s, {}))
               for s, kw in current.items() if isinstance(kw, dict) for k in kw
               if saved.get(s, {}).get(k) != kw[k] or k not in recorded.get(s, {})}
    free = unread(run, changed)
    if free:
        logger.info(f'settings changed ({", ".join(sorted(free))}) that no finished phase has read: the new values hold')
        changed = {name: values for name, values in changed.items() if name not in free}
    names = ', '.join(sorted(name + ('' if known else ' (not recorded)') for name, (_, _, known) in changed.items()))
    if changed and plan.force:
        logger.warning(f'settings changed ({names}); phases not redone keep their old results')
    if not changed or plan.force:
        return ()
    fixed = {name: why for name, why in fixed_budgets(run.config).items() if name in changed and changed[name][1] > changed[name][0]}
    if fixed:
        raise ValueError(f'{run.run_dir}: {", ".join(fixed)} cannot rise ({"; ".join(fixed.values())}); '
                         'use another --run-dir, or --force to redo the phase')
    if not all(name in BUDGETS and known and now > was for name, (was, now, known) in changed.items()):
        raise ValueError(f'{run.run_dir} was made with other settings ({names}); use another --run-dir, or --force '
                         f'to redo the selected phases with the new ones (only a larger {", ".join(BUDGETS)} may change '
                         'without it: the phases it drives go on from their progress)')
    finished = finished_phases(run)
    extended = tuple(p for p in PHASES if any(p in BUDGETS[name] for name in changed) and p in finished)
    missing = [p for p in extended if p not in plan.phases]
    if missing:
        raise ValueError(f'the budget rose ({names}) for phases that finished under the old one: add '
                         f'{",".join(missing)} to --phases to go on from their progress, or use --force')
    for name, (was, now, _) in changed.items():
        going_on = [p for p in BUDGETS[name] if p in extended and p not in readers(extended)]   # a reader is redone afresh
        logger.info(f'{name} rose from {was:,} to {now:,}: ' + (f'phase(s) {", ".join(going_on)} go on from their progress'
                                                                  if going_on else 'no finished phase to go on'))
    return extended


def unread(run: Run, settings: Iterable[str]) -> list[str]:
    """The `settings` ('section.field' names) that no finished phase of the run has read (`setting_readers`); an
    unfinished phase's progress names the settings it was made with, and refuses others with a clear error."""
    finished = finished_phases(run)
    return [name for name in settings if not finished & set(setting_readers(name))]


def finished_phases(run: Run) -> set[str]:
    """The phases whose record the run folder holds (a phase's record is written last, when it ends)."""
    return {p for p in PHASES if run.record_path(p).is_file()}


def setting_readers(name: str) -> tuple[str, ...]:
    """'section.field' -> the phases that read it, directly or through the files of a phase that does."""
    first = SETTING_READERS.get(name) or SECTION_READERS[name.split('.')[0]]
    return tuple(dict.fromkeys(first + readers(first)))


def readers(phases: tuple[str, ...]) -> tuple[str, ...]:
    """The phases that read what `phases` write, directly or through another (the report reads every
    record); one of `phases` itself when it reads another of them."""
    found = set()
    for phase in PHASES:   # pipeline order: a phase comes after every phase it reads
        if set(NEEDS.get(phase, {}).values()) & (found | set(phases)) or (phase == 'report' and phases):
            found.add(phase)
    return tuple(p for p in PHASES if p in found)


def check_inputs(run: Run, to_run: list[str]):
    """Fail before any work when a phase to run reads a file that no earlier phase will write."""
    for phase in to_run:
        for rel, producer in NEEDS.get(phase, {}).items():
            if not (run.run_dir / rel).exists() and producer not in to_run[:to_run.index(phase)]:
                raise FileNotFoundError(f'phase {phase!r} needs {run.run_dir / rel}, written by phase {producer!r}, '
                                        f'which has not run in this run folder: add it to --phases (e.g. --phases {producer},{phase})')


def run_phase(run: Run, phase: str):
    process = run.process
    torch.manual_seed(rank_seed(run.seed * 1000 + list(PHASES).index(phase), process.rank))
    start = time.time()
    logger.info(f'phase {phase}: start')
    if phase in SHARDED or process.is_main:
        metrics = PHASES[phase](run)
    if process.is_main:
        record = dict(metrics = metrics, wall_time_s = time.time() - start)
        path = run.record_path(phase)
        path.parent.mkdir(parents = True, exist_ok = True)
        write_json(path, record)
        logger.info(f'phase {phase}: done in {record["wall_time_s"]:.1f} s')
    process.wait()


def execute(run: Run, plan: Plan) -> dict:
    """Run the plan's phases that are not finished (all of them with force); write results.json.
    A second run on the same folder meanwhile is refused."""
    run.run_dir.mkdir(parents = True, exist_ok = True)
    with run_lock(run.run_dir) if run.process.is_main else nullcontext():
        return execute_locked(run, plan)


def execute_locked(run: Run, plan: Plan) -> dict:
    process = run.process
    sink = logger.add(run.run_dir / LOG_FILE, level = 'INFO') if process.is_main else None
    try:
        extended = check_config(run, plan)
        finished = finished_phases(run)
        stale = [p for p in readers(extended) if p in finished]   # made from what the longer phases replace: redone afresh
        for phase in stale:
            logger.log('INFO' if phase in plan.phases else 'WARNING', f'phase {phase}: reads what {", ".join(p for p in extended if p != phase)} '
                       + ('write, redone' if phase in plan.phases else 'write, and keeps its old results (not in --phases)'))
        redo = {*extended, *(p for p in stale if p in plan.phases)}
        to_run = [p for p in plan.phases if plan.force or p in redo or p not in finished]
        for phase in (p for p in plan.phases if p not in to_run):
            logger.info(f'phase {phase}: already finished, skipped (--force redoes it)')
        check_inputs(run, to_run)
        process.wait()   # every rank has read the run folder before rank 0 writes to it
        if process.is_main:
            write_json(run.run_dir / CONFIG_FILE, dict(config = run.config.to_dict(), seed = run.seed))
            # a forced (or stale) phase is unfinished until it ends again, and starts afresh; without --force, an
            # unfinished training phase goes on from its progress, and so does one whose budget rose
            for phase in to_run if plan.force else [p for p in to_run if p in redo]:
                run.record_path(phase).unlink(missing_ok = True)
                if plan.force or phase in stale:
                    run.clear_progress(phase)
        process.wait()
        for phase in to_run:
            run_phase(run, phase)
        result = gather_results(run)
        if process.is_main:
            write_json(run.run_dir / RESULTS_FILE, result)
            logger.info(f'results: {run.run_dir / RESULTS_FILE}')
        return result
    finally:
        if sink is not None:
            logger.remove(sink)
