"""The egocentric grid encoder: exact re-indexing, and a Transformer that uses it."""
import torch

from metacontroller import Transformer
from metacontroller.egocentric import EgocentricEncoder, egocentric_index
from metacontroller.envs.pinpad import AGENT_CHANNEL, GRID, NUM_CHANNELS, OBS_DIM
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter

from conftest import stepped_logits


def test_index_centres_the_agent():
    index = egocentric_index(3, 3)                 # canvas 5×5
    corner = index[0].reshape(5, 5)                # agent at (0, 0)
    assert corner[2, 2] == 0 and corner[2, 3] == 1 and corner[3, 2] == 3
    assert torch.all(corner[:2] == 9) and torch.all(corner[:, :2] == 9)   # beyond the grid: the zero pad cell


def test_encoder_sees_relative_positions_only():
    encoder = EgocentricEncoder(dim = 25, height = 3, width = 3, channels = 2, agent_channel = 1)
    with torch.no_grad():
        encoder.proj.weight.copy_(torch.eye(25))                          # read the canvas back out
        encoder.proj.bias.zero_()

    def grid(agent, colour):
        obs = torch.zeros(3, 3, 2)
        obs[agent[0], agent[1], 1] = 1.
        obs[colour[0], colour[1], 0] = 1.
        return obs.flatten()

    # the same offset (colour one step to the right) gives the same features wherever the agent is
    a = encoder(grid((0, 0), (0, 1)))
    b = encoder(grid((1, 1), (1, 2)))
    assert torch.equal(a, b) and a.sum() == 1
    assert not torch.equal(a, encoder(grid((1, 1), (2, 1))))


def test_transformer_with_state_encoder_steps_exactly():
    dim = 16
    model = Transformer(
        dim = dim, action_embed_readout = dict(num_discrete = 4), state_embed_readout = dict(num_continuous = 637),
        lower_body = dict(depth = 1, heads = 2), upper_body = dict(depth = 1, heads = 2),
        state_encoder = EgocentricEncoder(dim),
    ).eval()
    state = torch.zeros(2, 5, 7, 7, 13)
    state[..., 3, 3, 12] = 1.
    state[:, :, 1, 2, 0] = 1.
    state = state.flatten(2)
    with torch.no_grad():
        full = model.action_logits(state)
        stepped = stepped_logits(model, state)
    assert torch.allclose(stepped, full, atol = 1e-5)
    assert model.state_encoder in model.base_modules()


def test_grid_defaults_are_pinpads():
    """The defaults rebuild checkpoints that recorded only `dim`: the pinpad adapter's encoder, whose grid it passes."""
    encoder = pinpad_adapter().state_encoder(8)
    assert encoder.shape == EgocentricEncoder(8).shape == (GRID, GRID, NUM_CHANNELS)
    assert encoder.agent_channel == EgocentricEncoder(8).agent_channel == AGENT_CHANNEL
    assert encoder.obs_dim == OBS_DIM
