"""What the pipeline needs to know about an environment, behind one small object.

Only the adapters in `adapters/` import an environment; the rest of the pipeline
sees it through this object, handed to the command line (`cli.run_cli`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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
    # subgoal names -> task (raising ValueError on a bad name), for `--rl.task`; None: the post task is fixed
    parse_task: Callable[[str], Task] | None = None
    # env.step reports info['entered_subgoal'], so discovery runs the steering check (`pipeline.steering`)
    reports_entered_subgoal: bool = False
    # width of the task condition the base model is given (its demos' batches and env resets carry it); None: none
    dim_condition: int | None = None
    # on -> this env with its task as a condition vector (True) or in the observation (False), for
    # `--model.task_condition`; None: the env has one way to give its task
    task_condition_variant: Callable[[bool], EnvAdapter] | None = None
    # (observations (b, t, obs_dim), actions (b, t), numpy rng) -> the same episodes under a symmetry of the env drawn
    # from rng (pinpad: 1-3 quarter turns): valid episodes with every subgoal elsewhere, for --discovery.rotation_consistency
    rotate_episodes: Callable[..., tuple[Any, Any]] | None = None
    # observations (b, t, obs_dim) -> (b, t) the class of the next event each episode shows after each step, -1 where
    # none follows (pinpad: the next colour entered), and the number of classes, for --pretrain.next_event_weight
    next_events: Callable[[Any], Any] | None = None
    num_event_classes: int = 0
    # observations (b, t, obs_dim) -> (b, t) bool: the steps at which an episode shows an event (pinpad: a colour
    # entered), so that discovery reports whether its switches fall on events, and on which (`discover.analyse`)
    events: Callable[[Any], Any] | None = None

    def preset(self, name: str) -> PipelineConfig:
        """The pipeline's preset `name` with this environment's overrides."""
        return override(preset(name), self.preset_overrides.get(name, {}))

    def with_post_task(self, name: str) -> EnvAdapter:
        """This adapter with the held-out task `name` (subgoal names, e.g. 'ACBD'); '' keeps its own."""
        if not name or name == self.post_task_name:
            return self
        if self.parse_task is None:
            raise ValueError(f'--rl.task: {self.name} has one post-training task, {self.post_task_name}; got {name!r}')
        try:
            task = self.parse_task(name)
        except ValueError as error:
            raise ValueError(f'--rl.task: {error}') from None
        return replace(self, post_task = task, post_task_name = name)

    def for_config(self, config: PipelineConfig) -> EnvAdapter:
        """This adapter with the run's held-out task and task-condition settings (the CLI's, and a script's that reopens a run)."""
        return self.with_post_task(config.rl.task).with_task_condition(config.model.task_condition)

    def with_task_condition(self, on: bool) -> EnvAdapter:
        """This adapter with the task given to the base model as a condition vector or not (`--model.task_condition`):
        both ways, so that an adapter built conditioned still follows the flag config.json records."""
        if on == (self.dim_condition is not None):
            return self
        if self.task_condition_variant is None:
            has = 'has no task to give the model as a condition' if on else 'always gives the model its task as a condition: pass --model.task_condition'
            raise ValueError(f'--model.task_condition: {self.name} {has}')
        return replace(self.task_condition_variant(on), post_task = self.post_task, post_task_name = self.post_task_name)

    def episode_rotations(self, on: bool) -> Callable[..., tuple[Any, Any]] | None:
        """`rotate_episodes` for --discovery.rotation_consistency when `on`, else None; a clear error for an env without."""
        if on and self.rotate_episodes is None:
            raise ValueError(f'--discovery.rotation_consistency: {self.name} defines no episode rotations '
                             f'(symmetries that move its subgoals; pinpad turns its grid)')
        return self.rotate_episodes if on else None

    def event_targets(self, on: bool, flag: str = '--pretrain.next_event_weight') -> Callable[[Any], Any] | None:
        """`next_events` for `flag` when `on`, else None; a clear error for an env without."""
        if on and self.next_events is None:
            raise ValueError(f'{flag}: {self.name} defines no next events to predict '
                             f'(pinpad: the next colour the agent enters)')
        return self.next_events if on else None

    def make_envs(self, tasks: Sequence[Task]) -> Callable[[int], object]:
        """make_envs(num_envs) -> a fresh batched env on `tasks` (the internal-RL contract)."""
        return partial(self.vector_env, tasks = tuple(tasks))

    @property
    def num_subgoals(self) -> int:
        return len(self.subgoal_names)

