"""What a benchmark method is, and the building blocks every method builder shares.

A :class:`Method` is a name, a policy already in that method's mode (a view over shared weights, see
``fastpolicy.policies.modes``) and the extra fields of its rows. The builders — the teacher family
(``fastpolicy.bench.teacher_methods``) and the planners (``fastpolicy.bench.planners``) — make them
from runs they train or reuse with the helpers here: datasets built once and shared, training runs
resumed, and each run's wall time kept in its ``cost.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpolicy.bench.suites import SuiteConfig


@dataclass
class Method:
    """One benchmarked configuration: a policy already in this method's mode (a view: see
    ``fastpolicy.policies.modes``) and the extra fields of its rows."""

    name: str
    policy: Any
    extra: dict[str, Any] = field(default_factory=dict)


# --- building blocks ------------------------------------------------------------------------------

def train_config(steps: int, suite: SuiteConfig, seed: int = 0, distill: bool = False) -> Any:
    """The suite's TrainConfig for a learner of ``steps`` steps (students use ``distill_lr``)."""
    from fastpolicy.train.trainer import TrainConfig

    lr = suite.distill_lr if distill and suite.distill_lr is not None else suite.lr
    # students keep every quarter's checkpoint: the distillation curve (score vs steps) reads them
    return TrainConfig(steps=steps, batch_size=suite.batch_size, lr=lr,
                       warmup_steps=max(10, min(500, steps // 10)), checkpoint_every=max(50, steps // 4),
                       keep_checkpoints=5 if distill else 3, seed=seed, progress=suite.progress,
                       tensorboard=False)


def run_cost(run: Path) -> dict[str, Any]:
    """The run's recorded wall time and steps (``cost.json``; empty when it has none)."""
    from fastpolicy.train.run_record import read_cost

    return read_cost(run) or {}


def ensure_dataset(task: str, store: Path, size: int | None, seed: int = 0, recipe: str | None = None
                   ) -> Path:
    """Build ``recipe`` (default: the task card's dataset recipe) at ``store`` unless it is already there."""
    from fastpolicy.data.recipes import make_dataset
    from fastpolicy.envs.registry import get_task

    if not (store / "zarr.json").exists():
        recipe = recipe or get_task(task).dataset or task
        make_dataset(recipe, store, size=size, seed=seed, overwrite=False, progress=True)
    return store


def suite_store_path(suite: SuiteConfig, task: str, work: Path) -> Path:
    """Where a suite keeps ``task``'s dataset: ``<store_root>/<recipe>`` when shared, else in its work dir."""
    if suite.store_root is None:
        return work / "data"
    from fastpolicy.envs.registry import get_task

    recipe = suite.dataset_recipes.get(task) or get_task(task).dataset or task
    return Path(suite.store_root) / recipe


def ensure_trained(store: Path, run: Path, policy_type: str, options: dict[str, Any], steps: int,
                   suite: SuiteConfig, task: str) -> Path:
    """Train (or finish training) ``policy_type`` into ``run`` at the suite's budget; its wall time goes
    to the run record (:mod:`fastpolicy.train.run_record`)."""
    from fastpolicy.train.run_record import train_or_reuse

    train_or_reuse(store, run, policy_type, options, train_config(steps, suite), task=task)
    return run


def wanted(suite: SuiteConfig, *names: str) -> bool:
    """True when the suite runs every method or one of ``names``."""
    return suite.methods is None or any(n in suite.methods for n in names)
