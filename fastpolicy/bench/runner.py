"""The benchmark runner: every acceleration of one teacher, scored and timed side by side in one process.

For each task a suite (``quick``, ``full``, or the demo's ``demo`` budget) builds what it needs, reusing
whatever is already on disk under its work directory (dataset, teacher, BC, SDP, students): an
interrupted run resumes. Then every method is evaluated the same way:

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

Methods: BC-MLP, DP-DDPM100, DP-DDIM10, DP-DDIM4, DPM-Solver++ (dpm:10), the SDP network used as a plain
DP (ddim:10, and the teacher at the SDP's Ta for a like-for-like check), SDP-DDPM100, SDP-ODE6,
consistency 1/2/4-step (single-segment student), segmented k = 4/2/1 (progressive 8 → 4 → 2 → 1), and
streaming + consistency (SDP-CM). The demo hook :func:`accelerate_and_compare` builds the fast subset.

The ``planners`` suite swaps the teacher and its accelerations for the diffusion planners (Diffuser,
Decision Diffuser, Trajectory Diffuser; ``fastpolicy.bench.planners``), scored and timed the same way.

Scoring is also exposed per (task, method, seed) — :func:`score_method_seed` and
:func:`merge_seed_results` — so ``run_suite(..., ray_config=...)`` can fan it out as Ray tasks
(``fastpolicy.dist.ray_runner``) and still produce the local run's score fields; timing stays here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fastpolicy.dist.ray_runner import RayConfig

DEFAULT_TEACHER_OPTIONS: dict[str, Any] = {"backbone": "unet-small"}


@dataclass
class SuiteConfig:
    """Budgets of one suite (steps are optimizer steps; seconds depend on the machine)."""

    name: str
    dataset_size: int | None = 100_000
    """transitions to build (None: the recipe's default, e.g. D4RL's 1M for the MuJoCo bands)"""
    store_root: str | None = None
    """build/reuse datasets at ``<store_root>/<recipe>`` (shared with other benchmarks, e.g. the d3rlpy
    peers and ``fastpolicy data make``) instead of inside the suite's work directory"""
    teacher_steps: int = 2000
    bc_steps: int = 2000
    bc_options: dict[str, Any] = field(default_factory=dict)
    """BC's own policy options (e.g. horizons chosen for BC on validation seeds; default: the task card's)"""
    sdp_steps: int = 300
    cm_steps: int = 300
    """single-segment consistency student"""
    seg_stages: tuple[int, ...] = (2, 1)
    """progressive segmented students (each k divides the distilled sampler's steps)"""
    seg_steps: int = 100
    """per stage of the segmented progression"""
    sdp_cm_steps: int = 300
    distill_sampler: str = "ddim:10"
    """the teacher's evaluated sampler the students learn (grid, spacing, temperature): DDIM-10"""
    denoise_weight: float = 0.0
    """weight of the distillation's denoising auxiliary loss"""
    batch_size: int = 64
    lr: float = 1e-4
    distill_lr: float | None = None
    """consistency distillation's learning rate (None: ``lr``)"""
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    latency_steps: int = 48
    """timed planning steps (control steps that call the denoiser) per method, over all rounds"""
    latency_rounds: int = 2
    throughput_calls: int = 3
    sdp_ode_levels: int = 6
    """the SDP's deterministic stream ``ode:N`` (method ``sdp-ode{N}``; N/h calls per control step)"""
    sdp_options: dict[str, Any] = field(default_factory=dict)
    """the SDP's policy options over the teacher's (default Ta = 4: h = 3 chunks at To 2 / Tp 16)"""
    methods: tuple[str, ...] | None = None
    """restrict to these methods (None: all)"""
    dataset_recipes: dict[str, str] = field(default_factory=dict)
    """task → dataset recipe to build instead of the task card's own (e.g. a goal-holding maze variant)"""
    teacher_options: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TEACHER_OPTIONS))
    """policy options of the teacher trained when no --teacher run is given"""
    progress: bool = True
    """progress bars while training"""
    planners: bool = False
    """build the diffusion planners (``fastpolicy.bench.planners``) instead of a teacher and its
    accelerations; ``teacher_steps`` then trains the Trajectory Diffuser (whose networks the Decision
    Diffuser reuses) and ``diffuser_steps`` the Diffuser"""
    diffuser_steps: int = 2000
    planner_candidates: int = 8
    """Trajectory Diffuser candidates per plan (the critic picks one)"""
    planner_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per planner type (``"*"``: both; ``"diffuser"``; ``"trajectory-diffuser"``, whose networks the
    Decision Diffuser reuses) options on top of H = 16, replanning every control step"""


ALL_METHODS: tuple[str, ...] = (
    "bc-mlp", "dp-ddpm100", "dp-ddim10", "dp-ddim4", "dp-ddim2-trailing", "dp-ddim1-trailing", "dp-onecall",
    "dp-dpm10", "dp-ddpm100-t0.5", "dp-ddim10-t0.5",
    "dp-ddpm100-t0", "dp-ddim10-t0", "dp-ddim10-ta4", "sdp-net-dp-ddim10",
    "sdp-ddpm100", "sdp-ode6", "cm-1step", "cm-2step", "cm-4step", "cm-seg2", "cm-seg1", "sdp-cm")
"""Method ids. Baselines that show what a student adds: ``bc-mlp``; ``dp-onecall``, the teacher's one-call
clean estimate from the top of the distilled grid (the untrained student); ``dp-ddim{1,2}-trailing``,
DDIM at the students' call counts."""

SUITES: dict[str, SuiteConfig] = {
    # Minutes from scratch on a busy 2-core CPU (README): a small goal-holding maze dataset, an MLP
    # teacher and the fast variants that need little training — to try the pipeline, not to rank methods.
    "smoke": SuiteConfig("smoke", dataset_size=20_000, dataset_recipes={"maze2d-umaze": "maze2d-umaze-dwell"},
                         teacher_steps=600, bc_steps=400, sdp_steps=150, cm_steps=150, sdp_cm_steps=150,
                         seg_stages=(), batch_size=128, lr=1e-3, distill_lr=1e-4, episodes=4, seeds=[0],
                         latency_steps=16, latency_rounds=1, throughput_calls=1,
                         teacher_options={"backbone": "mlp"},
                         methods=("bc-mlp", "dp-ddim10", "dp-ddim4", "sdp-ode6", "cm-1step", "sdp-cm")),
    "quick": SuiteConfig("quick"),
    "full": SuiteConfig("full", dataset_size=300_000, teacher_steps=8000, bc_steps=4000, sdp_steps=2000,
                        cm_steps=2000, seg_steps=1000, sdp_cm_steps=2000, episodes=10, seeds=[0, 1, 2],
                        latency_steps=96, latency_rounds=3, throughput_calls=5),
    # `fastpolicy demo` (agv-bimodal-block): the multimodal AGV task, where BC averages the two ways round
    # the block and fails, the diffusion teacher keeps both, and the students must keep them too. MLP
    # teacher (4k steps at lr 1e-3: 100 % on validation seeds in bench/bench_diffusion_core.py), students
    # distilled from its DDIM-10; sized for ≤ 10 minutes end to end on a 2-core CPU. ≥ 200 timed planning
    # steps per method, interleaved in 20 rounds of 10 (fine interleaving: a
    # burst of load must hit every method alike, not one method's 20 ms window).
    "demo": SuiteConfig("demo", dataset_size=20_000, teacher_steps=4000, bc_steps=2000, sdp_steps=800,
                        cm_steps=2000, sdp_cm_steps=1500, seg_stages=(), batch_size=256, lr=1e-3,
                        distill_lr=1e-3, episodes=10, seeds=[0, 1, 2], latency_steps=200, latency_rounds=20,
                        throughput_calls=2, teacher_options={"backbone": "mlp"},
                        dataset_recipes={"maze2d-umaze": "maze2d-umaze-dwell"},
                        methods=("bc-mlp", "dp-ddpm100", "dp-ddim10", "dp-ddim1-trailing", "dp-onecall",
                                 "sdp-ode6", "cm-1step", "cm-2step", "sdp-cm")),
    # bench/bench_students.py: the demo's methods plus DDIM at the students' call counts, on the
    # multimodal AGV task, the goal-holding maze and the D4RL teachers (per-task overrides there)
    "students": SuiteConfig("students", dataset_size=20_000, teacher_steps=4000, bc_steps=2000, sdp_steps=800,
                            cm_steps=2000, sdp_cm_steps=1500, seg_stages=(), batch_size=256, lr=1e-3,
                            distill_lr=1e-3, episodes=10, seeds=[0, 1, 2], latency_steps=200,
                            latency_rounds=20, throughput_calls=2, teacher_options={"backbone": "mlp"},
                            methods=("bc-mlp", "dp-ddpm100", "dp-ddim10", "dp-ddim2-trailing",
                                     "dp-ddim1-trailing", "dp-onecall", "sdp-ode6", "cm-1step", "cm-2step",
                                     "sdp-cm")),
    # D4RL-style MuJoCo tasks: the scores side by side with the published numbers and the d3rlpy peers
    # (bench/bench_d4rl_peers.py). CPU-sized: MLP denoiser teacher, 20k optimizer steps at batch 256 for
    # teacher and BC; the recipe's full-size datasets at datasets/store/<recipe> (`fastpolicy data make`).
    # Each learner at the horizons its validation runs chose (bench/bench_diffusion_core.py, seed 100):
    # the teacher at the task card's To 1 / Tp 4 / Ta 1 and parametrisation (``teacher:``), BC at
    # To 2 / Tp 16 / Ta 2 (walker2d-medium validation: BC 85.4 there vs 78.4 at 1/4/1). Samplers at
    # temperature 1, 0.5 and 0 (deterministic from x_T = 0), all reported.
    "d4rl": SuiteConfig("d4rl", dataset_size=None, store_root="datasets/store", teacher_steps=20_000,
                        bc_steps=20_000, batch_size=256, lr=1e-3, episodes=10, seeds=[0, 1, 2],
                        latency_steps=64, latency_rounds=2, throughput_calls=2,
                        teacher_options={"backbone": "mlp"},
                        bc_options={"obs_horizon": 2, "pred_horizon": 16, "action_horizon": 2},
                        methods=("bc-mlp", "dp-ddpm100", "dp-ddim10", "dp-ddpm100-t0.5", "dp-ddim10-t0.5",
                                 "dp-ddpm100-t0", "dp-ddim10-t0")),
    # Diffusion planners (offline RL, return-guided): Diffuser, Decision Diffuser (reference DDPM-200 and a
    # strided DDPM-50) and Trajectory Diffuser, CPU-sized (MLP denoisers, H = 16); bench/bench_planners.py
    # runs the same methods plus the KV-cache and refinement ablations. Mazes use the goal-holding data
    # (as the demo; every planner sat at the random floor on D4RL's goal-switching data at H = 16).
    "planners": SuiteConfig("planners", planners=True, teacher_steps=8000, diffuser_steps=8000,
                            batch_size=128, lr=1e-3, episodes=10, seeds=[0], latency_steps=32,
                            latency_rounds=2, throughput_calls=1,
                            dataset_recipes={f"maze2d-{m}": f"maze2d-{m}-dwell"
                                             for m in ("umaze", "medium", "large")}),
}


@dataclass
class Method:
    """One benchmarked configuration: a policy already in this method's mode (a view: see
    ``fastpolicy.policies.modes``) and the extra fields of its rows."""

    name: str
    policy: Any
    configure: Callable[[], None] = lambda: None
    """an in-place switch run before each use, for callers that still switch a shared policy (the
    planner ablations); new methods pass a view as ``policy`` instead"""
    extra: dict[str, Any] = field(default_factory=dict)


# --- building blocks ------------------------------------------------------------------------------

def _train_config(steps: int, suite: SuiteConfig, seed: int = 0, distill: bool = False):
    from fastpolicy.train.trainer import TrainConfig

    lr = suite.distill_lr if distill and suite.distill_lr is not None else suite.lr
    # students keep every quarter's checkpoint: the distillation curve (score vs steps) reads them
    return TrainConfig(steps=steps, batch_size=suite.batch_size, lr=lr,
                       warmup_steps=max(10, min(500, steps // 10)), checkpoint_every=max(50, steps // 4),
                       keep_checkpoints=5 if distill else 3, seed=seed, progress=suite.progress,
                       tensorboard=False)


def _cost(run: Path) -> dict[str, Any]:
    from fastpolicy.train.distill import read_cost

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
    """Train (or finish training) ``policy_type`` into ``run``; record its wall time in ``cost.json``."""
    from fastpolicy.train.distill import _record_cost, _run_is_complete
    from fastpolicy.train.offline import train_offline

    if not _run_is_complete(run, steps):
        t0 = time.perf_counter()
        _, stats = train_offline(store, run, policy_type, options, _train_config(steps, suite), resume=True,
                                 task=task)
        _record_cost(run, time.perf_counter() - t0, int(stats["step"]))
    return run


# --- measurement ----------------------------------------------------------------------------------

from fastpolicy.evaluation.timing import (  # noqa: E402  (re-exported: older callers import them here)
    backbone_forward_ms,
    first_step_ms,
    load_average,
    measure_throughput,
    timing_fields,
)


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

    method.configure()
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


def _print_score(row: dict[str, Any]) -> None:
    print(f"  {row['method']:<18} score {row['score_mean']:6.1f} ± {row['score_std']:5.1f}  "
          f"NFE/step {row['nfe_per_step_mean']:.2f} (max {row['nfe_per_step_max']})  "
          f"[{row['eval_seconds']:.0f} s]", flush=True)


def score_methods(methods: Sequence[Method], task: str, suite: SuiteConfig,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Score every method in this process (closed loop, all seeds); one row per method, no timing yet."""
    from fastpolicy.envs.agv.modes import ModeTracker
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate

    spec = get_task(task)
    rows: list[dict[str, Any]] = []
    for m in methods:
        m.configure()
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
            m.configure()
            stats = measure_latency(m.policy, spec, seed=10_000 + r, planning_steps=per_round)
            samples[i][0].extend(stats.nfe)
            samples[i][1].extend(stats.latency_s)
    load = {"load_avg_1m_before": load_before, "load_avg_1m_after": load_average()}
    for i, (m, row) in enumerate(zip(methods, rows)):
        row.update(load)
        m.configure()
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


# --- the suite ------------------------------------------------------------------------------------

def _wanted(suite: SuiteConfig, *names: str) -> bool:
    return suite.methods is None or any(n in suite.methods for n in names)


def build_methods(suite: SuiteConfig, task: str, store: Path, work: Path, teacher_run: Path,
                  progress: bool = True) -> list[Method]:
    """Train / distil whatever the suite's methods need (reusing runs on disk) and wrap them as Methods."""
    from fastpolicy.train.checkpoint import load_policy
    from fastpolicy.train.distill import DistillConfig, distill, finetune_streaming

    def log(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    teacher = load_policy(teacher_run)
    tcost = _cost(teacher_run)
    teacher_extra = {"train_seconds": tcost.get("seconds"), "distill_seconds": None,
                     **backbone_forward_ms(teacher)}
    methods: list[Method] = []

    own_ta = teacher.config.action_horizon

    def sampler(spec: str, ta: int = own_ta) -> Any:
        return teacher.with_sampler(spec, action_horizon=ta)

    if _wanted(suite, "bc-mlp"):
        log(f"[bench] BC-MLP ({suite.bc_steps} steps)")
        bc_run = ensure_trained(store, work / "bc", "bc", dict(suite.bc_options), suite.bc_steps, suite, task)
        bc = load_policy(bc_run)
        bc_extra = {**teacher_extra, "train_seconds": _cost(bc_run).get("seconds")}
        methods.append(Method("bc-mlp", bc, extra=bc_extra))
    for name, spec in (("dp-ddpm100", "ddpm:100"), ("dp-ddim10", "ddim:10"), ("dp-ddim4", "ddim:4"),
                       ("dp-ddim2-trailing", "ddim:2,spacing=trailing"),
                       ("dp-ddim1-trailing", "ddim:1,spacing=trailing"), ("dp-dpm10", "dpm:10"),
                       ("dp-ddpm100-t0.5", "ddpm:100,temperature=0.5"),
                       ("dp-ddim10-t0.5", "ddim:10,temperature=0.5"),
                       ("dp-ddpm100-t0", "ddpm:100,temperature=0"),
                       ("dp-ddim10-t0", "ddim:10,temperature=0")):
        if _wanted(suite, name):
            methods.append(Method(name, sampler(spec), extra=dict(teacher_extra)))

    sdp_names = ("sdp-ddpm100", f"sdp-ode{suite.sdp_ode_levels}", "sdp-ode6", "sdp-net-dp-ddim10", "sdp-cm",
                 "dp-ddim10-ta4")
    sdp = None
    if _wanted(suite, *sdp_names):
        log(f"[bench] SDP fine-tuned from the teacher ({suite.sdp_steps} steps)")
        sdp_run = work / "sdp"
        sdp = finetune_streaming(teacher_run, store, sdp_run, _train_config(suite.sdp_steps, suite),
                                 resume=True, options=dict(suite.sdp_options))
        sdp_extra = {**teacher_extra, "train_seconds": None, "distill_seconds": _cost(sdp_run).get("seconds")}
        if _wanted(suite, "dp-ddim10-ta4"):  # the teacher at the SDP's Ta: a like-for-like reference
            methods.append(Method("dp-ddim10-ta4", sampler("ddim:10", sdp.config.action_horizon),
                                  extra=dict(teacher_extra)))
        if _wanted(suite, "sdp-net-dp-ddim10"):
            methods.append(Method("sdp-net-dp-ddim10", sdp.with_sampler("ddim:10"), extra=dict(sdp_extra)))
        if _wanted(suite, "sdp-ddpm100"):
            methods.append(Method("sdp-ddpm100", sdp.with_stream("ddpm:100"), extra=dict(sdp_extra)))
        ode = f"sdp-ode{suite.sdp_ode_levels}"
        if _wanted(suite, ode, "sdp-ode6"):
            methods.append(Method(ode, sdp.with_stream(f"ode:{suite.sdp_ode_levels}"), extra=dict(sdp_extra)))

    dcfg = DistillConfig(teacher_sampler=suite.distill_sampler, denoise_weight=suite.denoise_weight)
    if _wanted(suite, "dp-onecall"):
        # the untrained student: the teacher's one-call clean estimate from the top of the distilled grid
        from fastpolicy.train.distill import student_from_teacher

        onecall = student_from_teacher(teacher, suite.distill_sampler).eval()
        onecall.checkpoint_hash = getattr(teacher, "checkpoint_hash", None)
        methods.append(Method("dp-onecall", onecall, extra=dict(teacher_extra)))
    student_extra = {"distilled_sampler": suite.distill_sampler}
    if _wanted(suite, "cm-1step", "cm-2step", "cm-4step"):
        log(f"[bench] consistency student of {suite.distill_sampler}, 1 segment ({suite.cm_steps} steps)")
        cm_run = work / "cm1"
        cm = distill(teacher_run, store, cm_run, (1,), _train_config(suite.cm_steps, suite, distill=True),
                     resume=True, distill_config=dcfg)
        cm_extra = {**teacher_extra, **student_extra, "train_seconds": None,
                    "distill_seconds": _cost(cm_run).get("total_seconds")}
        for k in (1, 2, 4):
            if _wanted(suite, f"cm-{k}step"):
                methods.append(Method(f"cm-{k}step", cm.with_steps(k), extra=dict(cm_extra)))
    if suite.seg_stages and _wanted(suite, *(f"cm-seg{k}" for k in suite.seg_stages)):
        log(f"[bench] segmented students {list(suite.seg_stages)} ({suite.seg_steps} steps per stage)")
        seg_run = work / "cmseg"
        seg_cfg = _train_config(suite.seg_steps, suite, distill=True)
        distill(teacher_run, store, seg_run, suite.seg_stages, seg_cfg, resume=True, distill_config=dcfg)
        for k in suite.seg_stages:
            name = f"cm-seg{k}"
            if not _wanted(suite, name):
                continue
            run = seg_run if k == suite.seg_stages[-1] else seg_run / "stages" / f"seg{k}"
            student = load_policy(run)
            methods.append(Method(name, student, extra={
                **teacher_extra, **student_extra, "train_seconds": None,
                "distill_seconds": _cost(run).get("total_seconds")}))
    if sdp is not None and _wanted(suite, "sdp-cm"):
        stream = f"ode:{suite.sdp_ode_levels}"
        log(f"[bench] streaming consistency student of the SDP's {stream} ({suite.sdp_cm_steps} steps)")
        h = sdp.layout.chunks if hasattr(sdp, "layout") else 3
        scm_run = work / "sdpcm"
        scm_cfg = _train_config(suite.sdp_cm_steps, suite, distill=True)
        scm = distill(work / "sdp", store, scm_run, (h,), scm_cfg, resume=True,
                      distill_config=dataclasses.replace(dcfg, teacher_sampler=stream, segments=h,
                                                         streaming=True))
        methods.append(Method("sdp-cm", scm, extra={
            **teacher_extra, "distilled_sampler": stream, "train_seconds": None,
            # the SDP fine-tune is part of what this student cost
            "distill_seconds": (_cost(scm_run).get("seconds") or 0.0)
            + (_cost(work / "sdp").get("seconds") or 0.0)}))
    if suite.methods is not None:   # rows in the order the suite lists them (baselines first)
        order = {name: i for i, name in enumerate(suite.methods)}
        methods.sort(key=lambda m: order.get(m.name, order.get("sdp-ode6", len(order))
                                             if m.name.startswith("sdp-ode") else len(order)))
    return methods


def _planner_methods(suite: SuiteConfig, task: str, store: Path, work: Path, progress: bool) -> list[Method]:
    from fastpolicy.bench.planners import build_planner_methods, planner_train_config

    def make_config(steps: int):
        return planner_train_config(steps, suite.batch_size, suite.lr, progress=suite.progress)

    options = suite.planner_options
    methods, _ = build_planner_methods(store, work, task, suite.teacher_steps, suite.diffuser_steps,
                                       make_config, options.get("*"), suite.planner_candidates, suite.methods,
                                       log=print if progress else (lambda msg: None), options_by_type=options)
    return methods


def summarize_targets(rows: Sequence[dict[str, Any]], teacher_method: str = "dp-ddpm100") -> dict[str, Any]:
    """The students' targets, computed from the rows (nothing hidden: misses are reported as such).

    Ratios are of *median* planning-step latencies measured in this run (interleaved): a student
    must keep ≥ 95 % of the teacher's DDPM-100 score while planning ≥ 50× faster than DDPM-100 and
    ≥ 5× faster than DDIM-10; the streaming student must keep ≥ 95 % at one call per control step.
    """
    by = {r["method"]: r for r in rows}
    out: dict[str, Any] = {}
    ddpm, ddim = by.get(teacher_method), by.get("dp-ddim10")
    key = "step_latency_ms_p50"
    if ddpm is None or ddpm.get(key) is None or ddpm.get("score_mean") is None:
        return out
    floor = 0.95 * ddpm["score_mean"] if ddpm["score_mean"] >= 0 else 1.05 * ddpm["score_mean"]
    out["teacher_score"] = ddpm["score_mean"]
    out["score_floor_95pct"] = floor

    def check(r: dict[str, Any]) -> dict[str, Any]:
        res = {"score_ratio": r["score_mean"] / ddpm["score_mean"] if ddpm["score_mean"] else None,
               "keeps_95pct": bool(r["score_mean"] >= floor),
               "speedup_vs_ddpm100": ddpm[key] / r[key]}
        if ddim and ddim.get(key):
            res["speedup_vs_ddim10"] = ddim[key] / r[key]
        res["meets_all"] = bool(res["keeps_95pct"] and res["speedup_vs_ddpm100"] >= 50
                                and res.get("speedup_vs_ddim10", 0.0) >= 5)
        return res

    students = [r for r in rows
                if r["method"].startswith("cm-") and r.get(key) and r.get("score_mean") is not None]
    checked = {r["method"]: check(r) for r in students}
    winners = [m for m, c in checked.items() if c["meets_all"]]
    pick = min(winners or checked, key=lambda m: by[m][key], default=None)
    if pick is not None:
        out["best_student"] = pick
        out.update({f"best_student_{k}": v for k, v in checked[pick].items()})
    scm = by.get("sdp-cm")
    if scm is not None and scm.get("score_mean") is not None:
        out["sdp_cm_keeps_95pct"] = bool(scm["score_mean"] >= floor)
        out["sdp_cm_calls_per_step_max"] = scm.get("nfe_per_step_max")
        if scm.get(key):
            out["sdp_cm_speedup_vs_ddpm100"] = ddpm[key] / scm[key]
    return out


def run_suite(suite: str | SuiteConfig, tasks: Sequence[str], work_dir: str | Path | None = None,
              teacher: str | Path | None = None, results_dir: str | Path | None = None,
              plot_dir: str | Path | None = None, budget_ms: float | None = None, progress: bool = True,
              write: bool = True, ray_config: RayConfig | None = None) -> list[dict[str, Any]]:
    """Build, evaluate and write one suite for each task; returns all rows (and prints the tables).

    Results (``<suite>_<task>.json/.md``) and the Pareto plot go to ``results_dir`` / ``plot_dir``,
    by default the work directory (``runs/bench/<suite>``): the committed results under bench/results
    and docs/ change only when a caller asks for them (``fastpolicy bench --refresh-committed``).

    With ``ray_config`` every (method, seed) score rollout runs as a Ray task
    (``fastpolicy.dist.ray_runner``); the dataset, training and the interleaved timing stay here.
    """
    from fastpolicy.bench.report import markdown_table, pareto_plot, print_table
    from fastpolicy.bench.select import select_method
    from fastpolicy.evaluation.results import write_results

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
        teacher_run: Path | None = None
        if suite.planners:
            methods = _planner_methods(suite, task, store, work, progress)
        else:
            if teacher is not None:
                teacher_run = Path(teacher)
            else:
                if progress:
                    print(f"[bench] teacher ({suite.teacher_steps} steps)", flush=True)
                teacher_run = ensure_trained(store, work / "teacher", "diffusion", suite.teacher_options,
                                             suite.teacher_steps, suite, task)
            methods = build_methods(suite, task, store, work, teacher_run, progress)
        obs = obs_windows_from_store(store, max(m.policy.obs_horizon for m in methods))
        if progress:
            print(f"[bench] evaluating {len(methods)} methods on {task}", flush=True)
        if ray_config is None or teacher_run is None:  # Ray workers rebuild methods from a teacher run
            rows = evaluate_methods(methods, task, suite, obs, progress)
        else:
            from fastpolicy.dist.ray_runner import score_methods_on_ray

            rows = score_methods_on_ray(methods, task, suite, work, teacher_run, ray_config)
            for row in rows if progress else ():
                _print_score(row)
            rows = time_methods(methods, task, suite, rows, obs)
        for r in rows:
            r["suite"] = suite.name
        extra = ["step_latency_ms_max_p99", "throughput_b64", "distill_seconds"]
        title = f"{task} — suite {suite.name} ({time.perf_counter() - t0:.0f} s)"
        print_table(rows, title=title, extra=extra)
        if suite.planners:
            from fastpolicy.bench.planners import summarize_planner_targets

            targets = summarize_planner_targets(rows)
        else:
            targets = summarize_targets(rows)
        if progress and targets:
            print("targets:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in targets.items()})
        if budget_ms is not None:
            chosen = select_method(rows, budget_ms, task)
            print(f"budget {budget_ms:g} ms → {chosen['method']} (score {chosen['score_mean']:.1f}, "
                  f"worst step {chosen['step_latency_ms_max_p99']:.2f} ms)")
        if write:
            path = write_results(Path(results_dir) / f"{suite.name}_{task}.json", rows)
            md = Path(results_dir) / f"{suite.name}_{task}.md"
            notes = [f"- {k}: {v:.3g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in targets.items()]
            md.write_text(markdown_table(rows, extra=extra) + "\n\n" + "\n".join(notes) + "\n")
            # medians: a p99 of a few hundred samples on a shared machine is the machine, not the method
            png = pareto_plot(rows, Path(plot_dir) / f"pareto_{suite.name}_{task}.png",
                              title=f"{task}: score vs median planning-step latency (batch 1)",
                              latency_key="step_latency_ms_p50", budget_ms=budget_ms)
            print(f"wrote {path}, {md}, {png}")
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
