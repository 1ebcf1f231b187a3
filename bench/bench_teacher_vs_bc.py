"""The diffusion teacher beside BC at the same budget: train both on one store, then score and time them.

Used for the tasks the D4RL suite does not cover: AGV expert demonstrations (``agv-simple-static``, the
multimodal ``agv-bimodal-block``, with the way each episode went round the block) and the goal-holding
maze (``--task maze2d-umaze --recipe maze2d-umaze-dwell``). Workflow, top to bottom:

1. build the task's dataset (``--recipe``, default the task card's; reused if present);
2. train a diffusion policy on it through ``fastpolicy.train.run_record.train_or_reuse`` (MLP denoiser and the
   library's default parametrisation, CPU, a fixed optimizer-step budget at the suites' learning rate
   1e-3, recorded in every row), and BC with the same budget and training seed;
3. evaluate the last checkpoint with ``fastpolicy.evaluation.evaluate`` under each sampler
   (``ddpm:100`` the teacher, ``ddim:10``), and BC: score, success rate over seeds x episodes, the
   mode each episode took where the layout has two ways, and per-action latency at batch 1;
4. write the rows to ``--out``.

The budget (steps, batch, episodes) is sized for a shared 2-core CPU (~5-10 min when it is idle,
~20 under load) and recorded in every row, so the numbers are read as "what this budget buys", not as
the method's ceiling.

    nice -n 10 env OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_teacher_vs_bc.py
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    task: str = "agv-simple-static"
    """task card (envs/<task>.yaml)"""
    recipe: str | None = None
    """dataset recipe that builds a missing store (default: the task card's)"""
    store: Path = REPO / "datasets" / "store" / "agv-simple-static-expert"
    """EpisodeStore of demonstrations (built if missing)"""
    run: Path = REPO / "runs" / "bench_teacher_vs_bc"
    """training run directory (checkpoints, TensorBoard)"""
    out: Path = REPO / "bench" / "results" / "agv_teacher.json"
    """result rows"""
    backbone: str = "mlp"
    """denoiser: mlp (fast on CPU) or unet-small"""
    steps: int = 10_000
    """optimizer steps"""
    batch_size: int = 256
    lr: float = 1e-3
    """the benchmark suites' learning rate (demo, d4rl); DiffusionPolicy's 1e-4 is for 10x longer runs"""
    episodes: int = 20
    """evaluation episodes per seed"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """evaluation seeds"""
    samplers: list[str] = field(default_factory=lambda: ["ddpm:100", "ddim:10"])
    latency_steps: int = 64
    """batch-1 closed-loop steps timed per sampler"""
    threads: int = 1
    """torch CPU threads (the machine is shared)"""
    retrain: bool = False
    """train from scratch even if the run has a checkpoint"""
    dataset_size: int | None = None
    """transitions of a store that must be built (None: the recipe's default); smoke runs use a few"""


def main(args: Args) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from fastpolicy.bench.methods import ensure_dataset
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.envs.agv.modes import ModeTracker
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate
    from fastpolicy.evaluation.results import write_results
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.run_record import train_or_reuse
    from fastpolicy.train.trainer import TrainConfig

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    t0 = time.perf_counter()
    ensure_dataset(args.task, args.store, args.dataset_size, seed=0, recipe=args.recipe)
    store = EpisodeStore.open(args.store)
    t_data = time.perf_counter() - t0

    bc_run = args.run.with_name(args.run.name + "_bc")
    if args.retrain:  # this benchmark's own run directories: start both learners from scratch
        for run in (args.run, bc_run):
            if (run / "latest").exists():
                shutil.rmtree(run)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=min(500, args.steps // 10), checkpoint_every=max(args.steps // 4, 1),
                      log_every=100, seed=0, device="cpu")
    # a reused run reports the wall time of the training that produced it (its run record)
    teacher_options = {"backbone": args.backbone, "sampler": "ddpm:100"}
    train_s = train_or_reuse(args.store, args.run, "diffusion", teacher_options, cfg, task=args.task)
    policy = load_policy(args.run)

    budget = {"train_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "backbone": args.backbone, "prediction_type": policy.config.prediction_type,
              "train_wall_s": None if train_s is None else round(train_s, 1), "data_wall_s": round(t_data, 1),
              "dataset": store.attrs.get("recipe", args.recipe or task.dataset),
              "dataset_episodes": store.n_episodes, "dataset_steps": store.n_steps,
              "expert_success_rate": store.attrs.get("expert_success_rate"),
              "budget_note": "CPU, 1 torch thread, nice 10, shared 2-core machine: ~50 optimizer steps/s "
                             "when idle (10k steps ~ 3.5 min), far fewer under load (see train_wall_s)"}
    rows = []
    for spec in args.samplers:
        t0 = time.perf_counter()
        tracker = ModeTracker(task)
        row = evaluate(policy.with_sampler(spec), task, args.episodes, args.seeds, args.latency_steps,
                       progress=False, sampler=spec, step_hook=tracker.hook, **budget)
        row.update(tracker.summary())
        row["eval_wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{spec:>9}: success {row['success_rate']:.3f}  latency p50 {row['latency_ms_p50']:.2f} ms "
              f"p99 {row['latency_ms_p99']:.2f} ms  ({row['eval_wall_s']} s)", flush=True)
    bc_s = train_or_reuse(args.store, bc_run, "bc", {}, cfg, task=args.task)
    budget["train_wall_s"] = None if bc_s is None else round(bc_s, 1)
    bc = load_policy(bc_run)
    tracker = ModeTracker(task)
    row = evaluate(bc, task, args.episodes, args.seeds, args.latency_steps, progress=False,
                   step_hook=tracker.hook, **{**budget, "backbone": "mlp", "prediction_type": None})
    row.update(tracker.summary())
    rows.append(row)
    print(f"{'bc':>9}: success {row['success_rate']:.3f}", flush=True)
    print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    from fastpolicy.utils.args import parse_dataclass_args

    main(parse_dataclass_args(Args, description=__doc__))
