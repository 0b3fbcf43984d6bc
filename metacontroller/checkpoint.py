"""Save / load modules together with the keyword arguments that built them.

A checkpoint is one `torch.save` file holding a format tag and version, the
library version, the class name, the constructor config, the state dict, a
checksum of its tensors and any attached child modules that are themselves
checkpointable (a Transformer saves the MetaController attached to it).

What the format trusts: nothing in the file is code. It is read with
`torch.load(..., weights_only = True)`, which rebuilds tensors and plain data
(numbers, strings, lists, tuples, dicts) only, so a crafted file cannot run
code when it is loaded. A constructor argument that is a module is stored as
its class's registered name and its own constructor arguments: torch's
parameter-free activations (`torch.nn.ReLU`, ...) and every `Checkpointable`
class, registered under its import path when the class is defined. A class
of this library is imported on demand (only modules inside this package);
import the module of any other before loading. Loading then refuses another format
version, a state dict whose keys differ from the module's, and tensors that do
not match their checksum.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import torch
from torch import nn

from metacontroller.version import __version__

FORMAT = 'metacontroller-checkpoint'
FORMAT_VERSION = 2   # 1 pickled the constructor arguments as objects
MODULE_KEY = '__module_class__'
PACKAGE = __name__.partition('.')[0]

# parameter-free activations: their public attributes are their constructor arguments
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Mish)
REGISTRY: dict[str, type] = {f'torch.nn.{cls.__name__}': cls for cls in ACTIVATIONS}

# Checkpointable classes that moved: the import path older checkpoints name -> the class's path now
MOVED = {'metacontroller.envs.egocentric.EgocentricEncoder': 'metacontroller.egocentric.EgocentricEncoder'}


@contextmanager
def atomic_path(path: Path):
    """A temporary name beside `path`, renamed onto it when the block succeeds:
    readers see the old file or the whole new one, never a partial one."""
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok = True)


def _class_name(cls: type) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def _to_data(value, where: str):
    """A constructor argument as plain data; a module as its registered class name and its own arguments."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_to_data(v, f'{where}[{i}]') for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_data(v, f'{where}.{k}') for k, v in value.items()}
    if isinstance(value, Checkpointable):
        args, kwargs = value._config
        return {MODULE_KEY: _class_name(type(value)), 'args': _to_data(list(args), where), 'kwargs': _to_data(kwargs, where)}
    if type(value) in ACTIVATIONS:
        kwargs = {k: v for k, v in vars(value).items() if not k.startswith('_') and k != 'training'}
        return {MODULE_KEY: f'torch.nn.{type(value).__name__}', 'args': [], 'kwargs': _to_data(kwargs, where)}
    raise TypeError(f'a checkpoint stores constructor arguments as data, but {where} is a {type(value).__name__}: pass numbers, '
                    f'strings, lists, dicts, a torch activation ({", ".join(c.__name__ for c in ACTIVATIONS)}) or a Checkpointable module')


def _from_data(value, source):
    if isinstance(value, (list, tuple)):
        return type(value)(_from_data(v, source) for v in value)
    if not isinstance(value, dict):
        return value
    if MODULE_KEY not in value:
        return {k: _from_data(v, source) for k, v in value.items()}
    name = MOVED.get(value[MODULE_KEY], value[MODULE_KEY])
    if not isinstance(name, str):
        raise ValueError(f'{source} names a module class by {name!r}; expected its import path, a string')
    module = name.rpartition('.')[0]
    if name not in REGISTRY and module.partition('.')[0] == PACKAGE:   # one of our own modules: safe to import
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:   # the module exists but needs a package that is not installed: say so
                raise
    if name not in REGISTRY:
        raise ValueError(f'{source} needs the module class {name!r}, which is not registered: '
                         f'import the module that defines it ({module}) before loading')
    return REGISTRY[name](*_from_data(value['args'], source), **_from_data(value['kwargs'], source))


def checksum(state_dict: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no checkpoint at {path}')
    try:
        pkg = torch.load(path, map_location = 'cpu', weights_only = True)
    except pickle.UnpicklingError as err:
        raise ValueError(f'{path} was not loaded: it holds more than tensors and plain data (code or objects; not written by '
                         f"this version's .save()), or it is corrupt: {err}") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f'{path} is not a readable checkpoint (truncated or corrupt?): {err}') from err

    if not isinstance(pkg, dict) or pkg.get('format') != FORMAT:
        raise ValueError(f'{path} is not a metacontroller checkpoint (expected a file written by .save())')
    version = pkg.get('format_version', 1)   # version 1 did not record it
    if version != FORMAT_VERSION:
        raise ValueError(f'{path} has checkpoint format version {version!r}, but this library '
                         f'(metacontroller {__version__}) reads version {FORMAT_VERSION}')
    return pkg


class Checkpointable:
    """Mixin for nn.Modules: records constructor arguments, adds `save` and `init_and_load`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        REGISTRY[_class_name(cls)] = cls   # so that a checkpoint can name it as a constructor argument
        init = cls.__init__

        @wraps(init)
        def __init__(self, *args, **kwargs):
            # only the outermost constructor's arguments describe the object
            if '_config' not in self.__dict__:
                self.__dict__['_config'] = (args, kwargs)
            init(self, *args, **kwargs)

        cls.__init__ = __init__

    def _checkpoint_children(self) -> dict:
        """Attached modules saved alongside (name -> Checkpointable); override to add."""
        return {}

    def _package(self) -> dict:
        children = self._checkpoint_children()
        args, kwargs = self._config
        state_dict = {k: v for k, v in self.state_dict().items() if k.split('.')[0] not in children}
        return dict(
            format = FORMAT,
            format_version = FORMAT_VERSION,
            library_version = __version__,
            klass = type(self).__name__,
            config = dict(args = _to_data(list(args), type(self).__name__), kwargs = _to_data(kwargs, type(self).__name__)),
            state_dict = state_dict,
            checksum = checksum(state_dict),
            children = {name: child._package() for name, child in children.items()},
        )

    def save(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents = True, exist_ok = True)
        package = self._package()   # before the file is touched: an argument that is not data fails here
        with atomic_path(path) as tmp:
            torch.save(package, tmp)

    @classmethod
    def _from_package(cls, pkg: dict, source):
        if pkg.get('klass') != cls.__name__:
            raise ValueError(f'{source} holds a {pkg.get("klass")}, not a {cls.__name__}; load it with {pkg.get("klass")}.init_and_load')

        state_dict = pkg['state_dict']
        if checksum(state_dict) != pkg.get('checksum'):
            raise ValueError(f'{source}: the weights do not match the checksum saved with them (the file was modified or corrupted)')

        module = cls(*_from_data(pkg['config']['args'], source), **_from_data(pkg['config']['kwargs'], source))
        expected = set(module.state_dict())
        missing, unknown = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unknown:
            raise ValueError(f'{source} does not fit a {cls.__name__} built from its config: '
                             f'it lacks {missing[:5]} and has unknown entries {unknown[:5]}')
        try:
            module.load_state_dict(state_dict)
        except RuntimeError as err:   # shapes that do not fit the config
            raise ValueError(f'{source} does not fit a {cls.__name__} built from its config: {err}') from err

        for name, child_pkg in pkg.get('children', {}).items():
            child_cls = module._child_class(name)
            setattr(module, name, child_cls._from_package(child_pkg, f'{source}[{name}]'))
        return module

    def _child_class(self, name: str):
        raise ValueError(f'{type(self).__name__} has no checkpointed child {name!r}')

    @classmethod
    def init_and_load(cls, path: str | Path):
        """Build the module from the config stored in `path` and load its weights."""
        return cls._from_package(_read(path), path)
