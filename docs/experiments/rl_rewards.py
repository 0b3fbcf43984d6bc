"""Rewarded training episodes, summed over a run, against training episodes (log-log): how many
rewards a sparse task's runs collected before they took off.

Each run is LABEL=RUN_DIR[:METHOD], as in rl_curves.py (finished, or from its saved progress);
each is drawn alone, seeds too. A dot marks the first training batch at or above --takeoff success.

    python docs/experiments/rl_rewards.py --out rewards.png 'ABCD, lr 3e-3=runs/a' 'ABCDAB, lr 3e-3=runs/b'
"""
import argparse
from pathlib import Path

import numpy as np
from rl_curves import curve

from metacontroller.pipeline.plots import single_panel


def rewarded(points: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[[episodes, batch success], ...] -> episodes, rewards summed so far, batch success."""
    episodes, success = np.array(points, dtype = float).T
    batch = np.diff(episodes, prepend = 0.)
    return episodes, np.cumsum(np.round(success * batch)), success


def draw(ax, runs: list[tuple[str, list]], takeoff: float):
    colours = {}
    for label, points in runs:
        episodes, total, success = rewarded(points)
        colour = colours.setdefault(label, f'C{len(colours)}')
        first = label not in [line.get_label() for line in ax.lines]
        ax.step(episodes, np.maximum(total, 0.5), where = 'post', color = colour, label = label if first else None)
        up = np.flatnonzero(success >= takeoff)
        if len(up):
            ax.plot(episodes[up[0]], total[up[0]], 'o', color = colour, ms = 4)
    ax.set_xscale('log'), ax.set_yscale('log')
    ax.set_ylim(bottom = 0.5)
    ax.set_xlabel('training episodes')
    ax.set_ylabel('rewarded training episodes, summed (0 drawn at 0.5)')
    ax.set_title(f'dot: first batch with success ≥ {takeoff:g}', fontsize = 8)
    ax.legend(fontsize = 6, loc = 'upper left', bbox_to_anchor = (1.01, 1))


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs = '+', help = 'LABEL=RUN_DIR[:METHOD]')
    parser.add_argument('--takeoff', type = float, default = 0.1, help = 'batch success that marks the take-off')
    parser.add_argument('--out', type = Path, required = True)
    args = parser.parse_args()
    single_panel(args.out, draw, [curve(spec) for spec in args.runs], args.takeoff, size = (8, 4))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
