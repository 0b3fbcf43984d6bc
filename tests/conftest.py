from contextlib import contextmanager

import pytest
import torch
from loguru import logger

from metacontroller import MetaController, Transformer

DIM, STATE, ACTIONS, LATENT = 32, 12, 4, 3


@pytest.fixture(autouse = True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add synchronisation, which on a busy machine costs 10-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def killed_on_call(function, call: int):
    """`function`, except that its `call`-th call raises KeyboardInterrupt: a run killed at that point."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return function(*args, **kwargs)
    return wrapped


@contextmanager
def logged_messages(level: str = 'INFO'):
    """Inside, the list collects the messages logged through loguru at `level` and above."""
    messages = []
    sink = logger.add(messages.append, level = level)
    try:
        yield messages
    finally:
        logger.remove(sink)


def stepped_logits(model: Transformer, state: torch.Tensor) -> torch.Tensor:
    """(b, t, actions): the cached step run over every step of `state`, no past actions, concatenated."""
    cache, stepped = None, []
    for t in range(state.shape[1]):
        logits, cache = model(state[:, t:t + 1], None, cache = cache, return_cache = True)
        stepped.append(logits)
    return torch.cat(stepped, 1)


def tiny_transformer(**kwargs) -> Transformer:
    body = dict(depth = 1, heads = 2, attn_dim_head = 8, rel_pos_bias = True)
    return Transformer(
        dim = DIM,
        action_embed_readout = dict(num_discrete = ACTIONS),
        state_embed_readout = dict(num_continuous = STATE),
        lower_body = body,
        upper_body = body,
        **kwargs,
    )


def tiny_meta_controller(**kwargs) -> MetaController:
    defaults = dict(dim_meta_controller = 8, dim_latent = LATENT, dim_encoder_hidden = 16, dim_hypernetwork_hidden = 8, hypernetwork_low_rank = 4, dim_policy = 16)
    return MetaController(DIM, **{**defaults, **kwargs})


def randomize_controller_(meta: MetaController):
    """Give the zero-initialised output layer weights, so control is not a no-op."""
    with torch.no_grad():
        meta.decoder.to_a.weight.normal_(std = 0.1)
        meta.decoder.to_a.bias.normal_(std = 0.1)
    return meta


@pytest.fixture
def model():
    return tiny_transformer()


@pytest.fixture
def meta():
    return randomize_controller_(tiny_meta_controller())


@pytest.fixture
def batch():
    b, t = 3, 10
    state = torch.randn(b, t, STATE)
    actions = torch.randint(0, ACTIONS, (b, t))
    lens = torch.tensor([10, 7, 4])
    return state, actions, lens
