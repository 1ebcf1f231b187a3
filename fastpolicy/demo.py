"""``fastpolicy demo`` (``make demo``): the whole story on one CPU in minutes, where it matters most.

The multimodal AGV task (agv-bimodal-block): the expert passes a block north or south at random, so
behaviour cloning averages the two ways and drives into the block, while a diffusion teacher keeps both.
The demo builds that dataset → trains BC and a small diffusion teacher → distils consistency students
from the teacher's DDIM-10 and a streaming student from an SDP fine-tune → scores every method on the
same seeds (with the fraction of episodes per mode) and times them interleaved (≥ 200 planning steps
each) → a table (score, success, modes, calls per control step, median and p99 planning-step latency)
with the students' targets (≥ 95 % of the teacher at ≥ 50× / ≥ 5× lower latency than DDPM-100 /
DDIM-10) and a Pareto plot. It is the benchmark suite ``demo`` (``fastpolicy.bench.runner.SUITES``) run
into ``demo_out/``; every stage reuses what is already on disk, so an interrupted demo resumes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path


def run_demo(
    out: str = "demo_out", task: str = "agv-bimodal-block", threads: int | None = None, **overrides
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
