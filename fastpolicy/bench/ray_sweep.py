"""A benchmark suite's scoring fanned out over a Ray cluster: one task per (method, seed).

Benchmark code that uses the generic Ray helpers of ``fastpolicy.distributed.ray_runner`` (a session, retried
tasks, the runs shipped as one archive); it lives with the benchmarks so ``dist`` stays below them.
Workers only load the shipped runs — never train — and their per-seed results merge into the score
row the local run would write (``fastpolicy.bench.scoring.merge_seed_results``).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastpolicy.bench.methods import Method
from fastpolicy.bench.scoring import SeedResult, merge_seed_results, score_method_seed
from fastpolicy.bench.suites import SuiteConfig
from fastpolicy.bench.teacher_methods import build_methods
from fastpolicy.distributed.ray_runner import RayConfig, pack_runs, ray_session, run_tasks, unpack_runs


def score_remote(runs: bytes, teacher_arc: str, task: str, suite: SuiteConfig, method: str,
                 seed: int) -> SeedResult:
    """Ray task: rebuild ``method`` from the shipped runs (loading only, no training) and score one seed."""
    only = dataclasses.replace(suite, methods=(method,), progress=False)
    # a private copy per task (a few MB, milliseconds): no cache to race on or to clean up; once loaded,
    # the policies need nothing on disk
    with tempfile.TemporaryDirectory(prefix="fastpolicy-runs-") as tmp:
        root = unpack_runs(runs, Path(tmp))
        # every run is complete, so build_methods only loads; the dataset path is never opened
        methods = build_methods(only, task, root / "work" / "data", root / "work", root / teacher_arc,
                                progress=False)
    chosen = [m for m in methods if m.name == method]
    if not chosen:
        raise KeyError(f"the shipped runs do not provide method {method!r}")
    return score_method_seed(chosen[0], task, suite, seed)


def score_methods_on_ray(methods: Sequence[Method], task: str, suite: SuiteConfig, work: Path,
                         teacher_run: Path, config: RayConfig) -> list[dict[str, Any]]:
    """Score rows of ``methods`` (in order) from one Ray task per (method, seed); timing fields not set.

    ``methods`` are the driver's, built by ``build_methods`` from the runs under ``work``; the rows
    equal ``fastpolicy.bench.runner.score_methods`` in every score / return field.
    """
    with ray_session(config) as ray:
        data, teacher_arc = pack_runs(Path(work), Path(teacher_run))
        runs_ref = ray.put(data)  # shipped once, shared by every task
        calls = [(runs_ref, teacher_arc, task, suite, m.name, int(s)) for m in methods for s in suite.seeds]
        results = run_tasks(score_remote, calls, config, desc=f"bench {task} on ray")
    by_method: dict[str, list[SeedResult]] = {}
    for r in results:
        by_method.setdefault(r.method, []).append(r)
    return [merge_seed_results(m, task, by_method[m.name]) for m in methods]
