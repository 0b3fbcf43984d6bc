"""Discovery with a next-event head on the codes (--discovery.next_event_weight; ours, not the paper's objective):
the term, its gradient, its contract with `train`, and the flag through the pipeline."""
import numpy as np
import pytest
import torch
from test_rotation_consistency import tiny_case

from metacontroller.pipeline.adapters.babyai import babyai_adapter
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.cli import main
from metacontroller.pipeline.config import DiscoveryConfig
from metacontroller.pipeline.discover import NextEvents, StreamBatch, next_event_ce, segment_starts, train


def fixed_targets(targets: torch.Tensor):
    return lambda observations: targets[:len(observations)]


def test_the_term_is_the_head_cross_entropy_over_steps_with_an_event_ahead():
    model, meta, batch, stream = tiny_case()   # episode lengths 10, 7, 4
    latent = meta(stream, batch.episode_lens).latent
    targets = torch.randint(0, 3, batch.actions.shape)
    targets[0, 8:] = -1                         # no event ahead: left out
    head = torch.nn.Linear(latent.shape[-1], 3)
    ce = next_event_ce(NextEvents(fixed_targets(targets), head), latent, batch, torch.ones(batch.actions.shape))
    known = [(0, slice(0, 8)), (1, slice(0, 7)), (2, slice(0, 4))]   # padding left out too
    logits = torch.cat([head(latent[i, steps]) for i, steps in known])
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits, torch.cat([targets[i, steps] for i, steps in known])))
    ce.backward()
    assert meta.encoder[0].weight.grad.abs().sum() > 0   # the codes learn to say where they lead
    assert all(p.grad is None for p in model.parameters())
    none = next_event_ce(NextEvents(fixed_targets(torch.full_like(targets, -1)), head), latent, batch, torch.ones(batch.actions.shape))
    assert none.item() == 0


def test_from_the_segment_start_each_code_is_scored_against_its_segment_first_event():
    beta = torch.tensor([[1., 0., 0.7, 0.2, 0., 0.9], [1., 0., 0., 0., 0.6, 0.]])
    lens = torch.tensor([6, 4])   # the second episode's switch at 4 lies past its end
    assert segment_starts(beta, lens).tolist() == [[0, 0, 2, 2, 2, 5], [0, 0, 0, 0, 0, 0]]
    model, meta, batch, stream = tiny_case()
    latent = meta(stream, batch.episode_lens).latent
    targets = torch.randint(0, 3, batch.actions.shape)
    head = torch.nn.Linear(latent.shape[-1], 3)
    beta = torch.zeros(batch.actions.shape)
    beta[:, 0], beta[0, 5] = 1., 1.
    ce = next_event_ce(NextEvents(fixed_targets(targets), head), latent, batch, beta, from_segment_start = True)
    segment = torch.zeros_like(targets)
    segment[:, :] = targets[:, :1]
    segment[0, 5:] = targets[0, 5]
    torch.testing.assert_close(ce, next_event_ce(NextEvents(fixed_targets(segment), head), latent, batch, beta))


def test_train_adds_the_term_only_with_its_weight_and_logs_it_after_the_kl():
    model, meta, batch, stream = tiny_case()
    targets = torch.randint(0, 3, batch.actions.shape)
    next_events = NextEvents(fixed_targets(targets), torch.nn.Linear(meta.dim_latent, 3))
    config = DiscoveryConfig(steps = 30, next_event_weight = 1., lr = 1e-2)
    output = meta(stream, batch.episode_lens)
    before = next_event_ce(next_events, output.latent, batch, output.beta).item()
    trace = train(model, meta, [StreamBatch(batch, stream)], 0.05, config, seed = 0, progress = False, next_events = next_events)
    assert len(trace[0]) == 3 and np.isfinite(trace).all()              # action NLL, KL, next-event CE
    assert trace[-1][2] < before                                         # head and codes learned the targets
    with pytest.raises(ValueError, match = r'next_event_weight > 0 takes next_events .*got weight 1.0, next_events False'):
        train(model, meta, [StreamBatch(batch, stream)], 0.05, config, seed = 0, progress = False)
    with pytest.raises(ValueError, match = r'got weight 0.0, next_events True'):
        train(model, meta, [StreamBatch(batch, stream)], 0.05, DiscoveryConfig(steps = 1), seed = 0, progress = False,
              next_events = next_events)


def test_the_flag_runs_discovery_and_is_recorded(tmp_path, capsys):
    flags = ['--preset', 'smoke', '--no-progress', '--threads', '1']
    result = main(pinpad_adapter(), [*flags, '--run-dir', str(tmp_path / 'run'), '--phases', 'data,pretrain,discover',
                                     '--discovery.next_event_weight', '0.5', '--discovery.next_event_at', 'segment'])
    discovery = result['discovery']
    assert discovery['next_event_weight'] == 0.5 and discovery['next_event_at'] == 'segment'
    assert 0 < discovery['final_train_next_event_ce'] < np.log(8) + 1 and np.isfinite(discovery['final_train_action_nll'])
    with pytest.raises(SystemExit):
        main(babyai_adapter(), [*flags, '--run-dir', str(tmp_path / 'babyai'), '--discovery.next_event_weight', '0.3'])
    assert '--discovery.next_event_weight: babyai defines no next events to predict' in capsys.readouterr().err
    assert not (tmp_path / 'babyai').exists()
    with pytest.raises(SystemExit):
        main(pinpad_adapter(), [*flags, '--run-dir', str(tmp_path / 'bad'), '--discovery.next_event_at', 'episode'])
    assert "--discovery.next_event_at must be one of step, segment, got 'episode'" in capsys.readouterr().err
