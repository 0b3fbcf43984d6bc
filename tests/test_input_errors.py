"""Clear errors on bad input: every message says what was expected and what was given."""
import pytest
import torch

from metacontroller import MetaController

from conftest import ACTIONS, DIM, LATENT, STATE


@pytest.mark.parametrize('state, actions, error, match', [
    (torch.randn(2, 5), torch.randint(0, ACTIONS, (2, 5)), ValueError, r'\(batch, time, 12\)'),
    (torch.randn(2, 5, STATE + 1), torch.randint(0, ACTIONS, (2, 5)), ValueError, r'\(batch, time, 12\)'),
    (torch.randint(0, 2, (2, 5, STATE)), torch.randint(0, ACTIONS, (2, 5)), TypeError, 'float tensor'),
    ([[0.]], torch.randint(0, ACTIONS, (2, 5)), TypeError, 'must be a tensor'),
    (torch.randn(2, 5, STATE), torch.randn(2, 5), TypeError, 'integer tensor of action ids'),
    (torch.randn(2, 5, STATE), torch.randint(0, ACTIONS, (2, 4)), ValueError, r'shape \(2, 5\)'),
    (torch.randn(2, 5, STATE), torch.full((2, 5), ACTIONS), ValueError, r'\[0, 4\)'),
])
def test_bad_states_and_actions(model, state, actions, error, match):
    with pytest.raises(error, match = match):
        model(state, actions)


@pytest.mark.parametrize('lens, error, match', [
    (torch.tensor([5, 0]), ValueError, r'\[1, 5\]'),
    (torch.tensor([5, 6]), ValueError, r'\[1, 5\]'),
    (torch.tensor([5]), ValueError, r'shape \(2,\)'),
    (torch.tensor([5., 3.]), TypeError, 'integer tensor'),
])
def test_bad_episode_lens(model, lens, error, match):
    with pytest.raises(error, match = match):
        model(torch.randn(2, 5, STATE), torch.randint(0, ACTIONS, (2, 5)), episode_lens = lens)


def test_meta_controller_dim_mismatch(model):
    other = MetaController(dim_model = DIM * 2, dim_meta_controller = 8, dim_latent = 2)
    with pytest.raises(ValueError, match = r'dim_model \(64\) must equal the transformer dim \(32\)'):
        model(torch.randn(1, 4, STATE), torch.randint(0, ACTIONS, (1, 4)), meta_controller = other, discovery_phase = True)


def test_discovery_without_actions_or_controller(model, meta):
    with pytest.raises(ValueError, match = 'actions are required'):
        model(torch.randn(1, 4, STATE), meta_controller = meta, discovery_phase = True)
    with pytest.raises(ValueError, match = 'needs a meta_controller'):
        model(torch.randn(1, 4, STATE), torch.randint(0, ACTIONS, (1, 4)), discovery_phase = True)


def test_step_takes_one_step(model):
    with pytest.raises(ValueError, match = 'one step at a time'):
        model(torch.randn(2, 3, STATE), None, return_cache = True)


@pytest.mark.parametrize('edit, match', [
    (lambda s: s.__setitem__(0, s[0].double()), r'model\'s dtype \(torch.float32\).*got torch.float64'),
    (lambda s: s.__setitem__(0, s[0].half()), r'got torch.float16'),
    (lambda s: s[0][1, 4, 0].fill_(float('nan')), r'must be finite, got 1 NaN or inf'),   # a padding step (lens below)
    (lambda s: s.__setitem__(0, s[0][:0]), r'at least one episode and one step, got shape \(0, 5, 12\)'),
    (lambda s: s.__setitem__(0, s[0][:, :0]), r'at least one episode and one step, got shape \(2, 0, 12\)'),
])
def test_bad_observations_are_named(model, edit, match):
    args = [torch.randn(2, 5, STATE)]
    edit(args)
    with pytest.raises((TypeError, ValueError), match = match):
        model(args[0], torch.zeros(args[0].shape[:2], dtype = torch.long), episode_lens = torch.tensor([5, 3])[:len(args[0])])


@pytest.mark.parametrize('force_beta', [1.5, -0.1, float('nan'), torch.full((2, 5), 2.)])
def test_force_beta_outside_unit_interval(model, meta, force_beta):
    state, actions = torch.randn(2, 5, STATE), torch.randint(0, ACTIONS, (2, 5))
    with pytest.raises(ValueError, match = r'force_beta must lie in \[0, 1\]'):
        model(state, actions, meta_controller = meta, discovery_phase = True, force_beta = force_beta)
    if not torch.is_tensor(force_beta):
        _, cache = model(state[:, :1], None, meta_controller = meta, return_cache = True)
        with pytest.raises(ValueError, match = r'force_beta must lie in \[0, 1\]'):
            model(state[:, 1:2], None, meta_controller = meta, cache = cache, return_cache = True, force_beta = force_beta)


def test_force_beta_schedule_of_another_shape(meta):
    with pytest.raises(ValueError, match = r'broadcast to \(batch, time\) = \(2, 5\), got shape \(3,\)'):
        meta(torch.randn(2, 5, DIM), force_beta = torch.ones(3))


@pytest.mark.parametrize('lens', [torch.tensor([5, 0]), torch.tensor([6, 5])])
def test_meta_controller_forward_checks_lens(meta, lens):
    with pytest.raises(ValueError, match = r'episode_lens must lie in \[1, 5\]'):
        meta(torch.randn(2, 5, DIM), lens)


def test_cache_stepped_at_another_batch_size(model, meta):
    _, cache = model(torch.randn(3, 1, STATE), None, meta_controller = meta, return_cache = True)
    with pytest.raises(ValueError, match = r'the cache holds 3 episodes but one_state has 2.*cache.select'):
        model(torch.randn(2, 1, STATE), None, meta_controller = meta, cache = cache, return_cache = True)
    with pytest.raises(ValueError, match = 'the previous step holds 3 rows but stream has 2'):
        meta.step(torch.randn(2, DIM), cache.prev_hiddens.meta_controller)


def rollout_args(b = 2, t = 5):
    return dict(states = torch.randn(b, t, DIM), old_log_probs = torch.randn(b, t), latent_actions = torch.randn(b, t, LATENT),
                advantages = torch.randn(b), switch_betas = torch.ones(b, t))


@pytest.mark.parametrize('name, value, match', [
    ('old_log_probs', torch.randn(2, 4), r'old_log_probs must be a float tensor of shape \(2, 5\), got a torch.float32 tensor of shape \(2, 4\)'),
    ('latent_actions', torch.randn(2, 4, LATENT), r'latent_actions must be a float tensor of shape \(2, 5, 3\)'),
    ('switch_betas', torch.ones(2, 3), r'switch_betas must be a float tensor of shape \(2, 5\)'),
    ('advantages', torch.randn(1), r'advantages must be a float tensor of shape \(2,\), got .* shape \(1,\)'),
    ('states', torch.randn(2, 5, DIM + 1), r'states must be \(batch >= 1, time >= 1, dim_model = 32\)'),
    ('episode_lens', torch.tensor([5, 0]), r'episode_lens must lie in \[1, 5\]'),
    ('episode_lens', torch.tensor([6, 5]), r'episode_lens must lie in \[1, 5\]'),
    ('clip', 0., r'clip must be > 0'),
])
def test_policy_loss_checks_every_argument_against_states(meta, name, value, match):
    with pytest.raises(ValueError, match = match):
        meta.policy_loss(**{**rollout_args(), name: value})
