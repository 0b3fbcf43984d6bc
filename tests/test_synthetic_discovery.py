"""Discovery on a base whose behaviour depends only on a hidden piecewise-constant code
(tests/synthetic_code.py): the method, isolated from base-model quality, must put its switches
on the code's change points. The paper's objective unchanged (action NLL + α·KL, base frozen);
the Gumbel-sigmoid switch is the one its App. C.6 uses for the gridworld. The controller has rank 2:
one held code of such low rank cannot act as a table from each code to the next, which a rank-16
one can, and then it ties with the switching solution in rate (docs/reproduction.md, synthetic rows)."""
import math

from synthetic_code import synthetic_run

CODES, SEGMENTS, LENGTH = 8, 5, 6


def test_discovery_switches_where_the_hidden_code_changes():
    run = synthetic_run(CODES, SEGMENTS, LENGTH, seed = 0, rank = 2, gumbel = 1., alpha = 0.05, steps = 1_000)
    # the base is sure inside a segment and at chance on each segment's first step: what is left to explain
    chance = (math.log(CODES) + (SEGMENTS - 1) * math.log(CODES - 1)) / (SEGMENTS * LENGTH)
    assert abs(run.base_nll - chance) < 0.05

    assert run.counts.f1 >= 0.9, f'switch F1 {run.counts.f1:.3f}'
    assert abs(run.counts.predicted / run.episodes - (SEGMENTS - 1)) < 0.5   # about one switch per change, not one per step
