"""Do a run's switches fall where the base model is surprised? A timing score read without labels (issue 15).

The paper's objective at one α puts one switch per subgoal on the boundaries on some discovery seeds and on
each pair's first colour on others, and only the first gives codes internal RL can use. On pinpad a pair's
second colour follows from its first, so after a first colour the base knows where the agent goes; after a
boundary it does not (the next pair is the task's). So a switch placed well starts a code where the base's own
next-action prediction is poor. For each run this scores the switches by the base's action NLL on the recorded
action at the switch step and just after it, against the mean over all steps (1: no better than a random step):

- surprise: mean base NLL at the switch steps (offset 0) / mean base NLL over steps 1 .. len - 1;
- the same at offsets -1 .. 2, the profile around a switch;
- for reference, the same at the ground-truth boundaries and at the pairs' first colours (labels read only here).

Switches are `decisions(β)` of one posterior pass, as in the discover phase's analysis.

    python docs/experiments/switch_surprise.py 'seed 0=runs/a' 'seed 1=runs/b:discover/first_stage_meta_controller.pt'
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline import data
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.switching import decisions

OFFSETS = (-1, 0, 1, 2)


@torch.no_grad()
def step_tables(model: Transformer, meta: MetaController | None, dataset, events, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Flat arrays over the valid steps 1 .. len - 1 of every episode: the base's action NLL at offsets, switch,
    boundary and first-colour marks."""
    out = {key: [] for key in ('nll', 'switch', 'boundary', 'first_colour', 'valid')}
    for batch in data.ordered_batches(dataset, batch_size, 'cpu'):
        condition = getattr(batch, 'condition', None)
        logits = model.action_logits(batch.observations, condition = condition)                   # (b, t, a)
        nll = -logits.log_softmax(-1).gather(-1, batch.actions[..., None])[..., 0]               # (b, t)
        steps = torch.arange(nll.shape[1])[None]
        valid = (steps >= 1) & (steps < batch.episode_lens[:, None])
        marked = events(batch.observations)
        out['nll'].append(nll.masked_fill(~valid, float('nan')))
        out['valid'].append(valid)
        out['boundary'].append(batch.boundaries & valid)
        out['first_colour'].append(marked & ~batch.boundaries & valid)
        if meta is not None:
            stream = model.residual_stream(batch.observations, condition = condition)
            out['switch'].append(decisions(meta(stream, batch.episode_lens).beta) & valid)
    width = max(t.shape[1] for t in out['nll'])
    pad = lambda t, value: torch.nn.functional.pad(t.float(), (0, width - t.shape[1]), value = value)
    return {key: torch.cat([pad(t, float('nan') if key == 'nll' else 0.) for t in ts]).numpy() for key, ts in out.items() if ts}


def profile(nll: np.ndarray, marks: np.ndarray) -> list[float]:
    """Mean NLL at each offset from the marked steps, over the mean NLL of all valid steps."""
    mean = np.nanmean(nll)
    rows, cols = np.nonzero(marks)
    ratios = []
    for offset in OFFSETS:
        at = cols + offset
        keep = (at >= 0) & (at < nll.shape[1])
        ratios.append(float(np.nanmean(nll[rows[keep], at[keep]]) / mean))
    return ratios


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs = '+', help = 'LABEL=RUN_DIR[:CHECKPOINT]: pinpad run folders (checkpoint relative to the '
                                                   'folder; default discover/meta_controller.pt)')
    parser.add_argument('--episodes', type = int, default = 1024, help = 'held-out episodes scored')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    events = pinpad_adapter().events
    fmt = lambda ratios: ' '.join(f'{r:.2f}' for r in ratios)
    for label, spec in (run.split('=', 1) for run in args.runs):
        run_dir, _, checkpoint = spec.partition(':')
        run_dir = Path(run_dir)
        model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
        meta = MetaController.init_and_load(run_dir / (checkpoint or 'discover/meta_controller.pt')).eval()
        heldout = data.load(run_dir / 'data', 'heldout').head(args.episodes)
        t = step_tables(model, meta, heldout, events)
        episodes = len(heldout)
        print(f'{label:32s} surprise {profile(t["nll"], t["switch"])[1]:.2f} (offsets {OFFSETS}: {fmt(profile(t["nll"], t["switch"]))}); '
              f'{t["switch"].sum() / episodes + 1:.2f} switches per episode; reference: boundaries {fmt(profile(t["nll"], t["boundary"]))}, '
              f'first colours {fmt(profile(t["nll"], t["first_colour"]))}', flush = True)


if __name__ == '__main__':
    main()
