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

`--codes ALPHA` uses no labels (docs/reproduction.md, "A base co-trained with its own discovered codes"):
the base is pretrained together with a metacontroller, on the discovery objective with rotation
consistency and the ratio loss (action NLL of the episode and of its turned copy under the same codes,
+ ALPHA·KL, both ours but the KL). The metacontroller is saved beside the base
(`cotrained_meta_controller.pt`, for `--discovery.init`). `--kl-warmup N` raises the KL weight from 0 to
ALPHA over the first N steps: at a constant ALPHA 0.05 the codes were unused within 900 steps (KL 0.000),
the posterior collapse of a VAE whose decoder is strong enough without them.

(The label-free next-colour base of docs/reproduction.md, point 6, was first trained here with `--next-colour`; it is
now the pipeline's `--pretrain.next_event_weight`.)

`--init RUN` goes on from a folder this script wrote (its base and its co-trained module; a fresh optimiser),
and `--cooldown` decays the learning rate linearly to 0 over the run's steps: the constant-rate pretraining
followed by a short decay (docs/reproduction.md, "P16 with 4,000 more steps: a cool-down, its control, and internal RL past 0.5").
"""
import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller.demos import DemoDataset
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter, turn_episodes
from metacontroller.pipeline.config import default_config, override
from metacontroller.pipeline.control import step_labels, subgoal_intervention
from metacontroller.pipeline.data import bucketed_batches
from metacontroller.pipeline.discover import kl_weight
from metacontroller.pipeline.models import build_meta_controller, build_transformer
from metacontroller.pipeline.phases import load_matching
from metacontroller.pipeline.pretrain import learning_rate
from metacontroller.rl import evaluate
from metacontroller.subgoal_controller import SubgoalController

# the discovery settings of the study's best label-free codes (rotation consistency, ratio loss)
CODES_DISCOVERY = {'discovery.rotation_consistency': True, 'discovery.ratio_loss_weight': 1.0, 'discovery.target_segment_length': 10.5}


def action_nll(model, controlled, actions, mask):
    """The upper body's action NLL, mean over valid steps, from the steered stream ê (b, t, d)."""
    return model.action_readout(model.upper_body(controlled), targets = actions.masked_fill(~mask, 0), loss_mask = mask)


def label_loss(model, controller, label_dropout):
    def loss_fn(step, batch, mask, rng):
        stream = model.residual_stream(batch.observations)  # (b, t, d)
        controlled = controller(stream, step_labels(batch))
        if label_dropout > 0:
            # a row without its label must be acted from the stream alone, as after pretraining without labels
            labelled = torch.rand(stream.shape[0], 1, 1) >= label_dropout
            controlled = torch.where(labelled, controlled, stream)
        loss = action_nll(model, controlled, batch.actions, mask)
        return loss, (loss,)
    return loss_fn


def code_loss(model, meta, alpha, warmup_steps):
    """Discovery's loss with the base trained too: the codes read from an episode steer it and its turned copy."""
    def loss_fn(step, batch, mask, rng):
        out = meta(model.residual_stream(batch.observations), batch.episode_lens)
        nll = action_nll(model, out.controlled, batch.actions, mask)
        observations, actions = turn_episodes(batch.observations, batch.actions, rng)
        turned = meta.decoder.control(out.latent, model.residual_stream(observations), meta.control_scale)
        turned_nll = action_nll(model, turned, actions, mask)
        kl = out.kl[mask].mean()
        return (nll + turned_nll) / 2 + kl_weight(alpha, step, warmup_steps) * kl + meta.ratio_loss(out.beta, mask), (nll, turned_nll, kl)
    return loss_fn


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--data', type = Path, required = True, help = 'a pipeline data folder (pretrain.npz, discovery.npz, heldout.npz)')
    parser.add_argument('--out', type = Path, required = True, help = 'run folder to write (pretrain/model.pt, data/, cotrained.json)')
    parser.add_argument('--steps', type = int, default = 6_000, help = "pretraining steps (the default preset's)")
    parser.add_argument('--label-dropout', type = float, default = 0.0,
                        help = 'fraction of episodes trained without their labels (controller off), so that the base also learns to infer the subgoal')
    parser.add_argument('--codes', type = float, metavar = 'ALPHA',
                        help = 'no labels: co-train a metacontroller on the rotation-consistent discovery objective with this KL weight')
    parser.add_argument('--kl-warmup', type = int, default = 0, metavar = 'N', help = 'with --codes: steps over which the KL weight rises from 0 to ALPHA')
    parser.add_argument('--init', type = Path, metavar = 'RUN', help = 'go on from the base and co-trained module this script saved in RUN')
    parser.add_argument('--cooldown', action = 'store_true', help = 'decay the learning rate linearly to 0 over the steps')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    if not 0 <= args.label_dropout <= 1:
        parser.error(f'--label-dropout is a fraction of episodes, in [0, 1]; got {args.label_dropout}')
    if args.codes is not None and (args.codes < 0 or args.label_dropout > 0):
        parser.error(f'--codes takes a KL weight >= 0 and uses no labels (so no --label-dropout); got {args.codes}, {args.label_dropout}')
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    adapter, config = pinpad_adapter(), default_config()
    model = build_transformer(adapter, config.model)
    if args.codes is None:
        module = SubgoalController(config.model.dim, adapter.num_subgoals, config.control.dim_hypernetwork_hidden, config.control.low_rank)
        loss_fn, names = label_loss(model, module, args.label_dropout), ('action_nll',)
    else:
        module = build_meta_controller(config.model.dim, override(config, CODES_DISCOVERY).discovery)
        loss_fn, names = code_loss(model, module, args.codes, args.kl_warmup), ('action_nll', 'turned_action_nll', 'kl')
    module_file = 'cotrained_controller.pt' if args.codes is None else 'cotrained_meta_controller.pt'
    if args.init is not None:
        model = load_matching(args.init / 'pretrain' / 'model.pt', model, '--init', 'default model')
        module = load_matching(args.init / module_file, module, '--init', 'co-trained module')
    data = DemoDataset.load(args.data / 'pretrain.npz')
    rng = np.random.default_rng(args.seed)
    batches = bucketed_batches(data, config.pretrain.batch_size, rng)
    turns = np.random.default_rng([args.seed, 1])
    params = [*model.parameters(), *module.parameters()]
    optimizer = torch.optim.AdamW(params, lr = config.pretrain.lr, weight_decay = config.pretrain.weight_decay)
    # the pipeline's schedule: with --cooldown, every step decays (the last at lr / steps)
    schedule = replace(config.pretrain, steps = args.steps, cooldown_steps = args.steps if args.cooldown else 0)

    start, trace = time.time(), []
    bar = tqdm(range(args.steps), desc = 'co-train')
    for step in bar:
        batch = data.batch(next(batches))
        mask = lens_to_mask(batch.episode_lens, batch.actions.shape[1])
        loss, logged = loss_fn(step, batch, mask, turns)
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(schedule, step)
        optimizer.zero_grad(set_to_none = True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.pretrain.max_grad_norm)
        optimizer.step()
        trace.append([value.item() for value in logged])
        if step % 20 == 0:
            bar.set_postfix(dict(zip(names, np.mean(trace[-50:], axis = 0).round(3))))
    model.eval()
    module.eval()

    shutil.copytree(args.data, args.out / 'data', dirs_exist_ok = True)
    model.save(args.out / 'pretrain' / 'model.pt')
    record = dict(steps = args.steps, init = str(args.init or ''), cooldown = args.cooldown, label_dropout = args.label_dropout, codes_alpha = args.codes, kl_warmup = args.kl_warmup,
                  **{f'final_train_{name}': float(value) for name, value in zip(names, np.mean(trace[-50:], axis = 0))})
    module.save(args.out / module_file)
    if args.codes is None:
        record.update({name: evaluate(model, adapter.make_envs(tasks), config.control.eval_episodes, seed = args.seed,
                                      intervention = subgoal_intervention(module))._asdict()
                       for name, tasks in (('post_task', (adapter.post_task,)), ('pretraining_tasks', adapter.pretraining_tasks))})
        print({name: round(record[name]['success'], 3) for name in ('post_task', 'pretraining_tasks')})
    record['wall_time_s'] = time.time() - start
    (args.out / 'cotrained.json').write_text(json.dumps(record, indent = 2))
    print({k: v for k, v in record.items() if k.startswith('final_train')})


if __name__ == '__main__':
    main()
