"""How well can the discovered decoder steer, against the ground-truth controllers, on and off the expert's states? (issue 15)

`rl_gap.py` found that one code per subgoal, fitted through the discovered decoder, recovers less of the
controllers' success (0.81 of it, sampled actions) although both imitate D* equally well. This measures the
decoder alone, before any internal RL, so that codes folders can be compared by the best a fixed code does
through their decoder:

1. success on the held-out task (`--task`), each controller switched by the live subgoal, on the same
   episode seeds as the RL's final evaluation: the ground-truth controllers (`--controllers`), the steering
   check's mean code per subgoal, and one code per subgoal fitted through the frozen decoder (`rl_gap.py`'s);
2. on D* (clean expert states): the action NLL and the control's relative size |U e| / |e|;
3. off the expert's states: the states the agent visits when the controllers steer it with sampled raw
   actions (`--visit-episodes` episodes, their own history, not D*'s), scored for every controller on the
   same states: the probability of an optimal move (one of the expert's shortest-path actions) and of a
   failing move (into a colour that is not the target, which ends the episode).

Pinpad runs with Gaussian codes only; about 3 minutes on one thread.

    python docs/experiments/decoder_ceiling.py runs/study/rot03_ratio --controllers runs/study/control_ABC --task ABC
"""
import argparse
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from policy_noise import load, same_weights
from rl_gap import SubgoalCodes, fit_codes
from torch_einops_utils import lens_to_mask

from metacontroller import MetaController
from metacontroller.codes import GaussianCode
from metacontroller.demos import NO_SUBGOAL, DemoBatch
from metacontroller.envs.pinpad_expert import action_costs
from metacontroller.pipeline import control, data, discover, steering
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.rl.evaluate import evaluate
from metacontroller.rl.rollout import run_episodes
from metacontroller.rl.seeds import final_eval_seed, seeded
from metacontroller.subgoal_controller import SubgoalController


class Visits:
    """A recorder: each slot's states in order, with the live subgoal and the expert's view of each action
    (optimal: on a shortest path; failing: ends the episode), read from the env before it steps."""

    def __init__(self, env):
        self.env = env
        self.steps = [[] for _ in range(env.num_envs)]   # per slot: (state, subgoal, optimal (A,), failing (A,))

    def record(self, step):
        cost, fails = action_costs(self.env)
        optimal = cost == cost.min(axis = 1, keepdims = True)
        subgoal = np.asarray(self.env.subgoal)
        for i, (row, live) in enumerate(zip(step.rows.tolist(), step.live.tolist())):
            if live:
                self.steps[row].append((step.state[i, 0], subgoal[row], optimal[row], fails[row]))

    def batch(self) -> tuple[DemoBatch, torch.Tensor, torch.Tensor]:
        """The visited episodes as a padded batch, with optimal and failing masks (B, T, A)."""
        episodes = [steps for steps in self.steps if steps]
        lens, horizon = torch.tensor([len(steps) for steps in episodes]), max(len(steps) for steps in episodes)
        first = episodes[0][0]
        observations = torch.zeros(len(episodes), horizon, *first[0].shape)   # float 0/1, as D* batches hold them
        subgoals = torch.full((len(episodes), horizon), NO_SUBGOAL, dtype = torch.long)
        optimal = torch.zeros(len(episodes), horizon, len(first[2]), dtype = torch.bool)
        failing = torch.zeros_like(optimal)
        for b, steps in enumerate(episodes):
            for t, (state, subgoal, opt, fail) in enumerate(steps):
                observations[b, t], subgoals[b, t] = state, int(subgoal)
                optimal[b, t], failing[b, t] = torch.as_tensor(opt), torch.as_tensor(fail)
        batch = DemoBatch(observations, torch.zeros_like(subgoals), subgoals, torch.zeros_like(subgoals, dtype = torch.bool), lens)
        return batch, optimal, failing


@torch.no_grad()
def off_expert(model, controller, batch: DemoBatch, optimal: torch.Tensor, failing: torch.Tensor) -> tuple[float, float]:
    """Mean probability of an optimal and of a failing move over the visited steps, with `controller` at the cut."""
    probs = control.controlled_logits(model, controller, batch).softmax(dim = -1)
    mask = lens_to_mask(batch.episode_lens, probs.shape[1])
    return ((probs * optimal).sum(-1)[mask].mean().item(), (probs * failing).sum(-1)[mask].mean().item())


@torch.no_grad()
def on_expert(model, controller, streams) -> tuple[float, float]:
    """D* action NLL and mean |U e| / |e| over the valid steps of `streams` (precomputed batches)."""
    nll, gain, steps = 0., 0., 0
    for batch, stream in streams:
        mask = lens_to_mask(batch.episode_lens, stream.shape[1])
        count = mask.sum().item()
        nll += control.controlled_nll(model, controller, batch, stream).item() * count
        change = controller(stream, control.step_labels(batch)) - stream
        gain += (change.norm(dim = -1) / stream.norm(dim = -1).clamp(min = 1e-6))[mask].sum().item()
        steps += count
    return nll / steps, gain / steps


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n')[0])
    parser.add_argument('run_dir', type = Path, help = 'a pinpad run folder whose discover phase has run')
    parser.add_argument('--controllers', type = Path, required = True, help = 'a run folder whose control phase has run on the same base')
    parser.add_argument('--task', default = None, help = "held-out task, e.g. ABC (default: the run's --rl.task)")
    parser.add_argument('--episodes', type = int, default = 1_000, help = 'episodes per success row')
    parser.add_argument('--visit-episodes', type = int, default = 256, help = "episodes whose states are scored off the expert's")
    parser.add_argument('--dstar-batches', type = int, default = 16, help = 'D* batches (of --control.batch_size episodes) scored on the expert')
    parser.add_argument('--fit-steps', type = int, default = 300, help = 'AdamW steps of the fitted codes on D*')
    parser.add_argument('--fit-lr', type = float, default = 1e-2, help = 'their learning rate')
    parser.add_argument('--threads', type = int, default = 1, help = 'torch threads')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config, seed, model, _ = load(args.run_dir)
    if args.task is not None:
        config = replace(config, rl = replace(config.rl, task = args.task))
    adapter = pinpad_adapter().for_config(config)
    make_envs = adapter.make_envs((adapter.post_task,))
    _, _, controlled_model, _ = load(args.controllers)
    if not same_weights(controlled_model, model):
        raise SystemExit(f"{args.controllers}: its base model differs from {args.run_dir}'s")
    discovered = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    if not isinstance(discovered.code, GaussianCode):
        raise SystemExit(f'{args.run_dir}: expected Gaussian codes, got {type(discovered.code).__name__}')
    demos = data.load(args.run_dir / 'data', 'discovery')
    with seeded(seed, torch.device('cpu')):   # the mean codes are built from sampled proposals
        codes = steering.subgoal_codes(model, discovered, demos, pinpad_adapter().num_subgoals, 'cpu')
    streams = discover.precompute(model, demos, config.control.batch_size, seed, 'cpu')
    fitted, _ = fit_codes(model, discovered, streams, codes, config, seed, args.fit_steps, args.fit_lr)
    rows = {'controllers': SubgoalController.init_and_load(args.controllers / 'control' / 'controller.pt').eval(),
            'mean codes': SubgoalCodes(discovered, codes), 'fitted codes': SubgoalCodes(discovered, fitted)}

    env = make_envs(args.visit_episodes)
    visits = Visits(env)
    with seeded(seed, torch.device('cpu')):
        run_episodes(model, env, range(args.visit_episodes), recorder = visits,
                     intervention = partial(control.subgoal_intervention(rows['controllers']), env))
    visited = visits.batch()

    print(f"{'':14s} {'success':>8s} {'D* NLL':>7s} {'|Ue|/|e|':>8s} {'p(optimal)':>10s} {'p(failing)':>10s}   "
          f"(off the expert: {len(visited[0].episode_lens)} episodes, {visited[0].episode_lens.sum().item()} steps under the controllers)")
    for name, controller in rows.items():
        success = evaluate(model, make_envs, args.episodes, seed = final_eval_seed(seed), batch_size = config.rl.num_envs,
                           intervention = control.subgoal_intervention(controller)).success
        nll, gain = on_expert(model, controller, streams[:args.dstar_batches])
        p_optimal, p_failing = off_expert(model, controller, *visited)
        print(f'{name:14s} {success:8.3f} {nll:7.3f} {gain:8.3f} {p_optimal:10.3f} {p_failing:10.3f}', flush = True)


if __name__ == '__main__':
    main()
