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

    python docs/experiments/policy_noise.py runs/study/r03_ABC300k runs/study/r03_ABC300k_s1 --controllers runs/study/control_ABC
"""
import argparse
import json
from functools import partial
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import from_dict
from metacontroller.pipeline.control import subgoal_intervention
from metacontroller.pipeline.rl_phase import final_success
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
    record = json.loads((run_dir / 'config.json').read_text())
    config = from_dict(record['config'])
    adapter = pinpad_adapter().with_post_task(config.rl.task).with_task_condition(config.model.task_condition)
    model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
    return config, record['seed'], model, adapter.make_envs((adapter.post_task,))


def stray_rate(model, make_envs, episodes: int, seed: int, meta = None, controller = None) -> float:
    """Mean over the live steps of sampled episodes of 1 - max_a p(a): the base's own action noise."""
    env, log = make_envs(episodes), TopProbability()
    intervention = None if controller is None else partial(subgoal_intervention(controller), env)
    with seeded(seed, torch.device('cpu')):
        run_episodes(model, env, range(seed, seed + episodes), meta_controller = meta, recorder = log, intervention = intervention)
    return 1 - torch.cat(log.top).mean().item()


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
        print(run_dir.name, ', '.join(f'{name} {success:.3f}' for name, success in by_policy.items()), f'| stray rate {stray:.3f}', flush = True)
    if args.controllers is not None:
        _, seed, model, make_envs = load(args.controllers)
        controller = SubgoalController.init_and_load(args.controllers / 'control' / 'controller.pt').eval()
        print(args.controllers.name, f'ground-truth controllers | stray rate {stray_rate(model, make_envs, args.episodes, final_eval_seed(seed), controller = controller):.3f}')


if __name__ == '__main__':
    main()
