"""Pipeline configuration: one dataclass per phase, three presets.

Every field becomes a command-line flag (`--pretrain.steps 2000`); the field's
`help` metadata is the flag's documentation. Presets:

- smoke:   tiny sizes and budgets; the whole pipeline in well under 3 minutes
           on a 2-core CPU (the tests run it).
- default: the CPU reproduction (the README's main command); its sizes are
           scaled down from the paper's (see `default_config`).
- paper:   the paper's sizes and budgets (Tables A4, A6, A9, A13, A16), for a GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any


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


@dataclass(frozen = True)
class ProbeConfig:
    train_episodes: int = knob(1_000, 'D* episodes the probes are fit on (test: the held-out set)')
    steps: int = knob(300, 'full-batch AdamW steps per probe')
    lr: float = knob(1e-2, 'AdamW learning rate (weight decay 0, as in the paper)')


@dataclass(frozen = True)
class DiscoveryConfig:
    alpha: float = knob(0.05, 'KL weight of the metacontroller used downstream')
    sweep_alphas: tuple[float, ...] = knob((), 'extra alphas trained for a rate-distortion table (not used downstream)')
    steps: int = knob(800, 'optimiser steps')
    batch_size: int = knob(128, 'episodes per batch')
    lr: float = knob(1e-3, 'AdamW learning rate')
    weight_decay: float = knob(0.03, 'AdamW weight decay')
    dim_meta_controller: int = knob(32, 'history GRU and sequence summary width (n_h = n_s)')
    dim_latent: int = knob(8, 'latent code width n_z')
    dim_encoder_hidden: int = knob(64, 'controller encoder hidden width')
    dim_hypernetwork_hidden: int = knob(32, 'hypernetwork hidden width')
    hypernetwork_low_rank: int = knob(16, 'rank r of the controller U = A B^T')
    dim_policy: int = knob(256, 'internal-RL policy GRU width')


@dataclass(frozen = True)
class RLPhaseConfig:
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


@dataclass(frozen = True)
class ReportConfig:
    figure_copy: str = knob('', 'also write the summary figure here (the default preset: fig1.png in the working directory)')
    plot_episodes: int = knob(4, 'episodes per task set in switches.png')


@dataclass(frozen = True)
class PipelineConfig:
    preset: str = 'default'
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    probe: ProbeConfig = ProbeConfig()
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
        discovery = DiscoveryConfig(steps = 10, batch_size = 32, dim_policy = 32, sweep_alphas = (0.5,)),
        rl = RLPhaseConfig(num_envs = 16, total_episodes = 32, eval_every = 16, eval_episodes = 16, final_eval_episodes = 32),
        report = ReportConfig(plot_episodes = 2),
    )


def default_config() -> PipelineConfig:
    """CPU scale: d = 128, L = 4 (2 + 2), 4 heads of 32, MLP 256 (paper: 256, 6, 4 x 64, 512)."""
    return PipelineConfig(preset = 'default', report = ReportConfig(figure_copy = 'fig1.png'))


def paper_config() -> PipelineConfig:
    return PipelineConfig(
        preset = 'paper',
        model = ModelConfig(dim = 256, depth = 6, heads = 4, dim_head = 64, ff_mult = 2),
        data = DataConfig(pretrain_episodes = 100_000, discovery_episodes = 50_000, heldout_episodes = 1_000, post_task_episodes = 500),
        pretrain = PretrainConfig(steps = 256_000, batch_size = 1024, lr = 3e-4, eval_episodes = 1_024),
        probe = ProbeConfig(train_episodes = 5_000, steps = 2_000, lr = 1e-3),
        discovery = DiscoveryConfig(steps = 64_000, batch_size = 512, sweep_alphas = (0., 0.05, 0.17, 0.3, 0.5, 1.)),
        rl = RLPhaseConfig(num_envs = 1024, total_episodes = 1_000_000, lr = 3e-5, raw_action_lr = 3e-5, eval_every = 20_000,
                           eval_episodes = 1_024, final_eval_episodes = 2_000),
    )


PRESETS = dict(smoke = smoke_config, default = default_config, paper = paper_config)


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
