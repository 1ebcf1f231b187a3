"""The built-in AGV expert: grid A* on an inflated occupancy grid, pure pursuit along the path, and a
short-horizon sampling check against the (privileged, predicted) moving obstacles.

It exists to make demonstrations for imitation learning (``fastpolicy data make agv-<tier>-expert``)
and a reference success rate per tier. Pieces:

* **plan**: A* (8-connected, no corner cutting, octile heuristic) over cells whose centres are at
  least ``radius + clearance`` from shelves and walls; a cost band near obstacles keeps paths in the
  middle of aisles. Written with numba because a Python A* on a 120 x 90 grid takes ~0.1 s per plan.
* **track**: pure pursuit: steer towards the path point ``lookahead`` metres ahead of the closest
  point; turn in place when that point is more than 60 degrees off the heading.
* **avoid** (only when moving obstacles are near): roll the nominal command out for ``horizon`` steps
  against the obstacles' future positions (they are a deterministic function of the episode's phases,
  which the expert reads from the env — it is privileged); if the rollout comes within ``margin`` of
  an obstacle, pick the best of a grid of constant (v, omega) commands whose rollout stays clear,
  preferring progress towards the lookahead point (stopping and waiting is one of the candidates).
* **replan** when the robot strays more than ``replan_distance`` from its path.
* **modes** (layouts with ``modes``, e.g. bimodal-block): at ``reset`` the expert commits to one side
  of the layout's block, drawn at random (or given), by closing the other side on its A* grid; plans
  and replans are then the shortest paths within that homotopy class (see ``modes.py``). Layouts
  without modes plan exactly as before and draw nothing.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from fastpolicy.envs.agv.layout import Layout
from fastpolicy.envs.agv.modes import blocked_side_cells, classify_mode, mode_fractions
from fastpolicy.envs.agv.numpy_twin import obstacle_positions


@njit(cache=True)
def astar_grid(cost: np.ndarray, sx: int, sy: int, gx: int, gy: int) -> np.ndarray:
    """Cheapest 8-connected path of cells from (sx, sy) to (gx, gy); ``inf`` cost cells are blocked.

    Step cost is the move length times the mean of the two cells' costs (all >= 1, so the octile
    heuristic is admissible). Returns (P, 2) int64 cell indices, empty if there is no path.
    """
    nx, ny = cost.shape
    n = nx * ny
    g = np.full(n, np.inf)
    parent = np.full(n, -1, dtype=np.int64)
    closed = np.zeros(n, dtype=np.bool_)
    start = sx * ny + sy
    goal = gx * ny + gy
    g[start] = 0.0
    sqrt2 = math.sqrt(2.0)
    heap = [(0.0, start)]
    found = False
    while len(heap) > 0:
        _, u = heapq.heappop(heap)
        if closed[u]:
            continue
        closed[u] = True
        if u == goal:
            found = True
            break
        ux = u // ny
        uy = u - ux * ny
        for dx in range(-1, 2):
            for dy in range(-1, 2):
                if dx == 0 and dy == 0:
                    continue
                vx = ux + dx
                vy = uy + dy
                if vx < 0 or vy < 0 or vx >= nx or vy >= ny or not np.isfinite(cost[vx, vy]):
                    continue
                diag = dx != 0 and dy != 0
                if diag and not (np.isfinite(cost[ux + dx, uy]) and np.isfinite(cost[ux, uy + dy])):
                    continue
                v = vx * ny + vy
                if closed[v]:
                    continue
                step = sqrt2 if diag else 1.0
                ng = g[u] + step * 0.5 * (cost[ux, uy] + cost[vx, vy])
                if ng < g[v]:
                    g[v] = ng
                    parent[v] = u
                    ax = abs(gx - vx)
                    ay = abs(gy - vy)
                    h = (sqrt2 - 1.0) * min(ax, ay) + max(ax, ay)
                    heapq.heappush(heap, (ng + h, v))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    count = 0
    u = goal
    while u != -1:
        count += 1
        u = parent[u]
    out = np.empty((count, 2), dtype=np.int64)
    u = goal
    for k in range(count - 1, -1, -1):
        out[k, 0] = u // ny
        out[k, 1] = u - (u // ny) * ny
        u = parent[u]
    return out


@dataclass
class ExpertConfig:
    lookahead: float = 0.7          # pure-pursuit lookahead (m)
    heading_gain: float = 2.5       # omega = gain * bearing error, clipped to omega_max
    turn_in_place: float = math.pi / 3   # beyond this bearing error, v = 0
    cost_band: float = 0.6          # A* cost rises within this distance beyond the inflated obstacles
    cost_weight: float = 4.0        # extra cost at the inflated boundary
    horizon: int = 20               # avoidance rollout steps
    margin: float = 0.15            # required gap to moving obstacles over the rollout (m)
    sensing_range: float = 4.0      # avoidance only runs with an obstacle this close
    replan_distance: float = 1.0    # replan when the robot strays this far from the path (m)


class AGVExpert:
    """A* + pure pursuit expert for one robot on ``layout``; ``act`` returns a normalised action.

    ``seed`` seeds the expert's own generator, used to draw the side on layouts with modes when
    ``reset`` is given no ``rng`` (``run_expert_episode`` passes the env's ``np_random``).
    """

    def __init__(self, layout: Layout, config: ExpertConfig | None = None, seed: int | None = None) -> None:
        self.layout = layout
        self.cfg = config or ExpertConfig()
        r = layout.robot.radius
        inflate = r + layout.clearance
        centres = layout.cell_centres()
        self.static_dist = layout.static_distance(centres)           # (nx, ny)
        band = self.cfg.cost_band
        near = np.clip((inflate + band - self.static_dist) / band, 0.0, 1.0)
        base_cost = np.where(self.static_dist < inflate, np.inf, 1.0 + self.cfg.cost_weight * near)
        # One planning grid per mode (None: no side closed); reset picks the episode's.
        self._grids = {None: self._grid(base_cost, centres)}
        for mode in (layout.modes.names if layout.modes is not None else ()):
            blocked = np.where(blocked_side_cells(layout, mode), np.inf, base_cost)
            self._grids[mode] = self._grid(blocked, centres)
        self.cost, self._free_xy, self._free_idx = self._grids[None]
        self.mode: str | None = None
        self._rng = np.random.default_rng(seed)
        v = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
        v = layout.robot.v_min + v * (layout.robot.v_max - layout.robot.v_min)
        w = np.linspace(-1.0, 1.0, 9) * layout.robot.omega_max
        self._cands = np.stack(np.meshgrid(v, w, indexing="ij"), axis=-1).reshape(-1, 2)
        self.path: np.ndarray | None = None
        self._idx = 0
        self._goal = np.zeros(2)
        self.replans = 0

    @staticmethod
    def _grid(cost: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        free = np.isfinite(cost)
        return cost, centres[free], np.argwhere(free)

    # ------------------------------------------------------------------------------------ planning
    def _cell(self, xy: np.ndarray) -> tuple[int, int]:
        ix, iy = self.layout.cell_of(np.asarray(xy, dtype=np.float64))
        if np.isfinite(self.cost[ix, iy]):
            return int(ix), int(iy)
        k = int(np.argmin(np.sum((self._free_xy - xy) ** 2, axis=1)))   # nearest free cell
        return int(self._free_idx[k, 0]), int(self._free_idx[k, 1])

    def plan(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """World-coordinate waypoints (P, 2) from start to goal (the cells' centres, exact endpoints)."""
        sx, sy = self._cell(start)
        gx, gy = self._cell(goal)
        cells = astar_grid(self.cost, sx, sy, gx, gy)
        if len(cells) == 0:
            raise RuntimeError(f"AGV expert: no path from {np.round(start, 2)} to {np.round(goal, 2)} "
                               f"on layout {self.layout.name!r}")
        res = self.layout.grid_resolution
        pts = (cells.astype(np.float64) + 0.5) * res
        return np.concatenate([np.asarray(start, dtype=np.float64)[None, :2], pts[1:-1],
                               np.asarray(goal, dtype=np.float64)[None]], axis=0)

    def reset(self, pose: np.ndarray, goal: np.ndarray, mode: str | None = None,
              rng: np.random.Generator | None = None) -> None:
        """Plan a new episode from ``pose`` to ``goal``.

        On a layout with modes the expert commits to ``mode`` (a name from ``layout.modes.names``), or,
        if None, to one drawn uniformly from ``rng`` (default: the expert's own generator). On other
        layouts ``mode`` must be None and nothing is drawn.
        """
        names = self.layout.modes.names if self.layout.modes is not None else ()
        if mode is not None and mode not in names:
            raise ValueError(f"AGV expert: layout {self.layout.name!r} has modes {names}, got mode {mode!r}")
        if names and mode is None:
            mode = names[int((rng if rng is not None else self._rng).integers(len(names)))]
        self.mode = mode
        self.cost, self._free_xy, self._free_idx = self._grids[mode]
        self._goal = np.asarray(goal, dtype=np.float64).copy()
        self.path = self.plan(pose[:2], self._goal)
        self._idx = 0
        self.replans = 0

    # ------------------------------------------------------------------------------------ control
    def _lookahead_point(self, xy: np.ndarray) -> tuple[np.ndarray, float]:
        path = self.path
        window = path[self._idx:self._idx + 40]
        d = np.hypot(*(window - xy).T)
        k = int(np.argmin(d))
        self._idx += k
        dist_to_path = float(d[k])
        seg = np.hypot(*np.diff(path[self._idx:], axis=0).T)
        cum = np.cumsum(seg)
        j = int(np.searchsorted(cum, self.cfg.lookahead))
        target = path[min(self._idx + j + 1, len(path) - 1)] if len(cum) else path[-1]
        return target, dist_to_path

    def _nominal(self, pose: np.ndarray, target: np.ndarray) -> tuple[float, float]:
        rob = self.layout.robot
        bearing = math.atan2(target[1] - pose[1], target[0] - pose[0]) - pose[2]
        bearing = (bearing + math.pi) % (2 * math.pi) - math.pi
        w = float(np.clip(self.cfg.heading_gain * bearing, -rob.omega_max, rob.omega_max))
        v = rob.v_max * max(0.0, 1.0 - abs(bearing) / self.cfg.turn_in_place)
        return max(v, rob.v_min), w

    def _rollout(self, pose: np.ndarray, cmds: np.ndarray) -> np.ndarray:
        """(C, H, 2) positions after 1..H steps of each constant command (v, omega) in cmds (C, 2)."""
        dt = self.layout.dt
        x = np.full(len(cmds), pose[0])
        y = np.full(len(cmds), pose[1])
        th = np.full(len(cmds), pose[2])
        out = np.empty((len(cmds), self.cfg.horizon, 2))
        for h in range(self.cfg.horizon):
            x = x + cmds[:, 0] * np.cos(th) * dt
            y = y + cmds[:, 0] * np.sin(th) * dt
            th = th + cmds[:, 1] * dt
            out[:, h, 0] = x
            out[:, h, 1] = y
        return out

    def _clearance(self, xy: np.ndarray, t: int, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Min gap over the horizon to moving obstacles and to static geometry, per candidate (C,)."""
        lay = self.layout
        r = lay.robot.radius
        times = t + 1 + np.arange(self.cfg.horizon)
        obst = obstacle_positions(times, np.broadcast_to(phase, (len(times), len(phase))), lay.obstacle_seg,
                                  lay.obstacle_speed, lay.dt)                       # (H, M, 2)
        gap = np.hypot(xy[:, :, None, 0] - obst[None, :, :, 0], xy[:, :, None, 1] - obst[None, :, :, 1])
        gap = (gap - r - lay.obstacle_radius).min(axis=(1, 2))
        ix, iy = lay.cell_of(xy)
        static_gap = (self.static_dist[ix, iy] - r).min(axis=1)
        return gap, static_gap

    def act(self, pose: np.ndarray, t: int = 0, phase: np.ndarray | None = None) -> np.ndarray:
        """Normalised action (2,) float32 for the robot at ``pose`` at episode step ``t``.

        ``phase`` (M,) are the episode's obstacle phases (``env.core.phase[i]``); needed on dynamic tiers.
        """
        if self.path is None:
            raise RuntimeError("AGVExpert.reset(pose, goal) must be called at the start of each episode")
        pose = np.asarray(pose, dtype=np.float64)
        target, off_path = self._lookahead_point(pose[:2])
        if off_path > self.cfg.replan_distance:
            self.path = self.plan(pose[:2], self._goal)
            self._idx = 0
            self.replans += 1
            target, _ = self._lookahead_point(pose[:2])
        v, w = self._nominal(pose, target)
        lay = self.layout
        if lay.num_obstacles and phase is not None:
            now = obstacle_positions(np.array([t]), phase[None], lay.obstacle_seg, lay.obstacle_speed,
                                     lay.dt)[0]
            if np.hypot(*(now - pose[:2]).T).min() < self.cfg.sensing_range:
                v, w = self._avoid(pose, target, t, phase, v, w)
        rob = lay.robot
        a0 = 2.0 * (v - rob.v_min) / (rob.v_max - rob.v_min) - 1.0
        return np.clip(np.array([a0, w / rob.omega_max], dtype=np.float32), -1.0, 1.0)

    def _avoid(self, pose: np.ndarray, target: np.ndarray, t: int, phase: np.ndarray, v: float,
               w: float) -> tuple[float, float]:
        cmds = np.concatenate([np.array([[v, w]]), self._cands], axis=0)
        xy = self._rollout(pose, cmds)
        gap, static_gap = self._clearance(xy, t, phase)
        safe = (gap > self.cfg.margin) & (static_gap > 0.05)
        if safe[0]:
            return v, w
        if safe.any():
            # Progress towards the lookahead point, with a mild pull towards the nominal command.
            score = (np.hypot(*(xy[:, -1] - target).T) + 0.2 * np.abs(cmds[:, 1] - w)
                     + 0.5 * np.abs(cmds[:, 0] - v))
            k = int(np.argmin(np.where(safe, score, np.inf)))
        else:
            k = int(np.argmax(np.minimum(gap, static_gap)))
        return float(cmds[k, 0]), float(cmds[k, 1])


def run_expert_episode(env: Any, expert: AGVExpert, seed: int | None = None,
                       max_steps: int | None = None) -> dict[str, Any]:
    """Roll the expert out for one episode of a (possibly TimeLimit-wrapped) ``AGVEnv``.

    Returns a dict with ``obs`` (T, D), ``action`` (T, 2), ``reward`` (T,), ``terminal`` (T,),
    ``timeout`` (T,), ``success`` (T,), ``pose`` (T, 3) before each action, ``xy`` (T + 1, 2)
    positions, ``goal``, the episode outcome ``is_success`` and the expert's ``mode`` (None on layouts
    without modes; otherwise drawn from the env's ``np_random`` right after the reset, so a seeded
    env reproduces the modes too).
    """
    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    expert.reset(base.pose, base.goal, rng=base.np_random)
    rows: dict[str, list] = {k: [] for k in ("obs", "action", "reward", "terminal", "timeout", "success",
                                             "pose")}
    xy = [base.pose[:2]]
    core = base.core
    steps = 0
    while True:
        rows["pose"].append(core.pose[0].copy())
        action = expert.act(core.pose[0], int(core.tstep[0]), core.phase[0])
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        truncated = truncated or (max_steps is not None and steps >= max_steps and not terminated)
        rows["obs"].append(obs)
        rows["action"].append(action)
        rows["reward"].append(reward)
        rows["terminal"].append(terminated)
        rows["timeout"].append(truncated)
        rows["success"].append(info["success"])
        xy.append(base.pose[:2])
        obs = next_obs
        if terminated or truncated:
            break
    out = {"obs": np.asarray(rows["obs"], dtype=np.float32),
           "action": np.asarray(rows["action"], dtype=np.float32),
           "reward": np.asarray(rows["reward"], dtype=np.float32),
           "terminal": np.asarray(rows["terminal"], dtype=bool),
           "timeout": np.asarray(rows["timeout"], dtype=bool),
           "success": np.asarray(rows["success"], dtype=bool),
           "pose": np.asarray(rows["pose"], dtype=np.float64)}
    out.update(xy=np.asarray(xy), goal=base.goal, is_success=bool(out["success"][-1]), replans=expert.replans,
               mode=expert.mode)
    return out


def measure_expert(tier: str, episodes: int = 100, seed: int = 0) -> dict[str, Any]:
    """Expert outcome over ``episodes`` episodes of a registered tier (seeded once, then continuing).

    Used for the task cards' ``reference`` block and the success check in the tests. On a layout with
    modes the result also has ``mode_fractions`` (expert's choices, per mode name), ``classified``
    (``classify_mode`` of the trajectories, per mode name and ``"none"``) and ``classifier_agreement``
    (fraction of episodes whose classified mode is the expert's choice).
    """
    import gymnasium as gym

    from fastpolicy.envs.agv import TIERS

    env = gym.make(TIERS[tier][0])
    expert = AGVExpert(env.unwrapped.layout)
    outcomes = {"success": 0, "collision": 0, "timeout": 0}
    lengths = []
    chosen, classified = [], []
    for i in range(episodes):
        ep = run_expert_episode(env, expert, seed=seed if i == 0 else None)
        chosen.append(ep["mode"])
        if expert.layout.modes is not None:
            classified.append(classify_mode(expert.layout, ep["xy"]))
        kind = "success" if ep["is_success"] else ("collision" if ep["terminal"][-1] else "timeout")
        outcomes[kind] += 1
        lengths.append(len(ep["reward"]))
    env.close()
    result = {"tier": tier, "episodes": episodes, "seed": seed,
              "success_rate": outcomes["success"] / episodes, "collisions": outcomes["collision"],
              "timeouts": outcomes["timeout"], "mean_length": float(np.mean(lengths))}
    if expert.layout.modes is not None:
        names = expert.layout.modes.names
        result["mode_fractions"] = {m: chosen.count(m) / episodes for m in names}
        result["classified"] = mode_fractions(expert.layout, classified)
        result["classifier_agreement"] = float(np.mean([a == b for a, b in zip(chosen, classified)]))
    return result
