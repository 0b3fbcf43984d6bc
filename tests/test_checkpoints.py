"""save / init_and_load: round trips, refused and tampered files, module arguments stored as data."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from metacontroller import MetaController, Transformer
from metacontroller.egocentric import EgocentricEncoder

from conftest import ACTIONS, DIM, STATE, tiny_transformer


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


def test_a_checkpoint_naming_a_moved_class_by_its_old_path_loads(tmp_path):
    """Checkpoints written before `EgocentricEncoder` moved out of `metacontroller.envs` name it by the old path,
    with `dim` as its only argument (the pipeline's pinpad encoder)."""
    model = tiny_transformer(state_encoder = EgocentricEncoder(DIM))
    path = tmp_path / 'model.pt'
    model.save(path)

    def old_layout(package):
        encoder = package['config']['kwargs']['state_encoder']
        assert encoder['__module_class__'] == 'metacontroller.egocentric.EgocentricEncoder'
        encoder['__module_class__'] = 'metacontroller.envs.egocentric.EgocentricEncoder'
        encoder['args'], encoder['kwargs'] = [DIM], {}
    resave(path, old_layout)

    loaded = Transformer.init_and_load(path)
    assert isinstance(loaded.state_encoder, EgocentricEncoder) and loaded.state_encoder.shape == (7, 7, 13)
    assert torch.equal(loaded.state_encoder.proj.weight, model.state_encoder.proj.weight)


def test_a_class_of_this_library_loads_without_importing_its_module_first(tmp_path):
    """`Transformer.init_and_load` of a pinpad base, in a fresh interpreter that never imported
    metacontroller.egocentric; a class from another package still has to be imported by the user."""
    path = tmp_path / 'model.pt'
    tiny_transformer(state_encoder = EgocentricEncoder(DIM)).save(path)
    script = ('import sys; from metacontroller import Transformer; '
              "assert 'metacontroller.egocentric' not in sys.modules; "
              'print(type(Transformer.init_and_load(sys.argv[1]).state_encoder).__name__)')
    done = subprocess.run([sys.executable, '-c', script, str(path)], capture_output = True, text = True, timeout = 120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'EgocentricEncoder'

    resave(path, lambda package: package['config']['kwargs']['state_encoder'].update(__module_class__ = 'elsewhere.Encoder'))
    with pytest.raises(ValueError, match = r"needs the module class 'elsewhere.Encoder', which is not registered"):
        Transformer.init_and_load(path)
    resave(path, lambda package: package['config']['kwargs']['state_encoder'].update(__module_class__ = 'metacontroller.nowhere.Encoder'))
    with pytest.raises(ValueError, match = r"needs the module class 'metacontroller.nowhere.Encoder', which is not registered"):
        Transformer.init_and_load(path)
    resave(path, lambda package: package['config']['kwargs']['state_encoder'].update(__module_class__ = 7))
    with pytest.raises(ValueError, match = 'names a module class by 7; expected its import path'):
        Transformer.init_and_load(path)
