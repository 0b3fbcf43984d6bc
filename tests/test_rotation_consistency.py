"""Rotation-consistent discovery (--discovery.rotation_consistency; ours, not the paper's objective):
the pinpad quarter turns, the turned episodes' loss, and the flag through the pipeline."""
import numpy as np
import pytest
import torch

from metacontroller.demos import DemoBatch
from metacontroller.envs.pinpad import GRID, NEIGHBOURS, NUM_ACTIONS, NUM_CELLS, NUM_CHANNELS, OFF_GRID, quarter_turn
from metacontroller.envs.pinpad_expert import generate_pinpad_demos
from metacontroller.pipeline.adapters.babyai import babyai_adapter
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter, turn_episodes
from metacontroller.pipeline.cli import main
from metacontroller.pipeline.discover import recorded_outputs, turned_action_nll

from conftest import randomize_controller_, tiny_meta_controller, tiny_transformer


@pytest.mark.parametrize('k', range(4))
def test_a_quarter_turn_commutes_with_every_move(k):
    """Turning then moving the turned move lands where moving then turning does, off-grid moves included."""
    cells, actions = quarter_turn(k)
    turned = np.append(np.argsort(cells), OFF_GRID)   # old cell -> turned cell; off the grid stays off
    for cell in range(NUM_CELLS):
        for action in range(NUM_ACTIONS):
            assert NEIGHBOURS[turned[cell], actions[action]] == turned[NEIGHBOURS[cell, action]]


def test_four_quarter_turns_are_the_identity():
    cells, actions = quarter_turn(1)
    once_cells, once_actions = np.arange(NUM_CELLS), np.arange(NUM_ACTIONS)
    for _ in range(4):
        once_cells, once_actions = once_cells[cells], actions[once_actions]
    assert (once_cells == np.arange(NUM_CELLS)).all() and (once_actions == np.arange(NUM_ACTIONS)).all()
    assert (quarter_turn(0)[0] == np.arange(NUM_CELLS)).all() and (quarter_turn(2)[0] == quarter_turn(1)[0][quarter_turn(1)[0]]).all()


def test_turned_episodes_are_the_grid_image_turned():
    demos = generate_pinpad_demos(4, epsilon = 0., seed = 0, progress = False)
    batch = demos.batch(np.arange(4))
    turned, moves = turn_episodes(batch.observations, batch.actions, np.random.default_rng(0))
    grid = batch.observations.numpy().reshape(*batch.observations.shape[:2], GRID, GRID, NUM_CHANNELS)
    k = next(k for k in range(1, 4) if np.array_equal(np.rot90(grid, k, axes = (2, 3)).reshape(turned.shape), turned.numpy()))
    assert torch.equal(moves, torch.from_numpy(quarter_turn(k)[1])[batch.actions])
    assert turned.sum() == batch.observations.sum()   # a permutation: nothing added or lost


def tiny_case():
    model, meta = tiny_transformer().eval(), randomize_controller_(tiny_meta_controller())
    b, t = 3, 10
    state, actions, lens = torch.randn(b, t, 12), torch.randint(0, 4, (b, t)), torch.tensor([10, 7, 4])
    actions = actions.masked_fill(torch.arange(t) >= lens[:, None], 0)
    batch = DemoBatch(state, actions, torch.zeros(b, t, dtype = torch.long), torch.zeros(b, t, dtype = torch.bool), lens)
    with torch.no_grad():   # as discovery precomputes it
        stream = model.residual_stream(state)
    return model, meta, batch, stream


def assert_is_the_paper_nll_training_codes_only(term):
    """`term(model, meta, batch, output)`, a discovery term on the metacontroller output `discovery_losses` drew,
    equals the paper's action NLL on that sample of z, and its gradient reaches the codes but not the base."""
    model, meta, batch, stream = tiny_case()
    with recorded_outputs(meta) as outputs:
        paper = model.discovery_losses(batch.observations, batch.actions, meta, batch.episode_lens, stream = stream).action_recon
    assert len(outputs) == 1
    loss = term(model, meta, batch, outputs[0])
    torch.testing.assert_close(loss, paper)
    loss.backward()
    assert all(p.grad is None for p in model.parameters())   # the base stays frozen
    assert meta.encoder[0].weight.grad is not None          # the codes learn from the term's episodes


def test_turned_nll_under_no_turn_is_the_discovery_nll_of_the_same_code_sample():
    """With the identity for a symmetry, the turned term is the paper's action NLL on the sample of z it drew."""
    assert_is_the_paper_nll_training_codes_only(lambda model, meta, batch, output: turned_action_nll(
        model, meta, output.latent, batch, lambda obs, act, rng: (obs, act), np.random.default_rng(0)))


def test_turned_nll_under_bf16_autocast_stays_near_fp32():
    model, meta, batch, stream = tiny_case()
    latent = meta(stream, batch.episode_lens).latent.detach()
    swap = lambda obs, act, rng: (obs.flip(-1), act.flip(-1))   # any symmetry: another episode, the same codes
    fp32 = turned_action_nll(model, meta, latent, batch, swap, np.random.default_rng(0))
    with torch.autocast('cpu', dtype = torch.bfloat16):
        bf16 = turned_action_nll(model, meta, latent, batch, swap, np.random.default_rng(0))
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol = 0, atol = 2e-2)
    plain = model.discovery_losses(batch.observations, batch.actions, meta, batch.episode_lens, stream = stream).action_recon
    assert (fp32 - plain).abs() > 1e-3   # the turned episodes are not the originals


def test_the_flag_runs_discovery_and_is_recorded(tmp_path):
    flags = ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--no-progress', '--threads', '1']
    result = main(pinpad_adapter(), [*flags, '--phases', 'data,pretrain,discover', '--discovery.rotation_consistency', 'true'])
    discovery = result['discovery']
    assert discovery['rotation_consistency'] is True
    assert all(np.isfinite(discovery[key]) for key in ('action_nll', 'final_train_action_nll', 'final_train_turned_action_nll'))
    assert discovery['final_train_turned_action_nll'] != discovery['final_train_action_nll']
    plain = main(pinpad_adapter(), [*flags, '--phases', 'discover', '--force'])['discovery']   # the same run without the flag
    assert 'final_train_turned_action_nll' not in plain and plain['rotation_consistency'] is False


def test_an_env_without_rotations_refuses_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(babyai_adapter(), ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--discovery.rotation_consistency', 'true'])
    assert '--discovery.rotation_consistency: babyai defines no episode rotations' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()

