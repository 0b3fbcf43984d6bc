"""The study's synthetic rows (docs/reproduction.md): discovery on a base whose behaviour depends only
on a hidden piecewise-constant code (tests/synthetic_code.py), over seeds, for a few shapes of the code.

    python docs/experiments/synthetic_switching.py --codes 8 --segments 5 --length 6 --seeds 0 1 2 3 --gumbel 1 --rank 2
    python docs/experiments/synthetic_switching.py --codes 8 --segments 5 --length 6 --seeds 0 1 2 3 --gumbel 1 --rank 16

Prints one line per seed: the base's final NLL, switch F1 (±1 step, t = 0 excluded), switches per episode.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tests'))   # the generator lives beside the test that uses it
from synthetic_code import synthetic_run  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--codes', type = int, default = 8)
    parser.add_argument('--segments', type = int, default = 5)
    parser.add_argument('--length', type = int, default = 6, help = 'mean segment length (starts jittered by ±length // 4)')
    parser.add_argument('--alpha', type = float, default = 0.05)
    parser.add_argument('--steps', type = int, default = 1_000, help = 'discovery steps (64 episodes each)')
    parser.add_argument('--rank', type = int, default = 2, help = 'rank of the controller U = A Bᵀ')
    parser.add_argument('--gumbel', type = float, default = 0., help = 'Gumbel-sigmoid switch temperature (0: off)')
    parser.add_argument('--seeds', type = int, nargs = '+', default = [0])
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    for seed in args.seeds:
        start = time.time()
        run = synthetic_run(args.codes, args.segments, args.length, seed, args.rank, args.gumbel or None, args.alpha, args.steps)
        counts = run.counts
        print(f'seed {seed}: base NLL {run.base_nll:.3f}, switch F1 {counts.f1:.3f}, switches per episode '
              f'{counts.predicted / run.episodes:.2f} (changes: {counts.actual / run.episodes:.2f}), {time.time() - start:.0f} s', flush = True)

if __name__ == '__main__':
    main()
