"""The pipeline end to end on the smoke preset, resume, and its error messages."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from metacontroller.envs.expert import generate_pinpad_demos, pinpad_action_sets
from metacontroller.pipeline.adapter import pinpad_adapter
from metacontroller.pipeline.aggregate import aggregate
from metacontroller.pipeline.cli import main
from metacontroller.pipeline.config import smoke_config
from metacontroller.pipeline.metrics import beta_binary_fraction, match_switches, switch_counts
from metacontroller.pipeline.models import build_transformer
from metacontroller.pipeline.pretrain import imitation_metrics

PHASE_FILES = ['config.json', 'results.json', 'run.log', 'data/pretrain.npz', 'data/discovery.npz', 'pretrain/model.pt',
               'discover/meta_controller.pt', 'rl/meta_controller.pt', 'baselines/raw_action_model.pt',
               'switches.png', 'probe.png', 'rl_curves.png', 'fig1.png']


def run(tmp_path, *flags):
    """The CLI on the smoke preset; one torch thread (tiny models gain nothing from more, and a
    shared CI machine loses a lot to oversubscription), restored afterwards for other tests."""
    threads = torch.get_num_threads()
    try:
        return main(pinpad_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--no-progress', '--threads', '1', *flags])
    finally:
        torch.set_num_threads(threads)


def numbers(tree):
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in numbers(v)]
    return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


@pytest.fixture(scope = 'module')
def smoke_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('smoke')
    return tmp_path, run(tmp_path)


def test_smoke_pipeline_writes_everything(smoke_run):
    tmp_path, result = smoke_run
    for name in PHASE_FILES:
        assert (tmp_path / 'run' / name).is_file(), name
    on_disk = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert on_disk['seed'] == 0 and on_disk['config']['preset'] == 'smoke'
    assert set(on_disk['pretrain']) >= {'action_nll', 'expert_match', 'success_pretraining_tasks', 'success_post_task',
                                        'action_nll_floor', 'p_optimal', 'p_fatal', 'expert_path_survival'}
    assert len(on_disk['probe']['accuracy_by_layer']) == on_disk['config']['model']['depth'] + 1
    assert set(on_disk['discovery']) >= {'switch_f1', 'switches_per_episode', 'beta_binary_fraction', 'action_nll', 'kl'}
    for name in ('internal', 'raw_action', 'no_temporal_abstraction'):
        entry = on_disk['rl'][name]
        assert entry['episodes'] > 0 and entry['curve'] and entry['eval_episodes'] >= 1
        assert 0 <= entry['success'] <= 1
    assert on_disk['wall_time_s'] > 0
    assert all(math.isfinite(x) for x in numbers({k: v for k, v in on_disk.items() if k != 'config'}))


def test_resume_skips_finished_phases(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    log = smoke_tmp / 'run' / 'run.log'
    before = log.read_text()
    run(smoke_tmp)
    new = log.read_text()[len(before):]
    assert new.count('already finished, skipped') == 7
    assert 'phase pretrain: start' not in new


def test_force_redoes_selected_phase(smoke_run):
    smoke_tmp, _ = smoke_run
    log = smoke_tmp / 'run' / 'run.log'
    before = log.read_text()
    run(smoke_tmp, '--phases', 'probe,report', '--force')
    new = log.read_text()[len(before):]
    assert 'phase probe: start' in new and 'phase report: start' in new and 'phase pretrain: start' not in new


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match = r"needs .*pretrain/model.pt.*--phases pretrain,discover"):
        run(tmp_path, '--phases', 'discover')


def test_changed_settings_need_force_or_a_new_folder(smoke_run):
    smoke_tmp, _ = smoke_run
    with pytest.raises(ValueError, match = 'pretrain.steps'):
        run(smoke_tmp, '--pretrain.steps', '3')


@pytest.mark.parametrize('flags, message', [
    (['--phases', 'pretrain,nonsense'], 'unknown phase'),
    (['--preset', 'huge'], 'invalid choice'),
    (['--pretrain.steps', 'many'], 'invalid int'),
    (['--seeds', '0'], '--seeds must be >= 1'),
    (['--model.depth', '3'], None),
])
def test_bad_flags_are_rejected(tmp_path, capsys, flags, message):
    if message is None:   # accepted by the parser, refused when the model is built
        with pytest.raises(ValueError, match = 'depth must be even'):
            run(tmp_path, '--phases', 'data,pretrain', *flags)
        return
    with pytest.raises(SystemExit):
        run(tmp_path, *flags)
    assert message in capsys.readouterr().err


def test_switch_matching_counts_within_one_step():
    counts = match_switches([3, 9, 20], [4, 10, 15])
    assert counts == (2, 3, 3)
    assert match_switches([4, 5], [5]).true_positives == 1   # one boundary matches one prediction


def test_switch_metrics_exclude_the_first_step():
    beta = torch.tensor([[1., 0., 0., 1., 0.02, 0.]])
    boundaries = torch.tensor([[True, False, False, True, False, False]])
    lens = torch.tensor([5])
    assert switch_counts(beta, boundaries, lens).f1 == 1.0
    assert beta_binary_fraction(beta, lens) == 1.0
    assert beta_binary_fraction(torch.tensor([[1., 0.5, 0.]]), torch.tensor([3])) == 0.5


def test_seeds_aggregate_to_median_and_quartiles(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    seed_dirs = [tmp_path / f'seed_{s}' for s in range(3)]
    for d in seed_dirs:
        shutil.copytree(smoke_tmp / 'run', d)
    out = aggregate(tmp_path, seed_dirs, 'ABCD')
    success = out['rl']['internal']['success']
    assert success['q25'] <= success['median'] <= success['q75'] and len(success['per_seed']) == 3
    assert (tmp_path / 'rl_curves.png').is_file() and (tmp_path / 'fig1.png').is_file()
    assert json.loads((tmp_path / 'results.json').read_text())['seeds'] == [0, 0, 0]


def test_imitation_metrics_score_against_the_experts_action_sets():
    """A model with uniform action probabilities: every diagnostic has a closed form."""
    dataset = generate_pinpad_demos(12, seed = 1, num_envs = 4, progress = False)
    sets = pinpad_action_sets(dataset)
    model = build_transformer(pinpad_adapter(), smoke_config().model).eval()
    for parameter in model.action_readout.parameters():
        torch.nn.init.zeros_(parameter)
    metrics = imitation_metrics(model, dataset, 'cpu', batch_size = 5, action_sets = sets)
    episode = np.repeat(np.arange(len(dataset)), dataset.episode_lens)
    survival = np.exp(np.bincount(episode, weights = np.log1p(-sets.fatal.sum(1) / 4))).mean()
    assert metrics['action_nll'] == pytest.approx(math.log(4), abs = 1e-5)
    assert metrics['p_optimal'] == pytest.approx(sets.optimal.sum(1).mean() / 4, abs = 1e-5)
    assert metrics['p_fatal'] == pytest.approx(sets.fatal.sum(1).mean() / 4, abs = 1e-5)
    assert metrics['expert_path_survival'] == pytest.approx(survival, rel = 1e-4)
    assert metrics['action_nll_floor'] == pytest.approx(np.log(sets.optimal.sum(1)).mean())
    assert set(imitation_metrics(model, dataset, 'cpu')) == {'action_nll', 'expert_match'}
