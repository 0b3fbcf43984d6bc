"""Speed and memory of a discovery step and a cached rollout step.

    python -m benchmarks.speed [readme] [gridworld] [--peer PATH/TO/run.sh]

Measured exactly as the public peer's (`metacontroller-pytorch`) benchmark script:
same shapes, 2 threads, median over steps after warm-up, peak RSS of the process.
Each configuration runs in its own process so that peak RSS is its own. With
`--peer`, the peer is timed in the same run and ratios are printed.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # the usage example of the README
    'readme': dict(dim = 512, dim_state = 384, depth = 2, dim_meta = 256, dim_latent = 128, rank = 16, batch = 2, seq = 128),
    # the paper's gridworld sizes (637-dim one-hot observation, 4 actions, n_z = 8)
    'gridworld': dict(dim = 256, dim_state = 637, depth = 3, dim_meta = 64, dim_latent = 8, rank = 7, batch = 32, seq = 64),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_ms(fn, warmup = 2, steps = 7) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_config(name: str):
    import torch

    from metacontroller import MetaController, Transformer

    cfg = CONFIGS[name]
    torch.manual_seed(0)
    torch.set_num_threads(2)

    model = Transformer(
        dim = cfg['dim'],
        action_embed_readout = dict(num_discrete = 4),
        state_embed_readout = dict(num_continuous = cfg['dim_state']),
        lower_body = dict(depth = cfg['depth']),
        upper_body = dict(depth = cfg['depth']),
    )
    meta = MetaController(
        dim_model = cfg['dim'],
        dim_meta_controller = cfg['dim_meta'],
        dim_latent = cfg['dim_latent'],
        hypernetwork_low_rank = cfg['rank'],
    )
    model.requires_grad_(False)
    optim = torch.optim.AdamW(meta.parameters(), lr = 1e-3)

    state = torch.randn(cfg['batch'], cfg['seq'], cfg['dim_state'])
    actions = torch.randint(0, 4, (cfg['batch'], cfg['seq']))

    def discovery_step():
        losses = model(state, actions, meta_controller = meta, discovery_phase = True)
        (losses.action_recon + 0.1 * losses.kl).backward()
        optim.step()
        optim.zero_grad()

    ms = median_ms(discovery_step)
    print(f'{name} discovery_step_ms {ms:.1f} peak_rss_mb {peak_rss_mb():.0f}', flush = True)

    model.eval()
    meta.eval()
    envs = 16

    @torch.no_grad()
    def rollout_64_steps():
        cache, past_action = None, None
        for _ in range(64):
            one_state = torch.randn(envs, 1, cfg['dim_state'])
            logits, cache = model(one_state, past_action, meta_controller = meta, cache = cache, return_cache = True)
            past_action = model.action_readout.sample(logits)

    ms = median_ms(rollout_64_steps, warmup = 1, steps = 3) / 64
    print(f'{name} rollout_step_ms_16_envs {ms:.2f} peak_rss_mb {peak_rss_mb():.0f}', flush = True)


def parse(lines: str) -> dict:
    """'config what value peak_rss_mb rss' lines -> {(config, what): (value, rss)}."""
    out = {}
    for line in lines.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[3] == 'peak_rss_mb':
            out[(parts[0], parts[1])] = (float(parts[2]), float(parts[4]))
    return out


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs = '*', help = f'any of {list(CONFIGS)} (default: all)')
    parser.add_argument('--peer', help = 'path to the peer run.sh: time it in the same run and print ratios')
    parser.add_argument('--one', help = argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        return run_config(args.one)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f'unknown configs {sorted(unknown)}; choose from {list(CONFIGS)}')
    args.configs = args.configs or list(CONFIGS)

    ours = ''
    for name in args.configs:
        result = subprocess.run([sys.executable, '-m', 'benchmarks.speed', '--one', name], capture_output = True, text = True, check = True)
        print('ours', result.stdout, end = '', flush = True)
        ours += result.stdout

    if not args.peer:
        return

    peer = subprocess.run(['bash', args.peer, *args.configs], capture_output = True, text = True, check = True).stdout
    print(''.join(f'peer {line}\n' for line in peer.splitlines()))

    print('| config | measure | peer | ours | speed-up / memory ratio |')
    print('|---|---|---|---|---|')
    theirs = parse(peer)
    for key, (value, rss) in parse(ours).items():
        if key in theirs:
            peer_value, peer_rss = theirs[key]
            print(f'| {key[0]} | {key[1]} | {peer_value:g} ms | {value:g} ms | {peer_value / value:.1f}x faster |')
            print(f'| {key[0]} | peak RSS after {key[1]} | {peer_rss:g} MB | {rss:g} MB | {rss / peer_rss:.2f} of peer |')


if __name__ == '__main__':
    main()
