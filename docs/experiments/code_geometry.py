"""Where do prior samples fall among the codes discovery uses? (issue 15: why prior samples steer worse)

Internal RL's policy starts at the N(0, I) prior, but the decoder was trained on the held codes z of
the discovery data. For each run folder, on its held-out D* episodes:

- the subgoals' mean codes (the mean held z over each subgoal's labelled steps): their norms and the
  distances between them;
- the spread of the held codes around their own subgoal's mean (mean distance);
- for the held codes and for `--samples` prior samples: the distance to the nearest mean, and the
  margin, the second-nearest distance minus the nearest (10%, 50% and 90% quantiles). A code with a
  small margin lies between two subgoals' codes;
- how often a held code's nearest mean is its own subgoal's, and how the prior's mass splits among
  the nearest means.

    python docs/experiments/code_geometry.py runs/study/rot03_ratio_x4 runs/study/rot03_ratio_x5
"""
import argparse
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline import data
from metacontroller.pipeline.codebook import held_codes


def nearest(codes: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each code: the nearest mean's index, its distance, and the margin to the second nearest."""
    distance = torch.cdist(codes, means)
    two = distance.topk(2, largest = False).values
    return distance.argmin(dim = -1), two[:, 0], two[:, 1] - two[:, 0]


def quantiles(values: torch.Tensor) -> str:
    return ' / '.join(f'{v:.2f}' for v in values.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist())


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('run_dirs', type = Path, nargs = '+', help = 'pinpad run folders whose discover phase has run')
    parser.add_argument('--samples', type = int, default = 20_000, help = 'prior samples')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run_dir in args.run_dirs:
        model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
        meta = MetaController.init_and_load(run_dir / 'discover' / 'meta_controller.pt').eval()
        codes, subgoals = held_codes(model, meta, data.load(run_dir / 'data', 'heldout'), 'cpu')
        codes, subgoals = codes[subgoals >= 0], subgoals[subgoals >= 0]   # the labelled steps
        k = int(subgoals.max()) + 1
        means = torch.stack([codes[subgoals == s].mean(dim = 0) for s in range(k)])
        spread = [(codes[subgoals == s] - means[s]).norm(dim = -1).mean().item() for s in range(k)]
        own, held_distance, held_margin = nearest(codes, means)
        prior = torch.randn(args.samples, meta.dim_latent, generator = torch.Generator().manual_seed(args.seed))
        share, prior_distance, prior_margin = nearest(prior, means)
        print(f'{run_dir.name}: n_z {meta.dim_latent}; mean-code norms {[round(v, 2) for v in means.norm(dim = -1).tolist()]}, '
              f'distances between them {quantiles(torch.pdist(means))}; spread of the held codes {[round(v, 2) for v in spread]}')
        print(f'  held codes: distance to the nearest mean {quantiles(held_distance)}, margin {quantiles(held_margin)}; '
              f'nearest is their own subgoal {(own == subgoals).float().mean():.3f}')
        print(f'  prior samples: distance to the nearest mean {quantiles(prior_distance)}, margin {quantiles(prior_margin)}; '
              f'share nearest each mean {[round(v, 3) for v in (torch.bincount(share, minlength = k) / len(share)).tolist()]}')


if __name__ == '__main__':
    main()
