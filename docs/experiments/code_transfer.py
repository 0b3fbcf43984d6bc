"""Do discovered codes steer in the layout they came from? (docs/reproduction.md, issue 15)

The steering check holds a subgoal's code in *fresh* layouts, and on row P's base it hits at chance.
This asks whether a code is tied to its own episode: each held-out episode's first code (the
non-causal encoder's posterior mean μ_0, or the sampled z_0 with --sampled) is held from the first step in

- its own layout and task (the env rebuilt from the episode's seed),
- the next episode's layout (a code moved to another layout, as the steering check does),

and the first pair entered is compared with the subgoal the code was taken from. The base alone
runs on the same seeds. The discover phase now reports the same check (`steering.code_transfer`, under
`steering` in results.json); this runs it on a finished folder, e.g. one from before.

    python docs/experiments/code_transfer.py --run-dir runs/study/cotrained --episodes 256
"""
import argparse
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline import data
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.steering import code_transfer


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
    make_envs = pinpad_adapter().make_envs([tuple(task) for task in dataset.metadata['tasks']])
    transfer = code_transfer(model, meta, dataset, make_envs, args.episodes, args.seed, args.sampled)
    rows = {'base alone, own layout': transfer.base, 'own code, own layout': transfer.own_layout,
            "next episode's code, this layout": transfer.other_layout}
    for name, rate in rows.items():
        print(f"{name:34s} P(first pair = the code's subgoal) {rate:.3f}")


if __name__ == '__main__':
    main()
