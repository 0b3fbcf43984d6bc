"""The study's positive control (docs/reproduction.md, row P): a base that is controllable by construction.

Pretrains the default pinpad base *together with* ground-truth subgoal controllers at the cut (the
labels given, which the paper's pretraining never has), then saves the base alone. The pipeline's
`control` phase then trains fresh controllers on it, frozen; if they recover the co-trained
controllers' success, the phase can see controllability when a base has it.

    python docs/experiments/cotrained_base.py --data runs/pinpad/default/data --out runs/study/cotrained
    python train_pinpad.py --run-dir runs/study/cotrained --phases probe,control --threads 1

(the first command copies the data folder into --out, so that the second finds D* and the held-out set).
`--label-dropout 0.5` turns the controller off on half of the episodes, so that the base must also infer
the subgoal itself (docs/reproduction.md, "A base that infers the subgoal itself").
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller.demos import DemoDataset
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import default_config
from metacontroller.pipeline.control import step_labels, subgoal_intervention
from metacontroller.pipeline.data import bucketed_batches
from metacontroller.pipeline.models import build_transformer
from metacontroller.rl import evaluate
from metacontroller.subgoal_controller import SubgoalController


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--data', type = Path, required = True, help = 'a pipeline data folder (pretrain.npz, discovery.npz, heldout.npz)')
    parser.add_argument('--out', type = Path, required = True, help = 'run folder to write (pretrain/model.pt, data/, cotrained.json)')
    parser.add_argument('--steps', type = int, default = 6_000, help = "pretraining steps (the default preset's)")
    parser.add_argument('--label-dropout', type = float, default = 0.0,
                        help = 'fraction of episodes trained without their labels (controller off), so that the base also learns to infer the subgoal')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    if not 0 <= args.label_dropout <= 1:
        parser.error(f'--label-dropout is a fraction of episodes, in [0, 1]; got {args.label_dropout}')
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    adapter, config = pinpad_adapter(), default_config()
    model = build_transformer(adapter, config.model)
    controller = SubgoalController(config.model.dim, adapter.num_subgoals, config.control.dim_hypernetwork_hidden, config.control.low_rank)
    data = DemoDataset.load(args.data / 'pretrain.npz')
    batches = bucketed_batches(data, config.pretrain.batch_size, np.random.default_rng(args.seed))
    params = [*model.parameters(), *controller.parameters()]
    optimizer = torch.optim.AdamW(params, lr = config.pretrain.lr, weight_decay = config.pretrain.weight_decay)

    start, trace = time.time(), []
    for _ in tqdm(range(args.steps), desc = 'co-train'):
        batch = data.batch(next(batches))
        mask = lens_to_mask(batch.episode_lens, batch.actions.shape[1])
        stream = model.residual_stream(batch.observations)  # (b, t, d)
        controlled = controller(stream, step_labels(batch))
        if args.label_dropout > 0:
            # a row without its label must be acted from the stream alone, as after pretraining without labels
            labelled = torch.rand(stream.shape[0], 1, 1) >= args.label_dropout
            controlled = torch.where(labelled, controlled, stream)
        hidden = model.upper_body(controlled)
        loss = model.action_readout(hidden, targets = batch.actions.masked_fill(~mask, 0), loss_mask = mask)
        optimizer.zero_grad(set_to_none = True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.pretrain.max_grad_norm)
        optimizer.step()
        trace.append(loss.item())
    model.eval()
    controller.eval()

    shutil.copytree(args.data, args.out / 'data', dirs_exist_ok = True)
    model.save(args.out / 'pretrain' / 'model.pt')
    controller.save(args.out / 'cotrained_controller.pt')
    success = {name: evaluate(model, adapter.make_envs(tasks), config.control.eval_episodes, seed = args.seed,
                              intervention = subgoal_intervention(controller))._asdict()
               for name, tasks in (('post_task', (adapter.post_task,)), ('pretraining_tasks', adapter.pretraining_tasks))}
    record = dict(success, steps = args.steps, label_dropout = args.label_dropout, final_train_action_nll = float(np.mean(trace[-50:])), wall_time_s = time.time() - start)
    (args.out / 'cotrained.json').write_text(json.dumps(record, indent = 2))
    print({name: round(stats['success'], 3) for name, stats in success.items()})


if __name__ == '__main__':
    main()
