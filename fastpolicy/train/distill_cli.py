"""``fastpolicy distill``: the command line of :mod:`fastpolicy.train.distill`."""

from __future__ import annotations

import argparse

import torch

from fastpolicy.train.cli import add_training_flags, training_config
from fastpolicy.train.distill import SOLVERS, TARGETS, DistillConfig, distill
from fastpolicy.train.run_record import read_cost


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="consistency-distil a teacher (1 step, segmented, streaming)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint or run directory")
    p.add_argument("--store", required=True, help="EpisodeStore the teacher was trained on")
    p.add_argument("--out", required=True, help="run directory of the student (the last stage)")
    p.add_argument("--segments", default="1",
                   help="k, or a progression such as 8,4,2,1 (each stage starts from the previous one)")
    p.add_argument("--solver", default="ddim", choices=SOLVERS, help="teacher ODE step")
    p.add_argument("--teacher-sampler", default=None,
                   help="the sampler the teacher is evaluated with, whose grid, spacing and temperature the "
                        "student learns (default: the teacher's configured sampler; SDP: its ode:N stream)")
    add_training_flags(p, defaults={"steps": 1000, "batch_size": 64, "warmup_steps": 50,
                                    "checkpoint_every": 500}, helps={"steps": "optimizer steps per stage"})
    p.add_argument("--target", default="ode", choices=TARGETS,
                   help="ode: the teacher's sampler run to the segment boundary (exact); bootstrap: one "
                        "teacher step then the EMA target network")
    p.add_argument("--target-decay", type=float, default=0.95, help="EMA rate of the target network")
    p.add_argument("--denoise-weight", type=float, default=0.0,
                   help="weight of the denoising auxiliary loss (the teacher's own loss)")
    p.add_argument("--streaming", action="store_true", help="streaming student from an SDP teacher")
    p.add_argument("--student-hidden", type=int, default=None,
                   help="student MLP width (default: the teacher's, warm-started from its weights); a "
                        "narrower student starts from a seeded random init and needs --target ode")
    p.add_argument("--resume", action="store_true", help="continue (or skip finished stages of) --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_distill)


def parse_segments(text: str) -> list[int]:
    try:
        stages = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--segments {text!r}: expected k or a list like 8,4,2,1") from None
    if not stages or any(k < 1 for k in stages):
        raise ValueError(f"--segments {text!r}: every k must be ≥ 1")
    return stages


def _cmd_distill(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    from fastpolicy.utils.atomic import check_writable

    check_writable(args.out, inside=True)          # before the teacher is loaded and anything trains
    stages = parse_segments(args.segments)
    tcfg = training_config(args, progress=not args.no_progress)
    dcfg = DistillConfig(teacher_sampler=args.teacher_sampler, segments=stages[-1], solver=args.solver,
                         target=args.target, target_decay=args.target_decay,
                         denoise_weight=args.denoise_weight, streaming=args.streaming,
                         student_hidden=args.student_hidden)
    student = distill(args.teacher, args.store, args.out, stages, tcfg, resume=args.resume,
                      distill_config=dcfg)
    cost = read_cost(args.out) or {}
    print(f"student {student.method} ({student.steps} NFE) → {args.out} "
          f"[{cost.get('total_seconds', float('nan')):.0f} s]")
    return 0
