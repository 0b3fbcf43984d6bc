"""Task conditioning of the base model (`dim_condition`, `condition =`): off changes nothing, on reaches
every entry point, the cached step, checkpoints and rollouts, and bad input is a clear error."""
import numpy as np
import pytest
import torch
from x_transformers import Decoder

from metacontroller import Transformer
from metacontroller.rl import RLConfig, evaluate, run_episodes, train_raw_action_rl
from metacontroller.rl.raw_action import RawRecorder, raw_log_probs

from conftest import ACTIONS, DIM, STATE, tiny_meta_controller, tiny_transformer
from toy_envs import TARGET, FlagEnv

pytestmark = pytest.mark.usefixtures('one_thread')

COND = 5


def conditioned(**kwargs) -> Transformer:
    """A tiny conditioned model whose adaptive norms already read the condition (they start at zero)."""
    model = tiny_transformer(dim_condition = COND, **kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith('to_gamma.weight'):
                param.normal_(std = 0.5)
    return model.eval()


def every_output(model, state, actions, lens, meta, **condition):
    """The outputs of every entry point (discovery seeded), for one condition keyword or none."""
    torch.manual_seed(1)
    outputs = [
        *model(state, actions, episode_lens = lens, **condition),
        *model(state, actions, episode_lens = lens, meta_controller = meta, discovery_phase = True, **condition),
        model.residual_stream(state, **condition), *model.layer_residuals(state, **condition), model.action_logits(state, **condition),
    ]
    with torch.no_grad():
        cache = None
        for t in range(state.shape[1]):
            logits, cache = model(state[:, t:t + 1], None, cache = cache, return_cache = True, **condition)
            outputs.append(logits)
    return outputs


# ---------------------------------------------------------------- off: nothing changes


def test_no_condition_builds_and_computes_exactly_what_it_did(batch, meta):
    torch.manual_seed(0)
    before = tiny_transformer()
    torch.manual_seed(0)
    model = tiny_transformer(dim_condition = None)
    assert model.dim_condition is None
    assert list(model.state_dict()) == list(before.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), before.state_dict().values()))
    assert model._step_decoder('lower_body').is_fast and model._step_decoder('upper_body').is_fast

    state, actions, lens = batch
    plain = every_output(before, state, actions, lens, meta)
    explicit = every_output(model, state, actions, lens, meta, condition = None)
    assert all(torch.equal(x, y) for x, y in zip(plain, explicit))


def test_a_fresh_conditioned_model_starts_as_the_unconditioned_one(batch):
    """The adaptive norms' gains are 1 + W c with W = 0 at first: the condition has no effect until trained."""
    state, _, _ = batch
    plain = tiny_transformer().eval()
    model = tiny_transformer(dim_condition = COND).eval()
    shared = {k: v for k, v in plain.state_dict().items() if k in model.state_dict()}
    assert not model.load_state_dict(shared, strict = False).unexpected_keys
    for condition in (torch.zeros(3, COND), torch.randn(3, COND)):
        assert torch.allclose(model.action_logits(state, condition = condition), plain.action_logits(state), atol = 1e-5)


# ---------------------------------------------------------------- on: every entry point reads it


def test_the_condition_steers_each_episode_alone(batch, meta):
    state, actions, lens = batch
    model = conditioned()
    condition = torch.randn(3, COND)
    other = condition.clone()
    other[1] = torch.randn(COND)
    first, second = (every_output(model, state, actions, lens, meta, condition = c) for c in (condition, other))
    logits, changed = first[-1], second[-1]
    assert torch.allclose(logits[[0, 2]], changed[[0, 2]], atol = 1e-6) and not torch.allclose(logits[1], changed[1])
    assert all(torch.isfinite(x).all() for x in first)
    assert not torch.allclose(model.action_logits(state, condition = condition), model.action_logits(state, condition = other))


@pytest.mark.parametrize('embed_past_action', [False, True])
def test_cached_step_with_a_condition_equals_the_full_forward(embed_past_action):
    model = conditioned(embed_past_action = embed_past_action)
    state, actions, condition = torch.randn(4, 7, STATE), torch.randint(0, ACTIONS, (4, 7)), torch.randn(4, COND)
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        expected = model.action_logits(state, actions, condition = condition)
        cache, past, stepped, kept = None, None, [], []
        for t in range(7):
            # the condition at the first step only (the cache keeps it), or again at every step
            logits, cache = model(state[:, t:t + 1], past, cache = cache, return_cache = True, condition = condition if t in (0, 1) else None)
            stepped.append(logits)
            past = actions[:, t:t + 1]
        cache, past = None, None
        for t in range(7):
            if t == 3:   # finished episodes leave the batch: the cache keeps the condition of the rows it keeps
                cache, past = cache.select(rows), past[rows]
            logits, cache = model(state[:, t:t + 1] if t < 3 else state[rows, t:t + 1], past, cache = cache, return_cache = True,
                                  condition = condition if t == 0 else None)
            kept.append(logits)
            past = actions[:, t:t + 1] if t < 3 else actions[rows, t:t + 1]
    assert not model._step_decoder('lower_body').is_fast   # adaptive norms: the x-transformers cache, exact
    assert torch.allclose(torch.cat(stepped, 1), expected, atol = 1e-5)
    assert torch.allclose(torch.cat(kept[3:], 1), expected[rows, 3:], atol = 1e-5)


def test_discovery_with_a_condition_keeps_the_base_frozen_and_its_stream_reusable(batch, meta):
    state, actions, lens = batch
    model, condition = conditioned(), torch.randn(3, COND)
    torch.manual_seed(5)
    direct = model.discovery_losses(state, actions, meta, lens, condition = condition)
    torch.manual_seed(5)
    stream = model.residual_stream(state, condition = condition)
    reused = model.discovery_losses(state, actions, meta, lens, stream = stream, condition = condition)
    assert torch.allclose(torch.stack(direct), torch.stack(reused))
    (direct.action_recon + direct.kl).backward()
    assert all(p.grad is None for p in model.parameters()) and meta.decoder.to_a.weight.grad is not None


def test_behaviour_cloning_trains_the_conditioning(batch):
    state, actions, lens = batch
    model = tiny_transformer(dim_condition = COND)
    model(state, actions, episode_lens = lens, condition = torch.randn(3, COND)).action.backward()
    gains = [p.grad for name, p in model.named_parameters() if name.endswith('to_gamma.weight')]
    assert len(gains) == 5 and all(g is not None and g.abs().sum() > 0 for g in gains)   # 2 norms per layer, the upper body's final norm


def test_a_conditioned_model_round_trips_through_a_checkpoint(tmp_path, batch):
    state, actions, _ = batch
    model, condition = conditioned(), torch.randn(3, COND)
    model.meta_controller = tiny_meta_controller()
    model.save(tmp_path / 'model.pt')
    loaded = Transformer.init_and_load(tmp_path / 'model.pt').eval()
    assert loaded.dim_condition == COND and loaded.meta_controller is not None
    assert torch.equal(loaded.action_logits(state, condition = condition), model.action_logits(state, condition = condition))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize('dim_condition, condition, match', [
    (None, torch.randn(3, COND), r'takes no condition \(built with dim_condition = None\), got a condition of shape \(3, 5\)'),
    (COND, None, r'is conditioned \(dim_condition = 5\): pass condition, a float tensor of shape \(3, 5\).*got None'),
    (COND, torch.randn(3, COND + 1), r'shape \(3, 5\).*got shape \(3, 6\)'),
    (COND, torch.randn(2, COND), r'shape \(3, 5\).*got shape \(2, 5\)'),
    (COND, torch.randn(3, 1, COND), r'shape \(3, 5\).*got shape \(3, 1, 5\)'),
    (COND, torch.ones(3, COND, dtype = torch.long), r'float tensor of shape \(3, 5\).*torch.int64'),
    (COND, [[0.] * COND] * 3, r'float tensor of shape \(3, 5\).*got list'),
    (COND, torch.full((3, COND), float('nan')), 'condition must be finite, got 15 NaN'),
])
def test_bad_conditions_are_clear_errors(batch, meta, dim_condition, condition, match):
    state, actions, lens = batch
    model = tiny_transformer(dim_condition = dim_condition)
    calls = [
        lambda: model(state, actions, condition = condition),
        lambda: model(state, actions, meta_controller = meta, discovery_phase = True, condition = condition),
        lambda: model.residual_stream(state, condition = condition),
        lambda: model.layer_residuals(state, condition = condition),
        lambda: model.action_logits(state, stream = torch.randn(3, 10, DIM), condition = condition),
        lambda: model(state[:, :1], None, return_cache = True, condition = condition),
    ]
    for call in calls:
        with pytest.raises(ValueError, match = match):
            call()


def test_bad_condition_settings_are_clear_errors():
    for bad in (0, -2, 2.5, '5', True):
        with pytest.raises(ValueError, match = 'dim_condition must be a positive int'):
            tiny_transformer(dim_condition = bad)
    plain, adaptive = (Decoder(dim = DIM, depth = 1, heads = 2, **kw) for kw in ({}, dict(use_adaptive_layernorm = True, dim_condition = COND)))
    build = lambda body, **kw: Transformer(DIM, action_embed_readout = dict(num_discrete = ACTIONS), state_embed_readout = dict(num_continuous = STATE),
                                           lower_body = body, upper_body = dict(depth = 1), **kw)
    with pytest.raises(ValueError, match = 'lower body takes a condition .* dim_condition = 5'):
        build(adaptive)
    with pytest.raises(ValueError, match = 'but the lower body module has no adaptive norms'):
        build(plain, dim_condition = COND)
    with pytest.raises(ValueError, match = 'has adaptive norms of width 5'):
        build(adaptive, dim_condition = COND + 1)
    assert build(adaptive, dim_condition = COND).dim_condition == COND   # a module conditioned as the model is: accepted
    assert build(dict(depth = 1, use_adaptive_rmsnorm = True), dim_condition = COND).lower_body.need_condition   # x-transformers' other adaptive norm
    for norm in ('use_rmsnorm', 'use_scalenorm'):   # a norm that reads no condition cannot be the conditioned body's one norm
        with pytest.raises(ValueError, match = f'dim_condition = 5 conditions .* sets {norm} = True, .*use_adaptive_rmsnorm = True'):
            build(dict(depth = 1, **{norm: True}), dim_condition = COND)
    assert not build(dict(depth = 1, use_rmsnorm = True)).lower_body.need_condition   # without a condition: allowed


# ---------------------------------------------------------------- rollouts: info['condition'] at reset


class ConditionedFlagEnv(FlagEnv):
    """FlagEnv whose reset gives each episode a condition drawn from its seed."""

    def reset(self, seed = None):
        obs, info = super().reset(seed)
        self.condition = np.stack([np.random.default_rng(s).normal(size = COND) for s in seed]).astype(np.float32)
        return obs, dict(info, condition = self.condition)


class Conditions:
    """A recorder that keeps each step's condition rows."""

    def __init__(self):
        self.steps = []

    def record(self, step):
        self.steps.append((step.rows, step.condition))


def test_rollouts_read_the_condition_at_reset_and_keep_it_for_the_live_rows():
    model, env, log = conditioned(), ConditionedFlagEnv(4, lengths = [6, 2, 4, 1]), Conditions()
    episodes = run_episodes(model, env, range(4), recorder = log, deterministic = True)
    assert episodes.lengths.tolist() == [6, 2, 4, 1]
    for rows, condition in log.steps:
        assert torch.equal(condition, torch.as_tensor(env.condition)[rows])
    assert len(log.steps[-1][0]) < 4   # finished episodes left the batch
    again = run_episodes(model, ConditionedFlagEnv(4, lengths = [6, 2, 4, 1]), range(4), deterministic = True, drop_finished = False)
    assert all(torch.equal(x, y) for x, y in zip(episodes, again))


def test_raw_action_rl_replays_and_trains_with_conditions():
    model = conditioned()
    recorder = RawRecorder(model)
    env = ConditionedFlagEnv(3, lengths = [4, 2, 3])
    batch = recorder.batch(run_episodes(model, env, [0, 1, 2], recorder = recorder))
    assert torch.equal(batch.condition, torch.as_tensor(env.condition))
    with torch.no_grad():
        replayed = raw_log_probs(model, batch.states, batch.actions, batch.condition)
    assert torch.allclose(replayed[batch.valid], batch.log_probs[batch.valid], atol = 1e-5)

    config = RLConfig(num_envs = 16, total_episodes = 32, lr = 1e-3, eval_every = 32, eval_episodes = 8, raw_trainable = ('upper_body.',))
    result = train_raw_action_rl(model, lambda n: ConditionedFlagEnv(n, lengths = 1, target = TARGET), config, progress = False)
    trained = dict(result.module.named_parameters())
    assert any(not torch.equal(p, trained[name]) for name, p in model.named_parameters() if name.startswith('upper_body.'))
    assert 0 <= evaluate(model, lambda n: ConditionedFlagEnv(n), 8, meta_controller = tiny_meta_controller()).success <= 1


def test_the_rollout_contract_is_checked_both_ways():
    with pytest.raises(ValueError, match = r"is conditioned \(dim_condition = 5\): env.reset must return info\['condition'\].*got info keys \[\]"):
        run_episodes(conditioned(), FlagEnv(2), [0, 1])
    with pytest.raises(ValueError, match = r"env.reset gave info\['condition'\] of shape \(2, 5\), but the model takes no condition"):
        run_episodes(tiny_transformer(), ConditionedFlagEnv(2), [0, 1])
