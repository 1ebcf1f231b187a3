"""The AGV step in plain numpy: the test oracle for the numba kernels and the benchmark baseline.

Same signatures and semantics as ``fastpolicy.kernels.agv`` / ``fastpolicy.kernels.raycast`` (see
their docstrings), implemented the way one would without numba: broadcasting over robots x rays x
shapes, no Python loop over robots. Robots are processed in chunks of ``CHUNK`` only to bound the
(N, R, K) temporaries; each chunk is one set of whole-array operations. Written independently of
the kernels (no shared helpers) so that agreement between the two means something.
"""

from __future__ import annotations

import numpy as np

from fastpolicy.kernels.agv import (
    P_COLLISION_REWARD,
    P_DT,
    P_GOAL_REWARD,
    P_GOAL_TOL,
    P_HEIGHT,
    P_MAX_RANGE,
    P_OMEGA_MAX,
    P_RADIUS,
    P_TIME_PENALTY,
    P_V_MAX,
    P_V_MIN,
    P_WIDTH,
)

CHUNK = 512
DIR_EPS = 1e-12


def wrap_angle(a: np.ndarray) -> np.ndarray:
    return a - 2.0 * np.pi * np.floor((a + np.pi) / (2.0 * np.pi))


def obstacle_positions(t: np.ndarray, phase: np.ndarray, seg: np.ndarray, speed: np.ndarray,
                       dt: float) -> np.ndarray:
    """Centres (N, M, 2) of the patrolling obstacles at steps t (N,) for phases (N, M)."""
    a = seg[:, :2]
    e = seg[:, 2:] - a
    length = np.sqrt(e[:, 0] * e[:, 0] + e[:, 1] * e[:, 1])
    moving = length > 0.0
    safe_len = np.where(moving, length, 1.0)
    s = np.mod(phase + speed * t[:, None].astype(np.float64) * dt, 2.0 * safe_len)
    d = np.where(s <= safe_len, s, 2.0 * safe_len - s)
    unit = e / safe_len[:, None]
    xy = a + unit * d[..., None]
    return np.where(moving[:, None], xy, a)


def ray_distances(ox: np.ndarray, oy: np.ndarray, dx: np.ndarray, dy: np.ndarray, rects: np.ndarray,
                  circ_xy: np.ndarray, circ_r: np.ndarray, width: float, height: float,
                  max_range: float) -> np.ndarray:
    """Clipped hit distances (N, R) for origins (N,) and unit directions (N, R)."""
    ox = ox[:, None]
    oy = oy[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        # Walls: the origin is inside the arena, so the exit distance is the nearest positive crossing.
        tx = np.where(dx > DIR_EPS, (width - ox) / dx, np.where(dx < -DIR_EPS, -ox / dx, np.inf))
        ty = np.where(dy > DIR_EPS, (height - oy) / dy, np.where(dy < -DIR_EPS, -oy / dy, np.inf))
        best = np.minimum(np.maximum(np.minimum(tx, ty), 0.0), max_range)

        if len(rects):
            o_x, o_y = ox[..., None], oy[..., None]                  # (N, 1, 1)
            d_x, d_y = dx[..., None], dy[..., None]                  # (N, R, 1)
            x0, y0, x1, y1 = rects[:, 0], rects[:, 1], rects[:, 2], rects[:, 3]
            zx = np.abs(d_x) < DIR_EPS
            zy = np.abs(d_y) < DIR_EPS
            t1 = (x0 - o_x) / d_x
            t2 = (x1 - o_x) / d_x
            tminx = np.where(zx, -np.inf, np.minimum(t1, t2))
            tmaxx = np.where(zx, np.inf, np.maximum(t1, t2))
            outx = zx & ((o_x < x0) | (o_x > x1))
            t1 = (y0 - o_y) / d_y
            t2 = (y1 - o_y) / d_y
            tminy = np.where(zy, -np.inf, np.minimum(t1, t2))
            tmaxy = np.where(zy, np.inf, np.maximum(t1, t2))
            outy = zy & ((o_y < y0) | (o_y > y1))
            tmin = np.maximum(tminx, tminy)
            tmax = np.minimum(tmaxx, tmaxy)
            miss = outx | outy | (tmin > tmax) | (tmax < 0.0)
            t_rect = np.where(miss, np.inf, np.maximum(tmin, 0.0)).min(axis=-1)
            best = np.minimum(best, t_rect)

        if len(circ_r):
            fx = ox[..., None] - circ_xy[:, None, :, 0]              # (N, 1, M)
            fy = oy[..., None] - circ_xy[:, None, :, 1]
            c = fx * fx + fy * fy - circ_r * circ_r
            b = fx * dx[..., None] + fy * dy[..., None]              # (N, R, M)
            disc = b * b - c
            t = -b - np.sqrt(np.maximum(disc, 0.0))
            t_circ = np.where(c <= 0.0, 0.0, np.where((disc < 0.0) | (t < 0.0), np.inf, t)).min(axis=-1)
            best = np.minimum(best, t_circ)
    return best


def world_dirs(theta: np.ndarray, ray_dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (N, R) in the world frame: body-frame ``ray_dirs`` (R, 2) rotated by theta (N,)."""
    c = np.cos(theta)[:, None]
    s = np.sin(theta)[:, None]
    return ray_dirs[:, 0] * c - ray_dirs[:, 1] * s, ray_dirs[:, 1] * c + ray_dirs[:, 0] * s


def cast_rays_batch(poses: np.ndarray, ray_dirs: np.ndarray, rects: np.ndarray, circ_xy: np.ndarray,
                    circ_r: np.ndarray, width: float, height: float, max_range: float,
                    out: np.ndarray) -> None:
    """Numpy twin of ``fastpolicy.kernels.raycast.cast_rays_batch``."""
    dx, dy = world_dirs(poses[:, 2], ray_dirs)
    out[:] = ray_distances(poses[:, 0], poses[:, 1], dx, dy, rects, circ_xy, circ_r, width, height, max_range)


def collides(x: np.ndarray, y: np.ndarray, radius: float, rects: np.ndarray, circ_xy: np.ndarray,
             circ_r: np.ndarray, width: float, height: float) -> np.ndarray:
    """(N,) bool: disc at (x, y) overlaps a wall, a rectangle or one of its circles circ_xy (N, M, 2)."""
    hit = (x < radius) | (y < radius) | (x > width - radius) | (y > height - radius)
    if len(rects):
        ex = np.maximum(np.maximum(rects[:, 0] - x[:, None], 0.0), x[:, None] - rects[:, 2])
        ey = np.maximum(np.maximum(rects[:, 1] - y[:, None], 0.0), y[:, None] - rects[:, 3])
        hit |= (ex * ex + ey * ey < radius * radius).any(axis=1)
    if len(circ_r):
        ex = x[:, None] - circ_xy[..., 0]
        ey = y[:, None] - circ_xy[..., 1]
        s = radius + circ_r
        hit |= (ex * ex + ey * ey < s * s).any(axis=1)
    return hit


def collides_batch(xy: np.ndarray, radius: float, rects: np.ndarray, circ_xy: np.ndarray,
                   circ_r: np.ndarray, width: float, height: float, out: np.ndarray) -> None:
    """Numpy twin of ``fastpolicy.kernels.raycast.collides_batch``."""
    out[:] = collides(xy[:, 0], xy[:, 1], radius, rects, circ_xy, circ_r, width, height)


def _observe(sl: slice | np.ndarray, pose: np.ndarray, vel: np.ndarray, goal: np.ndarray,
             obst_xy: np.ndarray, rects: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray,
             params: np.ndarray) -> np.ndarray:
    """Observation rows (n, R + 5) float32 for the robots selected by ``sl``."""
    max_range = params[P_MAX_RANGE]
    width, height = params[P_WIDTH], params[P_HEIGHT]
    p = pose[sl]
    dx, dy = world_dirs(p[:, 2], ray_dirs)
    rays = ray_distances(p[:, 0], p[:, 1], dx, dy, rects, obst_xy[sl], radius, width, height, max_range)
    gx = goal[sl, 0] - p[:, 0]
    gy = goal[sl, 1] - p[:, 1]
    dist = np.sqrt(gx * gx + gy * gy)
    c, s = np.cos(p[:, 2]), np.sin(p[:, 2])
    far = dist > 1e-9
    safe = np.where(far, dist, 1.0)
    gc = np.where(far, (gx * c + gy * s) / safe, 1.0)
    gs = np.where(far, (-gx * s + gy * c) / safe, 0.0)
    diag = np.sqrt(width * width + height * height)
    v = vel[sl]
    extra = np.stack([np.minimum(dist / diag, 1.0), gc, gs, v[:, 0] / params[P_V_MAX],
                      v[:, 1] / params[P_OMEGA_MAX]], axis=1)
    return np.concatenate([rays / max_range, extra], axis=1).astype(np.float32)


def step_batch(pose: np.ndarray, vel: np.ndarray, goal: np.ndarray, tstep: np.ndarray, phase: np.ndarray,
               obst_xy: np.ndarray, actions: np.ndarray, rects: np.ndarray, seg: np.ndarray,
               speed: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray, params: np.ndarray,
               max_steps: int, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
               truncated: np.ndarray, success: np.ndarray, collided: np.ndarray) -> None:
    """Numpy twin of ``fastpolicy.kernels.agv.step_batch`` (same in-place outputs)."""
    dt = params[P_DT]
    for start in range(0, pose.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        a = np.clip(actions[sl], -1.0, 1.0)
        v = params[P_V_MIN] + 0.5 * (a[:, 0] + 1.0) * (params[P_V_MAX] - params[P_V_MIN])
        w = a[:, 1] * params[P_OMEGA_MAX]
        th = pose[sl, 2]
        x = pose[sl, 0] + v * np.cos(th) * dt
        y = pose[sl, 1] + v * np.sin(th) * dt
        pose[sl, 0] = x
        pose[sl, 1] = y
        pose[sl, 2] = wrap_angle(th + w * dt)
        vel[sl, 0] = v
        vel[sl, 1] = w
        tstep[sl] += 1
        obst_xy[sl] = obstacle_positions(tstep[sl], phase[sl], seg, speed, dt)
        hit = collides(x, y, params[P_RADIUS], rects, obst_xy[sl], radius, params[P_WIDTH],
                       params[P_HEIGHT])
        gx = goal[sl, 0] - x
        gy = goal[sl, 1] - y
        tol = params[P_GOAL_TOL]
        reached = ~hit & (gx * gx + gy * gy <= tol * tol)
        reward[sl] = (params[P_TIME_PENALTY] + np.where(reached, params[P_GOAL_REWARD], 0.0)
                      + np.where(hit, params[P_COLLISION_REWARD], 0.0))
        done = hit | reached
        terminated[sl] = done
        truncated[sl] = ~done & (max_steps > 0) & (tstep[sl] >= max_steps)
        success[sl] = reached
        collided[sl] = hit
        obs[sl] = _observe(sl, pose, vel, goal, obst_xy, rects, radius, ray_dirs, params)


def observe_batch(index: np.ndarray, pose: np.ndarray, vel: np.ndarray, goal: np.ndarray,
                  tstep: np.ndarray, phase: np.ndarray, obst_xy: np.ndarray, rects: np.ndarray,
                  seg: np.ndarray, speed: np.ndarray, radius: np.ndarray, ray_dirs: np.ndarray,
                  params: np.ndarray, obs: np.ndarray) -> None:
    """Numpy twin of ``fastpolicy.kernels.agv.observe_batch``."""
    obst_xy[index] = obstacle_positions(tstep[index], phase[index], seg, speed, params[P_DT])
    obs[index] = _observe(index, pose, vel, goal, obst_xy, rects, radius, ray_dirs, params)
