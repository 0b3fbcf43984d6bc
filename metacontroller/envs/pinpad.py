"""Gridworld pinpad, the paper's environment (SPEC §5, paper appendix A.1).

A 7×7 grid holds 8 coloured cells (colours 0..7), 4 wall cells and the agent,
all at distinct random cells. A task is a sequence of colours to visit in
order; a colour is *visited* when the agent enters its cell from another cell.
Visiting the next colour of the task advances it, visiting any other colour
ends the episode as a failure, completing the task ends it with reward 1, and
the episode is truncated after `max_steps` (T = 100) steps.

The rules exist once, in the batched numpy env `VecPinpadEnv`; `PinpadEnv` (the
gymnasium env) is a one-slot view of it. The expert and its demonstrations are in
`pinpad_expert`, the drawing in `pinpad_render`.

Conventions used throughout:
- cells are numbered row-major, `cell = row * 7 + col`, row 0 at the top;
  cell 49 is an off-grid sentinel that behaves like a wall.
- actions 0..3 are up, down, left, right.
- observation (637 float32) = `obs.reshape(7, 7, 13)[row, col, channel]`, with
  channels 0..7 = colour k, 8..11 = wall k, 12 = agent. Neither the task nor
  the progress is in it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from metacontroller.envs.pinpad_render import render_rgb

GRID = 7
NUM_CELLS = GRID * GRID
OFF_GRID = NUM_CELLS  # sentinel cell index for moves that leave the grid
NUM_COLOURS = 8
NUM_WALLS = 4
NUM_ACTIONS = 4
WALL_CHANNEL = NUM_COLOURS
AGENT_CHANNEL = NUM_COLOURS + NUM_WALLS
NUM_CHANNELS = AGENT_CHANNEL + 1
OBS_DIM = NUM_CELLS * NUM_CHANNELS  # 637
MAX_STEPS = 100
MAX_LAYOUT_DRAWS = 1_000  # per reset; a task that fits max_steps comfortably is solvable in nearly every draw
RESET_OPTIONS = ('layout', 'task')
ACTION_NAMES = ('up', 'down', 'left', 'right')
ENV_ID = 'metacontroller/Pinpad-v0'

# ---------------------------------------------------------------- tasks

# Subgoals are colour pairs: A = 0→1, B = 2→3, C = 4→5, D = 6→7.
SUBGOAL_NAMES = 'ABCD'


def task_from_subgoals(names: str) -> tuple[int, ...]:
    """'ACB' -> (0, 1, 4, 5, 2, 3)."""
    unknown = set(names) - set(SUBGOAL_NAMES)
    if not names or unknown:
        raise ValueError(f'subgoal names must be a non-empty string over {SUBGOAL_NAMES!r}, got {names!r}')
    return tuple(c for name in names for c in (2 * SUBGOAL_NAMES.index(name), 2 * SUBGOAL_NAMES.index(name) + 1))


# Exactly the length-3 walks on the subgoal graph A→{C,D}, B→{A,D}, C→{A,B},
# D→{B,C} (paper Table A1); the successor transitions A→B, B→C, C→D, D→A never occur.
PRETRAINING_TASK_NAMES = (
    'ACA', 'ACB', 'ADB', 'ADC',
    'BAC', 'BAD', 'BDB', 'BDC',
    'CAC', 'CAD', 'CBA', 'CBD',
    'DBA', 'DBD', 'DCA', 'DCB',
)
PRETRAINING_TASKS = tuple(task_from_subgoals(name) for name in PRETRAINING_TASK_NAMES)
POST_TRAINING_TASK_NAME = 'ABCDAB'
POST_TRAINING_TASK = task_from_subgoals(POST_TRAINING_TASK_NAME)  # 0-1-2-3-4-5-6-7-0-1-2-3


def validate_task(task: Sequence[int]) -> tuple[int, ...]:
    """Return `task` as a tuple of colours, or raise ValueError naming the bad colour."""
    if isinstance(task, str) or len(task) == 0:
        raise ValueError(f'a task is a non-empty sequence of colours 0..{NUM_COLOURS - 1}, got {task!r}')
    for colour in task:
        if not isinstance(colour, (int, np.integer)) or isinstance(colour, bool) or not 0 <= colour < NUM_COLOURS:
            raise ValueError(f'unknown task colour {colour!r} in task {tuple(task)}: colours are 0..{NUM_COLOURS - 1}')
    return tuple(int(c) for c in task)


def min_moves(task: tuple[int, ...]) -> int:
    """Fewest moves any layout allows: one per visit, two to visit a colour again right away."""
    return len(task) + sum(a == b for a, b in zip(task, task[1:]))


# ---------------------------------------------------------------- geometry


def _neighbour_table() -> np.ndarray:
    """(50, 4) cell reached by each action; OFF_GRID when the move leaves the grid."""
    table = np.full((NUM_CELLS + 1, NUM_ACTIONS), OFF_GRID, dtype = np.int64)
    for cell in range(NUM_CELLS):
        row, col = divmod(cell, GRID)
        for action, (dr, dc) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
            if 0 <= row + dr < GRID and 0 <= col + dc < GRID:
                table[cell, action] = (row + dr) * GRID + col + dc
    return table


NEIGHBOURS = _neighbour_table()
NEIGHBOURS.flags.writeable = False


def quarter_turn(k: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid turned k quarter turns anticlockwise, as index maps (cells (49,), actions (4,)): the turned
    grid's cell i is the old cell cells[i], and the old move a is the turned move actions[a]. Layouts are
    uniform over cells, so a turned episode is another valid episode, with every colour at another place."""
    cells = np.rot90(np.arange(NUM_CELLS).reshape(GRID, GRID), k).flatten()   # a copy: rot90 gives a view
    turned = np.argsort(cells)                                   # old cell -> its index in the turned grid
    centre = NUM_CELLS // 2                                      # the centre stays; its neighbours turn
    actions = [list(NEIGHBOURS[centre]).index(turned[NEIGHBOURS[centre, a]]) for a in range(NUM_ACTIONS)]
    return cells, np.array(actions)


@dataclass(frozen = True)
class Layout:
    """Where everything is: cell of colour k, cell of wall k, agent start cell."""

    colour_cells: tuple[int, ...]  # (8,)
    wall_cells: tuple[int, ...]  # (4,)
    agent_cell: int

    def __post_init__(self):
        object.__setattr__(self, 'colour_cells', tuple(int(c) for c in self.colour_cells))
        object.__setattr__(self, 'wall_cells', tuple(int(c) for c in self.wall_cells))
        object.__setattr__(self, 'agent_cell', int(self.agent_cell))
        cells = (*self.colour_cells, *self.wall_cells, self.agent_cell)
        if len(self.colour_cells) != NUM_COLOURS or len(self.wall_cells) != NUM_WALLS:
            raise ValueError(f'a layout has {NUM_COLOURS} colours and {NUM_WALLS} walls, got {self}')
        if len(set(cells)) != len(cells) or not all(0 <= c < NUM_CELLS for c in cells):
            raise ValueError(f'layout cells must be distinct cells in 0..{NUM_CELLS - 1}, got {self}')

    @classmethod
    def from_text(cls, text: str) -> Layout:
        """Parse 7 rows of 7 symbols (whitespace ignored): '0'..'7' colour,
        '#' wall (numbered in reading order), '@' agent, '.' empty."""
        symbols = ''.join(text.split())
        if len(symbols) != NUM_CELLS or set(symbols) - set('01234567#@.'):
            raise ValueError(f"a layout text has {NUM_CELLS} symbols from '01234567#@.', got {text!r}")
        colours = {int(s): cell for cell, s in enumerate(symbols) if s.isdigit()}
        if sorted(colours) != list(range(NUM_COLOURS)) or symbols.count('@') != 1:
            raise ValueError(f"a layout text needs each colour 0..7 once and one '@', got {text!r}")
        walls = tuple(cell for cell, s in enumerate(symbols) if s == '#')
        return cls(tuple(colours[k] for k in range(NUM_COLOURS)), walls, symbols.index('@'))

    def to_text(self) -> str:
        return grid_text(np.array(self.colour_cells), np.array(self.wall_cells), self.agent_cell)


def grid_text(colour_cells: np.ndarray, wall_cells: np.ndarray, agent_cell: int, trail: np.ndarray | None = None) -> str:
    """Text grid in `Layout.from_text` symbols; with a (49,) bool trail, visited empty cells show '*'."""
    symbols = np.full(NUM_CELLS, '.')
    if trail is not None:
        symbols[trail] = '*'
    symbols[colour_cells] = [str(k) for k in range(NUM_COLOURS)]
    symbols[wall_cells] = '#'
    symbols[agent_cell] = '@'
    return '\n'.join(' '.join(symbols[r * GRID:(r + 1) * GRID]) for r in range(GRID))


# ---------------------------------------------------------------- shortest paths

UNREACHABLE = 10_000  # distance for cells from which a target cannot be reached

# Bitboards: bit c of a uint64 is cell c, so a BFS frontier over a batch of
# layouts expands with a few shifts and masks instead of per-cell gathers.
_CELL_BIT = np.left_shift(np.uint64(1), np.arange(NUM_CELLS + 1, dtype = np.uint64))  # (50,)
_ON_GRID = np.bitwise_or.reduce(_CELL_BIT[:NUM_CELLS])
_NOT_COL_0, _NOT_COL_6 = (np.bitwise_or.reduce(_CELL_BIT[:NUM_CELLS][np.arange(NUM_CELLS) % GRID != col]) for col in (0, GRID - 1))
_ROW_SHIFT, _COL_SHIFT = np.uint64(GRID), np.uint64(1)


def _expand(cells: np.ndarray) -> np.ndarray:
    """Bitboards of the cells one move away from `cells` (moves off the grid dropped)."""
    vertical = (cells >> _ROW_SHIFT) | (cells << _ROW_SHIFT)
    return vertical | ((cells << _COL_SHIFT) & _NOT_COL_0) | ((cells >> _COL_SHIFT) & _NOT_COL_6)


def distance_maps(colour_cells: np.ndarray, wall_cells: np.ndarray) -> np.ndarray:
    """BFS distance maps, batched over layouts: (E, 8), (E, 4) -> (E, 8, 50) int16.

    dist[e, g, c] = fewest moves from cell c to *enter* colour g's cell when
    only free cells (no wall, no other colour) may be entered on the way: 0 at
    g's cell, UNREACHABLE at walls, other colours, the sentinel and cut-off
    cells. These are the expert's obstacles and the solvability rule. An agent
    may stand on an obstacle (the colour it just visited) and leave it, so the
    moves needed from any cell p are `1 + min(dist[e, g, NEIGHBOURS[p]])`
    (see `route_lengths`), which equals dist[e, g, p] for free p.
    """
    occupied = np.bitwise_or.reduce(_CELL_BIT[np.concatenate([colour_cells, wall_cells], axis = 1)], axis = 1)
    free = (~occupied & _ON_GRID)[:, None]  # (E, 1)
    reached = [_CELL_BIT[colour_cells]]  # reached[k] (E, 8): cells within k moves of each target
    while True:
        grown = reached[-1] | (_expand(reached[-1]) & free)
        if not (grown != reached[-1]).any():
            break
        reached.append(grown)
    layers = np.stack(reached).astype('<u8').view(np.uint8)  # (K, E, 8 * 8 bytes)
    inside = np.unpackbits(layers.reshape(*layers.shape[:2], NUM_COLOURS, 8), axis = -1, bitorder = 'little')
    inside = inside[..., :NUM_CELLS + 1].sum(0, dtype = np.int16)  # (E, 8, 50): layers containing the cell
    # A cell first reached at layer k lies in the last K - k layers.
    return np.where(inside > 0, len(reached) - inside, UNREACHABLE).astype(np.int16)


def route_lengths(dist: np.ndarray, colour_cells: np.ndarray, agent_cell: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Moves the shortest route needs to visit `targets` in order: (E,) int64.

    dist (E, 8, 50); colour_cells (E, 8); agent_cell (E,); targets (E, L)
    padded with -1. Each leg starts where the previous target was entered.
    At least UNREACHABLE when some leg is impossible.
    """
    rows = np.arange(len(targets))[:, None]
    valid = targets >= 0
    starts = np.concatenate([agent_cell[:, None], colour_cells[rows, targets[:, :-1]]], axis = 1)  # (E, L)
    legs = 1 + dist[rows[..., None], targets[..., None], NEIGHBOURS[starts]].min(-1).astype(np.int64)
    return np.where(valid, legs, 0).sum(1)


# ---------------------------------------------------------------- batched env


class VecPinpadEnv(VectorEnv):
    """N pinpad episodes stepped together with numpy.

    Each slot owns a numpy Generator (seeded with `seed + i`, or `seed[i]` for
    a list), which draws its task (uniform over `tasks`) and then layouts until
    the task's shortest route fits in `max_steps`; so slot i behaves exactly
    like `PinpadEnv` reset with the same seed. A task longer than `max_steps`
    allows is refused when it is given, and reset gives up after
    MAX_LAYOUT_DRAWS draws rather than search forever.

    `step(actions)` returns obs (N, 637) float32, reward (N,) float32,
    terminated (N,), truncated (N,), info with per-slot arrays describing the
    step just taken:
      subgoal  (N,) int: pair (0..3 = A..D) of the colour the agent was heading
               to when it acted, i.e. target colour // 2; -1 for a finished slot.
      boundary (N,) bool: this step starts a new subgoal: the episode's first
               step (t = 0 counts) or subgoal != the previous step's subgoal.
      success  (N,) bool: the episode ended with the task completed.
      entered_subgoal (N,) int: pair (0..3) of the colour cell the agent entered,
               -1 none; a colour other than the target ends the episode.
      progress (N,) int: task colours visited so far.
      task_id  (N,) int: index into `tasks` (-1 for a task given via options).
    With `autoreset=True` finished slots are reset in the same call (gymnasium
    SAME_STEP mode): their returned obs is the first obs of the new episode and
    info still describes the finished one. Without it a finished slot ignores
    actions (reward 0, never terminated or truncated again) until `reset`.
    """

    metadata = {'render_modes': ['rgb_array', 'ansi'], 'render_fps': 4}

    def __init__(
        self,
        num_envs: int,
        tasks: Sequence[Sequence[int]] = PRETRAINING_TASKS,
        max_steps: int = MAX_STEPS,
        autoreset: bool = False,
        render_mode: str | None = None,
    ):
        if num_envs < 1 or max_steps < 1:
            raise ValueError(f'num_envs and max_steps must be >= 1, got {num_envs}, {max_steps}')
        if len(tasks) == 0:
            raise ValueError('tasks must contain at least one task')
        if any(isinstance(task, (int, np.integer)) for task in tasks):
            raise ValueError(f'tasks must be a list of tasks, each a sequence of colours, got {list(tasks)!r}: '
                             f'for a single task pass [{list(tasks)!r}]')
        if render_mode not in (None, *self.metadata['render_modes']):
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.metadata = {**self.metadata, 'autoreset_mode': AutoresetMode.SAME_STEP if autoreset else AutoresetMode.DISABLED}
        self.num_envs, self.max_steps, self.autoreset, self.render_mode = num_envs, max_steps, autoreset, render_mode
        self.tasks = tuple(validate_task(task) for task in tasks)
        self.single_observation_space = gymnasium.spaces.Box(0.0, 1.0, (OBS_DIM,), np.float32)
        self.single_action_space = gymnasium.spaces.Discrete(NUM_ACTIONS)
        self.observation_space = gymnasium.spaces.Box(0.0, 1.0, (num_envs, OBS_DIM), np.float32)
        self.action_space = gymnasium.spaces.MultiDiscrete(np.full(num_envs, NUM_ACTIONS))
        self.rngs = [np.random.default_rng() for _ in range(num_envs)]
        self._task_rows: dict[tuple[int, ...], int] = {}
        self._task_table = np.zeros((0, 1), dtype = np.int64)  # (K, Lmax + 1) colours, -1 padded
        self._task_lens = np.zeros(0, dtype = np.int64)  # (K,)
        for task in self.tasks:
            self._task_row(task)
        self._allocate_state()

    def _allocate_state(self):
        n = self.num_envs
        self._slots = np.arange(n)
        self.colour_cells = np.zeros((n, NUM_COLOURS), dtype = np.int64)
        self.wall_cells = np.zeros((n, NUM_WALLS), dtype = np.int64)
        self.agent_cell = np.zeros(n, dtype = np.int64)
        self.cell_colour = np.full((n, NUM_CELLS + 1), -1, dtype = np.int64)  # colour in each cell, -1 none
        self.blocked = np.zeros((n, NUM_CELLS + 1), dtype = bool)  # walls and the off-grid sentinel
        self.distances = np.zeros((n, NUM_COLOURS, NUM_CELLS + 1), dtype = np.int16)  # see distance_maps
        self.task_row = np.zeros(n, dtype = np.int64)  # row of the slot's task in the task table
        self.progress = np.zeros(n, dtype = np.int64)
        self.elapsed = np.zeros(n, dtype = np.int64)  # steps taken this episode
        self.done = np.ones(n, dtype = bool)  # finished, waiting for reset
        self.trail = np.zeros((n, NUM_CELLS), dtype = bool)  # cells the agent has stood on (rendering)
        self._last_subgoal = np.full(n, -1, dtype = np.int64)
        self._obs = np.zeros((n, OBS_DIM), dtype = np.float32)
        self._was_reset = False

    # ------------------------------------------------------------ tasks

    def _task_row(self, task: tuple[int, ...]) -> int:
        """Row of `task` in the task table, appending it (and widening the table) if new."""
        if min_moves(task) > self.max_steps:
            raise ValueError(f'task {task} needs at least {min_moves(task)} moves, more than max_steps = {self.max_steps}: '
                             f'no episode could complete it')
        if task not in self._task_rows:
            width = max(self._task_table.shape[1], len(task) + 1)
            table = np.full((len(self._task_lens) + 1, width), -1, dtype = np.int64)
            table[:-1, :self._task_table.shape[1]] = self._task_table
            table[-1, :len(task)] = task
            self._task_table, self._task_lens = table, np.append(self._task_lens, len(task))
            self._task_rows[task] = len(self._task_lens) - 1
        return self._task_rows[task]

    @property
    def target(self) -> np.ndarray:
        """(N,) colour each slot must visit next; -1 once its task is complete."""
        return self._task_table[self.task_row, self.progress]

    @property
    def subgoal(self) -> np.ndarray:
        """(N,) pair (0..3 = A..D) of the colour each slot heads to now: the label its next step
        will carry in a demonstration; -1 once its task is complete."""
        return self.target // 2

    @property
    def task_id(self) -> np.ndarray:
        """(N,) index of each slot's current task in `tasks`; -1 for a task given via options."""
        return np.where(self.task_row < len(self.tasks), self.task_row, -1)

    @property
    def task_colours(self) -> np.ndarray:
        """(N, L) each slot's task, padded with -1."""
        return self._task_table[self.task_row]

    @property
    def succeeded(self) -> np.ndarray:
        """(N,) the slot's task is complete."""
        return self.progress == self._task_lens[self.task_row]

    # ------------------------------------------------------------ reset

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        """Reset every slot. options: "layout" (a Layout, or one per slot) and
        "task" (a colour sequence, or one per slot) override the random draw;
        a given layout is used as is, without the solvability check."""
        if seed is not None:
            self.rngs = [np.random.default_rng(s) for s in self._seeds(seed)]
        options = options or {}
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(f'unknown reset options {sorted(unknown)}: the options are {RESET_OPTIONS}')
        self.reset_slots(self._slots, layouts = _per_slot(options.get('layout'), self.num_envs, Layout),
                         tasks = _per_slot(options.get('task'), self.num_envs, None))
        return self._obs.copy(), {'task_id': self.task_id, 'subgoal': self.target // 2}

    def _seeds(self, seed: int | Sequence[int]) -> list[int]:
        """One non-negative int seed per slot: `seed + i`, or the i-th of a list."""
        seeds = [seed + i for i in range(self.num_envs)] if _is_int(seed) else seed
        if isinstance(seeds, (str, bytes)) or not hasattr(seeds, '__len__') or not all(_is_int(s) and s >= 0 for s in seeds):
            raise TypeError(f'seed must be a non-negative int or a list of {self.num_envs} of them, got {seed!r}')
        if len(seeds) != self.num_envs:
            raise ValueError(f'expected {self.num_envs} seeds, got {len(seeds)}')
        return list(seeds)

    def reset_slots(self, slots: np.ndarray, layouts: Sequence[Layout] | None = None, tasks: Sequence[Sequence[int]] | None = None):
        """Start new episodes in `slots` (int array), continuing their generators."""
        if tasks is None:
            rows = np.array([self.rngs[i].integers(len(self.tasks)) for i in slots], dtype = np.int64)
        else:
            rows = np.array([self._task_row(validate_task(task)) for task in tasks], dtype = np.int64)
        self.task_row[slots] = rows
        if layouts is None:
            self._sample_layouts(slots)
        else:
            cells = np.array([(*lay.colour_cells, *lay.wall_cells, lay.agent_cell) for lay in layouts], dtype = np.int64)
            self._install_layouts(slots, cells, self._layout_distances(cells))
        self.progress[slots] = 0
        self.elapsed[slots] = 0
        self.done[slots] = False
        self._last_subgoal[slots] = -1
        self._was_reset = True

    def _sample_layouts(self, slots: np.ndarray):
        """Draw layouts until each slot's task is solvable within max_steps (same BFS as the expert)."""
        for _ in range(MAX_LAYOUT_DRAWS):
            if not len(slots):
                return
            # 13 distinct cells per slot: colours 0..7, walls 0..3, agent.
            cells = np.stack([self.rngs[i].permutation(NUM_CELLS)[:NUM_COLOURS + NUM_WALLS + 1] for i in slots])
            dist = self._layout_distances(cells)
            targets = self._task_table[self.task_row[slots]]
            ok = route_lengths(dist, cells[:, :NUM_COLOURS], cells[:, -1], targets) <= self.max_steps
            self._install_layouts(slots[ok], cells[ok], dist[ok])
            slots = slots[~ok]
        if len(slots):
            task = tuple(self._task_table[self.task_row[slots[0]], :self._task_lens[self.task_row[slots[0]]]].tolist())
            raise ValueError(f'no layout in {MAX_LAYOUT_DRAWS} draws let task {task} be completed within max_steps = {self.max_steps}: '
                             f'raise max_steps (the default is {MAX_STEPS})')

    @staticmethod
    def _layout_distances(cells: np.ndarray) -> np.ndarray:
        return distance_maps(cells[:, :NUM_COLOURS], cells[:, NUM_COLOURS:NUM_COLOURS + NUM_WALLS])

    def _install_layouts(self, slots: np.ndarray, cells: np.ndarray, dist: np.ndarray):
        """Write layouts (cells: (E, 13) = colours, walls, agent) and rebuild their observations."""
        colours, walls, agent = cells[:, :NUM_COLOURS], cells[:, NUM_COLOURS:-1], cells[:, -1]
        col = slots[:, None]
        self.colour_cells[slots], self.wall_cells[slots], self.agent_cell[slots] = colours, walls, agent
        self.distances[slots] = dist
        self.cell_colour[slots] = -1
        self.cell_colour[col, colours] = np.arange(NUM_COLOURS)
        self.blocked[slots] = False
        self.blocked[slots, OFF_GRID] = True
        self.blocked[col, walls] = True
        self.trail[slots] = False
        self.trail[slots, agent] = True
        self._obs[slots] = 0.0
        self._obs[col, colours * NUM_CHANNELS + np.arange(NUM_COLOURS)] = 1.0
        self._obs[col, walls * NUM_CHANNELS + WALL_CHANNEL + np.arange(NUM_WALLS)] = 1.0
        self._obs[slots, agent * NUM_CHANNELS + AGENT_CHANNEL] = 1.0

    # ------------------------------------------------------------ step

    def step(self, actions: np.ndarray):
        """Apply one action per slot: (N,) ints in 0..3 (see class docstring for the returns)."""
        if not self._was_reset:
            raise gymnasium.error.ResetNeeded('call reset() before step(): no episode has started yet')
        actions = np.asarray(actions)
        if (actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer)
                or actions.min() < 0 or actions.max() >= NUM_ACTIONS):
            raise ValueError(f'expected {self.num_envs} actions in 0..{NUM_ACTIONS - 1}, got {actions!r}')
        slots, pos, live = self._slots, self.agent_cell, ~self.done
        target = self.target
        step_to = NEIGHBOURS[pos, actions]
        # A bump (wall, edge) or a finished slot does not move, hence visits nothing.
        new = np.where(self.blocked[slots, step_to] | self.done, pos, step_to)
        colour = np.where(new != pos, self.cell_colour[slots, new], -1)  # colour visited, -1 none
        correct = (colour >= 0) & (colour == target)
        self.progress += correct
        success = correct & (self.progress == self._task_lens[self.task_row])
        terminated = ((colour >= 0) & ~correct) | success
        self.elapsed += live
        truncated = live & ~terminated & (self.elapsed >= self.max_steps)
        subgoal = target // 2
        boundary = live & (subgoal != self._last_subgoal)
        self._last_subgoal = subgoal.copy()  # reset_slots writes into it; info keeps `subgoal`
        # Only the agent channel changes: clear the old cell, set the new one.
        self._obs[slots, pos * NUM_CHANNELS + AGENT_CHANNEL] = 0.0
        self._obs[slots, new * NUM_CHANNELS + AGENT_CHANNEL] = 1.0
        self.trail[slots, new] = True
        self.agent_cell = new
        entered = np.where(colour >= 0, colour // 2, -1)
        info = {'subgoal': subgoal, 'boundary': boundary, 'success': success, 'entered_subgoal': entered,
                'progress': self.progress.copy(), 'task_id': self.task_id}
        self.done |= terminated | truncated
        if self.autoreset and self.done.any():
            self.reset_slots(np.flatnonzero(self.done))
        return self._obs.copy(), success.astype(np.float32), terminated, truncated, info

    # ------------------------------------------------------------ rendering

    def render_slot(self, slot: int, mode: str | None = None) -> np.ndarray | str:
        """Slot `slot` as an rgb_array image (56, 56, 3) uint8 or as ansi text."""
        mode = mode or self.render_mode
        if mode == 'rgb_array':
            return render_rgb(self.colour_cells[slot], self.wall_cells[slot], int(self.agent_cell[slot]), self.trail[slot], GRID)
        if mode == 'ansi':
            task = self._task_table[self.task_row[slot], :self._task_lens[self.task_row[slot]]]
            header = f"task {'-'.join(map(str, task))}  progress {self.progress[slot]}/{len(task)}  t={self.elapsed[slot]}"
            grid = grid_text(self.colour_cells[slot], self.wall_cells[slot], int(self.agent_cell[slot]), self.trail[slot])
            return f'{header}\n{grid}\n'
        raise ValueError(f"render mode must be one of {self.metadata['render_modes']}, got {mode!r}")

    def render(self) -> tuple[np.ndarray | str, ...] | None:
        if self.render_mode is None:
            return None
        return tuple(self.render_slot(i) for i in range(self.num_envs))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _per_slot(value: Any, num: int, single_type: type | None) -> list | None:
    """Broadcast a single layout/task option to all slots; pass per-slot lists through."""
    if value is None:
        return None
    is_single = isinstance(value, single_type) if single_type else len(value) == 0 or isinstance(value[0], (int, np.integer))
    values = [value] * num if is_single else list(value)
    if len(values) != num:
        raise ValueError(f'expected one option value or {num} of them, got {len(values)}')
    return values


# ---------------------------------------------------------------- gymnasium env


class PinpadEnv(gymnasium.Env):
    """The gymnasium env (id `metacontroller/Pinpad-v0`): a one-slot `VecPinpadEnv`.

    reset(seed=..., options={"layout": Layout, "task": colours}) as in
    `VecPinpadEnv.reset`; info holds scalars with the same keys. `core` is the
    underlying one-slot batched env (the expert acts on it).
    """

    metadata = VecPinpadEnv.metadata

    def __init__(self, tasks: Sequence[Sequence[int]] = PRETRAINING_TASKS, max_steps: int = MAX_STEPS, render_mode: str | None = None):
        self.core = VecPinpadEnv(1, tasks = tasks, max_steps = max_steps, render_mode = render_mode)
        self.observation_space = self.core.single_observation_space
        self.action_space = self.core.single_action_space
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed = seed)
        # The core's generator *is* this env's np_random, seeded as slot 0 of a vec env.
        obs, info = self.core.reset(seed = None if seed is None else [seed], options = options)
        self.np_random = self.core.rngs[0]
        return obs[0], _first(info)

    def step(self, action: int):
        obs, reward, terminated, truncated, info = self.core.step(np.array([action]))
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), _first(info)

    def render(self) -> np.ndarray | str | None:
        return None if self.render_mode is None else self.core.render_slot(0)


def _first(info: dict[str, np.ndarray]) -> dict[str, Any]:
    return {key: value[0].item() for key, value in info.items()}
