"""The benchmark suites as data: one catalogue of budgets, each naming the method family it builds.

A suite is a :class:`SuiteConfig` value — dataset size, training steps per learner, evaluation episodes
and seeds, timing rounds, the methods to run — so ``fastpolicy bench --suite NAME``, ``fastpolicy demo``
and the study scripts under ``bench/`` share one definition of "the demo budget" or "the d4rl budget".
The runner (``fastpolicy.bench.runner``) reads a suite; it never decides budgets itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILY_NAMES: tuple[str, ...] = ("teacher", "planners")
"""method families a suite can build: a teacher and its accelerations (``fastpolicy.bench.teacher_methods``),
or the diffusion planners (``fastpolicy.bench.planners``)"""

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
    cm_distill_options: dict[str, Any] = field(default_factory=dict)
    """``DistillConfig`` fields of the 1-segment student over the defaults (e.g. ``top_fraction``)"""
    batch_size: int = 64
    lr: float = 1e-4
    distill_lr: float | None = None
    """consistency distillation's learning rate (None: ``lr``)"""
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    action_horizons: tuple[int, ...] = ()
    """candidate action horizons (actions executed per plan, an inference setting): each chunked diffusion
    method runs at the one that scores best on ``validation_seeds`` (ties: the longer, which plans less
    often); empty: every method at its trained horizon. Streaming methods and BC keep theirs (trained)."""
    validation_seeds: list[int] = field(default_factory=lambda: list(range(100, 110)))
    """environment seeds (× ``episodes``) the inference settings are chosen on, disjoint from ``seeds``"""
    latency_steps: int = 48
    """timed planning steps (control steps that call the denoiser) per method, over all rounds"""
    latency_rounds: int = 2
    throughput_calls: int = 3
    sdp_ode_levels: int = 6
    """the SDP's deterministic stream ``ode:N`` (method ``streaming-ode{N}``; N/h calls per control step)"""
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
    family: str = "teacher"
    """which method family builds the suite's methods (``fastpolicy.bench.runner.FAMILIES``): ``teacher``
    (a diffusion teacher and its accelerations) or ``planners`` (the diffusion planners of
    ``fastpolicy.bench.planners``; ``teacher_steps`` then trains the Trajectory Diffuser, whose networks
    the Decision Diffuser reuses, and ``diffuser_steps`` the Diffuser)"""
    planners: bool = False
    """old spelling of ``family="planners"``, kept in step with ``family`` while callers still read it
    (``fastpolicy bench --methods`` checks ids with it; ``runner.known_methods`` is the replacement)"""
    diffuser_steps: int = 2000
    planner_candidates: int = 8
    """Trajectory Diffuser candidates per plan (the critic picks one)"""
    planner_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per planner type (``"*"``: both; ``"diffuser"``; ``"trajectory-diffuser"``, whose networks the
    Decision Diffuser reuses) options on top of H = 16, replanning every control step"""

    def __post_init__(self) -> None:
        if self.planners:
            self.family = "planners"
        if self.family not in FAMILY_NAMES:
            raise ValueError(f"unknown method family {self.family!r}; known: {', '.join(FAMILY_NAMES)}")
        self.planners = self.family == "planners"
        if self.action_horizons and set(self.validation_seeds) & set(self.seeds):
            raise ValueError(f"validation_seeds {self.validation_seeds} overlap the test seeds {self.seeds}: "
                             "inference settings must be chosen on other episodes than those reported")
        if any(int(ta) < 1 for ta in self.action_horizons):
            raise ValueError(f"action_horizons must be ≥ 1, got {self.action_horizons}")


ALL_METHODS: tuple[str, ...] = (
    "bc-mlp", "teacher-ddpm100", "teacher-ddim10", "teacher-ddim4", "teacher-ddim2-trailing",
    "teacher-ddim1-trailing", "teacher-one-call-estimate", "teacher-dpmsolver10",
    "teacher-ddpm100-temp0.5", "teacher-ddim10-temp0.5", "teacher-ddpm100-temp0", "teacher-ddim10-temp0",
    "teacher-ddim1-trailing-temp0", "teacher-ddim10-exec4", "streaming-net-as-teacher-ddim10",
    "streaming-ddpm100", "streaming-ode6", "student-1call", "student-2calls", "student-4calls",
    "progressive-student-2calls", "progressive-student-1call", "streaming-student-1call")
"""Method ids (docs/method_names.md says what each is; result files written before the rename use older
ids, mapped on read by ``fastpolicy.evaluation.method_names``). Baselines that show what a student adds:
``bc-mlp``; ``teacher-one-call-estimate``, the teacher's one-call clean estimate from the top of the
distilled grid (the untrained student); ``teacher-ddim{1,2}-trailing``, DDIM at the students' call counts;
``teacher-ddim1-trailing-temp0``, one deterministic call from x_T = 0 (the teacher's estimate of the mean
action: what scores on unimodal, noisy data such as hopper-medium)."""

BIMODAL_ACTION_HORIZONS: tuple[int, ...] = (8, 4)
"""agv-bimodal-block (demo and students suites): every chunked diffusion method picks Ta 8 or 4 on
validation seeds — a late mode switch at the corridor mouth is corrected sooner by planning more often"""
BIMODAL_CM_OPTIONS: dict[str, Any] = {"top_fraction": 1.0}
"""agv-bimodal-block's 1-segment student trains at the grid's top only, the level its one call starts at
(validation seeds 100-109: 94 % success at 1 call and Ta 8 against 90 % with a quarter of each batch
there; 2 calls 99 % against 97 %)"""

SUITES: dict[str, SuiteConfig] = {
    # Minutes from scratch on a busy 2-core CPU (README): a small goal-holding maze dataset, an MLP
    # teacher and the fast variants that need little training — to try the pipeline, not to rank methods.
    "smoke": SuiteConfig("smoke", dataset_size=20_000, dataset_recipes={"maze2d-umaze": "maze2d-umaze-dwell"},
                         teacher_steps=600, bc_steps=400, sdp_steps=150, cm_steps=150, sdp_cm_steps=150,
                         seg_stages=(), batch_size=128, lr=1e-3, distill_lr=1e-4, episodes=4, seeds=[0],
                         latency_steps=16, latency_rounds=1, throughput_calls=1,
                         teacher_options={"backbone": "mlp"},
                         methods=("bc-mlp", "teacher-ddim10", "teacher-ddim4", "streaming-ode6",
                                  "student-1call", "streaming-student-1call")),
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
                        action_horizons=BIMODAL_ACTION_HORIZONS, cm_distill_options=BIMODAL_CM_OPTIONS,
                        dataset_recipes={"maze2d-umaze": "maze2d-umaze-dwell"},
                        methods=("bc-mlp", "teacher-ddpm100", "teacher-ddim10", "teacher-ddim1-trailing",
                                 "teacher-one-call-estimate", "streaming-ode6", "student-1call",
                                 "student-2calls", "streaming-student-1call")),
    # bench/bench_students.py: the demo's methods plus DDIM at the students' call counts, on the
    # multimodal AGV task, the goal-holding maze and the D4RL teachers (per-task overrides there)
    "students": SuiteConfig("students", dataset_size=20_000, teacher_steps=4000, bc_steps=2000, sdp_steps=800,
                            cm_steps=2000, sdp_cm_steps=1500, seg_stages=(), batch_size=256, lr=1e-3,
                            distill_lr=1e-3, episodes=10, seeds=[0, 1, 2], latency_steps=200,
                            latency_rounds=20, throughput_calls=2, teacher_options={"backbone": "mlp"},
                            methods=("bc-mlp", "teacher-ddpm100", "teacher-ddim10", "teacher-ddim2-trailing",
                                     "teacher-ddim1-trailing", "teacher-one-call-estimate", "streaming-ode6",
                                     "student-1call", "student-2calls", "streaming-student-1call")),
    # D4RL-style MuJoCo tasks: the scores side by side with the published numbers and the d3rlpy peers
    # (bench/bench_d4rl_peers.py). CPU-sized: MLP denoiser teacher, 20k optimizer steps at batch 256 for
    # teacher and BC; the recipe's full-size datasets at datasets/store/<recipe> (`fastpolicy data make`).
    # Each learner at the horizons its validation runs chose (bench/bench_diffusion_core.py, seed 100):
    # the teacher at the task card's To 1 / Tp 4 / Ta 1 and parametrisation (``teacher:``), BC at
    # To 2 / Tp 16 / Ta 2 (walker2d-medium validation: BC 85.4 there vs 78.4 at 1/4/1). Samplers at
    # temperature 1, 0.5 and 0 (deterministic from x_T = 0), and one deterministic call, all reported.
    "d4rl": SuiteConfig("d4rl", dataset_size=None, store_root="datasets/store", teacher_steps=20_000,
                        bc_steps=20_000, batch_size=256, lr=1e-3, episodes=10, seeds=[0, 1, 2],
                        latency_steps=64, latency_rounds=2, throughput_calls=2,
                        teacher_options={"backbone": "mlp"},
                        bc_options={"obs_horizon": 2, "pred_horizon": 16, "action_horizon": 2},
                        methods=("bc-mlp", "teacher-ddpm100", "teacher-ddim10", "teacher-ddpm100-temp0.5",
                                 "teacher-ddim10-temp0.5", "teacher-ddpm100-temp0", "teacher-ddim10-temp0",
                                 "teacher-ddim1-trailing-temp0")),
    # Diffusion planners (offline RL, return-guided), one training seed at default settings: value-guided
    # Diffuser, Decision Diffuser (its own run; reference DDPM-200 and DDIM-10) and Trajectory Diffuser,
    # CPU-sized (MLP denoisers, H = 16); bench/bench_planners.py runs the fair protocol (3 seeds, settings
    # tuned on validation, paired test episodes) that the docs report. Mazes use the goal-holding data
    # (as the demo; every planner sat at the random floor on D4RL's goal-switching data at H = 16).
    "planners": SuiteConfig("planners", family="planners", teacher_steps=8000, diffuser_steps=8000,
                            batch_size=128, lr=1e-3, episodes=10, seeds=[0], latency_steps=32,
                            latency_rounds=2, throughput_calls=1,
                            dataset_recipes={f"maze2d-{m}": f"maze2d-{m}-dwell"
                                             for m in ("umaze", "medium", "large")}),
}

