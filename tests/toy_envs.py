"""Toy environments for the tests: small batched envs whose behaviour is known by construction."""
import numpy as np

from conftest import STATE

FLAG, BIAS = 0, 1   # observation channels: the switch flag, a constant 1


class FlagEnv:
    """A batched env with the gymnasium VectorEnv API.

    Slot i runs `lengths[i]` raw steps; its observation before step t has the
    flag set when t is in `switch_at[i]`. With a `target`, the last step pays 1
    when every action of the episode was `target`; without one, every step pays
    1, also in finished slots (a misbehaving env: the rollout must mask it).
    """

    def __init__(self, num_envs, lengths = 4, switch_at = (0, 2), target = None):
        self.num_envs = num_envs
        self.lengths = np.broadcast_to(np.asarray(lengths), (num_envs,))
        self.switch_at = [set(s) for s in switch_at] if isinstance(switch_at[0], (tuple, list, set)) else [set(switch_at)] * num_envs
        self.target = target
        self.resets = []

    def _obs(self):
        obs = np.zeros((self.num_envs, STATE), dtype = np.float32)
        obs[:, BIAS] = 1.
        obs[:, FLAG] = [self.t in flags for flags in self.switch_at]
        return obs

    def reset(self, seed = None):
        self.resets.append(list(seed))
        self.t, self.all_target = 0, np.ones(self.num_envs, dtype = bool)
        return self._obs(), {}

    def step(self, actions):
        assert actions.shape == (self.num_envs,)
        live = self.t < self.lengths
        if self.target is not None:
            self.all_target &= actions == self.target
        self.t += 1
        ends = self.t == self.lengths
        reward = (ends & self.all_target).astype(np.float32) if self.target is not None else np.ones(self.num_envs, np.float32)
        return self._obs(), reward, ends & live, np.zeros(self.num_envs, dtype = bool), {}


TARGET = 2   # the rewarded action of `latent_task` (any one would do)


def latent_task(n):
    """Reward 1 iff all 4 raw actions are TARGET; decisions at t = 0 and t = 2."""
    return FlagEnv(n, lengths = 4, switch_at = (0, 2), target = TARGET)
