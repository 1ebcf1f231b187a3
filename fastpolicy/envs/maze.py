"""Maze2d tasks on gymnasium-robotics PointMaze: D4RL's evaluation protocol and D4RL's expert.

What this module gives:

* ``wrap_maze(env, task)`` (the task cards' ``wrapper:``): flattens PointMaze's dict observation into
  ``[x, y, vx, vy, goal_x, goal_y]`` (float32; goal-conditioned, because goals vary in the datasets),
  fixes the goal to D4RL's evaluation target of that maze, starts episodes the way D4RL does and pays
  D4RL's sparse reward. ``info["success"]`` says whether the goal was reached at any time so far.
* ``WaypointController``: D4RL's expert (``d4rl/pointmaze/waypoint_controller.py``) re-implemented:
  Q-iteration over the maze grid gives cell waypoints, a PD controller follows them.
* ``d4rl_to_xy`` / ``xy_to_d4rl``: the coordinate mapping between D4RL's MuJoCo mazes and
  gymnasium-robotics' mazes, and ``measure_reference`` for the expert / random reference returns.

Why D4RL's semantics rather than gymnasium-robotics' defaults: D4RL's normalized maze2d scores
(REF_MIN/REF_MAX) were measured with D4RL's definition — sparse reward 1 while within **0.5** of a
*fixed* goal, summed over a whole episode of 300 / 600 / 800 steps that does not end at the goal, starts
drawn uniformly over all free cells. gymnasium-robotics' sparse reward uses 0.45, draws a noisy goal per
reset and never starts in the goal cell; a score against D4RL's constants needs D4RL's protocol.

Coordinate mapping (D4RL ``maze_model.py`` vs gymnasium-robotics ``maze_v4.py``), both mazes use the
same character maps (row ``i``, column ``j``; the maps are identical for umaze/medium/large) and cells of
size 1:

* gymnasium-robotics: ``qpos = (x, y)`` is the world position; cell ``(i, j)`` is centred at
  ``x = j + 0.5 - W/2``, ``y = H/2 - i - 0.5`` (map centred on the origin, rows go down in ``y``).
* D4RL: ``qpos = (a, b)`` runs along (row, column) — D4RL's first coordinate is the *row*. Walls of cell
  ``(i, j)`` are boxes centred at world ``(i + 1, j + 1)`` while the particle body sits at world
  ``(1.2, 1.2)`` when ``qpos = 0``, so ``qpos = (i, j)`` is physically **0.2 past the centre** of cell
  ``(i, j)`` along +row and +column (D4RL's waypoint jitter ``-U(0, 0.2)`` partly compensates for it).

Hence ``x = b + 0.2 + 0.5 - W/2`` and ``y = H/2 - (a + 0.2) - 0.5``; velocities map as
``(vx, vy) = (v_b, -v_a)``. D4RL's eval targets (the ``G`` cell of each map, used without noise because
``reset_target=False``) are ``(1, 1)`` umaze, ``(6, 6)`` medium, ``(7, 9)`` large, i.e. gymnasium-robotics
``(-0.8, 0.8)``, ``(2.7, -2.7)`` and ``(3.7, -3.2)``. Distances are unchanged by the mapping, so the
0.5 goal radius carries over as is.

Length: the D4RL maze protocol (coordinates, goals, starts, reward) and D4RL's waypoint expert share the
maze geometry; apart, they would have to agree on it in two places.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

GOAL_RADIUS = 0.5
"""D4RL maze2d's sparse-reward radius (gymnasium-robotics uses 0.45; D4RL's scores assume 0.5)."""

D4RL_PARTICLE_OFFSET = 0.2
"""D4RL's particle body sits 0.2 past the cell centre (along +row and +column) at ``qpos = (i, j)``."""

OBS_LAYOUT = ("x", "y", "vx", "vy", "goal_x", "goal_y")
LABEL = "D4RL-style (gymnasium-robotics v3)"


@dataclass(frozen=True)
class MazeSpec:
    """One maze2d task: the gymnasium-robotics env, D4RL's eval target and reference scores."""

    task: str
    env_id: str
    d4rl_env_id: str
    d4rl_goal: tuple[int, int]  # D4RL qpos of the eval target = (row, col) of the 'G' cell in its map
    max_episode_steps: int
    dataset_size: int  # D4RL's dataset size in steps
    ref_min: float
    ref_max: float


MAZES: dict[str, MazeSpec] = {
    "maze2d-umaze": MazeSpec("maze2d-umaze", "PointMaze_UMaze-v3", "maze2d-umaze-v1", (1, 1),
                             300, 1_000_000, 23.85, 161.86),
    "maze2d-medium": MazeSpec("maze2d-medium", "PointMaze_Medium-v3", "maze2d-medium-v1", (6, 6),
                              600, 2_000_000, 13.13, 277.39),
    "maze2d-large": MazeSpec("maze2d-large", "PointMaze_Large-v3", "maze2d-large-v1", (7, 9),
                             800, 4_000_000, 6.7, 273.99),
}


def get_maze_spec(name: str) -> MazeSpec:
    """The maze spec for a task name (``maze2d-umaze``) or a gymnasium-robotics env id."""
    if name in MAZES:
        return MAZES[name]
    for spec in MAZES.values():
        if spec.env_id == name:
            return spec
    raise ValueError(f"unknown maze {name!r}; known: {', '.join(MAZES)}")


# ----------------------------------------------------------------------------- coordinates

MazeMap = Sequence[Sequence[Any]]
"""A gymnasium-robotics maze map: rows of cells, ``1`` = wall (``0``/``"g"``/``"r"``/``"c"`` = free)."""


def _shape(maze_map: MazeMap) -> tuple[int, int]:
    return len(maze_map), len(maze_map[0])


def d4rl_to_xy(qpos: np.ndarray, maze_map: MazeMap) -> np.ndarray:
    """D4RL maze2d positions ``(..., 2)`` → gymnasium-robotics ``(x, y)`` (see the module docstring)."""
    rows, cols = _shape(maze_map)
    q = np.asarray(qpos, dtype=np.float64)
    x = q[..., 1] + D4RL_PARTICLE_OFFSET + 0.5 - cols / 2
    y = rows / 2 - (q[..., 0] + D4RL_PARTICLE_OFFSET) - 0.5
    return np.stack([x, y], axis=-1)


def xy_to_d4rl(xy: np.ndarray, maze_map: MazeMap) -> np.ndarray:
    """gymnasium-robotics ``(x, y)`` → D4RL maze2d positions; the inverse of ``d4rl_to_xy``."""
    rows, cols = _shape(maze_map)
    p = np.asarray(xy, dtype=np.float64)
    a = rows / 2 - p[..., 1] - 0.5 - D4RL_PARTICLE_OFFSET
    b = p[..., 0] + cols / 2 - 0.5 - D4RL_PARTICLE_OFFSET
    return np.stack([a, b], axis=-1)


def xy_velocity_to_d4rl(vxy: np.ndarray) -> np.ndarray:
    """gymnasium-robotics velocities ``(vx, vy)`` → D4RL ``(v_row, v_col) = (-vy, vx)``."""
    v = np.asarray(vxy, dtype=np.float64)
    return np.stack([-v[..., 1], v[..., 0]], axis=-1)


def cell_center(cell: tuple[int, int], maze_map: MazeMap) -> np.ndarray:
    """Centre ``(x, y)`` of grid cell ``(row, col)`` in gymnasium-robotics coordinates."""
    rows, cols = _shape(maze_map)
    return np.array([cell[1] + 0.5 - cols / 2, rows / 2 - cell[0] - 0.5])


def xy_to_cell(xy: np.ndarray, maze_map: MazeMap) -> tuple[int, int]:
    """Grid cell ``(row, col)`` containing the gymnasium-robotics point ``(x, y)``."""
    rows, cols = _shape(maze_map)
    return int(math.floor(rows / 2 - xy[1])), int(math.floor(xy[0] + cols / 2))


def eval_goal_xy(spec: MazeSpec | str, maze_map: MazeMap) -> np.ndarray:
    """D4RL's evaluation target of the maze, in gymnasium-robotics coordinates."""
    spec = get_maze_spec(spec) if isinstance(spec, str) else spec
    return d4rl_to_xy(np.array(spec.d4rl_goal, dtype=np.float64), maze_map)


def free_cells(maze_map: MazeMap) -> list[tuple[int, int]]:
    """Row-major list of the non-wall cells (D4RL's ``empty_and_goal_locations``, in a fixed order)."""
    return [(i, j) for i, row in enumerate(maze_map) for j, v in enumerate(row) if v != 1]


# ----------------------------------------------------------------------------- planner

# D4RL's grid actions in its (row, col) frame and its order (argmax ties go to the first):
# NOOP, UP (0, -1), DOWN (0, +1), LEFT (-1, 0), RIGHT (+1, 0).
_GRID_MOVES = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]])


def _wall_key(maze_map: MazeMap) -> tuple[tuple[bool, ...], ...]:
    return tuple(tuple(v == 1 for v in row) for row in maze_map)


@functools.lru_cache(maxsize=1024)
def next_cell_table(walls: tuple[tuple[bool, ...], ...], goal: tuple[int, int],
                    discount: float = 0.99) -> np.ndarray:
    """``(H, W, 2)`` array: the next cell on the greedy Q-iteration path from each cell to ``goal``.

    D4RL's tabular Q-iteration (reward 1 for being in the goal cell, deterministic moves, blocked moves
    stay put), run vectorised over the whole grid until every free cell has seen the goal (D4RL runs a
    fixed 50 sweeps, too few for long corridors in general). Cached per (maze, goal cell): the expert
    replans every time a new goal is drawn, and there are only a few dozen cells.
    """
    wall = np.asarray(walls, dtype=bool)
    rows, cols = wall.shape
    if wall[goal]:
        raise ValueError(f"goal cell {goal} is a wall")
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    succ = np.empty((len(_GRID_MOVES), rows, cols), dtype=np.int64)
    for a, (di, dj) in enumerate(_GRID_MOVES):
        ni, nj = np.clip(ii + di, 0, rows - 1), np.clip(jj + dj, 0, cols - 1)
        blocked = wall[ni, nj]
        succ[a] = np.where(blocked, ii * cols + jj, ni * cols + nj)
    reward = np.zeros(rows * cols)
    reward[goal[0] * cols + goal[1]] = 1.0
    value = np.zeros(rows * cols)
    for _ in range(int((~wall).sum()) + 1):  # ≥ the longest shortest path: greedy order is exact
        q = reward.reshape(1, rows, cols) + discount * value[succ]
        value = q.max(axis=0).ravel()
    best = q.argmax(axis=0)  # first maximum wins, as in D4RL's np.argmax
    nxt = np.take_along_axis(succ, best[None], axis=0)[0]
    table = np.stack([nxt // cols, nxt % cols], axis=-1)
    table.setflags(write=False)  # shared through the cache
    return table


def plan_cells(maze_map: MazeMap, start: tuple[int, int], goal: tuple[int, int]
               ) -> list[tuple[int, int]]:
    """Cells visited after ``start`` on the way to ``goal`` (ends with ``goal``; ``[goal]`` if equal)."""
    table = next_cell_table(_wall_key(maze_map), tuple(goal))
    cells, cell = [], tuple(start)
    for _ in range(table.shape[0] * table.shape[1]):
        if cell == tuple(goal):
            break
        nxt = (int(table[cell][0]), int(table[cell][1]))
        if nxt == cell:
            raise ValueError(f"no path from cell {start} to goal cell {goal}")
        cells.append(nxt)
        cell = nxt
    return cells or [tuple(goal)]


# ----------------------------------------------------------------------------- expert

class WaypointController:
    """D4RL's maze2d expert: follow Q-iteration cell waypoints with a PD controller.

    ``action = p_gain·(waypoint − pos) + d_gain·vel`` clipped to [−1, 1]; a waypoint counts as reached
    within ``solve_thresh`` while moving less than ``vel_thresh`` per step; the final waypoint is the
    goal itself (D4RL aims at the goal's cell centre — its targets sit within ±0.1 of it — but
    gymnasium-robotics goals scatter ±0.25, so the exact goal is the better aim). Intermediate waypoints
    get D4RL's jitter, ``U(0, waypoint_jitter)`` toward +row/+column in physical terms, when ``rng`` is
    given; with ``rng=None`` the waypoints are the cell centres. Replans whenever the goal changes.
    """

    def __init__(self, maze_map: MazeMap, *, p_gain: float = 10.0, d_gain: float = -1.0,
                 solve_thresh: float = 0.1, vel_thresh: float = 0.1, dt: float = 0.01,
                 waypoint_jitter: float = 0.2, rng: np.random.Generator | None = None) -> None:
        self.maze_map = [list(row) for row in maze_map]
        self.p_gain, self.d_gain = float(p_gain), float(d_gain)
        self.solve_thresh, self.vel_thresh, self.dt = float(solve_thresh), float(vel_thresh), float(dt)
        self.waypoint_jitter = float(waypoint_jitter)
        self.rng = rng
        self.reset()

    def reset(self) -> None:
        """Forget the plan (call at every episode start)."""
        self._goal: tuple[float, float] | None = None
        self._waypoints: list[tuple[float, float]] = []
        self._idx = 0

    @property
    def waypoints(self) -> np.ndarray:
        """The current plan, ``(K, 2)`` in gymnasium-robotics coordinates (last row = the goal)."""
        return np.array(self._waypoints, dtype=np.float64).reshape(-1, 2)

    def _plan(self, pos: tuple[float, float], goal: tuple[float, float]) -> None:
        start = xy_to_cell(pos, self.maze_map)
        goal_cell = xy_to_cell(goal, self.maze_map)
        waypoints = []
        for cell in plan_cells(self.maze_map, start, goal_cell)[:-1]:
            x, y = cell_center(cell, self.maze_map)
            if self.rng is not None and self.waypoint_jitter > 0:
                u_row, u_col = self.rng.uniform(0.0, self.waypoint_jitter, size=2)
                x, y = x + u_col, y - u_row  # +column is +x, +row is −y
            waypoints.append((float(x), float(y)))
        waypoints.append(goal)
        self._waypoints, self._idx, self._goal = waypoints, 0, goal

    def act(self, pos: Sequence[float], vel: Sequence[float], goal: Sequence[float]
            ) -> tuple[np.ndarray, bool]:
        """One control step: ``(action in [−1, 1]², goal_reached)`` as D4RL's ``get_action``."""
        px, py, vx, vy = float(pos[0]), float(pos[1]), float(vel[0]), float(vel[1])
        g = (float(goal[0]), float(goal[1]))
        if self._goal is None or g != self._goal:
            self._plan((px, py), g)
        slow = math.hypot(vx, vy) * self.dt < self.vel_thresh
        solved = math.hypot(px - g[0], py - g[1]) < self.solve_thresh and slow
        tx, ty = g if solved else self._waypoints[self._idx]
        ax = self.p_gain * (tx - px) + self.d_gain * vx
        ay = self.p_gain * (ty - py) + self.d_gain * vy
        if (not solved and self._idx < len(self._waypoints) - 1 and slow
                and math.hypot(px - tx, py - ty) < self.solve_thresh):
            self._idx += 1
        action = np.array([min(1.0, max(-1.0, ax)), min(1.0, max(-1.0, ay))])
        return action, solved

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Action for a flat maze observation ``[x, y, vx, vy, goal_x, goal_y]``."""
        return self.act(obs[0:2], obs[2:4], obs[4:6])[0]


# ----------------------------------------------------------------------------- wrapper

class MazeGoalWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """PointMaze with a flat goal-conditioned observation and D4RL's reward, goal and start.

    ``goal_xy``: a fixed goal (D4RL's eval target) or None to keep gymnasium-robotics' goals.
    ``start``: ``"d4rl"`` draws the start as D4RL's ``reset_model`` does (uniform over all free cells,
    the goal cell included, ±0.1 position noise around D4RL's particle origin, N(0, 0.1²) velocity);
    ``"env"`` keeps gymnasium-robotics' start (never in the goal cell). Reset options ``goal_cell`` /
    ``reset_cell`` are passed through and then win over ``goal_xy`` / ``start``. The reward is 1 while
    within ``goal_radius`` of the goal after the step. All randomness comes from the env's own
    ``np_random``, i.e. from ``reset(seed=)``.
    """

    def __init__(self, env: gym.Env, goal_xy: np.ndarray | None = None, start: str = "d4rl",
                 goal_radius: float = GOAL_RADIUS) -> None:
        # Recorded so ``env.spec`` can rebuild the wrapped env (gymnasium's env checker does).
        gym.utils.RecordConstructorArgs.__init__(
            self, goal_xy=None if goal_xy is None else [float(v) for v in goal_xy], start=start,
            goal_radius=float(goal_radius))
        super().__init__(env)
        if start not in ("d4rl", "env"):
            raise ValueError(f"start must be 'd4rl' or 'env', got {start!r}")
        maze = env.unwrapped.maze
        if maze.maze_size_scaling != 1:
            raise ValueError("the maze2d coordinate mapping assumes maze_size_scaling 1 (PointMaze)")
        self.maze_map = [list(row) for row in maze.maze_map]
        self.goal_xy = None if goal_xy is None else np.asarray(goal_xy, dtype=np.float64).copy()
        if self.goal_xy is not None:
            cell = xy_to_cell(self.goal_xy, self.maze_map)
            if self.maze_map[cell[0]][cell[1]] == 1:
                raise ValueError(f"goal {self.goal_xy.tolist()} lies in wall cell {cell}")
        self.start = start
        self.goal_radius = float(goal_radius)
        self._free = free_cells(self.maze_map)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(len(OBS_LAYOUT),), dtype=np.float32)
        self._success = False

    def _flat(self, point_obs: np.ndarray) -> np.ndarray:
        return np.concatenate([point_obs[:4], self.env.unwrapped.goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        u = self.env.unwrapped
        opts = options or {}
        if self.goal_xy is not None and opts.get("goal_cell") is None:
            u.goal = self.goal_xy.copy()
            u.update_target_site_pos()
        point_obs = obs["observation"]
        if self.start == "d4rl" and opts.get("reset_cell") is None:
            cell = self._free[int(u.np_random.integers(len(self._free)))]
            noise = u.np_random.uniform(-0.1, 0.1, size=2)
            qpos = d4rl_to_xy(np.asarray(cell, dtype=np.float64) + noise, self.maze_map)
            qvel = u.np_random.standard_normal(2) * 0.1
            u.point_env.set_state(qpos, qvel)
            point_obs = np.concatenate([qpos, qvel])
        dist = float(np.linalg.norm(point_obs[:2] - u.goal))
        self._success = dist <= self.goal_radius
        info = {**info, "success": self._success, "distance": dist, "goal": u.goal.copy()}
        return self._flat(point_obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        # Reward for the goal in force during this step (gymnasium-robotics swaps the goal after the
        # step when reset_target=True); the next observation carries the goal to pursue next.
        dist = float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))
        at_goal = dist <= self.goal_radius
        self._success = self._success or at_goal
        info = {**info, "success": self._success, "at_goal": at_goal, "distance": dist,
                "env_reward": float(env_reward), "goal": self.env.unwrapped.goal.copy()}
        return self._flat(obs["observation"]), float(at_goal), terminated, truncated, info


def wrap_maze(env: gym.Env, task: Any) -> MazeGoalWrapper:
    """Task-card wrapper: D4RL's eval goal, D4RL's starts and reward, flat goal-conditioned obs.

    ``task`` is a ``TaskSpec`` (its ``name``, else its ``env_id``, selects the maze) or a name.
    """
    name = task if isinstance(task, str) else task.name
    if name not in MAZES and not isinstance(task, str):
        name = task.env_id
    spec = get_maze_spec(name)
    maze_map = env.unwrapped.maze.maze_map
    return MazeGoalWrapper(env, goal_xy=eval_goal_xy(spec, maze_map), start="d4rl")


# ----------------------------------------------------------------------------- references

def rollout_returns(env: gym.Env, act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int,
                    reset: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
    """Run ``episodes`` full episodes (seeds ``seed, seed+1, …``); per-episode return and success."""
    returns, successes = np.zeros(episodes), np.zeros(episodes, dtype=bool)
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        if reset is not None:
            reset()
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            returns[ep] += reward
            done = terminated or truncated
        successes[ep] = bool(info["success"])
    return {"returns": returns, "success": successes}


def measure_reference(task: Any = "maze2d-umaze", episodes: int = 20, seed: int = 0,
                      noise: float = 0.0) -> dict[str, float]:
    """Expert, D4RL-reference-script expert and uniform-random returns on the task, over ``episodes``.

    ``expert``: the waypoint controller (optional N(0,1)·noise on its actions), reset every episode.
    ``d4rl_script_expert``: the same controller never reset between episodes, as in D4RL's
    ``scripts/reference_scores/maze2d_controller.py`` — after the first episode it keeps its finished
    plan and heads straight for the goal, so starts behind a wall get stuck; that is how D4RL's REF_MAX
    was measured, and reproducing it checks the goal/start/reward mapping. Used to fill the task cards'
    ``reference`` block: numbers are measured, never typed in.
    """
    from fastpolicy.envs.registry import get_task, make_env

    task = get_task(task) if isinstance(task, str) else task
    env = make_env(task)
    maze_map = env.unwrapped.maze.maze_map
    rng_expert, rng_noise, rng_random = (np.random.default_rng([seed, k]) for k in range(3))
    expert = WaypointController(maze_map, rng=rng_expert)

    def expert_act(obs: np.ndarray) -> np.ndarray:
        action = expert(obs)
        if noise > 0:
            action = np.clip(action + noise * rng_noise.standard_normal(2), -1.0, 1.0)
        return action

    exp = rollout_returns(env, expert_act, episodes, seed, reset=expert.reset)
    script_expert = WaypointController(maze_map, rng=np.random.default_rng([seed, 3]))
    script = rollout_returns(env, script_expert, episodes, seed)
    rnd = rollout_returns(env, lambda obs: rng_random.uniform(-1.0, 1.0, size=2), episodes, seed)
    env.close()
    out: dict[str, float] = {"episodes": episodes, "seed": seed, "expert_noise": noise}
    for key, res in (("expert", exp), ("d4rl_script_expert", script), ("random", rnd)):
        out[f"{key}_return_mean"] = float(res["returns"].mean())
        out[f"{key}_return_std"] = float(res["returns"].std())
        out[f"{key}_success"] = float(res["success"].mean())
    return out
