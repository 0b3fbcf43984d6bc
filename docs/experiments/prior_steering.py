"""Where does a code drawn from the prior send the agent? (issue 15: why ABC is not learned)

Internal RL's policy starts at the N(0, I) prior the metacontroller was regularised towards, so its
first abstract actions are prior samples. A sparse task is found only if such samples already head
to subgoals: a prior sample that names a colour is a useful random action, one that names nothing
is not. Each of `--codes` samples z ~ N(0, I) is held from the first step of `--episodes` fresh
episodes (as the steering check holds a subgoal's mean code), and the first subgoal entered is
counted. Reported per code set:

- commitment: how often a code heads to the subgoal it prefers, cross-validated (the preferred
  subgoal read off the even episodes, the rate counted on the odd ones, so that noise does not pass
  for preference), over the episodes that enter a subgoal at all: 0.25 if codes do not prefer a
  subgoal, 1 if each always heads to the same one;
- none: how often no subgoal is entered at all;
- the subgoals the codes prefer (how many codes have each as their most entered).

The references: the subgoals' mean codes (as in the steering check, from the held-out D*
episodes), and z = 0, the prior's mean.

Then the untrained policy itself, in closed loop on a held-out task (`--task`, default AB): an
episode succeeds only if every colour of the task is visited in order, so success is the product of
the colour-to-colour links. For each link it counts how often it holds, and whether the policy took
a decision (a new prior sample) just after the previous colour: a switch in the middle of a pair
hands the agent a fresh random code where the base alone would finish the pair. The same episodes run
once more with each decision drawn uniformly from the subgoals' mean codes instead of the prior: the
success a prior whose samples each named a subgoal would give internal RL at its start, through the
same decoder and switch. Gaussian codes only (the paper's; `--discovery.latent_code gaussian`).

    python docs/experiments/prior_steering.py --run-dir runs/study/rot01
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from metacontroller import MetaController, Transformer
from metacontroller.codes import GaussianCode
from metacontroller.envs.pinpad import task_from_subgoals
from metacontroller.pipeline import data
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.steering import first_subgoals, holding, subgoal_codes
from metacontroller.rl.rollout import decision_mask, run_episodes
from metacontroller.rl.seeds import eval_seed, seeded


def first_entered_per_code(model, meta, codes: torch.Tensor, make_envs, episodes: int, num_subgoals: int, seed: int) -> np.ndarray:
    """(M, E): per code, the first subgoal entered in each of `episodes` fresh episodes (K: none).
    All codes run in one batch, each on the same env seeds."""
    per_slot = codes.repeat_interleave(episodes, dim = 0)                        # (M * E, n_z)
    seeds = list(range(seed, seed + episodes)) * len(codes)
    first = first_subgoals(model, make_envs(len(seeds)), seeds, seed, holding(meta, per_slot))
    return np.where(first >= 0, first, num_subgoals).reshape(len(codes), episodes)


def subgoal_counts(first: np.ndarray, k: int) -> np.ndarray:
    """(M, E) first subgoals (k: none) -> (M, k + 1) counts per code."""
    return np.stack([np.bincount(row, minlength = k + 1) for row in first])


def summary(name: str, first: np.ndarray, names: str) -> str:
    k = len(names)
    even, odd = subgoal_counts(first[:, 0::2], k)[:, :k], first[:, 1::2]
    seen = even.sum(-1) > 0                                                     # codes that entered a subgoal in the even episodes
    preferred = even.argmax(-1)
    entered = odd[seen] < k
    commitment = (odd[seen] == preferred[seen, None])[entered].mean() if entered.any() else float('nan')
    favourites = np.bincount(subgoal_counts(first, k)[:, :k].argmax(-1), minlength = k)
    return (f'{name:14s} commitment {commitment:.3f}, none {(first == k).mean():.3f}, '
            f'preferred by ' + ' '.join(f'{n} {c}' for n, c in zip(names, favourites)))


class Trace:
    """Per step and slot: the task progress, and whether the policy decided.
    Wraps the batched env (for `progress`) and is the rollout's recorder (for decisions)."""

    def __init__(self, env):
        self.env, self.progress, self.decided = env, [], []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        self.progress.append(info['progress'].copy())
        return obs, reward, terminated, truncated, info

    def record(self, step):
        self.decided.append(step.scatter(decision_mask(step.meta, step.live)).numpy())

    def arrays(self):
        return (np.stack(x, axis = 1) for x in (self.progress, self.decided))   # (N, T) each


def closed_loop(model, meta, env, episodes: int, task: tuple[int, ...], seed: int, greedy_actions: bool = False) -> str:
    """The task's colour-by-colour links under the untrained policy (prior samples at every decision):
    for each colour k, how often it is visited once colour k - 1 was, split by whether the policy decided
    within 2 steps of that visit (decisions come before env steps t + 1 and t + 2 of a visit at step t)."""
    trace = Trace(env)
    with seeded(seed, torch.device('cpu')):
        out = run_episodes(model, trace, range(seed, seed + episodes), meta_controller = meta, recorder = trace,
                           greedy_actions = greedy_actions)
    progress, decided = trace.arrays()
    reached = progress.max(axis = 1)                                            # (N,) colours visited in order
    lines = [f'success {out.success.float().mean():.3f}, switches per episode {out.switches.float().mean():.2f}',
             f'colour 1 of {len(task)} ({task[0]}): {np.mean(reached >= 1):.3f}']
    for k in range(2, len(task) + 1):
        rows = np.flatnonzero(reached >= k - 1)
        if len(rows) == 0:
            break
        visit = (progress[rows] >= k - 1).argmax(axis = 1)                       # step of colour k - 1's visit
        timely = np.array([decided[i, t + 1:t + 3].any() for i, t in zip(rows, visit)])
        hit = reached[rows] >= k
        lines.append(f'colour {k} ({task[k - 1]}) after {k - 1}: {hit.mean():.3f} of {len(rows)}; a decision within 2 steps '
                     f'{timely.mean():.3f}; visited after one {rate(hit, timely)}, without {rate(hit, ~timely)}')
    return '\n  '.join(lines)


def rate(hit: np.ndarray, where: np.ndarray) -> str:
    return f'{hit[where].mean():.3f} ({where.sum()})' if where.any() else '- (0)'


def open_loop(model, meta, adapter, heldout, args):
    """Prior samples, the subgoals' mean codes and z = 0, each held from the first step."""
    make_envs, names, k = adapter.make_envs(adapter.pretraining_tasks), adapter.subgoal_names, adapter.num_subgoals
    seed = eval_seed(args.seed)
    torch.manual_seed(args.seed)
    prior = first_entered_per_code(model, meta, torch.randn(args.codes, meta.dim_latent), make_envs, args.episodes, k, seed)
    means = first_entered_per_code(model, meta, subgoal_codes(model, meta, heldout, k, 'cpu'), make_envs, args.episodes, k, seed)
    zero = first_entered_per_code(model, meta, torch.zeros(1, meta.dim_latent), make_envs, args.episodes, k, seed)
    print(summary('prior samples', prior, names))
    print(summary('mean codes', means, names) + f'; hit rate {np.mean(means == np.arange(k)[:, None]):.3f}')
    print(summary('z = 0', zero, names))


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('--run-dir', type = Path, required = True, help = 'a pinpad run folder whose discover phase has run')
    parser.add_argument('--codes', type = int, default = 64, help = 'prior samples')
    parser.add_argument('--episodes', type = int, default = 32, help = 'fresh episodes per code')
    parser.add_argument('--task', default = 'AB', help = 'held-out task for the closed-loop part (subgoal names, at least 2)')
    parser.add_argument('--rollouts', type = int, default = 1024, help = 'closed-loop episodes')
    parser.add_argument('--greedy-actions', action = 'store_true',
                        help = "closed loop with the argmax raw action instead of a sample from the base (not the paper's Algorithm 1)")
    parser.add_argument('--seed', type = int, default = 0)
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        task = task_from_subgoals(args.task)
    except ValueError as error:
        parser.error(f'--task: {error}')
    if len(args.task) < 2:
        parser.error(f'--task needs at least 2 subgoals, got {args.task!r}')
    adapter = pinpad_adapter()
    model = Transformer.init_and_load(args.run_dir / 'pretrain' / 'model.pt').eval()
    meta = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    if not isinstance(meta.code, GaussianCode):
        parser.error(f'prior samples are drawn from N(0, I): the metacontroller must have a Gaussian code, got {type(meta.code).__name__}')
    heldout = data.load(args.run_dir / 'data', 'heldout')
    open_loop(model, meta, adapter, heldout, args)
    env = adapter.make_envs((task,))(args.rollouts)
    print(f'untrained policy on {args.task}:\n  ' + closed_loop(model, meta, env, args.rollouts, task, eval_seed(args.seed), args.greedy_actions))
    codes = subgoal_codes(model, meta, heldout, adapter.num_subgoals, 'cpu')
    meta.code.sample = lambda dist, deterministic = False: codes[torch.randint(len(codes), dist.shape[:1])]
    print(f'a uniform choice among the mean codes at each decision, on {args.task}:\n  '
          + closed_loop(model, meta, env, args.rollouts, task, eval_seed(args.seed), args.greedy_actions))


if __name__ == '__main__':
    main()
