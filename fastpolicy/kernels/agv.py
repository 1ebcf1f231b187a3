"""The batched AGV step as numba kernels: unicycle dynamics, moving obstacles, collisions, lidar, reward.

One call advances N robots (each with its own episode, goal and obstacle phases) by one fixed ``dt``
and writes observations, rewards and episode flags into preallocated arrays, so the vector env does
no per-robot Python work. ``fastpolicy.envs.agv.numpy_twin`` implements exactly the same step with
numpy broadcasting; the tests hold the two within 1e-6 and the benchmark compares them.

State arrays (float64 unless noted; N robots, M moving obstacles, R rays):

* ``pose`` (N, 3): x, y, theta (theta wrapped to [-pi, pi));
* ``vel`` (N, 2): the last applied (v, omega) in physical units;
* ``goal`` (N, 2);  ``tstep`` (N,) int64: steps taken in the current episode;
* ``phase`` (N, M): arc-length offset of each obstacle along its patrol, drawn per episode;
* ``obst_xy`` (N, M, 2): obstacle centres at ``tstep`` (written by the kernels).

Moving obstacle m patrols back and forth on the segment ``seg[m] = (ax, ay, bx, by)`` at ``speed[m]``:
its arc position at step t is ``s = (phase + speed * t * dt) mod 2L`` folded into [0, L], so positions
are a closed-form function of (phase, t): deterministic given the seed and identical in both twins.

Action (N, 2) in [-1, 1] (clipped): ``v = v_min + (a0 + 1) / 2 * (v_max - v_min)``,
``omega = a1 * omega_max``. Observation (N, R + 5), float32:
``rays / max_range``, ``|goal - p| / diag``, cos and sin of the goal bearing in the body frame,
``v / v_max``, ``omega / omega_max``.

Development note: numba's on-disk cache (``cache=True``) is keyed on the source file of each jitted
function only, so after editing ``raycast.py`` the cached kernels of this module still call the old
ray caster. Delete ``fastpolicy/kernels/__pycache__/*.nb[ic]`` after such an edit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from fastpolicy.kernels.raycast import cast_rays_one, collides_one

# Indices into the float64 ``params`` vector (one array keeps the kernel signatures short and lets
# numba treat the layout as data, not compile-time constants).
P_DT = 0
P_V_MIN = 1
P_V_MAX = 2
P_OMEGA_MAX = 3
P_RADIUS = 4
P_GOAL_TOL = 5
P_MAX_RANGE = 6
P_WIDTH = 7
P_HEIGHT = 8
P_TIME_PENALTY = 9
P_GOAL_REWARD = 10
P_COLLISION_REWARD = 11
N_PARAMS = 12

OBS_EXTRA = 5  # goal distance, goal cos, goal sin, v, omega

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@njit(**_JIT)
def wrap_angle(a: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return a - 2.0 * math.pi * math.floor((a + math.pi) / (2.0 * math.pi))


@njit(**_JIT)
def obstacle_positions_one(t: int, phase: np.ndarray, seg: np.ndarray, speed: np.ndarray, dt: float,
                           out: np.ndarray) -> None:
    """Centres (M, 2) of the patrolling obstacles of one robot's episode at step ``t``."""
    for m in range(seg.shape[0]):
        ax = seg[m, 0]
        ay = seg[m, 1]
        ex = seg[m, 2] - ax
        ey = seg[m, 3] - ay
        length = math.sqrt(ex * ex + ey * ey)
        if length <= 0.0:
            out[m, 0] = ax
            out[m, 1] = ay
            continue
        s = (phase[m] + speed[m] * t * dt) % (2.0 * length)
        d = s if s <= length else 2.0 * length - s
        out[m, 0] = ax + ex / length * d
        out[m, 1] = ay + ey / length * d


@njit(**_JIT)
def observe_one(i: int, pose: np.ndarray, vel: np.ndarray, goal: np.ndarray, obst_xy: np.ndarray,
                rects: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray, params: np.ndarray,
                obs: np.ndarray) -> None:
    """Write robot i's observation row (obstacle centres in ``obst_xy[i]`` must be current)."""
    n_rays = ray_dirs.shape[0]
    max_range = params[P_MAX_RANGE]
    width = params[P_WIDTH]
    height = params[P_HEIGHT]
    x = pose[i, 0]
    y = pose[i, 1]
    th = pose[i, 2]
    cast_rays_one(x, y, th, ray_dirs, rects, obst_xy[i], radius, width, height, max_range, obs[i],
                  max_range)
    gx = goal[i, 0] - x
    gy = goal[i, 1] - y
    dist = math.sqrt(gx * gx + gy * gy)
    c = math.cos(th)
    s = math.sin(th)
    if dist > 1e-9:
        gc = (gx * c + gy * s) / dist
        gs = (-gx * s + gy * c) / dist
    else:
        gc = 1.0
        gs = 0.0
    diag = math.sqrt(width * width + height * height)
    obs[i, n_rays] = min(dist / diag, 1.0)
    obs[i, n_rays + 1] = gc
    obs[i, n_rays + 2] = gs
    obs[i, n_rays + 3] = vel[i, 0] / params[P_V_MAX]
    obs[i, n_rays + 4] = vel[i, 1] / params[P_OMEGA_MAX]


@njit(**_JIT)
def step_one(i: int, pose: np.ndarray, vel: np.ndarray, goal: np.ndarray, tstep: np.ndarray,
             phase: np.ndarray, obst_xy: np.ndarray, actions: np.ndarray, rects: np.ndarray,
             seg: np.ndarray, speed: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray,
             params: np.ndarray, max_steps: int, obs: np.ndarray, reward: np.ndarray,
             terminated: np.ndarray, truncated: np.ndarray, success: np.ndarray,
             collided: np.ndarray) -> None:
    """Advance robot i by one step and write its outputs (see the module docstring)."""
    dt = params[P_DT]
    a0 = min(max(actions[i, 0], -1.0), 1.0)
    a1 = min(max(actions[i, 1], -1.0), 1.0)
    v = params[P_V_MIN] + 0.5 * (a0 + 1.0) * (params[P_V_MAX] - params[P_V_MIN])
    w = a1 * params[P_OMEGA_MAX]
    th = pose[i, 2]
    x = pose[i, 0] + v * math.cos(th) * dt
    y = pose[i, 1] + v * math.sin(th) * dt
    pose[i, 0] = x
    pose[i, 1] = y
    pose[i, 2] = wrap_angle(th + w * dt)
    vel[i, 0] = v
    vel[i, 1] = w
    t = tstep[i] + 1
    tstep[i] = t
    obstacle_positions_one(t, phase[i], seg, speed, dt, obst_xy[i])
    hit = collides_one(x, y, params[P_RADIUS], rects, obst_xy[i], radius, params[P_WIDTH],
                       params[P_HEIGHT])
    gx = goal[i, 0] - x
    gy = goal[i, 1] - y
    tol = params[P_GOAL_TOL]
    reached = (not hit) and (gx * gx + gy * gy <= tol * tol)
    r = params[P_TIME_PENALTY]
    if reached:
        r += params[P_GOAL_REWARD]
    if hit:
        r += params[P_COLLISION_REWARD]
    reward[i] = r
    terminated[i] = hit or reached
    truncated[i] = (not (hit or reached)) and max_steps > 0 and t >= max_steps
    success[i] = reached
    collided[i] = hit
    observe_one(i, pose, vel, goal, obst_xy, rects, radius, ray_dirs, params, obs)


@njit(parallel=True, **_JIT)
def step_batch(pose: np.ndarray, vel: np.ndarray, goal: np.ndarray, tstep: np.ndarray, phase: np.ndarray,
               obst_xy: np.ndarray, actions: np.ndarray, rects: np.ndarray, seg: np.ndarray,
               speed: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray, params: np.ndarray,
               max_steps: int, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
               truncated: np.ndarray, success: np.ndarray, collided: np.ndarray) -> None:
    """Step all N robots in parallel (prange over robots); ``max_steps`` <= 0 disables truncation."""
    for i in prange(pose.shape[0]):
        step_one(i, pose, vel, goal, tstep, phase, obst_xy, actions, rects, seg, speed, radius,
                 ray_dirs, params, max_steps, obs, reward, terminated, truncated, success, collided)


@njit(**_JIT)
def step_serial(pose: np.ndarray, vel: np.ndarray, goal: np.ndarray, tstep: np.ndarray, phase: np.ndarray,
                obst_xy: np.ndarray, actions: np.ndarray, rects: np.ndarray, seg: np.ndarray,
                speed: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray, params: np.ndarray,
                max_steps: int, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray, success: np.ndarray, collided: np.ndarray) -> None:
    """``step_batch`` without threads: for one robot a parallel region costs more than the step."""
    for i in range(pose.shape[0]):
        step_one(i, pose, vel, goal, tstep, phase, obst_xy, actions, rects, seg, speed, radius,
                 ray_dirs, params, max_steps, obs, reward, terminated, truncated, success, collided)


@njit(parallel=True, **_JIT)
def observe_batch(index: np.ndarray, pose: np.ndarray, vel: np.ndarray, goal: np.ndarray,
                  tstep: np.ndarray, phase: np.ndarray, obst_xy: np.ndarray, rects: np.ndarray,
                  seg: np.ndarray, speed: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray,
                  params: np.ndarray, obs: np.ndarray) -> None:
    """Recompute obstacle centres and observations for the robots in ``index`` (after a reset)."""
    for n in prange(index.shape[0]):
        i = index[n]
        obstacle_positions_one(tstep[i], phase[i], seg, speed, params[P_DT], obst_xy[i])
        observe_one(i, pose, vel, goal, obst_xy, rects, radius, ray_dirs, params, obs)
