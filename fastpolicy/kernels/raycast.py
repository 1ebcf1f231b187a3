"""2-D ray casting and collision checks for the AGV warehouse, as numba kernels.

The AGV lidar casts R rays from each robot against the arena walls, axis-aligned rectangular shelves
and moving circular obstacles. We hand-write these kernels because no library does batched 2-D ray
casting in numba (shapely/pygame work on one geometry at a time from Python), and at thousands of
robots the per-call overhead of anything else dominates. Every function works on preallocated float64
arrays; the batched ones take a parallel ``prange`` over robots.

Conventions (shared with ``fastpolicy.envs.agv.numpy_twin``, the numpy oracle):

* arena: the rectangle [0, W] x [0, H]; its boundary is the wall;
* ``rects``: (K, 4) rows ``xmin, ymin, xmax, ymax``;
* circles: centres ``circ_xy`` (M, 2) (per robot: (N, M, 2)) and radii ``circ_r`` (M,);
* a ray from an origin inside a shape has distance 0; a miss is ``inf`` before clipping to
  ``max_range``; ray k points along ``ray_dirs[k]`` (R, 2) (unit vectors in the body frame) rotated
  by the robot's heading theta.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# Below this a direction component counts as zero, so the slab test never divides 0 by 0.
DIR_EPS = 1e-12

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@njit(**_JIT)
def ray_rect(ox: float, oy: float, dx: float, dy: float,
             x0: float, y0: float, x1: float, y1: float) -> float:
    """Distance along the unit ray (dx, dy) from (ox, oy) to the rectangle (slab method); inf on a miss."""
    tmin = -math.inf
    tmax = math.inf
    if abs(dx) < DIR_EPS:
        if ox < x0 or ox > x1:
            return math.inf
    else:
        t1 = (x0 - ox) / dx
        t2 = (x1 - ox) / dx
        tmin = max(tmin, min(t1, t2))
        tmax = min(tmax, max(t1, t2))
    if abs(dy) < DIR_EPS:
        if oy < y0 or oy > y1:
            return math.inf
    else:
        t1 = (y0 - oy) / dy
        t2 = (y1 - oy) / dy
        tmin = max(tmin, min(t1, t2))
        tmax = min(tmax, max(t1, t2))
    if tmin > tmax or tmax < 0.0:
        return math.inf
    return max(tmin, 0.0)


@njit(**_JIT)
def ray_circle(ox: float, oy: float, dx: float, dy: float, cx: float, cy: float, r: float) -> float:
    """Distance along the unit ray to the circle; 0 from inside, inf on a miss."""
    fx = ox - cx
    fy = oy - cy
    c = fx * fx + fy * fy - r * r
    if c <= 0.0:
        return 0.0
    b = fx * dx + fy * dy
    disc = b * b - c
    if disc < 0.0:
        return math.inf
    t = -b - math.sqrt(disc)
    # Outside the circle both roots share a sign: negative means the circle is behind the origin.
    return t if t >= 0.0 else math.inf


@njit(**_JIT)
def ray_walls(ox: float, oy: float, dx: float, dy: float, width: float, height: float) -> float:
    """Distance along the unit ray from inside the arena to its boundary (0 if the origin is outside)."""
    t = math.inf
    if dx > DIR_EPS:
        t = min(t, (width - ox) / dx)
    elif dx < -DIR_EPS:
        t = min(t, -ox / dx)
    if dy > DIR_EPS:
        t = min(t, (height - oy) / dy)
    elif dy < -DIR_EPS:
        t = min(t, -oy / dy)
    return max(t, 0.0)


@njit(**_JIT)
def cast_rays_one(ox: float, oy: float, theta: float, ray_dirs: np.ndarray, rects: np.ndarray,
                  circ_xy: np.ndarray, circ_r: np.ndarray, width: float, height: float,
                  max_range: float, out: np.ndarray, divisor: float = 1.0) -> None:
    """Fill ``out[k]`` with the clipped hit distance of ray k of one robot, divided by ``divisor``.

    ``ray_dirs`` (R, 2) are the rays' unit directions in the body frame (rotated by ``theta`` here:
    two multiplies instead of a cos and a sin per ray); ``circ_xy`` is (M, 2). ``divisor`` lets the
    step write normalised rays straight into its float32 observation row.

    Shapes are visited nearest first and a ray stops looking once the next shape's distance from the
    origin exceeds its best hit (no point of a shape is closer than that distance), so a ray in a
    cluttered warehouse tests a handful of shapes instead of all of them. This data-dependent early
    exit is what a broadcast numpy version cannot do.
    """
    n_rect = rects.shape[0]
    n_shape = n_rect + circ_r.shape[0]
    dist = np.empty(n_shape)
    order = np.empty(n_shape, dtype=np.int64)
    for j in range(n_shape):
        if j < n_rect:
            ex = max(rects[j, 0] - ox, 0.0, ox - rects[j, 2])
            ey = max(rects[j, 1] - oy, 0.0, oy - rects[j, 3])
            d = math.sqrt(ex * ex + ey * ey)
        else:
            m = j - n_rect
            ex = ox - circ_xy[m, 0]
            ey = oy - circ_xy[m, 1]
            d = max(math.sqrt(ex * ex + ey * ey) - circ_r[m], 0.0)
        # Insertion sort: a few dozen shapes at most.
        i = j
        while i > 0 and dist[i - 1] > d:
            dist[i] = dist[i - 1]
            order[i] = order[i - 1]
            i -= 1
        dist[i] = d
        order[i] = j
    ct = math.cos(theta)
    st = math.sin(theta)
    for k in range(ray_dirs.shape[0]):
        dx = ray_dirs[k, 0] * ct - ray_dirs[k, 1] * st
        dy = ray_dirs[k, 1] * ct + ray_dirs[k, 0] * st
        best = min(max_range, ray_walls(ox, oy, dx, dy, width, height))
        for i in range(n_shape):
            if dist[i] >= best:
                break
            j = order[i]
            if j < n_rect:
                d = ray_rect(ox, oy, dx, dy, rects[j, 0], rects[j, 1], rects[j, 2], rects[j, 3])
            else:
                m = j - n_rect
                d = ray_circle(ox, oy, dx, dy, circ_xy[m, 0], circ_xy[m, 1], circ_r[m])
            if d < best:
                best = d
        out[k] = best / divisor


@njit(parallel=True, **_JIT)
def cast_rays_batch(poses: np.ndarray, ray_dirs: np.ndarray, rects: np.ndarray, circ_xy: np.ndarray,
                    circ_r: np.ndarray, width: float, height: float, max_range: float,
                    out: np.ndarray) -> None:
    """Lidar for N robots: poses (N, 3) x, y, theta; ray_dirs (R, 2); circ_xy (N, M, 2); out (N, R)."""
    for i in prange(poses.shape[0]):
        cast_rays_one(poses[i, 0], poses[i, 1], poses[i, 2], ray_dirs, rects, circ_xy[i], circ_r,
                      width, height, max_range, out[i])


@njit(**_JIT)
def collides_one(x: float, y: float, radius: float, rects: np.ndarray, circ_xy: np.ndarray,
                 circ_r: np.ndarray, width: float, height: float) -> bool:
    """Whether a disc of ``radius`` at (x, y) overlaps a wall, a rectangle or a circle (touching is not)."""
    if x < radius or y < radius or x > width - radius or y > height - radius:
        return True
    r2 = radius * radius
    for j in range(rects.shape[0]):
        ex = max(rects[j, 0] - x, 0.0, x - rects[j, 2])
        ey = max(rects[j, 1] - y, 0.0, y - rects[j, 3])
        if ex * ex + ey * ey < r2:
            return True
    for m in range(circ_r.shape[0]):
        ex = x - circ_xy[m, 0]
        ey = y - circ_xy[m, 1]
        s = radius + circ_r[m]
        if ex * ex + ey * ey < s * s:
            return True
    return False


@njit(parallel=True, **_JIT)
def collides_batch(xy: np.ndarray, radius: float, rects: np.ndarray, circ_xy: np.ndarray,
                   circ_r: np.ndarray, width: float, height: float, out: np.ndarray) -> None:
    """Collision flags for N robots at xy (N, 2) against rects and their own circles circ_xy (N, M, 2)."""
    for i in prange(xy.shape[0]):
        out[i] = collides_one(xy[i, 0], xy[i, 1], radius, rects, circ_xy[i], circ_r, width, height)
