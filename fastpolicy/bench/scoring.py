"""The unit of a suite's scoring: one method on one seed, and the merge of per-seed results into a row.

Local runs score all seeds in one call (``fastpolicy.bench.runner.score_methods``); a Ray sweep
(``fastpolicy.bench.ray_sweep``) runs one :func:`score_method_seed` per task and merges the results with
:func:`merge_seed_results` — the same rollouts and the same arithmetic (``score_row``), so the two
agree field for field.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastpolicy.bench.methods import Method
from fastpolicy.bench.suites import SuiteConfig


@dataclass
class SeedResult:
    """Raw outcome of scoring one method on one seed: what a remote evaluation sends back to merge."""

    method: str
    seed: int
    returns: np.ndarray
    """(episodes,) undiscounted return of each episode"""
    success: np.ndarray
    """(episodes,) bool"""
    lengths: np.ndarray
    """(episodes,) steps of each episode"""
    nfe: list[int]
    """denoiser calls of every control step, in order"""
    seconds: float
    """wall time of the rollouts (a timing field: differs between runs)"""


def score_method_seed(method: Method, task: str, suite: SuiteConfig, seed: int) -> SeedResult:
    """Score one method on one seed: ``suite.episodes`` lockstep episodes, env seeds ``seed * 1000 + i``.

    A pure function of (task, method, seed) — the unit a Ray task runs. The rollouts are exactly those
    ``fastpolicy.evaluation.evaluate`` runs for that seed, so :func:`merge_seed_results` over the suite's
    seeds reproduces the local score row.
    """
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import rollout

    t0 = time.perf_counter()
    result = rollout(method.policy, get_task(task), suite.episodes, seed * 1000, progress=False)
    return SeedResult(method.name, int(seed), np.asarray(result.returns), np.asarray(result.success, bool),
                      np.asarray(result.lengths), [int(n) for n in result.stats.nfe],
                      time.perf_counter() - t0)


def merge_seed_results(method: Method, task: str, results: Sequence[SeedResult]) -> dict[str, Any]:
    """One score row from per-seed results (in seed order), by ``score_row`` as ``evaluate`` makes it."""
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.results import score_row

    if not results:
        raise ValueError(f"no seed results to merge for {method.name!r}")
    row = score_row(get_task(task), method.name, steps=getattr(method.policy, "checkpoint_step", None),
                    seeds=[r.seed for r in results], returns=[r.returns for r in results],
                    success=[r.success for r in results], lengths=[r.lengths for r in results],
                    nfe=[n for r in results for n in r.nfe], **method.extra)
    row["eval_seconds"] = float(sum(r.seconds for r in results))
    return row
