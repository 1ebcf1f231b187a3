"""``fastpolicy demo``: the command line of :mod:`fastpolicy.demo`."""

from __future__ import annotations

import argparse

from fastpolicy.demo import run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo on embedded defaults (dataset → teacher → fast variants)"
    )
    p.add_argument("--out", default="demo_out", help="where datasets, runs, results JSON and plot go")
    p.add_argument("--task", default="agv-bimodal-block",
                   help="the multimodal AGV task by default (BC fails there; see README)")
    p.add_argument("--dataset-size", type=int, default=None, help="override the demo's dataset size")
    p.add_argument("--teacher-steps", type=int, default=None, help="override the teacher's training steps")
    p.add_argument("--episodes", type=int, default=None, help="override evaluation episodes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a: argparse.Namespace) -> int:
    from fastpolicy.utils.atomic import check_writable

    check_writable(a.out, inside=True)             # fail in one line, not after minutes of training
    overrides = {
        k: v
        for k, v in (
            ("dataset_size", a.dataset_size),
            ("teacher_steps", a.teacher_steps),
            ("episodes", a.episodes),
        )
        if v is not None
    }
    run_demo(a.out, a.task, a.threads, **overrides)
    return 0
