"""Do a discovery run's codes decide where the agent goes? A score read without labels (issue 15).

Two-stage discovery finds a switch per subgoal at the boundaries on some discovery seeds and at each
pair's first colour (or once per episode) on others, and only the first kind gives internal RL codes
it can use. Telling them apart has needed the labels (switch F1) or an RL run (the paper picks α by
RL success). This asks the codes themselves, as internal RL over a codebook would use them: the
k-means centroids of the codes the metacontroller holds on its own D* (the `--rl.codebook` fit, no
labels) are each held from the first step of fresh pretraining-task episodes, and the first pair the
agent enters is counted (the env's pair of the colour cell it enters, as in the steering check; no
recorded step's label is read). Reported per run:

- commitment: how often a centroid heads to the pair it prefers, cross-validated (preferred pair
  read off the even episodes, counted on the odd ones), over the episodes that enter a pair, averaged
  over the centroids: 0.25 if codes do not prefer a pair, 1 if each always heads to one;
- pairs covered: how many of the pairs are some centroid's preferred one (a codebook RL can use
  must reach every pair);
- none: how often no pair is entered.

    python docs/experiments/code_commitment.py 'seed 0=runs/a' 'seed 1=runs/b' --k 8 --episodes 128
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from prior_steering import first_entered_per_code, subgoal_counts

from metacontroller import MetaController, Transformer
from metacontroller.pipeline import codebook, data
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.phases import CODEBOOK_EPISODES
from metacontroller.rl.seeds import eval_seed


def commitment(first: np.ndarray, k: int) -> tuple[float, int]:
    """(M, E) first pairs per code (k: none) -> (the mean over codes of the cross-validated rate at which a code
    enters its preferred pair, the number of pairs some code prefers)."""
    even, odd = subgoal_counts(first[:, 0::2], k)[:, :k], first[:, 1::2]
    preferred = even.argmax(-1)
    rates = [np.mean(row[row < k] == p) for row, p, seen in zip(odd, preferred, even.sum(-1) > 0) if seen and (row < k).any()]
    return (float(np.mean(rates)) if rates else float('nan')), len(set(preferred[even.sum(-1) > 0].tolist()))


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs = '+', help = 'LABEL=RUN_DIR: pinpad run folders whose discover phase has run')
    parser.add_argument('--k', type = int, default = 8, help = 'centroids (as --rl.codebook)')
    parser.add_argument('--episodes', type = int, default = 128, help = 'fresh episodes per centroid')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adapter = pinpad_adapter()
    make_envs = adapter.make_envs(adapter.pretraining_tasks)
    for label, run_dir in (run.split('=', 1) for run in args.runs):
        run_dir = Path(run_dir)
        model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
        meta = MetaController.init_and_load(run_dir / 'discover' / 'meta_controller.pt').eval()
        fitted, _ = codebook.fit(model, meta, data.load(run_dir / 'data', 'discovery').head(CODEBOOK_EPISODES), args.k, args.seed, 'cpu')
        centroids = fitted.action_codebook   # (k, n_z): the centroids `--rl.codebook` would choose among
        first = first_entered_per_code(model, meta, centroids, make_envs, args.episodes, adapter.num_subgoals, eval_seed(args.seed))
        rate, covered = commitment(first, adapter.num_subgoals)
        print(f'{label:28s} commitment {rate:.3f}, pairs covered {covered} of {adapter.num_subgoals}, '
              f'none {(first == adapter.num_subgoals).mean():.3f}', flush = True)


if __name__ == '__main__':
    main()
