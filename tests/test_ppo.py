"""PPO-clip: decision-step mask, per-trajectory advantages, replay parity."""
import pytest
import torch

from metacontroller import Transformer
from metacontroller.ppo import compact, normalize_advantages, ppo_clip_loss

from conftest import ACTIONS, DIM, STATE, randomize_controller_, tiny_meta_controller


def test_advantages_normalised_over_the_batch():
    returns = torch.tensor([1., 0., 0., 1.])
    adv = normalize_advantages(returns)
    assert torch.allclose(adv, torch.tensor([1., -1., -1., 1.]) / (1 + 2e-3), atol = 1e-3)
    assert torch.allclose(normalize_advantages(torch.ones(3)), torch.zeros(3))


def test_compact_left_aligns_masked_steps_in_order():
    values = torch.arange(10.).reshape(2, 5)
    mask = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 0]], dtype = torch.bool)
    out, lens = compact(values, mask)
    assert lens.tolist() == [3, 1]
    assert out.tolist() == [[0., 2., 4.], [6., 0., 0.]]


def test_loss_counts_exactly_the_masked_steps_and_broadcasts_advantages():
    log_probs = torch.zeros(2, 3, requires_grad = True)
    old = torch.zeros(2, 3)
    adv = torch.tensor([2., -1.])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype = torch.bool)
    loss = ppo_clip_loss(log_probs, old, adv, mask)
    assert torch.allclose(loss, -(2 + 2 - 1) / torch.tensor(3.))  # ratio 1 at each of the 3 masked steps
    loss.backward()
    assert torch.equal(log_probs.grad != 0, mask)                  # no gradient leaks from unmasked steps


def test_clipping():
    adv = torch.tensor([1.])
    mask = torch.ones(1, 1, dtype = torch.bool)
    big = torch.tensor([[1.]], requires_grad = True)              # ratio e > 1.2: clipped, no gradient
    loss = ppo_clip_loss(big, torch.zeros(1, 1), adv, mask, clip = 0.2)
    loss.backward()
    assert torch.allclose(loss, torch.tensor(-1.2)) and big.grad.abs().sum() == 0


def test_policy_loss_replays_stored_log_probs_exactly():
    """Recomputing log-probs from stored decision-step streams gives the stored ones back."""
    meta = tiny_meta_controller()
    with torch.no_grad():
        meta.policy.head.weight.normal_(std = 0.5)
    b, t = 3, 9
    streams = torch.randn(b, t, DIM)
    betas = (torch.rand(b, t) > 0.6).float()
    betas[:, 0] = 1.
    lens = torch.tensor([9, 6, 4])

    # roll the policy forward on its own timescale, as the step API does
    old, acts = torch.zeros(b, t), torch.zeros(b, t, meta.dim_latent)
    with torch.no_grad():
        for row in range(b):
            h = None
            for i in range(lens[row]):
                if betas[row, i] >= 0.5:
                    dist, h = meta.policy.step(streams[row:row + 1, i], h)
                    z = dist[..., 0] + (0.5 * dist[..., 1]).exp() * torch.randn_like(dist[..., 0])
                    acts[row, i] = z[0]
                    old[row, i] = meta.log_prob(dist, z)[0]
    # garbage at non-decision and padded steps must not matter
    old = torch.where((betas >= 0.5) & (torch.arange(t) < lens[:, None]), old, torch.full_like(old, 99.))

    adv = torch.tensor([1., -0.5, 2.])
    loss = meta.policy_loss(streams, old, acts, adv, betas, episode_lens = lens)
    mask = (betas >= 0.5) & (torch.arange(t) < lens[:, None])
    expected = -(adv[:, None] * mask).sum() / mask.sum()            # ratio exactly 1 everywhere
    assert torch.allclose(loss, expected, atol = 1e-5)

    loss.backward()
    assert meta.policy.head.weight.grad.abs().sum() > 0
    frozen = [meta.switching, meta.decoder, meta.history, meta.encoder, meta.embedder]
    assert all(p.grad is None for m in frozen for p in m.parameters())


def readme_rollout_loss(model, meta, grad: bool):
    """The README's internal-RL pattern (the public peer's too), with or without torch.no_grad()."""
    torch.manual_seed(1)
    cache, past_action_id = None, None
    states, old_log_probs, latent_actions, switch_betas = [], [], [], []
    with torch.set_grad_enabled(grad):
        for _ in range(6):
            one_state = torch.randn(2, 1, STATE)
            logits, cache = model(one_state, past_action_id, meta_controller = meta, cache = cache, return_cache = True)
            meta_output = cache.prev_hiddens.meta_controller
            old_log_probs.append(meta.log_prob(meta_output.action_dist, meta_output.actions))
            past_action_id = model.action_readout.sample(logits)
            states.append(meta_output.input_residual_stream)
            latent_actions.append(meta_output.actions)
            switch_betas.append(meta_output.switch_beta)

    loss = meta.policy_loss(torch.cat(states, 1), torch.cat(old_log_probs, 1), torch.cat(latent_actions, 1),
                            torch.tensor([1., -0.5]), torch.cat(switch_betas, 1))
    model.zero_grad()
    meta.zero_grad()
    loss.backward()
    return loss.detach(), [p.grad for p in meta.parameters()]


@pytest.mark.parametrize('body, fast', [(dict(rel_pos_bias = True), True), (dict(rotary_pos_emb = True), False)])
def test_rollout_with_gradients_enabled_is_data(body, fast):
    """Without torch.no_grad() the rollout gives the no_grad loss and gradients, on the fast plan and on
    the x-transformers fallback, and no frozen base weight gets a gradient."""
    body = dict(depth = 1, heads = 2, **body)
    model = Transformer(dim = DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
                        lower_body = body, upper_body = body)
    meta = randomize_controller_(tiny_meta_controller())
    with torch.no_grad():
        meta.policy.head.weight.normal_(std = 0.5)   # so that the sampled latents depend on the policy

    expected_loss, expected_grads = readme_rollout_loss(model, meta, grad = False)
    loss, grads = readme_rollout_loss(model, meta, grad = True)

    assert model._step_decoder('lower_body').is_fast == fast
    assert torch.equal(loss, expected_loss) and loss != 0
    for got, expected in zip(grads, expected_grads):
        assert (got is None) == (expected is None)
        assert got is None or torch.allclose(got, expected, atol = 1e-6)
    assert all(p.grad is None for p in model.parameters())
