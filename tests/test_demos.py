"""Demonstration datasets: generation, file round trip, padded batches, bad input."""
import json
from dataclasses import replace

import numpy as np
import pytest

from metacontroller.demos import EPISODE_FIELDS, FORMAT_VERSION, NO_SUBGOAL, STEP_FIELDS, DemoDataset
from metacontroller.envs.pinpad import PRETRAINING_TASKS, PinpadEnv
from metacontroller.envs.pinpad_expert import generate_pinpad_demos


@pytest.fixture(scope = 'module')
def demos():
    return generate_pinpad_demos(40, seed = 7, num_envs = 16, progress = False)


def assert_same(a, b):
    for name in ('observations', 'actions', 'subgoals', 'boundaries', 'episode_lens', 'task_ids', 'seeds'):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.metadata == b.metadata


def test_generation_records_metadata(demos):
    assert len(demos) == 40 and demos.metadata['obs_encoding'] == 'packbits'
    meta = demos.metadata
    assert (meta['format_version'], meta['epsilon'], meta['seed'], meta['obs_shape']) == (FORMAT_VERSION, 0.0, 7, [637])
    assert meta['tasks'] == [list(t) for t in PRETRAINING_TASKS] and meta['library_version']
    assert demos.observations.shape == (demos.num_steps, 80)  # 637 bits packed into 80 bytes


def test_same_seed_same_dataset(demos):
    assert_same(demos, generate_pinpad_demos(40, seed = 7, num_envs = 16, progress = False))
    assert not np.array_equal(demos.seeds, generate_pinpad_demos(40, seed = 8, num_envs = 16, progress = False).seeds)


def test_file_round_trip(demos, tmp_path):
    path = tmp_path / 'demos.bin'  # saved at exactly this path, no suffix added
    demos.save(path)
    assert_same(DemoDataset.load(path), demos)


def test_episodes_replay_in_the_env(demos):
    """Each episode is what the env produces from its seed and the recorded actions."""
    batch = demos.batch([0, 5, 39])
    for row, i in enumerate([0, 5, 39]):
        env = PinpadEnv(tasks = PRETRAINING_TASKS)
        obs, info = env.reset(seed = int(demos.seeds[i]))
        assert info['task_id'] == demos.task_ids[i]
        for t in range(int(batch.episode_lens[row])):
            assert np.array_equal(batch.observations[row, t].numpy(), obs)
            obs, reward, terminated, _, info = env.step(int(batch.actions[row, t]))
            assert (info['subgoal'], info['boundary']) == (batch.subgoals[row, t], batch.boundaries[row, t])
        assert terminated and reward == 1.0


def test_batches_are_padded_and_masked(demos):
    batch = demos.batch(np.arange(len(demos)))
    observations, actions, subgoals, boundaries, lens = batch
    horizon = int(lens.max())
    assert observations.shape == (40, horizon, 637) and actions.shape == subgoals.shape == boundaries.shape == (40, horizon)
    assert str(observations.dtype) == 'torch.float32' and str(actions.dtype) == 'torch.int64'
    pad = np.arange(horizon)[None, :] >= lens.numpy()[:, None]
    assert pad.any()  # some episodes are shorter than the longest
    assert observations[pad].abs().sum() == 0 and (subgoals[pad] == NO_SUBGOAL).all() and not boundaries[pad].any()
    assert (observations[~pad].sum(-1) == 13).all()
    # Three subgoals per pretraining episode, the first starting at t = 0.
    assert boundaries[:, 0].all() and (boundaries.sum(1) == 3).all()


def test_iter_batches_covers_every_episode_once(demos):
    seen = [int(lens) for batch in demos.iter_batches(16, seed = 0) for lens in batch.episode_lens]
    assert sorted(seen) == sorted(demos.episode_lens.tolist())
    assert len(list(demos.iter_batches(16, drop_last = True))) == 2


def test_noisy_dataset_keeps_only_successes():
    noisy = generate_pinpad_demos(20, epsilon = 0.3, seed = 0, num_envs = 16, progress = False)
    assert len(noisy) == 20 and noisy.metadata['epsilon'] == 0.3
    assert (noisy.batch(np.arange(20)).boundaries.sum(1) == 3).all()


def test_raw_observations_for_other_envs(tmp_path):
    """Non-binary observations (e.g. BabyAI's 7x7x3 grids) are stored as they are."""
    rng = np.random.default_rng(0)
    observations = rng.integers(0, 11, (7, 7, 7, 3), dtype = np.uint8)
    dataset = DemoDataset.from_steps(observations, rng.integers(0, 7, 7), np.full(7, NO_SUBGOAL), np.zeros(7, bool),
                                     episode_lens = [3, 4], task_ids = [0, 0], seeds = [1, 2], metadata = {'env_name': 'babyai'})
    dataset.save(tmp_path / 'raw.npz')
    loaded = DemoDataset.load(tmp_path / 'raw.npz')
    assert loaded.metadata['obs_encoding'] == 'raw'
    batch = loaded.batch([1, 0])
    assert batch.observations.shape == (2, 4, 7, 7, 3) and np.array_equal(batch.observations[1, :3].numpy(), observations[:3])


# ---------------------------------------------------------------- bad input


def test_bad_generation_arguments():
    with pytest.raises(ValueError, match = 'unknown task colour 9'):
        generate_pinpad_demos(4, tasks = [(0, 1, 9)], progress = False)
    for epsilon in (-0.01, 1.01):
        with pytest.raises(ValueError, match = 'epsilon'):
            generate_pinpad_demos(4, epsilon = epsilon, progress = False)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match = 'no demonstration dataset'):
        DemoDataset.load(tmp_path / 'nope.npz')


def test_truncated_and_garbage_files(demos, tmp_path):
    path = tmp_path / 'demos.npz'
    demos.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match = 'truncated or corrupt'):
        DemoDataset.load(path)
    path.write_bytes(b'not a dataset')
    with pytest.raises(ValueError, match = 'truncated or corrupt'):
        DemoDataset.load(path)


def test_files_that_are_not_npz_archives(tmp_path):
    path = tmp_path / 'array.npy'
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match = r'array.npy is not a readable demonstration dataset .* not a zip archive'):
        DemoDataset.load(path)


def save_raw(path, demos, metadata, **arrays):
    """Write a dataset file as is, without DemoDataset's checks."""
    arrays = {name: getattr(demos, name) for name in STEP_FIELDS + EPISODE_FIELDS} | arrays
    np.savez(path, metadata = np.frombuffer(json.dumps(metadata).encode(), np.uint8), **arrays)


def test_out_of_range_actions(demos, tmp_path):
    actions = demos.actions.copy()
    actions[5] = 4
    with pytest.raises(ValueError, match = r'actions must be ids in \[0, 4\), got values in \[0, 4\]'):
        replace(demos, actions = actions)
    path = tmp_path / 'bad_actions.npz'
    save_raw(path, demos, demos.metadata, actions = actions)
    with pytest.raises(ValueError, match = r'bad_actions.npz: inconsistent dataset: actions must be ids in \[0, 4\)'):
        DemoDataset.load(path)
    actions[5] = -1
    save_raw(path, demos, {k: v for k, v in demos.metadata.items() if k != 'num_actions'}, actions = actions)
    with pytest.raises(ValueError, match = r'actions must be non-negative ids, got values in \[-1, 3\]'):   # count not recorded
        DemoDataset.load(path)


def test_version_mismatch(demos, tmp_path):
    path = tmp_path / 'old.npz'
    replace(demos, metadata = {**demos.metadata, 'format_version': FORMAT_VERSION + 1}).save(path)
    with pytest.raises(ValueError, match = 'format version'):
        DemoDataset.load(path)


def test_inconsistent_arrays(demos, tmp_path):
    path = tmp_path / 'bad.npz'
    np.savez(path, metadata = np.frombuffer(b'{"format_version": 1}', np.uint8),
             **{name: getattr(demos, name) for name in ('observations', 'actions', 'subgoals', 'boundaries', 'task_ids', 'seeds')},
             episode_lens = demos.episode_lens + 1)
    with pytest.raises(ValueError, match = 'inconsistent'):
        DemoDataset.load(path)
