"""The training fast paths against their plain counterparts: values and gradients, padded batches."""
import pytest
import torch
from torch import nn
from x_transformers import Decoder

from metacontroller import Transformer
from metacontroller.egocentric import EgocentricEncoder
from metacontroller.fast_train import FusedDecoder, fused_decoder, plain_paths, sparse_matmul

from conftest import ACTIONS, DIM, randomize_controller_, tiny_meta_controller

HEIGHT, WIDTH, CHANNELS = 3, 4, 5   # agent in the last channel
OBS = HEIGHT * WIDTH * CHANNELS


def one_hot_grids(b, t, lens = None):
    """(b, t, H·W·C) grids: the agent on one cell, a few coloured cells; zeros past each episode's length."""
    cells = HEIGHT * WIDTH
    grid = torch.zeros(b, t, cells, CHANNELS)
    colour = torch.randint(0, CHANNELS - 1, (b, t, cells))
    grid.scatter_(-1, colour[..., None], (torch.rand(b, t, cells, 1) < 0.3).float())
    grid[..., -1] = 0.
    grid[..., -1].scatter_(-1, torch.randint(0, cells, (b, t, 1)), 1.)
    if lens is not None:
        grid[torch.arange(t) >= lens[:, None]] = 0.
    return grid.flatten(2)


def grid_transformer(**body) -> Transformer:
    body = dict(depth = 1, heads = 2, attn_dim_head = 8, rel_pos_bias = True, **body)
    return Transformer(
        dim = DIM,
        action_embed_readout = dict(num_discrete = ACTIONS),
        state_embed_readout = dict(num_continuous = OBS),
        lower_body = body,
        upper_body = body,
        state_encoder = EgocentricEncoder(DIM, HEIGHT, WIDTH, CHANNELS, agent_channel = CHANNELS - 1),
    )


def grads(module: nn.Module) -> dict:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def value_and_grads(fn, module: nn.Module):
    module.zero_grad(set_to_none = True)
    value = fn()
    value.sum().backward()
    return value.detach(), grads(module)


def fast_and_plain(fn, module: nn.Module):
    """fn() -> tensor, run with the fast paths and without: (value, gradients) of each."""
    fast = value_and_grads(fn, module)
    with plain_paths():
        return fast, value_and_grads(fn, module)


def assert_same(fast, plain, atol = 1e-5):
    (value, grad), (ref_value, ref_grad) = fast, plain
    assert torch.allclose(value, ref_value, atol = atol)
    assert grad.keys() == ref_grad.keys()
    for name in grad:
        assert torch.allclose(grad[name], ref_grad[name], atol = atol), name


@pytest.mark.parametrize('binary', [True, False])
def test_sparse_matmul_matches_dense(binary):
    x = (torch.rand(4, 6, 40) < 0.03).float()
    x[0] = 0.                                             # padding rows: no entry set
    if not binary:
        x = x * torch.randn_like(x)
    weight = nn.Parameter(torch.randn(40, 8))
    assert_same(*fast_and_plain(lambda: sparse_matmul(x, weight), nn.ParameterList([weight])))


def test_sparse_matmul_keeps_the_dense_path_for_inputs_that_need_it():
    weight = torch.randn(40, 8)
    dense = torch.randn(5, 40)                            # mostly nonzero
    x = (torch.rand(5, 40) < 0.03).float().requires_grad_()
    assert torch.equal(sparse_matmul(dense, weight), dense @ weight)
    sparse_matmul(x, weight).sum().backward()            # a gradient to x needs every entry
    assert torch.allclose(x.grad, weight.sum(-1).expand(5, -1))


def test_egocentric_encoder_sparse_path_matches_the_canvas():
    encoder = EgocentricEncoder(DIM, HEIGHT, WIDTH, CHANNELS, agent_channel = 2)   # agent in a middle channel
    obs = one_hot_grids(3, 7, torch.tensor([7, 4, 1]))
    obs = obs.view(3, 7, HEIGHT * WIDTH, CHANNELS)[..., [0, 1, 4, 2, 3]].flatten(2)
    obs = obs * (1 + torch.rand_like(obs))                # not only 0/1: the values carry through
    assert_same(*fast_and_plain(lambda: encoder(obs), encoder))


def test_behaviour_cloning_fast_paths_match_the_plain_path():
    model = grid_transformer()
    lens = torch.tensor([9, 5, 2])
    state, actions = one_hot_grids(3, 9, lens), torch.randint(0, ACTIONS, (3, 9))
    loss = lambda: torch.stack(model(state, actions, episode_lens = lens))
    fast, plain = fast_and_plain(loss, model)
    assert_same(fast, plain)
    assert 'state_encoder.proj.weight' in fast[1] and 'state_embed.embeddings.weight' in fast[1]
    assert all(cached[1] is not None for cached in model._fused_bodies.values())   # the fused bodies ran


def test_discovery_fast_paths_match_the_plain_path():
    model, meta = grid_transformer(), randomize_controller_(tiny_meta_controller())
    lens = torch.tensor([8, 3])
    state, actions = one_hot_grids(2, 8, lens), torch.randint(0, ACTIONS, (2, 8))

    def loss():
        torch.manual_seed(1)
        return torch.stack(model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True)[:3])

    assert_same(*fast_and_plain(loss, meta), atol = 1e-4)


def test_fused_decoder_matches_x_transformers_forward_and_gradients():
    decoder = Decoder(dim = DIM, depth = 2, heads = 2, attn_dim_head = 8, rel_pos_bias = True, ff_custom_activation = nn.ReLU())
    fused = fused_decoder(decoder)
    assert isinstance(fused, FusedDecoder)
    x = nn.Parameter(torch.randn(2, 11, DIM))
    module = nn.ModuleDict(dict(decoder = decoder, x = nn.ParameterList([x])))   # gradients to the input too
    assert_same(value_and_grads(lambda: fused(x), module), value_and_grads(lambda: decoder(x), module))


def test_fused_body_reads_weights_written_through_data():
    """The model keeps its fused forward across calls: it must read the live parameters, not copies."""
    model = grid_transformer()
    x = torch.randn(2, 7, DIM)
    fused = model._body('upper_body')
    assert isinstance(fused, FusedDecoder)
    before = fused(x)
    with torch.no_grad():
        for p in model.upper_body.parameters():
            getattr(p.data, 'copy_' if p.ndim > 1 else 'add_')(0.3 * torch.randn_like(p))
    assert model._body('upper_body') is fused
    after = fused(x)
    assert torch.allclose(after, model.upper_body(x), atol = 1e-5)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize('kwargs', [dict(rotary_pos_emb = True), dict(scale_residual = True), dict(attn_gate_values = True), dict(ff_dropout = 0.1)])
def test_fused_decoder_refuses_what_it_does_not_compute(kwargs):
    decoder = Decoder(dim = DIM, depth = 1, heads = 2, attn_dim_head = 8, **kwargs)
    assert fused_decoder(decoder) is None


def test_state_readout_skipped_on_request():
    model = grid_transformer()
    lens = torch.tensor([6, 3])
    state, actions = one_hot_grids(2, 6, lens), torch.randint(0, ACTIONS, (2, 6))
    full = model(state, actions, episode_lens = lens)
    losses = model(state, actions, episode_lens = lens, predict_state = False)
    assert losses.state is None and torch.allclose(losses.action, full.action)
    losses.action.backward()
    assert all(p.grad is None for p in model.state_readout.parameters())


def test_fast_paths_run_under_bf16_autocast():
    model = grid_transformer()
    lens = torch.tensor([6, 3])
    state, actions = one_hot_grids(2, 6, lens), torch.randint(0, ACTIONS, (2, 6))
    with torch.autocast('cpu', dtype = torch.bfloat16):
        fast = model(state, actions, episode_lens = lens, predict_state = False).action
    reference = model(state, actions, episode_lens = lens).action
    assert torch.isfinite(fast) and abs(fast.item() - reference.item()) < 0.05 * reference.item()
