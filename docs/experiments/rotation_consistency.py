"""Discovery whose codes must also steer the same episode rotated (issue 15; not the paper's objective).

On row P's base, discovery finds codes that name *places* ("go there" in this layout), although codes
that name colours are a better optimum of the paper's objective (docs/reproduction.md). Inside one
episode the two are confounded. A quarter turn of the grid breaks the confound without subgoal labels:
the rotated episode is another valid pinpad episode with the same colours at other places, and its
expert actions are the same moves turned. Here the metacontroller reads the original episode (encoder,
switching unit) and its code z_t controls the base on both: the original and the rotated residual
stream, each against its own actions. A place code sends the rotated agent to the wrong place; a
colour code is right in both. The objective is the mean of the two action NLLs + α·KL.

The metacontroller has the preset's default discovery sizes (or `--init`'s); only α and the steps
are set here. It writes the run's discover/meta_controller.pt (use a copy of the run folder), prints
the switch metrics and the steering check; then `code_meaning.py` and `--phases rl --force` read it.

    cp -r runs/study/cotrained runs/study/rotated
    python docs/experiments/rotation_consistency.py --run-dir runs/study/rotated --alpha 0.05 --steps 3200
"""
import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller import MetaController, Transformer
from metacontroller.envs.pinpad import GRID, NEIGHBOURS, NUM_ACTIONS, NUM_CELLS, NUM_CHANNELS
from metacontroller.pipeline import data, discover, steering
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import default_config
from metacontroller.pipeline.models import build_meta_controller


def quarter_turns(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells, actions) for k counter-clockwise quarter turns: the new grid's cell i is old cell cells[i];
    old action a becomes actions[a]."""
    cells = np.rot90(np.arange(NUM_CELLS).reshape(GRID, GRID), k).reshape(-1)
    new_cell = np.argsort(cells)                    # old cell -> its place in the new grid
    centre = NUM_CELLS // 2
    actions = [list(NEIGHBOURS[new_cell[centre]]).index(new_cell[NEIGHBOURS[centre, a]]) for a in range(NUM_ACTIONS)]
    return torch.from_numpy(cells.copy()), torch.tensor(actions)


def rotate(observations: torch.Tensor, actions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, t, 637) one-hot grids and (b, t) moves -> the same episodes turned k quarter turns."""
    cells, moves = quarter_turns(k)
    grid = observations.unflatten(-1, (NUM_CELLS, NUM_CHANNELS))[..., cells, :]
    return grid.flatten(-2), moves[actions]


def action_nll(model: Transformer, controlled: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model.action_readout(model.upper_body(controlled), targets = actions.masked_fill(~mask, 0), loss_mask = mask)


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a copy of a run folder whose control phase has run')
    parser.add_argument('--steps', type = int, default = 3_200)
    parser.add_argument('--alpha', type = float, default = 0.05)
    parser.add_argument('--init', type = Path, help = 'start from this metacontroller checkpoint instead of fresh weights')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config = replace(default_config().discovery, steps = args.steps, alpha = args.alpha)
    adapter = pinpad_adapter()
    model = Transformer.init_and_load(args.run_dir / 'pretrain' / 'model.pt').eval().requires_grad_(False)
    meta = MetaController.init_and_load(args.init) if args.init else build_meta_controller(model.dim, config)
    demos = data.load(args.run_dir / 'data', 'discovery')
    rng = np.random.default_rng(args.seed)
    batches = data.epoch_batches(demos, config.batch_size, rng)
    optimizer = torch.optim.AdamW(meta.parameters(), lr = config.lr, weight_decay = config.weight_decay)

    meta.train()
    bar = tqdm(range(args.steps), desc = f'rotation-consistent discovery α={args.alpha:g}')
    trace = []
    for step in bar:
        batch = demos.batch(batches[rng.integers(len(batches))])
        mask = lens_to_mask(batch.episode_lens, batch.actions.shape[1])
        turned, turned_actions = rotate(batch.observations, batch.actions, int(rng.integers(1, 4)))
        with torch.no_grad():
            stream, turned_stream = model.residual_stream(batch.observations), model.residual_stream(turned)
        out = meta(stream, batch.episode_lens)
        own = action_nll(model, out.controlled, batch.actions, mask)
        other = action_nll(model, meta.decoder.control(out.latent, turned_stream, meta.control_scale), turned_actions, mask)
        kl = (out.kl * mask).sum() / mask.sum()
        loss = (own + other) / 2 + args.alpha * kl
        optimizer.zero_grad(set_to_none = True)
        loss.backward()   # no clipping, as in the pipeline's discovery
        optimizer.step()
        trace.append((own.item(), other.item(), kl.item()))
        if step % 10 == 0:
            bar.set_postfix(dict(zip(('nll', 'turned_nll', 'kl'), (f'{v:.3f}' for v in np.mean(trace[-50:], axis = 0)))))
    meta.eval()
    meta.save(args.run_dir / 'discover' / 'meta_controller.pt')
    print(discover.analyse(model, meta, data.load(args.run_dir / 'data', 'heldout'), 'cpu').summary())
    codes = steering.subgoal_codes(model, meta, demos, adapter.num_subgoals, 'cpu')
    print('steering', steering.steering_table(model, meta, codes, adapter.subgoal_names, adapter.make_envs(adapter.pretraining_tasks),
                                              config.steering_episodes, args.seed))


if __name__ == '__main__':
    main()
