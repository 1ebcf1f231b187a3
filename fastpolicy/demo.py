"""``fastpolicy demo`` (``make demo``): the whole story on one CPU in minutes.

maze2d-umaze dataset from D4RL's waypoint controller → small diffusion teacher → its samplers and its
accelerated variants (streaming, consistency student, streaming + consistency) evaluated side by side →
a table (score, NFE per control step, p50/p99 latency per action, worst control step) and a Pareto
plot. It is the benchmark suite ``demo`` (``fastpolicy.bench.runner.SUITES``) run into ``demo_out/``;
every stage reuses what is already on disk, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def run_demo(
    out: str = "demo_out", task: str = "maze2d-umaze", threads: int | None = None, **overrides
) -> list[dict]:
    """Run the ``demo`` suite on ``task`` into ``out``; ``overrides`` replace SuiteConfig fields."""
    import torch

    from fastpolicy.bench.runner import SUITES, run_suite

    if threads:
        torch.set_num_threads(threads)
    suite = dataclasses.replace(SUITES["demo"], **overrides)
    t0 = time.perf_counter()
    print(
        f"fastpolicy demo: {task} — dataset {suite.dataset_size} transitions, teacher "
        f"{suite.teacher_options.get('backbone')} × {suite.teacher_steps} steps, then the fast variants; "
        f"everything lands in {out}/",
        flush=True,
    )
    rows = run_suite(suite, [task], work_dir=Path(out), results_dir=Path(out), plot_dir=Path(out))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="end-to-end demo on embedded defaults (dataset → teacher → fast variants)"
    )
    p.add_argument("--out", default="demo_out", help="where datasets, runs, results JSON and plot go")
    p.add_argument("--task", default="maze2d-umaze")
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
