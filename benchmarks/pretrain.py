"""Pretraining throughput at the default config, ours against the plain path, in one run.

    python -m benchmarks.pretrain [--steps 16] [--threads 1] [--bf16]

Ours is `pretrain.train_step` as the pipeline runs it: sparse observation
embeddings, fused bodies, no next-observation readout at λ = 0, fused AdamW
(and bf16 autocast with --bf16). The plain path is the step as it was: dense
embeddings, x-transformers' einsum attention, fp32, the readout computed,
AdamW one tensor at a time. Both
train copies of one model on the same length-bucketed pinpad batches, one
step each in turn, so that load from other processes falls on both alike;
the ratio is of their summed times. A breakdown times each part of the step
(forward + backward) alone on one batch the same way. Last, the roof: our
step's matmul FLOPs over the best matmul rate this CPU reaches, the least time
any fp32 step on these batches could take.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torch_einops_utils import lens_to_mask

from metacontroller.distributed import adamw, native_bf16
from metacontroller.fast_train import plain_paths
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.data import bucketed_batches
from metacontroller.pipeline.models import build_transformer
from metacontroller.pipeline.pretrain import train_step


def plain_step(model, batch, optimizer, params, config):
    """The training step before the fast paths (run it inside `plain_paths()`)."""
    losses = model(batch.observations, batch.actions, episode_lens = batch.episode_lens)
    loss = losses.action + config.state_loss_weight * losses.state
    optimizer.zero_grad(set_to_none = True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parts(model, batch, optimizer) -> dict:
    """name -> function running that part of a step (forward and backward; the update) on its real input."""
    obs, actions, lens = batch.observations, batch.actions, batch.episode_lens
    mask = lens_to_mask(lens, obs.shape[1])
    with torch.no_grad():
        tokens = model.embed(obs)
        stream = model.lower_body(tokens)
        hidden = model.upper_body(stream)
    leaf = lambda x: x.detach().requires_grad_()
    backward = lambda y: y.backward(torch.ones_like(y))
    return dict(
        embeddings = lambda: backward(model.embed(obs)),
        lower_body = lambda: backward(model._body('lower_body')(leaf(tokens))),
        upper_body = lambda: backward(model._body('upper_body')(leaf(stream))),
        action_readout = lambda: backward(model.action_readout(leaf(hidden), targets = actions, loss_mask = mask)),
        state_readout = lambda: backward(model.state_readout(leaf(hidden)[:, :-1], targets = obs[:, 1:], loss_mask = mask[:, 1:])),
        clip_and_adamw = lambda: (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.), optimizer.step()),
    )


def step_flops(model, batch, predict_state: bool) -> int:
    """Matmul FLOPs of our step's forward and backward on `batch` (torch's FlopCounterMode, on a copy)."""
    model = copy.deepcopy(model)
    with FlopCounterMode(display = False) as counter:
        losses = model(batch.observations, batch.actions, episode_lens = batch.episode_lens, predict_state = predict_state)
        (losses.action if losses.state is None else losses.action + losses.state).backward()
    return counter.get_total_flops()


def matmul_rate(model_config, tokens: int) -> float:
    """The best fp32 FLOP/s over a square matmul and the bodies' own linear layers on `tokens` rows:
    what this CPU's threads reach on the work a step is made of, at best."""
    d, ff = model_config.dim, model_config.dim * model_config.ff_mult
    shapes = [(2048, 2048, 2048), (tokens, d, 3 * d), (tokens, d, ff), (tokens, ff, d), (tokens, d, d)]
    rates = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        seconds = statistics.median(timed(lambda: a @ b) for _ in range(12))
        rates.append(2 * m * k * n / seconds)
    return max(rates)


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', type = int, default = 16, help = 'timed steps per path (after 2 warm-up steps)')
    parser.add_argument('--episodes', type = int, default = 4_000, help = 'demonstrations generated for the batches (lengths as in D)')
    parser.add_argument('--threads', type = int, default = 1, help = 'torch CPU threads')
    parser.add_argument('--bf16', action = 'store_true', help = 'ours under bf16 autocast (as --mixed-precision bf16)')
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    adapter = pinpad_adapter()
    config = adapter.preset('default')
    data = adapter.generate_demos(args.episodes, tasks = adapter.pretraining_tasks, epsilon = config.data.pretrain_epsilon, seed = 0, progress = False)
    draw = bucketed_batches(data, config.pretrain.batch_size, np.random.default_rng(0))
    batches = [data.batch(next(draw)) for _ in range(args.steps + 2)]

    torch.manual_seed(0)
    ours = build_transformer(adapter, config.model).train()
    plain = copy.deepcopy(ours)
    autocast = torch.autocast('cpu', dtype = torch.bfloat16) if args.bf16 else nullcontext()
    models = dict(plain = plain, ours = ours)
    optimizers = dict(
        plain = torch.optim.AdamW(plain.parameters(), lr = config.pretrain.lr, weight_decay = config.pretrain.weight_decay),
        ours = adamw(list(ours.parameters()), config.pretrain.lr, config.pretrain.weight_decay),
    )
    steps = dict(
        plain = lambda batch: plain_step(plain, batch, optimizers['plain'], list(plain.parameters()), config.pretrain),
        ours = lambda batch: train_step(ours, batch, optimizers['ours'], list(ours.parameters()), config.pretrain),
    )

    def run(name, fn):
        with plain_paths() if name == 'plain' else autocast:
            return timed(fn)

    seconds = dict(plain = [], ours = [])
    for i, batch in enumerate(batches):
        for name, step in steps.items():
            took = run(name, lambda: step(batch))
            if i >= 2:
                seconds[name].append(took)

    valid = sum(b.episode_lens.sum().item() for b in batches[2:])
    padded = sum(b.observations.shape[0] * b.observations.shape[1] for b in batches[2:])
    lengths = [b.observations.shape[1] for b in batches[2:]]
    print(f'pretrain default config: d {config.model.dim}, L {config.model.depth}, batch {config.pretrain.batch_size}, '
          f'T {min(lengths)}-{max(lengths)} (mean {np.mean(lengths):.0f}), {args.threads} thread(s), ours in {"bf16" if args.bf16 else "fp32"}')
    print(f'CPU: {torch.backends.cpu.get_cpu_capability()}, bf16 matmuls {"native" if native_bf16("cpu") else "emulated (bf16 autocast is slower than fp32 here)"}')
    print(f'padded tokens: {1 - valid / padded:.1%} of the batch (length-bucketed)')

    # breakdown on one batch of median length
    batch = sorted(batches[2:], key = lambda b: b.observations.shape[1])[len(lengths) // 2]
    times = {name: {} for name in models}
    for _ in range(5):
        for name, model in models.items():
            with plain_paths() if name == 'plain' else autocast:
                for part, fn in parts(model, batch, optimizers[name]).items():
                    times[name].setdefault(part, []).append(timed(fn))
    print(f'\nforward + backward per part, one batch of {tuple(batch.observations.shape[:2])}, median ms:')
    print('| part | plain | ours |')
    print('|---|---|---|')
    for part in times['plain']:
        plain_ms, ours_ms = (statistics.median(times[name][part]) * 1000 for name in ('plain', 'ours'))
        skipped = part == 'state_readout' and config.pretrain.state_loss_weight == 0
        print(f'| {part} | {plain_ms:.1f} | {"skipped (λ = 0)" if skipped else f"{ours_ms:.1f}"} |')

    print(f'\nwhole training step (forward, backward, clipping, AdamW), {args.steps} steps each, interleaved:')
    print('| path | median step | tokens/s |')
    print('|---|---|---|')
    for name in ('plain', 'ours'):
        print(f'| {name} | {statistics.median(seconds[name]) * 1000:.0f} ms | {valid / sum(seconds[name]):,.0f} |')
    print(f'ours / plain: {sum(seconds["plain"]) / sum(seconds["ours"]):.2f}x tokens/s')

    if args.bf16:   # the roof is of fp32 matmuls
        return
    # the roof: our step's matmul FLOPs at the best matmul rate this CPU reaches bound any fp32 step from below
    timed_batches = batches[2:]
    flops = sum(step_flops(ours, b, config.pretrain.state_loss_weight > 0) for b in timed_batches)
    rate = matmul_rate(config.model, int(np.mean([b.observations.shape[0] * b.observations.shape[1] for b in timed_batches])))
    floor, plain_mean = flops / rate, statistics.mean(seconds['plain'])
    print(f'\nroof (fp32): our steps do {flops / len(timed_batches) / 1e9:.2f} GFLOP of matmuls each (FlopCounterMode); '
          f"this CPU's best matmul rate here is {rate / 1e9:.1f} GFLOP/s, so no fp32 step on these batches can take "
          f'under {floor / len(timed_batches) * 1000:.0f} ms on average: at most {sum(seconds["plain"]) / floor:.2f}x the plain '
          f'path (mean step {plain_mean * 1000:.0f} ms); ours reaches {flops / sum(seconds["ours"]) / 1e9:.1f} GFLOP/s, '
          f'{flops / sum(seconds["ours"]) / rate:.0%} of that rate')


if __name__ == '__main__':
    main()
