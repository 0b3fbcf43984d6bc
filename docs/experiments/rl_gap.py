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
   by action NLL with the `control` phase's loss, from the mean codes (`--fit-steps` 300 at `--fit-lr` 1e-2,
   against the controllers' 1,500 at 1e-3): a good single code per subgoal by NLL, not provably the best.

The rows share the env seeds, not the torch noise (rows that sample latents or keep finished rows draw other
numbers): a success on 1,000 episodes has a standard error of about 0.016. For the rows switched by β, over
the live steps: decisions per subgoal entered, the share of subgoals after the first (whose decision β_1 = 1
forces) with a decision at their start or the next step, and the share of steps whose held code is nearest
(of the K mean codes) to the live subgoal's. Pinpad runs with Gaussian codes only. About 4 minutes on one
thread (1,000 episodes a row).

    python docs/experiments/rl_gap.py runs/study/ratio03_ABC_s0 --controllers runs/study/control_ABC
"""
import argparse
import copy
from collections import Counter
from dataclasses import replace
from pathlib import Path

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
        self.codes, self.env = codes, env
        self.dim_hidden = 1   # the metacontroller allocates the policy's state by it; this policy keeps none

    def step(self, stream: torch.Tensor, hidden):
        if len(stream) != self.env.num_envs:
            raise ValueError(f'the batch holds {len(stream)} rows but the env {self.env.num_envs} slots: run with drop_finished = False')
        labels = torch.as_tensor(np.maximum(self.env.subgoal, 0))   # a completed slot reads -1; its action is ignored
        mean = self.codes[labels]
        return torch.stack((mean, torch.full_like(mean, -30.)), dim = -1), stream.new_zeros(len(stream), 1)


class Timing:
    """A recorder over one batch: decisions against the live subgoal, step by step (it reads the env's live state)."""

    def __init__(self, env, codes: torch.Tensor):
        self.env, self.codes = env, codes
        self.last = np.full(env.num_envs, -1)                   # each slot's subgoal at its previous step (-1: none yet)
        self.pending = np.zeros(env.num_envs, dtype = bool)     # a subgoal started at the previous step, with no decision there
        self.counts = Counter()
        self.code_sums = torch.zeros_like(codes)                  # (K, n_z) held codes summed per live subgoal
        self.code_steps = torch.zeros(len(codes))

    def record(self, step):
        rows, live = step.rows.numpy(), step.live.numpy()
        label = np.asarray(self.env.subgoal)[rows]
        decided = decision_mask(step.meta, step.live).numpy()
        started = live & (label != self.last[rows])
        later = started & (self.last[rows] >= 0)                # not the first subgoal, whose decision β_1 = 1 forces
        nearest = torch.cdist(step.meta.latent.float(), self.codes).argmin(dim = -1).numpy()
        self.counts.update(starts = started.sum(), later_starts = later.sum(), decisions = decided.sum(), steps = live.sum(),
                           on_time = (later & decided).sum() + (self.pending[rows] & decided).sum(),   # at the start or the next step
                           right_code = ((nearest == label) & live).sum())
        live_labels = torch.as_tensor(label[live])
        self.code_sums.index_add_(0, live_labels, step.meta.latent.float()[torch.as_tensor(live)])
        self.code_steps += torch.bincount(live_labels, minlength = len(self.codes))
        self.pending[rows] = later & ~decided
        self.last[rows] = np.where(live, label, self.last[rows])


def timing_summary(counts: Counter) -> str:
    return (f"{counts['decisions'] / counts['starts']:.2f} decisions per subgoal entered; a decision at the start or the next step "
            f"of {counts['on_time'] / counts['later_starts']:.2f} of the subgoals after the first; held code nearest the live "
            f"subgoal's {counts['right_code'] / counts['steps']:.2f} of steps")


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


def timed(model, meta, make_envs, codes, episodes: int, batch: int, seed: int, greedy_actions: bool) -> tuple[float, str, torch.Tensor]:
    """Success, decision timing and the mean held code per live subgoal (K, n_z) of `meta` on the evaluation's
    env seeds. A LiveSubgoalPolicy reads the env's slots, so then the batch keeps its finished rows."""
    parts, counts, sums, steps = [], Counter(), torch.zeros_like(codes), torch.zeros(len(codes))
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
            counts, sums, steps = counts + log.counts, sums + log.code_sums, steps + log.code_steps
    success = Episodes(*(torch.cat(field) for field in zip(*parts))).success.float().mean().item()
    return success, timing_summary(counts), sums / steps.clamp(min = 1)[:, None]


def fit_codes(model, discovered: MetaController, streams, codes: torch.Tensor, config, seed: int, steps: int, lr: float):
    """Row 7's codes, trained from the mean codes by `control.train` (the control phase's loss, batches and weight
    decay; its steps and lr replaced): (K, n_z) codes and the D* action NLL of the last 50 steps."""
    discovered.requires_grad_(False)   # the decoder is not in the optimiser; this only skips its gradients
    fitted = SubgoalCodes(discovered, codes)
    trace = control.train(model, fitted, streams, replace(config.control, steps = steps, lr = lr), seed)
    return fitted.codes.detach(), float(np.mean(trace[-50:]))


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n')[0])
    parser.add_argument('run_dir', type = Path, help = 'a pinpad run folder whose rl phase has run')
    parser.add_argument('--controllers', type = Path, help = 'a run folder whose control phase has run on the same base and task')
    parser.add_argument('--episodes', type = int, help = "episodes per row (default: the run's --rl.final_eval_episodes)")
    parser.add_argument('--fit-steps', type = int, default = 300, help = 'AdamW steps of the fitted codes on D*')
    parser.add_argument('--fit-lr', type = float, default = 1e-2, help = 'their learning rate')
    parser.add_argument('--greedy-actions', action = 'store_true', help = 'argmax raw actions in every row (default: sampled)')
    parser.add_argument('--threads', type = int, default = 1, help = 'torch threads')
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

    def live_switch(controller) -> float:
        return evaluate(model, make_envs, episodes, seed = first, batch_size = batch, greedy_actions = args.greedy_actions,
                        intervention = control.subgoal_intervention(controller)).success

    def at_beta(meta) -> tuple[float, str, torch.Tensor]:
        return timed(model, meta, make_envs, codes, episodes, batch, first, args.greedy_actions)

    def show(name: str, success: float, detail: str = ''):
        print(f'{name:30s} success {success:.3f}  {detail}', flush = True)

    if args.controllers is not None:
        _, _, controlled_model, _ = load(args.controllers)
        if not same_weights(controlled_model, model):
            raise SystemExit(f"{args.controllers}: its base model differs from {args.run_dir}'s")
        show('controllers', live_switch(SubgoalController.init_and_load(args.controllers / 'control' / 'controller.pt').eval()))
    oracle = copy.deepcopy(discovered)
    show('codes, live switch', live_switch(SubgoalCodes(discovered, codes)))
    oracle.policy = LiveSubgoalPolicy(codes, None)
    show('codes, β switch', *at_beta(oracle)[:2])
    success, timing, policy_codes = at_beta(trained)
    show('policy', success, timing)
    show("policy's codes, live switch", live_switch(SubgoalCodes(discovered, policy_codes)))
    oracle.policy = LiveSubgoalPolicy(policy_codes, None)
    show("policy's codes, β switch", *at_beta(oracle)[:2])
    streams = discover.precompute(model, demos, config.control.batch_size, seed, 'cpu')
    fitted, nll = fit_codes(model, discovered, streams, codes, config, seed, args.fit_steps, args.fit_lr)
    show('fitted codes, live switch', live_switch(SubgoalCodes(discovered, fitted)), f'D* action NLL {nll:.3f} after {args.fit_steps} steps')


if __name__ == '__main__':
    main()
