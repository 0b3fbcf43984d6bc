"""Options that are not in the paper and off by default (issue 17): KL warm-up in discovery,
a fixed-period switch schedule, a control multiplier and discrete latent codes. Off, each
changes nothing (the rollout store is tested with internal RL)."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, kl_divergence

from metacontroller import MetaController, periodic_beta
from metacontroller.codes import make_latent_code
from metacontroller.demos import DemoBatch
from metacontroller.pipeline.config import DiscoveryConfig
from metacontroller.pipeline.discover import StreamBatch, kl_weight, train

from conftest import ACTIONS, DIM, LATENT, STATE, randomize_controller_, tiny_meta_controller, tiny_transformer

pytestmark = pytest.mark.usefixtures('one_thread')


# ---------------------------------------------------------------- KL warm-up


def discovery_batches(model):
    b, t = 4, 6
    obs, actions, lens = torch.randn(b, t, STATE), torch.randint(0, ACTIONS, (b, t)), torch.tensor([6, 5, 3, 6])
    batch = DemoBatch(obs, actions, torch.zeros(b, t, dtype = torch.long), torch.zeros(b, t, dtype = torch.bool), lens)
    with torch.no_grad():
        return [StreamBatch(batch, model.residual_stream(obs))]


def applied_kl_weights(monkeypatch, alpha, **config) -> tuple[list[float], dict]:
    """Discovery training, recording d loss / d KL at every step: the KL weight the loop applied.
    Returns those weights and the trained metacontroller's weights."""
    torch.manual_seed(0)
    model, meta = tiny_transformer(), randomize_controller_(tiny_meta_controller())
    weights, losses_of = [], model.discovery_losses

    def spy(*args, **kwargs):
        losses = losses_of(*args, **kwargs)
        losses.kl.register_hook(lambda grad: weights.append(grad.item()))
        return losses

    monkeypatch.setattr(model, 'discovery_losses', spy)
    train(model, meta, discovery_batches(model), alpha, DiscoveryConfig(steps = 6, **config), seed = 0, progress = False)
    return weights, meta.state_dict()


def test_kl_warmup_off_applies_the_constant_alpha_once(monkeypatch):
    assert DiscoveryConfig().kl_warmup_steps == 0
    weights, state = applied_kl_weights(monkeypatch, 0.3)
    assert weights == [torch.tensor(0.3).item()] * 6               # α itself (in float32), once: not α², not ramped
    _, explicit = applied_kl_weights(monkeypatch, 0.3, kl_warmup_steps = 0)
    assert all(torch.equal(state[k], explicit[k]) for k in state)


def test_kl_warmup_ramps_alpha_linearly_from_zero(monkeypatch):
    weights, _ = applied_kl_weights(monkeypatch, 0.5, kl_warmup_steps = 4)
    assert weights == pytest.approx([0., 0.125, 0.25, 0.375, 0.5, 0.5])
    assert [kl_weight(0.5, step, 4) for step in range(6)] == pytest.approx(weights)
    with pytest.raises(ValueError, match = 'kl_warmup_steps must be >= 0'):
        kl_weight(0.5, 0, -1)


# ---------------------------------------------------------------- a fixed-period switch schedule


def test_periodic_schedule_switches_every_k_steps_in_the_sequence_forward(meta):
    schedule = periodic_beta(3, 7)
    assert schedule.tolist() == [1., 0., 0., 1., 0., 0., 1.]
    out = meta(torch.randn(2, 7, DIM), force_beta = schedule)            # (t,) broadcasts over the batch
    assert torch.equal(out.beta, schedule.expand(2, 7))
    starts = torch.arange(7) // 3 * 3                                   # the last switch at or before t
    assert torch.equal(out.latent, out.proposal[:, starts])
    assert torch.equal(periodic_beta(1, 4), torch.ones(4))              # k = 1: the β ≡ 1 baseline


def test_periodic_schedule_drives_the_cached_step(model, meta):
    schedule, cache, steps = periodic_beta(2, 6), None, []
    with torch.no_grad():
        for t in range(6):
            _, cache = model.step(torch.randn(2, 1, STATE), None, cache, meta, force_beta = schedule[t])
            steps.append(cache.prev_hiddens.meta_controller)
    assert torch.equal(torch.cat([s.switch_beta for s in steps], 1), schedule.expand(2, 6))
    for t, step in enumerate(steps):
        switched_at = t // 2 * 2
        assert torch.equal(step.latent, steps[switched_at].actions[:, 0])   # the proposal taken at the last switch


@pytest.mark.parametrize('period', [0, -2, 2.5, True])
def test_periodic_schedule_rejects_a_bad_period(period):
    with pytest.raises(ValueError, match = 'period must be an integer >= 1'):
        periodic_beta(period, 5)


# ---------------------------------------------------------------- the control multiplier c in ê = e + c·U e


def test_control_scale_zero_is_exactly_the_base_model(model, tmp_path):
    meta = randomize_controller_(tiny_meta_controller(control_scale = 0.))
    assert MetaController(DIM).control_scale == 1.                     # the paper's control by default
    stream = model.residual_stream(torch.randn(2, 5, STATE))
    assert torch.equal(meta(stream).controlled, stream)
    assert not torch.equal(meta.decoder.control(meta(stream).latent, stream), stream)   # U e itself is not zero

    with torch.no_grad():
        cache, base_cache = None, None
        for _ in range(5):
            state = torch.randn(2, 1, STATE)
            logits, cache = model.step(state, None, cache, meta)
            base_logits, base_cache = model.step(state, None, base_cache)
            assert torch.equal(logits, base_logits)

    meta.save(tmp_path / 'meta.pt')
    assert MetaController.init_and_load(tmp_path / 'meta.pt').control_scale == 0.


def test_control_scale_one_changes_nothing_and_scales_u_e_linearly(meta):
    decoder, z, e = meta.decoder, torch.randn(4, 5, 3), torch.randn(4, 5, DIM)
    steer = decoder.steer(z, e)
    assert torch.equal(decoder.control(z, e), e + steer)                # the default is c = 1
    assert torch.equal(decoder.control(z, e, 1.), e + steer)
    assert torch.allclose(decoder.control(z, e, 0.5), e + 0.5 * (decoder(z).dense() @ e[..., None])[..., 0], atol = 1e-5)


# ---------------------------------------------------------------- discrete latent codes


def reference(kind, logits):
    """torch.distributions' version of a code over logits (..., n_z), and its prior."""
    if kind == 'binary':
        return Bernoulli(logits = logits), Bernoulli(logits = torch.zeros_like(logits))
    return Categorical(logits = logits), Categorical(logits = torch.zeros_like(logits))


@pytest.mark.parametrize('kind', ['binary', 'categorical'])
def test_discrete_codes_in_discovery_are_hard_with_gradients_and_kl_to_uniform(kind):
    meta = randomize_controller_(tiny_meta_controller(latent_code = kind))
    out = meta(torch.randn(2, 6, DIM))
    assert out.posterior.shape == (2, 6, LATENT, 1)
    assert torch.allclose(out.proposal, out.proposal.round(), atol = 1e-6)     # straight-through: hard codes
    if kind == 'categorical':
        assert torch.equal(out.proposal.round().sum(-1), torch.ones(2, 6))

    q, prior = reference(kind, out.posterior[..., 0])
    expected = kl_divergence(q, prior)
    assert torch.allclose(out.kl, expected.sum(-1) if kind == 'binary' else expected, atol = 1e-5)

    out.controlled.square().sum().backward()                                   # through the hard sample
    assert meta.encoder[0].weight.grad.abs().sum() > 0

    soft = tiny_meta_controller(latent_code = kind, code_straight_through = False)(torch.randn(2, 6, DIM)).proposal
    assert torch.all((soft > 0) & (soft < 1))                                  # the relaxed Gumbel sample


@pytest.mark.parametrize('kind', ['binary', 'categorical'])
def test_discrete_log_prob_is_that_of_the_sampled_code(kind):
    code, logits = make_latent_code(kind), torch.randn(3, LATENT)
    q, _ = reference(kind, logits)
    samples = code.sample(logits[..., None].expand(20_000, -1, -1, 1))         # (20000, 3, n_z)
    frequency = samples.mean(0)
    assert torch.allclose(frequency, q.probs, atol = 0.02)                     # the sampler draws from q
    expected = q.log_prob(samples).sum(-1) if kind == 'binary' else q.log_prob(samples.argmax(-1))
    assert torch.allclose(code.log_prob(logits[..., None], samples), expected, atol = 1e-5)
    greedy = code.sample(logits[..., None], deterministic = True)
    assert torch.equal(greedy, (logits > 0).float() if kind == 'binary' else torch.eye(LATENT)[logits.argmax(-1)])


def test_internal_rl_runs_unchanged_on_a_categorical_code(model, tmp_path):
    meta = randomize_controller_(tiny_meta_controller(latent_code = 'categorical'))
    cache, states, old_log_probs, latents, betas = None, [], [], [], []
    with torch.no_grad():
        for _ in range(6):
            _, cache = model.step(torch.randn(4, 1, STATE), None, cache, meta)
            step = cache.prev_hiddens.meta_controller
            states.append(step.input_residual_stream)
            old_log_probs.append(meta.log_prob(step.action_dist, step.actions))
            latents.append(step.actions)
            betas.append(step.switch_beta)
    states, old_log_probs, latents, betas = (torch.cat(x, 1) for x in (states, old_log_probs, latents, betas))
    assert torch.all(latents.sum(-1) == 1)
    assert torch.allclose(old_log_probs, torch.full_like(old_log_probs, -math.log(LATENT)), atol = 0.05)   # starts at the uniform prior

    advantages = torch.tensor([1., -1., 0.5, 2.])
    loss = meta.policy_loss(states, old_log_probs, latents, advantages, betas)
    decisions = (betas >= 0.5).sum(1)
    assert torch.allclose(loss, -(advantages * decisions).sum() / decisions.sum(), atol = 1e-5)   # replayed log-probs = stored
    loss.backward()
    assert meta.policy.head.weight.grad.abs().sum() > 0 and meta.decoder.to_a.weight.grad is None

    meta.save(tmp_path / 'meta.pt')
    loaded = MetaController.init_and_load(tmp_path / 'meta.pt')
    assert type(loaded.code) is type(meta.code) and loaded.encoder[-1].out_features == LATENT


def test_latent_code_rejects_unknown_kinds_and_temperatures():
    assert type(MetaController(DIM).code).__name__ == 'GaussianCode'           # the paper's code by default
    with pytest.raises(ValueError, match = "latent_code must be one of .*'gaussian', 'binary', 'categorical'.*got 'onehot'"):
        tiny_meta_controller(latent_code = 'onehot')
    with pytest.raises(ValueError, match = 'code_temperature must be > 0'):
        tiny_meta_controller(latent_code = 'binary', code_temperature = 0.)


def test_nearest_code_snaps_a_mean_of_codes_to_a_code():
    mean = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    assert torch.equal(make_latent_code('categorical').nearest(mean), torch.tensor([[0., 1., 0.], [1., 0., 0.]]))
    assert torch.equal(make_latent_code('binary').nearest(mean), torch.tensor([[0., 1., 0.], [1., 0., 0.]]))
    assert torch.equal(make_latent_code('gaussian').nearest(mean), mean)
