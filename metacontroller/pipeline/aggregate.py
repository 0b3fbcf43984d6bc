"""Several seeds into one results.json: every number becomes its median and quartiles
over seeds, and the RL curves get a 25–75% band."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from metacontroller.pipeline import plots
from metacontroller.pipeline.files import read_json, write_json
from metacontroller.pipeline.report import RL_RUNS


def over_seeds(values: list):
    """Per-seed values -> {median, q25, q75, per_seed} for numbers; recursion into dicts;
    anything else (lists, strings) is kept per seed."""
    if all(isinstance(v, dict) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: over_seeds([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        q25, median, q75 = np.percentile(values, (25, 50, 75)).tolist()
        return dict(median = median, q25 = q25, q75 = q75, per_seed = values)
    return dict(per_seed = values)


def median_control(per_seed: list[dict]) -> dict | None:
    """The control phase's success rates, median over seeds, in the shape `plots.draw_probe` reads."""
    if not all('control' in r for r in per_seed):
        return None
    return dict(layer = per_seed[0]['control']['layer'], **{
        tasks: {kind: dict(success = float(np.median([r['control'][tasks][kind]['success'] for r in per_seed])))
                for kind in ('base', 'controlled')}
        for tasks in ('post_task', 'pretraining_tasks')})


def aggregate(run_dir: Path, seed_dirs: list[Path], subgoal_names: str, figure_copy: str = '') -> dict:
    per_seed = [read_json(d / 'results.json') for d in seed_dirs]
    out = dict(config = per_seed[0]['config'], seeds = [r['seed'] for r in per_seed], seed_dirs = [str(d) for d in seed_dirs])
    out.update({k: over_seeds([r[k] for r in per_seed if k in r]) for k in per_seed[0] if k not in ('config', 'seed')})
    write_json(run_dir / 'results.json', out)

    runs = {name: [r['rl'][name]['curve'] for r in per_seed if name in r.get('rl', {})] for name in RL_RUNS}
    plots.single_panel(run_dir / 'rl_curves.png', plots.draw_rl_curves, runs, size = (6, 4))
    sweeps = [r['discovery']['alpha_sweep'] for r in per_seed if 'discovery' in r]
    if sweeps:
        plots.single_panel(run_dir / 'rate_distortion.png', plots.draw_rate_distortion, sweeps, size = (6, 4))
    first = per_seed[0]
    if all('probe' in r for r in per_seed) and (seed_dirs[0] / 'discover' / 'figures.json').is_file():
        figures = read_json(seed_dirs[0] / 'discover' / 'figures.json')
        probe = first['probe']
        accuracy = np.median([r['probe']['accuracy_by_layer'] for r in per_seed], axis = 0).tolist()
        plots.summary_figure(run_dir / 'fig1.png', figures['episodes'], subgoal_names, accuracy,
                             probe['chance'], probe['cut_layer'], runs, median_control(per_seed))
        if figure_copy:
            shutil.copyfile(run_dir / 'fig1.png', figure_copy)
    return out
