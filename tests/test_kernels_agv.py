"""numba AGV kernels (fastpolicy.kernels.raycast / agv): hand-computed cases, and agreement with the
numpy twin (fastpolicy.envs.agv.numpy_twin) within 1e-6 on random states."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastpolicy.envs.agv import numpy_twin
from fastpolicy.envs.agv.env import AGVCore
from fastpolicy.envs.agv.layout import get_layout
from fastpolicy.kernels import agv, raycast

W, H = 10.0, 8.0
RECTS = np.array([[4.0, 3.0, 5.0, 5.0], [7.0, 0.0, 8.0, 2.0]])
NO_CIRC = np.zeros((0, 2))
NO_R = np.zeros(0)


def test_hand_computed_rays():
    assert raycast.ray_walls(1.0, 1.0, 1.0, 0.0, W, H) == pytest.approx(9.0)
    assert raycast.ray_walls(1.0, 1.0, 0.0, -1.0, W, H) == pytest.approx(1.0)
    # (2, 4) looking +x hits the left face of rect 0 at x = 4; looking -x hits the wall at 2.
    assert raycast.ray_rect(2.0, 4.0, 1.0, 0.0, *RECTS[0]) == pytest.approx(2.0)
    assert raycast.ray_rect(2.0, 4.0, -1.0, 0.0, *RECTS[0]) == math.inf
    assert raycast.ray_rect(4.5, 4.0, 0.0, 1.0, *RECTS[0]) == 0.0          # origin inside
    d = 1.0 / math.sqrt(2.0)
    assert raycast.ray_rect(3.0, 2.0, d, d, *RECTS[0]) == pytest.approx(math.sqrt(2.0))   # hits corner
    assert raycast.ray_circle(0.0, 0.0, 1.0, 0.0, 3.0, 0.0, 0.5) == pytest.approx(2.5)
    assert raycast.ray_circle(0.0, 0.0, -1.0, 0.0, 3.0, 0.0, 0.5) == math.inf   # behind
    assert raycast.ray_circle(3.1, 0.0, 1.0, 0.0, 3.0, 0.0, 0.5) == 0.0        # inside

    out = np.empty(4)
    dirs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    circ = np.array([[2.0, 6.0]])
    raycast.cast_rays_one(2.0, 4.0, 0.0, dirs, RECTS, circ, np.array([0.5]), W, H, 8.0, out)
    np.testing.assert_allclose(out, [2.0, 1.5, 2.0, 4.0], atol=1e-12)
    # Heading pi/2 rotates the rays: ahead is +y (the circle), then -x, -y, +x.
    raycast.cast_rays_one(2.0, 4.0, 0.5 * np.pi, dirs, RECTS, circ, np.array([0.5]), W, H, 8.0, out)
    np.testing.assert_allclose(out, [1.5, 2.0, 4.0, 2.0], atol=1e-12)
    raycast.cast_rays_one(2.0, 4.0, 0.0, dirs, RECTS, circ, np.array([0.5]), W, H, 1.0, out)
    np.testing.assert_allclose(out, [1.0, 1.0, 1.0, 1.0])                # clipped to max_range


def test_hand_computed_collisions():
    c = raycast.collides_one
    assert c(0.2, 4.0, 0.3, RECTS, NO_CIRC, NO_R, W, H)                    # wall
    assert not c(0.4, 4.0, 0.3, RECTS, NO_CIRC, NO_R, W, H)
    assert c(3.8, 4.0, 0.3, RECTS, NO_CIRC, NO_R, W, H)                    # shelf face
    assert not c(3.6, 2.6, 0.3, RECTS, NO_CIRC, NO_R, W, H)                # near the corner, clear
    assert c(2.0, 4.0, 0.3, RECTS, np.array([[2.5, 4.0]]), np.array([0.3]), W, H)
    assert not c(2.0, 4.0, 0.3, RECTS, np.array([[2.7, 4.0]]), np.array([0.3]), W, H)


def test_wrap_and_obstacle_positions_agree():
    a = np.linspace(-20, 20, 101)
    np.testing.assert_allclose([agv.wrap_angle(x) for x in a], numpy_twin.wrap_angle(a), atol=1e-12)
    w = numpy_twin.wrap_angle(a)
    assert (w >= -np.pi).all() and (w < np.pi).all()
    seg = np.array([[1.0, 1.0, 5.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 3.0, 4.0]])
    speed = np.array([0.5, 1.0, 0.7])
    rng = np.random.default_rng(0)
    t = rng.integers(0, 500, size=20)
    phase = rng.random((20, 3)) * 10
    ref = numpy_twin.obstacle_positions(t, phase, seg, speed, 0.1)
    out = np.empty((3, 2))
    for i in range(20):
        agv.obstacle_positions_one(t[i], phase[i], seg, speed, 0.1, out)
        np.testing.assert_allclose(out, ref[i], atol=1e-9)
    assert (ref[:, 1] == 2.0).all()                                        # a zero-length patrol stays put
    assert (ref[:, 0, 0] >= 1.0).all() and (ref[:, 0, 0] <= 5.0).all()     # stays on its segment


def _random_states(layout, n, rng):
    pose = np.column_stack([rng.uniform(0.05, layout.width - 0.05, n),
                            rng.uniform(0.05, layout.height - 0.05, n), rng.uniform(-np.pi, np.pi, n)])
    pose[:8, 2] = [0.0, 0.5 * np.pi, np.pi, -0.5 * np.pi, 0.0, np.pi, 0.25 * np.pi, 0.0]  # axis-aligned rays
    m = layout.num_obstacles
    circ = np.column_stack([rng.uniform(0, layout.width, n * m), rng.uniform(0, layout.height, n * m)])
    return pose, circ.reshape(n, m, 2)


def test_rays_and_collisions_match_numpy_twin():
    layout = get_layout("complex-dynamic")
    rng = np.random.default_rng(1)
    n, angles = 512, np.arange(32) * (2 * np.pi / 32)
    pose, circ = _random_states(layout, n, rng)
    dirs = np.column_stack([np.cos(angles), np.sin(angles)])
    args = (dirs, layout.shelves, circ, layout.obstacle_radius, layout.width, layout.height, 8.0)
    ours = np.empty((n, 32))
    ref = np.empty((n, 32))
    raycast.cast_rays_batch(pose, *args, ours)
    numpy_twin.cast_rays_batch(pose, *args, ref)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    assert (ref == 0).any() and (ref < 8.0).mean() > 0.5 and (ref == 8.0).any()   # all regimes occur
    cargs = (0.3, layout.shelves, circ, layout.obstacle_radius, layout.width, layout.height)
    hit = np.empty(n, dtype=bool)
    hit_ref = np.empty(n, dtype=bool)
    raycast.collides_batch(pose[:, :2], *cargs, hit)
    numpy_twin.collides_batch(pose[:, :2], *cargs, hit_ref)
    np.testing.assert_array_equal(hit, hit_ref)
    assert 0.05 < hit.mean() < 0.95


@pytest.mark.parametrize("layout_name", ["simple-static", "complex-dynamic"])
def test_step_matches_numpy_twin(layout_name):
    layout = get_layout(layout_name)
    rng = np.random.default_rng(2)
    n = 300
    cores = [AGVCore(layout, n, backend=b, max_steps=40) for b in ("numba", "numpy")]
    pose, _ = _random_states(layout, n, rng)
    state = {"pose": pose, "vel": rng.uniform(-1, 1, (n, 2)),
             "goal": np.column_stack([rng.uniform(0, layout.width, n), rng.uniform(0, layout.height, n)]),
             "tstep": rng.integers(0, 30, n), "phase": rng.random((n, layout.num_obstacles)) * 20}
    for core in cores:
        for k, v in state.items():
            getattr(core, k)[:] = v
    seen_term = seen_trunc = False
    for _ in range(25):
        actions = rng.uniform(-1.3, 1.3, (n, 2))                            # includes clipping
        for core in cores:
            core.step(actions)
        a, b = cores
        np.testing.assert_allclose(a.obs, b.obs, atol=1e-6, rtol=0)
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-9, rtol=0)
        np.testing.assert_allclose(a.obst_xy, b.obst_xy, atol=1e-9, rtol=0)
        np.testing.assert_allclose(a.reward, b.reward, atol=1e-12)
        for key in ("terminated", "truncated", "success", "collided", "tstep"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        seen_term |= bool(a.terminated.any())
        seen_trunc |= bool(a.truncated.any())
    assert seen_term and seen_trunc
