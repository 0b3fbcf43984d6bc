"""Discovery with the past cut off (--discovery.cut_history; ours, not the paper's objective): where episodes
are cut, the cut episodes' loss, and the flag through the pipeline."""
import numpy as np
import torch
from test_rotation_consistency import assert_is_the_paper_nll_training_codes_only, tiny_case

from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.cli import main
from metacontroller.pipeline.discover import cut_action_nll, history_cuts


def test_cuts_fall_after_a_switch_inside_the_episode():
    beta = torch.zeros(4, 8)
    beta[0, [0, 3, 5]] = 1.   # switches at 3 and 5: cut at 4 or 6
    beta[1, [0, 6]] = 1.      # a switch at the episode's last step (len 7) leaves nothing after it
    beta[2, 0] = 1.           # the forced first switch only
    beta[3, [2, 7]] = 1.      # 7 lies past the episode (len 5)
    lens = torch.tensor([8, 7, 8, 5])
    starts = torch.stack([history_cuts(beta, lens, np.random.default_rng(seed)) for seed in range(64)])
    assert set(starts[:, 0].tolist()) == {4, 6}
    assert (starts[:, 1:3] == 0).all() and (starts[:, 3] == 3).all()


def test_uncut_episodes_give_the_discovery_nll_of_the_same_code_sample():
    """With no switch to cut at, each episode is its own cut: the term is the paper's action NLL on the same z."""
    assert_is_the_paper_nll_training_codes_only(lambda model, meta, batch, output: cut_action_nll(
        model, meta, output.latent, torch.zeros_like(output.beta), batch, np.random.default_rng(0)))


def test_a_cut_episode_is_scored_as_an_episode_of_its_own():
    """Cut at step 4, the first episode's term is the NLL of steps 4.. run through the base from scratch."""
    model, meta, batch, stream = tiny_case()
    latent = meta(stream, batch.episode_lens).latent.detach()
    beta = torch.zeros(batch.actions.shape)
    beta[0, 3] = 1.
    one = batch._replace(**{name: getattr(batch, name)[:1] for name in ('observations', 'actions', 'subgoals', 'boundaries', 'episode_lens')})
    cut = cut_action_nll(model, meta, latent[:1], beta[:1], one, np.random.default_rng(0))
    rest = model.residual_stream(batch.observations[:1, 4:])
    steered = meta.decoder.control(latent[:1, 4:], rest, meta.control_scale)
    logits = model.action_logits(batch.observations[:1, 4:], stream = steered)
    torch.testing.assert_close(cut, torch.nn.functional.cross_entropy(logits[0], batch.actions[0, 4:]))
    whole = cut_action_nll(model, meta, latent[:1], torch.zeros_like(beta[:1]), one, np.random.default_rng(0))
    assert (cut - whole).abs() > 1e-4   # the past changes what the base does


def test_the_flag_runs_discovery_and_is_recorded(tmp_path):
    flags = ['--preset', 'smoke', '--run-dir', str(tmp_path / 'run'), '--no-progress', '--threads', '1']
    result = main(pinpad_adapter(), [*flags, '--phases', 'data,pretrain,discover', '--discovery.cut_history', 'true',
                                     '--discovery.rotation_consistency', 'true'])
    discovery = result['discovery']
    assert discovery['cut_history'] is True
    names = ('final_train_action_nll', 'final_train_turned_action_nll', 'final_train_cut_action_nll')
    assert all(np.isfinite(discovery[name]) for name in names)
    assert len({discovery[name] for name in names}) == 3
