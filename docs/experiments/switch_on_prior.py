"""Does the switching unit fire on codes it did not write? (issue 15: why ABC is not learned)

β_t reads the residual stream, the history and the held code z_{t-1}. In discovery z comes from the
encoder; in internal RL from a policy that starts near the N(0, I) prior. On held-out D* episodes
(the expert's own streams, so the trajectory is the same for both), this counts the switches per
episode and the switch F1 when each new code is the encoder's proposal, and when it is drawn from
N(0, I) instead. Teacher-forced, not closed loop: it isolates the switch's dependence on the code.

    python docs/experiments/switch_on_prior.py --run-dir runs/study/rot01
"""
import argparse
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.meta_controller import shift_right
from metacontroller.pipeline import data
from metacontroller.pipeline.data import ordered_batches
from metacontroller.pipeline.metrics import SwitchCounts, switch_counts
from metacontroller.recurrence import gru_sequence


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a run folder whose discover phase has run')
    parser.add_argument('--seed', type = int, default = 0)
    args = parser.parse_args()
    model = Transformer.init_and_load(args.run_dir / 'pretrain' / 'model.pt').eval()
    meta = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    heldout = data.load(args.run_dir / 'data', 'heldout')
    counts = dict(encoder = SwitchCounts(0, 0, 0), prior = SwitchCounts(0, 0, 0))
    torch.manual_seed(args.seed)
    for batch in ordered_batches(heldout, 256, 'cpu'):
        stream = model.residual_stream(batch.observations)
        out = meta(stream, batch.episode_lens)                         # β on z̃ sampled from the posterior
        prior = switching_beta(meta, stream, torch.randn_like(out.proposal))
        for name, beta in (('encoder', out.beta), ('prior', prior)):
            counts[name] = counts[name] + switch_counts(beta, batch.boundaries, batch.episode_lens)
    episodes = len(heldout)
    for name, c in counts.items():
        print(f'{name:8s} codes: {c.predicted / episodes + 1:.2f} switches per episode '
              f'({c.actual / episodes + 1:.2f} subgoals), switch F1 {c.f1:.2f}, recall {c.recall:.2f}')


def switching_beta(meta: MetaController, stream: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
    """β (b, t) of the switching unit on `stream` when the code proposed at each step is `proposal` (b, t, n_z):
    `MetaController.forward`'s switching with the encoder's proposals swapped out."""
    prev_history = shift_right(gru_sequence(meta.history, stream))
    return meta.switching(meta.switching.project_inputs(stream, prev_history), proposal).beta


if __name__ == '__main__':
    main()
