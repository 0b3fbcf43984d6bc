"""What internal RL loses against the ground-truth controllers: the codes, the switch timing, or the choices? (issue 15)

On the run's held-out task and its final-evaluation episode seeds, with sampled raw actions throughout
(`--greedy-actions`: argmax ones):

1. `controllers`: the `control` phase's ground-truth controllers, switched by the live subgoal (`--controllers`);
2. `codes, live switch`: the discovered decoder with each subgoal's mean code (the steering check's: the mean
   z of that subgoal's steps in D*), switched by the live subgoal: right choice, right timing;
3. `codes, β switch`: the same codes, but a new code is taken only where the discovered switching unit fires
   (β ≥ 0.5), and it is then the live subgoal's: right choice, learned timing;
4. `policy`: the trained internal-RL policy (the run's `rl/meta_controller.pt`): learned timing and choices;
5. `policy's codes, live switch`: the policy's held code averaged over its steps in each live subgoal (row 4's
   episodes), switched by the live subgoal: one fixed code per subgoal, where RL put it;
6. `policy's codes, β switch`: the same codes, taken where the switching unit fires, as in row 3;
7. `fitted codes, live switch`: one code per subgoal trained on D* through the discovered decoder (held frozen)
   by action NLL, as the `control` phase trains its controllers: the best single code per subgoal by NLL.

For the rows switched by β, over the live steps: decisions per subgoal entered, the share of subgoal
starts with a decision within one step, and the share of steps whose held code is nearest (of the K
mean codes) to the live subgoal's. Pinpad runs with Gaussian codes only. About 6 minutes on one thread (1,000 episodes a row).

    python docs/experiments/rl_gap.py runs/study/ratio03_ABC_s0 --controllers runs/study/control_ABC
"""
import argparse
import copy
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from policy_noise import load, same_weights
from torch import nn

from metacontroller import MetaController
from metacontroller.codes import GaussianCode
from metacontroller.pipeline import control, data, discover, steering
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.rl.evaluate import evaluate
from metacontroller.rl.rollout import Episodes, decision_mask, run_episodes
from metacontroller.rl.seeds import final_eval_seed, seeded
from metacontroller.subgoal_controller import SubgoalController


class LiveSubgoalPolicy(nn.Module):
    """Stands in for the internal-RL policy: at every decision it proposes the code of each slot's live
    subgoal (a Gaussian of negligible variance). It reads the env's slots, so the batch must keep them all."""

    def __init__(self, codes: torch.Tensor, env):
        super().__init__()
        self.codes, self.env, self.dim_hidden = codes, env, 1

    def step(self, stream: torch.Tensor, hidden):
        labels = torch.as_tensor(np.maximum(self.env.subgoal, 0))   # a finished slot reads -1; its action is ignored
        mean = self.codes[labels]
        return torch.stack((mean, torch.full_like(mean, -30.)), dim = -1), stream.new_zeros(len(stream), 1)


class Timing:
    """A recorder over one batch: decisions against the live subgoal, step by step (it reads the env's live state)."""

    def __init__(self, env, codes: torch.Tensor):
        self.env, self.codes = env, codes
        self.last = np.full(env.num_envs, -1)                      # each slot's subgoal at its previous step
        self.decided = np.zeros(env.num_envs, dtype = bool)        # a decision at the slot's previous step
        self.unmet = np.zeros(env.num_envs, dtype = bool)          # a subgoal started there with no decision at or before it
        self.counts = Counter()
        self.code_sums = torch.zeros_like(codes)                     # (K, n_z) held codes summed per live subgoal
        self.code_counts = torch.zeros(len(codes))

    def record(self, step):
        rows, live = step.rows.numpy(), step.live.numpy()
        label = np.asarray(self.env.subgoal)[rows]
        decided = decision_mask(step.meta, step.live).numpy()
        started = live & (label != self.last[rows])
        met = started & (decided | self.decided[rows])             # a decision at the start or one step before it
        nearest = torch.cdist(step.meta.latent.float(), self.codes).argmin(dim = -1).numpy()
        self.counts.update(starts = started.sum(), decisions = decided.sum(), steps = live.sum(),
                           on_time = met.sum() + (self.unmet[rows] & decided).sum(),   # or one step after it
                           right_code = ((nearest == label) & live).sum())
        held = torch.as_tensor(live)
        self.code_sums.index_add_(0, torch.as_tensor(label[live]), step.meta.latent.float()[held])
        self.code_counts += torch.bincount(torch.as_tensor(label[live]), minlength = len(self.codes))
        self.unmet[rows] = started & ~met
        self.decided[rows] = decided
        self.last[rows] = np.where(live, label, self.last[rows])


def timing_summary(counts: Counter) -> str:
    return (f"{counts['decisions'] / counts['starts']:.2f} decisions per subgoal entered, {counts['on_time'] / counts['starts']:.2f} "
            f"of subgoal starts with a decision within a step, held code nearest the live subgoal's {counts['right_code'] / counts['steps']:.2f} of steps")


class SubgoalCodes(nn.Module):
    """One code per subgoal through the discovered decoder, with the `control` phase's controller interface
    (switched by the live subgoal with `subgoal_intervention`, trained with `control.train`): only the codes
    are parameters, the decoder stays as discovered."""

    def __init__(self, meta: MetaController, codes: torch.Tensor):
        super().__init__()
        self.codes, self.num_subgoals = nn.Parameter(codes.clone()), len(codes)
        self.control, self.scale = meta.decoder.control, meta.control_scale   # a bound method: not a submodule, not trained

    def forward(self, stream: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.control(self.codes[labels].to(stream.dtype), stream, self.scale)


class Row(NamedTuple):
    name: str
    success: float
    detail: str = ''


def timed(model, meta, make_envs, codes, episodes: int, batch: int, seed: int, greedy_actions: bool) -> tuple[float, str, torch.Tensor]:
    """Success, decision timing and the mean held code per live subgoal (K, n_z) of `meta` on the evaluation's
    env seeds. A LiveSubgoalPolicy reads the env's slots, so then the batch keeps its finished rows."""
    parts, counts, sums, held = [], Counter(), torch.zeros_like(codes), torch.zeros(len(codes))
    keep_rows = isinstance(meta.policy, LiveSubgoalPolicy)
    with seeded(seed, torch.device('cpu')):
        for first in range(seed, seed + episodes, batch):
            size = min(batch, seed + episodes - first)
            env = make_envs(size)
            if keep_rows:
                meta.policy.env = env
            log = Timing(env, codes)
            parts.append(run_episodes(model, env, range(first, first + size), meta_controller = meta, recorder = log, greedy_actions = greedy_actions,
                                      drop_finished = not keep_rows))
            counts, sums, held = counts + log.counts, sums + log.code_sums, held + log.code_counts
    success = Episodes(*(torch.cat(field) for field in zip(*parts))).success.float().mean().item()
    return success, timing_summary(counts), sums / held.clamp(min = 1)[:, None]


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n')[0])
    parser.add_argument('run_dir', type = Path, help = 'a pinpad run folder whose rl phase has run')
    parser.add_argument('--controllers', type = Path, help = 'a run folder whose control phase has run on the same base and task')
    parser.add_argument('--episodes', type = int, help = "episodes per row (default: the run's --rl.final_eval_episodes)")
    parser.add_argument('--fit-steps', type = int, default = 300, help = 'AdamW steps of the fitted codes on D*')
    parser.add_argument('--fit-lr', type = float, default = 1e-2)
    parser.add_argument('--greedy-actions', action = 'store_true', help = 'argmax raw actions in every row (default: sampled)')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    if not (args.run_dir / 'rl' / 'meta_controller.pt').exists():
        raise SystemExit(f'{args.run_dir}: expected rl/meta_controller.pt (run the rl phase first)')
    torch.set_num_threads(args.threads)

    config, seed, model, make_envs = load(args.run_dir)
    discovered = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    trained = MetaController.init_and_load(args.run_dir / 'rl' / 'meta_controller.pt').eval()
    if not isinstance(discovered.code, GaussianCode):
        raise SystemExit(f'{args.run_dir}: expected Gaussian codes, got {type(discovered.code).__name__}')
    demos = data.load(args.run_dir / 'data', 'discovery')
    with seeded(seed, torch.device('cpu')):   # the mean codes are built from sampled proposals
        codes = steering.subgoal_codes(model, discovered, demos, pinpad_adapter().num_subgoals, 'cpu')
    episodes, batch, first = args.episodes or config.rl.final_eval_episodes, config.rl.num_envs, final_eval_seed(seed)

    def live_switch(name, codes):
        success = evaluate(model, make_envs, episodes, seed = first, batch_size = batch, greedy_actions = args.greedy_actions,
                           intervention = control.subgoal_intervention(SubgoalCodes(discovered, codes))).success
        return Row(name, success)

    rows = []
    if args.controllers is not None:
        _, _, controlled_model, _ = load(args.controllers)
        if not same_weights(controlled_model, model):
            raise SystemExit(f"{args.controllers}: its base model differs from {args.run_dir}'s")
        controller = SubgoalController.init_and_load(args.controllers / 'control' / 'controller.pt').eval()
        rows.append(Row('controllers', evaluate(model, make_envs, episodes, seed = first, batch_size = batch, greedy_actions = args.greedy_actions,
                                                intervention = control.subgoal_intervention(controller)).success))
    rows.append(live_switch('codes, live switch', codes))
    oracle = copy.deepcopy(discovered)
    oracle.policy = LiveSubgoalPolicy(codes, None)
    success, timing, _ = timed(model, oracle, make_envs, codes, episodes, batch, first, args.greedy_actions)
    rows.append(Row('codes, β switch', success, timing))
    success, timing, policy_codes = timed(model, trained, make_envs, codes, episodes, batch, first, args.greedy_actions)
    rows.append(Row('policy', success, timing))
    rows.append(live_switch("policy's codes, live switch", policy_codes))
    oracle.policy = LiveSubgoalPolicy(policy_codes, None)
    success, timing, _ = timed(model, oracle, make_envs, codes, episodes, batch, first, args.greedy_actions)
    rows.append(Row("policy's codes, β switch", success, timing))
    for row in rows:
        print(f'{row.name:30s} success {row.success:.3f}  {row.detail}', flush = True)

    fitted = SubgoalCodes(discovered.requires_grad_(False), codes)
    streams = discover.precompute(model, demos, config.control.batch_size, seed, 'cpu')
    trace = control.train(model, fitted, streams, replace(config.control, steps = args.fit_steps, lr = args.fit_lr), seed)
    row = live_switch('fitted codes, live switch', fitted.codes.detach())
    print(f'{row.name:30s} success {row.success:.3f}  D* action NLL {np.mean(trace[-50:]):.3f} after {args.fit_steps} steps', flush = True)


if __name__ == '__main__':
    main()
