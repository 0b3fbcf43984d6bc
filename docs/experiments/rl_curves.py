"""Internal-RL learning curves of several run folders in one figure (the paper's Fig. 8 layout, log x).

Each curve is LABEL=RUN_DIR[:METHOD]: the training-batch success curve recorded by that run's `rl`
phase (METHOD `internal`, the default) or `baselines` phase (`raw_action`, `no_temporal_abstraction`),
or a continuation of the rl phase's codebook policy by `codebook_rl.py spread` (`spread_σ0`, e.g.
`spread_0.2`), drawn after the episodes that policy had trained.
A curve may also be LABEL=SUMMARY.json, the summary `codebook_rl.py` writes (e.g. `baselines/codebook_rl_raw.json`).
Curves that share a label are seeds of one method: their median is drawn, with the 25–75% band.
A run still training (or stopped) is drawn from the progress its phase saved.
Dashed lines mark reference successes, e.g. the ground-truth controllers on the same task.

    python docs/experiments/rl_curves.py --out curves.png 'AB, colour codes=runs/a' 'AB, raw actions=runs/a:raw_action' \\
        'AB, β ≡ 1=runs/a/baselines/codebook_rl_beta1.json' --reference 'AB, ground-truth controllers=0.675'
"""
import argparse
import json
from itertools import cycle
from pathlib import Path

import torch

from metacontroller.pipeline import rl_phase
from metacontroller.pipeline.plots import draw_rl_curves, single_panel

PROGRESS = dict(internal = 'rl/progress_internal.pt', raw_action = 'baselines/progress_raw_action.pt',
                no_temporal_abstraction = 'baselines/progress_beta1.pt')


def saved_curve(path: Path) -> tuple[list, int]:
    """The success curve a progress file holds, and its episodes so far."""
    progress = torch.load(path, map_location = 'cpu', weights_only = True)
    return [list(point) for point in progress['curve']], progress['episodes']


def progress_curve(progress: Path) -> list:
    """The curve a phase's saved progress holds. A run in two stages (`--rl.codebook_spread_after`) keeps its first
    stage's beside it; the second stage's episodes then count after the first's, as in the phase's record."""
    exact = rl_phase.exact_stage_file(progress)
    points, before = saved_curve(exact) if exact.is_file() else ([], 0)
    if progress.is_file():
        points += [[before + episodes, success] for episodes, success in saved_curve(progress)[0]]
    return points


def curve(spec: str) -> tuple[str, list]:
    """The curve of a finished phase, or, while it runs (or after it was stopped), of its saved progress."""
    label, _, where = spec.partition('=')
    if where.endswith('.json'):
        return label, json.loads(Path(where).read_text())['curve']
    run_dir, _, method = where.partition(':')
    method = method or 'internal'
    if method.startswith('spread_'):
        rl = Path(run_dir) / 'rl'
        if not (rl / f'progress_{method}.pt').is_file():
            raise SystemExit(f'{spec!r}: expected {rl}/progress_{method}.pt (run codebook_rl.py spread first)')
        _, before = saved_curve(rl / 'progress_internal.pt')
        points, _ = saved_curve(rl / f'progress_{method}.pt')
        return label, [[before + episodes, success] for episodes, success in points]
    phase = 'rl' if method == 'internal' else 'baselines'
    record, progress = Path(run_dir) / 'phases' / f'{phase}.json', Path(run_dir) / PROGRESS.get(method, '')
    if not record.exists() and (progress.is_file() or rl_phase.exact_stage_file(progress).is_file()):
        return label, progress_curve(progress)
    if not record.exists():
        raise SystemExit(f'{spec!r}: expected {record} or {progress} (run the {phase} phase first)')
    metrics = json.loads(record.read_text())['metrics']
    if method not in metrics:
        raise SystemExit(f'{spec!r}: {record} has methods {sorted(metrics)}, not {method!r}')
    return label, metrics[method]['curve']


def reference(spec: str) -> tuple[str, float]:
    label, _, value = spec.rpartition('=')
    try:
        return label, float(value)
    except ValueError:
        raise SystemExit(f'--reference {spec!r}: expected LABEL=SUCCESS, e.g. "AB, ground-truth controllers=0.675"') from None


def draw(ax, runs: dict, references: list[tuple[str, float]]):
    draw_rl_curves(ax, runs)
    for (label, value), style in zip(references, cycle(('--', ':', '-.', (0, (1, 3))))):
        ax.axhline(value, color = 'grey', ls = style, lw = 0.8, label = label)
    ax.legend(fontsize = 6, loc = 'upper left', bbox_to_anchor = (1.01, 1))   # outside: the curves fill the axes


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('curves', nargs = '+', help = 'LABEL=RUN_DIR[:METHOD]')
    parser.add_argument('--reference', action = 'append', default = [], help = 'LABEL=SUCCESS, drawn as a dashed line')
    parser.add_argument('--out', type = Path, required = True)
    args = parser.parse_args()
    runs = {}
    for label, points in map(curve, args.curves):
        runs.setdefault(label, []).append(points)
    references = [reference(spec) for spec in args.reference]
    single_panel(args.out, draw, runs, references, size = (9, 4))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
