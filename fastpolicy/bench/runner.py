"""The benchmark runner: every method of a suite, scored and timed side by side in one process.

For each task the runner builds what a suite (``fastpolicy.bench.suites``) needs through the suite's
method family (:data:`FAMILIES`: the teacher and its accelerations, or the diffusion planners), reusing
whatever is already on disk under its work directory: an interrupted run resumes. Then every method
is evaluated the same way:

* score — ``fastpolicy.evaluation.evaluate`` (closed loop, seeds × episodes, lockstep vector env);
* timing — at batch 1 on real closed-loop steps, *interleaved*: round r measures every method once
  before round r + 1 starts, so a noisy neighbour on this shared machine hits all methods alike.
  ``latency_ms_p50/p99`` are per action (all control steps); ``step_latency_ms_max_p99`` is the p99
  over control steps that run the denoiser (the worst case a control loop must budget for);
  ``first_step_ms`` is the first call of an episode (a streaming buffer's warm-up);
* ``throughput_b64`` — chunks per second at batch 64 (state carried for streaming methods);
* ``backbone_forward_ms_p50/p99`` — one bare teacher backbone forward at batch 1, the floor a
  1-step student is compared with; cost columns ``train_seconds`` / ``distill_seconds`` (wall, this
  machine, from each run's ``cost.json``) and ``steps``.

The measurements live in ``fastpolicy.evaluation.timing``, the tables and plot in
``fastpolicy.bench.report``. Scoring is also exposed per (task, method, seed) —
:func:`score_method_seed` and :func:`merge_seed_results` — so ``run_suite(..., ray_config=...)`` can fan
it out as Ray tasks (``fastpolicy.bench.ray_sweep``) and still produce the local run's score fields;
timing stays here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastpolicy.bench import planners as planner_family
from fastpolicy.bench.methods import Method, ensure_dataset, ensure_trained, suite_store_path  # noqa: F401
from fastpolicy.bench.ray_sweep import score_methods_on_ray
from fastpolicy.bench.report import print_table, summarize_targets, write_suite_report
from fastpolicy.bench.scoring import SeedResult, merge_seed_results, score_method_seed  # noqa: F401
from fastpolicy.bench.suites import ALL_METHODS, SUITES, SuiteConfig  # noqa: F401  (re-exported)
from fastpolicy.bench.teacher_methods import build_methods, train_teacher
from fastpolicy.evaluation.timing import (  # noqa: F401  (re-exported for older callers)
    backbone_forward_ms,
    first_step_ms,
    load_average,
    measure_throughput,
    timing_fields,
)

if TYPE_CHECKING:
    from fastpolicy.distributed.ray_runner import RayConfig


# --- method families ------------------------------------------------------------------------------

def _teacher_family(suite: SuiteConfig, task: str, store: Path, work: Path, teacher: str | Path | None,
                    progress: bool) -> tuple[list[Method], Path | None]:
    teacher_run = Path(teacher) if teacher is not None else train_teacher(suite, task, store, work, progress)
    return build_methods(suite, task, store, work, teacher_run, progress), teacher_run


def _planner_family(suite: SuiteConfig, task: str, store: Path, work: Path, teacher: str | Path | None,
                    progress: bool) -> tuple[list[Method], Path | None]:
    def make_config(steps: int) -> Any:
        return planner_family.planner_train_config(steps, suite.batch_size, suite.lr, progress=suite.progress)

    options = suite.planner_options
    methods, _ = planner_family.build_planner_methods(
        store, work, task, suite.teacher_steps, suite.diffuser_steps, make_config, options.get("*"),
        suite.planner_candidates, suite.methods, log=print if progress else (lambda msg: None),
        options_by_type=options)
    return methods, None


@dataclass(frozen=True)
class MethodFamily:
    """How a suite's family builds its methods, which ids it knows, and which targets it reports."""

    build: Callable[..., tuple[list[Method], Path | None]]
    known: tuple[str, ...]
    targets: Callable[[Sequence[dict[str, Any]]], dict[str, Any]]


FAMILIES: dict[str, MethodFamily] = {
    "teacher": MethodFamily(_teacher_family, ALL_METHODS, summarize_targets),
    "planners": MethodFamily(_planner_family, planner_family.PLANNER_METHODS,
                             planner_family.summarize_planner_targets),
}


def known_methods(suite: str | SuiteConfig) -> tuple[str, ...]:
    """The method ids a suite's family can build (to check ``--methods`` before any work)."""
    suite = SUITES[suite] if isinstance(suite, str) else suite
    return FAMILIES[suite.family].known


# --- scoring and timing ---------------------------------------------------------------------------

def _print_score(row: dict[str, Any]) -> None:
    print(f"  {row['method']:<18} score {row['score_mean']:6.1f} ± {row['score_std']:5.1f}  "
          f"NFE/step {row['nfe_per_step_mean']:.2f} (max {row['nfe_per_step_max']})  "
          f"[{row['eval_seconds']:.0f} s]", flush=True)


def choose_action_horizons(methods: Sequence[Method], task: str, suite: SuiteConfig,
                           progress: bool = True) -> list[Method]:
    """Each chunked diffusion method at the action horizon that scores best on the validation seeds.

    The action horizon is an inference setting like the sampler, so it is tuned the same way for every
    method — on ``suite.validation_seeds``, never on the reported ``suite.seeds`` — among
    ``suite.action_horizons``; ties go to the longer horizon (fewer plans per action). Methods whose
    horizon is fixed by training (BC's output chunk, a streaming buffer) are returned unchanged. Each
    chosen method's row keeps the validation scores it was chosen on (``action_horizon_validation``).
    """
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate

    if not suite.action_horizons:
        return list(methods)
    spec = get_task(task)
    chosen: list[Method] = []
    for m in methods:
        policy = m.policy
        if not hasattr(policy, "with_action_horizon") or policy.per_position_time(policy.config):
            chosen.append(m)
            continue
        horizons = sorted(set(suite.action_horizons), reverse=True)
        views = {ta: policy.with_action_horizon(ta) for ta in horizons}
        scores = {ta: float(evaluate(view, spec, suite.episodes, suite.validation_seeds, latency_steps=0,
                                     progress=False, method=m.name, split="validation")["score_mean"])
                  for ta, view in views.items()}
        best = max(scores, key=lambda ta: (scores[ta], ta))
        if progress:
            print(f"  {m.name:<18} action horizon {best} (validation score "
                  + ", ".join(f"Ta {ta}: {v:.3f}" for ta, v in scores.items()) + ")", flush=True)
        chosen.append(Method(m.name, views[best], extra={
            **m.extra, "action_horizon_validation": {str(ta): v for ta, v in scores.items()},
            "validation_seeds": list(suite.validation_seeds)}))
    return chosen


def score_methods(methods: Sequence[Method], task: str, suite: SuiteConfig,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Score every method in this process (closed loop, all seeds); one row per method, no timing yet."""
    from fastpolicy.envs.agv.modes import ModeTracker
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate

    spec = get_task(task)
    rows: list[dict[str, Any]] = []
    for m in methods:
        t0 = time.perf_counter()
        # on a multimodal layout, which way each episode went: a student that averages modes fails
        tracker = ModeTracker(spec) if spec.name.startswith("agv-") else None
        row = evaluate(m.policy, spec, suite.episodes, suite.seeds, latency_steps=0, progress=suite.progress,
                       method=m.name, step_hook=tracker.hook if tracker else None, **m.extra)
        if tracker is not None:
            row.update(tracker.summary())
        row["eval_seconds"] = time.perf_counter() - t0
        rows.append(row)
        if progress:
            _print_score(row)
    return rows


def time_methods(methods: Sequence[Method], task: str, suite: SuiteConfig, rows: Sequence[dict[str, Any]],
                 obs_windows: np.ndarray) -> list[dict[str, Any]]:
    """Add the timing fields to each method's score row, measuring all methods interleaved, here.

    Timing always runs in one process on one machine (even when scores were computed on a Ray cluster):
    latencies are only comparable when measured side by side on the same hardware.
    """
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import measure_latency
    from fastpolicy.evaluation.results import validate_row

    spec = get_task(task)
    samples: list[tuple[list[int], list[float]]] = [([], []) for _ in methods]
    per_round = max(1, -(-suite.latency_steps // suite.latency_rounds))
    load_before = load_average()
    for r in range(suite.latency_rounds):
        for i, m in enumerate(methods):
            stats = measure_latency(m.policy, spec, seed=10_000 + r, planning_steps=per_round)
            samples[i][0].extend(stats.nfe)
            samples[i][1].extend(stats.latency_s)
    load = {"load_avg_1m_before": load_before, "load_avg_1m_after": load_average()}
    for i, (m, row) in enumerate(zip(methods, rows)):
        row.update(load)
        if getattr(m.policy, "checkpoint_hash", None):  # which weights the row measured
            row["checkpoint_hash"] = f"sha256:{m.policy.checkpoint_hash}"
        row.update(timing_fields(*samples[i]))
        # methods may condition on different histories (BC at To 2 beside a To 1 teacher): the latest To
        windows = obs_windows[:, obs_windows.shape[1] - m.policy.obs_horizon:]
        row["first_step_ms"] = first_step_ms(m.policy, windows[:1])
        row["throughput_b64"] = measure_throughput(m.policy, windows, suite.throughput_calls)
        row["actions_per_s_b64"] = row["throughput_b64"] * m.policy.action_horizon
        row["action_horizon"] = int(m.policy.action_horizon)
        validate_row(row)
    return list(rows)


def evaluate_methods(methods: Sequence[Method], task: str, suite: SuiteConfig, obs_windows: np.ndarray,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Score every method, then time them all interleaved; one schema row per method."""
    rows = score_methods(methods, task, suite, progress)
    return time_methods(methods, task, suite, rows, obs_windows)


def obs_windows_from_store(store: Path, obs_horizon: int, batch: int = 64, seed: int = 0) -> np.ndarray:
    """``batch`` real observation windows (B, To, obs_dim) for the throughput measurement."""
    from fastpolicy.data.sampler import SequenceDataset
    from fastpolicy.data.store import EpisodeStore

    ds = SequenceDataset(EpisodeStore.open(store), horizon=obs_horizon, pad_before=obs_horizon - 1,
                         keys=("obs",))
    idx = np.random.default_rng(seed).integers(0, len(ds), batch)
    return ds.sample_batch(idx)["obs"].numpy()


def run_suite(suite: str | SuiteConfig, tasks: Sequence[str], work_dir: str | Path | None = None,
              teacher: str | Path | None = None, results_dir: str | Path | None = None,
              plot_dir: str | Path | None = None, budget_ms: float | None = None, progress: bool = True,
              write: bool = True, ray_config: RayConfig | None = None) -> list[dict[str, Any]]:
    """Build, evaluate and write one suite for each task; returns all rows (and prints the tables).

    Results (``<suite>_<task>.json/.md``) and the Pareto plot go to ``results_dir`` / ``plot_dir``,
    by default the work directory (``runs/bench/<suite>``): the committed results under bench/results
    and docs/ change only when a caller asks for them (``fastpolicy bench --refresh-committed``).

    With ``ray_config`` every (method, seed) score rollout runs as a Ray task
    (``fastpolicy.bench.ray_sweep``); the dataset, training and the interleaved timing stay here.
    """
    from fastpolicy.bench.select import select_method

    suite = SUITES[suite] if isinstance(suite, str) else suite
    all_rows: list[dict[str, Any]] = []
    root = Path(work_dir or Path("runs") / "bench" / suite.name)
    results_dir = Path(results_dir) if results_dir is not None else root
    plot_dir = Path(plot_dir) if plot_dir is not None else root
    for task in tasks:
        t0 = time.perf_counter()
        work = root / task
        recipe = suite.dataset_recipes.get(task)
        store = ensure_dataset(task, suite_store_path(suite, task, work), suite.dataset_size, recipe=recipe)
        family = FAMILIES[suite.family]
        methods, teacher_run = family.build(suite, task, store, work, teacher, progress)
        obs = obs_windows_from_store(store, max(m.policy.obs_horizon for m in methods))
        if progress:
            print(f"[bench] evaluating {len(methods)} methods on {task}", flush=True)
        if suite.action_horizons:
            if ray_config is not None:
                raise ValueError("choosing action horizons on validation seeds runs locally; Ray workers "
                                 "rebuild methods at their trained horizons — drop ray_config or "
                                 "suite.action_horizons")
            if progress:
                print(f"[bench] action horizons {list(suite.action_horizons)} chosen on validation seeds "
                      f"{suite.validation_seeds}", flush=True)
            methods = choose_action_horizons(methods, task, suite, progress)
        if ray_config is None or teacher_run is None:  # Ray workers rebuild methods from a teacher run
            rows = evaluate_methods(methods, task, suite, obs, progress)
        else:
            rows = score_methods_on_ray(methods, task, suite, work, teacher_run, ray_config)
            for row in rows if progress else ():
                _print_score(row)
            rows = time_methods(methods, task, suite, rows, obs)
        for r in rows:
            r["suite"] = suite.name
        extra = ["step_latency_ms_max_p99", "throughput_b64", "distill_seconds"]
        title = f"{task} — suite {suite.name} ({time.perf_counter() - t0:.0f} s)"
        print_table(rows, title=title, extra=extra)
        targets = family.targets(rows)
        if progress and targets:
            print("targets:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in targets.items()})
        if budget_ms is not None:
            chosen = select_method(rows, budget_ms, task)
            print(f"budget {budget_ms:g} ms → {chosen['method']} (score {chosen['score_mean']:.1f}, "
                  f"worst step {chosen['step_latency_ms_max_p99']:.2f} ms)")
        if write:
            written = write_suite_report(rows, f"{suite.name}_{task}", results_dir, plot_dir, targets, extra,
                                         budget_ms)
            print(f"wrote {', '.join(map(str, written))}")
        all_rows.extend(rows)
    return all_rows


def accelerate_and_compare(teacher_run: str | Path, store: str | Path, task: str, out_dir: str | Path,
                           budget: str = "demo") -> list[dict[str, Any]]:
    """Demo hook: from a trained teacher run, build the fast variants and return their evaluated rows.

    ``budget`` names a suite (``demo``: SDP fine-tune, 1-segment consistency student and the streaming
    consistency student, about 4 minutes of training on a 2-core CPU, then SDP-ODE6, CM 1/2-step and
    SDP-CM evaluated with the suite's episodes). Runs under ``out_dir`` are reused when present.
    """
    suite = SUITES[budget] if budget in SUITES else None
    if suite is None:
        raise KeyError(f"unknown budget {budget!r}; known: {', '.join(SUITES)}")
    store, work = Path(store), Path(out_dir)
    methods = build_methods(suite, task, store, work, Path(teacher_run), progress=True)
    obs = obs_windows_from_store(store, max(m.policy.obs_horizon for m in methods))
    rows = evaluate_methods(methods, task, suite, obs, progress=True)
    for r in rows:
        r["suite"] = suite.name
    return rows
