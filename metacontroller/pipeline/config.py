"""Pipeline configuration: one dataclass per phase, four presets.

Every field becomes a command-line flag (`--pretrain.steps 2000`); the field's
`help` metadata is the flag's documentation. Presets:

- smoke:   tiny sizes and budgets; the whole pipeline in well under 3 minutes
           on a 2-core CPU (the tests run it).
- default: the CPU reproduction (the README's main command); its sizes are
           scaled down from the paper's (see `default_config`).
- labelfree: the default sizes with the study's label-free recipe (ours: next-event heads,
           three-stage rotation-consistent discovery from the first of up to eight first stages to reach a set switch contrast,
           codebook RL), the one that learns ABCDAB on CPU (discovery seeds 0 and 1 of 3 find the
           subgoal boundaries); pinpad only.
- paper:   the paper's sizes and budgets (Tables A4, A6, A9, A13, A16), for a GPU.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from metacontroller.codes import CODES
from metacontroller.rl.config import RLConfig

SELECT_ALPHA = ('fixed', 'switch_f1')   # how discovery picks the metacontroller that goes downstream
NEXT_EVENT_AT = ('step', 'segment')   # --discovery.next_event_at: the event after each step, or after each code's choice


def knob(default, help: str):
    """A config field with its documentation (shown by --help)."""
    return field(default = default, metadata = dict(help = help))


@dataclass(frozen = True)
class ModelConfig:
    dim: int = knob(128, 'residual stream width d')
    depth: int = knob(4, 'total transformer layers L; the metacontroller sits at L/2')
    heads: int = knob(4, 'attention heads per layer')
    dim_head: int = knob(32, 'width of one attention head')
    ff_mult: int = knob(2, 'MLP hidden width = ff_mult * dim (ReLU)')
    binary_state_readout: bool = knob(True, "next-observation head: Bernoulli logits over the 0/1 observation features (False: the readout's Gaussian)")
    upper_attention: bool = knob(True, 'attention in the layers above the cut; False: feed-forward only (about the same parameter count), '
                                       "so that whatever the actions read of the past passes through the cut (ours, not the paper's)")
    task_condition: bool = knob(False, "give the env's task to the base model as a condition vector (adaptive layer norms) "
                                       'instead of in the observation (BabyAI: the mission); not in the paper')


@dataclass(frozen = True)
class DataConfig:
    pretrain_episodes: int = knob(50_000, 'episodes in D (pretraining demos, epsilon-noisy expert); 10k overfits within 3k steps')
    pretrain_epsilon: float = knob(0.05, 'expert noise for D')
    discovery_episodes: int = knob(5_000, 'episodes in D* (clean expert, epsilon = 0) for discovery and probes')
    heldout_episodes: int = knob(500, 'held-out clean pretraining-task episodes for probe and switch metrics')
    post_task_episodes: int = knob(200, 'clean expert episodes on the post-training task (switch analysis only)')


@dataclass(frozen = True)
class PretrainConfig:
    steps: int = knob(6_000, 'behaviour-cloning optimiser steps')
    batch_size: int = knob(64, 'episodes per batch (batches group episodes of similar length)')
    lr: float = knob(1e-3, 'AdamW learning rate')
    weight_decay: float = knob(0.03, 'AdamW weight decay')
    state_loss_weight: float = knob(0., 'lambda, the weight of the next-observation loss (paper: 0 or 0.01)')
    max_grad_norm: float = knob(1.0, 'gradient clipping')
    eval_episodes: int = knob(512, 'rollouts (sampled actions) per task set to measure BC success')
    init: str = knob('', 'start from this base-model checkpoint (e.g. pretrained on a GPU) and train `steps` more (0: use it as is)')
    cooldown_steps: int = knob(0, 'the last N steps decay the learning rate linearly towards 0, the last at lr / N (0: constant throughout)')
    next_event_weight: float = knob(0., 'weight of an auxiliary head on the last layer that predicts the next event each episode shows '
                                        '(pinpad: the next colour the agent enters), read from its own later observations: no labels, '
                                        "but ours, not the paper's; it makes the stream at the cut steerable (0: off)")


@dataclass(frozen = True)
class ProbeConfig:
    train_episodes: int = knob(1_000, 'D* episodes the probes are fit on (test: the held-out set)')
    steps: int = knob(300, 'full-batch AdamW steps per probe')
    lr: float = knob(1e-2, 'AdamW learning rate (weight decay 0, as in the paper)')


@dataclass(frozen = True)
class ControlConfig:
    steps: int = knob(1_500, 'optimiser steps of the ground-truth subgoal controllers (paper App. C.3)')
    batch_size: int = knob(128, 'D* episodes per batch')
    lr: float = knob(1e-3, 'AdamW learning rate')
    weight_decay: float = knob(0.03, 'AdamW weight decay')
    dim_hypernetwork_hidden: int = knob(32, "hypernetwork hidden width (the metacontroller decoder's)")
    low_rank: int = knob(16, 'rank r of each controller U = A B^T')
    eval_episodes: int = knob(1_000, 'fresh episodes per task set and policy (sampled and greedy actions), controllers switched by the live ground-truth subgoal')


@dataclass(frozen = True)
class DiscoveryConfig:
    alpha: float = knob(0.05, 'KL weight of the metacontroller used downstream (with --discovery.select_alpha fixed)')
    sweep_alphas: tuple[float, ...] = knob((), 'extra alphas trained for the rate-distortion table and plot')
    select_alpha: str = knob('fixed', "which alpha goes downstream: 'fixed' (--discovery.alpha) or 'switch_f1' (the best held-out "
                                      'switch F1 among alpha and the sweep: it reads the held-out labels, as the paper picks by RL success)')
    steps: int = knob(800, 'optimiser steps')
    batch_size: int = knob(128, 'episodes per batch')
    lr: float = knob(1e-3, 'AdamW learning rate')
    weight_decay: float = knob(0.03, 'AdamW weight decay')
    kl_warmup_steps: int = knob(0, "steps over which the KL weight ramps linearly from 0 to alpha (0: the paper's constant alpha; not in the paper)")
    dim_meta_controller: int = knob(32, 'history GRU and sequence summary width (n_h = n_s)')
    dim_latent: int = knob(8, 'latent code width n_z')
    latent_code: str = knob('gaussian', 'gaussian (the paper), binary (n_z bits) or categorical (one of n_z codes); the discrete codes are not in the paper')
    switch_gumbel_temperature: float = knob(0., 'Gumbel-sigmoid switch in training at this temperature (0: off, as in the '
                                                  "paper's main runs; its App. C.6 turns it on for the gridworld rate-distortion sweep)")
    ratio_loss_weight: float = knob(0., "weight of H-Net's ratio loss, which pulls the fraction of switch steps towards "
                                        "1 / --discovery.target_segment_length (not in the paper; 0: off, the paper's objective)")
    target_segment_length: float = knob(8., "the ratio loss's target mean segment length in steps (> 1; used only with "
                                            '--discovery.ratio_loss_weight > 0)')
    dim_encoder_hidden: int = knob(64, 'controller encoder hidden width')
    dim_hypernetwork_hidden: int = knob(32, 'hypernetwork hidden width')
    hypernetwork_low_rank: int = knob(16, 'rank r of the controller U = A B^T')
    dim_policy: int = knob(256, 'internal-RL policy GRU width')
    steering_episodes: int = knob(256, 'fresh episodes per injected code in the steering check (paper App. B.3.2)')
    rotation_consistency: bool = knob(False, "each code must also steer its episode turned by a symmetry of the env (pinpad: "
                                             '1-3 quarter turns, one per step): the loss is the mean of the two action NLLs + alpha KL. '
                                             "Not the paper's objective: it finds codes that name colours, not places (docs/reproduction.md)")
    freeze_switching_steps: int = knob(0, 'train the first K steps with the switching unit and the history GRU it reads frozen, so '
                                          'that the codes learn what they name while the switches move only as the codes do: a second '
                                          "stage that keeps the first's switch times (with --discovery.first_stage_steps or "
                                          '--discovery.init; not the paper); 0: off')
    third_stage_steps: int = knob(0, "after each alpha's training, N more steps of its objective from its weights with the switching "
                                     'unit free (--discovery.freeze_switching_steps off), a fresh optimiser and a fresh next-event head: '
                                     'on pinpad, after a stage 2 frozen throughout, it makes the switches binary on the boundaries '
                                     'where freeing the unit within the same run loses them (ours, not the paper); 0: off')
    cut_history: bool = knob(False, "each code must also steer with its episode's past cut off (the lower body sees the "
                                    'rest of the episode from a step after one of its switches as an episode of its own): the '
                                    "loss is the mean of the action NLLs + alpha KL. Not the paper's objective: a code that "
                                    'steers relative to the last subgoal pays for it (docs/reproduction.md)')
    next_event_weight: float = knob(0., 'weight of a head on the held code z_t that predicts the next event the episode shows '
                                        "after step t (pinpad: the next colour the agent enters), read from its later observations: "
                                        "no labels, but not the paper's objective; a code must then say where it leads whatever came "
                                        'before it (0: off; docs/reproduction.md)')
    next_event_at: str = knob('step', "with --discovery.next_event_weight, z_t's target: 'step', the next event after step t; "
                                      "'segment', the next event after the step z_t was chosen (its segment's first), so that a "
                                      'switch at an event inside a subgoal earns nothing from the head')
    init: str = knob('', 'start every alpha from this metacontroller checkpoint (its shape must match the --discovery.* '
                         "settings) instead of fresh weights, e.g. to train a previous discovery on; '': fresh")
    first_stage_steps: int = knob(0, "first train the paper's objective alone for this many steps at --discovery.first_stage_alpha "
                                     '(rotation consistency, the cut history, the next-event head, the ratio loss, the KL warm-up and '
                                     'the Gumbel switch off), then start every alpha '
                                     'from its weights: two-stage discovery, where the first stage finds when to switch and the second '
                                     '(e.g. --discovery.rotation_consistency) what the codes name (docs/reproduction.md); 0: one stage')
    first_stage_alpha: float = knob(0.1, 'KL weight of the first stage (with --discovery.first_stage_steps)')
    first_stage_restarts: int = knob(1, 'start the first stage N times (start r: first weights and batch draws from the seed + '
                                        "r * 1000; start 0 is the run seed's own), train each --discovery.first_stage_restart_steps, "
                                        'and go on with the start whose switches fall where the base is most surprised by the next '
                                        'action, and not where it is not (switch_contrast: its NLL at the switch steps over its NLL at '
                                        'the others, on the discovery episodes: no labels; not the paper; a start switching '
                                        'after step 0 less than once per 10 episodes ranks last); 1: one start')
    first_stage_restart_steps: int = knob(3_200, 'steps each first-stage start trains before the pick (with --discovery.first_stage_restarts '
                                                 '> 1; at most --discovery.first_stage_steps, which the picked start goes on to)')
    first_stage_stop_contrast: float = knob(0., 'with --discovery.first_stage_restarts N: start no more once a start reaches '
                                                'this switch contrast (and switches enough to rank), and go on with it, so that N '
                                                'is the most starts (not the paper); 0: all N')
    first_stage_stop_switches: float = knob(0., 'with --discovery.first_stage_stop_contrast: a start stops the search only if it '
                                                'also switches at least this often per episode, the first step counted (a start on '
                                                'half the boundaries can reach the contrast of one on every boundary, with fewer '
                                                'switches; not the paper); 0: any')
    restarts: int = knob(1, 'start each alpha N times (start r: first weights and batch draws from the seed + r * 1000; start 0 '
                            "is the run seed's own), train each --discovery.restart_steps, and go on with the start with the highest "
                            "switch_contrast, as --discovery.first_stage_restarts (no labels; not the paper; "
                            "on pinpad a second stage keeps or loses the first stage's boundaries within a few hundred steps); 1: one start")
    restart_steps: int = knob(400, 'steps each start of an alpha trains before the pick (with --discovery.restarts > 1; at most '
                                   '--discovery.steps, which the picked start goes on to)')

    def first_stage(self) -> DiscoveryConfig:
        """The first stage's settings: the paper's objective at this run's sizes (it starts from --discovery.init if given)."""
        return replace(self, steps = self.first_stage_steps, alpha = self.first_stage_alpha, sweep_alphas = (), rotation_consistency = False,
                       freeze_switching_steps = 0, cut_history = False, next_event_weight = 0., ratio_loss_weight = 0., switch_gumbel_temperature = 0.,
                       kl_warmup_steps = 0, first_stage_steps = 0, third_stage_steps = 0)

    def third_stage(self) -> DiscoveryConfig:
        """The third stage's settings: this run's objective with the switching unit free from the first step."""
        return replace(self, steps = self.third_stage_steps, freeze_switching_steps = 0, third_stage_steps = 0)


@dataclass(frozen = True)
class RLPhaseConfig:
    """The pipeline's values for the settings `RLConfig` defines and checks (the same names), and its own:
    the held-out task, the raw-action baseline's learning rate and the final evaluation."""
    task: str = knob('', "held-out task as subgoal names, e.g. ACBD ('': the env's own, ABCDAB on pinpad); "
                         'the data, control, discovery and RL phases all use it')
    num_envs: int = knob(256, 'episodes per PPO batch (all envs run in lockstep)')
    total_episodes: int = knob(20_000, 'episode budget, the same for internal RL and both baselines')
    lr: float = knob(3e-4, 'policy learning rate (internal RL and beta = 1)')
    raw_action_lr: float = knob(3e-5, 'learning rate of raw-action RL (all base weights train)')
    epochs: int = knob(2, 'PPO epochs per batch')
    clip: float = knob(0.2, 'PPO ratio clip')
    eval_every: int = knob(5_000, 'episodes between evaluations for the learning curve')
    eval_episodes: int = knob(256, 'episodes per learning-curve evaluation')
    final_eval_episodes: int = knob(1_000, 'fresh post-task episodes for the final success rate')
    deterministic_eval: bool = knob(False, 'final evaluation with greedy (True) or sampled (False) latents and actions')
    codebook: int = knob(0, 'internal RL and beta = 1 choose among this many k-means centroids of the codes discovery '
                            'holds on its data (no labels; not the paper); 0: a Gaussian over z, the paper')
    codebook_spread: float = knob(0., 'with --rl.codebook: draw z from a Gaussian around the chosen centroid that starts at '
                                      'this std and whose mean and variance the policy learns (not the paper); 0: the centroid itself')
    codebook_spread_after: int = knob(0, 'with --rl.codebook_spread: first train the exact codebook policy this many episodes, then '
                                         'its copy with the spread (same choices, fresh optimiser) for the rest of --rl.total_episodes; '
                                         "the study's recipe is 400000 of 600000 (a spread from the start learns slower); 0: from the start")

    def run_config(self, lr: float) -> RLConfig:
        """The settings of one RL run at learning rate `lr`."""
        shared = {f.name: getattr(self, f.name) for f in fields(RLConfig) if hasattr(self, f.name)}
        return RLConfig(**{**shared, 'lr': lr})


@dataclass(frozen = True)
class ReportConfig:
    figure_copy: str = knob('', "also copy the summary figure (always written to the run folder) here, e.g. fig1.png to refresh the README's")
    plot_episodes: int = knob(4, 'episodes per task set in switches.png')


@dataclass(frozen = True)
class PipelineConfig:
    preset: str = 'default'
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    probe: ProbeConfig = ProbeConfig()
    control: ControlConfig = ControlConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    rl: RLPhaseConfig = RLPhaseConfig()
    report: ReportConfig = ReportConfig()

    def to_dict(self) -> dict:
        return asdict(self)


def smoke_config() -> PipelineConfig:
    return PipelineConfig(
        preset = 'smoke',
        model = ModelConfig(dim = 32, depth = 2, heads = 2, dim_head = 16, ff_mult = 2),
        data = DataConfig(pretrain_episodes = 256, discovery_episodes = 128, heldout_episodes = 32, post_task_episodes = 8),
        pretrain = PretrainConfig(steps = 20, batch_size = 32, eval_episodes = 32),
        probe = ProbeConfig(train_episodes = 64, steps = 30),
        control = ControlConfig(steps = 10, batch_size = 32, eval_episodes = 32),
        discovery = DiscoveryConfig(steps = 10, batch_size = 32, dim_policy = 32, sweep_alphas = (0.5,), steering_episodes = 16),
        rl = RLPhaseConfig(num_envs = 16, total_episodes = 32, eval_every = 16, eval_episodes = 16, final_eval_episodes = 32),
        report = ReportConfig(plot_episodes = 2),
    )


def default_config() -> PipelineConfig:
    """CPU scale: d = 128, L = 4 (2 + 2), 4 heads of 32, MLP 256 (paper: 256, 6, 4 x 64, 512)."""
    return PipelineConfig(preset = 'default')


def paper_config() -> PipelineConfig:
    return PipelineConfig(
        preset = 'paper',
        model = ModelConfig(dim = 256, depth = 6, heads = 4, dim_head = 64, ff_mult = 2),
        data = DataConfig(pretrain_episodes = 100_000, discovery_episodes = 50_000, heldout_episodes = 1_000, post_task_episodes = 500),
        pretrain = PretrainConfig(steps = 256_000, batch_size = 1024, lr = 3e-4, eval_episodes = 1_024),
        probe = ProbeConfig(train_episodes = 5_000, steps = 2_000, lr = 1e-3),
        control = ControlConfig(steps = 3_200, batch_size = 512, eval_episodes = 2_000),   # paper Table A7
        discovery = DiscoveryConfig(steps = 64_000, batch_size = 512, sweep_alphas = (0., 0.05, 0.17, 0.3, 0.5, 1.)),
        rl = RLPhaseConfig(num_envs = 1024, total_episodes = 1_000_000, lr = 3e-5, raw_action_lr = 3e-5, eval_every = 20_000,
                           eval_episodes = 1_024, final_eval_episodes = 2_000),
    )


def labelfree_config() -> PipelineConfig:
    """The default sizes with the study's label-free recipe (docs/reproduction.md; ours, not the paper's objectives):
    a next-colour head in pretraining; discovery in three stages: the paper's objective, then rotation-consistent codes
    with a head on z and the switching unit frozen, then 800 steps with it free (a fresh optimiser and head), the first
    from the first start of up to eight to reach a switch contrast of 1.7 with 2.5 switches per episode or more (set
    from the 37 starts of three bases: the 5 boundary starts scored 1.93-2.09 with 3.0-3.3 switches, a start on half the
    boundaries 1.93 with 2.0, every other start that ranks 1.86 or less), else the best of the eight; internal RL for
    the paper's 1M episodes over a codebook of the discovered codes whose choices then follow the state. On pinpad's
    seed-0 base discovery seeds 0 and 1 find the subgoal boundaries and seeds 2 and 3 do not; internal RL learns ABCDAB at 1.15 and 1.14 of the ground-truth
    controllers over seeds 0's and 1's codes (1.04 and 0.33 at 300k, where seed 1's first reward came late).
    It needs the env's next events and rotations (pinpad)."""
    default = default_config()
    return replace(
        default,
        preset = 'labelfree',
        data = replace(default.data, discovery_episodes = 40_000),
        pretrain = replace(default.pretrain, next_event_weight = 0.3),
        discovery = replace(default.discovery, first_stage_steps = 3_200, first_stage_alpha = 0.1, first_stage_restarts = 8,
                            first_stage_stop_contrast = 1.7, first_stage_stop_switches = 2.5,
                            steps = 3_200, alpha = 0.07,
                            rotation_consistency = True, next_event_weight = 1., next_event_at = 'segment',
                            freeze_switching_steps = 3_200, third_stage_steps = 800),
        rl = replace(default.rl, lr = 3e-3, num_envs = 1024, total_episodes = 1_000_000, eval_every = 20_000,
                     codebook = 8, codebook_spread = 0.2, codebook_spread_after = 150_000),
    )


PRESETS = dict(smoke = smoke_config, default = default_config, labelfree = labelfree_config, paper = paper_config)


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; choose one of {sorted(PRESETS)}')
    return PRESETS[name]()


def sections(config: PipelineConfig) -> dict[str, Any]:
    """name -> phase sub-config (every dataclass field of the pipeline config)."""
    return {f.name: getattr(config, f.name) for f in fields(config) if is_dataclass(getattr(config, f.name))}


def override(config: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """Apply {'section.field': value} overrides; unknown keys are an error."""
    parts = sections(config)
    updates: dict[str, dict] = {}
    for key, value in values.items():
        section, _, name = key.partition('.')
        if section not in parts or name not in {f.name for f in fields(parts[section])}:
            raise ValueError(f'unknown setting {key!r}')
        updates.setdefault(section, {})[name] = value
    return replace(config, **{section: replace(parts[section], **kw) for section, kw in updates.items()})


def from_dict(data: dict) -> PipelineConfig:
    """Inverse of `to_dict` (for config.json)."""
    base = preset(data['preset'])
    flat = {f'{s}.{k}': tuple(v) if isinstance(v, list) else v for s, kw in data.items() if isinstance(kw, dict) for k, v in kw.items()}
    return override(base, flat)


POSITIVE_RATES = ('lr', 'max_grad_norm', 'clip')   # and every *_lr; the other floats are weights (>= 0)


def validate(config: PipelineConfig):
    """Check every setting before any work, so that a bad one fails at once, not when its phase starts.

    Ints are sizes and counts (>= 1; a `*_steps` warm-up may be 0). Floats are finite: rates
    (POSITIVE_RATES, `*_lr`) > 0, weights (decays, α, λ, ε) >= 0. Then the rules that tie settings together.
    """
    flat = {f'{name}.{f.name}': getattr(sub, f.name) for name, sub in sections(config).items() for f in fields(sub)}
    problems = [problem for key, value in flat.items() for problem in _check_setting(key, value)]
    problems += _check_together(config, flat)
    if problems:
        raise ValueError('invalid settings: ' + '; '.join(problems))


def _check_setting(key: str, value) -> list[str]:
    name = key.partition('.')[2]
    if isinstance(value, tuple):   # e.g. sweep_alphas: each one a weight
        return [problem for item in value for problem in _check_setting(key, item)][:1]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(value, int):
        # pretrain: 0 uses --pretrain.init as is; codebook, codebook_spread_after: 0 is off
        low = 0 if name.endswith('_steps') or key in ('pretrain.steps', 'rl.codebook', 'rl.codebook_spread_after') else 1
        return [] if value >= low else [f'--{key} must be >= {low}, got {value}']
    positive = name in POSITIVE_RATES or name.endswith('_lr')
    if math.isfinite(value) and (value > 0 if positive else value >= 0):
        return []
    return [f'--{key} must be finite and {"> 0" if positive else ">= 0"}, got {value}']


def _check_together(config: PipelineConfig, flat: dict[str, Any]) -> list[str]:
    problems = []
    if config.model.depth % 2:
        problems.append(f'--model.depth must be even (the metacontroller sits at L/2), got {config.model.depth}')
    if config.data.pretrain_epsilon > 1:
        problems.append(f'--data.pretrain_epsilon must be a probability, <= 1, got {config.data.pretrain_epsilon}')
    if config.discovery.latent_code not in CODES:
        problems.append(f'--discovery.latent_code must be one of {", ".join(CODES)}, got {config.discovery.latent_code!r}')
    if config.discovery.next_event_at not in NEXT_EVENT_AT:
        problems.append(f'--discovery.next_event_at must be one of {", ".join(NEXT_EVENT_AT)}, got {config.discovery.next_event_at!r}')
    if config.discovery.target_segment_length <= 1:
        problems.append(f'--discovery.target_segment_length must be > 1 (steps per segment), got {config.discovery.target_segment_length}')
    discovery = config.discovery
    if discovery.first_stage_restarts > 1 and not 0 < discovery.first_stage_restart_steps <= discovery.first_stage_steps:
        problems.append(f'--discovery.first_stage_restarts {discovery.first_stage_restarts} picks among first-stage starts: it needs '
                        f'0 < --discovery.first_stage_restart_steps <= --discovery.first_stage_steps, got '
                        f'{discovery.first_stage_restart_steps} and {discovery.first_stage_steps}')
    if discovery.first_stage_stop_contrast and discovery.first_stage_restarts < 2:
        problems.append(f'--discovery.first_stage_stop_contrast {discovery.first_stage_stop_contrast} stops among first-stage starts: '
                        f'give --discovery.first_stage_restarts N >= 2, got {discovery.first_stage_restarts}')
    if discovery.first_stage_stop_switches and not discovery.first_stage_stop_contrast:
        problems.append(f'--discovery.first_stage_stop_switches {discovery.first_stage_stop_switches} is part of the stop among '
                        'first-stage starts: give --discovery.first_stage_stop_contrast C > 0')
    if discovery.restarts > 1 and not 0 < discovery.restart_steps <= discovery.steps:
        problems.append(f'--discovery.restarts {discovery.restarts} picks among the starts of each alpha: it needs '
                        f'0 < --discovery.restart_steps <= --discovery.steps, got {discovery.restart_steps} and {discovery.steps}')
    if config.rl.codebook == 1:
        problems.append('--rl.codebook must be 0 (off: a Gaussian over z, the paper) or >= 2 codes to choose among, got 1')
    if config.rl.codebook_spread and not config.rl.codebook:
        problems.append(f'--rl.codebook_spread {config.rl.codebook_spread} needs a codebook to draw around: give --rl.codebook K >= 2')
    if config.rl.codebook_spread_after and not config.rl.codebook_spread:
        problems.append(f'--rl.codebook_spread_after {config.rl.codebook_spread_after} starts a spread: give --rl.codebook_spread σ0 > 0 '
                        '(and --rl.codebook K >= 2)')
    if config.rl.codebook_spread_after and config.rl.codebook_spread_after >= config.rl.total_episodes:
        problems.append(f'--rl.codebook_spread_after must leave episodes for the spread: less than --rl.total_episodes '
                        f'({config.rl.total_episodes}), got {config.rl.codebook_spread_after}')
    if config.discovery.select_alpha not in SELECT_ALPHA:
        problems.append(f'--discovery.select_alpha must be one of {", ".join(SELECT_ALPHA)}, got {config.discovery.select_alpha!r}')
    for flag, path in (('--pretrain.init', config.pretrain.init), ('--discovery.init', config.discovery.init)):
        if path and not Path(path).is_file():   # found now, not when its phase starts hours later
            problems.append(f'{flag} {path}: no such checkpoint file')
    if config.pretrain.cooldown_steps > config.pretrain.steps:
        problems.append(f'--pretrain.cooldown_steps must be <= --pretrain.steps ({config.pretrain.steps}), got {config.pretrain.cooldown_steps}')
    if config.pretrain.steps == 0 and not config.pretrain.init:
        problems.append('--pretrain.steps 0 keeps the model untrained: give steps >= 1, or a model with --pretrain.init')
    problems += [f'--{key} must be <= --model.dim ({config.model.dim}), got {value}'
                 for key, value in flat.items() if key.endswith('low_rank') and value > config.model.dim]
    try:   # RLConfig's own rules, now rather than when the rl phase starts
        config.rl.run_config(config.rl.lr)
    except ValueError as error:
        problems.append(f'--rl settings: {error}')
    return problems
