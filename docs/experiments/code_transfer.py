"""Do discovered codes steer in the layout they came from? (docs/reproduction.md, issue 15)

The steering check holds a subgoal's code in *fresh* layouts, and on row P's base it hits at chance.
This asks whether a code is tied to its own episode: each held-out episode's first code (the
non-causal encoder's posterior mean μ_0, or the sampled z_0 with --sampled) is held from the first step in

- its own layout and task (the env rebuilt from the episode's seed),
- the next episode's layout (a code moved to another layout, as the steering check does),

and the first pair entered is compared with the subgoal the code was taken from. The base alone
runs on the same seeds.

    python docs/experiments/code_transfer.py --run-dir runs/study/cotrained --episodes 256
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from metacontroller import MetaController, Transformer
from metacontroller.envs.pinpad import VecPinpadEnv
from metacontroller.pipeline import data
from metacontroller.pipeline.steering import first_subgoals
from metacontroller.rl.seeds import seeded


def first_pairs(model, dataset, seeds, tasks, codes, meta, seed):
    """First subgoal entered per episode (-1: none), `codes[i]` held in the env of seeds[i] (None: the base alone)."""
    env = VecPinpadEnv(len(seeds), tasks = tasks, max_steps = dataset.metadata['max_steps'])
    hold = None
    if codes is not None:
        def hold(stream, rows):
            return meta.decoder.control(codes[rows].to(stream.dtype), stream, meta.control_scale)
    return first_subgoals(model, env, [int(s) for s in seeds], seed, hold)


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a run folder whose discover phase has run')
    parser.add_argument('--episodes', type = int, default = 256)
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--sampled', action = 'store_true', help = 'hold the sampled z_0 instead of the posterior mean')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = Transformer.init_and_load(args.run_dir / 'pretrain' / 'model.pt').eval()
    meta = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    dataset = data.load(args.run_dir / 'data', 'heldout')
    n = min(args.episodes, len(dataset.episode_lens))
    batch = dataset.batch(np.arange(n))
    with torch.no_grad(), seeded(args.seed, torch.device('cpu')):   # the sampled z_0 too
        stream = model.residual_stream(batch.observations)
        out = meta(stream, batch.episode_lens)
        codes = (out.latent if args.sampled else out.mean)[:, 0]                   # (n, n_z): each episode's first code
    own = batch.subgoals[:, 0].numpy()                                             # the subgoal z_0 was taken from
    seeds = dataset.seeds[:n]
    tasks = [tuple(task) for task in dataset.metadata['tasks']]
    moved = np.roll(np.arange(n), -1)                                              # layout i gets episode i+1's code

    rows = {
        'base alone, own layout': (first_pairs(model, dataset, seeds, tasks, None, meta, args.seed), own),
        'own code, own layout': (first_pairs(model, dataset, seeds, tasks, codes, meta, args.seed), own),
        "next episode's code, this layout": (first_pairs(model, dataset, seeds, tasks, codes[moved], meta, args.seed), own[moved]),
    }
    for name, (first, target) in rows.items():
        print(f"{name:34s} P(first pair = the code's subgoal) {np.mean(first == target):.3f}   none entered {np.mean(first < 0):.3f}")


if __name__ == '__main__':
    main()
