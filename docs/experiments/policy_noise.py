"""Whose noise costs the success: the internal-RL policy's or the base model's? (issue 15)

A trained internal-RL policy acts by sampling a latent z ~ N(μ, σ²) at each decision, and the
frozen base then samples each raw action from its own softmax. The headline success samples both,
as in training (the paper's Algorithm 1). This re-runs the final evaluation of finished run
folders, on the same fresh episodes, under the four combinations of sampled or greedy latent (the
policy's mean μ) and sampled or greedy (argmax) raw action, with the pipeline's own `final_success`
(the `rl` phase records the same table, `success_by_policy`, in runs made since it was added). The
ground-truth controllers' `control` phase reports sampled and greedy actions likewise: compare
like with like.

Then why sampling costs a policy what it costs: the *stray rate*, 1 - the base's probability of its
most likely action, averaged over the steps of `--episodes` sampled episodes (the chance that a
sampled step is not the argmax). Given `--controllers RUN_DIR` (a run whose control phase has
run, on the same base), the ground-truth controllers' stray rate on the same task and episodes.

The sampled column should equal the run's recorded success (shown beside it): it does when the
run was made on a CPU. Pinpad runs only.

    python docs/experiments/policy_noise.py runs/study/rot03_ABC_s0 runs/study/rot03_ABC_s1 --controllers runs/study/control_ABC
"""
import argparse
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import from_dict
from metacontroller.pipeline.control import subgoal_intervention
from metacontroller.pipeline.files import read_json
from metacontroller.pipeline.rl_phase import final_success
from metacontroller.pipeline.runner import CONFIG_FILE, RESULTS_FILE
from metacontroller.rl.rollout import run_episodes
from metacontroller.rl.seeds import final_eval_seed, seeded
from metacontroller.subgoal_controller import SubgoalController


class TopProbability:
    """A recorder: the base's probability of its most likely raw action, at each live step."""

    def __init__(self):
        self.top = []

    def record(self, step):
        self.top.append(step.logits[:, 0].softmax(dim = -1).amax(dim = -1)[step.live])


def load(run_dir: Path):
    """The run's config, seed, base model and post-task env maker."""
    record = read_json(run_dir / CONFIG_FILE)
    config = from_dict(record['config'])
    adapter = pinpad_adapter().for_config(config)
    model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
    return config, record['seed'], model, adapter.make_envs((adapter.post_task,))


class Stray(NamedTuple):
    per_step: float      # mean over live steps of 1 - max_a p(a)
    per_episode: float   # its sum over an episode's steps: the expected off-argmax steps per episode

    def __str__(self):
        return f'stray rate {self.per_step:.3f} a step, {self.per_episode:.2f} an episode'


def stray_rate(model, make_envs, episodes: int, seed: int, meta = None, controller = None) -> Stray:
    """The base's own action noise along sampled episodes, under a policy or the ground-truth controllers."""
    env, log = make_envs(episodes), TopProbability()
    intervention = None if controller is None else partial(subgoal_intervention(controller), env)
    with seeded(seed, torch.device('cpu')):
        run_episodes(model, env, range(seed, seed + episodes), meta_controller = meta, recorder = log, intervention = intervention)
    off = 1 - torch.cat(log.top)
    return Stray(off.mean().item(), off.sum().item() / episodes)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    one, other = a.state_dict(), b.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n')[0])
    parser.add_argument('run_dirs', nargs = '+', type = Path, help = 'pinpad run folders whose rl phase has run')
    parser.add_argument('--controllers', type = Path, help = 'a run folder whose control phase has run, on the same base')
    parser.add_argument('--episodes', type = int, default = 256, help = 'sampled episodes for the stray rate')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        if not (run_dir / 'rl' / 'meta_controller.pt').exists():
            raise SystemExit(f'{run_dir}: expected rl/meta_controller.pt (run the rl phase first)')
    if args.controllers is not None and not (args.controllers / 'control' / 'controller.pt').exists():
        raise SystemExit(f'{args.controllers}: expected control/controller.pt (run the control phase first)')
    torch.set_num_threads(args.threads)

    for run_dir in args.run_dirs:
        config, seed, model, make_envs = load(run_dir)
        meta = MetaController.init_and_load(run_dir / 'rl' / 'meta_controller.pt').eval()
        by_policy = final_success(model, make_envs, config.rl, seed, meta)['success_by_policy']
        stray = stray_rate(model, make_envs, args.episodes, final_eval_seed(seed), meta = meta)
        recorded = read_json(run_dir / RESULTS_FILE)['rl']['internal']['success']
        print(run_dir.name, ', '.join(f'{name} {success:.3f}' for name, success in by_policy.items()),
              f'(recorded: {recorded:.3f}) | {stray}', flush = True)
    if args.controllers is not None:
        _, seed, controlled_model, make_envs = load(args.controllers)
        if not same_weights(controlled_model, model):
            raise SystemExit(f"{args.controllers}: its base model differs from {run_dir}'s; the controllers must steer the same base")
        controller = SubgoalController.init_and_load(args.controllers / 'control' / 'controller.pt').eval()
        print(args.controllers.name, 'ground-truth controllers |', stray_rate(model, make_envs, args.episodes, final_eval_seed(seed), controller = controller))


if __name__ == '__main__':
    main()
