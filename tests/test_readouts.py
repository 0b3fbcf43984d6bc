"""The Bernoulli next-observation head: a proper likelihood of 0/1 observations."""
import torch
import torch.nn.functional as F

from metacontroller.readouts import BinaryReadout

from conftest import STATE, tiny_transformer


def test_binary_readout_is_the_masked_bernoulli_nll():
    readout = BinaryReadout(8, 5)
    hidden, targets = torch.randn(2, 3, 8), torch.randint(0, 2, (2, 3, 5)).float()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logits = readout(hidden)
    per_step = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).sum(-1)
    assert torch.allclose(readout(hidden, targets, mask), per_step[mask].mean())
    assert readout(hidden, targets, torch.zeros_like(mask)).item() == 0.
    # bounded below by 0 nats, unlike a Gaussian with learned variance on constant features
    with torch.no_grad():
        readout.to_logits.weight.zero_()
        readout.to_logits.bias.copy_(torch.tensor([30., -30., 30., -30., 30.]))
    constant = torch.tensor([1., 0., 1., 0., 1.]).expand(2, 3, 5)
    assert 0 <= readout(hidden, constant).item() < 1e-9


def test_head_choice_leaves_the_other_initial_weights_as_they_are():
    torch.manual_seed(0)
    gaussian = tiny_transformer()
    torch.manual_seed(0)
    binary = tiny_transformer(binary_state_readout = True)
    assert isinstance(binary.state_readout, BinaryReadout) and binary.state_readout.num_features == STATE
    other = {k: v for k, v in gaussian.state_dict().items() if not k.startswith('state_readout')}
    assert all(torch.equal(v, binary.state_dict()[k]) for k, v in other.items())


def test_binary_head_trains_with_lambda():
    model = tiny_transformer(binary_state_readout = True)
    state = torch.randint(0, 2, (2, 6, STATE)).float()
    losses = model(state, torch.randint(0, 4, (2, 6)), episode_lens = torch.tensor([6, 4]))
    assert losses.state.item() > 0
    (losses.action + 0.01 * losses.state).backward()
    assert model.state_readout.to_logits.weight.grad.abs().sum() > 0
