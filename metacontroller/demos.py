"""Demonstration datasets: an environment-agnostic container and file format.

A dataset is a set of episodes stored step-concatenated (no padding): every
per-step array has one row per step of every episode, in episode order, and
`episode_lens` says where each episode ends. Step t of an episode holds the
observation o_t the agent saw, the action a_t it took, the ground-truth
subgoal it was pursuing (-1 when unknown) and whether a new subgoal started
at that step. The observation after the last action is not stored.

File format (version 1): one `.npz` zip (np.savez_compressed, loadable with
allow_pickle=False) holding the arrays
    observations  (S, ...)  bool observations bit-packed per step
                            (np.packbits over the flattened observation), any
                            other dtype stored as is
    actions       (S, ...)  e.g. int8 for discrete actions
    subgoals      (S,) int8      boundaries (S,) bool
    episode_lens  (E,) int32     task_ids (E,) int16     seeds (E,) int64
and `metadata`, a uint8 array of UTF-8 JSON with at least format_version,
library_version, obs_shape, obs_encoding ("packbits" or "raw"), plus what the
producer records (env_name, tasks, epsilon, seed, ...).

Optional metadata `condition_features` k: the last k features of a flat
observation are the episode's condition (a goal, a mission), constant over it.
Batches (`ConditionedDemoBatch`) then hold the observations without them and
the condition (B, k), read at each episode's first step, for a model built
with `dim_condition = k`.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from metacontroller.version import __version__

FORMAT_VERSION = 1
STEP_FIELDS = ('observations', 'actions', 'subgoals', 'boundaries')
EPISODE_FIELDS = ('episode_lens', 'task_ids', 'seeds')
NO_SUBGOAL = -1  # subgoal label for unknown steps and for padding


class DemoBatch(NamedTuple):
    """Episodes padded to T = the longest in the batch; mask steps t >= episode_lens."""

    observations: torch.Tensor  # (B, T, *obs_shape): float32 0/1 for bit-packed data, else the stored dtype; 0 padded
    actions: torch.Tensor  # (B, T, *action_shape): long for integer actions, 0 padded
    subgoals: torch.Tensor  # (B, T) long, NO_SUBGOAL padded
    boundaries: torch.Tensor  # (B, T) bool, False padded
    episode_lens: torch.Tensor  # (B,) long

    @property
    def condition(self) -> None:
        """No condition: the dataset's metadata sets no `condition_features` (see `ConditionedDemoBatch`)."""
        return None


class ConditionedDemoBatch(NamedTuple):
    """A DemoBatch (the same fields, in order) of a dataset whose observations end in the episode's condition:
    observations hold the rest, condition the k = metadata["condition_features"] features cut off."""

    observations: torch.Tensor  # (B, T, F - k)
    actions: torch.Tensor
    subgoals: torch.Tensor
    boundaries: torch.Tensor
    episode_lens: torch.Tensor
    condition: torch.Tensor  # (B, k) float32, read at each episode's first step


class ActionSets(NamedTuple):
    """Which actions the expert ranks how at each stored step of a dataset (rows as in the dataset)."""

    optimal: np.ndarray  # (S, A) bool: the actions the noise-free expert picks among (ties included)
    fatal: np.ndarray  # (S, A) bool: the actions that end the episode as a failure
    # (S,) bool: the step heads to the first stage of its subgoal (pinpad: a pair's first colour), where
    # the behaviour so far does not reveal which subgoal comes next; None when the env does not say
    onset: np.ndarray | None = None


@dataclass(frozen = True)
class DemoDataset:
    """Episodes in stored form; build with `from_steps`, read with `batch` / `iter_batches`."""

    observations: np.ndarray  # (S, ...) encoded, see metadata["obs_encoding"]
    actions: np.ndarray  # (S, ...)
    subgoals: np.ndarray  # (S,) int8
    boundaries: np.ndarray  # (S,) bool
    episode_lens: np.ndarray  # (E,) int32
    task_ids: np.ndarray  # (E,) int16, index into metadata["tasks"]
    seeds: np.ndarray  # (E,) int64, the seed each episode's env was reset with
    metadata: dict[str, Any]
    offsets: np.ndarray = field(init = False, repr = False)  # (E,) first row of each episode

    def __post_init__(self):
        num_steps, num_episodes = int(self.episode_lens.sum()), len(self.episode_lens)
        step_rows = {name: len(getattr(self, name)) for name in STEP_FIELDS}
        episode_rows = {name: len(getattr(self, name)) for name in EPISODE_FIELDS}
        if any(rows != num_steps for rows in step_rows.values()) or any(rows != num_episodes for rows in episode_rows.values()):
            raise ValueError(f'inconsistent dataset: episode_lens sum to {num_steps} steps over {num_episodes} '
                             f'episodes, but rows are {step_rows | episode_rows}')
        if (self.episode_lens < 1).any():
            raise ValueError('inconsistent dataset: every episode needs at least one step')
        missing = {'format_version', 'obs_shape', 'obs_encoding'} - set(self.metadata)
        if missing:
            raise ValueError(f'dataset metadata lacks {sorted(missing)}')
        shape = tuple(self.metadata['obs_shape'])
        packed_width = (int(np.prod(shape)) + 7) // 8
        stored_shape = (packed_width,) if self.metadata['obs_encoding'] == 'packbits' else shape
        if self.observations.shape[1:] != stored_shape:
            raise ValueError(f"inconsistent dataset: observation rows of shape {self.observations.shape[1:]}, "
                             f"expected {stored_shape} for {self.metadata['obs_encoding']} observations of shape {shape}")
        self._check_actions()
        k = self.metadata.get('condition_features', 0)
        if k and not (isinstance(k, int) and len(shape) == 1 and 0 < k < shape[0]):
            raise ValueError(f'inconsistent dataset: condition_features must be an int in [0, {shape[-1] if shape else 0}) '
                             f'(the last features of a flat observation), got {k!r} for observations of shape {shape}')
        lens = self.episode_lens.astype(np.int64)
        object.__setattr__(self, 'offsets', np.cumsum(lens) - lens)

    def _check_actions(self):
        """Integer actions are ids in [0, metadata["num_actions"]), or at least >= 0 where the count is not recorded."""
        if not np.issubdtype(self.actions.dtype, np.integer) or len(self.actions) == 0:
            return
        num = self.metadata.get('num_actions')
        low, high = int(self.actions.min()), int(self.actions.max())
        if low < 0 or (num is not None and high >= num):
            expected = f'ids in [0, {num})' if num is not None else 'non-negative ids'
            raise ValueError(f'inconsistent dataset: actions must be {expected}, got values in [{low}, {high}]')

    @classmethod
    def from_steps(cls, observations: np.ndarray, actions: np.ndarray, subgoals: np.ndarray, boundaries: np.ndarray,
                   episode_lens: np.ndarray, task_ids: np.ndarray, seeds: np.ndarray, metadata: dict[str, Any]) -> DemoDataset:
        """Build from step-concatenated arrays (see module doc); bool observations get bit-packed.
        `metadata` (JSON-serialisable) is completed with the format fields."""
        observations = np.asarray(observations)
        packed = observations.dtype == bool
        stored = np.packbits(observations.reshape(len(observations), -1), axis = 1) if packed else observations
        metadata = {**metadata, 'format_version': FORMAT_VERSION, 'library_version': __version__,
                    'obs_shape': list(observations.shape[1:]), 'obs_encoding': 'packbits' if packed else 'raw'}
        json.dumps(metadata)  # fail now, not at save time, if it is not serialisable
        return cls(stored, np.asarray(actions), np.asarray(subgoals, np.int8), np.asarray(boundaries, bool),
                   np.asarray(episode_lens, np.int32), np.asarray(task_ids, np.int16), np.asarray(seeds, np.int64), metadata)

    @classmethod
    def concatenate(cls, parts: Sequence[DemoDataset]) -> DemoDataset:
        """Join datasets with the same observation format; metadata comes from the first."""
        formats = {(tuple(p.metadata['obs_shape']), p.metadata['obs_encoding']) for p in parts}
        if len(formats) != 1:
            raise ValueError(f'can only concatenate one or more datasets with one observation format, got {formats}')
        arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in STEP_FIELDS + EPISODE_FIELDS}
        return cls(**arrays, metadata = parts[0].metadata)

    def head(self, count: int) -> DemoDataset:
        """The first `count` episodes."""
        steps = int(self.episode_lens[:count].sum())
        return DemoDataset(**{name: getattr(self, name)[:steps] for name in STEP_FIELDS},
                           **{name: getattr(self, name)[:count] for name in EPISODE_FIELDS}, metadata = self.metadata)

    def __len__(self) -> int:
        return len(self.episode_lens)

    @property
    def num_steps(self) -> int:
        return len(self.subgoals)

    # ------------------------------------------------------------ files

    def fingerprint(self) -> str:
        """sha256 over every stored array and the metadata: equal for the same episodes, stored alike."""
        digest = hashlib.sha256(json.dumps(self.metadata, sort_keys = True, default = str).encode())
        for name in (*STEP_FIELDS, *EPISODE_FIELDS):
            values = np.ascontiguousarray(getattr(self, name))
            digest.update(f'{name}|{values.dtype}|{values.shape}|'.encode())
            digest.update(values.view(np.uint8).reshape(-1))
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write one compressed .npz file at exactly `path`."""
        header = np.frombuffer(json.dumps(self.metadata, sort_keys = True).encode(), dtype = np.uint8)
        arrays = {name: getattr(self, name) for name in STEP_FIELDS + EPISODE_FIELDS}
        with open(path, 'wb') as file:
            np.savez_compressed(file, metadata = header, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> DemoDataset:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'no demonstration dataset file at {path}')
        if not zipfile.is_zipfile(path):  # np.load would return a .npy array, or try to unpickle
            raise ValueError(f'{path} is not a readable demonstration dataset (truncated or corrupt?): '
                             f'expected an .npz archive as DemoDataset.save writes, got a file that is not a zip archive')
        try:
            with np.load(path, allow_pickle = False) as npz:
                missing = {'metadata', *STEP_FIELDS, *EPISODE_FIELDS} - set(npz.files)
                if missing:
                    raise ValueError(f'missing arrays {sorted(missing)}')
                metadata = json.loads(npz['metadata'].tobytes().decode())
                if not isinstance(metadata, dict):
                    raise ValueError('metadata is not a JSON object')
                arrays = {name: npz[name] for name in STEP_FIELDS + EPISODE_FIELDS}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
            raise ValueError(f'{path} is not a readable demonstration dataset (truncated or corrupt?): {error}') from error
        version = metadata.get('format_version')
        if version != FORMAT_VERSION:
            raise ValueError(f'{path} has dataset format version {version!r} but this library '
                             f'(metacontroller {__version__}) reads version {FORMAT_VERSION}: regenerate it')
        try:
            return cls(**arrays, metadata = metadata)
        except ValueError as error:
            raise ValueError(f'{path}: {error}') from error

    # ------------------------------------------------------------ batches

    def decode_observations(self, rows: np.ndarray) -> np.ndarray:
        """Stored observation rows -> (len(rows), *obs_shape), float32 if bit-packed."""
        shape = tuple(self.metadata['obs_shape'])
        if self.metadata['obs_encoding'] == 'raw':
            return self.observations[rows]
        bits = np.unpackbits(self.observations[rows], axis = 1, count = int(np.prod(shape)))
        return bits.astype(np.float32).reshape(len(rows), *shape)

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored rows of the steps of episodes `indices`, batch-major: the order of `batch(indices)`'s valid steps."""
        indices = np.asarray(indices, dtype = np.int64)
        steps = np.arange(self.episode_lens[indices].max())
        return (self.offsets[indices][:, None] + steps)[steps < self.episode_lens[indices][:, None]]

    def batch(self, indices: Sequence[int] | np.ndarray) -> DemoBatch | ConditionedDemoBatch:
        """Episodes `indices` as padded torch tensors."""
        indices = np.asarray(indices, dtype = np.int64)
        lens = self.episode_lens[indices].astype(np.int64)
        valid = np.arange(lens.max()) < lens[:, None]  # (B, T)
        rows = self.rows(indices)

        def padded(values: np.ndarray, fill) -> torch.Tensor:
            out = np.full((*valid.shape, *values.shape[1:]), fill, dtype = values.dtype)
            out[valid] = values
            return torch.from_numpy(out)

        actions = self.actions[rows]
        batch = DemoBatch(
            observations = padded(self.decode_observations(rows), 0),
            actions = padded(actions.astype(np.int64) if np.issubdtype(actions.dtype, np.integer) else actions, 0),
            subgoals = padded(self.subgoals[rows].astype(np.int64), NO_SUBGOAL),
            boundaries = padded(self.boundaries[rows], False),
            episode_lens = torch.from_numpy(lens),
        )
        return self._split_condition(batch)

    def _split_condition(self, batch: DemoBatch) -> DemoBatch | ConditionedDemoBatch:
        """Observations (B, T, F) -> (B, T, F - k) and the (B, k) condition of each episode's first step."""
        k = self.metadata.get('condition_features', 0)
        if not k:
            return batch
        observations = batch.observations
        return ConditionedDemoBatch(observations[..., :-k].contiguous(), *batch[1:], observations[:, 0, -k:].float())

    def iter_batches(self, batch_size: int, shuffle: bool = True, seed: int | None = None, drop_last: bool = False) -> Iterator[DemoBatch]:
        """One pass over the episodes in batches (shuffled by a generator seeded with `seed`)."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size])
