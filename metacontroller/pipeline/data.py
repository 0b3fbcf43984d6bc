"""Data phase (D and D*) and the length-bucketed batches every training loop uses."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from metacontroller.demos import DemoBatch, DemoDataset
from metacontroller.pipeline.adapter import EnvAdapter
from metacontroller.pipeline.config import DataConfig

# file name -> what it holds
DATASETS = dict(
    pretrain = 'D: noisy expert on the pretraining tasks (behaviour cloning)',
    discovery = 'D*: clean expert on the pretraining tasks (probes, discovery)',
    heldout = 'clean pretraining-task episodes never trained on (probe and switch metrics)',
    post_task = 'clean expert on the post-training task (switch analysis only)',
)


def dataset_path(data_dir: Path, name: str) -> Path:
    return data_dir / f'{name}.npz'


def generate(adapter: EnvAdapter, config: DataConfig, seed: int, data_dir: Path) -> dict:
    """Write the four datasets; distinct seeds keep them disjoint in layouts."""
    specs = dict(
        pretrain = (config.pretrain_episodes, adapter.pretraining_tasks, config.pretrain_epsilon),
        discovery = (config.discovery_episodes, adapter.pretraining_tasks, 0.),
        heldout = (config.heldout_episodes, adapter.pretraining_tasks, 0.),
        post_task = (config.post_task_episodes, (adapter.post_task,), 0.),
    )
    data_dir.mkdir(parents = True, exist_ok = True)
    summary = {}
    for offset, (name, (episodes, tasks, epsilon)) in enumerate(specs.items()):
        dataset = adapter.generate_demos(episodes, tasks = tasks, epsilon = epsilon, seed = seed * 10 + offset, progress = False)
        dataset.save(dataset_path(data_dir, name))
        summary[name] = dict(episodes = len(dataset), steps = dataset.num_steps, mean_length = float(dataset.episode_lens.mean()))
    return summary


def load(data_dir: Path, name: str) -> DemoDataset:
    path = dataset_path(data_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f'missing dataset {path}: run the data phase first (--phases data)')
    return DemoDataset.load(path)


def epoch_batches(dataset: DemoDataset, batch_size: int, rng: np.random.Generator, min_size: int = 1) -> list[np.ndarray]:
    """One epoch of shuffled batches of episode indices with similar lengths: padding
    (and so wasted compute) stays small. Sort by length with random tie order,
    cut into batches, shuffle the batches. A last batch of fewer than `min_size`
    episodes is dropped (with several processes: one episode per rank at least)."""
    order = np.lexsort((rng.random(len(dataset)), dataset.episode_lens))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    chunks = [chunk for chunk in chunks if len(chunk) >= min_size]
    return [chunks[index] for index in rng.permutation(len(chunks))]


def bucketed_batches(dataset: DemoDataset, batch_size: int, rng: np.random.Generator, min_size: int = 1) -> Iterator[np.ndarray]:
    """Endless `epoch_batches`."""
    while True:
        yield from epoch_batches(dataset, batch_size, rng, min_size)


def to_device(batch: DemoBatch, device: str) -> DemoBatch:
    return type(batch)(*(t.to(device) for t in batch))   # a ConditionedDemoBatch keeps its condition


def length_order(dataset: DemoDataset) -> np.ndarray:
    """Episode indices by length (stable): the order `ordered_batches` visits them in."""
    return np.argsort(dataset.episode_lens, kind = 'stable')


def ordered_batches(dataset: DemoDataset, batch_size: int, device: str) -> Iterator[DemoBatch]:
    """One pass in length order (for evaluation and precomputed streams)."""
    order = length_order(dataset)
    for start in range(0, len(order), batch_size):
        yield to_device(dataset.batch(order[start:start + batch_size]), device)
