"""Warehouse layouts as data: a strict YAML loader plus the occupancy grid the expert plans on.

A layout file (``envs/agv/<name>.yaml``) describes one scene: the arena size, rectangular shelves,
moving circular obstacles on patrol segments, and the regions start and goal positions are drawn
from. The loader rejects anything it does not understand and names the problem, because a typo in a
layout otherwise shows up hours later as a policy that "cannot learn". Fields::

    name: simple-static
    description: free text
    size: [16.0, 12.0]                  # arena width, height in metres; the boundary is a wall
    dt: 0.1                             # seconds per step
    robot: {radius: 0.3, v_min: 0.0, v_max: 1.0, omega_max: 1.5}
    lidar: {rays: 32, max_range: 8.0}   # rays evenly spaced over 360 degrees
    goal_tolerance: 0.4                 # reached when the centre is this close to the goal
    min_start_goal_distance: 4.0
    clearance: 0.1                      # extra margin over the robot radius for free space / planning
    grid_resolution: 0.2                # A* occupancy grid cell size
    shelves:                            # axis-aligned rectangles: [xmin, ymin, xmax, ymax]
      - [3.0, 2.0, 4.0, 10.0]
    obstacles:                          # moving discs, back and forth between from and to
      - {radius: 0.35, from: [6.0, 1.0], to: [6.0, 11.0], speed: 0.5}
    start_regions: [[0.5, 0.5, 2.0, 11.5]]   # rectangles [xmin, ymin, xmax, ymax]
    goal_regions: [[14.0, 0.5, 15.5, 11.5]]
    modes: {block: 0, axis: y}          # optional: the route passes shelf 0 on one of two sides
                                        # (axis y: south / north, axis x: west / east); the expert
                                        # commits to one at random per episode (see modes.py)

Free space is the set of grid cells whose centres are at least ``radius + clearance`` from every
shelf and wall and that belong to the connected component holding most start-region cells; starts and
goals are only ever drawn there, so every sampled goal is reachable by the A* expert.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_TOP_KEYS = {"name", "description", "size", "dt", "robot", "lidar", "goal_tolerance",
             "min_start_goal_distance", "clearance", "grid_resolution", "shelves", "obstacles",
             "start_regions", "goal_regions", "modes"}
_MODES_KEYS = {"block", "axis"}
_ROBOT_KEYS = {"radius", "v_min", "v_max", "omega_max"}
_LIDAR_KEYS = {"rays", "max_range"}
_OBSTACLE_KEYS = {"radius", "from", "to", "speed"}
_REQUIRED = ("name", "size", "start_regions", "goal_regions")


@dataclass(frozen=True)
class RobotSpec:
    radius: float = 0.3
    v_min: float = 0.0
    v_max: float = 1.0
    omega_max: float = 1.5


@dataclass(frozen=True)
class LidarSpec:
    rays: int = 32
    max_range: float = 8.0


@dataclass(frozen=True)
class ModeSpec:
    """Two ways past one block: shelf ``block`` is passed on the low or the high side of ``axis``."""

    block: int
    axis: str = "y"

    @property
    def names(self) -> tuple[str, str]:
        """Mode names, low side first: ("south", "north") for axis y, ("west", "east") for axis x."""
        return ("south", "north") if self.axis == "y" else ("west", "east")


@dataclass(frozen=True, eq=False)
class Layout:
    """A validated scene. Array fields are float64 and shaped for the kernels."""

    name: str
    width: float
    height: float
    shelves: np.ndarray                 # (K, 4) xmin, ymin, xmax, ymax
    obstacle_seg: np.ndarray            # (M, 4) ax, ay, bx, by
    obstacle_speed: np.ndarray          # (M,) m/s
    obstacle_radius: np.ndarray         # (M,)
    start_regions: np.ndarray           # (S, 4)
    goal_regions: np.ndarray            # (G, 4)
    robot: RobotSpec = field(default_factory=RobotSpec)
    lidar: LidarSpec = field(default_factory=LidarSpec)
    dt: float = 0.1
    goal_tolerance: float = 0.4
    min_start_goal_distance: float = 4.0
    clearance: float = 0.1
    grid_resolution: float = 0.2
    description: str = ""
    modes: ModeSpec | None = None       # set when the route has two demonstrated modes
    free_space: np.ndarray = field(default=None, repr=False)   # (nx, ny) bool, set by the loader
    source: str = ""

    @property
    def num_obstacles(self) -> int:
        return int(self.obstacle_radius.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int]:
        return grid_shape(self.width, self.height, self.grid_resolution)

    def cell_of(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid indices (ix, iy) of points xy (..., 2), clipped into the grid."""
        nx, ny = self.grid_shape
        ix = np.clip((xy[..., 0] / self.grid_resolution).astype(np.int64), 0, nx - 1)
        iy = np.clip((xy[..., 1] / self.grid_resolution).astype(np.int64), 0, ny - 1)
        return ix, iy

    def cell_centres(self) -> np.ndarray:
        """(nx, ny, 2) world coordinates of the grid cell centres."""
        return cell_centres(self.width, self.height, self.grid_resolution)

    def static_distance(self, xy: np.ndarray) -> np.ndarray:
        """Euclidean distance from points xy (..., 2) to the nearest shelf or wall (0 inside a shelf)."""
        return static_distance(xy, self.shelves, self.width, self.height)


def grid_shape(width: float, height: float, res: float) -> tuple[int, int]:
    return int(math.ceil(width / res - 1e-9)), int(math.ceil(height / res - 1e-9))


def cell_centres(width: float, height: float, res: float) -> np.ndarray:
    nx, ny = grid_shape(width, height, res)
    xs = (np.arange(nx) + 0.5) * res
    ys = (np.arange(ny) + 0.5) * res
    return np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)


def static_distance(xy: np.ndarray, shelves: np.ndarray, width: float, height: float) -> np.ndarray:
    """Distance from points to the nearest shelf (0 inside) or arena wall, broadcast over shelves."""
    x = xy[..., 0]
    y = xy[..., 1]
    dist = np.minimum(np.minimum(x, width - x), np.minimum(y, height - y))
    if len(shelves):
        ex = np.maximum(np.maximum(shelves[:, 0] - x[..., None], 0.0), x[..., None] - shelves[:, 2])
        ey = np.maximum(np.maximum(shelves[:, 1] - y[..., None], 0.0), y[..., None] - shelves[:, 3])
        dist = np.minimum(dist, np.sqrt(ex * ex + ey * ey).min(axis=-1))
    return dist


def layouts_dir() -> Path:
    """The folder holding layout YAML files: ``<tasks dir>/agv`` (``$FASTPOLICY_TASKS_DIR`` aware)."""
    from fastpolicy.envs.registry import tasks_dir

    return tasks_dir() / "agv"


def list_layouts() -> list[str]:
    return sorted(p.stem for p in layouts_dir().glob("*.yaml"))


def get_layout(layout: str | os.PathLike | Layout) -> Layout:
    """A Layout from an instance, a layout name under ``layouts_dir()``, or a path to a YAML file."""
    if isinstance(layout, Layout):
        return layout
    path = Path(layout)
    if path.suffix not in (".yaml", ".yml"):
        path = layouts_dir() / f"{layout}.yaml"
        if not path.exists():
            known = ", ".join(list_layouts()) or "(none)"
            raise ValueError(f"unknown AGV layout {str(layout)!r}; known: {known}")
    return load_layout(path)


def load_layout(path: str | os.PathLike) -> Layout:
    """Parse and validate a layout file; raises ValueError naming the problem."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"AGV layout file {path} does not exist")
    data = yaml.safe_load(path.read_text())
    return parse_layout(data, source=str(path))


def _check_keys(where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")
    return data


def _floats(where: str, value: Any, n: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {n} numbers, got {value!r}") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: expected {n} finite numbers, got {value!r}")
    return arr


def _rects(where: str, value: Any, width: float, height: float) -> np.ndarray:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of [xmin, ymin, xmax, ymax] rectangles")
    rows = []
    for i, item in enumerate(value):
        r = _floats(f"{where}[{i}]", item, 4)
        if r[0] > r[2] or r[1] > r[3]:
            raise ValueError(f"{where}[{i}] {r.tolist()}: needs xmin <= xmax and ymin <= ymax")
        if r[0] < 0 or r[1] < 0 or r[2] > width or r[3] > height:
            raise ValueError(f"{where}[{i}] {r.tolist()} is out of bounds of the {width} x {height} arena")
        rows.append(r)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def _positive(where: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{where}: must be a positive number, got {value!r}")
    return v


def parse_layout(data: Any, source: str = "<dict>") -> Layout:
    """Validate a layout mapping (already parsed from YAML) and build a Layout."""
    where = f"AGV layout {source}"
    data = _check_keys(where, data, _TOP_KEYS)
    for key in _REQUIRED:
        if key not in data:
            raise ValueError(f"{where}: missing required key {key!r}")
    width, height = (float(v) for v in _floats(f"{where}: size", data["size"], 2))
    if width <= 0 or height <= 0:
        raise ValueError(f"{where}: size must be positive, got {data['size']!r}")
    robot = RobotSpec(**_check_keys(f"{where}: robot", data.get("robot", {}), _ROBOT_KEYS))
    for key in ("radius", "v_max", "omega_max"):
        _positive(f"{where}: robot.{key}", getattr(robot, key))
    if not (robot.v_min < robot.v_max):
        raise ValueError(f"{where}: robot.v_min must be below robot.v_max")
    lidar_data = _check_keys(f"{where}: lidar", data.get("lidar", {}), _LIDAR_KEYS)
    lidar = LidarSpec(**lidar_data)
    if not (isinstance(lidar.rays, int) and lidar.rays > 0):
        raise ValueError(f"{where}: lidar.rays must be a positive integer, got {lidar.rays!r}")
    _positive(f"{where}: lidar.max_range", lidar.max_range)
    scalars = {k: _positive(f"{where}: {k}", data[k]) for k in
               ("dt", "goal_tolerance", "min_start_goal_distance", "grid_resolution") if k in data}
    clearance = float(data.get("clearance", 0.1))
    if not clearance >= 0:
        raise ValueError(f"{where}: clearance must be >= 0")

    shelves = _rects(f"{where}: shelves", data.get("shelves"), width, height)
    seg, speed, radius = [], [], []
    obstacles = data.get("obstacles") or []
    if not isinstance(obstacles, list):
        raise ValueError(f"{where}: obstacles must be a list of mappings")
    for i, ob in enumerate(obstacles):
        ow = f"{where}: obstacles[{i}]"
        ob = _check_keys(ow, ob, _OBSTACLE_KEYS)
        for key in ("radius", "from"):
            if key not in ob:
                raise ValueError(f"{ow}: missing required key {key!r}")
        r = _positive(f"{ow}.radius", ob["radius"])
        a = _floats(f"{ow}.from", ob["from"], 2)
        b = _floats(f"{ow}.to", ob.get("to", ob["from"]), 2)
        s = float(ob.get("speed", 0.0))
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"{ow}.speed must be >= 0")
        for name, p in (("from", a), ("to", b)):
            if p[0] - r < 0 or p[1] - r < 0 or p[0] + r > width or p[1] + r > height:
                raise ValueError(f"{ow}: patrol point {name}={p.tolist()} (radius {r}) is out of bounds "
                                 f"of the {width} x {height} arena")
        seg.append(np.concatenate([a, b]))
        speed.append(s)
        radius.append(r)

    starts = _rects(f"{where}: start_regions", data["start_regions"], width, height)
    goals = _rects(f"{where}: goal_regions", data["goal_regions"], width, height)
    if len(starts) == 0 or len(goals) == 0:
        raise ValueError(f"{where}: needs at least one start region and one goal region")

    modes = None
    if data.get("modes") is not None:
        md = _check_keys(f"{where}: modes", data["modes"], _MODES_KEYS)
        block, axis = md.get("block"), md.get("axis", "y")
        if not (isinstance(block, int) and 0 <= block < len(shelves)):
            raise ValueError(f"{where}: modes.block must index one of the {len(shelves)} shelves, "
                             f"got {block!r}")
        if axis not in ("x", "y"):
            raise ValueError(f"{where}: modes.axis must be 'x' or 'y', got {axis!r}")
        modes = ModeSpec(block=block, axis=axis)

    layout = Layout(
        name=str(data["name"]), width=width, height=height, shelves=shelves,
        obstacle_seg=np.asarray(seg, dtype=np.float64).reshape(-1, 4),
        obstacle_speed=np.asarray(speed, dtype=np.float64),
        obstacle_radius=np.asarray(radius, dtype=np.float64),
        start_regions=starts, goal_regions=goals, robot=robot, lidar=lidar, clearance=clearance,
        description=str(data.get("description", "")), modes=modes, source=source, **scalars)
    object.__setattr__(layout, "free_space", _free_space(layout, where))
    return layout


def inflated_occupancy(layout: Layout, inflate: float) -> np.ndarray:
    """(nx, ny) bool: cell centres closer than ``inflate`` to a shelf or wall."""
    return layout.static_distance(layout.cell_centres()) < inflate


def _region_cells(layout: Layout, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the grid cells a region's points can fall into (a point region gives one cell)."""
    lo_x, lo_y = layout.cell_of(region[:2])
    hi_x, hi_y = layout.cell_of(region[2:])
    ix, iy = np.meshgrid(np.arange(lo_x, hi_x + 1), np.arange(lo_y, hi_y + 1), indexing="ij")
    return ix.ravel(), iy.ravel()


def _free_space(layout: Layout, where: str) -> np.ndarray:
    """Validate start/goal regions against the inflated grid and return the reachable free cells."""
    inflate = layout.robot.radius + layout.clearance
    occupied = inflated_occupancy(layout, inflate)
    regions = [("start region", i, r) for i, r in enumerate(layout.start_regions)]
    regions += [("goal region", i, r) for i, r in enumerate(layout.goal_regions)]
    for kind, i, region in regions:
        for j, s in enumerate(layout.shelves):
            if s[0] <= region[0] and s[1] <= region[1] and region[2] <= s[2] and region[3] <= s[3]:
                raise ValueError(f"{where}: {kind} {i} {region.tolist()} lies inside an obstacle "
                                 f"(shelf {j} {s.tolist()})")
        ix, iy = _region_cells(layout, region)
        if occupied[ix, iy].all():
            raise ValueError(f"{where}: {kind} {i} {region.tolist()} lies inside an obstacle: no point in "
                             f"it is {inflate:.2f} m (robot radius + clearance) clear of shelves and walls")
    labels = _components(~occupied)
    counts = np.zeros(labels.max() + 1, dtype=np.int64)
    for region in layout.start_regions:
        ix, iy = _region_cells(layout, region)
        np.add.at(counts, labels[ix, iy], 1)
    counts[0] = 0   # label 0 is occupied space
    main = int(np.argmax(counts))
    free = labels == main
    for kind, i, region in regions:
        ix, iy = _region_cells(layout, region)
        if not free[ix, iy].any():
            raise ValueError(f"{where}: {kind} {i} {region.tolist()} is unreachable: the A* grid "
                             f"({layout.grid_resolution} m cells, obstacles inflated by {inflate:.2f} m) "
                             f"has no path from the start regions to it")
    return free


def _components(free: np.ndarray) -> np.ndarray:
    """8-connected component labels of free cells (0 = occupied), matching the A* moves."""
    nx, ny = free.shape
    labels = np.zeros(free.shape, dtype=np.int64)
    current = 0
    for sx, sy in zip(*np.nonzero(free)):
        if labels[sx, sy]:
            continue
        current += 1
        labels[sx, sy] = current
        queue = deque([(sx, sy)])
        while queue:
            x, y = queue.popleft()
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    u, v = x + dx, y + dy
                    if 0 <= u < nx and 0 <= v < ny and free[u, v] and not labels[u, v]:
                        # Diagonal moves need both side cells free, as in the A* planner.
                        if dx and dy and not (free[x + dx, y] and free[x, y + dy]):
                            continue
                        labels[u, v] = current
                        queue.append((u, v))
    return labels
