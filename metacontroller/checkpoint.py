"""Save / load modules together with the keyword arguments that built them.

A checkpoint is one `torch.save` file holding a format tag, the library
version, the class name, the constructor config, the state dict and any
attached child modules that are themselves checkpointable (a Transformer saves
the MetaController attached to it). Loading checks each of these and says what
was expected when something does not fit.

The config may hold modules or callables (e.g. a custom activation), so files
are loaded with `weights_only = False`: only load checkpoints you trust.
"""
from __future__ import annotations

import pickle
from functools import wraps
from pathlib import Path

import torch

FORMAT = 'metacontroller-checkpoint'


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no checkpoint at {path}')
    try:
        pkg = torch.load(path, map_location = 'cpu', weights_only = False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(f'{path} is not a readable checkpoint (truncated or corrupt?): {err}') from err

    if not isinstance(pkg, dict) or pkg.get('format') != FORMAT:
        raise ValueError(f'{path} is not a metacontroller checkpoint (expected a file written by .save())')
    return pkg


class Checkpointable:
    """Mixin for nn.Modules: records constructor arguments, adds `save` and `init_and_load`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
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
        from metacontroller import __version__

        return dict(
            format = FORMAT,
            version = __version__,
            klass = type(self).__name__,
            config = self._config,
            state_dict = {k: v for k, v in self.state_dict().items() if k.split('.')[0] not in children},
            children = {name: child._package() for name, child in children.items()},
        )

    def save(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents = True, exist_ok = True)
        torch.save(self._package(), path)

    @classmethod
    def _from_package(cls, pkg: dict, source):
        if pkg.get('klass') != cls.__name__:
            raise ValueError(f'{source} holds a {pkg.get("klass")}, not a {cls.__name__}; load it with {pkg.get("klass")}.init_and_load')

        args, kwargs = pkg['config']
        module = cls(*args, **kwargs)
        module.load_state_dict(pkg['state_dict'], strict = False)

        expected = {k for k in module.state_dict()}
        missing = expected - set(pkg['state_dict'])
        if missing:
            raise ValueError(f'{source} lacks parameters {sorted(missing)[:5]} for {cls.__name__}')

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
