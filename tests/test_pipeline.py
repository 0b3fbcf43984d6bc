"""The pipeline end to end on the smoke preset, resume, and its error messages."""
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from metacontroller import MetaController
from metacontroller.envs.pinpad_expert import generate_pinpad_demos, pinpad_action_sets
from metacontroller.pipeline import control, data, discover, phases, pretrain, runner, steering
from metacontroller.pipeline.adapters.babyai import babyai_adapter
from metacontroller.pipeline.adapters.pinpad import colour_entries, colours_underfoot, next_colours, pinpad_adapter
from metacontroller.pipeline.aggregate import aggregate
from metacontroller.pipeline.cli import main
from metacontroller.pipeline.config import PRESETS, override, sections, smoke_config, validate
from metacontroller.pipeline.files import read_json, run_lock, write_json
from metacontroller.pipeline.metrics import beta_binary_fraction, match_switches, switch_counts
from metacontroller.pipeline.models import build_meta_controller, build_transformer
from metacontroller.pipeline.phases import MIN_SWITCHES_PER_EPISODE, PHASES, Run, initial_meta_controller, initial_model, start_rank
from metacontroller.pipeline.pretrain import imitation_metrics
from metacontroller.rl import trainer

from conftest import killed_on_call, logged_messages

PHASE_FILES = ['config.json', 'results.json', 'run.log', 'data/pretrain.npz', 'data/discovery.npz', 'pretrain/model.pt', 'control/controller.pt',
               'discover/meta_controller.pt', 'rl/meta_controller.pt', 'baselines/raw_action_model.pt',
               'pretrain/progress_pretrain.pt', 'control/progress_controllers.pt', 'discover/progress_alpha_0.05.pt', 'discover/progress_alpha_0.5.pt',
               'rl/progress_internal.pt', 'baselines/progress_raw_action.pt', 'baselines/progress_beta1.pt',
               'switches.png', 'probe.png', 'rl_curves.png', 'fig1.png', 'rate_distortion.png']


def run(tmp_path, *flags):
    """The CLI on the smoke preset; one torch thread (tiny models gain nothing from more, and a
    shared CI machine loses a lot to oversubscription)."""
    return main(pinpad_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--no-progress', '--threads', '1', *flags])


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
    control = on_disk['control']
    assert set(control['heldout']['controlled']) >= {'action_nll', 'p_fatal', 'p_fatal_onset'} and control['layer'] == 1
    for tasks in ('post_task', 'pretraining_tasks'):
        assert {kind: 0 <= control[tasks][kind]['success'] <= 1 for kind in ('base', 'controlled')} == {'base': True, 'controlled': True}
    assert set(on_disk['discovery']) >= {'switch_f1', 'switches_per_episode', 'beta_binary_fraction', 'action_nll', 'kl'}
    events = ('switches_on_events', 'inner_event_switch_f1', 'inner_event_switch_precision', 'inner_event_switch_recall')
    assert all(0 <= on_disk['discovery'][k] <= 1 and 0 <= on_disk['discovery']['post_task'][k] <= 1 for k in events)
    steer = on_disk['discovery']['steering']   # first subgoal entered: base alone, then each subgoal's code held
    assert all(len(steer[row]) == 5 and abs(sum(steer[row]) - 1) < 1e-6 for row in ('base', *'ABCD'))
    assert steer['hit_rate'] == np.mean([steer[x][i] for i, x in enumerate('ABCD')])
    transfer = steer['code_transfer']   # an episode's first code, in its own layout and in the next episode's
    assert set(transfer) == {'own_layout', 'other_layout', 'base'} and all(0 <= v <= 1 for v in transfer.values())
    sweep = on_disk['discovery']['alpha_sweep']   # the rate-distortion table: --discovery.alpha, then the sweep
    assert [p['alpha'] for p in sweep] == [0.05, 0.5] and on_disk['discovery']['alpha'] == 0.05
    assert all({'action_nll', 'kl', 'switch_f1', 'switches_per_episode'} <= set(p) for p in sweep)
    for name in ('internal', 'raw_action', 'no_temporal_abstraction'):
        entry = on_disk['rl'][name]
        assert entry['episodes'] > 0 and entry['curve'] and entry['eval_episodes'] >= 1
        assert 0 <= entry['success'] <= 1 and entry['initial_success'] == entry['curve'][0][1]
        assert entry['success_by_policy']['sampled'] == entry['success'] and entry['eval_policy'] == 'sampled'
    # the same final episodes with the greedy latent and/or raw actions; a raw-action policy has no latent
    assert set(on_disk['rl']['internal']['success_by_policy']) == {'sampled', 'greedy', 'greedy_latent', 'greedy_actions'}
    assert set(on_disk['rl']['raw_action']['success_by_policy']) == {'sampled', 'greedy'}
    assert on_disk['wall_time_s'] > 0
    assert all(math.isfinite(x) for x in numbers({k: v for k, v in on_disk.items() if k != 'config'}))


def test_resume_skips_finished_phases(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    log = smoke_tmp / 'run' / 'run.log'
    before = log.read_text()
    run(smoke_tmp)
    new = log.read_text()[len(before):]
    assert new.count('already finished, skipped') == len(PHASES)
    assert 'phase pretrain: start' not in new


def test_force_redoes_selected_phase(smoke_run):
    smoke_tmp, _ = smoke_run
    log = smoke_tmp / 'run' / 'run.log'
    before = log.read_text()
    run(smoke_tmp, '--phases', 'probe,report', '--force')
    new = log.read_text()[len(before):]
    assert 'phase probe: start' in new and 'phase report: start' in new and 'phase pretrain: start' not in new


def killed_and_run_again(smoke_tmp: Path, tmp_path: Path, monkeypatch, phase: str, module, name: str, call: int) -> tuple[str, dict]:
    """A copy of the smoke run whose `phase`, forced, is killed in the `call`-th call of `module.name`, then run
    again without --force: (what the second run logged, its results)."""
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    original = getattr(module, name)
    monkeypatch.setattr(module, name, killed_on_call(original, call))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, '--phases', phase, '--force')
    monkeypatch.setattr(module, name, original)
    log = tmp_path / 'run' / 'run.log'
    before = log.read_text()
    again = run(tmp_path, '--phases', phase)
    return log.read_text()[len(before):], again


def test_an_interrupted_rl_phase_goes_on_from_its_progress_and_force_drops_it(smoke_run, tmp_path, monkeypatch):
    smoke_tmp, result = smoke_run
    # the smoke preset's RL: 2 batches of 16, evaluated (and saved) after each; killed in the second
    logged, again = killed_and_run_again(smoke_tmp, tmp_path, monkeypatch, 'rl', trainer, 'collect_abstract', 2)
    assert 'internal RL: going on from' in logged and 'at 16 of 32 episodes' in logged
    assert again['rl']['internal'] == result['rl']['internal']   # as the uninterrupted smoke run ended

    progress = tmp_path / 'run' / 'rl' / 'progress_internal.pt'
    progress.write_bytes(b'unreadable')   # --force starts afresh, without reading it
    log = tmp_path / 'run' / 'run.log'
    before = log.read_text()
    run(tmp_path, '--phases', 'rl', '--force')
    assert 'going on from' not in log.read_text()[len(before):] and progress.read_bytes() != b'unreadable'


def seeded_base():
    """A fresh smoke-size base with the same initial weights every call (its progress records them)."""
    torch.manual_seed(0)
    return build_transformer(pinpad_adapter(), smoke_config().model)


def test_an_interrupted_pretraining_goes_on_from_its_progress_exactly(smoke_run, tmp_path, monkeypatch):
    smoke_tmp, _ = smoke_run
    config = replace(smoke_config().pretrain, steps = 6)
    dataset = data.load(smoke_tmp / 'run' / 'data', 'pretrain')

    straight_model = seeded_base()
    straight = pretrain.train(straight_model, dataset, config, 0, 'cpu', False)
    step = pretrain.train_step
    monkeypatch.setattr(pretrain, 'train_step', killed_on_call(step, 5))   # killed in step 5; saves came after steps 2 and 4
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(seeded_base(), dataset, config, 0, 'cpu', False, progress_file = tmp_path / 'progress.pt', save_every = 2)
    monkeypatch.setattr(pretrain, 'train_step', step)

    model = seeded_base()
    with logged_messages() as messages:
        assert pretrain.train(model, dataset, config, 0, 'cpu', False, progress_file = tmp_path / 'progress.pt', save_every = 2) == straight
    assert any('pretrain: going on from' in m and 'at 4 of 6 steps' in m for m in messages)
    assert_same_weights(model, straight_model)
    with pytest.raises(ValueError, match = r'other settings \(lr: saved 0.001, now 0.002\)'):
        pretrain.train(seeded_base(), dataset, replace(config, lr = 2e-3), 0, 'cpu', False, progress_file = tmp_path / 'progress.pt')
    with pytest.raises(ValueError, match = r'other settings \(data_sha256: '):   # other data: another run
        pretrain.train(seeded_base(), dataset.head(len(dataset) - 1), config, 0, 'cpu', False, progress_file = tmp_path / 'progress.pt')


def test_a_cooldown_decays_the_rate_over_the_last_steps_and_ties_the_progress_to_its_budget(smoke_run, tmp_path, monkeypatch):
    config = replace(smoke_config().pretrain, steps = 6, cooldown_steps = 3)
    assert [pretrain.learning_rate(config, step) / config.lr for step in range(6)] == pytest.approx([1, 1, 1, 1, 2 / 3, 1 / 3])
    assert {pretrain.learning_rate(replace(config, cooldown_steps = 0), step) for step in range(6)} == {config.lr}

    rates, step = [], pretrain.train_step   # the rate each optimiser step actually took
    monkeypatch.setattr(pretrain, 'train_step', lambda model, batch, optimizer, *rest: rates.append(optimizer.param_groups[0]['lr'])
                        or step(model, batch, optimizer, *rest))
    dataset = data.load(smoke_run[0] / 'run' / 'data', 'pretrain')

    pretrain.train(seeded_base(), dataset, config, 0, 'cpu', False, progress_file = tmp_path / 'progress.pt')
    assert rates == pytest.approx([pretrain.learning_rate(config, step) for step in range(6)])
    # a larger budget would have decayed later: the run is finished, not one to go on from
    with pytest.raises(ValueError, match = r'other settings \(cooldown_ends_at: saved 6, now 8\)'):
        pretrain.train(seeded_base(), dataset, replace(config, steps = 8), 0, 'cpu', False, progress_file = tmp_path / 'progress.pt')


def test_an_interrupted_discovery_goes_on_from_its_progress_exactly(smoke_run, tmp_path, monkeypatch):
    smoke_tmp, _ = smoke_run
    model = Run(smoke_tmp / 'run', smoke_config(), pinpad_adapter()).load_model()
    demos = data.load(smoke_tmp / 'run' / 'data', 'discovery')
    # rotation-consistent, so that the loss's own numpy stream (the quarter turns) is saved and restored too
    config = replace(smoke_config().discovery, steps = 6, rotation_consistency = True)
    streams = discover.precompute(model, demos, config.batch_size, 0, 'cpu')
    rotations = pinpad_adapter().episode_rotations(True)

    def train(alpha = 0.1, **kwargs):
        torch.manual_seed(0)
        meta = build_meta_controller(model.dim, config)
        return meta, discover.train(model, meta, streams, alpha, config, 0, False, rotate_episodes = rotations, **kwargs)

    straight_meta, straight = train()
    monkeypatch.setattr(discover, 'SAVE_EVERY', 2)
    turned = discover.turned_action_nll
    monkeypatch.setattr(discover, 'turned_action_nll', killed_on_call(turned, 5))   # killed in step 5; saves came after steps 2 and 4
    progress = dict(progress_file = tmp_path / 'progress.pt', data_sha256 = demos.fingerprint())
    with pytest.raises(KeyboardInterrupt):
        train(**progress)
    monkeypatch.setattr(discover, 'turned_action_nll', turned)

    with logged_messages() as messages:
        meta, again = train(**progress)
    assert again == straight and any('discovery α=0.1: going on from' in m and 'at 4 of 6 steps' in m for m in messages)
    assert_same_weights(meta, straight_meta)
    with pytest.raises(ValueError, match = r'other settings \(alpha: saved 0.1, now 0.2\)'):
        train(0.2, **progress)
    with pytest.raises(ValueError, match = r'other settings \(data_sha256: '):
        train(progress_file = tmp_path / 'progress.pt', data_sha256 = demos.head(len(demos) - 1).fingerprint())
    with pytest.raises(ValueError, match = r'needs the fingerprint of the episodes'):
        train(progress_file = tmp_path / 'progress.pt')


def test_a_frozen_switching_unit_leaves_when_to_switch_to_the_start(smoke_run):
    smoke_tmp, _ = smoke_run
    model = Run(smoke_tmp / 'run', smoke_config(), pinpad_adapter()).load_model()
    config = replace(smoke_config().discovery, steps = 3, freeze_switching_steps = 3)
    streams = discover.precompute(model, data.load(smoke_tmp / 'run' / 'data', 'discovery'), config.batch_size, 0, 'cpu')
    torch.manual_seed(0)
    meta = build_meta_controller(model.dim, config)
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    discover.train(model, meta, streams, 0.1, config, 0, False)
    frozen = ('history.', 'switching.')
    assert all(torch.equal(before[k], v) for k, v in meta.state_dict().items() if k.startswith(frozen))
    assert not all(torch.equal(before[k], v) for k, v in meta.state_dict().items() if k.startswith('encoder.'))
    assert all(parameter.requires_grad for parameter in meta.parameters())   # as it was: the freeze lasts the training only
    # frozen for the first step of three: they train after it
    discover.train(model, meta, streams, 0.1, replace(config, freeze_switching_steps = 1), 0, False)
    assert not any(torch.equal(before[k], v) for k, v in meta.state_dict().items() if k.startswith('switching.to_logit'))


def test_an_interrupted_control_phase_goes_on_in_the_pipeline(smoke_run, tmp_path, monkeypatch):
    smoke_tmp, result = smoke_run
    monkeypatch.setattr(discover, 'SAVE_EVERY', 4)
    # 10 steps: killed in step 7, saved after 4
    logged, again = killed_and_run_again(smoke_tmp, tmp_path, monkeypatch, 'control', control, 'controlled_nll', 7)
    assert 'control: going on from' in logged and 'at 4 of 10 steps' in logged
    assert again['control'] == result['control']   # as the uninterrupted smoke run ended


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match = r'needs .*pretrain/model.pt.*--phases pretrain,discover'):
        run(tmp_path, '--phases', 'discover')


def smoke_settings(tmp_path, settings: dict) -> Run:
    """A smoke-preset run with {'section.field': value} settings, for the phases' own helpers."""
    return Run(tmp_path / 'run', override(smoke_config(), settings), pinpad_adapter())


def perturbed(module):
    """Weights no fresh build has, so that a start from the checkpoint is told from a fresh one."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter))
    return module


def assert_same_weights(a, b):
    first, second = a.state_dict(), b.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_start_checkpoint_of_another_shape_names_its_flag_and_tensors(tmp_path):
    config = smoke_config()
    build_transformer(pinpad_adapter(), override(config, {'model.ff_mult': 4}).model).save(tmp_path / 'model.pt')
    build_meta_controller(config.model.dim, override(config, {'discovery.dim_latent': 4}).discovery).save(tmp_path / 'meta.pt')
    with pytest.raises(ValueError, match = r"--pretrain.init .*model.pt: .*the --model.\* and --pretrain.next_event_weight settings describe "
                                           r"\(6 tensors differ, e.g. \['lower_body.layers.1.1.ff.0.0.bias', "):
        initial_model(smoke_settings(tmp_path, {'pretrain.init': str(tmp_path / 'model.pt')}))
    with pytest.raises(ValueError, match = r"--discovery.init .*meta.pt: .*the --discovery.\* settings describe "
                                           r"\(6 tensors differ, e.g. \['decoder.hidden.0.weight', 'encoder.2.bias'"):
        initial_meta_controller(smoke_settings(tmp_path, {'discovery.init': str(tmp_path / 'meta.pt')}), config.model.dim)


def test_discovery_starts_every_alpha_from_the_init_checkpoint(tmp_path):
    config = smoke_config()
    saved = perturbed(build_meta_controller(config.model.dim, config.discovery))
    saved.save(tmp_path / 'meta.pt')
    run = smoke_settings(tmp_path, {'discovery.init': str(tmp_path / 'meta.pt')})
    first, second = (initial_meta_controller(run, config.model.dim) for _ in range(2))
    with torch.no_grad():   # a copy per alpha: training one leaves the next's start alone
        next(first.parameters()).add_(1.)
    assert first is not second
    assert_same_weights(second, saved)


def test_discovery_init_keeps_the_runs_settings_that_change_no_shape(tmp_path):
    config = smoke_config()
    build_meta_controller(config.model.dim, config.discovery).save(tmp_path / 'meta.pt')   # no Gumbel switch
    run = smoke_settings(tmp_path, {'discovery.init': str(tmp_path / 'meta.pt'), 'discovery.switch_gumbel_temperature': 1.})
    assert initial_meta_controller(run, config.model.dim).switching.gumbel_temperature == 1.


def test_two_stage_discovery_starts_every_alpha_from_the_papers_objective(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    # a second stage too slow to move its weights: the metacontroller it saves is the first stage's
    settings = {'discovery.first_stage_steps': 3, 'discovery.first_stage_alpha': 0.2, 'discovery.rotation_consistency': True,
                'discovery.switch_gumbel_temperature': 1., 'discovery.lr': 1e-12}
    first = override(smoke_config(), settings).discovery.first_stage()
    assert (first.steps, first.alpha, first.rotation_consistency, first.switch_gumbel_temperature) == (3, 0.2, False, 0.)

    result = run(tmp_path, '--phases', 'discover', '--force', *(f for key, value in settings.items() for f in (f'--{key}', str(value))))
    stage = result['discovery']['first_stage']
    assert (stage['alpha'], stage['steps']) == (0.2, 3) and 0 <= stage['switch_f1'] <= 1
    folder = smoke_settings(tmp_path, settings)
    saved = MetaController.init_and_load(tmp_path / 'run' / 'discover' / 'first_stage_meta_controller.pt')
    second = initial_meta_controller(folder, smoke_config().model.dim, start = saved)
    assert_same_weights(second, saved)
    assert second.switching.gumbel_temperature == 1. and saved.switching.gumbel_temperature is None   # each stage's own settings
    downstream = MetaController.init_and_load(tmp_path / 'run' / 'discover' / 'meta_controller.pt').state_dict()
    assert all(torch.allclose(downstream[k], v, atol = 1e-6) for k, v in saved.state_dict().items())
    progress = torch.load(folder.progress_path('discover', 'first_stage'), map_location = 'cpu', weights_only = True)
    assert progress['step'] == 3 and len(progress['trace']) == 3   # the first stage trained its own steps


def test_switch_surprise_and_contrast_are_the_base_nll_at_the_switches_over_its_mean_and_the_rest():
    """Steps 1 .. len - 1 only: the first step always chooses and padding is not a step."""
    nll = torch.tensor([[9., 1., 4., 1., 9.], [9., 1., 1., 4., 9.]])
    beta = torch.tensor([[1., 0., 1., 0., 1.], [1., 0., 0., 0.7, 0.]])
    sums = discover.base_surprise(nll, beta, torch.tensor([4, 5]))   # row 0's last step is padding
    assert sums.tolist() == [8., 2., 21., 7.]
    scores = discover.surprise_scores(sums)
    assert scores['switch_surprise'] == pytest.approx((8 / 2) / (21 / 7))
    assert scores['switch_contrast'] == pytest.approx((8 / 2) / (13 / 5))   # against the five steps without a switch
    assert all(math.isnan(score) for score in discover.surprise_scores(torch.tensor([0., 0., 6., 3.])).values())


def test_a_start_that_rarely_switches_ranks_last_whatever_its_contrast():
    rare = 1 + MIN_SWITCHES_PER_EPISODE / 2   # switches per episode, the forced one at step 0 included
    starts = [dict(switch_contrast = float('nan'), switches_per_episode = 1.),
              dict(switch_contrast = 5., switches_per_episode = rare),          # a high score from a handful of switches
              dict(switch_contrast = 1.2, switches_per_episode = 1 + MIN_SWITCHES_PER_EPISODE),
              dict(switch_contrast = 1.8, switches_per_episode = 3.)]
    assert [start_rank(start) for start in starts] == [-math.inf, -math.inf, 1.2, 1.8]


def test_first_stage_restarts_go_on_from_the_start_the_base_is_most_surprised_at(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    settings = {'discovery.first_stage_steps': 4, 'discovery.first_stage_restarts': 3, 'discovery.first_stage_restart_steps': 2}
    result = run(tmp_path, '--phases', 'discover', '--force', *(f for key, value in settings.items() for f in (f'--{key}', str(value))))
    stage = result['discovery']['first_stage']
    starts = stage['restarts']
    assert [start['seed'] for start in starts] == [0, 1000, 2000] and stage['restart_steps'] == 2
    scores = [start_rank(start) for start in starts]
    assert stage['restart'] == scores.index(max(scores)) and stage['seed'] == starts[stage['restart']]['seed']
    folder = smoke_settings(tmp_path, settings)
    steps = [torch.load(folder.progress_path('discover', f'first_stage_start_{r}'), map_location = 'cpu', weights_only = True)['step']
             for r in range(3)]
    assert steps == [4 if r == stage['restart'] else 2 for r in range(3)]   # the picked start went on to the full stage
    saved = MetaController.init_and_load(tmp_path / 'run' / 'discover' / 'first_stage_meta_controller.pt')
    progress = torch.load(folder.progress_path('discover', f'first_stage_start_{stage["restart"]}'), map_location = 'cpu', weights_only = True)
    assert all(torch.equal(progress['module'][k], v) for k, v in saved.state_dict().items())
    # start 0 is the run's own first stage: as many steps of a run without restarts give the same weights
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'plain' / 'run')
    run(tmp_path / 'plain', '--phases', 'discover', '--force', '--discovery.first_stage_steps', str(steps[0]))
    plain = torch.load(smoke_settings(tmp_path / 'plain', {}).progress_path('discover', 'first_stage'), map_location = 'cpu', weights_only = True)
    start = torch.load(folder.progress_path('discover', 'first_stage_start_0'), map_location = 'cpu', weights_only = True)
    assert all(torch.equal(plain['module'][k], v) for k, v in start['module'].items())


def test_the_first_stage_starts_no_more_once_a_start_meets_the_stop_and_goes_on_with_it(smoke_run, tmp_path, monkeypatch):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    settings = {'discovery.first_stage_steps': 3, 'discovery.first_stage_restarts': 4, 'discovery.first_stage_restart_steps': 2,
                'discovery.first_stage_stop_contrast': 1000, 'discovery.first_stage_stop_switches': 2.5}
    # start 0 ranks highest but does not meet the stop (as a start on half the boundaries); start 1 meets it and goes on
    monkeypatch.setattr(phases, 'start_rank', lambda start: 5000 - start['seed'])
    monkeypatch.setattr(phases.StopRule, '__call__', lambda self, start: start['seed'] == 1000)
    stage = run(tmp_path, '--phases', 'discover', '--force', *(f for key, value in settings.items() for f in (f'--{key}', str(value))))['discovery']['first_stage']
    assert [start['seed'] for start in stage['restarts']] == [0, 1000] and stage['restart'] == 1
    assert (stage['stop_contrast'], stage['stop_switches']) == (1000, 2.5)
    folder = smoke_settings(tmp_path, settings)
    assert [folder.progress_path('discover', f'first_stage_start_{r}').is_file() for r in range(4)] == [True, True, False, False]
    assert torch.load(folder.progress_path('discover', 'first_stage_start_1'), map_location = 'cpu', weights_only = True)['step'] == 3


def test_the_stop_among_starts_needs_the_contrast_and_the_switches():
    stop = phases.StopRule(contrast = 1.7, switches = 2.5)
    row = lambda contrast, switches: dict(switch_contrast = contrast, switches_per_episode = switches)
    # the rows of docs/reproduction.md: every boundary (some extra switches), half the boundaries, first colours,
    # and a start with almost no switch after the first step, whose contrast rests on a handful of switches
    assert [stop(row(c, n)) for c, n in [(1.932, 3.26), (1.933, 2.01), (1.356, 3.91), (2.218, 1.004)]] == [True, False, False, False]
    assert not phases.StopRule()(row(1e9, 1e9)) and phases.StopRule().record() == {}
    assert phases.StopRule(1.96).record() == dict(stop_contrast = 1.96) and stop.record() == dict(stop_contrast = 1.7, stop_switches = 2.5)


def test_a_third_stage_frees_the_switching_unit_from_the_second_stages_weights(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    settings = {'discovery.steps': 3, 'discovery.freeze_switching_steps': 3, 'discovery.third_stage_steps': 2}
    discovery = run(tmp_path, '--phases', 'discover', '--force', *(f for key, value in settings.items() for f in (f'--{key}', str(value))))['discovery']
    assert [entry['third_stage_steps'] for entry in discovery['alpha_sweep']] == [2, 2]
    folder = smoke_settings(tmp_path, settings)
    second, third = (torch.load(folder.progress_path('discover', name), map_location = 'cpu', weights_only = True)
                     for name in ('alpha_0.05', 'alpha_0.05_third_stage'))
    assert (second['step'], third['step']) == (3, 2)
    assert second['settings'] != third['settings']   # the third stage's own: 2 steps, the unit free
    saved = MetaController.init_and_load(tmp_path / 'run' / 'discover' / 'meta_controller.pt')
    assert all(torch.equal(third['module'][k], v) for k, v in saved.state_dict().items())   # downstream: the third stage's
    switching = [k for k in second['module'] if k.startswith('switching.')]
    assert switching and not any(torch.equal(second['module'][k], third['module'][k]) for k in switching)


def test_each_alpha_goes_on_from_the_best_of_its_starts(smoke_run, tmp_path, monkeypatch):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    settings = {'discovery.first_stage_steps': 3, 'discovery.restarts': 3, 'discovery.restart_steps': 4}
    monkeypatch.setattr(phases, 'start_rank', lambda start: start['seed'])   # the last start wins: not the run's own
    discovery = run(tmp_path, '--phases', 'discover', '--force', *(f for key, value in settings.items() for f in (f'--{key}', str(value))))['discovery']
    assert [(entry['seed'], entry['restart'], entry['restart_steps'], [start['seed'] for start in entry['restarts']])
            for entry in discovery['alpha_sweep']] == [(2000, 2, 4, [0, 1000, 2000])] * 2
    assert discovery['seed'] == 2000 and 'restarts' not in discovery['first_stage']
    folder = smoke_settings(tmp_path, settings)
    progress = {name: torch.load(folder.progress_path('discover', name), map_location = 'cpu', weights_only = True)
                for name in ('alpha_0.05', 'alpha_0.05_start_1', 'alpha_0.05_start_2')}
    assert [p['step'] for p in progress.values()] == [4, 4, smoke_config().discovery.steps]   # the picked start went on
    saved = MetaController.init_and_load(tmp_path / 'run' / 'discover' / 'meta_controller.pt').state_dict()
    assert all(torch.equal(progress['alpha_0.05_start_2']['module'][k], v) for k, v in saved.items())
    # start 0 is the run's own: as many steps of a run with one start give the same weights
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'plain' / 'run')
    run(tmp_path / 'plain', '--phases', 'discover', '--force', '--discovery.first_stage_steps', '3', '--discovery.steps', '4')
    plain = torch.load(smoke_settings(tmp_path / 'plain', {}).progress_path('discover', 'alpha_0.05'), map_location = 'cpu', weights_only = True)
    assert all(torch.equal(plain['module'][k], v) for k, v in progress['alpha_0.05']['module'].items())


def test_the_ratio_loss_settings_reach_the_metacontroller():
    config = override(smoke_config(), {'discovery.ratio_loss_weight': 0.5, 'discovery.target_segment_length': 10.})
    meta = build_meta_controller(config.model.dim, config.discovery)
    assert (meta.ratio_loss_weight, meta.target_segment_length) == (0.5, 10.)


def test_a_missing_init_checkpoint_is_an_error_before_any_phase(tmp_path):
    for flag in ('pretrain.init', 'discovery.init'):
        with pytest.raises(ValueError, match = f'--{flag} .*no such checkpoint file'):
            validate(override(smoke_config(), {flag: str(tmp_path / 'missing.pt')}))


def test_pretrain_init_with_no_steps_keeps_the_model_as_is(tmp_path):
    saved = perturbed(build_transformer(pinpad_adapter(), smoke_config().model))
    saved.save(tmp_path / 'init.pt')
    result = run(tmp_path, '--phases', 'data,pretrain', '--pretrain.init', str(tmp_path / 'init.pt'), '--pretrain.steps', '0')
    assert_same_weights(smoke_settings(tmp_path, {}).load_model(), saved)   # the pretrain phase's model.pt
    assert result['pretrain']['init'] == str(tmp_path / 'init.pt') and result['pretrain']['final_train_action_nll'] is None


def test_a_larger_budget_goes_on_from_the_progress_without_force(smoke_run, tmp_path):
    smoke_tmp, result = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    with pytest.raises(ValueError, match = 'add baselines to --phases'):   # same budget for internal RL and the baselines
        run(tmp_path, '--phases', 'rl', '--rl.total_episodes', '64')
    with pytest.raises(ValueError, match = r'other settings \(rl.lr, rl.total_episodes\)'):   # a budget and something else
        run(tmp_path, '--rl.total_episodes', '64', '--rl.lr', '1e-3')
    log = tmp_path / 'run' / 'run.log'
    before = log.read_text()
    again = run(tmp_path, '--rl.total_episodes', '64')
    new = log.read_text()[len(before):]
    assert 'rl.total_episodes rose from 32 to 64: phase(s) rl, baselines go on from their progress' in new
    assert 'internal RL: going on from' in new and 'at 32 of 64 episodes' in new
    assert 'phase pretrain: start' not in new and 'phase discover: start' not in new
    assert 'phase report: reads what rl, baselines write, redone' in new and 'phase report: start' in new
    for name in ('internal', 'raw_action', 'no_temporal_abstraction'):
        old, longer = result['rl'][name], again['rl'][name]
        assert (old['episodes'], longer['episodes']) == (32, 64)
        assert longer['curve'][:len(old['curve'])] == old['curve']   # the evaluations so far are kept, then go on
    with pytest.raises(ValueError, match = r'other settings \(rl.total_episodes\)'):   # a smaller budget cannot be untrained
        run(tmp_path, '--rl.total_episodes', '32')


def test_the_readers_of_a_longer_phase_are_redone():
    assert runner.readers(('rl', 'baselines')) == ('report',)
    assert runner.readers(('discover',)) == ('rl', 'baselines', 'report')
    assert runner.readers(('pretrain',)) == ('probe', 'control', 'discover', 'rl', 'baselines', 'report')
    assert runner.readers(()) == ()
    # two longer phases, one reading the other: its progress was made from what the first replaces
    assert runner.readers(('pretrain', 'discover')) == ('probe', 'control', 'discover', 'rl', 'baselines', 'report')


def test_a_cooled_down_pretraining_budget_cannot_rise(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    steps = str(smoke_config().pretrain.steps)
    run(tmp_path, '--phases', 'pretrain', '--pretrain.cooldown_steps', steps, '--force')
    # refused before any phase runs, not logged as going on and then refused by the pretrain phase's progress
    with pytest.raises(ValueError, match = rf'pretrain.steps cannot rise \(--pretrain.cooldown_steps {steps} decays the rate to 0 at the old budget'):
        run(tmp_path, '--phases', 'pretrain', '--pretrain.cooldown_steps', steps, '--pretrain.steps', '40')


def test_changed_settings_need_force_or_a_new_folder(smoke_run):
    smoke_tmp, _ = smoke_run
    with pytest.raises(ValueError, match = 'pretrain.steps'):
        run(smoke_tmp, '--pretrain.steps', '3')


def test_settings_no_finished_phase_has_read_may_change(tmp_path):
    run(tmp_path, '--phases', 'data')
    # a smaller RL budget and another alpha: no phase that reads them has run, so nothing is mixed
    run(tmp_path, '--phases', 'data', '--rl.total_episodes', '16', '--discovery.alpha', '0.2')
    recorded = json.loads((tmp_path / 'run' / 'config.json').read_text())['config']
    assert (recorded['rl']['total_episodes'], recorded['discovery']['alpha']) == (16, 0.2)
    assert 'settings changed (discovery.alpha, rl.total_episodes) that no finished phase has read' in (tmp_path / 'run' / 'run.log').read_text()
    # the held-out task is an RL setting that the data phase reads (its post-task episodes)
    with pytest.raises(ValueError, match = r'other settings \(rl.task\)'):
        run(tmp_path, '--phases', 'data', '--rl.total_episodes', '16', '--discovery.alpha', '0.2', '--rl.task', 'ACBD')


def test_every_config_section_names_its_readers():
    assert set(phases.SECTION_READERS) == set(sections(smoke_config()))
    assert runner.setting_readers('rl.lr') == ('rl', 'baselines', 'report')
    assert runner.setting_readers('rl.task')[0] == 'data' and runner.setting_readers('report.plot_episodes') == ('report',)


@pytest.mark.parametrize('flags, message', [
    (['--phases', 'pretrain,nonsense'], 'unknown phase'),
    (['--preset', 'huge'], 'invalid choice'),
    (['--pretrain.steps', 'many'], 'invalid int'),
    (['--seeds', '0'], '--seeds must be >= 1'),
    (['--seed', '-1'], '--seed must be >= 0, got -1'),
    (['--threads', '-2'], '--threads must be >= 0, got -2'),
    (['--model.depth', '3'], '--model.depth must be even (the metacontroller sits at L/2), got 3'),
    (['--model.heads', '0'], '--model.heads must be >= 1, got 0'),
    (['--pretrain.steps', '-1'], '--pretrain.steps must be >= 0, got -1'),
    (['--pretrain.steps', '0'], '--pretrain.steps 0 keeps the model untrained'),
    (['--pretrain.lr', 'nan'], '--pretrain.lr must be finite and > 0, got nan'),
    (['--pretrain.steps', '20', '--pretrain.cooldown_steps', '21'], '--pretrain.cooldown_steps must be <= --pretrain.steps (20), got 21'),
    (['--discovery.alpha', '-0.1'], '--discovery.alpha must be finite and >= 0, got -0.1'),
    (['--discovery.sweep_alphas', '0.1,-1'], '--discovery.sweep_alphas must be finite and >= 0, got -1.0'),
    (['--discovery.hypernetwork_low_rank', '33'], '--discovery.hypernetwork_low_rank must be <= --model.dim (32), got 33'),
    (['--data.pretrain_epsilon', '1.5'], '--data.pretrain_epsilon must be a probability, <= 1, got 1.5'),
    (['--rl.clip', '0'], '--rl.clip must be finite and > 0, got 0.0'),
    (['--rl.num_envs', '0', '--rl.epochs', '0'], '--rl.num_envs must be >= 1, got 0; --rl.epochs must be >= 1, got 0'),
    (['--rl.task', 'ABX'], "--rl.task: subgoal names must be a non-empty string over 'ABCD', got 'ABX'"),
    (['--discovery.select_alpha', 'best'], "--discovery.select_alpha must be one of fixed, switch_f1, got 'best'"),
    (['--discovery.target_segment_length', '0.5'], '--discovery.target_segment_length must be > 1 (steps per segment), got 0.5'),
    (['--rl.codebook', '1'], '--rl.codebook must be 0 (off: a Gaussian over z, the paper) or >= 2 codes to choose among, got 1'),
    (['--rl.codebook', '-2'], '--rl.codebook must be >= 0, got -2'),
    (['--rl.codebook_spread', '0.2'], '--rl.codebook_spread 0.2 needs a codebook to draw around: give --rl.codebook K >= 2'),
    (['--rl.codebook', '2', '--rl.codebook_spread', '-1'], '--rl.codebook_spread must be finite and >= 0, got -1.0'),
    (['--discovery.first_stage_stop_contrast', '2'], '--discovery.first_stage_stop_contrast 2.0 stops among first-stage starts: '
                                                      'give --discovery.first_stage_restarts N >= 2, got 1'),
    (['--discovery.first_stage_stop_switches', '2.5'], '--discovery.first_stage_stop_switches 2.5 is part of the stop among '
                                                       'first-stage starts: give --discovery.first_stage_stop_contrast C > 0'),
    (['--discovery.first_stage_restarts', '2'], '--discovery.first_stage_restarts 2 picks among first-stage starts: it needs '
                                                 '0 < --discovery.first_stage_restart_steps <= --discovery.first_stage_steps, got 3200 and 0'),
    (['--discovery.restarts', '2'], '--discovery.restarts 2 picks among the starts of each alpha: it needs '
                                     '0 < --discovery.restart_steps <= --discovery.steps, got 400 and 10'),
    (['--rl.codebook', '2', '--rl.codebook_spread_after', '16'], '--rl.codebook_spread_after 16 starts a spread: give --rl.codebook_spread'),
    (['--rl.codebook', '2', '--rl.codebook_spread', '0.2', '--rl.codebook_spread_after', '32'],
     '--rl.codebook_spread_after must leave episodes for the spread: less than --rl.total_episodes (32), got 32'),
])
def test_bad_flags_are_rejected_before_any_work(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        run(tmp_path, *flags)
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()   # no config.json, no phase ran


def test_next_colours_name_the_next_stage_of_each_expert_subgoal():
    """The next-event targets of pinpad are read from the observations alone, yet on expert episodes they name the
    labelled subgoal (colours 2k and 2k + 1 form subgoal k); none after an episode's last entry, none in padding."""
    demos = generate_pinpad_demos(8, seed = 5, num_envs = 8, progress = False)
    batch = demos.batch(np.arange(len(demos)))
    targets = next_colours(batch.observations)
    valid = torch.arange(targets.shape[1]) < batch.episode_lens[:, None]
    known = valid & (targets >= 0)
    assert torch.equal(targets[known] // 2, batch.subgoals[known].long())
    assert (targets[~valid] == -1).all() and (targets[torch.arange(len(demos)), batch.episode_lens - 1] == -1).all()
    assert 0.5 < known[valid].float().mean() < 1


def test_colour_entries_are_each_pairs_two_colours_and_score_a_shifted_segmentation():
    """Pinpad's events, read from the observations alone: on expert episodes every boundary after the first step is the
    entry of a pair's second colour, and the entries inside a subgoal are its first colour, one per subgoal. Switches on
    those first colours (half a pair early) score F1 1 against the inner events, where the boundary F1 misses them."""
    demos = generate_pinpad_demos(16, seed = 5, num_envs = 8, progress = False)
    batch = demos.batch(np.arange(len(demos)))
    entries, colour = colour_entries(batch.observations), colours_underfoot(batch.observations)
    valid = torch.arange(entries.shape[1]) < batch.episode_lens[:, None]
    later = batch.boundaries.clone()
    later[:, 0] = False                                          # t = 0 is a boundary by construction, not an entry
    assert (entries[later]).all() and (colour[later] % 2 == 1).all() and not (entries & ~valid).any()
    inner = entries & ~batch.boundaries
    assert torch.equal(colour[inner] // 2, batch.subgoals[inner].long()) and (colour[inner] % 2 == 0).all()
    assert torch.equal(inner.sum(1), batch.boundaries.sum(1))   # one first colour per subgoal
    shifted = inner.float()
    assert switch_counts(shifted, inner, batch.episode_lens).f1 == 1
    assert switch_counts(shifted, batch.boundaries, batch.episode_lens).f1 < 0.5
    assert switch_counts(shifted, entries, batch.episode_lens, tolerance = 0).precision == 1


def test_the_next_event_head_is_pretrained_reported_and_carried_downstream(tmp_path, capsys):
    """--pretrain.next_event_weight: the base gets the head, pretraining trains it, results report it on the held-out
    set, and the later phases run on that base; an env without next events is refused before any work."""
    result = run(tmp_path, '--phases', 'data,pretrain,control', '--pretrain.next_event_weight', '0.5')
    scores = result['pretrain']
    assert 0 < scores['next_event_steps'] < 1 and 0 <= scores['next_event_accuracy'] <= 1 and scores['next_event_ce'] > 0
    model = Run(tmp_path / 'run', smoke_config(), pinpad_adapter()).load_model()
    assert model.event_readout.out_features == 8 and 0 <= result['control']['pretraining_tasks']['controlled']['success'] <= 1
    with pytest.raises(ValueError, match = r"--pretrain.init .*: .*--pretrain.next_event_weight settings describe .*'event_readout.bias'"):
        initial_model(smoke_settings(tmp_path, {'pretrain.init': str(tmp_path / 'run' / 'pretrain' / 'model.pt')}))
    with pytest.raises(SystemExit):
        main(babyai_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'babyai'), '--pretrain.next_event_weight', '0.3'])
    assert '--pretrain.next_event_weight: babyai defines no next events to predict' in capsys.readouterr().err
    assert not (tmp_path / 'babyai').exists()


def test_another_held_out_task_runs_end_to_end(tmp_path):
    """--rl.task reaches every phase that uses the held-out task: its demos, the plots' episodes, RL."""
    result = run(tmp_path, '--rl.task', 'ACBD', '--discovery.select_alpha', 'switch_f1')
    post = np.load(tmp_path / 'run' / 'data' / 'post_task.npz')
    first = post['subgoals'][:post['episode_lens'][0]]
    assert ''.join('ABCD'[g] for i, g in enumerate(first) if i == 0 or g != first[i - 1]) == 'ACBD'
    assert 'post-training task (ACBD)' in read_json(tmp_path / 'run' / 'discover' / 'figures.json')['episodes']
    sweep = result['discovery']['alpha_sweep']
    assert result['discovery']['alpha'] == max(sweep, key = lambda p: p['switch_f1'])['alpha']
    assert result['discovery']['selected_by'] == 'switch_f1' and 0 <= result['rl']['internal']['success'] <= 1


@pytest.mark.parametrize('spread, after', [(0., 0), (0.2, 0), (0.2, 16)])
def test_an_action_codebook_reaches_internal_rl_and_beta1(smoke_run, tmp_path, spread, after):
    """--rl.codebook K: internal RL and β ≡ 1 choose among K k-means centroids of the held codes on the
    discovery data (the same for both; with --rl.codebook_spread, draw around them, from the start or after
    --rl.codebook_spread_after episodes of the exact codes), and the record says how the codes split among
    them and how widely each cluster spreads."""
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    result = run(tmp_path, '--phases', 'rl,baselines', '--force', '--rl.codebook', '3', '--rl.codebook_spread', str(spread),
                 '--rl.codebook_spread_after', str(after))
    codebook = result['rl']['internal']['codebook']
    assert codebook['size'] == 3 and math.isclose(sum(codebook['share']), 1, abs_tol = 1e-5) and 0 < codebook['purity'] <= 1
    assert len(codebook['majority_subgoal']) == 3 and codebook['codes'] > 3
    assert len(codebook['spread']) == 3 and all(v > 0 for v in codebook['spread'])
    internal = MetaController.init_and_load(tmp_path / 'run' / 'rl' / 'meta_controller.pt')
    beta1 = MetaController.init_and_load(tmp_path / 'run' / 'baselines' / 'beta1_meta_controller.pt')
    assert internal.action_codebook_size == 3 and torch.equal(internal.action_codebook, beta1.action_codebook)
    assert internal.action_codebook_spread == beta1.action_codebook_spread == spread
    assert 0 <= result['rl']['internal']['success'] <= 1
    for phase, name, key in (('rl', 'internal', 'internal'), ('baselines', 'beta1', 'no_temporal_abstraction')):
        entry = result['rl'][key]
        # one record of both stages: each batch counted once, the spread's after the exact policy's
        assert [e for e, _ in entry['curve']] == [16, 32] and entry['episodes'] == 32
        assert (tmp_path / 'run' / phase / f'progress_{name}_exact.pt').is_file() == bool(after)


def test_a_staged_spread_goes_on_from_its_exact_stage(smoke_run, tmp_path):
    """A larger --rl.total_episodes on a finished two-stage run trains only the spread further: the exact
    stage's record is kept as it was."""
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    flags = ('--phases', 'rl,baselines', '--rl.codebook', '3', '--rl.codebook_spread', '0.2', '--rl.codebook_spread_after', '16')
    before = run(tmp_path, *flags, '--force')['rl']['internal']
    after = run(tmp_path, *flags, '--rl.total_episodes', '48')['rl']['internal']
    assert after['curve'][:2] == before['curve'] and [e for e, _ in after['curve']] == [16, 32, 48]


def test_steering_rows_share_their_episodes():
    """With the control switched off (c = 0) every injected code leaves the base as it is: on the same
    seeded episodes each row must then equal the base's, entry for entry."""
    adapter, config = pinpad_adapter(), smoke_config()
    model = build_transformer(adapter, config.model).eval()
    meta = build_meta_controller(config.model.dim, config.discovery)
    meta.control_scale = 0.
    table = steering.steering_table(model, meta, torch.randn(4, config.discovery.dim_latent), 'ABCD',
                                    adapter.make_envs(adapter.pretraining_tasks), 24, seed = 3)
    assert all(table[x] == table['base'] for x in 'ABCD') and table['hit_rate'] == table['base_rate']
    assert abs(sum(table['base']) - 1) < 1e-6 and table['base'][-1] < 1   # some episodes entered a subgoal


def test_code_transfer_rebuilds_each_recorded_episode(smoke_run):
    """The own-layout row replays each held-out episode's env from its seed: the first observation is the
    recorded one, and with the control switched off (c = 0) the row is the base's, hit for hit."""
    smoke_tmp, _ = smoke_run
    adapter, config = pinpad_adapter(), smoke_config()
    heldout = data.load(smoke_tmp / 'run' / 'data', 'heldout')
    make_envs = adapter.make_envs([tuple(task) for task in heldout.metadata['tasks']])
    n = 12
    observations, _ = make_envs(n).reset(seed = [int(s) for s in heldout.seeds[:n]])
    assert np.array_equal(observations, heldout.batch(np.arange(n)).observations[:, 0].numpy())
    model = build_transformer(adapter, config.model).eval()
    meta = build_meta_controller(config.model.dim, config.discovery).eval()
    meta.control_scale = 0.
    transfer = steering.code_transfer(model, meta, heldout, make_envs, n, seed = 3)
    assert transfer.own_layout == transfer.base and 0 <= transfer.other_layout <= 1


def test_a_fixed_held_out_task_cannot_be_changed():
    adapter = babyai_adapter()
    assert adapter.with_post_task('') is adapter and adapter.with_post_task(adapter.post_task_name) is adapter
    with pytest.raises(ValueError, match = 'babyai has one post-training task'):
        babyai_adapter().with_post_task('ABCD')


@pytest.mark.parametrize('adapter', [pinpad_adapter(), babyai_adapter()], ids = ['pinpad', 'babyai'])
def test_every_preset_is_valid(adapter):
    for name in PRESETS:
        validate(adapter.preset(name))


def test_the_labelfree_preset_passes_pinpads_start_up_checks_and_names_itself_on_babyai(tmp_path, capsys):
    config = pinpad_adapter().preset('labelfree')
    assert config.discovery.first_stage_steps > 0 and config.rl.codebook > 0   # the recipe, not the default
    with pytest.raises(FileNotFoundError):   # past the env checks (next events, rotations): the empty folder has no base
        main(pinpad_adapter(), ['--preset', 'labelfree', '--run-dir', str(tmp_path / 'run'), '--phases', 'discover'])
    with pytest.raises(SystemExit):
        main(babyai_adapter(), ['--preset', 'labelfree', '--run-dir', str(tmp_path / 'babyai')])
    assert 'babyai defines no episode rotations (symmetries that move its subgoals; pinpad turns its grid) (--preset labelfree)' in capsys.readouterr().err


def test_threads_flag_is_restored(tmp_path):
    threads = torch.get_num_threads()
    with pytest.raises(FileNotFoundError):   # fails once the flag has taken effect, before any phase
        main(pinpad_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--threads', str(threads + 1), '--phases', 'discover'])
    assert torch.get_num_threads() == threads


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    (tmp_path / 'run').mkdir()
    with run_lock(tmp_path / 'run'):
        with pytest.raises(ValueError, match = 'in use by another run .*pass another --run-dir'):
            run(tmp_path, '--phases', 'data')
    assert not (tmp_path / 'run' / 'config.json').exists()


def test_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / 'record.json'
    write_json(path, dict(a = 1))

    def interrupted(self, text):   # the process dies halfway through writing
        open(self, 'w').write(text[:len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, 'write_text', interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, dict(a = 2, b = 'x' * 100))
    monkeypatch.undo()
    assert read_json(path) == dict(a = 1) and list(tmp_path.iterdir()) == [path]


def test_a_truncated_file_is_named(smoke_run, tmp_path):
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    config = tmp_path / 'run' / 'config.json'
    config.write_text(config.read_text()[:40])
    with pytest.raises(ValueError, match = r'run/config.json is not valid JSON \(.*\): delete it'):
        run(tmp_path, '--phases', 'report')


def test_summary_figure_stays_in_the_run_folder_unless_copied(smoke_run, tmp_path, monkeypatch):
    assert pinpad_adapter().preset('default').report.figure_copy == ''
    smoke_tmp, _ = smoke_run
    shutil.copytree(smoke_tmp / 'run', tmp_path / 'run')
    monkeypatch.chdir(tmp_path)
    run(tmp_path, '--phases', 'report', '--force')
    assert not (tmp_path / 'fig1.png').exists()
    run(tmp_path, '--phases', 'report', '--force', '--report.figure_copy', 'copy.png')
    assert (tmp_path / 'copy.png').read_bytes() == (tmp_path / 'run' / 'fig1.png').read_bytes()


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
    assert all((tmp_path / name).is_file() for name in ('rl_curves.png', 'fig1.png', 'rate_distortion.png'))
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


def test_a_busy_machine_is_named_at_start_up(monkeypatch):
    from metacontroller.pipeline import cli

    with logged_messages('WARNING') as lines:
        monkeypatch.setattr(cli.os, 'getloadavg', lambda: (0., 0., 0.), raising = False)
        cli.warn_if_busy()
        assert not lines
        monkeypatch.setattr(cli.os, 'getloadavg', lambda: (64., 0., 0.), raising = False)
        cli.warn_if_busy()
    assert len(lines) == 1 and '--threads' in lines[0]


@pytest.mark.parametrize('native', [True, False])
def test_emulated_bf16_is_named_at_start_up(monkeypatch, native):
    from metacontroller import distributed
    from metacontroller.pipeline import cli

    with logged_messages('WARNING') as lines:
        monkeypatch.setattr(distributed, 'native_bf16', lambda device: native)
        cli.warn_if_bf16_emulated(distributed.Process(mixed_precision = 'no'))
        cli.warn_if_bf16_emulated(distributed.Process(mixed_precision = 'bf16'))
    assert len(lines) == (0 if native else 1)
    assert native or '--mixed-precision no' in lines[0]


@pytest.mark.parametrize('device, capable', [('cpu', True), ('cpu', False), ('cuda:1', True), ('cuda:1', False)])
def test_native_bf16_asks_the_device_itself(monkeypatch, device, capable):
    from metacontroller.distributed import native_bf16

    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: capable)   # AVX-512 or not
    asked = []
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d: asked.append(d) or ((8, 0) if capable else (7, 5)))
    monkeypatch.setattr(torch.version, 'hip', None)
    assert native_bf16(device) is capable
    assert asked == ([torch.device(device)] if device.startswith('cuda') else [])   # the device given, not the current one


def test_rl_curve_bands_take_their_median_line_colour():
    # labels outside RL_STYLES have no fixed colour; the 25-75% band must still match its line
    from matplotlib.colors import to_rgba

    from metacontroller.pipeline.plots import draw_rl_curves, pyplot
    plt = pyplot()
    seeds = lambda level: [[[e, level + seed / 10] for e in (10, 20, 30, 40, 50)] for seed in range(3)]
    fig, ax = plt.subplots()
    draw_rl_curves(ax, {'first': seeds(0.1), 'second': seeds(0.5)}, smooth = 1)
    lines, bands = ax.get_lines(), ax.collections
    assert len(lines) == len(bands) == 2
    assert to_rgba(lines[0].get_color()) != to_rgba(lines[1].get_color())
    for line, band in zip(lines, bands):
        assert np.allclose(band.get_facecolor()[0][:3], to_rgba(line.get_color())[:3])
    plt.close(fig)
