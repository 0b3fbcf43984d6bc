"""BabyAI: the observation encoding, the bot's demonstrations, the batched env and the smoke pipeline."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from minigrid.core.constants import COLOR_NAMES

from metacontroller import Transformer
from metacontroller.demos import DemoDataset
from metacontroller.envs.babyai import (
    CONNECTORS,
    IMAGE_DIM,
    KINDS,
    LEVELS,
    MISSION_DIM,
    NUM_ACTIONS,
    OBJECT_TYPES,
    OBS_DIM,
    POST_TRAINING_LEVEL,
    PRETRAINING_LEVELS,
    SCENE_DIM,
    SLOT_DIM,
    SUBGOAL_NAMES,
    VecBabyAIEnv,
    decode,
    encode,
)
from metacontroller.envs.babyai_demos import generate_babyai_demos
from metacontroller.pipeline import cli
from metacontroller.pipeline.adapters.babyai import BABYAI_OVERRIDES, babyai_adapter
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.rl import evaluate

ALL_LEVELS = (*PRETRAINING_LEVELS, POST_TRAINING_LEVEL)


@pytest.fixture(scope = 'module')
def demos():
    return generate_babyai_demos(48, ALL_LEVELS, epsilon = 0., seed = 3, progress = False)


def test_encoding_shapes_and_round_trip():
    assert OBS_DIM == IMAGE_DIM + 4 + MISSION_DIM == 1009
    env = VecBabyAIEnv(4, ALL_LEVELS)
    obs, _ = env.reset(seed = [0, 1, 2, 3])
    assert obs.shape == (4, OBS_DIM) and obs.dtype == np.float32 and set(np.unique(obs)) <= {0., 1.}
    for slot, level in enumerate(env.envs):
        raw = level.gen_obs()
        image, direction, mission = decode(obs[slot])
        np.testing.assert_array_equal(image, raw['image'])
        assert direction == raw['direction']
        np.testing.assert_array_equal(encode(image, direction, mission), obs[slot].astype(bool))
        for i, ins in enumerate(level.instructions):   # each slot names the instruction's kind, colour and type
            words = np.flatnonzero(mission[i * SLOT_DIM:(i + 1) * SLOT_DIM])
            assert words.tolist() == [KINDS.index(ins.kind), len(KINDS) + COLOR_NAMES.index(ins.color),
                                      len(KINDS) + len(COLOR_NAMES) + OBJECT_TYPES.index(ins.type)]
        assert CONNECTORS[mission[-len(CONNECTORS):].argmax()] == level.level.connector


def test_bot_solves_sampled_missions(demos):
    assert len(demos) == 48 and demos.metadata['bot_success_rate'] > 0.95
    assert set(demos.task_ids.tolist()) <= set(range(len(ALL_LEVELS)))
    assert demos.subgoals.min() >= 0 and demos.subgoals.max() < len(SUBGOAL_NAMES)
    starts = demos.offsets
    assert demos.boundaries[starts].all()
    two_instruction = [i for i, t in enumerate(demos.task_ids) if len(LEVELS[ALL_LEVELS[t]].kinds) == 2]
    assert all(demos.boundaries[starts[i]:starts[i] + demos.episode_lens[i]].sum() == 2 for i in two_instruction)


def test_after_you_does_the_second_instruction_first(demos):
    post = ALL_LEVELS.index(POST_TRAINING_LEVEL)
    episode = int(np.flatnonzero(demos.task_ids == post)[0])
    labels = demos.subgoals[demos.offsets[episode]:demos.offsets[episode] + demos.episode_lens[episode]]
    assert labels[0] // 2 == 1 and labels[-1] // 2 == 0


def test_replaying_demos_in_the_batched_env_gives_the_same_observations_and_success(demos):
    """Data gathering and RL share one encoding and one episode-from-seed rule."""
    env = VecBabyAIEnv(len(demos), ALL_LEVELS)
    obs, _ = env.reset(seed = demos.seeds.tolist())
    batch = demos.batch(np.arange(len(demos)))
    success = np.zeros(len(demos), dtype = bool)
    for t in range(int(demos.episode_lens.max())):
        live = t < batch.episode_lens.numpy()
        np.testing.assert_array_equal(obs[live], batch.observations[live, t].numpy())
        obs, _, _, _, info = env.step(batch.actions[:, t].numpy())
        success |= info['success']
    assert success.all() and env.done.all()


def test_demos_repeat_with_the_seed_and_any_worker_count(tmp_path):
    one = generate_babyai_demos(8, PRETRAINING_LEVELS, epsilon = 0.2, seed = 1, progress = False)
    two = generate_babyai_demos(8, PRETRAINING_LEVELS, epsilon = 0.2, seed = 1, workers = 2, progress = False)
    one.save(tmp_path / 'demos.npz')
    again = DemoDataset.load(tmp_path / 'demos.npz')
    for name in ('observations', 'actions', 'subgoals', 'boundaries', 'episode_lens', 'seeds'):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))
        np.testing.assert_array_equal(getattr(one, name), getattr(again, name))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match = 'unknown BabyAI level'):
        VecBabyAIEnv(2, ('GoTo', 'Nope'))
    with pytest.raises(ValueError, match = 'epsilon'):
        generate_babyai_demos(4, epsilon = 1.5)
    with pytest.raises(ValueError, match = 'one seed per env'):
        VecBabyAIEnv(2).reset(seed = [1])
    with pytest.raises(ValueError, match = 'actions'):
        env = VecBabyAIEnv(2)
        env.reset(seed = [1, 2])
        env.step(np.array([0, 7]))


def test_babyai_presets_apply_and_user_flags_win():
    adapter = babyai_adapter()
    parser = cli.build_parser(adapter)
    documented = next(a.help for a in parser._actions if a.dest == 'data.pretrain_episodes')
    assert f"default: {BABYAI_OVERRIDES['default']['data.pretrain_episodes']!r}" in documented   # --help shows BabyAI's values
    config = cli.config_from_args(parser.parse_args(['--pretrain.steps', '7']), adapter)
    assert config.data.pretrain_episodes == BABYAI_OVERRIDES['default']['data.pretrain_episodes']
    assert config.discovery.alpha == BABYAI_OVERRIDES['default']['discovery.alpha'] and config.report.figure_copy == ''
    assert config.pretrain.steps == 7


def test_smoke_pipeline_end_to_end(tmp_path):
    result = cli.main(babyai_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--no-progress', '--threads', '1'])
    on_disk = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert on_disk['config']['data']['pretrain_episodes'] == 128 and result['seed'] == 0
    assert set(on_disk['pretrain']) >= {'action_nll', 'expert_match', 'success_pretraining_tasks', 'success_post_task'}
    assert len(on_disk['probe']['accuracy_by_layer']) == on_disk['config']['model']['depth'] + 1
    assert {'switch_f1', 'beta_binary_fraction'} <= set(on_disk['discovery'])
    assert set(on_disk['rl']) == {'internal', 'raw_action', 'no_temporal_abstraction'}
    assert all((tmp_path / 'run' / name).is_file() for name in ('data/pretrain.npz', 'fig1.png', 'rl/meta_controller.pt'))
    meta = DemoDataset.load(tmp_path / 'run' / 'data' / 'post_task.npz').metadata
    assert meta['levels'] == [POST_TRAINING_LEVEL] and meta['obs_shape'] == [OBS_DIM]


def test_live_subgoal_agrees_with_the_bots_labels(demos):
    """Replaying the bot's actions, `env.subgoal` (the instruction to complete next) is the label the
    demonstration carries, except while the bot replans (detours stay with their instruction)."""
    env = VecBabyAIEnv(len(demos), ALL_LEVELS)
    env.reset(seed = demos.seeds.tolist())
    batch = demos.batch(np.arange(len(demos)))
    agree = []
    for t in range(int(batch.episode_lens.max())):
        live = (t < batch.episode_lens).numpy()
        agree.append(env.subgoal[live] == batch.subgoals[live, t].numpy())
        env.step(np.where(live, batch.actions[:, t].numpy(), 0))
    assert np.concatenate(agree).mean() > 0.9   # 0.96 on these 48 episodes
    assert (env.subgoal == -1).all()   # every episode ended


# ---------------------------------------------------------------- the mission as a condition (--model.task_condition)


def test_mission_condition_mode_gives_the_mission_apart_from_the_observation(demos, tmp_path):
    seeds = [0, 1, 2, 3]
    full, scene = VecBabyAIEnv(4, ALL_LEVELS), VecBabyAIEnv(4, ALL_LEVELS, mission_condition = True)
    (obs, _), (scene_obs, info) = full.reset(seed = seeds), scene.reset(seed = seeds)
    assert scene_obs.shape == (4, SCENE_DIM) and info['condition'].shape == (4, MISSION_DIM) and info['condition'].dtype == np.float32
    np.testing.assert_array_equal(scene_obs, obs[:, :SCENE_DIM])
    np.testing.assert_array_equal(info['condition'], obs[:, SCENE_DIM:])
    actions = np.array([2, 0, 1, 2])
    np.testing.assert_array_equal(scene.step(actions)[0], full.step(actions)[0][:, :SCENE_DIM])

    # the same stored demos; batches hold the scene as observations and the mission of each episode as condition
    assert generate_babyai_demos(2, mission_condition = True, progress = False).metadata['condition_features'] == MISSION_DIM
    replace(demos, metadata = {**demos.metadata, 'condition_features': MISSION_DIM}).save(tmp_path / 'demos.npz')
    split, whole = DemoDataset.load(tmp_path / 'demos.npz').batch(np.arange(6)), demos.batch(np.arange(6))
    assert torch.equal(split.observations, whole.observations[..., :SCENE_DIM]) and whole.condition is None
    assert torch.equal(split.condition, whole.observations[:, 0, SCENE_DIM:])
    lens = whole.episode_lens
    assert all(torch.equal(whole.observations[i, :n, SCENE_DIM:], split.condition[i].expand(n, -1)) for i, n in enumerate(lens.tolist()))

    adapter = babyai_adapter().with_task_condition(True)
    assert (adapter.obs_dim, adapter.dim_condition) == (SCENE_DIM, MISSION_DIM) and babyai_adapter().with_task_condition(False).dim_condition is None
    with pytest.raises(ValueError, match = '--model.task_condition: pinpad has no task'):
        pinpad_adapter().with_task_condition(True)


def test_task_condition_follows_the_flag_both_ways():
    """An adapter built conditioned, run without --model.task_condition, gives up its condition
    (config.json says off); the held-out task it was given stays."""
    conditioned = babyai_adapter(mission_condition = True)
    off = replace(conditioned, post_task_name = 'held out').with_task_condition(False)
    assert (off.obs_dim, off.dim_condition, off.post_task_name) == (OBS_DIM, None, 'held out')
    assert conditioned.with_task_condition(True) is conditioned and off.with_task_condition(False) is off
    with pytest.raises(ValueError, match = '--model.task_condition: babyai always gives the model its task as a condition'):
        replace(conditioned, task_condition_variant = None).with_task_condition(False)


def test_a_mission_conditioned_model_trains_and_acts_in_babyai(demos):
    body = dict(depth = 1, heads = 2, attn_dim_head = 8)
    model = Transformer(16, action_embed_readout = dict(num_discrete = NUM_ACTIONS), state_embed_readout = dict(num_continuous = SCENE_DIM),
                        lower_body = body, upper_body = body, dim_condition = MISSION_DIM)
    batch = replace(demos, metadata = {**demos.metadata, 'condition_features': MISSION_DIM}).batch(np.arange(8))
    losses = model(batch.observations, batch.actions, episode_lens = batch.episode_lens, condition = batch.condition)
    losses.action.backward()
    assert model.upper_body.layers[0][0][0].to_gamma.weight.grad.abs().sum() > 0
    stats = evaluate(model.eval(), lambda n: VecBabyAIEnv(n, (POST_TRAINING_LEVEL,), mission_condition = True), 4, max_steps = 8)
    assert 0 <= stats.success <= 1 and stats.mean_length <= 8


def test_smoke_pipeline_with_the_mission_as_condition(tmp_path):
    """--model.task_condition reaches every phase: demos' batches, pretraining, probes, control, discovery and RL."""
    result = cli.main(babyai_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--no-progress', '--threads', '1',
                                         '--model.task_condition', 'true'])
    assert result['config']['model']['task_condition'] and set(result['rl']) == {'internal', 'raw_action', 'no_temporal_abstraction'}
    assert DemoDataset.load(tmp_path / 'run' / 'data' / 'pretrain.npz').metadata['condition_features'] == MISSION_DIM
    model = Transformer.init_and_load(tmp_path / 'run' / 'pretrain' / 'model.pt')
    assert model.dim_condition == MISSION_DIM and model.state_embed.num_continuous == SCENE_DIM
