"""Run one benchmark suite (``fastpolicy.bench.suites``) on some tasks; ``--quick`` at toy budgets.

The full runs are ``fastpolicy bench --suite NAME --task T --refresh-committed`` (see
bench/manifest.toml); this script is their smoke form: the same suite and code paths — dataset,
teacher, every method's training, scoring, interleaved timing, the report — with a few optimizer steps
and one episode, written under ``--out`` (never into bench/results).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

#: Toy budgets of ``--quick``: every stage runs, nothing is meant to score.
QUICK = dict(dataset_size=3000, teacher_steps=8, bc_steps=4, sdp_steps=4, cm_steps=4, sdp_cm_steps=4,
             seg_steps=4, batch_size=16, episodes=1, seeds=[0], latency_steps=4, latency_rounds=1,
             throughput_calls=1, progress=False, teacher_options={"backbone": "mlp"}, store_root=None)


def main(argv: list[str] | None = None) -> int:
    from fastpolicy.bench.suites import SUITES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True, choices=list(SUITES))
    p.add_argument("--task", nargs="+", required=True, help="task card name(s)")
    p.add_argument("--out", required=True, type=Path, help="work dir, results and plots")
    p.add_argument("--quick", action="store_true", help="toy budgets (smoke test of every stage)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)

    import torch

    from fastpolicy.bench.runner import run_suite

    torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]
    if args.quick:
        suite = dataclasses.replace(suite, **QUICK)
    rows = run_suite(suite, args.task, work_dir=args.out / "work", results_dir=args.out, plot_dir=args.out,
                     progress=not args.quick)
    print(f"{len(rows)} rows: {', '.join(r['method'] for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
