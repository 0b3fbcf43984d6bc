"""One rank of the 2-process CPU (gloo) job that tests/test_distributed.py starts with torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT

Each rank runs every check below and saves what it saw to OUT/rank<r>.pt; the test
compares that with the same calls in one process (the functions here take the process).
"""
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from metacontroller import MetaController, Transformer, distributed
from metacontroller.distributed import Process, adamw
from metacontroller.pipeline import data, discover, pretrain
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.cli import main
from metacontroller.pipeline.config import smoke_config
from metacontroller.pipeline.models import build_meta_controller, build_transformer
from metacontroller.rl import RLConfig, train_internal_rl
from metacontroller.rl.abstract_env import AbstractBatch
from metacontroller.rl.rollout import Episodes
from metacontroller.rl.trainer import policy_update, run_training, trajectory_advantages

# rank 0's four episodes: one success; rank 1's: all succeed, so alone it would see no signal at all
CRAFTED_RETURNS = torch.tensor([1., 0., 0., 0., 1., 1., 1., 1.])
STEPS = 10   # optimiser steps of the loss-matching checks


def advantages_seen(process: Process) -> torch.Tensor:
    """The advantages `run_training` hands this rank's update for one batch with CRAFTED_RETURNS (by env seed)."""
    seen = []

    def collect(seeds):
        n = len(seeds)
        return SimpleNamespace(episodes = Episodes(CRAFTED_RETURNS[list(seeds)], *torch.ones(3, n, dtype = torch.long)))

    def update(_batch, advantages):
        seen.append(advantages)
        return 0.

    config = RLConfig(num_envs = len(CRAFTED_RETURNS), total_episodes = len(CRAFTED_RETURNS), eval_every = None)
    run_training(collect, update, lambda: None, torch.nn.Linear(1, 1), config, seed = 0, progress = False, desc = '', process = process)
    return seen[0]


def policy_after_update(process: Process) -> dict:
    """Policy weights after one PPO update (2 epochs) on this rank's part of a fixed batch of 6 trajectories
    whose decision counts differ, so that ranks hold different numbers of decision steps."""
    torch.manual_seed(0)
    meta = MetaController(16, dim_meta_controller = 8, dim_latent = 3, dim_encoder_hidden = 16, dim_hypernetwork_hidden = 8,
                          hypernetwork_low_rank = 4, dim_policy = 16)
    streams, latents = torch.randn(6, 5, 16), torch.randn(6, 5, 3)
    decisions = torch.tensor([5, 1, 3, 2, 4, 5])
    with torch.no_grad():
        log_probs = meta.log_prob(meta.policy(streams), latents)
    episodes = Episodes(torch.tensor([1., 0., 0., 1., 0., 0.]), decisions, decisions, decisions)
    advantages = trajectory_advantages(episodes.returns)

    mine = process.shard(len(decisions))
    batch = AbstractBatch(streams[mine], latents[mine], log_probs[mine], torch.ones_like(log_probs[mine]), torch.zeros_like(log_probs[mine]),
                          decisions[mine], Episodes(*(field[mine] for field in episodes)))
    config = RLConfig(num_envs = len(decisions), lr = 1e-2)
    policy_update(meta, batch, advantages[mine], adamw(meta.policy.parameters(), config.lr, config.weight_decay, config.betas), config, process)
    return meta.policy.state_dict()


def pretrain_trace(run_dir: Path, process: Process) -> list[float]:
    config = smoke_config()
    torch.manual_seed(1)
    model = build_transformer(pinpad_adapter(), config.model)
    return pretrain.train(model, data.load(run_dir / 'data', 'pretrain'), replace(config.pretrain, steps = STEPS), 0, 'cpu', False, process)


def discover_run(run_dir: Path, process: Process) -> tuple[list, dict]:
    """Discovery on the pipeline's base model: the (nll, kl) trace and the trained weights."""
    config = replace(smoke_config().discovery, steps = STEPS)
    model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
    streams = discover.precompute(model, data.load(run_dir / 'data', 'discovery'), config.batch_size, 0, 'cpu', process)
    torch.manual_seed(2)
    meta = build_meta_controller(model.dim, config)
    trace = discover.train(model, meta, streams, config.alpha, config, 0, False, process)
    return trace, meta.state_dict()


def evolution(process: Process):
    """Two generations of ES (population 2, mirrored) on a tiny model: the curve and the evolved policy."""
    adapter = pinpad_adapter()
    config = smoke_config()
    torch.manual_seed(3)
    model = build_transformer(adapter, config.model).eval()
    meta = build_meta_controller(model.dim, config.discovery).eval()
    rl = RLConfig(algorithm = 'es', num_envs = 4, total_episodes = 32, es_population = 2, es_fitness_episodes = 4,
                  eval_every = 16, eval_episodes = 4, max_steps = 8)
    result = train_internal_rl(model, meta, adapter.make_envs((adapter.post_task,)), rl, seed = 0, progress = False, process = process)
    return dict(curve = result.curve, evals = result.evals, raw_steps = result.raw_steps, policy = result.module.policy.state_dict())


if __name__ == '__main__':
    out = Path(sys.argv[1])
    process = distributed.setup('cpu')
    assert process.world_size == 2, process.world_size
    seen = dict(advantages = advantages_seen(process), policy = policy_after_update(process), evolution = evolution(process))
    run_dir = out / 'run'
    main(pinpad_adapter(), ['--preset', 'smoke', '--run-dir', str(run_dir), '--no-progress', '--threads', '1'])
    seen['pretrain_trace'] = pretrain_trace(run_dir, process)
    seen['discover_trace'], seen['discover_weights'] = discover_run(run_dir, process)
    torch.save(seen, out / f'rank{process.rank}.pt')
