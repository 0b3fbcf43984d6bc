"""Discovery's data from other tasks: do discovery's codes name branches of the pretraining graph because every
transition D* shows is one? (issue 15)

On the flag's seed-0 base at P16c's compute, discovery's codes name a branch of the pretraining graph relative to
the last subgoal ("the other pair"), and no such code can ask for A to B, which no pretraining task has. Every
transition of D* is a branch of that graph, so a relative code explains it as well as one that names the subgoal.
This rewrites a run folder's D* (`data/discovery.npz`) with the clean expert on every walk of `--length` subgoals
over the alphabet without a repeat (pinpad: 36 walks of three, the graph's 16 among them), so that after A the
data also shows B, which the base was never shown. A diagnostic, not the paper's setting: D* then holds ABCDAB's
transitions. Run it on a copy of the folder; the base, its probes and controllers are left as they are.

    python docs/experiments/discovery_data.py runs/f20c_offgraph
    python train_pinpad.py --run-dir runs/f20c_offgraph --phases discover --force ...
"""
import argparse
import itertools
from pathlib import Path

from metacontroller.envs import pinpad
from metacontroller.pipeline import data
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import from_dict
from metacontroller.pipeline.files import read_json
from metacontroller.pipeline.runner import CONFIG_FILE


def walks(length: int) -> list[str]:
    """Every sequence of `length` subgoal names with no subgoal twice in a row."""
    names = pinpad.SUBGOAL_NAMES
    return [''.join(walk) for walk in itertools.product(names, repeat = length) if all(a != b for a, b in zip(walk, walk[1:]))]


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('run_dir', type = Path, help = 'a copy of a run folder whose data phase is done')
    parser.add_argument('--length', type = int, default = 3, help = 'subgoals per walk (the pretraining tasks have 3)')
    args = parser.parse_args()
    if args.length < 2:
        raise SystemExit(f'--length must be at least 2 (a walk needs a transition), got {args.length}')
    record = read_json(args.run_dir / CONFIG_FILE)
    config = from_dict(record['config'])
    adapter = pinpad_adapter().for_config(config)
    names = walks(args.length)
    tasks = [pinpad.task_from_subgoals(name) for name in names]
    # the data phase's seed for D*: the same layouts as the D* it replaces, apart from the held-out episodes'
    dataset = adapter.generate_demos(config.data.discovery_episodes, tasks = tasks, epsilon = 0., seed = record['seed'] * 10 + 1)
    path = data.dataset_path(args.run_dir / 'data', 'discovery')
    dataset.save(path)
    outside = [name for name in names if name not in pinpad.PRETRAINING_TASK_NAMES]
    print(f'{path}: {len(dataset)} episodes over {len(names)} walks ({len(outside)} outside the pretraining graph), '
          f'mean length {dataset.episode_lens.mean():.1f}')


if __name__ == '__main__':
    main()
