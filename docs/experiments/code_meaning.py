"""What does a discovered code name: the next subgoal, or a branch relative to the last one? (issue 15)

For each segment of the held-out episodes, the code z held in its middle step is paired with the
segment's subgoal (next) and the one before it (previous; none for the first segment). Logistic
regressions, fit on half of the episodes and scored on the other half, predict the next subgoal from

- the previous subgoal alone (what the pretraining graph allows),
- z alone (an absolute code: "go to X"),
- z with one regression per previous subgoal (a code read relative to where the agent has been).

If the per-previous regression beats both others by far, the codes name a branch of the pretraining
graph rather than a subgoal, and a code held in another context (the steering check, a new task)
means something else. Last, least-squares fits from z to *where* the segment ends (the agent's row
and column at its last step) and to its displacement from the segment's start tell whether the code
names a place or a move instead (R², held out).

    python docs/experiments/code_meaning.py --run-dir runs/study/cotrained
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metacontroller import MetaController, Transformer
from metacontroller.envs.pinpad import AGENT_CHANNEL, GRID, NUM_CELLS, NUM_CHANNELS
from metacontroller.pipeline import data
from metacontroller.rl.seeds import seeded


def agent_cells(observations: torch.Tensor) -> torch.Tensor:
    """(b, t, 637) pinpad observations -> (b, t) the agent's cell (row * 7 + col)."""
    grid = observations.unflatten(-1, (NUM_CELLS, NUM_CHANNELS))
    return grid[..., AGENT_CHANNEL].argmax(-1)


def segments(dataset, meta, model, seed: int):
    """(z, previous, next, episode, end cell, start cell) per segment: z held at the segment's middle step; previous -1
    for the first; the agent's cell at the segment's last step."""
    batch = dataset.batch(np.arange(len(dataset.episode_lens)))
    with torch.no_grad(), seeded(seed, torch.device('cpu')):
        latent = meta(model.residual_stream(batch.observations), batch.episode_lens).latent
    cells = agent_cells(batch.observations.float())
    rows = []
    for i, length in enumerate(batch.episode_lens.tolist()):
        labels = batch.subgoals[i, :length].numpy()
        starts = np.flatnonzero(batch.boundaries[i, :length].numpy()).tolist()   # each subgoal's first step
        ends = starts[1:] + [length]
        for k, (start, end) in enumerate(zip(starts, ends)):
            rows.append((latent[i, (start + end) // 2], labels[starts[k - 1]] if k else -1, labels[start], i, cells[i, end - 1], cells[i, start]))
    z = torch.stack([r[0] for r in rows])
    return z, *(torch.tensor([int(r[j]) for r in rows]) for j in (1, 2, 3, 4, 5))


def r_squared(x_train, y_train, x_test, y_test) -> float:
    """Held-out R² of an affine least-squares fit, summed over the target's columns."""
    design = lambda x: torch.cat((x, torch.ones(len(x), 1)), dim = -1)   # noqa: E731
    weights = torch.linalg.lstsq(design(x_train), y_train).solution
    residual = ((design(x_test) @ weights - y_test) ** 2).sum()
    return 1 - (residual / ((y_test - y_train.mean(0)) ** 2).sum()).item()


def fit_score(x_train, y_train, x_test, y_test, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of a logistic regression (full-batch AdamW, weight decay as a light prior)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    linear = torch.nn.Linear(x_train.shape[1], classes)
    optimizer = torch.optim.AdamW(linear.parameters(), lr = 0.05, weight_decay = 1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(linear(x_train), y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(x_test).argmax(-1) == y_test).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a run folder whose discover phase has run')
    parser.add_argument('--seed', type = int, default = 0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    model = Transformer.init_and_load(args.run_dir / 'pretrain' / 'model.pt').eval()
    meta = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    z, previous, following, episode, end_cell, start_cell = segments(data.load(args.run_dir / 'data', 'heldout'), meta, model, args.seed)
    classes = int(following.max()) + 1
    train, test = episode % 2 == 0, episode % 2 == 1
    prev_onehot = F.one_hot(previous + 1, classes + 1).float()                  # + 1: 'none' is a value too

    scores = {
        'previous subgoal alone': fit_score(prev_onehot[train], following[train], prev_onehot[test], following[test], classes),
        'z alone': fit_score(z[train], following[train], z[test], following[test], classes),
    }
    correct = 0
    for value in previous.unique():
        tr, te = train & (previous == value), test & (previous == value)
        if te.any():
            correct += fit_score(z[tr], following[tr], z[te], following[te], classes) * te.sum().item()
    scores['z, one regression per previous subgoal'] = correct / test.sum().item()
    first = test & (previous < 0)
    scores['z alone, first segments only'] = fit_score(z[train & (previous < 0)], following[train & (previous < 0)], z[first], following[first], classes)
    print(f'{len(z)} segments; next-subgoal accuracy on held-out episodes (chance {1 / classes:.2f}):')
    for name, score in scores.items():
        print(f'  {name:42s} {score:.3f}')
    place, origin = (torch.stack((cell // GRID, cell % GRID), dim = -1).float() for cell in (end_cell, start_cell))
    move = place - origin                                                       # the segment's displacement
    print(f'  where the segment ends, (row, col) from z: R² {r_squared(z[train], place[train], z[test], place[test]):.3f}')
    print(f'  its displacement from the start, from z:      R² {r_squared(z[train], move[train], z[test], move[test]):.3f}')


if __name__ == '__main__':
    main()
