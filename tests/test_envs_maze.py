"""Maze2d tasks: the PointMaze wrapper (D4RL eval goal, start, reward), the waypoint expert, the recipe."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics")

from fastpolicy.envs.maze import (  # noqa: E402
    GOAL_RADIUS,
    MAZES,
    OBS_LAYOUT,
    WaypointController,
    cell_center,
    d4rl_to_xy,
    eval_goal_xy,
    measure_reference,
    next_cell_table,
    plan_cells,
    rollout_returns,
    xy_to_cell,
    xy_to_d4rl,
    xy_velocity_to_d4rl,
)
from fastpolicy.envs.registry import get_task, make_env  # noqa: E402

# D4RL's eval targets mapped to gymnasium-robotics coordinates (documented in fastpolicy/envs/maze.py).
DOCUMENTED_GOALS = {"maze2d-umaze": (-0.8, 0.8), "maze2d-medium": (2.7, -2.7), "maze2d-large": (3.7, -3.2)}


@pytest.fixture(scope="module")
def umaze():
    env = make_env("maze2d-umaze")
    yield env
    env.close()


# ----------------------------------------------------------------------------- wrapper


def test_observation_layout_and_space(umaze):
    obs, info = umaze.reset(seed=3)
    assert umaze.observation_space.shape == (len(OBS_LAYOUT),) == (6,)
    assert umaze.observation_space.dtype == np.float32 and obs.dtype == np.float32
    assert obs in umaze.observation_space
    u = umaze.unwrapped
    np.testing.assert_allclose(obs[:2], u.data.qpos, atol=1e-6)
    np.testing.assert_allclose(obs[2:4], u.data.qvel, atol=1e-6)
    np.testing.assert_allclose(obs[4:6], DOCUMENTED_GOALS["maze2d-umaze"], atol=1e-6)
    assert isinstance(info["success"], bool)
    obs2, reward, terminated, truncated, info = umaze.step(np.zeros(2, dtype=np.float32))
    assert obs2.shape == (6,) and obs2.dtype == np.float32
    np.testing.assert_allclose(obs2[:2], u.data.qpos, atol=1e-6)
    assert reward in (0.0, 1.0) and not terminated and not truncated


def test_check_env_passes_on_wrapped_env():
    from gymnasium.utils.env_checker import check_env

    env = make_env("maze2d-umaze")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "env is wrapped" and "Box bound is infinite" notices
        check_env(env, skip_render_check=True)  # rendering needs a display; not part of the task
        check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("name", sorted(MAZES))
def test_eval_goal_is_d4rl_target(name):
    env = make_env(name)
    maze_map = env.unwrapped.maze.maze_map
    spec = MAZES[name]
    np.testing.assert_allclose(eval_goal_xy(spec, maze_map), DOCUMENTED_GOALS[name], atol=1e-12)
    # the target sits in D4RL's 'G' cell, 0.2 past its centre along +row (−y) and +column (+x)
    assert xy_to_cell(DOCUMENTED_GOALS[name], maze_map) == spec.d4rl_goal
    np.testing.assert_allclose(np.subtract(DOCUMENTED_GOALS[name], cell_center(spec.d4rl_goal, maze_map)),
                               [0.2, -0.2], atol=1e-12)
    for seed in (0, 1, 2):
        obs, info = env.reset(seed=seed)
        np.testing.assert_allclose(env.unwrapped.goal, DOCUMENTED_GOALS[name], atol=1e-12)
        np.testing.assert_allclose(obs[4:6], DOCUMENTED_GOALS[name], atol=1e-6)
    card = get_task(name).reference
    assert tuple(card["d4rl_goal"]) == spec.d4rl_goal
    np.testing.assert_allclose(card["eval_goal_xy"], DOCUMENTED_GOALS[name], atol=1e-12)
    env.close()


def test_coordinate_mapping_matches_d4rl_geometry():
    from gymnasium_robotics.envs.maze.maps import LARGE_MAZE

    rng = np.random.default_rng(0)
    q = rng.uniform(0, 8, size=(50, 2))
    np.testing.assert_allclose(xy_to_d4rl(d4rl_to_xy(q, LARGE_MAZE), LARGE_MAZE), q, atol=1e-12)
    # D4RL's wall box of cell (i, j) is at world (i+1, j+1) and its particle origin at world (1.2, 1.2),
    # so the cell centre is qpos (i-0.2, j-0.2): it must land on gymnasium-robotics' centre of (i, j).
    for i in range(len(LARGE_MAZE)):
        for j in range(len(LARGE_MAZE[0])):
            np.testing.assert_allclose(d4rl_to_xy(np.array([i - 0.2, j - 0.2]), LARGE_MAZE),
                                       cell_center((i, j), LARGE_MAZE), atol=1e-12)
    # a move along D4RL's +row is a move along gymnasium-robotics' −y
    np.testing.assert_allclose(xy_velocity_to_d4rl(np.array([0.0, -1.0])), [1.0, 0.0])


def test_reward_uses_d4rl_radius_and_success_latches(umaze):
    umaze.reset(seed=0)
    u = umaze.unwrapped
    goal = u.goal.copy()
    for dist, expected in ((0.47, 1.0), (0.55, 0.0)):  # 0.47: inside D4RL's 0.5, outside gym-robotics' 0.45
        u.point_env.set_state(goal + np.array([dist, 0.0]), np.zeros(2))
        _, reward, _, _, info = umaze.step(np.zeros(2))
        assert info["distance"] == pytest.approx(dist, abs=1e-3)
        assert reward == expected and info["at_goal"] == bool(expected)
        assert info["env_reward"] == 0.0  # gymnasium-robotics' own sparse reward (0.45) says no
        assert info["success"]  # reached once → stays True for the episode
    _, info = umaze.reset(seed=0)
    assert info["success"] == (info["distance"] <= GOAL_RADIUS)


def test_seeding_only_through_reset(umaze):
    a, _ = umaze.reset(seed=7)
    b, _ = umaze.reset(seed=7)
    np.testing.assert_array_equal(a, b)
    starts = {tuple(np.round(umaze.reset(seed=s)[0][:2], 3)) for s in range(40)}
    assert len(starts) == 40
    # D4RL starts are uniform over every free cell, the goal cell included
    maze_map = umaze.unwrapped.maze.maze_map
    cells = {xy_to_cell(s, maze_map) for s in starts}
    assert MAZES["maze2d-umaze"].d4rl_goal in cells and len(cells) >= 6


# ----------------------------------------------------------------------------- expert


def test_q_iteration_plan_follows_the_u():
    from gymnasium_robotics.envs.maze.maps import U_MAZE

    assert plan_cells(U_MAZE, (3, 1), (1, 1)) == [(3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    assert plan_cells(U_MAZE, (1, 1), (1, 1)) == [(1, 1)]
    with pytest.raises(ValueError, match="wall"):
        plan_cells(U_MAZE, (1, 1), (2, 1))
    next_cell_table.cache_clear()
    plan_cells(U_MAZE, (3, 3), (1, 1))
    plan_cells(U_MAZE, (1, 3), (1, 1))
    assert next_cell_table.cache_info().hits == 1  # Q-iteration runs once per (maze, goal cell)


def test_expert_reaches_goal_on_umaze(umaze):
    expert = WaypointController(umaze.unwrapped.maze.maze_map, rng=np.random.default_rng(0))
    result = rollout_returns(umaze, expert, episodes=10, seed=100, reset=expert.reset)
    assert result["success"].mean() >= 0.8
    # continuing task: once there the expert stays, so the return is far above D4RL's REF_MAX
    assert result["returns"].mean() > get_task("maze2d-umaze").score["ref_max"]


def test_card_reference_matches_measurement():
    card = get_task("maze2d-umaze").reference
    measured = measure_reference("maze2d-umaze", episodes=card["episodes"], seed=card["seed"])
    for key in ("expert_return", "random_return", "d4rl_script_expert_return"):
        assert measured[f"{key}_mean"] == pytest.approx(card[key], rel=0.03), key
    assert measured["expert_success"] == card["expert_success"]
    # D4RL's reference script (controller never reset) must land near D4RL's REF_MAX, random near REF_MIN
    score = get_task("maze2d-umaze").score
    assert measured["d4rl_script_expert_return_mean"] == pytest.approx(score["ref_max"], rel=0.15)
    assert measured["random_return_mean"] == pytest.approx(score["ref_min"], abs=10)


# ----------------------------------------------------------------------------- recipe


def _chunks(size: int, seed: int, name: str = "maze2d-umaze") -> dict[str, np.ndarray]:
    from fastpolicy.data.recipes.maze import iter_maze_chunks

    eps = list(iter_maze_chunks(name, size, seed=seed))
    return {k: np.concatenate([e[k] for e in eps]) for k in eps[0]}


def test_recipe_is_deterministic():
    a, b, c = _chunks(700, 0), _chunks(700, 0), _chunks(700, 1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["obs"], c["obs"])


def test_recipe_store_layout(tmp_path):
    from fastpolicy.data.recipes import all_recipes, make_dataset
    from fastpolicy.data.store import EpisodeStore

    assert {"maze2d-umaze", "maze2d-medium", "maze2d-large"} <= set(all_recipes())
    size = 2000
    store = make_dataset("maze2d-umaze", tmp_path / "umaze", size=size, seed=0, progress=False)
    assert isinstance(store, EpisodeStore) and store.n_steps == size
    np.testing.assert_array_equal(store.episode_ends, [300, 600, 900, 1200, 1500, 1800, 2000])
    timeout, terminal = store.array("timeout"), store.array("terminal")
    assert np.flatnonzero(timeout).tolist() == (store.episode_ends - 1).tolist() and not terminal.any()
    obs, goal, qpos = store.array("obs"), store.array("infos/goal"), store.array("infos/qpos")
    assert obs.shape == (size, 6) and store.array("action").shape == (size, 2)
    assert np.abs(store.array("action")).max() <= 1.0
    np.testing.assert_array_equal(obs[:, 4:6], goal)
    np.testing.assert_array_equal(obs[:, :2], qpos.astype(np.float32))
    np.testing.assert_array_equal(obs[:, 2:4], store.array("infos/qvel").astype(np.float32))
    # one continuing run: the next row's position is the state after this row's action
    reward = store.array("reward")
    dist_after = np.linalg.norm(qpos[1:] - goal[:-1], axis=1)
    np.testing.assert_array_equal(reward[:-1], (dist_after <= GOAL_RADIUS).astype(np.float32))
    assert reward.sum() > 0
    switches = np.flatnonzero(np.any(goal[1:] != goal[:-1], axis=1))
    assert len(switches) >= 5  # the goal moves on when reached, without resetting the ball
    assert np.all(np.linalg.norm(qpos[switches] - goal[switches], axis=1) < 0.1)  # expert said "reached"
    attrs = store.attrs
    assert attrs["source"] == "fastpolicy recipe" and attrs["recipe"] == "maze2d-umaze"
    assert attrs["env_id"] == "PointMaze_UMaze-v3" and attrs["seed"] == 0 and attrs["noise"] == 0.5
    assert (attrs["ref_min_score"], attrs["ref_max_score"]) == (23.85, 161.86)
    assert attrs["local_reference"]["expert_return"] == get_task("maze2d-umaze").reference["expert_return"]
    with pytest.raises(FileExistsError):
        make_dataset("maze2d-umaze", tmp_path / "umaze", size=10, progress=False)


@pytest.mark.parametrize("name", sorted(MAZES))
def test_cards_agree_with_code(name):
    spec = MAZES[name]
    task = get_task(name)
    assert (task.env_id, task.max_episode_steps, task.dataset) == (spec.env_id, spec.max_episode_steps, name)
    assert (task.score["ref_min"], task.score["ref_max"]) == (spec.ref_min, spec.ref_max)
    assert task.wrapper == "fastpolicy.envs.maze:wrap_maze"


def test_dwell_variant_holds_reached_goals_and_says_so(tmp_path):
    """The goal-holding variant keeps a reached goal for `dwell` steps; D4RL's switches on arrival."""
    from fastpolicy.data.recipes import make_dataset

    plain = make_dataset("maze2d-umaze", tmp_path / "plain", size=3000, seed=1, progress=False)
    held = make_dataset("maze2d-umaze-dwell", tmp_path / "held", size=3000, seed=1, progress=False)

    def near_goal(store):
        obs = store.array("obs")
        return float(np.mean(np.linalg.norm(obs[:, :2] - obs[:, 4:6], axis=1) < 0.5))

    assert near_goal(held) > 2 * near_goal(plain)
    assert held.attrs["dwell"] == 50 and "not D4RL" in held.attrs["note"] and plain.attrs["dwell"] == 0
