"""Discovery on a base whose behaviour depends only on a hidden piecewise-constant code
(tests/synthetic_code.py): the method, isolated from base-model quality, must put its switches
on the code's change points. The paper's objective unchanged (action NLL + α·KL, base frozen);
the Gumbel-sigmoid switch is the one its App. C.6 uses for the gridworld. The controller has rank 2:
one held code of such low rank cannot act as a table from each code to the next, which a rank-16
one can, and then it ties with the switching solution in rate (docs/reproduction.md, synthetic rows)."""
import math
from functools import partial

import torch
from synthetic_code import code_base, code_episodes, discover, switch_score, train_base

from metacontroller import MetaController

CODES, SEGMENTS, LENGTH = 8, 5, 6


def test_discovery_switches_where_the_hidden_code_changes():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    sample = partial(code_episodes, 64, CODES, SEGMENTS, LENGTH, generator)

    model = code_base(CODES)
    base_nll = train_base(model, sample, steps = 200)
    # the base is sure inside a segment and at chance on each segment's first step: what is left to explain
    chance = (math.log(CODES) + (SEGMENTS - 1) * math.log(CODES - 1)) / (SEGMENTS * LENGTH)
    assert abs(base_nll - chance) < 0.05

    meta = MetaController(dim_model = 32, dim_meta_controller = 32, dim_latent = 4, dim_policy = 16, hypernetwork_low_rank = 2,
                          switch_gumbel_temperature = 1.)
    discover(model, meta, sample, steps = 1_000, alpha = 0.05)
    episodes = code_episodes(512, CODES, SEGMENTS, LENGTH, generator)
    counts = switch_score(model, meta, episodes)

    assert counts.f1 >= 0.9, f'switch F1 {counts.f1:.3f}'
    assert abs(counts.predicted / len(episodes.lens) - (SEGMENTS - 1)) < 0.5   # about one switch per change, not one per step
