"""Clear errors on bad input; save / init_and_load round trips."""
import pytest
import torch
from torch import nn

from metacontroller import MetaController, Transformer
from metacontroller.envs.egocentric import EgocentricEncoder
from conftest import ACTIONS, DIM, LATENT, STATE, tiny_transformer


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


def test_round_trip_transformer_with_attached_meta_controller(tmp_path, model, meta):
    model.meta_controller = meta
    path = tmp_path / 'model.pt'
    model.save(path)
    loaded = Transformer.init_and_load(path)
    assert isinstance(loaded.meta_controller, MetaController)

    state, actions = torch.randn(2, 6, STATE), torch.randint(0, ACTIONS, (2, 6))
    assert torch.allclose(torch.stack(model(state, actions)), torch.stack(loaded(state, actions)))
    torch.manual_seed(0)
    a = model(state, actions, meta_controller = meta, discovery_phase = True)
    torch.manual_seed(0)
    b = loaded(state, actions, meta_controller = loaded.meta_controller, discovery_phase = True)
    assert torch.allclose(torch.stack(a), torch.stack(b))


def test_round_trip_meta_controller(tmp_path, meta):
    path = tmp_path / 'meta.pt'
    meta.save(path)
    loaded = MetaController.init_and_load(path)
    for (name, p), q in zip(meta.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    assert loaded.decoder.rank == meta.decoder.rank


def test_checkpoint_errors(tmp_path, meta):
    with pytest.raises(FileNotFoundError, match = 'no checkpoint'):
        Transformer.init_and_load(tmp_path / 'missing.pt')

    path = tmp_path / 'meta.pt'
    meta.save(path)
    with pytest.raises(ValueError, match = 'holds a MetaController, not a Transformer'):
        Transformer.init_and_load(path)

    corrupt = tmp_path / 'corrupt.pt'
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match = 'truncated or corrupt'):
        MetaController.init_and_load(corrupt)

    foreign = tmp_path / 'foreign.pt'
    torch.save({'weights': torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match = 'not a metacontroller checkpoint'):
        MetaController.init_and_load(foreign)


class RunsCode:
    """Unpickling it runs code (here: writes a marker file), as a crafted checkpoint can."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("code ran")',)


def test_a_crafted_checkpoint_cannot_run_code(tmp_path, meta):
    path, marker = tmp_path / 'crafted.pt', tmp_path / 'code_ran'
    meta.save(path)
    package = torch.load(path, weights_only = True)   # what .save() writes is plain data
    package['config'] = RunsCode(marker)
    torch.save(package, path)

    with pytest.raises(ValueError, match = 'was not loaded: it holds more than tensors and plain data'):
        MetaController.init_and_load(path)
    assert not marker.exists()


def test_module_arguments_are_stored_by_registered_name(tmp_path):
    """A torch activation in a body and a Checkpointable state encoder come back from their stored arguments."""
    body = dict(depth = 1, heads = 2, attn_dim_head = 8, ff_custom_activation = nn.GELU(approximate = 'tanh'))
    model = Transformer(dim = DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
                        lower_body = body, upper_body = body,
                        state_encoder = EgocentricEncoder(DIM, height = 2, width = 2, channels = 3, agent_channel = 2))
    path = tmp_path / 'model.pt'
    model.save(path)

    loaded = Transformer.init_and_load(path)
    assert isinstance(loaded.state_encoder, EgocentricEncoder) and loaded.state_encoder.shape == (2, 2, 3)
    assert loaded.lower_body.layers[1][1].ff[0][1].approximate == 'tanh'
    state, actions = torch.randn(2, 3, STATE), torch.randint(0, ACTIONS, (2, 3))
    assert torch.allclose(torch.stack(model(state, actions)), torch.stack(loaded(state, actions)))


def test_arguments_that_are_not_data_cannot_be_saved(tmp_path):
    model = tiny_transformer(state_encoder = nn.Linear(STATE, DIM))
    with pytest.raises(TypeError, match = 'Transformer.state_encoder is a Linear'):
        model.save(tmp_path / 'model.pt')
    assert not (tmp_path / 'model.pt').exists()


def resave(path, edit):
    package = torch.load(path, weights_only = True)
    edit(package)
    torch.save(package, path)


def test_checkpoint_integrity_is_checked(tmp_path, meta):
    path = tmp_path / 'meta.pt'
    meta.save(path)
    resave(path, lambda package: package.update(format_version = 99))
    with pytest.raises(ValueError, match = 'format version 99, but this library .* reads version 2'):
        MetaController.init_and_load(path)

    meta.register_buffer('stray', torch.zeros(1))   # a valid file whose state dict has an entry the model lacks
    meta.save(path)
    with pytest.raises(ValueError, match = r"has unknown entries \['stray'\]"):
        MetaController.init_and_load(path)
    del meta.stray

    meta.save(path)
    data = bytearray(path.read_bytes())
    at = data.find(meta.decoder.to_a.weight.detach().numpy().tobytes()[:16])
    data[at + 2] ^= 0xFF   # one flipped byte inside a weight: torch.load itself reads it without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match = 'do not match the checksum'):
        MetaController.init_and_load(path)


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
