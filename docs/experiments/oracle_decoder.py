"""Discovery started from the ground-truth controllers (docs/reproduction.md, issue 15).

On row P's base, discovery finds switches on the subgoal boundaries but codes that carry a route
(about 21 nats per episode) and steer at chance, while the ground-truth controllers reach a lower
action NLL (0.30 against 0.60) at a smaller rate. Is that code out of the search's reach, or does
the objective leave it? This writes a metacontroller whose decoder *is* the `control` phase's
controllers: the code's first K dims feed the controllers' one-hot input, the others start with zero
weight; the encoder, switching unit and policy are fresh. `--discovery.init` then trains it with the
paper's objective, unchanged, and the steering check and internal RL read the codes it ends with.
It is a diagnostic that uses the labels (through the controllers), not a method.

    cp -r runs/study/cotrained runs/study/oracle        # a copy: the discover phase is redone there
    python docs/experiments/oracle_decoder.py --run-dir runs/study/oracle --out runs/study/oracle_init.pt
    python train_pinpad.py --run-dir runs/study/oracle --phases discover,rl --force \\
        --discovery.init runs/study/oracle_init.pt --discovery.steps 3200 --threads 1

With `--frozen-decoder` the script trains the rest itself (the default discovery settings, `--alpha`
and `--steps`; the decoder held at the controllers) and writes the run's discover/meta_controller.pt,
for `--phases rl --force` (also on a copy: the run's phases/discover.json is not rewritten).
"""
import argparse
from dataclasses import replace
from pathlib import Path

import torch

from metacontroller import Transformer
from metacontroller.pipeline import data, discover, steering
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import default_config
from metacontroller.pipeline.models import build_meta_controller
from metacontroller.subgoal_controller import SubgoalController


def oracle_meta_controller(controller: SubgoalController, seed: int):
    """A fresh metacontroller (default discovery settings) whose decoder computes the controllers' U for z = onehot(k)."""
    torch.manual_seed(seed)
    meta = build_meta_controller(controller.dim_model, default_config().discovery)
    source, target = controller.decoder, meta.decoder
    k = controller.num_subgoals
    if meta.dim_latent < k:
        raise ValueError(f'the code has {meta.dim_latent} dims, fewer than the {k} subgoals')
    with torch.no_grad():
        first, given = target.hidden[0], source.hidden[0]
        first.weight.zero_()
        first.weight[:, :k] = given.weight
        first.bias.copy_(given.bias)
        target.to_a.load_state_dict(source.to_a.state_dict())
        target.to_b.load_state_dict(source.to_b.state_dict())
    return meta


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a pipeline run folder whose control phase has run')
    parser.add_argument('--out', type = Path, required = True, help = 'metacontroller checkpoint to write')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--frozen-decoder', action = 'store_true', help = 'train discovery here with the decoder frozen')
    parser.add_argument('--steps', type = int, default = 3_200, help = 'discovery steps (with --frozen-decoder)')
    parser.add_argument('--alpha', type = float, default = 0.05, help = 'KL weight (with --frozen-decoder)')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    controller = SubgoalController.init_and_load(args.run_dir / 'control' / 'controller.pt')
    meta = oracle_meta_controller(controller, args.seed)
    eye = torch.eye(controller.num_subgoals, meta.dim_latent)
    stream = torch.randn(controller.num_subgoals, controller.dim_model)
    same = torch.allclose(meta.decoder.control(eye, stream), controller(stream, torch.arange(controller.num_subgoals)), atol = 1e-5)
    print(f'decoder at one-hot codes equals the ground-truth controllers: {same}')
    meta.save(args.out)
    print(f'wrote {args.out}')
    if args.frozen_decoder:
        train_frozen(meta, args.run_dir, args.steps, args.alpha, args.seed)


def train_frozen(meta, run_dir: Path, steps: int, alpha: float, seed: int):
    """Discovery with the decoder held at the controllers (AdamW skips parameters without gradients)."""
    config = replace(default_config().discovery, steps = steps, alpha = alpha)
    adapter = pinpad_adapter()
    model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
    meta.decoder.requires_grad_(False)
    demos = data.load(run_dir / 'data', 'discovery')
    streams = discover.precompute(model, demos, config.batch_size, seed, 'cpu')
    discover.train(model, meta, streams, config.alpha, config, seed)
    meta.save(run_dir / 'discover' / 'meta_controller.pt')
    print(discover.analyse(model, meta, data.load(run_dir / 'data', 'heldout'), 'cpu').summary())
    codes = steering.subgoal_codes(model, meta, demos, adapter.num_subgoals, 'cpu')
    table = steering.steering_table(model, meta, codes, adapter.subgoal_names, adapter.make_envs(adapter.pretraining_tasks),
                                    config.steering_episodes, seed)
    print('steering', table)


if __name__ == '__main__':
    main()
