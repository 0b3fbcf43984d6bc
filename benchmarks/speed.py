"""Speed and memory of a discovery step and a cached rollout step.

    python -m benchmarks.speed [readme] [gridworld] [--peer PATH/TO/run.sh] [--threads 1] [--bf16]

Measured exactly as the public peer's (`metacontroller-pytorch`) benchmark script:
same shapes, median over steps after warm-up, peak RSS of the process, and the
step memory: how far RSS rises over the measured steps (`benchmarks.peer.StepMemory`).
Each configuration runs in its own process so that its memory is its own. With
`--peer`, the peer's own script runs in the same run, at the same thread count
(`benchmarks/peer.py`, in the virtual environment its run.sh installs), and
ratios are printed. `--bf16` adds a discovery step under bf16 autocast (opt-in
in the pipeline, `--mixed-precision bf16`), set against the peer's fp32 step.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peer import StepMemory

CONFIGS = {
    # the usage example of the README
    'readme': dict(dim = 512, dim_state = 384, depth = 2, dim_meta = 256, dim_latent = 128, rank = 16, batch = 2, seq = 128),
    # the paper's gridworld sizes (637-dim one-hot observation, 4 actions, n_z = 8)
    'gridworld': dict(dim = 256, dim_state = 637, depth = 3, dim_meta = 64, dim_latent = 8, rank = 7, batch = 32, seq = 64),
}


def median_ms(fn, warmup = 2, steps = 7) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_config(name: str, threads: int, bf16: bool):
    import torch

    from metacontroller import MetaController, Transformer

    cfg = CONFIGS[name]
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    memory = StepMemory()

    def report(what: str, fn, per: int = 1, **kwargs):
        ms, mb = memory.measure(lambda: median_ms(fn, **kwargs) / per)
        print(f'{name} {what} step_mb {mb:.0f}', flush = True)
        print(f'{name} {what} {ms:.2f} peak_rss_mb {memory.peak_rss_mb():.0f}', flush = True)

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

    def discovery_step(autocast = contextlib.nullcontext):
        with autocast():
            losses = model(state, actions, meta_controller = meta, discovery_phase = True)
        (losses.action_recon + 0.1 * losses.kl).backward()
        optim.step()
        optim.zero_grad()

    report('discovery_step_ms', discovery_step)
    if bf16:
        report('discovery_step_ms_bf16', lambda: discovery_step(lambda: torch.autocast('cpu', dtype = torch.bfloat16)))

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

    report('rollout_step_ms_16_envs', rollout_64_steps, per = 64, warmup = 1, steps = 3)


def parse(lines: str) -> dict:
    """'config what ms peak_rss_mb rss' and 'config what step_mb mb' lines -> {(config, what): dict}."""
    out = {}
    for line in lines.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[3] == 'peak_rss_mb':
            out.setdefault((parts[0], parts[1]), {}).update(ms = float(parts[2]), rss = float(parts[4]))
        elif len(parts) == 4 and parts[2] == 'step_mb':
            out.setdefault((parts[0], parts[1]), {})['step_mb'] = float(parts[3])
    return out


def peer_python(run_sh: str) -> str:
    """The peer's virtual environment, where run.sh puts it; run.sh installs it on first use."""
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
    python = Path(os.environ.get('PEER_VENV') or Path(cache) / 'metacontroller-peer-venv') / 'bin' / 'python'
    if not python.exists():
        subprocess.run(['bash', run_sh, 'readme'], capture_output = True, check = True)
    return str(python)


def run_peer(run_sh: str, name: str, threads: int) -> str:
    """The peer's bench_peer.py for one configuration, in its own process, from an empty folder
    (so that our package, which has the same import name, is not on its path)."""
    script = Path(__file__).with_name('peer.py').resolve()
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, OMP_NUM_THREADS = str(threads))
        command = [peer_python(run_sh), str(script), str(Path(run_sh).resolve()), str(threads), name]
        return subprocess.run(command, cwd = folder, env = env, capture_output = True, text = True, check = True).stdout


def main():
    parser = argparse.ArgumentParser(description = __doc__, formatter_class = argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs = '*', help = f'any of {list(CONFIGS)} (default: all)')
    parser.add_argument('--peer', help = 'path to the peer run.sh: time it in the same run and print ratios')
    parser.add_argument('--threads', type = int, default = 2, help = 'intra-op threads for ours and the peer (2: as the harness; 1 beside another job)')
    parser.add_argument('--bf16', action = 'store_true', help = 'also time our discovery step under bf16 autocast')
    parser.add_argument('--one', help = argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        return run_config(args.one, args.threads, args.bf16)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f'unknown configs {sorted(unknown)}; choose from {list(CONFIGS)}')
    args.configs = args.configs or list(CONFIGS)

    # ours and the peer alternate, config by config, so that both see the same machine load
    ours = peer = ''
    for name in args.configs:
        flags = ['--threads', str(args.threads)] + (['--bf16'] if args.bf16 else [])
        env = dict(os.environ, OMP_NUM_THREADS = str(args.threads))
        result = subprocess.run([sys.executable, '-m', 'benchmarks.speed', '--one', name, *flags], env = env, capture_output = True, text = True, check = True)
        print(''.join(f'ours {line}\n' for line in result.stdout.splitlines()), end = '', flush = True)
        ours += result.stdout
        if args.peer:
            theirs = run_peer(args.peer, name, args.threads)
            print(''.join(f'peer {line}\n' for line in theirs.splitlines()), end = '', flush = True)
            peer += theirs
    if args.peer:
        print_table(parse(ours), parse(peer), args.threads)


def print_table(ours: dict, peer: dict, threads: int):
    import torch

    from metacontroller.distributed import native_bf16
    bf16 = 'native' if native_bf16('cpu') else 'emulated, slower than fp32'
    print(f'\n{threads} thread(s), CPU {torch.backends.cpu.get_cpu_capability()} (bf16 matmuls {bf16})\n\n| config | measure | peer | ours | ratio |\n|---|---|---|---|---|')
    for name in dict.fromkeys(config for config, _ in ours):
        for (config, what), mine in ours.items():
            theirs = peer.get((config, what.removesuffix('_bf16')))
            if config == name and theirs is not None:
                print(f'| {name} | {what} | {theirs["ms"]:g} ms | {mine["ms"]:g} ms | {theirs["ms"] / mine["ms"]:.1f}x faster |')
        mine, theirs = ours[(name, 'discovery_step_ms')], peer[(name, 'discovery_step_ms')]
        peak = lambda results: max(r['rss'] for (config, _), r in results.items() if config == name)
        print(f'| {name} | peak RSS of the process | {peak(peer):g} MB | {peak(ours):g} MB | {peak(ours) / peak(peer):.2f} of the peer |')
        # only the first measurement's growth means anything: later ones reuse memory the allocator kept
        print(f'| {name} | RSS growth over the discovery steps | {theirs["step_mb"]:g} MB | {mine["step_mb"]:g} MB | '
              f'{mine["step_mb"] / theirs["step_mb"]:.2f} of the peer |')

if __name__ == '__main__':
    main()
