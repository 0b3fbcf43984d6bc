"""SPEC §8 traps for the metacontroller: control index, β direction, the fast
recurrence, KL, padding, log-probs."""
import math
import re

import pytest
import torch
from torch.distributions import Normal

from metacontroller import MetaController
from metacontroller.codes import kmeans
from metacontroller.hypernetwork import ControllerDecoder
from metacontroller.policy import gaussian_log_prob, gaussian_sample
from metacontroller.switching import Switching, SwitchingUnit

from conftest import DIM, LATENT, randomize_controller_, tiny_meta_controller


@pytest.mark.parametrize('rank', [4, None])
def test_control_matches_dense_reference(rank):
    decoder = ControllerDecoder(dim_latent = 3, dim_model = 10, dim_hidden = 8, rank = rank)
    with torch.no_grad():
        decoder.to_a.weight.normal_()
    z = torch.randn(2, 5, 3)
    e = torch.randn(2, 5, 10)
    with torch.no_grad():
        decoder.to_a.bias.normal_()
        if rank is not None:
            decoder.to_b.bias.normal_()
    controller = decoder(z)
    u = controller.dense()                                        # (2, 5, 10, 10)
    expected = e + (u @ e[..., None])[..., 0]                     # U e: Σ_j U_ij e_j
    assert torch.allclose(decoder.control(z, e), expected, atol = 1e-5)

    # the wrong index (a per-coordinate gain e_i Σ_j U_ij) must differ: the test can fail
    wrong = e + e * u.sum(dim = -1)
    assert not torch.allclose(decoder.control(z, e), wrong, atol = 1e-3)

    if rank is not None:
        assert controller.a.shape == (2, 5, 10, rank)            # low rank: d×r factors, never d×d


def test_control_starts_as_noop():
    decoder = ControllerDecoder(dim_latent = 3, dim_model = 10, rank = 4)
    e = torch.randn(4, 10)
    assert torch.equal(decoder.control(torch.randn(4, 3), e), e)


def test_beta_gating_direction_on_hand_built_schedule():
    unit = SwitchingUnit(dim_model = 4, dim_history = 2, dim_latent = 2, dim_hidden = 3)
    proposals = torch.arange(1., 11.).reshape(1, 5, 2)          # z̃_t distinct per step
    beta = torch.tensor([[0., 0., 0., 1., 0.]])                  # β_1 is forced to 1 anyway

    out = unit.integrate(beta, proposals)
    p = proposals[0]
    expected = torch.stack([p[0], p[0], p[0], p[3], p[3]])       # β = 1 takes z̃, β = 0 keeps z_{t-1}
    assert torch.allclose(out.latent[0], expected)
    assert out.beta[0, 0] == 1.

    half = unit.integrate(torch.full((1, 5), 0.5), proposals)
    assert torch.allclose(half.latent[0, 1], 0.5 * p[1] + 0.5 * p[0])


def reference_switching(unit: SwitchingUnit, projected: torch.Tensor, proposals: torch.Tensor) -> Switching:
    """A deliberately naive loop straight from the equations; the fast path is tested against it."""
    b, t, n_z = proposals.shape
    z_prev = torch.zeros(b, n_z, dtype = proposals.dtype, device = proposals.device)
    betas, latents = [], []
    for i in range(t):
        if i == 0:
            beta = torch.ones(b, dtype = proposals.dtype, device = proposals.device)
        else:
            beta = torch.sigmoid(unit.logit(projected[:, i], z_prev))
        z_prev = beta[:, None] * proposals[:, i] + (1 - beta[:, None]) * z_prev
        betas.append(beta)
        latents.append(z_prev)
    return Switching(torch.stack(betas, 1), torch.stack(latents, 1))


def test_fast_recurrence_matches_naive_loop_values_and_gradients():
    unit = SwitchingUnit(dim_model = 6, dim_history = 4, dim_latent = 3, dim_hidden = 5)
    stream, history = torch.randn(2, 9, 6), torch.randn(2, 9, 4)
    proposals = torch.randn(2, 9, 3, requires_grad = True)

    fast = unit(unit.project_inputs(stream, history), proposals)
    naive = reference_switching(unit, unit.project_inputs(stream, history), proposals)
    assert torch.allclose(fast.beta, naive.beta, atol = 1e-6)
    assert torch.allclose(fast.latent, naive.latent, atol = 1e-6)
    assert fast.beta.min() < 0.999  # the learned β is in play, not only the forced first step

    weights = torch.randn_like(fast.latent)
    grads_fast = torch.autograd.grad((fast.latent * weights).sum() + fast.beta.sum(), [proposals, *unit.parameters()])
    naive = reference_switching(unit, unit.project_inputs(stream, history), proposals)
    grads_naive = torch.autograd.grad((naive.latent * weights).sum() + naive.beta.sum(), [proposals, *unit.parameters()])
    for a, b in zip(grads_fast, grads_naive):
        assert torch.allclose(a, b, atol = 1e-5)


def test_kl_is_the_closed_form_and_unweighted(meta):
    out = meta(torch.randn(2, 6, DIM))
    expected = 0.5 * (out.mean ** 2 + out.log_var.exp() - out.log_var - 1).sum(-1)
    assert torch.allclose(out.kl, expected)
    normal = torch.distributions.kl_divergence(Normal(out.mean, (0.5 * out.log_var).exp()), Normal(0., 1.)).sum(-1)
    assert torch.allclose(out.kl, normal, atol = 1e-5)


def test_forced_beta_ablations(meta):
    e = torch.randn(2, 6, DIM)
    every_step = meta(e, force_beta = 1.)
    assert torch.all(every_step.beta == 1.)
    assert torch.allclose(every_step.latent, every_step.proposal)

    schedule = torch.zeros(2, 6)
    held = meta(e, force_beta = schedule)
    assert torch.allclose(held.latent, held.proposal[:, :1].expand_as(held.latent))


def test_padding_never_leaks_into_discovery_outputs(meta):
    lens = torch.tensor([6, 3])
    e = torch.randn(2, 6, DIM)
    garbage = e.clone()
    garbage[1, 3:] = 1e3 * torch.randn(3, DIM)

    torch.manual_seed(1)
    clean = meta(e, lens)
    torch.manual_seed(1)
    dirty = meta(garbage, lens)
    for name in ('controlled', 'beta', 'latent', 'mean', 'kl'):
        a, b = getattr(clean, name)[1, :3], getattr(dirty, name)[1, :3]
        assert torch.allclose(a, b, atol = 1e-5), name


def test_sequence_summary_sees_the_future(meta):
    """The non-causal embedder: changing the last valid step changes μ at t = 1."""
    e = torch.randn(1, 6, DIM)
    changed = e.clone()
    changed[0, -1] += 5.
    assert not torch.allclose(meta(e).mean[0, 0], meta(changed).mean[0, 0])


def test_log_prob_of_sampled_latent_matches_torch_distributions():
    dist = torch.randn(5, 7, LATENT, 2)
    sample = gaussian_sample(dist)
    mean, log_var = dist.unbind(-1)
    expected = Normal(mean, (0.5 * log_var).exp()).log_prob(sample).sum(-1)
    assert torch.allclose(gaussian_log_prob(dist, sample), expected, atol = 1e-5)
    assert torch.equal(gaussian_sample(dist, deterministic = True), mean)


def test_policy_starts_near_prior():
    meta = tiny_meta_controller()
    dist = meta.policy(torch.randn(2, 4, DIM))
    assert dist.abs().max() < 0.05


def test_ratio_loss_is_off_by_default_and_positive_when_on():
    meta = tiny_meta_controller()
    beta = torch.rand(2, 5)
    mask = torch.ones(2, 5, dtype = torch.bool)
    assert meta.ratio_loss(beta, mask) == 0
    on = randomize_controller_(tiny_meta_controller(ratio_loss_weight = 1.))
    assert on.ratio_loss(beta, mask) > 0


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match = 'hypernetwork_low_rank'):
        tiny_meta_controller(hypernetwork_low_rank = DIM + 1)


def test_sequence_embedder_scan_equals_the_recurrence_and_ignores_padding():
    from metacontroller.embedder import GATE_SHARPNESS, SequenceEmbedder

    embedder = SequenceEmbedder(dim_model = 6, dim_summary = 4)
    stream, lens = torch.randn(2, 7, 6), torch.tensor([7, 4])
    r, i, x = embedder.project(stream).chunk(3, dim = -1)
    a = torch.sigmoid(embedder.log_decay) ** (GATE_SHARPNESS * torch.sigmoid(r))
    h, states = torch.zeros(2, 4), []
    for t in range(7):
        h = a[:, t] * h + (1 - a[:, t] ** 2).sqrt() * torch.sigmoid(i[:, t]) * x[:, t]
        states.append(h)
    expected = torch.stack([states[6][0], states[3][1]])
    assert torch.allclose(embedder(stream, lens), expected, atol = 1e-5)

    padded = stream.clone()
    padded[1, 4:] = 50.
    assert torch.allclose(embedder(padded, lens), expected, atol = 1e-5)


def test_gru_sequence_equals_nn_gru_values_and_gradients():
    from metacontroller.recurrence import gru_sequence, gru_step

    gru = torch.nn.GRU(6, 5, batch_first = True)
    x = torch.randn(3, 7, 6, requires_grad = True)
    h0 = torch.randn(3, 5, requires_grad = True)
    weights = torch.randn(3, 7, 5)
    params = [x, h0, *gru.parameters()]

    expected, _ = gru(x, h0[None])
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    out = gru_sequence(gru, x, h0)
    grads = torch.autograd.grad((out * weights).sum(), params)
    assert torch.allclose(out, expected, atol = 1e-6)
    for a, b in zip(grads, expected_grads):
        assert torch.allclose(a, b, atol = 1e-5)

    assert torch.allclose(gru_step(gru, x[:, 0], h0), expected[:, 0], atol = 1e-6)


def test_gumbel_switch_is_off_by_default_and_only_noises_training():
    e = torch.randn(2, 8, DIM)
    plain = randomize_controller_(tiny_meta_controller())
    assert plain.switching.gumbel_temperature is None

    noisy = randomize_controller_(tiny_meta_controller(switch_gumbel_temperature = 0.5))
    noisy.load_state_dict(plain.state_dict())
    plain.eval(), noisy.eval()
    torch.manual_seed(0)
    a = noisy(e).beta
    torch.manual_seed(0)
    b = plain(e).beta
    assert torch.allclose(a, b)                   # eval: the deterministic sigmoid

    noisy.train()
    torch.manual_seed(0)
    out = noisy(e)
    assert not torch.allclose(out.beta, b) and torch.isfinite(out.beta).all()
    out.beta.sum().backward()
    assert noisy.switching.to_logit.weight.grad.abs().sum() > 0


def test_ratio_loss_is_its_weight_on_target_and_pulls_the_switch_rate_towards_it():
    meta = tiny_meta_controller(ratio_loss_weight = 2., target_segment_length = 4.)
    mask = torch.ones(1, 8, dtype = torch.bool)
    on_target = torch.tensor([[0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1]])   # F = 1/4 (G = 0.3: at F = 1/N, G drops out)
    assert meta.ratio_loss(on_target, mask).item() == pytest.approx(2.)
    # every step switches: F = 1, G = 0.9 -> w·N/(N-1)·(N-1)·G = 2·4·0.9
    assert meta.ratio_loss(torch.full((1, 8), 0.9), mask).item() == pytest.approx(7.2)
    for beta, direction in ((torch.full((1, 8), 0.9), 1.), (torch.full((1, 8), 0.1), -1.)):   # every step switches / none does
        beta.requires_grad_(True)
        meta.ratio_loss(beta, mask).backward()
        assert (beta.grad.sign() == direction).all()   # descent lowers β where too many switch, raises it where too few
    padded = torch.tensor([[0.9, 0.1, 0.1, 0.1, 0.9, 0.9]])
    assert meta.ratio_loss(padded, torch.tensor([[True] * 4 + [False] * 2])).item() == pytest.approx(2.)
    assert tiny_meta_controller().ratio_loss(on_target, mask).item() == 0.


@pytest.mark.parametrize('kwargs', [dict(ratio_loss_weight = -1.), dict(target_segment_length = 1.)])
def test_bad_ratio_loss_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match = 'ratio_loss_weight >= 0 and target_segment_length > 1'):
        tiny_meta_controller(**kwargs)


@pytest.mark.parametrize('code, rank', [('gaussian', 4), ('categorical', 4), ('gaussian', None), ('codebook', 4), ('mixture', 4)])
def test_the_policy_runs_only_on_the_rows_that_decide(code, rank, monkeypatch):
    """A step where some rows decide equals the policy run on every row, at those rows; the other rows keep
    their code, policy state and the distribution their code was drawn from, and a step where no row
    decides does not run the policy at all. Control is the decoder's for the code in force."""
    torch.manual_seed(0)
    meta = randomize_controller_(tiny_meta_controller(latent_code = 'gaussian' if code in ('codebook', 'mixture') else code,
                                                      hypernetwork_low_rank = rank))
    if code in ('codebook', 'mixture'):
        meta = meta.with_action_codebook(3 * torch.randn(6, LATENT), spread = 0.3 if code == 'mixture' else 0.)
    meta = meta.eval()
    with torch.no_grad():
        meta.policy.head.weight.normal_()   # a policy whose output depends on its input and state
        first = meta.step(torch.randn(5, DIM))
        second = meta.step(torch.randn(5, DIM), first)   # every row's policy state and code now differ
        stream, decide = torch.randn(5, DIM), torch.tensor([1., 0., 1., 0., 0.])
        step = meta.step(stream, second, force_beta = decide, deterministic = True)
        dist, hidden = meta.policy.step(stream, second.policy_hidden)
        latent = meta.action_code.sample(dist, deterministic = True)

        rows, held = decide.bool(), ~decide.bool()
        assert torch.allclose(step.action_dist[rows, 0], dist[rows], atol = 1e-6)
        assert torch.allclose(step.policy_hidden[rows], hidden[rows], atol = 1e-6)
        assert torch.allclose(step.latent[rows], latent[rows], atol = 1e-6) and torch.equal(step.actions[:, 0], step.latent)
        assert torch.equal(step.latent[held], second.latent[held]) and torch.equal(step.actions[held, 0], second.latent[held])
        assert torch.equal(step.policy_hidden[held], second.policy_hidden[held])
        assert torch.equal(step.action_dist[held], second.action_dist[held])
        assert not torch.equal(second.latent[held], latent[held])   # so the held rows are told apart from fresh ones
        assert torch.allclose(step.controlled[:, 0], meta.decoder.control(step.latent, stream, meta.control_scale), atol = 1e-5)
        assert not torch.allclose(step.controlled[:, 0], stream, atol = 1e-3)   # control is not a no-op here

        monkeypatch.setattr(meta.policy, 'step', lambda *args: pytest.fail('the policy ran on a step where no row decides'))
        idle = meta.step(stream, step, force_beta = 0.)
        assert torch.equal(idle.latent, step.latent) and torch.equal(idle.action_dist, step.action_dist)


def test_an_action_codebook_policy_chooses_among_its_rows(tmp_path):
    """with_action_codebook: a copy whose fresh policy draws z among K given codes, starting near uniform;
    every other weight is the original's, which is left as it was. log_prob is the chosen row's under the
    K logits, PPO's gradient reaches only the policy, and a checkpoint keeps the codebook."""
    meta = randomize_controller_(tiny_meta_controller())
    before = {k: v.clone() for k, v in meta.state_dict().items()}
    codebook = 3 * torch.randn(5, LATENT)
    chooser = meta.with_action_codebook(codebook)
    assert chooser.action_codebook_size == 5 and torch.equal(chooser.action_codebook, codebook)
    assert all(torch.equal(before[k], v) for k, v in meta.state_dict().items()) and meta.action_codebook_size is None
    assert all(torch.equal(before[k], v) for k, v in chooser.state_dict().items() if not k.startswith('policy.') and k != 'action_codebook')

    stream = torch.randn(64, DIM)
    step = chooser.step(stream)
    index = torch.cdist(step.actions[:, 0], codebook).argmin(dim = -1)
    assert torch.equal(step.actions[:, 0], codebook[index]) and step.action_dist.shape == (64, 1, 5, 1)
    log_probs = chooser.log_prob(step.action_dist[:, 0], step.actions[:, 0])
    expected = torch.distributions.Categorical(logits = step.action_dist[:, 0, :, 0]).log_prob(index)
    assert torch.allclose(log_probs, expected) and torch.allclose(log_probs, torch.full_like(log_probs, -math.log(5)), atol = 1e-2)
    assert len(index.unique()) > 1   # it samples, not always the same row

    t = 4
    states = torch.randn(3, t, DIM)
    loss = chooser.policy_loss(states, torch.full((3, t), -math.log(5)), codebook[torch.randint(5, (3, t))], torch.randn(3),
                               torch.ones(3, t))
    loss.backward()
    trained = {name for name, p in chooser.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith('policy.') for name in trained)

    chooser.save(tmp_path / 'chooser.pt')
    loaded = MetaController.init_and_load(tmp_path / 'chooser.pt')
    assert torch.equal(loaded.action_codebook, codebook)
    assert torch.equal(loaded.step(stream, deterministic = True).actions, chooser.step(stream, deterministic = True).actions)

    for bad in (torch.randn(5, LATENT + 1), torch.randn(1, LATENT), torch.randn(LATENT)):
        with pytest.raises(ValueError, match = f'codebook must be \\(K >= 2, n_z = {LATENT}\\) codes, got {re.escape(str(tuple(bad.shape)))}'):
            meta.with_action_codebook(bad)
    with pytest.raises(ValueError, match = 'action_codebook_size must be None'):
        tiny_meta_controller(action_codebook_size = 1)


def test_a_spread_codebook_policy_draws_around_its_rows(tmp_path):
    """with_action_codebook(spread = σ0): z is drawn from a Gaussian around the chosen row, which a fresh policy
    puts within about σ0 of it; log_prob is the mixture's density (torch.distributions' own), its gradient
    reaches the offsets and variances as well as the logits, and a checkpoint keeps the spread."""
    torch.manual_seed(0)
    meta = randomize_controller_(tiny_meta_controller())
    codebook, spread = 3 * torch.randn(5, LATENT), 0.1
    mixer = meta.with_action_codebook(codebook, spread = spread)
    stream = torch.randn(512, DIM)
    step = mixer.step(stream)
    assert step.action_dist.shape == (512, 1, 5, 1 + 2 * LATENT)
    gap = step.actions[:, 0] - codebook[torch.cdist(step.actions[:, 0], codebook).argmin(dim = -1)]
    assert math.isclose(gap.std().item(), spread, rel_tol = 0.1)   # a fresh head: offsets near 0, std near σ0
    greedy = mixer.step(stream, deterministic = True).actions[:, 0]   # the chosen row's mean: the row itself, to start
    assert torch.allclose(greedy, codebook[torch.cdist(greedy, codebook).argmin(dim = -1)], atol = 1e-2)

    dist = torch.randn(7, 5, 1 + 2 * LATENT)
    logits, gaussians = mixer.action_code.components(dist)
    mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits = logits), torch.distributions.Independent(
        torch.distributions.Normal(gaussians[..., 0], (0.5 * gaussians[..., 1]).exp()), 1))
    value = mixer.action_code.sample(dist)
    assert torch.allclose(mixer.log_prob(dist, value), mixture.log_prob(value), atol = 1e-4)

    t = 4
    states, actions = torch.randn(3, t, DIM), codebook[torch.randint(5, (3, t))] + spread * torch.randn(3, t, LATENT)
    mixer.policy_loss(states, torch.zeros(3, t), actions, torch.randn(3), torch.ones(3, t)).backward()
    grad = mixer.policy.head.bias.grad.unflatten(0, (5, -1))
    assert all(part.abs().sum() > 0 for part in (grad[:, 0], grad[:, 1:1 + LATENT], grad[:, 1 + LATENT:]))

    mixer.save(tmp_path / 'mixer.pt')
    loaded = MetaController.init_and_load(tmp_path / 'mixer.pt')
    assert loaded.action_codebook_spread == spread and torch.equal(loaded.action_codebook, codebook)
    for bad in (dict(action_codebook_spread = -0.1, action_codebook_size = 3), dict(action_codebook_spread = 0.1)):
        with pytest.raises(ValueError, match = 'action_codebook_spread must be 0 \\(exact codes\\) or > 0 with an action codebook'):
            tiny_meta_controller(**bad)


def test_a_codebook_policy_keeps_its_choice_when_given_a_spread():
    """with_codebook_spread: the copy's logits are the trained policy's at every step, its offsets start at zero
    (so its greedy codes are the same rows), and a spread of 0 is the same policy; it needs a codebook policy."""
    torch.manual_seed(0)
    meta = randomize_controller_(tiny_meta_controller())
    chooser = meta.with_action_codebook(3 * torch.randn(5, LATENT))
    with torch.no_grad():
        chooser.policy.head.weight.normal_()   # a policy whose choice depends on its input and state
    streams = torch.randn(2, 6, DIM)
    for spread in (0.3, 0.):
        mixer = chooser.with_codebook_spread(spread)
        assert torch.allclose(mixer.policy(streams)[..., 0], chooser.policy(streams)[..., 0], atol = 1e-6)
        assert torch.equal(mixer.action_codebook, chooser.action_codebook) and mixer.action_codebook_spread == spread
        first, second = chooser.step(streams[:, 0], deterministic = True), mixer.step(streams[:, 0], deterministic = True)
        assert torch.allclose(first.actions, second.actions, atol = 1e-6)
    assert torch.equal(mixer.policy.head.weight, chooser.policy.head.weight)
    with pytest.raises(ValueError, match = 'make one with with_action_codebook first'):
        meta.with_codebook_spread(0.2)


def test_kmeans_finds_separated_clusters_and_is_seeded():
    centres = torch.tensor([[0., 0.], [6., 6.], [-6., 6.], [6., -6.]])
    points = (centres[:, None] + 0.3 * torch.randn(4, 200, 2)).flatten(0, 1)
    found = kmeans(points, 4, seed = 3)
    assert torch.cdist(found, centres).min(dim = 0).values.max() < 0.1   # each centre has a centroid beside it
    assert torch.equal(found, kmeans(points, 4, seed = 3))
    with pytest.raises(ValueError, match = r'k-means needs 1 <= k <= the number of points \(800\), got k = 801'):
        kmeans(points, 801)
