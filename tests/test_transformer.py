"""The base model: losses, the frozen base in discovery, padding, cached stepping."""
from functools import partial

import pytest
import torch
from torch import nn
from x_transformers import Decoder

from metacontroller import Transformer
from metacontroller.fast_decode import CachedDecoder

from conftest import ACTIONS, DIM, STATE, stepped_logits, tiny_transformer


def test_behaviour_cloning_losses_are_named_and_finite(model, batch):
    state, actions, lens = batch
    losses = model(state, actions, episode_lens = lens)
    assert losses.state is losses[0] and losses.action is losses[1]
    assert torch.isfinite(losses.state) and torch.isfinite(losses.action)
    (losses.state + losses.action).backward()
    assert model.lower_body.layers[0][1].to_q.weight.grad is not None


def test_action_nll_is_behaviour_clonings_action_loss_step_by_step(model, batch):
    state, actions, lens = batch
    nll = model.action_nll(state, actions, lens)
    valid = torch.arange(state.shape[1]) < lens[:, None]
    assert nll.shape == valid.shape and (nll[~valid] == 0).all() and (nll[valid] > 0).all()
    mean = model.behaviour_cloning_losses(state, actions, lens, predict_state = False).action
    assert nll[valid].mean().item() == pytest.approx(mean.item(), rel = 1e-5)
    stream = model.residual_stream(state, actions)
    assert torch.allclose(model.action_nll(state, actions, lens, stream = stream), nll)


def test_next_event_head_trains_on_the_steps_with_an_event_ahead(tmp_path, batch):
    """The optional head: cross-entropy over valid steps whose target is not -1, the rest (and padding) left out;
    frozen with the base, saved and reloaded with it, and a clear error where targets and head do not fit."""
    state, actions, lens = batch
    model = tiny_transformer(num_event_classes = 5)
    targets = torch.randint(0, 5, actions.shape)
    targets[:, -2:] = -1                           # no event ahead
    targets[1, 7:] = 99                            # padding may hold anything
    losses = model.next_event_losses(state, actions, targets, episode_lens = lens)
    known = (torch.arange(10) < lens[:, None]) & (targets >= 0)
    logits = model.event_logits(state)
    assert logits.shape == (3, 10, 5)
    assert torch.allclose(losses.event, nn.functional.cross_entropy(logits[known], targets[known]), atol = 1e-6)
    losses.event.backward()
    assert model.event_readout.weight.grad is not None and model.event_readout in model.base_modules()

    none_ahead = model.next_event_losses(state, actions, torch.full_like(targets, -1), episode_lens = lens).event
    assert none_ahead.item() == 0 and none_ahead.requires_grad
    assert torch.equal(model(state, actions, episode_lens = lens).action, losses.action)   # the head leaves BC as it is

    model.save(tmp_path / 'model.pt')
    with torch.no_grad():
        assert torch.equal(Transformer.init_and_load(tmp_path / 'model.pt').event_logits(state), logits)
    with pytest.raises(ValueError, match = r'event_targets must be class ids in \[0, 5\) or -1 \(no event ahead\), got values in \[-1, 5\]'):
        model.next_event_losses(state, actions, targets.masked_fill(targets == 4, 5), episode_lens = lens)
    with pytest.raises(ValueError, match = r'event_targets must be an integer tensor of shape \(3, 10\)'):
        model.next_event_losses(state, actions, targets.float(), episode_lens = lens)
    with pytest.raises(ValueError, match = r'lacks: build it with Transformer\(\.\.\., num_event_classes = n\)'):
        tiny_transformer().next_event_losses(state, actions, targets, episode_lens = lens)
    with pytest.raises(ValueError, match = 'num_event_classes must be a positive int or None, got 0'):
        tiny_transformer(num_event_classes = 0)


def test_padding_never_leaks_into_losses(model, batch, meta):
    state, actions, lens = batch
    dirty_state, dirty_actions = state.clone(), actions.clone()
    for row, n in enumerate(lens.tolist()):
        dirty_state[row, n:] = 100 * torch.randn_like(dirty_state[row, n:])
        dirty_actions[row, n:] = -7  # not even a valid id

    clean = model(state, actions, episode_lens = lens)
    dirty = model(dirty_state, dirty_actions, episode_lens = lens)
    assert torch.allclose(torch.stack(clean), torch.stack(dirty), atol = 1e-5)

    torch.manual_seed(3)
    clean = model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True)
    torch.manual_seed(3)
    dirty = model(dirty_state, dirty_actions, episode_lens = lens, meta_controller = meta, discovery_phase = True)
    assert torch.allclose(torch.stack(clean), torch.stack(dirty), atol = 1e-4)


def test_action_loss_is_masked_mean_nll(model, batch):
    state, actions, lens = batch
    logits = model.action_logits(state)
    nll = -logits.log_softmax(-1).gather(-1, actions[..., None])[..., 0]
    mask = torch.arange(state.shape[1])[None] < lens[:, None]
    expected = (nll * mask).sum() / mask.sum()
    assert torch.allclose(model(state, actions, episode_lens = lens).action, expected, atol = 1e-5)


def test_frozen_base_gets_no_gradient_in_discovery(model, meta, batch):
    state, actions, lens = batch
    losses = model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True)
    (losses.action_recon + 0.1 * losses.kl + losses.state_pred).backward()
    assert all(p.grad is None for p in model.parameters())        # requires_grad is still True
    assert all(p.requires_grad for p in model.parameters())
    assert meta.encoder[0].weight.grad is not None and meta.decoder.to_a.weight.grad.abs().sum() > 0


def test_attached_meta_controller_still_trains_in_discovery(model, meta, batch):
    state, actions, lens = batch
    model.meta_controller = meta
    losses = model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True)
    losses.action_recon.backward()
    assert meta.decoder.to_a.weight.grad is not None
    assert all(p.grad is None for m in model.base_modules() for p in m.parameters())


def test_precomputed_stream_gives_the_same_losses(model, meta, batch):
    state, actions, lens = batch
    torch.manual_seed(5)
    direct = model.discovery_losses(state, actions, meta, lens)
    torch.manual_seed(5)
    stream = model.residual_stream(state).detach()
    cached = model.discovery_losses(state, actions, meta, lens, stream = stream)
    assert torch.allclose(torch.stack(direct), torch.stack(cached))


def test_discovery_without_the_state_readout_gives_the_same_objective(model, meta, batch):
    state, actions, lens = batch
    torch.manual_seed(5)
    full = model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True)
    torch.manual_seed(5)
    lean = model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True, predict_state = False)
    assert full.state_pred is not None and lean.state_pred is None
    assert torch.equal(torch.stack(full[1:]), torch.stack(lean[1:]))


@pytest.mark.parametrize('embed_past_action', [False, True])
def test_cached_stepping_equals_full_forward(embed_past_action):
    model = tiny_transformer(embed_past_action = embed_past_action).eval()
    state = torch.randn(2, 7, STATE)
    actions = torch.randint(0, ACTIONS, (2, 7))
    with torch.no_grad():
        expected = model.action_logits(state, actions)
        cache, past, stepped = None, None, []
        for t in range(7):
            logits, cache = model(state[:, t:t + 1], past, cache = cache, return_cache = True)
            stepped.append(logits)
            past = actions[:, t:t + 1]
    assert torch.allclose(torch.cat(stepped, 1), expected, atol = 1e-5)


def test_cached_stepping_with_meta_controller_replays_exactly(model, meta):
    """Step-wise control equals a full-sequence replay with the same z, β and history."""
    model.eval()
    state = torch.randn(2, 8, STATE)
    with torch.no_grad():
        cache, steps, logits = None, [], []
        for t in range(8):
            out, cache = model(state[:, t:t + 1], None, meta_controller = meta, cache = cache, return_cache = True)
            steps.append(cache.prev_hiddens.meta_controller)
            logits.append(out)

        stream = model.residual_stream(state)
        assert torch.allclose(torch.cat([s.input_residual_stream for s in steps], 1), stream, atol = 1e-5)

        # switching state: β_t from the sequence GRU history and the held z_{t-1}
        history, _ = meta.history(stream)
        latents = torch.stack([s.latent for s in steps], 1)
        betas = torch.cat([s.switch_beta for s in steps], 1)
        assert torch.all(betas[:, 0] == 1)
        for t in range(1, 8):
            projected = meta.switching.project_inputs(stream[:, t], history[:, t - 1])
            beta = torch.sigmoid(meta.switching.logit(projected, latents[:, t - 1]))
            assert torch.allclose(beta, betas[:, t], atol = 1e-5)
            switched = beta >= 0.5
            proposal = steps[t].actions[:, 0]
            expect = torch.where(switched[:, None], proposal, latents[:, t - 1])
            assert torch.allclose(latents[:, t], expect)

        replay = model.action_logits(state, stream = stream, intervention = partial(meta.decoder.control, latents))
    assert torch.allclose(torch.cat(logits, 1), replay, atol = 1e-5)


def test_policy_only_advances_at_decision_steps(model, meta):
    model.eval()
    with torch.no_grad():
        cache = None
        for t in range(6):
            prev = cache.prev_hiddens.meta_controller if cache is not None else None
            _, cache = model(torch.randn(2, 1, STATE), None, meta_controller = meta, cache = cache, return_cache = True)
            step = cache.prev_hiddens.meta_controller
            if prev is not None:
                held = step.switch_beta[:, 0] < 0.5
                assert torch.equal(step.policy_hidden[held], prev.policy_hidden[held])
                assert torch.equal(step.latent[held], prev.latent[held])


@pytest.mark.parametrize('body', [
    dict(),
    dict(rel_pos_bias = True, heads = 4),
    dict(ff_custom_activation = nn.ReLU(), rel_pos_bias = True),
    dict(rotary_pos_emb = True),   # not covered by the fast plan: falls back, still exact
    dict(ff_glu = True),
])
def test_cached_decoder_matches_decoder(body):
    decoder = Decoder(dim = 16, depth = 2, attn_dim_head = 8, **body).eval()
    cached = CachedDecoder(decoder, capacity = 2)
    x = torch.randn(3, 9, 16)
    with torch.no_grad():
        state = cached.init_state(3, x)
        stepped = torch.stack([cached.step(x[:, t], state) for t in range(9)], 1)
        assert torch.allclose(stepped, decoder(x), atol = 1e-5)
    assert cached.is_fast == ('rotary_pos_emb' not in body and 'ff_glu' not in body)


def test_step_decoder_is_rebuilt_after_weight_update(model):
    model.eval()
    state = torch.randn(1, 1, STATE)
    before, _ = model(state, None, return_cache = True)
    with torch.no_grad():
        model.upper_body.layers[0][1].to_out.weight.mul_(2.)
    after, _ = model(state, None, return_cache = True)
    assert torch.allclose(after, model.action_logits(state), atol = 1e-5)
    assert not torch.allclose(before, after)


def test_step_decoder_sees_updates_through_data(model):
    """x-evolution's noise goes through `.data`, which bumps no version counter."""
    model.eval()
    state = torch.randn(1, 1, STATE)
    before, _ = model(state, None, return_cache = True)
    for param in model.parameters():
        param.data.add_(0.1 * torch.randn_like(param))
    after, _ = model(state, None, return_cache = True)
    assert model._step_decoder('upper_body').is_fast
    assert torch.allclose(after, model.action_logits(state), atol = 1e-5)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize('write', ['copy_', 'add_'])
@pytest.mark.parametrize('body', [dict(rel_pos_bias = True), dict(rotary_pos_emb = True)])   # fast plan, fallback
def test_rollout_after_a_data_write_steps_on_the_new_weights(write, body):
    """Every step of the rollout after a `.data` write (no version bump) equals the full forward."""
    model = Transformer(
        dim = DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
        lower_body = dict(depth = 1, heads = 2, **body), upper_body = dict(depth = 1, heads = 2, **body),
    ).eval()
    state = torch.randn(2, 5, STATE)

    with torch.no_grad():
        before = stepped_logits(model, state)
        # a key projection (feeds the KV cache) and an MLP weight (feeds only the step) in each body
        params = [p for b in (model.lower_body, model.upper_body) for p in (b.layers[0][1].to_k.weight, b.layers[1][1].ff[0][0].weight)]
        versions = [p._version for p in params]
        for p in params:
            getattr(p.data, write)(0.5 * torch.randn_like(p))
        assert [p._version for p in params] == versions   # the write is invisible to version counters
        after = stepped_logits(model, state)
        assert torch.allclose(after, model.action_logits(state), atol = 1e-5)
    assert not torch.allclose(before, after)
    assert model._step_decoder('lower_body').is_fast == ('rotary_pos_emb' not in body)


def test_layer_residuals_cover_every_layer(batch):
    state, _, _ = batch
    body = dict(depth = 2, heads = 2)
    model = Transformer(dim = DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
                        lower_body = body, upper_body = body)
    streams = model.layer_residuals(state)
    assert len(streams) == 5                                    # L + 1 = before each of 4 layers, and after the last
    assert torch.allclose(streams[2], model.residual_stream(state), atol = 1e-6)
    assert all(not torch.allclose(a, b) for a, b in zip(streams, streams[1:]))


def test_default_flash_body_steps_exactly_on_the_fast_plan():
    model = Transformer(
        dim = DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
        lower_body = dict(depth = 1, heads = 2), upper_body = dict(depth = 1, heads = 2),
    ).eval()
    state = torch.randn(2, 6, STATE)
    with torch.no_grad():
        assert torch.allclose(stepped_logits(model, state), model.action_logits(state), atol = 1e-5)
    assert model._step_decoder('lower_body').is_fast and model._step_decoder('upper_body').is_fast


@pytest.mark.parametrize('body', [dict(rel_pos_bias = True), dict(rotary_pos_emb = True)])  # fast plan, fallback
def test_cache_select_keeps_rows_exactly(body, meta):
    model = Transformer(
        dim = DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
        lower_body = dict(depth = 1, heads = 2, **body), upper_body = dict(depth = 1, heads = 2, **body),
    ).eval()
    state = torch.randn(4, 6, STATE)
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        cache, stepped = None, []
        for t in range(6):
            if t == 3:
                cache, state = cache.select(rows), state[rows]
            logits, cache = model(state[:, t:t + 1], None, cache = cache, return_cache = True)
            stepped.append(logits)
        assert torch.allclose(torch.cat(stepped[3:], 1), model.action_logits(state)[:, 3:], atol = 1e-5)
        meta_cache = model(state[:, :1], None, meta_controller = meta, return_cache = True)[1]
        assert meta_cache.select(torch.tensor([1])).prev_hiddens.meta_controller.latent.shape[0] == 1
