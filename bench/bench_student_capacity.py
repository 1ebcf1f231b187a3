"""Why the 1-call student misses its teacher on the multimodal task: capacity, and the action horizon.

On agv-bimodal-block the 1-call student of the teacher's DDIM-10 keeps both modes but fails more
episodes than its teacher: it turns too late at the corridor mouth and clips the block. This study
measures two suspects on *validation* seeds (100-104 × 10 episodes; the students table reports test
seeds 0-2), with the students suite's own teacher and student (``runs/bench/students/<task>``, built by
``bench/bench_students.py``):

* **capacity**: a student twice as wide as the teacher (hidden 512 vs 256), warm-started from the
  teacher by function-preserving widening (Net2Net: every hidden unit duplicated, outgoing weights
  halved, so LayerNorm statistics and outputs are unchanged; 1e-3 relative noise breaks the symmetry)
  and distilled with the same recipe and budget as the suite's student;
* **action horizon** (actions executed per plan, an inference setting): 8 (the suite's) and 4;

beside the teacher's DDPM-100 and DDIM-10 at the same horizons, and the median planning-step latency of
every 1-call policy, timed interleaved at batch 1 (≥ 200 planning steps each).

    nice -n 3 .venv/bin/python bench/bench_student_capacity.py      # after bench_students.py
    .venv/bin/python bench/bench_student_capacity.py --quick --out runs/capacity_smoke   # smoke
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import tyro

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


@dataclasses.dataclass
class Args:
    task: str = "agv-bimodal-block"
    hidden: int = 512
    """the wide student's hidden width (a multiple of the teacher's)"""
    seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    """validation environment seeds (10 episodes each)"""
    horizons: tuple[int, ...] = (8, 4)
    out: Path = REPO / "bench" / "results"
    quick: bool = False
    """tiny budgets (builds the students suite's quick teacher first): every code path, for the tests"""
    threads: int = 1


def widen(student, hidden: int):
    """A copy of an MLP-denoiser student ``hidden`` wide computing the same function (Net2Net widening)."""
    import torch

    from fastpolicy.policies.consistency import ConsistencyPolicy

    cfg = student.config_dict()
    old = cfg.get("backbone_kwargs", {}).get("hidden", 256)
    if cfg["backbone"] != "mlp" or hidden % old:
        raise ValueError(f"widening needs an MLP backbone and a multiple of its width {old}, got {hidden}")
    cfg["backbone_kwargs"] = {**cfg.get("backbone_kwargs", {}), "hidden": hidden}
    wide = ConsistencyPolicy(type(student.config).from_dict(cfg),
                             {k: v.clone() for k, v in student.normalizer_state().items()})
    r, gen = hidden // old, torch.Generator().manual_seed(0)
    state = {}
    for key, w in student.backbone.state_dict().items():
        target = wide.backbone.state_dict()[key]
        if w.shape != target.shape:
            if key.startswith("input_layer.0"):
                w = w.repeat(r, *([1] * (w.dim() - 1)))            # duplicated hidden units
            elif key == "output_layer.weight":
                w = w.repeat(1, r) / r                               # each copy carries half
            elif ".linear.weight" in key:
                w = w.repeat(r, r) / r
            else:                                                    # biases and LayerNorm affine
                w = w.repeat(r)
            if w.dim() == 2:
                w = w + 1e-3 * w.abs().mean() * torch.randn(w.shape, generator=gen)
        state[key] = w.clone()
    wide.backbone.load_state_dict(state)
    return wide.to(student.device)


def main(args: Args) -> None:
    import torch

    from fastpolicy.bench.methods import suite_store_path, train_config
    from fastpolicy.envs.agv.modes import ModeTracker
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate, measure_latency
    from fastpolicy.evaluation.results import write_results
    from fastpolicy.evaluation.timing import timing_fields
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.modes import policy_view
    from fastpolicy.train.distill import ConsistencyDistiller, DistillConfig, _fit, student_from_teacher
    from fastpolicy.train.run_record import run_is_complete
    from fastpolicy.utils.misc import calls

    torch.set_num_threads(args.threads)
    from bench_students import suite_for

    suite, work = suite_for(args.task, args.quick, args.out / "work")
    if args.quick:
        from fastpolicy.bench.runner import run_suite

        suite = dataclasses.replace(suite, methods=["teacher-ddim10", "student-1call"])
        scratch = args.out / "work"
        run_suite(suite, [args.task], work_dir=work, results_dir=scratch, plot_dir=scratch, progress=False)
    run = work / args.task
    teacher = load_policy(run / "teacher").eval()
    narrow = load_policy(run / "cm1").eval()
    wide_run = run / f"cm1-h{args.hidden}"
    steps = suite.cm_steps
    if not run_is_complete(wide_run, steps):
        dcfg = DistillConfig(teacher_sampler=suite.distill_sampler, denoise_weight=suite.denoise_weight)
        wide = widen(student_from_teacher(teacher, suite.distill_sampler), args.hidden)
        module = ConsistencyDistiller(teacher, wide, dcfg)
        store = suite_store_path(suite, args.task, run)
        extra = {"experiment": f"student widened to {args.hidden}", "teacher": str(run / "teacher")}
        _fit(module, store, wide_run, train_config(steps, suite, distill=True), False, extra)
    wide = load_policy(wide_run).eval()

    spec = get_task(args.task)
    episodes = 1 if args.quick else 10
    seeds = list(args.seeds[:1] if args.quick else args.seeds)
    rows = []
    for ta in args.horizons:
        methods = {"teacher-ddpm100": teacher.with_sampler("ddpm:100", action_horizon=ta),
                   "teacher-ddim10": teacher.with_sampler("ddim:10", action_horizon=ta)}
        for name, student in (("student", narrow), (f"student-h{args.hidden}", wide)):
            for k in (1, 2):
                methods[f"{name}-{calls(k)}"] = policy_view(student, action_horizon=ta, steps=k)._use_steps(k)
        for name, policy in methods.items():
            tracker = ModeTracker(spec)
            row = evaluate(policy, spec, episodes, seeds, latency_steps=0, progress=False, method=name,
                           step_hook=tracker.hook, action_horizon=ta, split="validation",
                           hidden=int(policy.config.backbone_kwargs.get("hidden", 256)))
            row.update(tracker.summary())
            rows.append(row)
            print(f"Ta {ta} {name:<16} score {row['score_mean']:.3f} success {row['success_rate']:.2f} "
                  f"{row.get('modes', '')}", flush=True)
    # 1-call latency of the narrow and the wide student beside the teacher's samplers, interleaved
    timed = {"teacher-ddpm100": teacher.with_sampler("ddpm:100"),
             "teacher-ddim10": teacher.with_sampler("ddim:10"),
             "student-1call": narrow.with_steps(1), f"student-h{args.hidden}-1call": wide.with_steps(1)}
    samples = {name: ([], []) for name in timed}
    rounds, per_round = (2, 2) if args.quick else (20, 10)
    for r in range(rounds):
        for name, policy in timed.items():
            stats = measure_latency(policy, spec, seed=10_000 + r, planning_steps=per_round)
            samples[name][0].extend(stats.nfe)
            samples[name][1].extend(stats.latency_s)
    timing = {name: timing_fields(*pair) for name, pair in samples.items()}
    for name, fields in timing.items():
        print(f"{name:<16} plan p50 {fields['step_latency_ms_p50']:.3f} ms "
              f"({fields['step_latency_samples']} planning steps)")
    for row in rows:   # timed at the suite's action horizon (the teacher's)
        if row["action_horizon"] == teacher.config.action_horizon and row["method"] in timing:
            row.update(timing[row["method"]])
    path = write_results(args.out / f"student_capacity_{args.task}.json", rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(tyro.cli(Args))
