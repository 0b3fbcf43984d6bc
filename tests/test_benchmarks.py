"""The speed benchmark's own arithmetic: step memory and the table against the peer; the peer script's command line."""
import os

import pytest
import torch

from benchmarks.peer import StepMemory, parse_args
from benchmarks.speed import parse, print_table


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason = 'Linux high-water mark')
def test_step_memory_sees_a_fresh_allocation_and_keeps_the_process_peak():
    memory = StepMemory()
    _, grown = memory.measure(lambda: torch.ones(64 * 2 ** 20 // 4).sum())   # 64 MB, touched, then freed
    assert 48 <= grown <= 200
    _, small = memory.measure(lambda: None)
    assert small < 16
    assert memory.peak_rss_mb() >= grown   # the resets do not lower the process peak


def test_table_sets_each_of_our_measures_against_the_peers(capsys):
    ours = parse('a discovery_step_ms step_mb 100\na discovery_step_ms 50 peak_rss_mb 400\n'
                 'a discovery_step_ms_bf16 25 peak_rss_mb 410\na rollout_step_ms_16_envs 2 peak_rss_mb 420\n')
    peer = parse('a discovery_step_ms step_mb 400\na discovery_step_ms 500 peak_rss_mb 1000\na rollout_step_ms_16_envs 20 peak_rss_mb 1000\n')
    print_table(ours, peer, threads = 1)
    table = capsys.readouterr().out
    assert '| a | discovery_step_ms | 500 ms | 50 ms | 10.0x faster |' in table
    assert '| a | discovery_step_ms_bf16 | 500 ms | 25 ms | 20.0x faster |' in table
    assert '| a | rollout_step_ms_16_envs | 20 ms | 2 ms | 10.0x faster |' in table
    assert '| a | peak RSS of the process | 1000 MB | 420 MB | 0.42 of the peer |' in table
    assert '| a | RSS growth over the discovery steps | 400 MB | 100 MB | 0.25 of the peer |' in table


def test_peer_script_prints_its_usage(capsys):
    with pytest.raises(SystemExit) as help_exit:
        parse_args(['--help'])
    assert help_exit.value.code == 0 and 'run_sh threads name' in capsys.readouterr().out
    with pytest.raises(SystemExit):   # missing arguments: usage and the error, not an IndexError
        parse_args([])
    assert 'the following arguments are required: run_sh, threads, name' in capsys.readouterr().err
    assert vars(parse_args(['run.sh', '2', 'small'])) == dict(run_sh = 'run.sh', threads = 2, name = 'small')
