"""Figures (matplotlib, Agg backend): each panel is a function drawing on an Axes,
so the single-panel PNGs and the summary figure share one drawing code."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SUBGOAL_COLOURS = ('#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45')
RL_STYLES = dict(internal = ('internal RL', '#1f77b4'), raw_action = ('raw-action RL', '#d62728'),
                 no_temporal_abstraction = ('β ≡ 1 (no temporal abstraction)', '#7f7f7f'))


def pyplot():
    import matplotlib
    matplotlib.use('Agg')   # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def draw_episode(ax, episode: dict, subgoal_names: str, title: str):
    """β over time, the ground-truth subgoal segments as a coloured strip underneath."""
    beta, subgoals = np.asarray(episode['beta']), np.asarray(episode['subgoals'])
    steps = np.arange(len(beta))
    ax.plot(steps, beta, color = 'black', lw = 1.2, marker = '.', ms = 3)
    ax.axhline(0.5, color = 'grey', lw = 0.6, ls = ':')
    for t, g in enumerate(subgoals):
        ax.axvspan(t - 0.5, t + 0.5, ymin = 0, ymax = 0.08, color = SUBGOAL_COLOURS[g % len(SUBGOAL_COLOURS)], lw = 0)
    starts = [t for t in range(len(subgoals)) if t == 0 or subgoals[t] != subgoals[t - 1]]
    for t in starts:
        ax.text(t, -0.22, subgoal_names[subgoals[t]], fontsize = 7, ha = 'left')
    ax.set_ylim(-0.3, 1.08)
    ax.set_xlim(-0.5, len(beta) - 0.5)
    ax.set_ylabel('β')
    ax.set_title(title, fontsize = 8)


CONTROL_STYLES = dict(post_task = ('s', 'tab:red'), pretraining_tasks = ('^', 'tab:purple'))


def draw_probe(ax, accuracy_by_layer: list, chance: float, cut: int, control: dict | None = None):
    """Probe accuracy by layer; with the control phase's results, beside it at the controlled layer, the
    success of ground-truth subgoal controllers (filled) and of the base alone (hollow) on both task sets."""
    layers = np.arange(len(accuracy_by_layer))
    ax.plot(layers, accuracy_by_layer, marker = 'o', label = 'probe accuracy')
    ax.axhline(chance, color = 'grey', ls = ':', label = 'chance')
    ax.axvline(cut, color = 'tab:green', ls = '--', lw = 0.8, label = 'metacontroller cut')
    for offset, (tasks, (marker, colour)) in zip((0.12, 0.24), CONTROL_STYLES.items()):
        if control is None or tasks not in control:
            continue
        x = control['layer'] + offset
        ax.plot(x, control[tasks]['controlled']['success'], marker = marker, color = colour, ls = '',
                label = f'success, {tasks.replace("_", " ")}')
        ax.plot(x, control[tasks]['base']['success'], marker = marker, color = colour, ls = '', mfc = 'none')
    ax.set_xlabel('layer (0 = embedding)')
    ax.set_ylabel('probe accuracy / success')
    ax.set_ylim(-0.03, 1.02)
    ax.set_xticks(layers)
    if control is not None:
        ax.set_title('success: ground-truth controllers at the cut (hollow: base alone)', fontsize = 7)
    ax.legend(fontsize = 6, loc = 'center right')


def curve_band(curves: list[list]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Curves of several seeds on the same episode grid -> x, median, 25% and 75%."""
    length = min(len(c) for c in curves)
    values = np.array([[point[1] for point in c[:length]] for c in curves])
    x = np.array([point[0] for point in curves[0][:length]])
    return x, np.median(values, axis = 0), np.percentile(values, 25, axis = 0), np.percentile(values, 75, axis = 0)


def draw_rl_curves(ax, runs: dict[str, list[list]], smooth: int = 5):
    """runs: name -> one curve [[episodes, success], ...] per seed; a running mean over `smooth` batches."""
    from matplotlib.ticker import NullFormatter  # matplotlib is imported only when plotting
    for name, curves in runs.items():
        curves = [c for c in curves if c]
        if not curves:
            continue
        x, median, low, high = curve_band(curves)
        kernel = np.ones(min(smooth, len(x))) / min(smooth, len(x))
        median, low, high = (np.convolve(v, kernel, mode = 'valid') for v in (median, low, high))
        x = x[len(x) - len(median):]
        label, colour = RL_STYLES.get(name, (name, None))
        line, = ax.plot(x, median, label = label, color = colour)
        if len(curves) > 1:   # the line's own colour: a second `None` would draw the next one in the cycle
            ax.fill_between(x, low, high, color = line.get_color(), alpha = 0.25, lw = 0)
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(NullFormatter())   # decade labels only; minor labels overlap
    ax.set_xlabel('training episodes')
    ax.set_ylabel('success (post-training task)')
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize = 7)


def draw_rate_distortion(ax, sweeps: list[list[dict]]):
    """The paper's Fig. 7: one point per α (and seed) at (action NLL, KL), coloured by switch F1,
    labelled with α and switches per episode; each seed's points joined in α order."""
    import matplotlib as mpl  # matplotlib is imported only when plotting
    colours = mpl.colormaps['viridis']
    labelled = []
    for sweep in sweeps:
        points = sorted(sweep, key = lambda p: p['alpha'])
        ax.plot([p['action_nll'] for p in points], [p['kl'] for p in points], color = 'grey', lw = 0.6, zorder = 1)
        for p in points:
            ax.scatter(p['action_nll'], p['kl'], color = colours(p['switch_f1']), edgecolor = 'black', lw = 0.4, s = 30, zorder = 2)
            # collapsed α's pile up at KL ≈ 0: label the first of a pile only
            if any(abs(p['action_nll'] - x) < 0.005 and abs(p['kl'] - y) < 0.01 + 0.3 * y for x, y in labelled):
                continue
            labelled.append((p['action_nll'], p['kl']))
            ax.annotate(f'α={p["alpha"]:g}, {p["switches_per_episode"]:.1f} sw/ep', (p['action_nll'], p['kl']),
                        fontsize = 6, xytext = (3, 3), textcoords = 'offset points')
    ax.set_yscale('symlog', linthresh = 0.1)   # KL spans 0 (collapse) to tens of nats (α = 0)
    ax.set_xlabel('action NLL (distortion)')
    ax.set_ylabel('KL per step (rate)')
    ax.figure.colorbar(mpl.cm.ScalarMappable(mpl.colors.Normalize(0, 1), colours), ax = ax, label = 'switch F1')
    ax.set_title('rate-distortion over α (held-out pretraining-task episodes)', fontsize = 8)


def switches_figure(path: Path, groups: dict[str, list[dict]], subgoal_names: str):
    plt = pyplot()
    rows = [(name, episode) for name, episodes in groups.items() for episode in episodes]
    fig, axes = plt.subplots(len(rows), 1, figsize = (8, 1.5 * len(rows)), squeeze = False)
    for ax, (name, episode) in zip(axes[:, 0], rows):
        draw_episode(ax, episode, subgoal_names, f'{name}: {episode["switches"]} switches')
    axes[-1, 0].set_xlabel('step')
    fig.tight_layout()
    fig.savefig(path, dpi = 110)
    plt.close(fig)


def single_panel(path: Path, draw, *args, size = (5, 3.5)):
    plt = pyplot()
    fig, ax = plt.subplots(figsize = size)
    draw(ax, *args)
    fig.tight_layout()
    fig.savefig(path, dpi = 110)
    plt.close(fig)


def summary_figure(path: Path, groups: dict[str, list[dict]], subgoal_names: str, accuracy_by_layer: list,
                   chance: float, cut: int, runs: dict[str, list[list]], control: dict | None = None):
    """fig1: one post-task and one pretraining-task episode's β, the probes (and ground-truth controllers), the RL curves."""
    plt = pyplot()
    fig = plt.figure(figsize = (15, 4))
    grid = fig.add_gridspec(2, 3, width_ratios = (1.6, 1, 1.2))
    for row, (name, episodes) in enumerate(list(groups.items())[:2]):
        ax = fig.add_subplot(grid[row, 0])
        draw_episode(ax, episodes[0], subgoal_names, f'{name}: {episodes[0]["switches"]} switches')
    draw_probe(fig.add_subplot(grid[:, 1]), accuracy_by_layer, chance, cut, control)
    draw_rl_curves(fig.add_subplot(grid[:, 2]), runs)
    fig.tight_layout()
    fig.savefig(path, dpi = 110)
    plt.close(fig)
