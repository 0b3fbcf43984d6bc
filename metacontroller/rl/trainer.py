"""PPO/GRPO updates and the training loop shared by internal RL and its baselines (SPEC §4, paper Eq. 10).

Each update: collect N trajectories in one synchronous batch, give each the
advantage A = (R - mean R) / (std R + δ) over the batch (or over its seed
group), broadcast it to all of the trajectory's decision steps, and take
`epochs` passes of PPO-clip on the joint log-prob of z. No critic, no entropy
bonus. A batch whose returns are all equal carries no signal and is skipped
(with sparse rewards this is most early batches; stepping AdamW on a zero
gradient would still move the weights through its momentum).

With several processes, each rank rolls out its share of the batch's episodes;
the returns are gathered, so that the advantages (and the skip) use the mean and
std of the global batch, and the policy gradients are averaged over ranks.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from metacontroller.distributed import SINGLE, Process, adamw
from metacontroller.meta_controller import MetaController
from metacontroller.ppo import normalize_advantages
from metacontroller.progress import starting_weights
from metacontroller.rl.abstract_env import AbstractBatch, collect_abstract
from metacontroller.rl.config import EvalStats, RLConfig, RLResult
from metacontroller.rl.evaluate import evaluate
from metacontroller.rl.evolution import train_evolution
from metacontroller.rl.resume import LoopState, load_loop, save_loop
from metacontroller.rl.rollout import Episodes
from metacontroller.rl.seeds import episode_seeds, eval_seed, rank_seed, seeded
from metacontroller.transformer import Transformer


def trajectory_advantages(returns: Tensor, group_size: int | None = None, eps: float = 1e-3) -> Tensor:
    """(N,) returns -> (N,) advantages normalised over the batch, or within consecutive groups."""
    if group_size is None:
        return normalize_advantages(returns, eps)
    return torch.cat([normalize_advantages(group, eps) for group in returns.split(group_size)])


def ppo_epochs(loss_fn: Callable[[Tensor], Tensor], steps: Tensor, optimizer, params, config: RLConfig,
               process: Process = SINGLE) -> float:
    """`epochs` passes over the batch, each split into `minibatches` random sets of trajectories.
    steps: (N,) the steps each trajectory adds to its loss's mean, so that the ranks' losses combine
    into the mean over all ranks' steps. Returns the last loss, averaged so over ranks."""
    for _ in range(config.epochs):
        for rows in torch.randperm(len(steps), device = steps.device).chunk(config.minibatches):
            share = process.share(steps[rows].sum())
            loss = loss_fn(rows)
            process.optimizer_step(loss * share, optimizer, params, config.max_grad_norm)
    return process.mean(loss.detach() * share).item()


def policy_update(meta_controller: MetaController, batch: AbstractBatch, advantages: Tensor, optimizer, config: RLConfig,
                  process: Process = SINGLE) -> float:
    """PPO-clip on the causal policy, replayed over each trajectory's decision steps."""
    def loss_fn(rows):
        return meta_controller.policy_loss(*batch.policy_loss_args(advantages, rows), clip = config.clip)
    params = list(meta_controller.policy.parameters())
    return ppo_epochs(loss_fn, batch.decisions, optimizer, params, config, process)


def run_training(
    collect: Callable[[list[int]], object],
    update: Callable[[object, Tensor], float],
    evaluate_fn: Callable[[], EvalStats],
    module: nn.Module,
    config: RLConfig,
    seed: int,
    progress: bool,
    desc: str,
    process: Process = SINGLE,
    optimizer: torch.optim.Optimizer | None = None,
    progress_file: str | Path | None = None,
    fixed: tuple[nn.Module, ...] = (),
) -> RLResult:
    """The loop: collect a batch (anything with `.episodes`), update on its advantages, evaluate every
    `eval_every` episodes (never when None).
    The budget is spent in whole batches, so the last one may pass `total_episodes`.
    `collect` gets this rank's share of the batch's env seeds; `update`, the advantages of its episodes.
    With a `progress_file` path, the loop saves its progress there (`resume`) at each evaluation and at
    the end, and a run that finds one there goes on from it; `optimizer` is then the one `update` steps,
    and `fixed` the modules the run reads without training them (its progress needs the same weights)."""
    if progress_file is not None and optimizer is None:
        raise ValueError('a progress file needs the optimizer that update steps, to save and restore its state')
    device = next(module.parameters()).device
    mine = process.shard(config.num_envs)

    start = None if progress_file is None else starting_weights(module, *fixed)

    def save(state):
        if progress_file is not None:
            save_loop(progress_file, state, module, optimizer, config, seed, desc, start, process)

    with seeded(rank_seed(seed, process.rank), device):
        # restored inside the fork, so that the RNG goes on from where the saved run left it
        restored = None if progress_file is None else load_loop(progress_file, module, optimizer, config, seed, desc, start, process)
        state = restored or LoopState(next_eval = config.eval_every)
        bar = tqdm(total = config.total_episodes, initial = state.episodes, desc = desc, unit = 'ep',
                   disable = not (progress and process.is_main))
        while state.episodes < config.total_episodes:
            batch = collect(episode_seeds(seed, state.episodes, config.num_envs, config.group_size)[mine])
            ep: Episodes = batch.episodes.gather(process)   # the global batch, in seed order
            state.episodes += len(ep.returns)
            state.raw_steps += int(ep.lengths.sum())
            state.rewarded += int(ep.success.sum())
            success = ep.success.float().mean().item()
            state.curve.append((state.episodes, success))
            state.raw_curve.append((state.raw_steps, success))

            # rewarded: every successful training episode so far, the signal a sparse task is short of
            postfix = dict(success = f'{success:.2f}', rewarded = state.rewarded)
            if ep.returns.std() > 0:
                advantages = trajectory_advantages(ep.returns, config.group_size, config.advantage_eps)[mine]
                postfix['loss'] = f'{update(batch, advantages.to(device)):.3f}'
            due, ended = state.next_eval is not None and state.episodes >= state.next_eval, state.episodes >= config.total_episodes
            if due or (ended and state.next_eval is not None):
                state.evals.append((state.episodes, evaluate_fn()))
                state.end_eval = not due   # the schedule stays put: a run continued to a larger budget keeps it
                if due:
                    state.next_eval += config.eval_every
                postfix['eval'] = f'{state.evals[-1][1].success:.2f}'
            if due or ended:
                save(state)
            bar.set_postfix(postfix)
            bar.update(len(ep.returns))
    bar.close()

    final = state.evals[-1][1].success if state.evals else state.curve[-1][1]
    return RLResult(state.curve, state.evals, final, state.episodes, state.raw_steps, module, state.raw_curve)


def train_internal_rl(
    model: Transformer,
    meta_controller: MetaController,
    make_envs: Callable[[int], object],
    config: RLConfig,
    seed: int = 0,
    force_beta: float | None = None,
    progress: bool = True,
    process: Process = SINGLE,
    progress_file: str | Path | None = None,
) -> RLResult:
    """Internal RL: train only the causal policy of a copy of `meta_controller`, acting on
    the abstract timescale; base model, switching unit, decoder and history stay frozen.
    force_beta = 1.0 gives the β ≡ 1 baseline (the policy acts at every raw step).
    The caller's metacontroller is left untouched; the trained copy is `result.module`.
    With a `progress_file` path the run saves its progress there and goes on from it (`run_training`).
    With a multi-process `process`, every rank calls this with the same arguments."""
    if not isinstance(config, RLConfig):
        raise TypeError(f'config must be an RLConfig, got {type(config).__name__}')
    model.check_meta_controller(meta_controller)
    if config.algorithm == 'es':
        if progress_file is not None:
            raise ValueError("progress files are for PPO runs; algorithm = 'es' keeps none")
        return train_evolution(model, meta_controller, make_envs, config, seed, force_beta, progress, process)

    device = next(model.parameters()).device
    meta = copy.deepcopy(meta_controller).to(device)
    process.broadcast_parameters(meta)
    optimizer = adamw(meta.policy.parameters(), config.lr, config.weight_decay, config.betas)
    env = make_envs(local_num_envs(config, process))

    def collect(seeds):
        return collect_abstract(model, meta, env, seeds, force_beta, max_steps = config.max_steps)

    def update(batch, advantages):
        return policy_update(meta, batch, advantages, optimizer, config, process)

    def evaluate_fn():
        return evaluate(model, make_envs, config.eval_episodes, meta_controller = meta, seed = eval_seed(seed),
                        deterministic = config.eval_deterministic, force_beta = force_beta,
                        batch_size = config.num_envs, max_steps = config.max_steps, process = process)

    desc = 'internal RL' if force_beta is None else f'internal RL (β ≡ {force_beta:g})'
    return run_training(collect, update, evaluate_fn, meta, config, seed, progress, desc, process, optimizer, progress_file, (model,))


def local_num_envs(config: RLConfig, process: Process) -> int:
    """This rank's environments: its share of `num_envs`."""
    if config.num_envs < process.world_size:
        raise ValueError(f'num_envs ({config.num_envs}) must be at least the number of processes ({process.world_size})')
    mine = process.shard(config.num_envs)
    return mine.stop - mine.start
