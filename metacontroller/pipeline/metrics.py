"""Switch metrics: does β switch where the subgoal changes, and is it quasi-binary?

Step t = 0 is excluded from predictions and ground truth alike: β_1 is forced
to 1 by construction and every episode's first step is a boundary, so counting
it would inflate every score for free. Both metrics read valid steps only.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from metacontroller.switching import decisions


class SwitchCounts(NamedTuple):
    true_positives: int
    predicted: int
    actual: int

    def __add__(self, other):
        return SwitchCounts(*(a + b for a, b in zip(self, other)))

    @property
    def f1(self) -> float:
        return 2 * self.true_positives / max(self.predicted + self.actual, 1)

    @property
    def precision(self) -> float:
        return self.true_positives / max(self.predicted, 1)

    @property
    def recall(self) -> float:
        return self.true_positives / max(self.actual, 1)


def match_switches(predicted: np.ndarray, actual: np.ndarray, tolerance: int = 1) -> SwitchCounts:
    """Greedy one-to-one matching of switch steps to boundary steps (both sorted):
    a prediction counts when it lies within ±tolerance of a still unmatched boundary."""
    unmatched = list(actual)
    hits = 0
    for step in predicted:
        near = [b for b in unmatched if abs(b - step) <= tolerance]
        if near:
            unmatched.remove(min(near, key = lambda b: abs(b - step)))
            hits += 1
    return SwitchCounts(hits, len(predicted), len(actual))


def switch_counts(beta: torch.Tensor, boundaries: torch.Tensor, lens: torch.Tensor, tolerance: int = 1) -> SwitchCounts:
    """beta (b, t), boundaries (b, t) bool, lens (b,): counts over steps 1 .. len - 1 of every episode."""
    switches = decisions(beta).cpu().numpy()   # a switch where internal RL would decide
    truth = boundaries.cpu().numpy()
    total = SwitchCounts(0, 0, 0)
    for row, length in enumerate(lens.tolist()):
        predicted = np.flatnonzero(switches[row, 1:length]) + 1
        actual = np.flatnonzero(truth[row, 1:length]) + 1
        total = total + match_switches(predicted, actual, tolerance)
    return total


def decision_steps(beta: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """β (b, t), lens (b,) -> bool (b, t): the steps 1 .. len - 1, where a switch is a choice (step 0 always chooses)."""
    steps = torch.arange(beta.shape[1], device = beta.device)[None]
    return (steps >= 1) & (steps < lens[:, None].to(beta.device))


def beta_binary_fraction(beta: torch.Tensor, lens: torch.Tensor, low: float = 0.05, high: float = 0.95) -> float:
    """Share of β values (steps 1 .. len - 1) below `low` or above `high`."""
    values = beta[decision_steps(beta, lens)]
    return ((values < low) | (values > high)).float().mean().item() if values.numel() else float('nan')
