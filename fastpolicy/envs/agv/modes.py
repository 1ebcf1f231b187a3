"""Route modes of bimodal AGV layouts: which side of the block an episode passed, and how to make the
expert commit to one side.

A layout with a ``modes: {block: K, axis: y}`` entry (e.g. ``envs/agv/bimodal-block.yaml``) has a block
(shelf K) in the middle of its route that can be passed on either side of ``axis`` by equally short
paths: ``"south"`` / ``"north"`` for axis y, ``"west"`` / ``"east"`` for axis x (``ModeSpec.names``).
The expert draws one side per episode (``AGVExpert.reset``), so its demonstrations are multimodal; a
policy that averages the two modes drives into the block. Benchmarks report the fraction of episodes
per mode with ``classify_mode`` and ``mode_fractions``::

    from fastpolicy.envs.agv.layout import get_layout
    from fastpolicy.envs.agv.modes import classify_mode, mode_fractions

    layout = get_layout("bimodal-block")
    labels = [classify_mode(layout, xy) for xy in trajectories]     # xy: (T, 2) robot positions
    mode_fractions(layout, labels)      # {"south": 0.48, "north": 0.5, "none": 0.02}
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from fastpolicy.envs.agv.layout import Layout

NO_MODE = "none"


def mode_names(layout: Layout) -> tuple[str, ...]:
    """The layout's mode names, low side first; empty for a layout without modes."""
    return layout.modes.names if layout.modes is not None else ()


def _require_modes(layout: Layout) -> None:
    if layout.modes is None:
        raise ValueError(f"AGV layout {layout.name!r} declares no modes (add `modes: {{block: K, axis: y}}`)")


def classify_mode(layout: Layout, xy: np.ndarray) -> str | None:
    """The side of the layout's block that a trajectory passed, or None if it never got alongside it.

    ``xy`` (T, 2) are the robot's positions over an episode (e.g. ``run_expert_episode(...)["xy"]`` or
    ``infos/pose[:, :2]`` of a stored episode). The positions whose coordinate along the route lies
    within the block's extent (for axis y: ``xmin <= x <= xmax``) are "alongside" the block; the mode is
    the side of the block's centre line where most of them lie. An episode that collides before
    reaching the block, or stops short of it, has no mode (None); one that collides while alongside the
    block is labelled with the side it was on.
    """
    _require_modes(layout)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    spec = layout.modes
    xmin, ymin, xmax, ymax = layout.shelves[spec.block]
    along, across = (0, 1) if spec.axis == "y" else (1, 0)
    lo, hi = (xmin, xmax) if spec.axis == "y" else (ymin, ymax)
    centre = 0.5 * (ymin + ymax) if spec.axis == "y" else 0.5 * (xmin + xmax)
    alongside = (xy[:, along] >= lo) & (xy[:, along] <= hi)
    if not alongside.any():
        return None
    high = float(np.mean(xy[alongside, across] > centre))
    return spec.names[1] if high > 0.5 else spec.names[0]


def mode_fractions(layout: Layout, labels: Iterable[str | None]) -> dict[str, float]:
    """Fraction of episodes per mode, plus ``"none"`` for episodes that never passed the block."""
    _require_modes(layout)
    labels = [NO_MODE if label is None else label for label in labels]
    names = (*layout.modes.names, NO_MODE)
    unknown = set(labels) - set(names)
    if unknown:
        raise ValueError(f"unknown mode labels {sorted(unknown)}; layout {layout.name!r} has {names}")
    n = max(len(labels), 1)
    return {name: labels.count(name) / n for name in names}


def blocked_side_cells(layout: Layout, mode: str) -> np.ndarray:
    """(nx, ny) bool: grid cells the expert's planner must avoid to pass the block on side ``mode``.

    The cells beside the block on the other side, between the block and the arena wall, so A* finds the
    shortest path within the chosen homotopy class (and replans stay in it).
    """
    _require_modes(layout)
    spec = layout.modes
    if mode not in spec.names:
        raise ValueError(f"unknown mode {mode!r} for layout {layout.name!r}; modes: {spec.names}")
    xmin, ymin, xmax, ymax = layout.shelves[spec.block]
    centres = layout.cell_centres()
    x, y = centres[..., 0], centres[..., 1]
    high = mode == spec.names[1]
    if spec.axis == "y":
        beside = (x >= xmin) & (x <= xmax)
        other = (y < ymin) if high else (y > ymax)
    else:
        beside = (y >= ymin) & (y <= ymax)
        other = (x < xmin) if high else (x > xmax)
    return beside & other


class ModeTracker:
    """Which way each evaluation episode went, on layouts with two ways round an obstacle.

    Records every running robot's (x, y) after each step (``evaluate(step_hook=...)``) and classifies
    each episode with :func:`fastpolicy.envs.agv.modes.classify_mode`. ``summary()`` gives the fraction
    of episodes per mode (``none``: never got alongside the obstacle, e.g. a stall or early collision).
    A policy that averages the modes drives into the obstacle; one that keeps them uses both.
    """

    def __init__(self, task) -> None:
        from fastpolicy.envs.agv.layout import get_layout

        tier = task.env_kwargs.get("tier") if task.env_kwargs else None
        self.layout = None
        try:
            layout = get_layout(tier or task.name.removeprefix("agv-"))
            self.layout = layout if getattr(layout, "modes", None) else None
        except (KeyError, ValueError, FileNotFoundError):
            self.layout = None
        self.tracks: dict[tuple[int, int], list] = {}

    def hook(self, seed: int, venv, alive) -> None:
        if self.layout is None:
            return
        base = getattr(venv, "unwrapped", venv)
        if hasattr(base, "core"):            # the natively batched AGV vector env
            pose = base.core.pose
        else:                                # gymnasium's SyncVectorEnv over single AGV envs
            import numpy as np

            pose = np.stack([env.unwrapped.pose for env in base.envs])
        for i in range(len(alive)):
            if alive[i]:
                self.tracks.setdefault((seed, i), []).append(pose[i, :2].copy())

    def summary(self) -> dict:
        if self.layout is None:
            return {}
        import numpy as np

        labels = [classify_mode(self.layout, np.asarray(xy)) for xy in self.tracks.values()]
        fractions = mode_fractions(self.layout, labels)
        return {"mode_fractions": fractions, "mode_episodes": len(labels),
                "modes": " / ".join(f"{name} {share:.2f}" for name, share in fractions.items())}
