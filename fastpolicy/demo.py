"""``fastpolicy demo`` (``make demo``): the whole story on one CPU in minutes.

maze2d-umaze dataset from D4RL's waypoint controller → small diffusion teacher → its samplers and
accelerated variants evaluated side by side → a table (score, NFE per control step, p50/p99 latency
per action) and a Pareto plot. Every stage reuses what is already on disk (dataset, checkpoints), so
an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoArgs:
    """Embedded defaults, sized for ≤ 10 minutes on a 2-core CPU."""

    out: str = "demo_out"
    """where the dataset, runs, results JSON and plot go"""
    task: str = "maze2d-umaze"
    dataset_size: int = 100_000
    """transitions in the generated dataset (D4RL's maze2d-umaze has 1M)"""
    backbone: str = "unet-small"
    train_steps: int = 2000
    batch_size: int = 64
    episodes: int = 10
    """evaluation episodes per seed"""
    seeds: list[int] = field(default_factory=lambda: [0])
    samplers: list[str] = field(default_factory=lambda: ["ddpm:100", "ddim:10", "ddim:4"])
    latency_steps: int = 48
    threads: int | None = None
    seed: int = 0


def run_demo(args: DemoArgs) -> list[dict]:
    import torch

    from fastpolicy.bench.report import pareto_plot, print_table
    from fastpolicy.bench.schema import write_results
    from fastpolicy.data.recipes import make_dataset
    from fastpolicy.evaluation import evaluate
    from fastpolicy.train.checkpoint import load_policy
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    store = out / "data" / args.task
    print(f"[1/3] dataset {args.task} ({args.dataset_size} transitions) → {store}")
    if not (store / "zarr.json").exists():
        make_dataset(args.task, store, size=args.dataset_size, seed=args.seed, overwrite=False)
    run = out / "runs" / f"{args.task}-teacher"
    print(f"[2/3] teacher: {args.backbone}, {args.train_steps} steps → {run}")
    cfg = TrainConfig(steps=args.train_steps, batch_size=args.batch_size, warmup_steps=min(500, args.train_steps // 10),
                      checkpoint_every=max(100, args.train_steps // 5), seed=args.seed)
    train_offline(store, run, "diffusion", {"backbone": args.backbone}, cfg, resume=True, task=args.task)
    teacher = load_policy(run)
    print("[3/3] evaluation, side by side")
    rows = []
    for spec in args.samplers:
        teacher.set_sampler(spec)
        rows.append(evaluate(teacher, args.task, args.episodes, args.seeds, args.latency_steps))
    results = write_results(out / "results.json", rows)
    plot = pareto_plot(rows, out / "pareto.png", title=f"{args.task}: score vs p99 latency per action")
    print_table(rows, title=f"fastpolicy demo — {args.task} ({time.perf_counter() - t0:.0f} s)")
    print(f"results: {results}\nplot:    {plot}")
    return rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on embedded defaults (dataset → teacher → fast variants)")
    defaults = DemoArgs()
    p.add_argument("--out", default=defaults.out)
    p.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    p.add_argument("--backbone", default=defaults.backbone)
    p.add_argument("--train-steps", type=int, default=defaults.train_steps)
    p.add_argument("--episodes", type=int, default=defaults.episodes)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a: argparse.Namespace) -> int:
    run_demo(DemoArgs(out=a.out, dataset_size=a.dataset_size, backbone=a.backbone, train_steps=a.train_steps,
                      episodes=a.episodes, threads=a.threads))
    return 0
