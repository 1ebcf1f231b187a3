"""The one result schema every benchmark and evaluation in fastpolicy writes, and the score arithmetic.

Rows are flat JSON objects; the required fields below come first, a benchmark may add its own after
them. Files are JSON lists of rows, written atomically, so a report can read any of them. The format
lives with evaluation (below ``bench``, ``serve`` and the scripts) because evaluation writes it first;
:func:`score_row` is the one place that turns per-seed rollouts into a row's score fields, for a local
evaluation and for per-seed results merged from remote workers alike.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastpolicy.evaluation.method_names import canonical_row
from fastpolicy.utils.atomic import atomic_file
from fastpolicy.utils.misc import git_commit

if TYPE_CHECKING:
    from fastpolicy.envs.registry import TaskSpec

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "task": str,
    "method": str,
    "steps": (int, type(None)),  # training / distillation steps of the evaluated model (None: n/a)
    "score_mean": (float, int, type(None)),
    "score_std": (float, int, type(None)),
    "episodes": (int, type(None)),
    "seeds": (int, list, type(None)),
    "nfe_per_step_mean": (float, int, type(None)),
    "nfe_per_step_max": (int, float, type(None)),
    "latency_ms_p50": (float, int, type(None)),
    "latency_ms_p99": (float, int, type(None)),
    "commit": str,
}


def environment_fields() -> dict[str, Any]:
    """What every row records about where it was measured (the machine is shared and noisy)."""
    import torch  # lazily: the CLI imports this module just to register commands

    return {
        "torch_threads": torch.get_num_threads(),
        "device": _device_name(),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()})"


def make_row(task: str, method: str, **fields: Any) -> dict[str, Any]:
    """Build a row with every required field (missing ones are None) plus the environment fields."""
    row: dict[str, Any] = {k: None for k in REQUIRED_FIELDS}
    row.update(task=task, method=method, commit=git_commit())
    row.update(environment_fields())
    row.update(fields)
    validate_row(row)
    return row


def score_row(task: TaskSpec, method: str, *, steps: int | None, seeds: list[int],
              returns: Sequence[np.ndarray], success: Sequence[np.ndarray], lengths: Sequence[np.ndarray],
              nfe: Sequence[int], latency: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A row from per-seed rollouts (one array per seed, in seed order): the task card's normalised score
    over every episode, NFE per control step, success and episode length; ``latency`` p50/p99 if timed."""
    returns_all = np.concatenate(list(returns))
    scores = np.asarray(task.normalized_score(returns_all), dtype=np.float64)
    latency = latency or {}
    return make_row(
        task.name, method, steps=steps,
        score_mean=float(scores.mean()), score_std=float(scores.std()), episodes=int(returns_all.size),
        seeds=seeds, nfe_per_step_mean=float(np.mean(nfe)), nfe_per_step_max=int(np.max(nfe)),
        latency_ms_p50=latency.get("latency_ms_p50"), latency_ms_p99=latency.get("latency_ms_p99"),
        return_mean=float(returns_all.mean()), return_std=float(returns_all.std()),
        success_rate=float(np.concatenate(list(success)).mean()),
        episode_length_mean=float(np.mean([np.asarray(x).mean() for x in lengths])),
        score_kind=task.score.get("kind", "return"), latency_batch=1, **extra)


def validate_row(row: dict[str, Any]) -> None:
    """Raise ValueError naming the first field that is missing or of the wrong type."""
    for key, kind in REQUIRED_FIELDS.items():
        if key not in row:
            raise ValueError(f"result row is missing required field {key!r}")
        if not isinstance(row[key], kind) or isinstance(row[key], bool):
            raise ValueError(f"result field {key!r} has type {type(row[key]).__name__}, expected {kind}")
    for key in ("score_mean", "latency_ms_p50", "latency_ms_p99"):
        v = row[key]
        if isinstance(v, float) and math.isinf(v):
            raise ValueError(f"result field {key!r} is infinite")


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        return _jsonable(v.item())
    return v


def write_results(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Validate and write rows atomically as a JSON list (NaN becomes null)."""
    rows = [{k: _jsonable(v) for k, v in r.items()} for r in rows]
    for r in rows:
        validate_row(r)
    path = Path(path)
    with atomic_file(path, "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    return path


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a results file, method ids in today's names (a file written before the rename keeps its
    old ids on disk: :mod:`fastpolicy.evaluation.method_names`); ValueError naming the file (and row) when
    it is not one."""
    try:
        rows = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a results file (JSON list of rows): {exc}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of result rows, got {type(rows).__name__}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: row {i} is a {type(r).__name__}, not a result row (JSON object)")
        try:
            validate_row(r)
        except ValueError as exc:
            raise ValueError(f"{path}: row {i}: {exc}") from None
        canonical_row(r)
    return rows


def merge_rows(existing: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]],
               key: Callable[[dict[str, Any]], Hashable]) -> list[dict[str, Any]]:
    """Rows of ``existing`` whose ``key`` no new row has, then ``new`` (a rerun replaces its own rows)."""
    replaced = {key(r) for r in new}
    return [r for r in existing if key(r) not in replaced] + list(new)


def update_results(path: str | os.PathLike, rows: Iterable[dict[str, Any]],
                   key: Callable[[dict[str, Any]], Hashable]) -> Path:
    """Write ``rows`` into the results file at ``path``, keeping earlier rows that they do not replace
    (by ``key``), so a benchmark run part by part (task, variant, label condition) grows one file."""
    existing = read_results(path) if Path(path).exists() else []
    return write_results(path, merge_rows(existing, list(rows), key))
