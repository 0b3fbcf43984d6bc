"""Internal RL (SPEC §4): the batched abstract-timescale rollout, PPO/GRPO, ES and the baselines.

The tests run on a toy batched env whose observation carries a "switch here"
flag, and on tiny models wired so that the frozen switching unit fires exactly
on that flag: switch times are then known by construction.
"""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from metacontroller.pipeline.config import RLPhaseConfig
from metacontroller.pipeline.rl_phase import final_success
from metacontroller.rl import RLConfig, collect_abstract, evaluate, run_episodes, train_internal_rl, train_raw_action_rl
from metacontroller.rl.abstract_env import AbstractRecorder
from metacontroller.rl.raw_action import RawRecorder, raw_log_probs
from metacontroller.rl.seeds import episode_seeds, final_eval_seed
from metacontroller.rl.store import load_rollouts, save_rollouts
from metacontroller.rl.trainer import policy_update, trajectory_advantages

from conftest import ACTIONS, LATENT, killed_on_call, logged_messages, tiny_meta_controller, tiny_transformer
from toy_envs import BIAS, FLAG, TARGET, FlagEnv, latent_task

pytestmark = pytest.mark.usefixtures('one_thread')

TETRAHEDRON = torch.tensor([[1., 1., 1.], [1., -1., -1.], [-1., 1., -1.], [-1., -1., 1.]]) / 3 ** 0.5


def wired(sharpness = 5.):
    """A tiny base model and metacontroller with hand-set weights, so that behaviour is known:

    - no residual branches in either body: e = o @ W with e_0 = the flag, e_1 = 1;
    - switching unit: β = σ(silu(20 e_0) - 10), i.e. it fires on the flag only;
    - decoder: U e adds silu(d_k · z) to stream dim 2 + k, d_k the corners of a tetrahedron;
    - readout: logit_k = sharpness · LayerNorm(ê)_{2+k}.
    So the raw action is (softly) argmax_k d_k · z: each action owns a quarter of latent space.
    Only the policy keeps its random init."""
    assert LATENT == 3 and ACTIONS == 4
    model, meta = tiny_transformer(), tiny_meta_controller()
    with torch.no_grad():
        for name, p in [*model.lower_body.named_parameters(), *model.upper_body.named_parameters()]:
            if name.endswith(('to_out.weight', 'ff.2.weight', 'ff.2.bias')):
                p.zero_()
        embed = model.state_embed.embeddings.weight            # (obs, d): e = o @ W
        embed.zero_()
        embed[FLAG, 0] = embed[BIAS, 1] = 1.

        unit = meta.switching
        for p in (unit.from_stream.weight, unit.from_stream.bias, unit.from_latent.weight, unit.to_logit.weight):
            p.zero_()
        unit.from_stream.weight[0, 0] = 20.
        unit.to_logit.weight[0, 0] = 1.
        unit.to_logit.bias.fill_(-10.)

        decoder, rank = meta.decoder, meta.decoder.rank
        hidden = decoder.hidden[0]
        hidden.weight.zero_(), hidden.bias.zero_()
        hidden.weight[:4] = TETRAHEDRON                        # hidden_k = silu(d_k · z)
        decoder.to_b.weight.zero_(), decoder.to_b.bias.zero_()
        decoder.to_b.bias[1 * rank] = 1.                       # B[1, 0] = 1: Bᵀ e = (e_1, 0, ...) = (1, 0, ...)
        decoder.to_a.weight.zero_(), decoder.to_a.bias.zero_()
        for k in range(ACTIONS):
            decoder.to_a.weight[(2 + k) * rank, k] = 1.        # A[2 + k, 0] = hidden_k

        readout = model.action_readout.embeddings.weight       # (actions, d)
        readout.zero_()
        for k in range(ACTIONS):
            readout[k, 2 + k] = sharpness
    return model, meta


def config(**kwargs):
    return RLConfig(**{**dict(num_envs = 16, total_episodes = 32, lr = 1e-3, epochs = 2), **kwargs})


def one_step_task(n):
    """Reward 1 iff the single raw action is TARGET: about a quarter of raw-action episodes succeed at the start."""
    return FlagEnv(n, lengths = 1, target = TARGET)


class LatentLog:
    """A recorder that keeps the held latent z and the raw action at each raw step (zeros in slots out of the batch)."""

    def __init__(self):
        self.latents, self.actions = [], []

    def record(self, step):
        self.latents.append(step.scatter(step.meta.latent))
        self.actions.append(step.scatter(step.action))


# ---------------------------------------------------------------- the batched abstract-timescale env


def test_two_envs_switch_hold_and_end_at_the_right_steps():
    model, meta = wired()
    env = FlagEnv(2, lengths = [5, 3], switch_at = [(0, 2, 3), (1, 4)])
    log = LatentLog()
    episodes = run_episodes(model, env, [7, 8], meta_controller = meta, recorder = log)

    assert env.resets == [[7, 8]]
    assert episodes.lengths.tolist() == [5, 3]
    assert episodes.returns.tolist() == [5., 3.]          # rewards of finished slots are masked out
    assert episodes.switches.tolist() == [3, 2]           # slot 1's flag at t = 4 comes after its end
    assert len(log.latents) == 5                          # the batch runs until the last slot ends

    latents = torch.stack(log.latents, dim = 1)           # (2, 5, n_z)
    changed = torch.ones(2, 5, dtype = torch.bool)
    changed[:, 1:] = (latents[:, 1:] != latents[:, :-1]).any(dim = -1)
    assert changed[0].tolist() == [True, False, True, True, False]   # z is held between switches
    assert changed[1, :3].tolist() == [True, True, False]

    batch = collect_abstract(model, meta, FlagEnv(2, lengths = [5, 3], switch_at = [(0, 2, 3), (1, 4)]), [7, 8])
    assert batch.decisions.tolist() == [3, 2]
    assert batch.times[0].tolist() == [0, 2, 3] and batch.times[1, :2].tolist() == [0, 1]
    assert batch.valid.tolist() == [[True, True, True], [True, True, False]]


def test_dropping_finished_rows_from_the_batch_changes_no_episode():
    model, meta = wired()
    with torch.no_grad():
        meta.policy.head.weight.normal_(std = 0.5)
    batches = []
    for drop in (True, False):
        recorder = AbstractRecorder(meta)
        env = FlagEnv(4, lengths = [6, 2, 4, 1], switch_at = (0, 3))
        episodes = run_episodes(model, env, range(4), meta_controller = meta, recorder = recorder, deterministic = True, drop_finished = drop)
        batches.append(recorder.batch(episodes))
    dropped, kept = batches
    assert torch.equal(dropped.decisions, kept.decisions) and torch.equal(dropped.times, kept.times)
    assert all(torch.equal(x, y) for x, y in zip(dropped.episodes, kept.episodes))
    for x, y in [(dropped.streams, kept.streams), (dropped.latents, kept.latents), (dropped.log_probs, kept.log_probs)]:
        assert torch.allclose(x, y, atol = 1e-5)


def test_force_beta_one_makes_the_policy_act_every_step():
    model, meta = wired()
    batch = collect_abstract(model, meta, FlagEnv(3, lengths = [4, 2, 3], switch_at = (0,)), [0, 1, 2], force_beta = 1.)
    assert batch.decisions.tolist() == [4, 2, 3]
    assert batch.episodes.switches.tolist() == [4, 2, 3]


def test_seeds_must_match_the_batch():
    model, meta = wired()
    with pytest.raises(ValueError, match = 'one seed per environment'):
        run_episodes(model, FlagEnv(2), [0], meta_controller = meta)


# ---------------------------------------------------------------- PPO on decision steps


def rollout_with_a_sharp_policy(num_envs = 6):
    model, meta = wired()
    with torch.no_grad():
        meta.policy.head.weight.normal_(std = 0.5)     # a policy whose log-probs depend on its input
        meta.policy.head.bias.normal_(std = 0.5)
    env = FlagEnv(num_envs, lengths = [6, 4, 5, 2, 6, 3][:num_envs], switch_at = (0, 1, 3, 4))
    return model, meta, collect_abstract(model, meta, env, range(num_envs))


def test_replay_parity_of_stored_log_probs():
    _, meta, batch = rollout_with_a_sharp_policy()
    with torch.no_grad():
        replayed = meta.log_prob(meta.policy(batch.streams), batch.latents)      # (N, K)
    valid = batch.valid
    assert torch.allclose(replayed[valid], batch.log_probs[valid], atol = 1e-5)
    assert batch.decisions.tolist() == [4, 3, 4, 2, 4, 2]                      # flags at 0, 1, 3, 4 within each length


def test_ppo_uses_exactly_the_decision_steps_with_per_trajectory_advantages():
    _, meta, batch = rollout_with_a_sharp_policy()
    advantages = torch.tensor([1., -1., 0.5, 2., -0.5, 0.])
    loss = meta.policy_loss(batch.streams, batch.log_probs, batch.latents, advantages,
                            torch.ones_like(batch.log_probs), episode_lens = batch.decisions)
    # ratio 1 at every decision step: the loss is the decision-weighted mean advantage
    expected = -(advantages * batch.decisions).sum() / batch.decisions.sum()
    assert torch.allclose(loss, expected, atol = 1e-5)

    # padding past each trajectory's decisions never enters the loss
    padded = ~batch.valid
    garbage = lambda x: torch.where(padded.reshape(*padded.shape, *[1] * (x.ndim - 2)), torch.full_like(x, 123.), x)
    loss_garbage = meta.policy_loss(garbage(batch.streams), garbage(batch.log_probs), garbage(batch.latents), advantages,
                                    torch.ones_like(batch.log_probs), episode_lens = batch.decisions)
    assert torch.allclose(loss, loss_garbage)


def test_rollout_store_round_trip_gives_the_identical_loss(tmp_path):
    _, meta, batch = rollout_with_a_sharp_policy()
    advantages = torch.tensor([1., -1., 0.5, 2., -0.5, 0.])
    assert torch.all(batch.betas[batch.valid] >= 0.5) and torch.all(batch.betas[~batch.valid] == 0)

    save_rollouts(tmp_path / 'rollouts', batch, advantages)                        # the name is kept as given
    loaded, loaded_advantages = load_rollouts(tmp_path / 'rollouts')
    for name, kept, read in zip(batch._fields[:-1], batch, loaded):
        assert torch.equal(kept, read) and kept.dtype == read.dtype, name
    assert all(torch.equal(kept, read) for kept, read in zip(batch.episodes, loaded.episodes))
    assert torch.equal(loaded_advantages, advantages)

    loss = meta.policy_loss(*loaded.policy_loss_args(loaded_advantages))
    assert torch.equal(loss, meta.policy_loss(*batch.policy_loss_args(advantages)))
    # what the PPO update passed before betas were recorded: ones, masked by the decision counts
    assert torch.equal(loss, meta.policy_loss(batch.streams, batch.log_probs, batch.latents, advantages,
                                              torch.ones_like(batch.log_probs), episode_lens = batch.decisions))

    save_rollouts(tmp_path / 'no_advantages.npz', batch)
    assert load_rollouts(tmp_path / 'no_advantages.npz').advantages is None
    with pytest.raises(ValueError, match = r'advantages must be a tensor of shape \(6,\)'):
        save_rollouts(tmp_path / 'bad.npz', batch, advantages[:3])


def test_rollout_store_refuses_pickles_and_foreign_files(tmp_path):
    _, _, batch = rollout_with_a_sharp_policy()
    save_rollouts(tmp_path / 'rollouts.npz', batch)
    with np.load(tmp_path / 'rollouts.npz') as data:
        entries = dict(data)
    np.savez(tmp_path / 'pickled.npz', **{**entries, 'streams': np.array([object()], dtype = object)})
    with pytest.raises(ValueError, match = 'allow_pickle'):                         # refused, never unpickled
        load_rollouts(tmp_path / 'pickled.npz')
    np.savez(tmp_path / 'other.npz', **{**entries, 'version': np.array(2)})
    with pytest.raises(ValueError, match = 'not a metacontroller-rollouts file of version 1'):
        load_rollouts(tmp_path / 'other.npz')
    np.savez(tmp_path / 'partial.npz', **{k: v for k, v in entries.items() if k not in ('latents', 'returns')})
    with pytest.raises(ValueError, match = 'lacks latents, returns'):
        load_rollouts(tmp_path / 'partial.npz')


def test_trajectory_advantages_normalise_over_the_batch_or_the_group():
    returns = torch.tensor([1., 0., 0., 0., 1., 1.])
    whole = trajectory_advantages(returns)
    assert torch.allclose(whole, (returns - 0.5) / (0.5 + 1e-3))
    grouped = trajectory_advantages(returns, group_size = 3)
    assert torch.allclose(grouped[:3], (returns[:3] - 1 / 3) / (returns[:3].std(unbiased = False) + 1e-3))
    assert torch.allclose(grouped[3:], (returns[3:] - 2 / 3) / (returns[3:].std(unbiased = False) + 1e-3))
    assert episode_seeds(0, 8, 4, group_size = 2) == [8, 8, 9, 9]


def test_update_trains_only_the_policy():
    model, meta, batch = rollout_with_a_sharp_policy()
    cfg = config()
    before = {name: p.clone() for name, p in [*model.named_parameters(), *meta.named_parameters()]}
    optimizer = torch.optim.AdamW(meta.policy.parameters(), lr = 1e-2)
    policy_update(meta, batch, torch.tensor([1., -1., 0.5, 2., -0.5, 0.]), optimizer, cfg)

    for name, p in [*model.named_parameters(), *meta.named_parameters()]:
        is_policy = name.startswith('policy.')
        assert (p.grad is not None) == is_policy, name                 # frozen modules get no gradient at all
        assert is_policy or torch.equal(p, before[name]), name
    assert not torch.equal(meta.policy.head.weight, before['policy.head.weight'])


def test_train_internal_rl_leaves_the_callers_modules_alone():
    model, meta = wired()
    state = {k: v.clone() for k, v in meta.state_dict().items()}
    base = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_internal_rl(model, meta, latent_task, config(), progress = False)
    assert all(torch.equal(v, state[k]) for k, v in meta.state_dict().items())
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    trained = result.module.state_dict()
    changed = {k for k, v in trained.items() if not torch.equal(v, state[k])}
    assert changed and all(k.startswith('policy.') for k in changed)
    assert result.episodes == 32 and result.raw_steps == 32 * 4 and len(result.curve) == 2


def test_runs_repeat_with_the_same_seed():
    model, meta = wired()
    cfg = config(num_envs = 16, total_episodes = 64, group_size = 4)
    first, again, other = (train_internal_rl(model, meta, latent_task, cfg, seed = s, progress = False) for s in (0, 0, 1))
    assert first.curve == again.curve and first.curve != other.curve
    assert all(torch.equal(a, b) for a, b in zip(first.module.parameters(), again.module.parameters()))


# ---------------------------------------------------------------- evaluation


def test_evaluate_is_repeatable_and_counts_switches():
    model, meta = wired()
    make = latent_task
    first = evaluate(model, make, 10, meta_controller = meta, seed = 3, batch_size = 4)
    again = evaluate(model, make, 10, meta_controller = meta, seed = 3, batch_size = 4)
    assert first == again
    assert first.switches_per_episode == 2 and first.mean_length == 4
    greedy = evaluate(model, make, 6, meta_controller = meta, deterministic = True)
    assert greedy.success in (0., 1.)                     # greedy: every episode is the same
    assert evaluate(model, make, 4).switches_per_episode == 0


def test_greedy_actions_set_the_raw_actions_alone():
    """deterministic picks the latent (the policy's mean) and, unless greedy_actions says otherwise, the raw action."""
    model, meta = wired(sharpness = 0.)                  # uniform raw-action logits: argmax is action 0, a sample is anything
    with torch.no_grad():
        meta.policy.head.weight.normal_(std = 0.5)

    def rollout(**modes):
        log = LatentLog()
        torch.manual_seed(0)
        run_episodes(model, FlagEnv(4, lengths = [6, 5, 4, 6], switch_at = (0, 3)), range(4), meta_controller = meta, recorder = log, **modes)
        return torch.cat(log.latents), torch.cat(log.actions)

    mean_latents, argmax = rollout(deterministic = True)
    assert (argmax == 0).all()
    latents, actions = rollout(deterministic = False, greedy_actions = True)      # sampled latents, argmax actions
    assert not torch.allclose(latents, mean_latents) and (actions == 0).all()
    latents, actions = rollout(deterministic = True, greedy_actions = False)      # the mean latent, sampled actions
    assert torch.equal(latents, mean_latents) and (actions != 0).any()


def test_final_success_tells_the_policys_noise_from_the_bases():
    """The final evaluation's success_by_policy: each entry is the same episodes under its (latent, action) choice."""
    model, meta = wired(sharpness = 1.)                  # soft raw actions, so that argmax ones matter
    with torch.no_grad():                                # the policy's mean latent heads to TARGET's quarter
        meta.policy.head.weight.zero_()
        meta.policy.head.bias.view(LATENT, 2)[:, 0] = TETRAHEDRON[TARGET]
    cfg = RLPhaseConfig(num_envs = 16, final_eval_episodes = 64)
    out = final_success(model, latent_task, cfg, 3, meta)
    modes = dict(sampled = (False, False), greedy = (True, True), greedy_latent = (True, False), greedy_actions = (False, True))
    for name, (latent, actions) in modes.items():
        direct = evaluate(model, latent_task, 64, meta_controller = meta, seed = final_eval_seed(3), deterministic = latent,
                          greedy_actions = actions, batch_size = 16)
        assert out['success_by_policy'][name] == direct.success, name
    by_policy = out['success_by_policy']
    assert by_policy['greedy'] == 1 and by_policy['sampled'] < min(by_policy['greedy_latent'], by_policy['greedy_actions'])
    assert out['success'] == by_policy['sampled'] and out['eval_policy'] == 'sampled'

    greedy = final_success(model, latent_task, replace(cfg, deterministic_eval = True), 3, meta)
    assert greedy['success'] == 1 and greedy['eval_policy'] == 'greedy' and greedy['success_by_policy'] == by_policy
    assert set(final_success(model, latent_task, cfg, 3)['success_by_policy']) == {'sampled', 'greedy'}   # raw actions: no latent


def test_final_success_scores_an_intervention_on_the_same_episodes():
    """With `intervention`, each policy's figure is `evaluate`'s with that intervention on the final evaluation's seeds."""
    model, _ = wired(sharpness = 1.)
    cfg = RLPhaseConfig(num_envs = 16, final_eval_episodes = 64)

    def steer(env, stream, rows):   # the readout's logit of TARGET's action reads stream dim 2 + TARGET
        return stream + 3. * torch.nn.functional.one_hot(torch.tensor(2 + TARGET), stream.shape[-1])

    by_policy = final_success(model, latent_task, cfg, 3, intervention = steer)['success_by_policy']
    assert by_policy['greedy'] == 1 and final_success(model, latent_task, cfg, 3)['success_by_policy']['greedy'] == 0
    for name, greedy in (('sampled', False), ('greedy', True)):
        direct = evaluate(model, latent_task, 64, seed = final_eval_seed(3), deterministic = greedy, batch_size = 16, intervention = steer)
        assert by_policy[name] == direct.success, name


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match = 'algorithm'):
        RLConfig(algorithm = 'sac')
    with pytest.raises(ValueError, match = 'group_size'):
        RLConfig(num_envs = 6, group_size = 4)
    with pytest.raises(ValueError, match = 'num_envs'):
        RLConfig(num_envs = 0)
    with pytest.raises(TypeError, match = 'RLConfig'):
        train_internal_rl(*wired(), lambda n: FlagEnv(n), dict(num_envs = 4))


# ---------------------------------------------------------------- raw-action baseline


def test_raw_action_replay_parity_and_training_a_copy():
    model, _ = wired()
    recorder = RawRecorder(model)
    episodes = run_episodes(model, FlagEnv(3, lengths = [4, 2, 3]), [0, 1, 2], recorder = recorder)
    batch = recorder.batch(episodes)
    with torch.no_grad():
        replayed = raw_log_probs(model, batch.states, batch.actions)
    assert torch.allclose(replayed[batch.valid], batch.log_probs[batch.valid], atol = 1e-5)

    base = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_raw_action_rl(model, one_step_task, config(raw_trainable = ('upper_body.',)), progress = False)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    changed = {k for k, v in result.module.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all(k.startswith('upper_body.') for k in changed)


# ---------------------------------------------------------------- learning


def test_internal_rl_learns_the_latent_task():
    model, meta = wired()
    chance = evaluate(model, latent_task, 256, meta_controller = meta, seed = 1).success
    cfg = config(num_envs = 64, total_episodes = 64 * 20, lr = 1e-2, epochs = 4, eval_every = 64 * 20, eval_episodes = 256)
    result = train_internal_rl(model, meta, latent_task, cfg, seed = 0, progress = False)
    print('chance', chance, 'curve', [round(s, 2) for _, s in result.curve], 'final', result.success)
    assert chance < 0.15
    assert result.success > 0.9


def test_evolution_improves_fitness():
    model, meta = wired()
    cfg = config(algorithm = 'es', num_envs = 64, es_fitness_episodes = 64, es_population = 8, es_noise_scale = 0.3, es_lr = 0.1,
                 total_episodes = 2 * 8 * 64 * 6)
    fitness = lambda m: evaluate(model, latent_task, 64, meta_controller = m, seed = 0).success
    result = train_internal_rl(model, meta, latent_task, cfg, progress = False)
    before, after = fitness(meta), fitness(result.module)
    print('ES fitness before', before, 'after', after, 'curve', [round(f, 2) for _, f in result.curve])
    assert after > before + 0.2


# ---------------------------------------------------------------- the real environment


def test_runs_on_the_pinpad_vector_env():
    from metacontroller import MetaController, Transformer
    from metacontroller.envs.pinpad import NUM_ACTIONS, OBS_DIM, POST_TRAINING_TASK, VecPinpadEnv

    body = dict(depth = 1, heads = 2, attn_dim_head = 8, rel_pos_bias = True)
    model = Transformer(16, action_embed_readout = dict(num_discrete = NUM_ACTIONS), state_embed_readout = dict(num_continuous = OBS_DIM),
                        lower_body = body, upper_body = body)
    meta = MetaController(16, 8, 4, dim_encoder_hidden = 8, dim_hypernetwork_hidden = 8, hypernetwork_low_rank = 4, dim_policy = 8)
    make = lambda n: VecPinpadEnv(n, tasks = [POST_TRAINING_TASK])
    cfg = config(num_envs = 8, total_episodes = 8, eval_every = 8, eval_episodes = 8)

    for result in (train_internal_rl(model, meta, make, cfg, progress = False), train_raw_action_rl(model, make, cfg, progress = False)):
        assert result.episodes == 8 and 8 <= result.raw_steps <= 800 and len(result.evals) == 1
    stats = evaluate(model, make, 8, meta_controller = meta, deterministic = True)
    assert 1 <= stats.mean_length <= 100 and 1 <= stats.switches_per_episode <= stats.mean_length


# ---------------------------------------------------------------- progress files: a run goes on where it stopped


def interrupted_after(batches: int, task):
    """`task` envs whose training env (the first made) raises KeyboardInterrupt when reset for batch
    `batches` + 1: a run killed while collecting."""
    made = []

    def make_envs(n):
        env = task(n)
        if not made:
            env.reset = killed_on_call(env.reset, batches + 1)
        made.append(env)
        return env
    return make_envs


@pytest.mark.parametrize('kind', ['internal', 'raw-action'])
def test_an_interrupted_run_goes_on_from_its_progress_exactly(tmp_path, kind):
    model, meta = wired()
    cfg = config(num_envs = 16, total_episodes = 16 * 5, eval_every = 32, eval_episodes = 16)

    task = latent_task if kind == 'internal' else one_step_task   # each rewarded often enough to update early

    def train(make_envs, **kwargs):
        if kind == 'internal':
            return train_internal_rl(model, meta, make_envs, cfg, seed = 3, progress = False, **kwargs)
        return train_raw_action_rl(model, make_envs, cfg, seed = 3, progress = False, **kwargs)

    straight = train(task)
    path = tmp_path / 'progress.pt'
    with pytest.raises(KeyboardInterrupt):   # killed in its 4th batch; its last save came after the 2nd (an evaluation)
        train(interrupted_after(3, task), progress_file = path)
    assert torch.load(path, weights_only = True)['optimizer']['state']   # updates were made: the optimiser is restored too
    with logged_messages() as messages:
        resumed = train(task, progress_file = path)
    assert any(f'going on from {path}, at 32 of 80 episodes' in m for m in messages)
    assert len(straight.curve) == 5 and resumed.curve == straight.curve and resumed.raw_step_curve == straight.raw_step_curve
    assert resumed.evals == straight.evals and resumed.episodes == straight.episodes
    assert all(torch.equal(a, b) for a, b in zip(resumed.module.state_dict().values(), straight.module.state_dict().values()))


def test_a_finished_run_goes_on_to_a_larger_budget(tmp_path):
    model, meta = wired()
    cfg = config(num_envs = 16, total_episodes = 160, eval_every = 32, eval_episodes = 16)
    straight = train_internal_rl(model, meta, latent_task, cfg, seed = 0, progress = False)
    path = tmp_path / 'progress.pt'
    # 80 is off the evaluation schedule: that run evaluates there because its budget ends
    first = train_internal_rl(model, meta, latent_task, replace(cfg, total_episodes = 80), seed = 0, progress = False, progress_file = path)
    assert first.curve == straight.curve[:5] and [e for e, _ in first.evals] == [32, 64, 80]
    more = train_internal_rl(model, meta, latent_task, cfg, seed = 0, progress = False, progress_file = path)
    assert [e for e, _ in more.evals] == [32, 64, 96, 128, 160]
    assert more.curve == straight.curve and more.evals == straight.evals
    with pytest.raises(ValueError, match = 'a budget of 160 episodes; a continued run may keep or raise it, got total_episodes = 80'):
        train_internal_rl(model, meta, latent_task, replace(cfg, total_episodes = 80), seed = 0, progress = False, progress_file = path)


def test_the_progress_of_another_run_is_refused(tmp_path):
    model, meta = wired()
    cfg = config(num_envs = 16, total_episodes = 32, eval_every = 16, eval_episodes = 16)
    path = tmp_path / 'progress.pt'
    train_internal_rl(model, meta, latent_task, cfg, progress = False, progress_file = path)
    with pytest.raises(ValueError, match = r'other settings \(lr: saved 0.001, now 0.002\)'):
        train_internal_rl(model, meta, latent_task, replace(cfg, lr = 2e-3), progress = False, progress_file = path)
    with pytest.raises(ValueError, match = r'kind: saved .internal RL., now .internal RL \(β ≡ 1\).'):
        train_internal_rl(model, meta, latent_task, cfg, force_beta = 1., progress = False, progress_file = path)
    other_codes = copy.deepcopy(meta)
    with torch.no_grad():
        other_codes.decoder.to_a.bias.add_(1.)
    with pytest.raises(ValueError, match = 'starting_weights_sha256'):
        train_internal_rl(model, other_codes, latent_task, cfg, progress = False, progress_file = path)
    other_base = copy.deepcopy(model)   # the frozen base counts too
    with torch.no_grad():
        other_base.action_readout.embeddings.weight.mul_(2.)
    with pytest.raises(ValueError, match = 'starting_weights_sha256'):
        train_internal_rl(other_base, meta, latent_task, cfg, progress = False, progress_file = path)
    path.write_bytes(b'not a progress file')
    with pytest.raises(ValueError, match = r'could not be read as progress .*delete it \(in the pipeline: --force\) to start afresh'):
        train_internal_rl(model, meta, latent_task, cfg, progress = False, progress_file = path)
    with pytest.raises(ValueError, match = 'progress files are for PPO runs'):
        train_internal_rl(model, meta, latent_task, replace(cfg, algorithm = 'es'), progress = False, progress_file = path)
