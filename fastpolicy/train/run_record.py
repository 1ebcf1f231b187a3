"""The one record a training run keeps beside its checkpoints: is it finished, and what did it cost.

The :class:`~fastpolicy.train.trainer.Trainer` writes the checkpoints; what a benchmark or a staged
driver needs on top — "is this run already at its step budget" (then reuse it) and "how many wall
seconds did it take" (then report it) — lives here, so the teacher, BC, the streaming fine-tune, the
students and the planners are reused and costed the same way.

``cost.json`` (written atomically)::

    seconds         wall seconds spent training this run, summed over resumes
    steps           the step the run had reached when last recorded
    before_seconds  wall seconds of earlier stages it builds on (a multi-segment student's stages)
    total_seconds   seconds + before_seconds
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

COST_FILE = "cost.json"


class RecipeMismatchError(ValueError):
    """A run folder holds a policy trained with another recipe than the one asked for."""


def check_run_recipe(run_dir: str | os.PathLike, policy_type: str, options: dict[str, Any]) -> None:
    """Refuse ``run_dir`` when its stored policy is not the one ``policy_type`` + ``options`` would train.

    Reusing finished runs is what lets an interrupted benchmark resume — and it once served a stale
    recipe without a word (Trajectory Diffuser runs trained before a default changed). Checked: the
    policy type; every explicit option that is a config field; and, for the diffusion planners, whose
    config is the class defaults + options + what the data sets (:data:`fastpolicy.train.planners.FROM_DATA`),
    every other field against its current default — so a changed default is caught too.
    """
    from fastpolicy.data.store import jsonable_attrs  # JSON-normal form, as a stored config reads back
    from fastpolicy.policies.planners import is_planner_type
    from fastpolicy.policies.registry import policy_class
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    stored = read_config(resolve_checkpoint(Path(run_dir)))
    if stored["policy_type"] != policy_type:
        raise RecipeMismatchError(f"{run_dir} holds a {stored['policy_type']!r} run, asked for "
                                  f"{policy_type!r}; move it aside or choose another folder")
    config_cls = policy_class(policy_type).config_cls
    have = jsonable_attrs(dataclasses.asdict(config_cls.from_dict(stored["policy_config"])))
    names = set(have)
    want = {k: v for k, v in jsonable_attrs(dict(options)).items() if k in names}
    if is_planner_type(policy_type):
        from fastpolicy.train.planners import FROM_DATA

        given = {**{k: have[k] for k in FROM_DATA if k in names and k not in options}, **want}
        want = jsonable_attrs(dataclasses.asdict(config_cls.from_dict(given)))
    diff = sorted(k for k in want if want[k] != have[k])
    if diff:
        shown = "; ".join(f"{k}: trained {have[k]!r}, asked {want[k]!r}" for k in diff)
        raise RecipeMismatchError(
            f"{run_dir} was trained with another recipe ({shown}). Move the run aside to train the asked "
            "recipe, or ask for the stored values to reuse it.")


def run_is_complete(run_dir: str | os.PathLike, steps: int) -> bool:
    """True when ``run_dir``'s newest checkpoint is at ``steps`` or beyond."""
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    try:
        return int(read_config(resolve_checkpoint(Path(run_dir)))["step"]) >= steps
    except (FileNotFoundError, ValueError):
        return False


def read_cost(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's ``cost.json`` (see the module), or None when it has none."""
    path = Path(run_dir) / COST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def record_cost(run_dir: str | os.PathLike, seconds: float, step: int, before: float = 0.0,
                **extra: Any) -> dict[str, Any]:
    """Add ``seconds`` of training to the run's record (it survives resumes); ``extra`` (e.g. the batch
    size) is stored beside. ``before`` counts earlier stages once, the first time it is given."""
    from fastpolicy.utils.atomic import atomic_file

    run_dir = Path(run_dir)
    prev = read_cost(run_dir) or {}
    before = float(prev.get("before_seconds", before))
    total = float(prev.get("seconds", 0.0)) + float(seconds)
    cost = {**prev, **extra, "seconds": total, "steps": int(step), "before_seconds": before,
            "total_seconds": total + before}
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(run_dir / COST_FILE, "w") as f:
        json.dump(cost, f, indent=1)
    return cost


def train_or_reuse(store: Any, run_dir: str | os.PathLike, policy_type: str, options: dict[str, Any],
                   train_config: Any, task: str | None = None) -> float | None:
    """Train ``policy_type`` into ``run_dir`` through :func:`fastpolicy.train.offline.train_offline`
    (resuming an unfinished run) unless it is already complete; returns the run's recorded training
    seconds (None for a finished run that predates the record)."""
    from fastpolicy.train.offline import train_offline

    if (Path(run_dir) / "latest").exists():
        check_run_recipe(run_dir, policy_type, options)
    if not run_is_complete(run_dir, train_config.steps):
        t0 = time.perf_counter()
        _, stats = train_offline(store, run_dir, policy_type, options, train_config, resume=True, task=task)
        record_cost(run_dir, time.perf_counter() - t0, int(stats["step"]), batch_size=train_config.batch_size)
    return (read_cost(run_dir) or {}).get("seconds")
