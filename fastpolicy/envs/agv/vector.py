"""A natively batched gymnasium ``VectorEnv`` of N AGVs, stepped by one numba kernel call per step.

This is what ``gymnasium.make_vec("fastpolicy/AGV-...-v0", num_envs=N)`` returns (the ids' vector
entry point). Compared with ``SyncVectorEnv``/``AsyncVectorEnv`` over ``AGVEnv`` there is no Python
per robot: state lives in (N, ...) arrays in ``AGVCore`` and the kernel runs a ``prange`` over robots.

Autoreset is **same-step** (``AutoresetMode.SAME_STEP``): a robot whose episode ends is reset inside
that ``step``; the returned observation is the new episode's first one, the last observation of the
ended episode is in ``infos["final_obs"]`` (a dense (N, obs_dim) array, valid where
``infos["_final_obs"]``), and ``infos["final_info"]`` holds the ended step's ``success``,
``collision`` and ``reward_terms``. The top-level ``success``/``collision``/``reward_terms`` always
describe the step just taken (the reset adds no info of its own). Truncation happens at
``max_episode_steps`` (the tier's limit when made through ``make_vec``).

Threads: the kernel uses numba's thread pool (``NUMBA_NUM_THREADS``) for N >= 32 robots. On a
machine whose cores are already busy, set ``OMP_WAIT_POLICY=PASSIVE`` before numba starts (or use
one thread): with the default spin-waiting OpenMP layer a preempted worker stalls every step (we
measured 2 threads 30x slower than 1 on a loaded 2-core box).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fastpolicy.envs.agv.env import AGVCore, action_space, observation_space_for
from fastpolicy.envs.agv.layout import Layout, get_layout


class AGVVectorEnv(VectorEnv):
    """N independent AGV episodes on one layout.

    Args:
        num_envs: number of robots N.
        layout: layout name under ``envs/agv/``, YAML path, or Layout.
        max_episode_steps: truncation limit per episode (None or 0: never truncate).
        num_rays: lidar rays (default: the layout's).
        backend: ``"numba"`` (the kernels) or ``"numpy"`` (the numpy twin, for tests and benchmarks).
        render_mode: ``None`` or ``"rgb_array"`` (renders robot 0).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, layout: str | os.PathLike | Layout = "simple-static",
                 max_episode_steps: int | None = None, num_rays: int | None = None, backend: str = "numba",
                 render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unsupported render_mode {render_mode!r}; AGVVectorEnv supports 'rgb_array'")
        self.layout = get_layout(layout)
        self.num_envs = int(num_envs)
        self.core = AGVCore(self.layout, self.num_envs, num_rays=num_rays, backend=backend,
                            max_steps=max_episode_steps or 0)
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.single_observation_space = observation_space_for(self.layout, self.core.num_rays)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.layout.dt))}
        self._has_reset = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all robots, or only those in ``options["reset_mask"]`` (bool (N,))."""
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        mask = None if options is None else options.get("reset_mask")
        if mask is None:
            index = np.arange(self.num_envs)
        else:
            if not self._has_reset:
                raise ValueError("reset_mask needs a full reset first")
            index = np.flatnonzero(np.asarray(mask, dtype=bool))
        self.core.reset_robots(index, self.np_random)
        self._has_reset = True
        return self.core.obs.copy(), {}

    def step(self, actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        core = self.core
        core.step(actions)
        terminated = core.terminated.copy()
        truncated = core.truncated.copy()
        ones = np.ones(self.num_envs, dtype=bool)
        step_info = {"success": core.success.copy(), "_success": ones,
                     "collision": core.collided.copy(), "_collision": ones,
                     "reward_terms": core.reward_terms(), "_reward_terms": ones}
        infos: dict[str, Any] = dict(step_info)
        done = terminated | truncated
        if done.any():
            infos["final_obs"] = core.obs.copy()
            infos["_final_obs"] = done
            infos["final_info"] = step_info
            infos["_final_info"] = done
            core.reset_robots(np.flatnonzero(done), self.np_random)
        return core.obs.copy(), core.reward.copy(), terminated, truncated, infos

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from fastpolicy.envs.agv.render import render_frame

        c = self.core
        rays = c.obs[0, :c.num_rays].astype(np.float64) * self.layout.lidar.max_range
        return render_frame(self.layout, c.pose[0], c.goal[0], c.obst_xy[0], rays=rays,
                            ray_angles=c.ray_angles)
