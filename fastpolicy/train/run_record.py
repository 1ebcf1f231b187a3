"""The one record a training run keeps beside its checkpoints: is it finished, and what did it cost.

The :class:`~fastpolicy.train.trainer.Trainer` writes the checkpoints; what a benchmark or a staged
driver needs on top — "is this run already at its step budget" (then reuse it), "was it trained with
this recipe, on this dataset" (else refuse it) and "how many wall seconds did it take" (then report it)
— lives here, so the teacher, BC, the streaming fine-tune, the students and the planners are reused and
costed the same way.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COST_FILE = "cost.json"
STORE_IDENTITY = ("source", "env_id", "recipe", "seed", "task")
"""store attributes that say what the data is (a run records them, and a reuse must match them)"""


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


def store_record(store_path: str | os.PathLike, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a run stores about the data it trains on (beside its checkpoints' config): the path, the
    attributes that say what the data is, and the content fingerprint :func:`check_run_store` compares."""
    from fastpolicy.data.store import store_fingerprint

    return {"store": str(store_path), "store_attrs": {k: attrs[k] for k in STORE_IDENTITY if k in attrs},
            "store_fingerprint": store_fingerprint(store_path)}


def check_run_store(run_dir: str | os.PathLike, store: Any) -> None:
    """Refuse ``run_dir`` when it was trained on another dataset than ``store`` (a path or an opened
    store): another content fingerprint (a store rebuilt or changed in place), or other identifying
    attributes (recipe, task, seed...). A run written before runs recorded one of them is checked on what
    it has; where no store is at the path (a worker that got the finished runs only) there is nothing to
    compare."""
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    found = _path_and_attrs(store)
    if found is None:
        return
    store_path, attrs = found
    trained = read_config(resolve_checkpoint(Path(run_dir))).get("train", {})
    asked = store_record(store_path, attrs)
    diffs = []
    if trained.get("store_fingerprint") and trained["store_fingerprint"] != asked["store_fingerprint"]:
        diffs.append(f"content fingerprint: trained {trained['store_fingerprint'][:12]}…, asked "
                     f"{(asked['store_fingerprint'] or 'none')[:12]}…")
    have = trained.get("store_attrs") or {}
    diffs += [f"{k}: trained {have[k]!r}, asked {asked['store_attrs'].get(k)!r}"
              for k in sorted(have) if have[k] != asked["store_attrs"].get(k)]
    if diffs:
        raise RecipeMismatchError(
            f"{run_dir} was trained on another dataset ({trained.get('store')!r}; {'; '.join(diffs)}) than "
            f"{str(store_path)!r}. Move the run aside to train on this store, or point at the store it "
            "was trained on.")


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
    if not run_is_complete(run_dir, train_config.steps):    # a resume checks the store itself
        t0 = time.perf_counter()
        _, stats = train_offline(store, run_dir, policy_type, options, train_config, resume=True, task=task)
        record_cost(run_dir, time.perf_counter() - t0, int(stats["step"]), batch_size=train_config.batch_size)
    else:
        check_run_store(run_dir, store)
    return (read_cost(run_dir) or {}).get("seconds")


def _path_and_attrs(store: Any) -> tuple[Path, Mapping[str, Any]] | None:
    """A store's path and attributes, from its path or an opened store; None when no store is there."""
    from fastpolicy.data.store import EpisodeStore

    if isinstance(store, EpisodeStore):
        return Path(store.path), dict(store.attrs)
    if not Path(store).exists():
        return None
    return Path(store), dict(EpisodeStore.open(Path(store)).attrs)
