"""Task cards: one YAML file per task, shipped with the package (``fastpolicy.resources``).

A task card names the gymnasium env, the dataset recipe, the horizons and how a return becomes a
score. Everything that evaluates or benchmarks a task goes through ``get_task`` and ``make_env`` so
the protocol is defined once. Card fields:

    name: maze2d-umaze
    env_id: PointMaze_UMaze-v3            # a gymnasium id (registered by import_module if given)
    import_module: gymnasium_robotics     # optional: module whose import registers env_id
    env_kwargs: {continuing_task: false}
    wrapper: fastpolicy.envs.maze:wrap_maze   # optional "module:function(env, task) -> env"
    max_episode_steps: 300
    dataset: maze2d-umaze                 # recipe name for `fastpolicy data make`
    horizons: {obs: 2, pred: 16, action: 8}
    score: {kind: d4rl, ref_min: 23.85, ref_max: 161.86}   # or {kind: success}
    eval: {episodes: 10, seeds: [0, 1, 2]}
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_ALLOWED_KEYS = {
    "name",
    "env_id",
    "import_module",
    "env_kwargs",
    "wrapper",
    "max_episode_steps",
    "dataset",
    "horizons",
    "normalization",
    "teacher",
    "score",
    "eval",
    "description",
    "reference",
}


_TEACHER_KEYS = {"prediction_type", "sampler"}


def tasks_dir() -> Path:
    """``$FASTPOLICY_TASKS_DIR``, else the cards shipped in the package (the checkout's ``envs/``)."""
    from fastpolicy.resources import resource_dir

    return resource_dir("tasks")


def _default_normalization() -> dict[str, str]:
    from fastpolicy.data.normalize import DEFAULT_MODES  # imported on use: it pulls in torch

    return dict(DEFAULT_MODES)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env_id: str
    max_episode_steps: int
    dataset: str | None = None
    import_module: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    wrapper: str | None = None
    horizons: dict[str, int] = field(default_factory=lambda: {"obs": 2, "pred": 16, "action": 8})
    normalization: dict[str, str] = field(default_factory=_default_normalization)
    """how training fits the obs / action normalizers (``fastpolicy.data.normalize.MODES``)"""
    teacher: dict[str, Any] = field(default_factory=dict)
    """diffusion-teacher options chosen for this task on validation seeds (``prediction_type``,
    ``sampler``); training with ``--task`` applies them unless the user sets them"""
    score: dict[str, Any] = field(default_factory=lambda: {"kind": "return"})
    eval: dict[str, Any] = field(default_factory=lambda: {"episodes": 10, "seeds": [0]})
    description: str = ""
    reference: dict[str, Any] = field(default_factory=dict)

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray | float:
        """D4RL normalization 100·(R − min)/(max − min) when the card defines it, else the raw return."""
        if self.score.get("kind") == "d4rl":
            lo, hi = float(self.score["ref_min"]), float(self.score["ref_max"])
            score = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
            return float(score) if score.ndim == 0 else score
        return returns


def load_task_card(path: str | os.PathLike) -> TaskSpec:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"task card {path}: expected a mapping at top level")
    unknown = set(data) - _ALLOWED_KEYS
    if unknown:
        raise ValueError(f"task card {path}: unknown keys {sorted(unknown)}")
    for key in ("name", "env_id", "max_episode_steps"):
        if key not in data:
            raise ValueError(f"task card {path}: missing required key {key!r}")
    norm = data.get("normalization")
    if norm is not None:
        from fastpolicy.data.normalize import DEFAULT_MODES, MODES

        bad = {k: v for k, v in norm.items() if k not in ("obs", "action") or v not in MODES} \
            if isinstance(norm, dict) else norm
        if bad:
            raise ValueError(f"task card {path}: normalization must map obs/action to one of {MODES}, "
                             f"got {bad!r}")
        data["normalization"] = {**DEFAULT_MODES, **norm}
    teacher = data.get("teacher", {})
    bad_teacher = set(teacher) - _TEACHER_KEYS if isinstance(teacher, dict) else teacher
    if bad_teacher:
        raise ValueError(f"task card {path}: teacher may set {sorted(_TEACHER_KEYS)}, got {bad_teacher!r}")
    score = data.get("score", {"kind": "return"})
    if not isinstance(score, dict):
        raise ValueError(f"task card {path}: score must be a mapping, got {score!r}")
    missing = [k for k in ("ref_min", "ref_max") if k not in score]
    if score.get("kind") == "d4rl" and missing:
        raise ValueError(f"task card {path}: score kind d4rl is missing {', '.join(missing)}")
    return TaskSpec(**data)


def list_tasks() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


def get_task(name: str) -> TaskSpec:
    path = tasks_dir() / f"{name}.yaml"
    if not path.exists():
        from fastpolicy.resources import describe

        known = ", ".join(list_tasks()) or f"(none found in {describe('tasks')})"
        raise ValueError(f"unknown task {name!r}; known tasks: {known} (list them: fastpolicy tasks)")
    return load_task_card(path)


def _resolve(dotted: str):
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)


def _quiet_import(name: str):
    """Import a module that registers envs. gymnasium-robotics prints a notice about Adroit envs to stderr
    on import (via farama_notifications); it concerns envs we never use, so it is kept out of our output.
    Exceptions still propagate."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(name)


def make_env(task: TaskSpec | str, **overrides: Any):
    """One gymnasium env for the task, with its wrapper and time limit applied."""
    import gymnasium as gym

    task = get_task(task) if isinstance(task, str) else task
    if task.import_module:
        module = _quiet_import(task.import_module)
        if hasattr(gym, "register_envs"):
            gym.register_envs(module)
    kwargs = {**task.env_kwargs, **overrides}
    env = gym.make(task.env_id, max_episode_steps=task.max_episode_steps, **kwargs)
    if task.wrapper:
        env = _resolve(task.wrapper)(env, task)
    return env


def make_vector_env(task: TaskSpec | str, num_envs: int, **overrides: Any):
    """A gymnasium SyncVectorEnv of ``make_env`` (on 2 cores, sync beats async for MuJoCo-sized envs)."""
    import gymnasium as gym

    task = get_task(task) if isinstance(task, str) else task
    return gym.vector.SyncVectorEnv(
        [lambda: make_env(task, **overrides) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
