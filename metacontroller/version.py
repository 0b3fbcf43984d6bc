"""The library's version, read once from the installed package's metadata (pyproject.toml sets it)."""
from importlib import metadata

try:
    __version__ = metadata.version('metacontroller')
except metadata.PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = 'unknown'
