"""Build the base model and the metacontroller from the pipeline config."""
from __future__ import annotations

from torch import nn

from metacontroller import MetaController, Transformer
from metacontroller.pipeline.adapter import EnvAdapter
from metacontroller.pipeline.config import DiscoveryConfig, ModelConfig


def build_transformer(adapter: EnvAdapter, config: ModelConfig, next_event_head: bool = False) -> Transformer:
    """The base model of `config` for `adapter`'s env; `next_event_head` adds the head --pretrain.next_event_weight trains."""
    if config.depth < 2 or config.depth % 2:
        raise ValueError(f'model.depth must be even and >= 2 (the metacontroller sits at L/2), got {config.depth}')
    body = dict(
        depth = config.depth // 2, heads = config.heads, attn_dim_head = config.dim_head,
        rel_pos_bias = True, ff_mult = config.ff_mult, ff_custom_activation = nn.ReLU(),
    )
    # without attention above the cut, each action reads the past only through e_t, which a controller edits
    upper_body = body if config.upper_attention else {**body, 'custom_layers': ('f',) * config.depth}
    return Transformer(
        config.dim,
        action_embed_readout = dict(num_discrete = adapter.num_actions),
        state_embed_readout = dict(num_continuous = adapter.obs_dim),
        lower_body = body,
        upper_body = upper_body,
        state_encoder = adapter.state_encoder(config.dim) if adapter.state_encoder is not None else None,
        binary_state_readout = config.binary_state_readout,
        dim_condition = adapter.dim_condition,
        num_event_classes = adapter.num_event_classes if next_event_head else None,
    )


def build_meta_controller(dim_model: int, config: DiscoveryConfig) -> MetaController:
    return MetaController(
        dim_model,
        dim_meta_controller = config.dim_meta_controller,
        dim_latent = config.dim_latent,
        dim_encoder_hidden = config.dim_encoder_hidden,
        dim_hypernetwork_hidden = config.dim_hypernetwork_hidden,
        hypernetwork_low_rank = config.hypernetwork_low_rank,
        dim_policy = config.dim_policy,
        latent_code = config.latent_code,
        switch_gumbel_temperature = config.switch_gumbel_temperature or None,   # 0: off
        ratio_loss_weight = config.ratio_loss_weight,
        target_segment_length = config.target_segment_length,
    )
