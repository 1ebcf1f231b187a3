"""The single-robot AGV warehouse environment (a gymnasium ``Env``) and the batched core it shares
with the vector env.

``AGVCore`` owns the state arrays of N robots, draws episodes (start pose, goal, obstacle phases)
from free space with a given ``np.random.Generator``, and advances them through either the numba
kernels (``fastpolicy.kernels.agv``) or their numpy twin. ``AGVEnv`` is one robot on top of it;
``AGVVectorEnv`` (vector.py) is N robots. Semantics (documented once, here):

* action (v, omega) in [-1, 1]^2, clipped; ``v = v_min + (a0 + 1)/2 (v_max - v_min)`` so the whole
  action range is used and the default ``v_min = 0`` forbids reversing (the lidar sees no rear
  bumper); ``omega = a1 * omega_max``. Unicycle, explicit Euler with the layout's fixed ``dt``.
* observation (R + 5,) float32: lidar ranges / max_range, goal distance / arena diagonal, cos and
  sin of the goal bearing in the body frame, v / v_max, omega / omega_max.
* reward: +1 on reaching the goal, -1 on collision, -0.001 every step; the terms are in
  ``info["reward_terms"]``, ``info["success"]`` is True on the step the goal is reached.
* terminated on goal or collision. The single env has no time limit of its own: ``gym.make`` adds
  ``TimeLimit`` from the registered tier limit; the vector env truncates itself.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from fastpolicy.envs.agv.layout import Layout, get_layout
from fastpolicy.kernels import agv as kernels

GOAL_REWARD = 1.0
COLLISION_REWARD = -1.0
TIME_PENALTY = -0.001
# Obstacles must start this far beyond contact so a fresh episode is not a collision-in-waiting.
SPAWN_OBSTACLE_MARGIN = 1.0
_MAX_SAMPLING_ROUNDS = 200
_CANDIDATES = 8
# Below this many robots the serial kernel is used: a parallel region costs a few microseconds to
# launch (far more when the machine is oversubscribed), about as much as stepping ten robots.
SERIAL_BELOW = 32


def observation_space_for(layout: Layout, num_rays: int) -> spaces.Box:
    v_low = min(layout.robot.v_min / layout.robot.v_max, 0.0)
    low = np.concatenate([np.zeros(num_rays + 1), [-1.0, -1.0, v_low, -1.0]]).astype(np.float32)
    high = np.ones(num_rays + kernels.OBS_EXTRA, dtype=np.float32)
    return spaces.Box(low=low, high=high, dtype=np.float32)


def action_space() -> spaces.Box:
    return spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)


class AGVCore:
    """State and stepping of ``num_robots`` independent AGV episodes on one layout."""

    def __init__(self, layout: Layout, num_robots: int, num_rays: int | None = None,
                 backend: str = "numba", max_steps: int = 0) -> None:
        if backend not in ("numba", "numpy"):
            raise ValueError(f"unknown AGV backend {backend!r}; use 'numba' or 'numpy'")
        if num_robots < 1:
            raise ValueError(f"num_robots must be >= 1, got {num_robots}")
        self.layout = layout
        self.num_robots = n = int(num_robots)
        self.num_rays = r = int(num_rays or layout.lidar.rays)
        self.backend = backend
        self.max_steps = int(max_steps or 0)
        m = layout.num_obstacles
        self.ray_angles = np.arange(r, dtype=np.float64) * (2.0 * np.pi / r)    # ray 0 looks ahead
        self.ray_dirs = np.column_stack([np.cos(self.ray_angles), np.sin(self.ray_angles)])
        self.params = np.zeros(kernels.N_PARAMS)
        p = self.params
        p[kernels.P_DT] = layout.dt
        p[kernels.P_V_MIN] = layout.robot.v_min
        p[kernels.P_V_MAX] = layout.robot.v_max
        p[kernels.P_OMEGA_MAX] = layout.robot.omega_max
        p[kernels.P_RADIUS] = layout.robot.radius
        p[kernels.P_GOAL_TOL] = layout.goal_tolerance
        p[kernels.P_MAX_RANGE] = layout.lidar.max_range
        p[kernels.P_WIDTH] = layout.width
        p[kernels.P_HEIGHT] = layout.height
        p[kernels.P_TIME_PENALTY] = TIME_PENALTY
        p[kernels.P_GOAL_REWARD] = GOAL_REWARD
        p[kernels.P_COLLISION_REWARD] = COLLISION_REWARD
        self.pose = np.zeros((n, 3))
        self.vel = np.zeros((n, 2))
        self.goal = np.zeros((n, 2))
        self.tstep = np.zeros(n, dtype=np.int64)
        self.phase = np.zeros((n, m))
        self.obst_xy = np.zeros((n, m, 2))
        self.actions = np.zeros((n, 2))
        self.obs = np.zeros((n, r + kernels.OBS_EXTRA), dtype=np.float32)
        self.reward = np.zeros(n)
        self.terminated = np.zeros(n, dtype=bool)
        self.truncated = np.zeros(n, dtype=bool)
        self.success = np.zeros(n, dtype=bool)
        self.collided = np.zeros(n, dtype=bool)
        # Free cells as a flat lookup, for vectorised rejection sampling.
        self._free = layout.free_space
        if backend == "numba":
            self._step = kernels.step_serial if n < SERIAL_BELOW else kernels.step_batch
            self._observe = kernels.observe_batch
        else:
            from fastpolicy.envs.agv import numpy_twin

            self._step = numpy_twin.step_batch
            self._observe = numpy_twin.observe_batch

    # ----------------------------------------------------------------------------------- episodes
    def _sample_points(self, rng: np.random.Generator, regions: np.ndarray,
                       shape: tuple[int, ...]) -> np.ndarray:
        """Uniform points (*shape, 2), each in a region picked with probability proportional to its area."""
        area = np.maximum((regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1]), 1e-6)
        cdf = np.cumsum(area) / area.sum()
        which = np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), len(regions) - 1)
        lo, hi = regions[which, :2], regions[which, 2:]
        return lo + rng.random((*shape, 2)) * (hi - lo)

    def _is_free(self, xy: np.ndarray) -> np.ndarray:
        ix, iy = self.layout.cell_of(xy)
        return self._free[ix, iy]

    def reset_robots(self, index: np.ndarray, rng: np.random.Generator) -> None:
        """Start new episodes for the robots in ``index`` (int array) and compute their observations."""
        from fastpolicy.envs.agv.numpy_twin import obstacle_positions

        index = np.asarray(index, dtype=np.int64)
        n = len(index)
        if n == 0:
            return
        lay = self.layout
        seg_len = np.hypot(lay.obstacle_seg[:, 2] - lay.obstacle_seg[:, 0],
                           lay.obstacle_seg[:, 3] - lay.obstacle_seg[:, 1])
        phase = rng.random((n, lay.num_obstacles)) * 2.0 * seg_len
        obst0 = obstacle_positions(np.zeros(n, dtype=np.int64), phase, lay.obstacle_seg, lay.obstacle_speed,
                                   lay.dt)
        start = self._rejection(rng, lay.start_regions, n,
                                lambda k, xy: self._clear_of_obstacles(xy, obst0[k]))
        goal = self._rejection(rng, lay.goal_regions, n, lambda k, xy: np.hypot(
            *(xy - start[k]).T) >= lay.min_start_goal_distance)
        heading = rng.uniform(-np.pi, np.pi, size=n)
        self.pose[index, :2] = start
        self.pose[index, 2] = heading
        self.vel[index] = 0.0
        self.goal[index] = goal
        self.tstep[index] = 0
        self.phase[index] = phase
        self._observe(index, self.pose, self.vel, self.goal, self.tstep, self.phase, self.obst_xy,
                      lay.shelves, lay.obstacle_seg, lay.obstacle_speed, lay.obstacle_radius,
                      self.ray_dirs, self.params, self.obs)

    def _clear_of_obstacles(self, xy: np.ndarray, obst: np.ndarray) -> np.ndarray:
        if obst.shape[1] == 0:
            return np.ones(len(xy), dtype=bool)
        d = np.hypot(xy[:, None, 0] - obst[..., 0], xy[:, None, 1] - obst[..., 1])
        need = self.layout.robot.radius + self.layout.obstacle_radius + SPAWN_OBSTACLE_MARGIN
        return (d >= need).all(axis=1)

    def _rejection(self, rng: np.random.Generator, regions: np.ndarray, n: int, extra_ok) -> np.ndarray:
        """n points, point k the first of its candidates that is free and passes ``extra_ok(k, xy)``.

        Each round draws ``_CANDIDATES`` candidates per pending point at once (vectorised), so the
        autoreset of a few hundred robots usually finishes in one round.
        """
        out = np.zeros((n, 2))
        pending = np.arange(n)
        for _ in range(_MAX_SAMPLING_ROUNDS):
            xy = self._sample_points(rng, regions, (len(pending), _CANDIDATES))
            owner = np.repeat(pending, _CANDIDATES)
            flat = xy.reshape(-1, 2)
            ok = (self._is_free(flat) & extra_ok(owner, flat)).reshape(len(pending), _CANDIDATES)
            found = ok.any(axis=1)
            first = ok.argmax(axis=1)
            out[pending[found]] = xy[found, first[found]]
            pending = pending[~found]
            if len(pending) == 0:
                return out
        raise RuntimeError(f"AGV layout {self.layout.name!r}: could not draw a free start/goal in "
                           f"{_MAX_SAMPLING_ROUNDS} rounds; are the regions almost entirely blocked?")

    # ----------------------------------------------------------------------------------- stepping
    def step(self, actions: np.ndarray) -> None:
        """Advance every robot by one step; results land in obs/reward/terminated/... arrays."""
        np.copyto(self.actions, actions, casting="unsafe")
        lay = self.layout
        self._step(self.pose, self.vel, self.goal, self.tstep, self.phase, self.obst_xy, self.actions,
                   lay.shelves, lay.obstacle_seg, lay.obstacle_speed, lay.obstacle_radius, self.ray_dirs,
                   self.params, self.max_steps, self.obs, self.reward, self.terminated, self.truncated,
                   self.success, self.collided)

    def reward_terms(self) -> dict[str, np.ndarray]:
        """Per-term rewards of the last step (they sum to ``reward``)."""
        return {"goal": np.where(self.success, GOAL_REWARD, 0.0),
                "collision": np.where(self.collided, COLLISION_REWARD, 0.0),
                "time": np.full(self.num_robots, TIME_PENALTY)}


class AGVEnv(gym.Env):
    """One AGV in a warehouse layout. See the module docstring for spaces, reward and termination.

    Args:
        layout: a layout name under ``envs/agv/`` (e.g. ``"simple-static"``), a YAML path or a Layout.
        num_rays: lidar rays (default: the layout's, 32).
        render_mode: ``None`` or ``"rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, layout: str | os.PathLike | Layout = "simple-static", num_rays: int | None = None,
                 render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}; AGVEnv supports 'rgb_array'")
        self.layout = get_layout(layout)
        self.core = AGVCore(self.layout, 1, num_rays=num_rays, backend="numba", max_steps=0)
        self.render_mode = render_mode
        self.observation_space = observation_space_for(self.layout, self.core.num_rays)
        self.action_space = action_space()
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.layout.dt))}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.core.reset_robots(np.zeros(1, dtype=np.int64), self.np_random)
        return self.core.obs[0].copy(), {"goal": self.core.goal[0].copy()}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        core = self.core
        core.step(np.asarray(action, dtype=np.float64).reshape(1, 2))
        terms = {k: float(v[0]) for k, v in core.reward_terms().items()}
        info = {"success": bool(core.success[0]), "collision": bool(core.collided[0]), "reward_terms": terms}
        return core.obs[0].copy(), float(core.reward[0]), bool(core.terminated[0]), False, info

    # ------------------------------------------------------------------------ introspection & render
    @property
    def pose(self) -> np.ndarray:
        """(x, y, theta) of the robot."""
        return self.core.pose[0].copy()

    @property
    def goal(self) -> np.ndarray:
        return self.core.goal[0].copy()

    @property
    def obstacle_xy(self) -> np.ndarray:
        """(M, 2) current centres of the moving obstacles."""
        return self.core.obst_xy[0].copy()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from fastpolicy.envs.agv.render import render_frame

        rays = self.core.obs[0, :self.core.num_rays].astype(np.float64) * self.layout.lidar.max_range
        return render_frame(self.layout, self.core.pose[0], self.core.goal[0], self.core.obst_xy[0],
                            rays=rays, ray_angles=self.core.ray_angles)
