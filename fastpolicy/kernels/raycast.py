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
# Reciprocal used for such a component in the vectorised loops: finite (no 0 * inf = NaN), and any
# crossing it produces lies far beyond every max_range.
_BIG = 1e300

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@njit(**_JIT)
def ray_rect_inv(ox: float, oy: float, inv_dx: float, inv_dy: float, x0: float, y0: float, x1: float,
                 y1: float) -> float:
    """Slab test with the direction's reciprocals precomputed (one division per ray, not four per
    rectangle); a zero reciprocal marks an axis-parallel component (see ``ray_rect``)."""
    tmin = -math.inf
    tmax = math.inf
    if inv_dx == 0.0:
        if ox < x0 or ox > x1:
            return math.inf
    else:
        t1 = (x0 - ox) * inv_dx
        t2 = (x1 - ox) * inv_dx
        tmin = max(tmin, min(t1, t2))
        tmax = min(tmax, max(t1, t2))
    if inv_dy == 0.0:
        if oy < y0 or oy > y1:
            return math.inf
    else:
        t1 = (y0 - oy) * inv_dy
        t2 = (y1 - oy) * inv_dy
        tmin = max(tmin, min(t1, t2))
        tmax = min(tmax, max(t1, t2))
    if tmin > tmax or tmax < 0.0:
        return math.inf
    return max(tmin, 0.0)


@njit(**_JIT)
def inverse_dir(d: float) -> float:
    """1 / d, or 0 for a component below ``DIR_EPS`` (treated as exactly axis-parallel)."""
    return 0.0 if abs(d) < DIR_EPS else 1.0 / d


@njit(**_JIT)
def ray_rect(ox: float, oy: float, dx: float, dy: float,
             x0: float, y0: float, x1: float, y1: float) -> float:
    """Distance along the unit ray (dx, dy) from (ox, oy) to the rectangle (slab method); inf on a miss."""
    return ray_rect_inv(ox, oy, inverse_dir(dx), inverse_dir(dy), x0, y0, x1, y1)


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
def ray_walls_inv(ox: float, oy: float, inv_dx: float, inv_dy: float, width: float, height: float) -> float:
    """``ray_walls`` with the direction's reciprocals precomputed (0 marks an axis-parallel component)."""
    t = math.inf
    if inv_dx > 0.0:
        t = min(t, (width - ox) * inv_dx)
    elif inv_dx < 0.0:
        t = min(t, -ox * inv_dx)
    if inv_dy > 0.0:
        t = min(t, (height - oy) * inv_dy)
    elif inv_dy < 0.0:
        t = min(t, -oy * inv_dy)
    return max(t, 0.0)


@njit(**_JIT)
def ray_walls(ox: float, oy: float, dx: float, dy: float, width: float, height: float) -> float:
    """Distance along the unit ray from inside the arena to its boundary (0 if the origin is outside)."""
    return ray_walls_inv(ox, oy, inverse_dir(dx), inverse_dir(dy), width, height)


@njit(**_JIT)
def cast_rays_one(ox: float, oy: float, theta: float, ray_dirs: np.ndarray, rects: np.ndarray,
                  circ_xy: np.ndarray, circ_r: np.ndarray, width: float, height: float,
                  max_range: float, out: np.ndarray, divisor: float = 1.0) -> None:
    """Fill ``out[k]`` with the clipped hit distance of ray k of one robot, divided by ``divisor``.

    ``ray_dirs`` (R, 2) are the rays' unit directions in the body frame (rotated by ``theta`` here:
    two multiplies instead of a cos and a sin per ray); ``circ_xy`` is (M, 2). ``divisor`` lets the
    step write normalised rays straight into its float32 observation row.

    Layout of the work, for speed: shapes farther than ``max_range`` from the robot are skipped
    (no point of them can be hit in range); for each remaining shape the inner loop over rays is
    branch-free (selects instead of ifs, reciprocals instead of divisions), so LLVM vectorises it.
    An axis-parallel direction gets a huge finite reciprocal instead of inf, which keeps 0 * inf NaNs
    out and gives the same answers as the branching ``ray_rect`` within ``max_range``.
    """
    n_rays = ray_dirs.shape[0]
    scratch = np.empty((5, n_rays))
    dx = scratch[0]
    dy = scratch[1]
    ix = scratch[2]
    iy = scratch[3]
    best = scratch[4]
    ct = math.cos(theta)
    st = math.sin(theta)
    for k in range(n_rays):
        x = ray_dirs[k, 0] * ct - ray_dirs[k, 1] * st
        y = ray_dirs[k, 1] * ct + ray_dirs[k, 0] * st
        dx[k] = x
        dy[k] = y
        ix[k] = 1.0 / x if abs(x) >= DIR_EPS else _BIG
        iy[k] = 1.0 / y if abs(y) >= DIR_EPS else _BIG
    for k in range(n_rays):
        tx = max((width - ox) * ix[k], -ox * ix[k])          # the exit crossing of the x slab
        ty = max((height - oy) * iy[k], -oy * iy[k])
        best[k] = min(max(min(tx, ty), 0.0), max_range)
    for j in range(rects.shape[0]):
        x0 = rects[j, 0]
        y0 = rects[j, 1]
        x1 = rects[j, 2]
        y1 = rects[j, 3]
        ex = max(x0 - ox, 0.0, ox - x1)
        ey = max(y0 - oy, 0.0, oy - y1)
        if ex * ex + ey * ey >= max_range * max_range:
            continue
        for k in range(n_rays):
            t1 = (x0 - ox) * ix[k]
            t2 = (x1 - ox) * ix[k]
            t3 = (y0 - oy) * iy[k]
            t4 = (y1 - oy) * iy[k]
            tmin = max(min(t1, t2), min(t3, t4))
            tmax = min(max(t1, t2), max(t3, t4))
            hit = max(tmin, 0.0)
            ok = (tmin <= tmax) & (tmax >= 0.0) & (hit < best[k])
            best[k] = hit if ok else best[k]
    for m in range(circ_r.shape[0]):
        fx = ox - circ_xy[m, 0]
        fy = oy - circ_xy[m, 1]
        r = circ_r[m]
        c = fx * fx + fy * fy - r * r
        reach = max_range + r
        if fx * fx + fy * fy >= reach * reach:
            continue
        for k in range(n_rays):
            b = fx * dx[k] + fy * dy[k]
            disc = b * b - c
            t = -b - math.sqrt(max(disc, 0.0))
            hit = 0.0 if c <= 0.0 else t
            ok = ((c <= 0.0) | ((disc >= 0.0) & (t >= 0.0))) & (hit < best[k])
            best[k] = hit if ok else best[k]
    for k in range(n_rays):
        out[k] = best[k] / divisor


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
