"""Report phase: results.json, the plots and the summary figure, from the phase records."""
from __future__ import annotations

import shutil
from pathlib import Path

from metacontroller.pipeline import plots

RL_RUNS = ('internal', 'raw_action', 'no_temporal_abstraction')


def results(config: dict, seed: int, records: dict[str, dict], wall_time_s: float) -> dict:
    """results.json: every phase's metrics, the config and the wall times."""
    out = dict(config = config, seed = seed, wall_time_s = wall_time_s,
               phase_wall_time_s = {phase: r.get('wall_time_s') for phase, r in records.items()})
    for phase in ('data', 'pretrain', 'probe', 'control', 'discover'):
        if phase in records:
            out['discovery' if phase == 'discover' else phase] = records[phase]['metrics']
    rl = {**records.get('rl', {}).get('metrics', {}), **records.get('baselines', {}).get('metrics', {})}
    if rl:
        out['rl'] = rl
    return out


def make_plots(run_dir: Path, result: dict, figures: dict, subgoal_names: str, chance: float, cut: int,
               figure_copy: str = '') -> list[str]:
    """switches.png, probe.png, rl_curves.png, fig1.png and rate_distortion.png in the run folder (plus an optional copy of fig1)."""
    groups = figures['episodes']
    accuracy = result['probe']['accuracy_by_layer']
    runs = {name: [result['rl'][name]['curve']] for name in RL_RUNS if name in result.get('rl', {})}
    plots.switches_figure(run_dir / 'switches.png', groups, subgoal_names)
    control = result.get('control')
    plots.single_panel(run_dir / 'probe.png', plots.draw_probe, accuracy, chance, cut, control)
    plots.single_panel(run_dir / 'rl_curves.png', plots.draw_rl_curves, runs, size = (6, 4))
    plots.summary_figure(run_dir / 'fig1.png', groups, subgoal_names, accuracy, chance, cut, runs, control)
    plots.single_panel(run_dir / 'rate_distortion.png', plots.draw_rate_distortion, [result['discovery']['alpha_sweep']], size = (6, 4))
    written = ['switches.png', 'probe.png', 'rl_curves.png', 'fig1.png', 'rate_distortion.png']
    if figure_copy:
        shutil.copyfile(run_dir / 'fig1.png', figure_copy)
    return written
