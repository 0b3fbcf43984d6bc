"""BabyAI sequence levels, their flat observation encoding and a batched env.

Levels (one 8×8 room, 6×6 free cells, `NUM_OBJECTS` distinct key/ball/box
objects, agent at a random cell and heading) give one or two instructions,
each "go to the <colour> <type>" or "pick up the <colour> <type>":

- pretraining levels: `GoTo`, `Pickup` and every "A, then B" pair of them;
- held-out level `AfterYou`: "A after you B" with random kinds, i.e. do the
  *second* instruction first, in strict mode: completing A before B ends the
  episode as a failure (sparse reward, like pinpad's wrong colour). Every
  instruction kind and every execution order of kinds was seen in
  pretraining; only the reversed reading of the mission (the connector
  "after") is new, like pinpad's unseen transitions. Measured (default run):
  the bot solves 0.97 of these missions, the pretrained model 0.25.

Observation (one encoding for data, training and RL; `OBS_DIM` = 1009 floats):
    image      7·7·(11 object + 6 colour + 3 state) one-hot of the egocentric
               symbolic view `obs['image']`                          (980)
    direction  one-hot of the agent's heading                          (4)
    mission    per instruction slot (2): kind (go to, pick up), colour (6),
               type (key, ball, box) one-hot, plus the connector
               (none, then, after) one-hot                             (25)
The mission is read from the level's instruction tree, not its text: a bag of
words would lose which colour goes with which object and which comes first,
and the bot's behaviour would not be a function of the observation.

Mission as a condition (`VecBabyAIEnv(mission_condition = True)`): the
observation is the image and heading only (`SCENE_DIM` = 984), and the mission
code comes once per episode from the reset, `info['condition']` (N, 25), for a
model built with `dim_condition = MISSION_DIM`. Demonstrations keep the full
observation (see `generate_babyai_demos`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
from minigrid.core.constants import COLOR_NAMES, OBJECT_TO_IDX, STATE_TO_IDX
from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel
from minigrid.envs.babyai.core.verifier import AfterInstr, BeforeInstr, GoToInstr, ObjDesc, PickupInstr

ROOM_SIZE = 8
NUM_OBJECTS = 4
MAX_STEPS = 64
VIEW = 7
NUM_ACTIONS = 7                       # minigrid: left, right, forward, pickup, drop, toggle, done
MOVE_ACTIONS = (0, 1, 2)              # left, right, forward (the ε-random actions of the demos)

# The fixed mission vocabulary.
KINDS = ('go to', 'pick up')
KIND_INSTR = {'go to': GoToInstr, 'pick up': PickupInstr}
OBJECT_TYPES = ('key', 'ball', 'box')
CONNECTORS = ('none', 'then', 'after')
MAX_INSTRUCTIONS = 2

IMAGE_CHANNELS = (len(OBJECT_TO_IDX), len(COLOR_NAMES), len(STATE_TO_IDX))   # (11, 6, 3)
IMAGE_DIM = VIEW * VIEW * sum(IMAGE_CHANNELS)                               # 980
SLOT_DIM = len(KINDS) + len(COLOR_NAMES) + len(OBJECT_TYPES)                 # 11
MISSION_DIM = MAX_INSTRUCTIONS * SLOT_DIM + len(CONNECTORS)                  # 25
SCENE_DIM = IMAGE_DIM + 4                                                    # 984: the observation without the mission
OBS_DIM = SCENE_DIM + MISSION_DIM                                            # 1009

# Ground-truth subgoal label = 2 · slot + kind of the instruction being pursued:
# lower case the mission's first instruction, upper case its second.
SUBGOAL_NAMES = 'gpGP'


@dataclass(frozen = True)
class LevelSpec:
    kinds: tuple[str | None, ...]     # one kind per instruction; None draws go to / pick up at random
    connector: str                    # 'none' (one instruction), 'then' or 'after'
    strict: bool = False              # doing the instructions in the wrong order ends the episode as a failure


LEVELS = {
    'GoTo': LevelSpec(('go to',), 'none'),
    'Pickup': LevelSpec(('pick up',), 'none'),
    'GoToThenGoTo': LevelSpec(('go to', 'go to'), 'then'),
    'GoToThenPickup': LevelSpec(('go to', 'pick up'), 'then'),
    'PickupThenGoTo': LevelSpec(('pick up', 'go to'), 'then'),
    'PickupThenPickup': LevelSpec(('pick up', 'pick up'), 'then'),
    'AfterYou': LevelSpec((None, None), 'after', strict = True),
}
PRETRAINING_LEVELS = ('GoTo', 'Pickup', 'GoToThenGoTo', 'GoToThenPickup', 'PickupThenGoTo', 'PickupThenPickup')
POST_TRAINING_LEVEL = 'AfterYou'


def validate_levels(levels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(levels, str) or not levels:
        raise ValueError(f'expected a non-empty sequence of level names, got {levels!r}')
    unknown = [name for name in levels if name not in LEVELS]
    if unknown:
        raise ValueError(f'unknown BabyAI level(s) {unknown}; choose from {sorted(LEVELS)}')
    return tuple(levels)


class Instruction(NamedTuple):
    kind: str
    color: str
    type: str


class SequenceLevel(RoomGridLevel):
    """One room, NUM_OBJECTS distinct objects and a mission of `self.level` over some of them.
    `reset_episode` picks the level before each reset, so one env serves every level."""

    def __init__(self, max_steps: int = MAX_STEPS, **kwargs):
        self.level = LEVELS[PRETRAINING_LEVELS[0]]
        self.instructions: tuple[Instruction, ...] = ()   # surface order (slot 0, slot 1)
        self.slot_instrs: list = []                        # their verifiers, same order
        self.mission_code = np.zeros(MISSION_DIM, dtype = bool)
        super().__init__(room_size = ROOM_SIZE, num_rows = 1, num_cols = 1, max_steps = max_steps, **kwargs)

    def gen_mission(self):
        self.place_agent()
        objects = self.add_distractors(num_distractors = NUM_OBJECTS, all_unique = True)
        targets = self.np_random.permutation(len(objects))[:len(self.level.kinds)]
        self.instructions = tuple(
            Instruction(kind or KINDS[self._rand_int(0, len(KINDS))], objects[i].color, objects[i].type)
            for kind, i in zip(self.level.kinds, targets)
        )
        self.slot_instrs = [KIND_INSTR[ins.kind](ObjDesc(ins.type, ins.color)) for ins in self.instructions]
        if self.level.connector == 'none':
            self.instrs = self.slot_instrs[0]
        else:
            sequence = BeforeInstr if self.level.connector == 'then' else AfterInstr
            self.instrs = sequence(*self.slot_instrs, strict = self.level.strict)
        self.mission_code = encode_mission(self.instructions, self.level.connector)

    @property
    def execution_order(self) -> tuple[int, ...]:
        """Slots in the order the mission must be done."""
        return (1, 0) if self.level.connector == 'after' else tuple(range(len(self.instructions)))

    @property
    def subgoal(self) -> int:
        """Label (2 · slot + kind) of the instruction to complete next: the live counterpart of the
        demos' labels (which follow the bot's plan; the two agree except while the bot replans)."""
        order = self.execution_order
        slot = order[0]
        if len(order) > 1:
            first_done = self.instrs.a_done if order[0] == 0 else self.instrs.b_done   # a = slot 0, b = slot 1
            slot = order[1] if first_done == 'success' else order[0]
        return 2 * slot + KINDS.index(self.instructions[slot].kind)


# ---------------------------------------------------------------- encoding

def one_hot(index: np.ndarray, size: int) -> np.ndarray:
    return np.arange(size) == np.asarray(index)[..., None]


def encode_mission(instructions: Sequence[Instruction], connector: str) -> np.ndarray:
    """(MISSION_DIM,) bool."""
    slots = np.zeros((MAX_INSTRUCTIONS, SLOT_DIM), dtype = bool)
    for slot, ins in enumerate(instructions):
        slots[slot] = np.concatenate([one_hot(KINDS.index(ins.kind), len(KINDS)),
                                      one_hot(COLOR_NAMES.index(ins.color), len(COLOR_NAMES)),
                                      one_hot(OBJECT_TYPES.index(ins.type), len(OBJECT_TYPES))])
    return np.concatenate([slots.ravel(), one_hot(CONNECTORS.index(connector), len(CONNECTORS))])


def encode(image: np.ndarray, direction: int, mission: np.ndarray) -> np.ndarray:
    """image (7, 7, 3) ints, direction 0..3, mission (MISSION_DIM,) bool -> (OBS_DIM,) bool."""
    channels = [one_hot(image[..., c], size) for c, size in enumerate(IMAGE_CHANNELS)]   # (7, 7, size) each
    return np.concatenate([np.concatenate(channels, axis = -1).ravel(), one_hot(direction, 4), mission])


def decode(obs: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Inverse of `encode`: (image (7, 7, 3) uint8, direction, mission (MISSION_DIM,) bool)."""
    obs = np.asarray(obs).astype(bool)
    cells = obs[:IMAGE_DIM].reshape(VIEW, VIEW, -1)
    bounds = np.cumsum((0, *IMAGE_CHANNELS))
    image = np.stack([cells[..., lo:hi].argmax(-1) for lo, hi in zip(bounds[:-1], bounds[1:])], axis = -1)
    return image.astype(np.uint8), int(obs[IMAGE_DIM:IMAGE_DIM + 4].argmax()), obs[IMAGE_DIM + 4:]


def encode_obs(env: SequenceLevel, obs: dict) -> np.ndarray:
    return encode(obs['image'], obs['direction'], env.mission_code)


# ---------------------------------------------------------------- episodes

def episode_level(num_levels: int, seed: int) -> int:
    """Which of the levels the episode with this seed plays (a pure function of the seed)."""
    return int(np.random.default_rng(seed).integers(num_levels))


def reset_episode(env: SequenceLevel, levels: Sequence[str], seed: int) -> tuple[np.ndarray, int]:
    """Start episode `seed` on the level the seed draws from `levels` -> ((OBS_DIM,) bool obs, level index)."""
    level = episode_level(len(levels), seed)
    env.level = LEVELS[levels[level]]
    obs, _ = env.reset(seed = int(seed))
    return encode_obs(env, obs), level


class VecBabyAIEnv:
    """`num_envs` BabyAI episodes stepped in lockstep, without auto-reset (the internal-RL contract).

    reset(seed = [ints]) -> (obs (N, OBS_DIM) float32, info); step(actions (N,)) ->
    (obs, reward (N,) float32, terminated (N,), truncated (N,), info). Finished slots
    ignore their actions and keep their last observation. Reward is BabyAI's
    1 - 0.9 · t / max_steps on success, else 0; info['success'] (N,) bool.
    With `mission_condition`, obs is (N, SCENE_DIM) and reset's info['condition'] the
    missions (N, MISSION_DIM) float32: the contract of a conditioned model's rollouts."""

    def __init__(self, num_envs: int, tasks: Sequence[str] = PRETRAINING_LEVELS, max_steps: int = MAX_STEPS,
                 mission_condition: bool = False):
        if num_envs < 1:
            raise ValueError(f'num_envs must be >= 1, got {num_envs}')
        self.num_envs, self.tasks, self.max_steps = num_envs, validate_levels(tasks), max_steps
        self.mission_condition = mission_condition
        self.envs = [SequenceLevel(max_steps) for _ in range(num_envs)]
        self.obs = np.zeros((num_envs, OBS_DIM), dtype = np.float32)
        self.done = np.ones(num_envs, dtype = bool)
        self.task_id = np.zeros(num_envs, dtype = np.int64)

    def reset(self, *, seed: Sequence[int] | None = None):
        if seed is None or len(seed) != self.num_envs:
            raise ValueError(f'VecBabyAIEnv.reset needs one seed per env ({self.num_envs}), got {seed!r}')
        for slot, s in enumerate(seed):
            self.obs[slot], self.task_id[slot] = reset_episode(self.envs[slot], self.tasks, s)
        self.done[:] = False
        if self.mission_condition:
            scene, mission = self.obs[:, :SCENE_DIM], self.obs[:, SCENE_DIM:]
            return scene.copy(), {'task_id': self.task_id.copy(), 'condition': mission.copy()}
        return self.obs.copy(), {'task_id': self.task_id.copy()}

    def step(self, actions: np.ndarray):
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.min() < 0 or actions.max() >= NUM_ACTIONS:
            raise ValueError(f'expected {self.num_envs} actions in 0..{NUM_ACTIONS - 1}, got {actions!r}')
        reward = np.zeros(self.num_envs, dtype = np.float32)
        terminated, truncated = np.zeros(self.num_envs, dtype = bool), np.zeros(self.num_envs, dtype = bool)
        for slot in np.flatnonzero(~self.done):
            env = self.envs[slot]
            obs, reward[slot], terminated[slot], truncated[slot], _ = env.step(int(actions[slot]))
            self.obs[slot] = encode_obs(env, obs)
        self.done |= terminated | truncated
        obs = self.obs[:, :SCENE_DIM] if self.mission_condition else self.obs
        return obs.copy(), reward, terminated, truncated, {'success': reward > 0}

    @property
    def subgoal(self) -> np.ndarray:
        """(N,) label of the instruction each slot pursues now; -1 for a finished slot."""
        return np.array([-1 if done else env.subgoal for env, done in zip(self.envs, self.done)], dtype = np.int64)
