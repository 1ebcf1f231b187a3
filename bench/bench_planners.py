"""Diffusion planners side by side: Diffuser, Decision Diffuser and Trajectory Diffuser on one task.

Top to bottom (CleanRL style): build or reuse the task's dataset; train the Trajectory Diffuser (state
denoiser + inverse dynamics + critic + causal transformer, jointly, one Trainer run) and the Diffuser
(joint state-action denoiser + critic); derive the Decision Diffuser from the Trajectory Diffuser's
networks (same denoiser, inverse dynamics and critic, so the two differ only in how they plan); score
every planner closed loop and time it at batch 1, interleaved (``fastpolicy.bench.runner``); measure the
KV-cache gain of the draft; ablate the refinement (k steps, starting noise level); time both state
planners with the U-Net backbone as well (random weights: latency does not depend on them); write
``bench/results/planners_<task>.json`` (shared schema) and ``docs/planners_<task>.png``.

Any task card works (``--task hopper-medium`` once its dataset recipe exists); runs are reused when
complete, so an interrupted benchmark resumes.

    nice -n 5 python bench/bench_planners.py --task maze2d-umaze
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastpolicy.utils.args import parse_dataclass_args


@dataclass
class Args:
    task: str = "maze2d-umaze"
    """task card name"""
    store: str | None = None
    """dataset store (default: runs/bench/quick/<task>/data if present, else built under --work)"""
    dataset_size: int = 100_000
    work: str = "runs/bench/planners"
    td_steps: int = 1500
    """Trajectory Diffuser optimizer steps (denoiser, IDM, critic and transformer together)"""
    diffuser_steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-4
    horizon: int = 16
    action_horizon: int = 1
    candidates: int = 8
    """Trajectory Diffuser candidates per plan (the critic picks one)"""
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    latency_steps: int = 32
    ablation_episodes: int = 5
    ablate: bool = True
    unet_timing: bool = True
    threads: int = 1
    results_dir: str = "bench/results"
    plot_dir: str = "docs"


def parse_args() -> Args:
    return parse_dataclass_args(Args, __doc__.split("\n")[0])


def train_config(steps: int, args: Args):
    from fastpolicy.train.trainer import TrainConfig

    return TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr,
                       warmup_steps=min(200, steps // 10), checkpoint_every=max(100, steps // 4),
                       progress=True, tensorboard=False)


def ensure_planner(store: Path, run: Path, policy_type: str, options: dict[str, Any], steps: int, args: Args,
                   task: str):
    """Train ``policy_type`` into ``run`` (resuming), or load it when the run is complete."""
    from fastpolicy.policies.planners import train_planner
    from fastpolicy.train.checkpoint import load_policy, read_config

    cost_file = run / "cost.json"
    if (run / "latest").exists() and read_config(run)["step"] >= steps and cost_file.exists():
        return load_policy(run), json.loads(cost_file.read_text())["seconds"]
    t0 = time.perf_counter()
    train_planner(store, run, policy_type, options, train_config(steps, args), resume=True, task=task)
    seconds = time.perf_counter() - t0
    cost_file.write_text(json.dumps({"seconds": seconds, "steps": steps}))
    return load_policy(run), seconds


def kv_cache_gain(td, obs_n: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Draft time with and without the KV cache (median of ``repeats``) and the largest difference."""
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        drafts = {c: td.draft(obs_n, use_cache=c)[0] for c in (True, False)}
        for _ in range(repeats):
            for cached in (True, False):
                t0 = time.perf_counter()
                td.draft(obs_n, use_cache=cached)
                times[cached].append((time.perf_counter() - t0) * 1e3)
    cached, full = float(np.median(times[True])), float(np.median(times[False]))
    return {"draft_ms_kv_cache": cached, "draft_ms_recompute": full, "kv_cache_speedup": full / cached,
            "kv_cache_max_abs_diff": float((drafts[True] - drafts[False]).abs().max()),
            "draft_batch": int(obs_n.shape[0])}


def plan_latency(policy, obs_window: np.ndarray, repeats: int = 10) -> dict[str, float]:
    """p50/p99 of one batch-1 planning call (no environment)."""
    gen = torch.Generator().manual_seed(0)
    policy.predict_chunk(obs_window, None, gen)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_chunk(obs_window, None, gen)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"plan_ms_p50": float(np.percentile(times, 50)), "plan_ms_p99": float(np.percentile(times, 99))}


def unet_timing(td, dd, obs_window: np.ndarray) -> list[dict[str, Any]]:
    """Both state planners rebuilt with the reference-class U-Net denoiser (random weights), timed."""
    from fastpolicy.policies.planners import decision_diffuser_from
    from fastpolicy.policies.registry import build_policy

    cfg = {**td.config_dict(), "backbone": "unet-small", "backbone_kwargs": {}}
    td_u = build_policy("trajectory-diffuser", cfg, td.normalizer_state()).eval()
    dd_u = decision_diffuser_from(td_u, sampler=dd.config.sampler)
    out = []
    for name, pol in (("trajectory-diffuser-unet", td_u), ("decision-diffuser-unet", dd_u)):
        row = {"method": name, **plan_latency(pol, obs_window, repeats=5), **pol.last_plan_stats}
        out.append(row)
    return out


def main(args: Args) -> None:
    from fastpolicy.bench.runner import (
        Method,
        SuiteConfig,
        ensure_dataset,
        evaluate_methods,
        obs_windows_from_store,
    )
    from fastpolicy.bench.schema import write_results
    from fastpolicy.policies.planners import decision_diffuser_from, plan_cost, save_planner

    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.task
    store = Path(args.store) if args.store else Path("runs/bench/quick") / args.task / "data"
    if not (store / "zarr.json").exists():
        store = ensure_dataset(args.task, work / "data", args.dataset_size)
    common = {"pred_horizon": args.horizon, "action_horizon": args.action_horizon}
    print(f"[planners] Trajectory Diffuser ({args.td_steps} steps)", flush=True)
    td_options = {**common, "num_candidates": args.candidates}
    td, td_seconds = ensure_planner(store, work / "trajectory-diffuser", "trajectory-diffuser", td_options,
                                    args.td_steps, args, args.task)
    print(f"[planners] Diffuser ({args.diffuser_steps} steps)", flush=True)
    diffuser, diffuser_seconds = ensure_planner(store, work / "diffuser", "diffuser", common,
                                                args.diffuser_steps, args, args.task)
    dd = decision_diffuser_from(td)
    save_planner(dd, work / "decision-diffuser", step=td.checkpoint_step)  # servable like any checkpoint

    windows = obs_windows_from_store(store, td.obs_horizon, batch=8)
    suite = SuiteConfig("planners", episodes=args.episodes, seeds=list(args.seeds),
                        latency_steps=args.latency_steps, latency_rounds=1, throughput_calls=1,
                        progress=False)

    def extra(policy, seconds: float) -> dict[str, Any]:
        cost = plan_cost(policy)
        return {"train_seconds": seconds, "denoiser_calls_per_plan": cost["denoiser_calls"],
                "transformer_calls_per_plan": cost["transformer_calls"],
                "candidates": policy.config.num_candidates, "horizon": policy.config.pred_horizon,
                "backbone": policy.config.backbone}

    methods = [Method(diffuser.method, diffuser, extra=extra(diffuser, diffuser_seconds)),
               Method(dd.method, dd, extra={**extra(dd, td_seconds), "shares_networks_with": td.method}),
               Method(td.method, td, extra={**extra(td, td_seconds),
                                            "refine_start": td.config.refine_start})]
    print(f"[planners] evaluating {[m.name for m in methods]} on {args.task}", flush=True)
    rows = evaluate_methods(methods, args.task, suite, windows, progress=True)
    first = td.normalize_obs(torch.as_tensor(windows[:1]))
    kv = kv_cache_gain(td, first.repeat(td.config.num_candidates, 1, 1))
    rows[-1].update(kv)
    print(f"[planners] KV cache: {kv}", flush=True)
    for r in rows:
        r["suite"] = "planners"
    path = Path(args.results_dir) / f"planners_{args.task}.json"
    write_results(path, rows)
    print(f"wrote {path}", flush=True)

    if args.unet_timing:
        timing = unet_timing(td, dd, windows[:1])
        print(f"[planners] U-Net timing (random weights): {timing}", flush=True)
        for r in rows:
            if r["method"] == td.method:
                r["unet_timing"] = timing
        write_results(path, rows)

    if args.ablate:
        base_k, base_start = td.config.refine_steps, td.config.refine_start
        grid = [(1, base_start), (5, base_start), (0, base_start), (base_k, 0.1), (base_k, 0.6)]
        ab_methods = []
        for k, start in grid:
            def configure(k=k, start=start) -> None:
                td.set_refinement(k, start)
            name = f"trajectory-diffuser-k{k}-start{start:g}"
            ab_methods.append(Method(name, td, configure,
                                     extra={**extra(td, td_seconds), "refine_steps": k, "refine_start": start,
                                            "denoiser_calls_per_plan": k, "ablation": True}))
        ab_suite = dataclasses.replace(suite, episodes=args.ablation_episodes)
        ab_rows = evaluate_methods(ab_methods, args.task, ab_suite, windows, progress=True)
        td.set_refinement(base_k, base_start)
        for r in ab_rows:
            r["suite"] = "planners-ablation"
        rows.extend(ab_rows)
        write_results(path, rows)
    plot(rows, Path(args.plot_dir) / f"planners_{args.task}.png", args.task)
    print_table(rows)


def plot(rows: list[dict[str, Any]], png: Path, task: str) -> Path:
    """Score vs planning latency (p50, batch 1) per planner, ablation points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        lat = r.get("step_latency_ms_p50")
        if lat is None or r.get("score_mean") is None:
            continue
        hollow = r.get("ablation", False)
        ax.errorbar(lat, r["score_mean"], yerr=r.get("score_std") or 0, fmt="o", capsize=3,
                    mfc="none" if hollow else None, alpha=0.6 if hollow else 1.0)
        ax.annotate(r["method"].replace("trajectory-diffuser", "TD"), (lat, r["score_mean"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("planning latency per control step, p50 (ms, batch 1, CPU)")
    ax.set_ylabel("normalised score")
    ax.set_title(f"{task}: diffusion planners (hollow: TD refinement ablation)")
    ax.grid(alpha=0.3)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def print_table(rows: list[dict[str, Any]]) -> None:
    """The markdown table of the report (plan latency = control steps that plan, batch 1)."""
    print("| method | score | ± std | success | denoiser calls | transformer calls | plan p50 ms "
          "| plan p99 ms |")
    print("|" + "---|" * 8)
    nan = float("nan")
    for r in rows:
        print(f"| {r['method']} | {r['score_mean']:.1f} | {r['score_std']:.1f} | "
              f"{r.get('success_rate') or 0:.2f} | {r.get('denoiser_calls_per_plan')} | "
              f"{r.get('transformer_calls_per_plan')} | {r.get('step_latency_ms_p50') or nan:.1f} | "
              f"{r.get('step_latency_ms_max_p99') or nan:.1f} |")


if __name__ == "__main__":
    main(parse_args())
