"""What the pipeline needs to know about an environment, behind one small object.

Only the adapters in `adapters/` import an environment; the rest of the pipeline
sees it through this object, handed to the command line (`cli.run_cli`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Mapping, Sequence

from metacontroller.demos import ActionSets, DemoDataset
from metacontroller.pipeline.config import PipelineConfig, override, preset

Task = Sequence[int]


@dataclass(frozen = True)
class EnvAdapter:
    name: str
    obs_dim: int                     # flat observation size (continuous readout)
    num_actions: int                 # discrete actions
    subgoal_names: str               # one character per ground-truth subgoal label
    pretraining_tasks: tuple[Task, ...]
    post_task: Task
    post_task_name: str
    generate_demos: Callable[..., DemoDataset]          # (num_episodes, tasks, epsilon, seed, progress) -> DemoDataset
    vector_env: Callable[..., object]                   # (num_envs, tasks) -> batched env
    state_encoder: Callable[[int], object] | None = None  # dim -> module added to the observation embedding
    # dataset -> the expert's optimal and fatal actions per stored step (for base-model diagnostics), if known
    expert_action_sets: Callable[[DemoDataset], ActionSets] | None = None
    # preset name -> {'section.field': value} on top of the pipeline's preset: sizes and budgets for this env
    preset_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory = dict)

    def preset(self, name: str) -> PipelineConfig:
        """The pipeline's preset `name` with this environment's overrides."""
        return override(preset(name), self.preset_overrides.get(name, {}))

    def make_envs(self, tasks: Sequence[Task]) -> Callable[[int], object]:
        """make_envs(num_envs) -> a fresh batched env on `tasks` (the internal-RL contract)."""
        return partial(self.vector_env, tasks = tuple(tasks))

    @property
    def num_subgoals(self) -> int:
        return len(self.subgoal_names)

