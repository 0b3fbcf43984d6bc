"""The peer's own benchmark at our thread count, with step memory measured as ours is.

    <peer venv>/bin/python benchmarks/peer.py PATH/TO/run.sh THREADS CONFIG

`benchmarks.speed --peer` runs this in the peer's virtual environment (the one run.sh
installs: the peer shares our import name). It imports `bench_peer.py` from beside run.sh
and runs its `main` unchanged, except that torch gets THREADS threads (the harness
hard-codes 2, which on a machine shared with another job oversubscribes the cores and
slows the peer down, flattering us) and each measurement also reports its step memory.
Stdlib only at import: `benchmarks.speed` imports `StepMemory` from here.
"""
from __future__ import annotations

import argparse
import os
import sys


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'no {field} in /proc/self/status')


class StepMemory:
    """How far RSS rises above its level at the start of a measurement (Linux only).

    Writing 5 to /proc/self/clear_refs lowers the kernel's high-water mark (VmHWM) to the
    current RSS, so the mark after the measurement is its own peak. That also lowers
    ru_maxrss, so the process peak is tracked here across the resets."""

    def __init__(self):
        self.process_peak_kb = 0

    def peak_rss_mb(self) -> float:
        return max(self.process_peak_kb, _status_kb('VmHWM')) / 1024

    def measure(self, fn):
        """(fn(), MB by which RSS peaked above its level before fn)."""
        self.process_peak_kb = max(self.process_peak_kb, _status_kb('VmHWM'))
        with open('/proc/self/clear_refs', 'w') as clear_refs:
            clear_refs.write('5')
        start = _status_kb('VmRSS')
        result = fn()
        return result, (_status_kb('VmHWM') - start) / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description = "The peer's own benchmark at our thread count (run by `benchmarks.speed --peer`).")
    parser.add_argument('run_sh', help = "the peer's run.sh; its bench_peer.py lies beside it")
    parser.add_argument('threads', type = int, help = 'torch intra-op threads')
    parser.add_argument('name', help = 'the bench_peer.py configuration to measure')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    run_sh, threads, name = args.run_sh, args.threads, args.name
    # the harness's folder replaces benchmarks/ on the path: our module names must not shadow the peer's imports
    sys.path[0] = os.path.dirname(os.path.abspath(run_sh))
    import torch

    set_threads = torch.set_num_threads
    torch.set_num_threads = lambda _: set_threads(threads)
    import bench_peer

    memory, median_ms = StepMemory(), bench_peer.median_ms
    measures = iter(['discovery_step_ms', 'rollout_step_ms_16_envs'])   # the order main() measures in

    def measured(fn, **kwargs):
        ms, mb = memory.measure(lambda: median_ms(fn, **kwargs))
        print(f'{name} {next(measures)} step_mb {mb:.0f}', flush = True)
        return ms

    bench_peer.median_ms, bench_peer.peak_rss_mb = measured, memory.peak_rss_mb
    bench_peer.main(name)


if __name__ == '__main__':
    main()
