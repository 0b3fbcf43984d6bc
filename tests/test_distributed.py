"""Multi-process training: 2 CPU processes (gloo) started with torchrun against one process.

One launch of tests/distributed_worker.py runs the smoke pipeline end to end plus the
checks below on both ranks; the tests repeat each check in this process and compare.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metacontroller import distributed
from metacontroller.distributed import SINGLE, Process
from metacontroller.pipeline.phases import PHASES
from metacontroller.ppo import normalize_advantages

import distributed_worker as worker

ROOT = Path(__file__).parent.parent


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope = 'module')
def two_ranks(tmp_path_factory):
    """What each rank saw, and the run folder of the 2-process smoke pipeline."""
    out = tmp_path_factory.mktemp('two_ranks')
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
               str(ROOT / 'tests' / 'distributed_worker.py'), str(out)]
    done = subprocess.run(command, cwd = out, env = {**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output = True, text = True, timeout = 300)
    assert done.returncode == 0, done.stderr[-5000:]
    ranks = [torch.load(out / f'rank{r}.pt', weights_only = False) for r in range(2)]
    return ranks, out / 'run'


def test_two_process_pipeline_completes_and_rank_0_alone_writes(two_ranks):
    _, run_dir = two_ranks
    for name in ('results.json', 'config.json', 'pretrain/model.pt', 'discover/meta_controller.pt', 'rl/meta_controller.pt',
                 'baselines/raw_action_model.pt', 'fig1.png'):
        assert (run_dir / name).is_file(), name
    log = (run_dir / 'run.log').read_text()
    for phase in PHASES:
        assert log.count(f'phase {phase}: start') == 1, phase   # one line per phase: not one per rank


def test_pretraining_losses_match_one_process(two_ranks):
    (rank0, rank1), run_dir = two_ranks
    one = worker.pretrain_trace(run_dir, SINGLE)
    assert rank0['pretrain_trace'] == rank1['pretrain_trace']   # every rank logs the global mean
    torch.testing.assert_close(torch.tensor(rank0['pretrain_trace']), torch.tensor(one), rtol = 1e-5, atol = 1e-6)


def test_discovery_losses_match_one_process(two_ranks):
    """Exact before the first update; after it, the ranks draw other posterior noise than one process does."""
    (rank0, rank1), run_dir = two_ranks
    one, _ = worker.discover_run(run_dir, SINGLE)
    two, one = torch.tensor(rank0['discover_trace']), torch.tensor(one)
    torch.testing.assert_close(two[0], one[0], rtol = 1e-5, atol = 1e-6)
    torch.testing.assert_close(two[:, 0], one[:, 0], rtol = 0, atol = 5e-3)    # action NLL ≈ 1.25
    torch.testing.assert_close(two[:, 1], one[:, 1], rtol = 0.2, atol = 1e-4)  # KL ≈ 0.01
    for name, weight in rank0['discover_weights'].items():   # synchronised gradients keep the ranks in step
        assert torch.equal(weight, rank1['discover_weights'][name]), name


def test_advantages_use_global_return_statistics(two_ranks):
    (rank0, rank1), _ = two_ranks
    global_ = normalize_advantages(worker.CRAFTED_RETURNS)
    torch.testing.assert_close(torch.cat((rank0['advantages'], rank1['advantages'])), global_)
    local = normalize_advantages(worker.CRAFTED_RETURNS[4:])   # rank 1's returns are all 1: zero advantages
    assert not torch.allclose(rank1['advantages'], local)


def test_policy_update_matches_one_process(two_ranks):
    """Ranks hold 9 and 11 decision steps: the gradient must be the mean over all 20."""
    (rank0, rank1), _ = two_ranks
    one = worker.policy_after_update(SINGLE)
    for name, weight in one.items():
        assert torch.equal(rank0['policy'][name], rank1['policy'][name]), name
        torch.testing.assert_close(rank0['policy'][name], weight, rtol = 1e-5, atol = 1e-6)


def test_evolution_splits_the_population_and_ranks_agree(two_ranks):
    (rank0, rank1), _ = two_ranks
    es0, es1 = rank0['evolution'], rank1['evolution']
    assert es0['curve'] == es1['curve'] and len(es0['curve']) == 2 and es0['evals'] == es1['evals']
    assert es0['raw_steps'] == es1['raw_steps'] > 0
    for name, weight in es0['policy'].items():
        torch.testing.assert_close(weight, es1['policy'][name], rtol = 1e-5, atol = 1e-6)


def test_bf16_training_runs_close_to_fp32(two_ranks):
    _, run_dir = two_ranks
    fp32, bf16 = (worker.pretrain_trace(run_dir, Process(mixed_precision = mp)) for mp in ('no', 'bf16'))
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol = 0, atol = 3e-2)
    fp32, bf16 = (torch.tensor(worker.discover_run(run_dir, Process(mixed_precision = mp))[0]) for mp in ('no', 'bf16'))
    torch.testing.assert_close(bf16, fp32, rtol = 0, atol = 2e-2)


def test_single_process_needs_no_accelerate():
    code = ('import sys; from metacontroller import distributed; import metacontroller.pipeline.cli, metacontroller.rl; '
            'process = distributed.setup("cpu"); '
            'assert process.accelerator is None and process.world_size == 1 and "accelerate" not in sys.modules')
    env = {k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK')}
    subprocess.run([sys.executable, '-c', code], check = True, env = env, timeout = 120)


def test_indexed_device_under_a_launch_is_a_clear_error(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(ValueError, match = 'local rank'):
        distributed.setup('cuda:1')
    with pytest.raises(ValueError, match = 'mixed_precision'):
        Process(mixed_precision = 'fp16')
