"""Ground-truth subgoal controllers: switching at labelled boundaries, training forward against the
cached rollout switched by the live env, the onset metric, and errors on bad labels."""
from functools import partial

import numpy as np
import pytest
import torch

from metacontroller import MetaController
from metacontroller.demos import NO_SUBGOAL, DemoBatch
from metacontroller.envs.pinpad import PRETRAINING_TASKS, VecPinpadEnv
from metacontroller.envs.pinpad_expert import generate_pinpad_demos, pinpad_action_sets
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import ControlConfig, override, smoke_config
from metacontroller.pipeline.control import controlled_logits, step_labels, subgoal_intervention, train
from metacontroller.pipeline.discover import precompute
from metacontroller.pipeline.models import build_transformer
from metacontroller.rl import evaluate
from metacontroller.rl.rollout import run_episodes
from metacontroller.subgoal_controller import SubgoalController

from conftest import stepped_logits


@pytest.fixture(scope = 'module')
def demos():
    return generate_pinpad_demos(6, seed = 3, num_envs = 6, progress = False)


def tiny_meta(dim: int) -> MetaController:
    return MetaController(dim, dim_meta_controller = 8, dim_latent = 3, dim_encoder_hidden = 8, dim_hypernetwork_hidden = 8,
                          hypernetwork_low_rank = 4, dim_policy = 8)


def random_controller(dim: int) -> SubgoalController:
    controller = SubgoalController(dim, 4, dim_hypernetwork_hidden = 8, rank = 4)
    with torch.no_grad():   # A starts at zero (control is a no-op): make it act
        controller.decoder.to_a.weight.normal_(std = 0.3)
    return controller.eval()


def test_codes_switch_exactly_at_labelled_boundaries(demos):
    controller = random_controller(16)
    batch = demos.batch(np.arange(len(demos)))
    codes = controller.code(step_labels(batch))            # (b, t, K)
    changed = (codes[:, 1:] != codes[:, :-1]).any(-1)
    for i, n in enumerate(batch.episode_lens.tolist()):
        assert torch.equal(changed[i, :n - 1], batch.boundaries[i, 1:n])
        factors = controller.decoder(codes[i, :n]).a          # the controller each step applies
        distinct = (factors[1:] - factors[:-1]).abs().amax((-1, -2)) > 0
        assert torch.equal(distinct, batch.boundaries[i, 1:n])


def test_live_subgoal_matches_the_demonstration_labels(demos):
    """env.subgoal before each step is the label that step carries in the dataset."""
    env = VecPinpadEnv(len(demos), tasks = [tuple(t) for t in demos.metadata['tasks']])
    env.reset(seed = demos.seeds.tolist())
    batch = demos.batch(np.arange(len(demos)))
    for t in range(int(batch.episode_lens.max())):
        live = t < batch.episode_lens
        assert np.array_equal(env.subgoal[live.numpy()], batch.subgoals[live, t].numpy())
        env.step(batch.actions[:, t].numpy())


def test_cached_rollout_with_live_switching_equals_the_training_forward(one_thread):
    """The rollout (cached steps, finished rows dropped, the controller picked by the live env)
    gives the logits of the sequence forward on the same observations with the same labels."""
    model = build_transformer(pinpad_adapter(), smoke_config().model).eval()
    controller = random_controller(model.dim)
    env = VecPinpadEnv(8, tasks = PRETRAINING_TASKS)
    steps = {slot: [] for slot in range(env.num_envs)}   # slot -> [(observation, label, logits)]

    class Recorder:
        def record(self, step):
            labels = env.subgoal   # what the intervention read: the env has not stepped yet
            for j, slot in enumerate(step.rows.tolist()):
                if step.live[j]:
                    steps[slot].append((step.state[j, 0], labels[slot], step.logits[j, 0]))

    run_episodes(model, env, range(env.num_envs), recorder = Recorder(), intervention = partial(subgoal_intervention(controller), env))
    lens = torch.tensor([len(steps[slot]) for slot in steps])
    horizon = int(lens.max())
    observations = torch.zeros(env.num_envs, horizon, model.state_embed.num_continuous)
    labels = torch.full((env.num_envs, horizon), NO_SUBGOAL)
    rollout_logits = torch.zeros(env.num_envs, horizon, 4)
    for slot, recorded in steps.items():
        for t, (observation, label, logits) in enumerate(recorded):
            observations[slot, t], labels[slot, t], rollout_logits[slot, t] = observation, int(label), logits
    batch = DemoBatch(observations, torch.zeros_like(labels), labels, torch.zeros_like(labels, dtype = torch.bool), lens)
    with torch.no_grad():
        expected = controlled_logits(model, controller, batch)
    mask = torch.arange(horizon) < lens[:, None]
    assert lens.min() > 1 and (labels[mask] >= 0).all()
    assert torch.allclose(rollout_logits[mask], expected[mask], atol = 1e-4)
    with torch.no_grad():   # and the controllers do act: the check has power
        uncontrolled = model.action_logits(batch.observations)
    assert (uncontrolled[mask] - expected[mask]).abs().max() > 1e-2


def test_onset_steps_head_to_a_pairs_first_colour(demos):
    """Within each labelled segment, the onset steps are a non-empty leading run: the steps before the
    pair's first colour is entered; the rest of the segment heads to its second colour."""
    sets = pinpad_action_sets(demos)
    assert sets.onset.shape == (demos.num_steps,)
    for start, n in zip(demos.offsets, demos.episode_lens):
        onset, boundaries = sets.onset[start:start + n], demos.boundaries[start:start + n]
        cuts = [*np.flatnonzero(boundaries), n]
        for a, b in zip(cuts, cuts[1:]):
            segment = onset[a:b]
            first = int(np.argmin(segment)) if not segment.all() else len(segment)
            assert 0 < first < len(segment) and segment[:first].all() and not segment[first:].any()


def test_bad_labels_are_clear_errors(demos):
    controller = random_controller(16)
    with pytest.raises(ValueError, match = r'subgoal labels must lie in \[0, 4\)'):
        controller(torch.zeros(2, 3, 16), torch.tensor([[0, 1, 4], [0, 0, 0]]))
    with pytest.raises(ValueError, match = 'matching it'):
        controller(torch.zeros(2, 3, 16), torch.zeros(2, 2, dtype = torch.long))
    batch = demos.batch(np.arange(2))
    subgoals = batch.subgoals.clone()
    subgoals[0, 1] = NO_SUBGOAL   # a valid step without a label
    with pytest.raises(ValueError, match = '1 valid steps are unlabelled'):
        step_labels(batch._replace(subgoals = subgoals))
    assert (step_labels(batch) >= 0).all()   # padding (labelled NO_SUBGOAL) is fine
    env_without_subgoals = object()
    with pytest.raises(TypeError, match = 'live subgoals'):
        subgoal_intervention(controller)(env_without_subgoals, torch.zeros(1, 16), torch.tensor([0]))


def test_training_moves_only_the_controllers(demos, one_thread):
    """The base stays frozen: no gradient is computed for it, and its weights do not move."""
    model = build_transformer(pinpad_adapter(), smoke_config().model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    controller = SubgoalController(model.dim, 4, dim_hypernetwork_hidden = 8, rank = 4)
    start = controller.decoder.to_a.weight.clone()
    batches = precompute(model, demos, 3, seed = 0, device = 'cpu')
    trace = train(model, controller, batches, ControlConfig(steps = 3, batch_size = 3), seed = 0, progress = False)
    assert len(trace) == 3 and all(np.isfinite(trace))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.equal(controller.decoder.to_a.weight, start)


def test_controllers_learn_to_use_the_labels(demos, one_thread):
    """On the demos they are trained on, the controllers lower the action NLL below the base's (A starts at 0)."""
    model = build_transformer(pinpad_adapter(), smoke_config().model).eval()
    controller = SubgoalController(model.dim, 4, dim_hypernetwork_hidden = 8, rank = 4)
    batches = precompute(model, demos, len(demos), seed = 0, device = 'cpu')
    trace = train(model, controller, batches, ControlConfig(steps = 40, batch_size = len(demos), lr = 1e-2), seed = 0, progress = False)
    assert np.mean(trace[-5:]) < trace[0] - 0.05


def test_episodes_keep_their_progress_when_the_env_runs_again(one_thread):
    """evaluate reuses one env per batch size: an earlier batch's colours reached must not follow the env's next run."""
    model = build_transformer(pinpad_adapter(), smoke_config().model).eval()
    env = pinpad_adapter().make_envs(PRETRAINING_TASKS)(8)
    first = run_episodes(model, env, range(8))
    kept = first.progress.clone()
    run_episodes(model, env, range(8, 16))
    env.progress[:] = 99   # the env's array is its own to overwrite
    assert torch.equal(first.progress, kept)


def test_evaluate_switches_controllers_by_the_live_subgoal_in_every_batch(one_thread):
    """evaluate(..., intervention) binds each batch's own env (sizes 4 and 2 here) and counts colours reached."""
    model = build_transformer(pinpad_adapter(), smoke_config().model).eval()
    controller = random_controller(model.dim)
    seen = []

    def intervention(env, stream, rows):
        seen.append((env.num_envs, len(rows)))
        return subgoal_intervention(controller)(env, stream, rows)

    stats = evaluate(model, pinpad_adapter().make_envs(PRETRAINING_TASKS), 6, batch_size = 4, intervention = intervention)
    assert {size for size, _ in seen} == {4, 2} and all(rows <= size for size, rows in seen)
    assert all(a >= b for a, b in zip(stats.reached, stats.reached[1:]))   # colours are reached in order
    assert len(stats.reached) <= 6 and (len(stats.reached) < 6 or stats.reached[-1] == stats.success)
    with pytest.raises(ValueError, match = 'not both'):
        model.step(torch.zeros(1, 1, model.state_embed.num_continuous), meta_controller = tiny_meta(model.dim),
                   intervention = lambda e: e)


def test_a_feed_forward_upper_body_reads_the_past_only_through_the_cut(tmp_path, one_thread, demos):
    """`--model.upper_attention false`: the layers above the cut are MLPs (about as many parameters), so the action at t
    depends on the stream at the cut at t alone; the model keeps L + 1 layer residuals, reloads and steps exactly."""
    config = override(smoke_config(), {'model.upper_attention': False}).model
    model, attending = (build_transformer(pinpad_adapter(), c).eval() for c in (config, smoke_config().model))
    assert set(model.upper_body.layer_types) == {'f'}
    sizes = [sum(p.numel() for p in m.upper_body.parameters()) for m in (model, attending)]
    assert abs(sizes[0] - sizes[1]) < 0.05 * sizes[1]

    stream = torch.randn(2, 6, model.dim)
    edited = stream.clone()
    edited[:, :3] += torch.randn(2, 3, model.dim)   # the past only
    with torch.no_grad():
        for body, reads_the_past in ((model.upper_body, False), (attending.upper_body, True)):
            later = (body(stream) - body(edited))[:, 3:].abs().max()
            assert (later > 1e-3) == reads_the_past

    observations = demos.batch(torch.arange(2)).observations
    assert len(model.layer_residuals(observations)) == smoke_config().model.depth + 1
    model.save(tmp_path / 'model.pt')
    loaded = type(model).init_and_load(tmp_path / 'model.pt').eval()
    with torch.no_grad():
        assert torch.allclose(stepped_logits(loaded, observations), model.action_logits(observations), atol = 1e-5)
