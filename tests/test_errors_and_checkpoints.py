"""Clear errors on bad input; save / init_and_load round trips."""
import pytest
import torch

from metacontroller import MetaController, Transformer
from conftest import ACTIONS, DIM, STATE


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
