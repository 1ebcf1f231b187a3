"""``fastpolicy bench`` (run a suite, pick a method for a latency budget) and ``fastpolicy report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fastpolicy.bench.runner import SUITES  # light: it imports torch and the rest inside its functions
from fastpolicy.distributed import add_ray_arguments, ray_config_from_args

#: Where the repository keeps the committed results and plots (written only with --refresh-committed).
COMMITTED_RESULTS, COMMITTED_PLOTS = "bench/results", "docs"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark every acceleration of a teacher side by side "
                                     "(score, NFE, latency)")
    p.add_argument("--suite", default="quick", choices=list(SUITES),
                   help="budgets (smoke: minutes from scratch, MLP teacher, 6 methods; quick: every "
                        "method, U-Net teacher, >5 min even with --teacher; demo: the `fastpolicy demo` "
                        "suite, MLP teacher; d4rl: BC + "
                        "teacher on the MuJoCo tasks' full-size stores, 3 seeds; planners: Diffuser, "
                        "Decision Diffuser and Trajectory Diffuser)")
    p.add_argument("--task", nargs="+", default=["maze2d-umaze"], help="task card name(s)")
    p.add_argument("--teacher", default=None,
                   help="reuse this teacher run/checkpoint (default: train one)")
    p.add_argument("--budget-ms", type=float, default=None,
                   help="also select the best-scoring method whose p99 worst-case step latency fits "
                        "this budget")
    p.add_argument("--methods", nargs="+", default=None,
                   help="restrict to these methods (ids as in docs/method_names.md; older ids such as "
                        "dp-ddim10 are accepted)")
    p.add_argument("--work-dir", default=None, help="runs and datasets (default runs/bench/<suite>)")
    p.add_argument("--results-dir", default=None,
                   help="where <suite>_<task>.json/.md go (default: the work dir)")
    p.add_argument("--plot-dir", default=None,
                   help="where pareto_<suite>_<task>.png goes (default: the work dir)")
    p.add_argument("--refresh-committed", action="store_true",
                   help=f"write into the repository's committed results instead ({COMMITTED_RESULTS}/ and "
                        f"{COMMITTED_PLOTS}/; run from the repository root)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (recorded in every row)")
    p.add_argument("--no-write", action="store_true", help="print only")
    add_ray_arguments(p)
    p.set_defaults(func=_cmd_bench)

    r = sub.add_parser("report", help="tables and a Pareto plot from result JSON files")
    r.add_argument("files", nargs="+", help="result JSON files (lists of rows)")
    r.add_argument("--md", default=None, help="write a markdown table here")
    r.add_argument("--png", default=None,
                   help="write the Pareto plot (score vs worst-case step latency) here")
    r.add_argument("--latency-key", default="step_latency_ms_max_p99",
                   help="latency column of the plot and of --budget-ms")
    r.add_argument("--budget-ms", type=float, default=None, help="select a method for this budget")
    r.set_defaults(func=_cmd_report)


def _cmd_bench(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from fastpolicy.bench.planners import PLANNER_METHODS
    from fastpolicy.bench.runner import ALL_METHODS, run_suite
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.method_names import canonical_method
    from fastpolicy.utils.atomic import check_writable

    ray_config = ray_config_from_args(args)  # before any work: a missing extra is one line
    if args.budget_ms is not None and not args.budget_ms > 0:
        raise ValueError(f"--budget-ms must be > 0, got {args.budget_ms}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    for task in args.task:
        get_task(task)
    work_dir = Path(args.work_dir or Path("runs") / "bench" / args.suite)
    results_dir, plot_dir = output_dirs(args, work_dir)
    for folder in {work_dir, results_dir, plot_dir} if not args.no_write else {work_dir}:
        check_writable(folder, inside=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]
    if args.methods:
        known = PLANNER_METHODS if suite.planners else ALL_METHODS
        methods = tuple(canonical_method(m) for m in args.methods)  # older ids → today's names
        unknown = sorted(set(methods) - set(known))
        if unknown:
            raise ValueError(f"unknown methods {unknown} for suite {suite.name}; known: {', '.join(known)}")
        suite = dataclasses.replace(suite, methods=methods)
    run_suite(suite, args.task, work_dir=work_dir, teacher=args.teacher, results_dir=results_dir,
              plot_dir=plot_dir, budget_ms=args.budget_ms, write=not args.no_write,
              ray_config=ray_config)
    return 0


def output_dirs(args: argparse.Namespace, work_dir: Path) -> tuple[Path, Path]:
    """Results and plot folders: under the work dir unless given; the committed ones on request."""
    if not args.refresh_committed:
        return Path(args.results_dir or work_dir), Path(args.plot_dir or work_dir)
    if args.results_dir or args.plot_dir:
        raise ValueError("--refresh-committed writes to the committed folders: drop --results-dir/--plot-dir")
    if not (Path(COMMITTED_RESULTS).is_dir() and Path(COMMITTED_PLOTS).is_dir()):
        raise FileNotFoundError(f"--refresh-committed: no {COMMITTED_RESULTS}/ and {COMMITTED_PLOTS}/ here; "
                                "run it from the repository root")
    return Path(COMMITTED_RESULTS), Path(COMMITTED_PLOTS)


def _cmd_report(args: argparse.Namespace) -> int:
    from fastpolicy.bench.report import COLUMNS, HASH_COLUMN, markdown_table, pareto_plot, print_table
    from fastpolicy.bench.select import select_method
    from fastpolicy.evaluation.results import read_results
    from fastpolicy.utils.atomic import check_writable

    rows = []
    for f in args.files:
        if not Path(f).exists():
            raise FileNotFoundError(f"result file not found: {f}")
        rows.extend(read_results(f))
    if not rows:
        raise ValueError(f"no result rows in {', '.join(args.files)}")
    for out in (args.md, args.png):
        if out:
            check_writable(out)
    if args.budget_ms is not None and not any(r.get(args.latency_key) is not None for r in rows):
        raise ValueError(f"--budget-ms: no row has the latency column {args.latency_key!r}")
    extra = [k for k in (args.latency_key, "throughput_b64", "distill_seconds") if any(k in r for r in rows)]
    print_table(rows, extra=extra, columns=[*COLUMNS, HASH_COLUMN])
    if args.md:
        Path(args.md).write_text(markdown_table(rows, extra=extra) + "\n")
        print(f"wrote {args.md}")
    if args.png:
        tasks = sorted({r["task"] for r in rows})
        png = pareto_plot(rows, args.png, title=", ".join(tasks), latency_key=args.latency_key,
                          budget_ms=args.budget_ms)
        print(f"wrote {png}")
    if args.budget_ms is not None:
        for task in sorted({r["task"] for r in rows}):
            chosen = select_method(rows, args.budget_ms, task, latency_key=args.latency_key)
            print(f"{task}: budget {args.budget_ms:g} ms → {chosen['method']} "
                  f"(score {chosen['score_mean']:.1f}, "
                  f"{args.latency_key} {chosen[args.latency_key]:.3g} ms)")
    return 0
