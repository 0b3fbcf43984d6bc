"""Several seeds into one results.json: every number becomes its median and quartiles
over seeds, and the RL curves get a 25–75% band."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from metacontroller.pipeline import plots
from metacontroller.pipeline.report import RL_RUNS


def summarize(values: list):
    """Per-seed values -> {median, q25, q75, per_seed} for numbers; recursion into dicts;
    anything else (lists, strings) is kept per seed."""
    if all(isinstance(v, dict) for v in values):
        keys = dict.fromkeys(k for v in values for k in v)
        return {k: summarize([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        q25, median, q75 = np.percentile(values, (25, 50, 75)).tolist()
        return dict(median = median, q25 = q25, q75 = q75, per_seed = values)
    return dict(per_seed = values)


def aggregate(run_dir: Path, seed_dirs: list[Path], subgoal_names: str, figure_copy: str = '') -> dict:
    per_seed = [json.loads((d / 'results.json').read_text()) for d in seed_dirs]
    out = dict(config = per_seed[0]['config'], seeds = [r['seed'] for r in per_seed], seed_dirs = [str(d) for d in seed_dirs])
    out.update({k: summarize([r[k] for r in per_seed if k in r]) for k in per_seed[0] if k not in ('config', 'seed')})
    (run_dir / 'results.json').write_text(json.dumps(out, indent = 2))

    runs = {name: [r['rl'][name]['curve'] for r in per_seed if name in r.get('rl', {})] for name in RL_RUNS}
    plots.single_panel(run_dir / 'rl_curves.png', plots.draw_rl_curves, runs, size = (6, 4))
    first = per_seed[0]
    if all('probe' in r for r in per_seed) and (seed_dirs[0] / 'discover' / 'figures.json').is_file():
        figures = json.loads((seed_dirs[0] / 'discover' / 'figures.json').read_text())
        probe = first['probe']
        accuracy = np.median([r['probe']['accuracy_by_layer'] for r in per_seed], axis = 0).tolist()
        plots.summary_figure(run_dir / 'fig1.png', figures['episodes'], subgoal_names, accuracy,
                             probe['chance'], probe['cut_layer'], runs)
        if figure_copy:
            shutil.copyfile(run_dir / 'fig1.png', figure_copy)
    return out
