"""Pictures of the AGV warehouse: ``render_frame`` (an RGB array, numpy only, cheap enough to call
every step) and ``plot_trajectories`` (a matplotlib Agg PNG of many episodes, for reports)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.envs.agv.layout import Layout

_BG = (245, 245, 240)
_SHELF = (120, 100, 80)
_OBSTACLE = (200, 60, 60)
_ROBOT = (40, 90, 200)
_GOAL = (40, 170, 70)
_RAY = (150, 170, 230)
_WALL = (30, 30, 30)


def render_frame(layout: Layout, pose: np.ndarray, goal: np.ndarray, obstacle_xy: np.ndarray,
                 rays: np.ndarray | None = None, ray_angles: np.ndarray | None = None,
                 pixels: int = 400) -> np.ndarray:
    """(H, W, 3) uint8 top-down view: shelves, obstacles, goal, robot with heading, lidar hit points."""
    scale = pixels / max(layout.width, layout.height)
    w_px = int(round(layout.width * scale))
    h_px = int(round(layout.height * scale))
    img = np.empty((h_px, w_px, 3), dtype=np.uint8)
    img[:] = _BG
    # Pixel centres in world coordinates; image row 0 is the top (y = height).
    xs = (np.arange(w_px) + 0.5) / scale
    ys = layout.height - (np.arange(h_px) + 0.5) / scale

    def fill_rect(x0: float, y0: float, x1: float, y1: float, color: tuple[int, int, int]) -> None:
        cols = (xs >= x0) & (xs <= x1)
        rows = (ys >= y0) & (ys <= y1)
        img[np.ix_(rows, cols)] = color

    def fill_disc(cx: float, cy: float, r: float, color: tuple[int, int, int]) -> None:
        cols = np.flatnonzero(np.abs(xs - cx) <= r)
        rows = np.flatnonzero(np.abs(ys - cy) <= r)
        if len(cols) == 0 or len(rows) == 0:
            return
        mask = (xs[cols][None, :] - cx) ** 2 + (ys[rows][:, None] - cy) ** 2 <= r * r
        sub = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        sub[mask] = color

    for s in layout.shelves:
        fill_rect(*s, _SHELF)
    x, y, th = float(pose[0]), float(pose[1]), float(pose[2])
    if rays is not None and ray_angles is not None:
        dot = 1.5 / scale
        for d, a in zip(rays, ray_angles):
            fill_disc(x + d * np.cos(th + a), y + d * np.sin(th + a), dot, _RAY)
    fill_disc(float(goal[0]), float(goal[1]), layout.goal_tolerance, _GOAL)
    for (cx, cy), r in zip(obstacle_xy, layout.obstacle_radius):
        fill_disc(float(cx), float(cy), float(r), _OBSTACLE)
    rad = layout.robot.radius
    fill_disc(x, y, rad, _ROBOT)
    for f in np.linspace(0.0, 1.6 * rad, 12):
        fill_disc(x + f * np.cos(th), y + f * np.sin(th), 1.0 / scale, _WALL)
    img[0, :] = img[-1, :] = img[:, 0] = img[:, -1] = _WALL
    return img


def plot_trajectories(layout: Layout, trajectories: Sequence[Any], path: str | os.PathLike,
                      title: str | None = None) -> Path:
    """Save a PNG of the layout with trajectories drawn on it.

    Each trajectory is an (T, 2+) array of positions or a mapping with ``xy`` (T, 2) and optionally
    ``success`` (bool) and ``goal`` (2,); successes are drawn green, failures red, unknown blue.
    """
    # A bare Figure renders with Agg and leaves pyplot's global backend and figure list alone.
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    fig = Figure(figsize=(6.0, 6.0 * layout.height / layout.width + 0.4), dpi=120)
    ax = fig.subplots()
    ax.add_patch(Rectangle((0, 0), layout.width, layout.height, fill=False, lw=2, color="black"))
    for x0, y0, x1, y1 in layout.shelves:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="#786450"))
    for x0, y0, x1, y1 in layout.start_regions:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="#4060c0", alpha=0.12))
    for x0, y0, x1, y1 in layout.goal_regions:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color="#30a050", alpha=0.12))
    for (ax_, ay, bx, by), r in zip(layout.obstacle_seg, layout.obstacle_radius):
        ax.plot([ax_, bx], [ay, by], color="#c83c3c", lw=1, ls="--")
        ax.add_patch(Circle((ax_, ay), r, color="#c83c3c", alpha=0.4))
    for traj in trajectories:
        if isinstance(traj, dict):
            xy = np.asarray(traj["xy"])
            ok = traj.get("success")
            goal = traj.get("goal")
        else:
            xy, ok, goal = np.asarray(traj), None, None
        color = "#1f77b4" if ok is None else ("#2ca02c" if ok else "#d62728")
        ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1, alpha=0.8)
        ax.plot(xy[0, 0], xy[0, 1], "o", color=color, ms=3)
        if goal is not None:
            ax.plot(goal[0], goal[1], "*", color=color, ms=7)
    ax.set_xlim(0, layout.width)
    ax.set_ylim(0, layout.height)
    ax.set_aspect("equal")
    ax.set_title(title or f"AGV layout {layout.name}: {len(trajectories)} trajectories")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
