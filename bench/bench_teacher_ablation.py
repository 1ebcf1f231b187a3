"""Why the MLP-denoiser teacher trails BC on walker2d / halfcheetah: one knob at a time, same budget.

The d4rl suite's teacher (MLP denoiser, prediction horizon 16) scores near BC on hopper (3-dim actions)
but far below it on walker2d and halfcheetah (6-dim actions: a 96-dim chunk to denoise). This script
trains the teacher with one change each — a shorter prediction horizon, a wider/deeper MLP — for the same
steps, batch and learning rate, evaluates each with DDIM-10 and DDPM-100 (replanning every 2 actions,
the task card's), and writes shared-schema rows to ``bench/results/teacher_ablation_<task>.json``.
Runs are reused when complete (``runs/bench/teacher_ablation/<task>/<variant>``).

    nice -n 3 .venv/bin/python bench/bench_teacher_ablation.py --task walker2d-medium --steps 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "pred16": {},
    "pred4": {"pred_horizon": 4},
    "pred16-wide": {"backbone_kwargs": {"hidden": 512, "depth": 4}},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="walker2d-medium")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--samplers", nargs="+", default=["ddim:10", "ddpm:100"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench/teacher_ablation")
    args = p.parse_args(argv)

    import torch

    from fastpolicy.bench.schema import update_results
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate
    from fastpolicy.train.checkpoint import load_policy, read_config
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    store = Path("datasets/store") / (task.dataset or task.name)
    out = Path("bench/results") / f"teacher_ablation_{args.task}.json"
    rows: list[dict[str, Any]] = []
    for name in args.variants:
        run = Path(args.work) / args.task / name
        t0 = time.perf_counter()
        if not ((run / "latest").exists() and read_config(run)["step"] >= args.steps):
            cfg = TrainConfig(steps=args.steps, batch_size=256, lr=1e-3, warmup_steps=500,
                              checkpoint_every=args.steps // 2, progress=False, tensorboard=False)
            train_offline(store, run, "diffusion", {"backbone": "mlp", **VARIANTS[name]}, cfg, resume=True,
                          task=args.task)
        train_seconds = time.perf_counter() - t0
        policy = load_policy(run)
        for spec in args.samplers:
            policy.set_sampler(spec)
            row = evaluate(policy, task, args.episodes, args.seeds, latency_steps=8, progress=False,
                           method=f"{name} {spec}", variant=name, sampler=spec, train_steps=args.steps,
                           options=json.dumps(VARIANTS[name]), train_seconds_this_run=round(train_seconds, 1))
            row["steps"] = args.steps
            rows.append(row)
            score = f"{row['score_mean']:6.1f} ± {row['score_std']:5.1f}"
            print(f"{args.task} {name:12s} {spec:9s} score {score}", flush=True)
        update_results(out, rows, key=lambda r: r.get("variant"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
