"""Is anything at the cut steerable? Ground-truth controllers of any form (docs/reproduction.md, point 6: "What the
stream at the cut lacks").

The `control` phase's controllers are the paper's: ê = e + U(onehot(k)) e, linear and rank 16. On the label-free
bases they barely move the choice of the next pair. This swaps them for an unconstrained one,

    ê_t = e_t + f([e_t, onehot(k_t)])        f: an MLP, its last layer zero-initialised (a no-op at the start)

trained the same way (D*, action NLL, the base frozen) and scored the same way (held-out NLL and onset errors, then
fresh episodes with the live subgoal picking k, beside the base on the same seeded episodes). On a base whose layers
above the cut have no attention (`--model.upper_attention false`), f and the upper body together are a policy
π(a | e_t, k) on the frozen stream: if even that cannot head for the labelled pair, the stream at the cut does not
hold what acting towards an arbitrary subgoal needs, and no controller there can supply it.

    python docs/experiments/mlp_controller.py --run-dir runs/study/ffup          # a run whose pretrain phase is done
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metacontroller import Transformer
from metacontroller.pipeline import control, data, discover
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import ControlConfig


class MLPController(nn.Module):
    """ê = e + f([e, onehot(k)]) for e (..., d) and labels (...,): any function of the stream and the label."""

    def __init__(self, dim_model: int, num_subgoals: int, hidden: int):
        super().__init__()
        self.dim_model, self.num_subgoals = dim_model, num_subgoals
        self.net = nn.Sequential(nn.Linear(dim_model + num_subgoals, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, dim_model))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, stream: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        code = F.one_hot(labels.long(), self.num_subgoals).to(stream.dtype)
        return stream + self.net(torch.cat((stream, code), dim = -1))


def stages(reached: list[float]) -> list[float]:
    """P(colour k reached | colour k - 1 reached), from the fractions of episodes that got k colours in."""
    previous = [1.0] + reached[:-1]
    return [round(r / p, 3) if p > 0 else None for r, p in zip(reached, previous)]


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a pipeline run folder whose pretrain phase is done')
    parser.add_argument('--data', type = Path, default = None, help = "the data folder with D* and the held-out set (default: the run's)")
    parser.add_argument('--hidden', type = int, default = 256, help = 'width of the MLP controller')
    parser.add_argument('--steps', type = int, default = 1_500)
    parser.add_argument('--batch-size', type = int, default = 128)
    parser.add_argument('--lr', type = float, default = 1e-3)
    parser.add_argument('--episodes', type = int, default = 1_000, help = 'fresh episodes per task set and policy')
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    parser.add_argument('--out', type = Path, default = None, help = 'results JSON (default: RUN/mlp_controller.json)')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    adapter = pinpad_adapter()
    data_dir = args.data or args.run_dir / 'data'
    model = Transformer.init_and_load(args.run_dir / 'pretrain' / 'model.pt').eval()
    demos = data.load(data_dir, 'discovery')
    config = ControlConfig(steps = args.steps, batch_size = args.batch_size, lr = args.lr)
    controller = MLPController(model.dim, adapter.num_subgoals, args.hidden)
    trace = control.train(model, controller, discover.precompute(model, demos, config.batch_size, args.seed, 'cpu'), config, args.seed)
    controller.eval()

    scores, rollouts = control.score(model, controller, adapter, data.load(data_dir, 'heldout'), args.episodes, args.seed, 'cpu')
    success = {name: {kind: dict(success = stats['success'], stages = stages(list(stats['reached']))) for kind, stats in by_kind.items()}
               for name, by_kind in rollouts.items()}
    for name, by_kind in success.items():
        print(f"{name}: success {by_kind['controlled']['success']:.3f} with the MLP controller "
              f"({by_kind['base']['success']:.3f} without; greedy {by_kind['controlled_greedy']['success']:.3f}, "
              f"{by_kind['base_greedy']['success']:.3f}); stages {by_kind['controlled']['stages'][:6]} ({by_kind['base']['stages'][:6]})")
    keep = ('action_nll', 'p_optimal', 'p_fatal', 'p_fatal_onset')
    out = dict(heldout = {name: {k: s[k] for k in keep} for name, s in scores.items()}, **success,
               final_train_action_nll = sum(trace[-50:]) / len(trace[-50:]), args = {k: str(v) for k, v in vars(args).items()})
    print(json.dumps(out['heldout']), f"train NLL {out['final_train_action_nll']:.3f}")
    (args.out or args.run_dir / 'mlp_controller.json').write_text(json.dumps(out, indent = 1))


if __name__ == '__main__':
    main()
