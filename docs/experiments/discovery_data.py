"""Discovery's data from other tasks: do discovery's codes name branches of the pretraining graph because every
transition D* shows is one? (issue 15)

On the flag's seed-0 base at P16c's compute, discovery's codes name a branch of the pretraining graph relative to
the last subgoal ("the other pair"), and no such code can ask for A to B, which no pretraining task has. Every
transition of D* is a branch of that graph, so a relative code explains it as well as one that names the subgoal.
This rewrites a run folder's D* (`data/discovery.npz`) with the clean expert on every walk of `--length` subgoals
whose transitions are the graph's or `--transitions` (all: every walk without a repeat, pinpad's 36 of three, the
graph's 16 among them), so that after A the data also shows B, which the base was never shown. A diagnostic, not
the paper's setting: D* then holds the held-out task's transitions, unless `--transitions` leaves them out (AB,CD
keeps B to C and D to A for a test task such as BCADAC). Run it on a copy of the folder; the base, its probes and controllers are left as they are.

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


def graph() -> set[str]:
    """The pretraining graph's transitions, as two-letter names ('AC', 'AD', ...)."""
    return {task[i:i + 2] for task in pinpad.PRETRAINING_TASK_NAMES for i in range(len(task) - 1)}


def walks(length: int, extra: set[str]) -> list[str]:
    """Every sequence of `length` subgoal names whose transitions are in the pretraining graph or `extra`."""
    allowed = graph() | extra
    return [''.join(walk) for walk in itertools.product(pinpad.SUBGOAL_NAMES, repeat = length)
            if all(a + b in allowed for a, b in zip(walk, walk[1:]))]


def transitions(text: str) -> set[str]:
    """'all' or comma-separated pairs ('AB,CD') -> the transitions D* may show beyond the graph's."""
    names = pinpad.SUBGOAL_NAMES
    every = {a + b for a in names for b in names if a != b}
    chosen = every if text == 'all' else set(text.split(','))
    if not chosen <= every:
        raise SystemExit(f'--transitions takes all or pairs of distinct subgoals from {names!r} like AB,CD; got {text!r}')
    return chosen - graph()


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('run_dir', type = Path, help = 'a copy of a run folder whose data phase is done')
    parser.add_argument('--length', type = int, default = 3, help = 'subgoals per walk (the pretraining tasks have 3)')
    parser.add_argument('--transitions', default = 'all', help = "transitions beyond the graph's that D* may show: all "
                                                                  "(pinpad: A to B, B to C, C to D, D to A) or pairs like AB,CD")
    args = parser.parse_args()
    if args.length < 2:
        raise SystemExit(f'--length must be at least 2 (a walk needs a transition), got {args.length}')
    extra = transitions(args.transitions)
    if not (args.run_dir / CONFIG_FILE).is_file():
        raise SystemExit(f'{args.run_dir} is not a run folder: no {CONFIG_FILE} (run train_pinpad.py --phases data there first)')
    record = read_json(args.run_dir / CONFIG_FILE)
    config = from_dict(record['config'])
    adapter = pinpad_adapter().for_config(config)
    names = walks(args.length, extra)
    tasks = [pinpad.task_from_subgoals(name) for name in names]
    # the data phase's seed for D*: the same layouts as the D* it replaces, apart from the held-out episodes'
    dataset = adapter.generate_demos(config.data.discovery_episodes, tasks = tasks, epsilon = 0., seed = record['seed'] * 10 + 1)
    path = data.dataset_path(args.run_dir / 'data', 'discovery')
    dataset.save(path)
    outside = [name for name in names if name not in pinpad.PRETRAINING_TASK_NAMES]
    print(f'{path}: {len(dataset)} episodes over {len(names)} walks ({len(outside)} outside the pretraining graph, through {sorted(extra)}), '
          f'mean length {dataset.episode_lens.mean():.1f}')


if __name__ == '__main__':
    main()
