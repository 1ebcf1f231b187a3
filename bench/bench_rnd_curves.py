"""Learning curves of PPO vs RND-PPO vs PPO + RND bonus (rnd-simple) on a sparse-reward AGV layout.

Workflow, top to bottom:

1. for each algo and seed, run ``fastpolicy.rl.explore.explore`` on ``agv-sparse-detour`` for a fixed
   env-step budget (64 robots in the numba-batched env, PPO defaults of ``fastpolicy explore``);
2. bin every run's training episodes by env steps: success rate = successful / ended episodes in the
   bin (stochastic policy, as it trains);
3. evaluate each run's exported deterministic actor on fresh episodes (one per robot);
4. plot mean +- std over seeds to ``docs/rnd_curves.png`` and write one row per algo (score_mean =
   success rate over the last 10% of the budget, mean over seeds) with the curve points to
   ``bench/results/rnd_curves.json``.

The budget is sized for a shared 2-core CPU (~30 min for 3 algos x 3 seeds) and recorded in the rows.

    nice -n 10 env OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_rnd_curves.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    task: str = "agv-sparse-detour"
    """sparse-reward task card"""
    algos: list[str] = field(default_factory=lambda: ["ppo", "rnd-ppo", "rnd-simple"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 800_000
    """env steps per run"""
    num_envs: int = 64
    bin_steps: int = 40_000
    """curve resolution: success rate of the episodes ending in each bin"""
    final_fraction: float = 0.1
    """score_mean = success rate over this last fraction of the budget"""
    eval_robots: int = 256
    """fresh episodes for the deterministic evaluation of each final actor"""
    runs: Path = REPO / "runs" / "bench_rnd_curves"
    out: Path = REPO / "bench" / "results" / "rnd_curves.json"
    plot: Path = REPO / "docs" / "rnd_curves.png"
    reuse: bool = False
    """reuse finished runs under ``runs`` (their curve.json) instead of retraining"""


def parse_args() -> Args:
    d = Args()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default=d.task)
    p.add_argument("--algos", nargs="+", default=d.algos)
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--bin-steps", type=int, default=d.bin_steps)
    p.add_argument("--final-fraction", type=float, default=d.final_fraction)
    p.add_argument("--eval-robots", type=int, default=d.eval_robots)
    p.add_argument("--runs", type=Path, default=d.runs)
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--plot", type=Path, default=d.plot)
    p.add_argument("--reuse", action="store_true")
    return Args(**vars(p.parse_args()))


def binned_success(points: list[dict], steps: int, bin_steps: int) -> np.ndarray:
    """Success rate per env-step bin (NaN where no episode ended), from per-rollout curve points."""
    n_bins = int(np.ceil(steps / bin_steps))
    ended, won = np.zeros(n_bins), np.zeros(n_bins)
    for p in points:
        b = min(int((p["steps"] - 1) // bin_steps), n_bins - 1)
        ended[b] += p["episodes"]
        won[b] += p["success_rate"] * p["episodes"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ended > 0, won / np.maximum(ended, 1), np.nan)


def final_success(points: list[dict], steps: int, fraction: float) -> float:
    tail = [p for p in points if p["steps"] > steps * (1 - fraction)]
    ended = sum(p["episodes"] for p in tail)
    return float(sum(p["success_rate"] * p["episodes"] for p in tail) / ended) if ended else float("nan")


def evaluate_actor(actor_dir: Path, task: str, robots: int, seed: int) -> dict[str, float]:
    """One fresh episode per robot with the deterministic exported actor (batched env, lockstep)."""
    import gymnasium as gym
    import torch

    from fastpolicy.envs.registry import get_task
    from fastpolicy.rl.explore import load_actor

    spec = get_task(task)
    actor, cfg = load_actor(actor_dir)
    venv = gym.make_vec(spec.env_id, num_envs=robots, vectorization_mode="vector_entry_point",
                        max_episode_steps=spec.max_episode_steps, **spec.env_kwargs)
    obs, _ = venv.reset(seed=10_000 + seed)
    done = np.zeros(robots, bool)
    success = np.zeros(robots, bool)
    collision = np.zeros(robots, bool)
    low, high = np.asarray(cfg["action_low"]), np.asarray(cfg["action_high"])
    while not done.all():
        with torch.no_grad():
            action = np.clip(actor(torch.as_tensor(obs)).numpy(), low, high)
        obs, _, term, trunc, info = venv.step(action)
        alive = ~done
        success |= alive & info["success"]
        collision |= alive & info["collision"]
        done |= term | trunc
    venv.close()
    return {"eval_success": float(success.mean()), "eval_collision": float(collision.mean())}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba
    import torch

    from fastpolicy.evaluation.results import make_row, write_results
    from fastpolicy.rl.explore import ExploreConfig, explore

    # One thread for torch and numba alike (numba's OpenMP kernels would otherwise raise torch's count).
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    t_all = time.perf_counter()
    runs: dict[str, list[dict]] = {a: [] for a in args.algos}
    for seed in args.seeds:            # seeds outermost: a cut-short benchmark still has every algo
        for algo in args.algos:
            run_dir = args.runs / f"{algo}_s{seed}"
            cfg = ExploreConfig(task=args.task, algo=algo, steps=args.steps, num_envs=args.num_envs,
                                seed=seed, checkpoint_every=args.steps, keep_checkpoints=1, tensorboard=False,
                                progress=False)
            if args.reuse and (run_dir / "actor" / "config.json").exists():
                points = json.loads((run_dir / "curve.json").read_text())
                wall = json.loads((run_dir / "bench_wall.json").read_text())["wall_s"]
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
                result = explore(run_dir, cfg)
                points, wall = result.curve, result.wall_s
                (run_dir / "bench_wall.json").write_text(json.dumps({"wall_s": wall}))
            ev = evaluate_actor(run_dir / "actor", args.task, args.eval_robots, seed)
            runs[algo].append({"seed": seed, "points": points, "wall_s": wall, **ev,
                               "final_success": final_success(points, args.steps, args.final_fraction)})
            print(f"{algo:>10} seed {seed}: final training success {runs[algo][-1]['final_success']:.3f}, "
                  f"deterministic eval {ev['eval_success']:.3f} ({wall:.0f} s)", flush=True)

    centers = (np.arange(int(np.ceil(args.steps / args.bin_steps))) + 0.5) * args.bin_steps
    budget = {"env_steps_per_run": args.steps, "num_envs": args.num_envs, "n_steps": ExploreConfig.n_steps,
              "batch_size": ExploreConfig.batch_size, "n_epochs": ExploreConfig.n_epochs,
              "obs_warmup_steps_rnd": ExploreConfig.obs_warmup_steps * args.num_envs,
              "total_wall_s": None, "machine": "shared 2-core CPU, torch 1 thread, numba env, nice 10",
              "success_definition": "training episodes (stochastic policy) ending in the last "
                                    f"{args.final_fraction:.0%} of the budget; eval_success: deterministic "
                                    f"actor, {args.eval_robots} fresh episodes per seed"}
    rows, curves = [], {}
    for algo, rs in runs.items():
        mat = np.stack([binned_success(r["points"], args.steps, args.bin_steps) for r in rs])
        mean, std = np.nanmean(mat, axis=0), np.nanstd(mat, axis=0)
        curves[algo] = (mean, std)
        finals = np.array([r["final_success"] for r in rs])
        evals = np.array([r["eval_success"] for r in rs])
        first = [next((c for c, v in zip(centers, row) if v >= 0.5), None) for row in mat]
        rows.append(make_row(
            args.task, algo, steps=args.steps, score_mean=float(finals.mean()), score_std=float(finals.std()),
            episodes=int(sum(p["episodes"] for r in rs for p in r["points"])), seeds=list(args.seeds),
            score_kind="success", final_success_per_seed=finals.tolist(),
            eval_success_mean=float(evals.mean()), eval_success_per_seed=evals.tolist(),
            eval_collision_per_seed=[r["eval_collision"] for r in rs],
            steps_to_50pct_success_per_seed=[None if s is None else int(s) for s in first],
            wall_s_per_seed=[round(r["wall_s"], 1) for r in rs],
            curve_steps=centers.astype(int).tolist(),
            curve_success_mean=[None if np.isnan(v) else round(float(v), 4) for v in mean],
            curve_success_std=[None if np.isnan(v) else round(float(v), 4) for v in std],
            budget=budget))
    total = round(time.perf_counter() - t_all, 1)
    for row in rows:
        row["budget"] = {**row["budget"], "total_wall_s": total}
    print(f"wrote {write_results(args.out, rows)}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for algo, (mean, std) in curves.items():
        line, = ax.plot(centers, mean, label=f"{algo} (n={len(args.seeds)})")
        ax.fill_between(centers, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.2,
                        color=line.get_color())
    ax.set_xlabel("env steps")
    ax.set_ylabel("training success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{args.task}: mean ± std over seeds {args.seeds}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot} ({total} s in all)")


if __name__ == "__main__":
    main()
