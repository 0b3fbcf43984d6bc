"""Gridworld pinpad: tasks, rules on hand-built layouts, observation encoding,
gymnasium conformance, batched == single env, shortest paths and the expert."""
import collections
import itertools

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from metacontroller.envs import register_envs
from metacontroller.envs.pinpad import (
    ENV_ID,
    NEIGHBOURS,
    NUM_CHANNELS,
    OBS_DIM,
    POST_TRAINING_TASK,
    PRETRAINING_TASKS,
    UNREACHABLE,
    Layout,
    PinpadEnv,
    VecPinpadEnv,
    distance_maps,
    route_lengths,
    task_from_subgoals,
)
from metacontroller.envs.pinpad_expert import PinpadExpert, generate_pinpad_demos, pinpad_action_sets

UP, DOWN, LEFT, RIGHT = range(4)

# Agent '@' between colour 0 (left) and colour 1 (right) in the top row; a wall row below.
LAYOUT = Layout.from_text("""
    0 @ 1 . . . .
    . . . . . . .
    2 . . . . . 3
    . . . . . . .
    4 . . . . . 5
    . . # # # # .
    6 . . . . . 7
""")
# Agent '@' directly above a wall, in the middle of the grid.
WALL_LAYOUT = Layout.from_text("""
    0 . . . . . 1
    . . . . . . .
    2 . . @ . . 3
    . . . # . . .
    4 . # . # . 5
    . . . # . . .
    6 . . . . . 7
""")


def make_env(layout = LAYOUT, task = (0, 1), **kwargs):
    env = PinpadEnv(tasks = [task], **kwargs)
    env.reset(seed = 0, options = {'layout': layout, 'task': task})
    return env


def cell(row, col):
    return row * 7 + col


# ---------------------------------------------------------------- tasks


def test_tasks_are_the_papers():
    table_a1 = {
        (0, 1, 4, 5, 0, 1), (0, 1, 4, 5, 2, 3), (0, 1, 6, 7, 2, 3), (2, 3, 0, 1, 4, 5),
        (2, 3, 6, 7, 2, 3), (2, 3, 6, 7, 4, 5), (4, 5, 0, 1, 4, 5), (4, 5, 0, 1, 6, 7),
        (4, 5, 2, 3, 6, 7), (6, 7, 2, 3, 0, 1), (6, 7, 2, 3, 6, 7), (6, 7, 4, 5, 0, 1),
        (0, 1, 6, 7, 4, 5), (2, 3, 0, 1, 6, 7), (4, 5, 2, 3, 0, 1), (6, 7, 4, 5, 2, 3),
    }
    assert len(PRETRAINING_TASKS) == 16 and set(PRETRAINING_TASKS) == table_a1
    graph = {'A': 'CD', 'B': 'AD', 'C': 'AB', 'D': 'BC'}
    walks = {a + b + c for a in graph for b in graph[a] for c in graph[b]}
    assert set(PRETRAINING_TASKS) == {task_from_subgoals(w) for w in walks}
    assert task_from_subgoals('ACB') == (0, 1, 4, 5, 2, 3)
    assert POST_TRAINING_TASK == (0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3)


def test_layout_text_round_trip_and_errors():
    assert Layout.from_text(LAYOUT.to_text()) == LAYOUT
    assert LAYOUT.agent_cell == cell(0, 1) and LAYOUT.colour_cells[1] == cell(0, 2)
    with pytest.raises(ValueError):
        Layout.from_text(LAYOUT.to_text().replace('7', '.'))
    with pytest.raises(ValueError):
        Layout(tuple(range(8)), (8, 9, 10, 0), 20)  # wall on colour 0


# ---------------------------------------------------------------- rules


def test_visiting_the_next_colour_advances_without_reward():
    env = make_env(task = (0, 1, 2, 3))
    _, reward, terminated, truncated, info = env.step(LEFT)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info['progress'] == 1 and not info['success']


def test_bumping_while_on_a_colour_does_not_revisit_it():
    env = make_env(task = (0, 1))
    env.step(LEFT)  # on colour 0, next target 1
    _, _, terminated, _, info = env.step(UP)  # edge bump: stays on 0, no new visit
    assert not terminated and info['progress'] == 1
    _, _, terminated, _, info = env.step(LEFT)  # edge bump again
    assert not terminated and info['progress'] == 1


def test_reentering_a_visited_colour_fails():
    env = make_env(task = (0, 1))
    env.step(LEFT)
    env.step(RIGHT)  # back to the free start cell
    _, reward, terminated, _, info = env.step(LEFT)  # 0 again, but the target is 1
    assert terminated and reward == 0.0 and not info['success']


def test_wrong_colour_fails():
    env = make_env(task = (0, 1))
    _, reward, terminated, truncated, info = env.step(RIGHT)  # colour 1 before colour 0
    assert (reward, terminated, truncated, info['success'], info['progress']) == (0.0, True, False, False, 0)


def test_completing_the_task_succeeds_with_reward_one():
    env = make_env(task = (0, 1))
    rewards = [env.step(a)[1] for a in (LEFT, RIGHT)]
    _, reward, terminated, truncated, info = env.step(RIGHT)
    assert rewards == [0.0, 0.0] and reward == 1.0 and terminated and not truncated
    assert info['success'] and info['progress'] == 2


def test_wall_and_edge_bumps_do_not_move():
    env = PinpadEnv()
    obs, _ = env.reset(options = {'layout': WALL_LAYOUT})
    new_obs, _, terminated, _, _ = env.step(DOWN)  # wall below
    assert np.array_equal(new_obs, obs) and not terminated and env.core.agent_cell[0] == cell(2, 3)
    env = make_env(task = (0, 1))
    new_obs, _, _, _, _ = env.step(UP)  # top edge
    assert env.core.agent_cell[0] == cell(0, 1) and new_obs.reshape(7, 7, NUM_CHANNELS)[0, 1, 12] == 1


def test_time_limit_truncates():
    env = make_env(task = (0, 1), max_steps = 5)
    flags = [env.step(UP)[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]


def test_finished_env_ignores_actions():
    env = VecPinpadEnv(1)
    env.reset(seed = 0, options = {'layout': LAYOUT, 'task': (0, 1)})
    env.step(np.array([RIGHT]))  # wrong colour: done
    obs, reward, terminated, truncated, info = env.step(np.array([DOWN]))
    assert (reward[0], terminated[0], truncated[0], info['boundary'][0]) == (0.0, False, False, False)
    assert env.agent_cell[0] == cell(0, 2)


def test_subgoal_labels_and_boundaries():
    env = make_env(task = (0, 1, 2, 3))
    infos = [env.step(a)[4] for a in (LEFT, RIGHT, RIGHT, DOWN)]
    # Heading to 0, to 1, entering 1 (still subgoal A), then heading to 2 (subgoal B starts).
    assert [i['subgoal'] for i in infos] == [0, 0, 0, 1]
    assert [i['boundary'] for i in infos] == [True, False, False, True]


def test_options_and_actions_are_validated():
    with pytest.raises(ValueError, match = 'unknown task colour 8'):
        PinpadEnv(tasks = [(0, 8)])
    with pytest.raises(ValueError, match = 'unknown task colour'):
        PinpadEnv().reset(options = {'task': (0, -1)})
    with pytest.raises(ValueError):
        PinpadEnv(tasks = [()])
    env = make_env()
    with pytest.raises(ValueError):
        env.step(4)


# ---------------------------------------------------------------- observation


def test_observation_encoding_is_exact():
    env = PinpadEnv()
    obs, _ = env.reset(seed = 0, options = {'layout': LAYOUT})
    assert obs.shape == (OBS_DIM,) == (637,) and obs.dtype == np.float32
    expected = np.zeros((7, 7, 13), dtype = np.float32)
    for colour, c in enumerate(LAYOUT.colour_cells):
        expected[c // 7, c % 7, colour] = 1
    for wall, c in enumerate(LAYOUT.wall_cells):
        expected[c // 7, c % 7, 8 + wall] = 1
    expected[0, 1, 12] = 1
    assert np.array_equal(obs.reshape(7, 7, 13), expected)
    obs, *_ = env.step(DOWN)
    expected[0, 1, 12], expected[1, 1, 12] = 0, 1  # only the agent channel changes
    assert np.array_equal(obs.reshape(7, 7, 13), expected)


def test_random_observations_are_one_hot_per_object():
    env = VecPinpadEnv(64)
    obs, _ = env.reset(seed = 3)
    grid = obs.reshape(64, 49, 13)
    assert (grid.sum(1) == 1).all()  # each colour, wall and the agent in exactly one cell
    assert (grid.sum(2) <= 1).all()  # at most one thing per cell


# ---------------------------------------------------------------- gymnasium


def test_gymnasium_registration_and_check_env():
    register_envs()  # idempotent
    for mode in ('rgb_array', 'ansi'):
        check_env(gymnasium.make(ENV_ID, render_mode = mode).unwrapped)
    env = gymnasium.make('metacontroller.envs:' + ENV_ID, tasks = [POST_TRAINING_TASK])
    assert env.reset(seed = 1)[0].shape == (637,)
    vec = gymnasium.make_vec(ENV_ID, num_envs = 3)
    assert isinstance(vec, VecPinpadEnv) and vec.reset(seed = 0)[0].shape == (3, 637)


def test_rendering():
    env = make_env(render_mode = 'rgb_array')
    env.step(DOWN)
    image = env.render()
    assert image.shape == (56, 56, 3) and image.dtype == np.uint8
    assert (image[8 + 4, 8 + 4] == 0).all()  # agent at (1, 1): black square
    assert (image[4, 12] == 150).all()  # trail dot at the start cell (0, 1)
    env = make_env(render_mode = 'ansi')
    text = env.render()
    assert 'progress 0/2' in text and '0 @ 1 . . . .' in text


# ---------------------------------------------------------------- batched == single


def test_vec_env_equals_single_envs_step_by_step():
    seeds, steps = [11, 12, 13, 14], 150
    vec = VecPinpadEnv(len(seeds), autoreset = True)
    singles = [PinpadEnv() for _ in seeds]
    vec_obs, _ = vec.reset(seed = seeds)
    single_obs = [env.reset(seed = s)[0] for env, s in zip(singles, seeds)]
    actions = np.random.default_rng(0).integers(0, 4, (steps, len(seeds)))
    for step_actions in actions:
        assert np.array_equal(vec_obs, np.stack(single_obs))
        vec_obs, reward, terminated, truncated, info = vec.step(step_actions)
        for i, env in enumerate(singles):
            obs_i, reward_i, term_i, trunc_i, info_i = env.step(int(step_actions[i]))
            assert (reward[i], terminated[i], truncated[i]) == (reward_i, term_i, trunc_i)
            assert {key: value[i] for key, value in info.items()} == info_i
            single_obs[i] = env.reset()[0] if term_i or trunc_i else obs_i  # autoreset continues the generator


def test_int_seed_means_seed_plus_slot():
    vec = VecPinpadEnv(3)
    obs, _ = vec.reset(seed = 5)
    assert np.array_equal(obs[2], PinpadEnv().reset(seed = 7)[0])


# ---------------------------------------------------------------- shortest paths and expert


def bfs_reference(colour_cells, wall_cells, target):
    """Plain BFS from the target over free cells: moves needed to enter the target."""
    blocked = set(colour_cells) | set(wall_cells)
    dist, queue = {colour_cells[target]: 0}, collections.deque([colour_cells[target]])
    while queue:
        c = queue.popleft()
        for n in NEIGHBOURS[c]:
            if n < 49 and n not in blocked and n not in dist:
                dist[n] = dist[c] + 1
                queue.append(n)
    return dist


def test_distance_maps_match_plain_bfs():
    rng = np.random.default_rng(0)
    cells = np.stack([rng.permutation(49)[:13] for _ in range(100)])
    maps = distance_maps(cells[:, :8], cells[:, 8:12])
    for e, g in itertools.product(range(100), range(8)):
        expected = np.full(50, UNREACHABLE)
        for c, d in bfs_reference(list(cells[e, :8]), list(cells[e, 8:12]), g).items():
            expected[c] = d
        assert np.array_equal(maps[e, g], expected)


@pytest.mark.parametrize('task', [*PRETRAINING_TASKS, POST_TRAINING_TASK])
def test_expert_solves_every_task_on_shortest_routes(task):
    env = VecPinpadEnv(200, tasks = [task])
    env.reset(seed = sum(task))
    routes = route_lengths(env.distances, env.colour_cells, env.agent_cell, env.task_colours)
    expert = PinpadExpert(0.0, seed = 0)
    while not env.done.all():
        env.step(expert.act(env))
    assert env.succeeded.all()
    assert np.array_equal(env.elapsed, routes)  # optimal: every episode as long as its shortest route


def test_layouts_are_resampled_until_solvable_in_time():
    env = VecPinpadEnv(100, tasks = [POST_TRAINING_TASK], max_steps = 40)
    env.reset(seed = 0)
    routes = route_lengths(env.distances, env.colour_cells, env.agent_cell, env.task_colours)
    assert (routes <= 40).all()


def test_expert_ties_are_random_and_seeded():
    env = make_env(WALL_LAYOUT, task = (0, 1))
    # From (2, 3) to colour 0 at (0, 0): up and left both start a shortest path.
    first = {int(PinpadExpert(seed = s).act(env)[0]) for s in range(20)}
    assert first == {UP, LEFT}
    assert PinpadExpert(seed = 1).act(env)[0] == PinpadExpert(seed = 1).act(env)[0]


def test_epsilon_random_actions_never_fail():
    env = VecPinpadEnv(100, autoreset = True)
    env.reset(seed = 0)
    expert = PinpadExpert(epsilon = 1.0, seed = 0)
    for _ in range(100):
        _, reward, terminated, _, _ = env.step(expert.act(env))
        assert (reward[terminated] == 1.0).all()


def test_action_sets_replay_the_dataset():
    """Stored actions are optimal (clean expert) or at least never fatal (ε-noise); each step's
    fatal set is exactly the actions after which the env, rebuilt from the episode's seed and
    replayed to that step, reports a failure."""
    clean, noisy = (generate_pinpad_demos(24, epsilon = eps, seed = 3, num_envs = 8, progress = False) for eps in (0.0, 0.5))
    for dataset in (clean, noisy):
        sets = pinpad_action_sets(dataset)
        taken = np.arange(dataset.num_steps), dataset.actions.astype(np.int64)
        assert not sets.fatal[taken].any() and not (sets.optimal & sets.fatal).any() and sets.optimal.any(1).all()
        assert sets.optimal[taken].all() == (dataset is clean)
    for episode in range(4):
        rows = noisy.rows([episode])
        for t in (0, len(rows) // 2):
            for action in range(4):
                env = PinpadEnv(tasks = [tuple(task) for task in noisy.metadata['tasks']])
                env.reset(seed = int(noisy.seeds[episode]))
                for past in noisy.actions[rows[:t]]:
                    env.step(int(past))
                _, reward, terminated, _, _ = env.step(action)
                assert sets.fatal[rows[t], action] == (terminated and reward == 0.0)


def test_expert_rejects_bad_epsilon():
    for epsilon in (-0.1, 1.5):
        with pytest.raises(ValueError, match = 'epsilon'):
            PinpadExpert(epsilon)


def test_impossible_max_steps_is_refused_up_front():
    with pytest.raises(ValueError, match = r'task \(0, 1, 4, 5, 0, 1\) needs at least 6 moves, more than max_steps = 3'):
        VecPinpadEnv(4, max_steps = 3)
    register_envs()
    with pytest.raises(ValueError, match = r'more than max_steps = 3'):
        gymnasium.make(ENV_ID, max_steps = 3)
    with pytest.raises(ValueError, match = r'needs at least 3 moves'):  # colour 0 twice in a row: leave it, enter it again
        VecPinpadEnv(1, tasks = [(0, 0)], max_steps = 2)
    env = VecPinpadEnv(2, tasks = [(0, 1)], max_steps = 3)
    with pytest.raises(ValueError, match = r'needs at least 12 moves, more than max_steps = 3'):
        env.reset(options = {'task': POST_TRAINING_TASK})


def test_layout_draws_are_capped():
    env = VecPinpadEnv(4, max_steps = 8)  # possible in principle, but hardly any layout is that compact
    with pytest.raises(ValueError, match = r'no layout in 1000 draws let task .* be completed within max_steps = 8'):
        env.reset(seed = 0)


@pytest.mark.parametrize('call, error, match', [
    (lambda: VecPinpadEnv(2).step(np.zeros(2, dtype = int)), gymnasium.error.ResetNeeded, r'call reset\(\) before step\(\)'),
    (lambda: VecPinpadEnv(2, tasks = [0, 1]), ValueError, r'for a single task pass \[\[0, 1\]\]'),
    (lambda: VecPinpadEnv(2).reset(seed = 1.5), TypeError, r'seed must be a non-negative int or a list of 2 of them, got 1.5'),
    (lambda: VecPinpadEnv(2).reset(seed = [0, -1]), TypeError, r'got \[0, -1\]'),
    (lambda: VecPinpadEnv(2).reset(options = {'layouts': LAYOUT}), ValueError, r"unknown reset options \['layouts'\]"),
])
def test_misuse_is_named(call, error, match):
    with pytest.raises(error, match = match):
        call()
