"""Diffusion planners side by side: Diffuser, Decision Diffuser and Trajectory Diffuser on one task.

Top to bottom (CleanRL style): build or reuse the task's dataset; train / reuse the planners exactly as
the ``planners`` suite of ``fastpolicy bench`` does (``fastpolicy.bench.planners``: Trajectory Diffuser,
Diffuser, and the Decision Diffuser derived from the Trajectory Diffuser's networks at DDPM-200 — the
reference setting — and DDPM-50); score every planner closed loop and time it at batch 1, interleaved
(``fastpolicy.bench.runner``). The extras only this script runs: the KV-cache gain of the draft; the
refinement ablation (k steps, starting noise level); both state planners timed with the U-Net backbone
(random weights: latency does not depend on them). Writes ``bench/results/planners_<task>.json``
(shared schema) and ``docs/planners_<task>.png``.

Any task card works (``--task hopper-medium`` once its dataset recipe exists); runs are reused when
complete, so an interrupted benchmark resumes.

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_planners.py --task maze2d-umaze
    python bench/bench_planners.py --task maze2d-umaze --plot-only   # redraw the PNG from the JSON
"""

from __future__ import annotations

import dataclasses
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
    """dataset store (default: <work>/<task>/data, built there when missing with the planners suite's recipe
    for the task, e.g. the goal-holding maze2d-umaze-dwell)"""
    dataset_size: int = 100_000
    work: str = "runs/bench/planners"
    td_steps: int = 8000
    """Trajectory Diffuser optimizer steps (denoiser, IDM, critic and transformer together)"""
    diffuser_steps: int = 8000
    batch_size: int = 128
    lr: float = 1e-3
    horizon: int = 16
    action_horizon: int = 1
    candidates: int = 8
    """Trajectory Diffuser candidates per plan (the critic picks one)"""
    episodes: int = 10
    seeds: list[int] = field(default_factory=lambda: [0])
    latency_steps: int = 32
    latency_rounds: int = 2
    ablation_episodes: int = 5
    ablate: bool = True
    unet_timing: bool = True
    threads: int = 1
    train_only: str | None = None
    """train (or resume) just this planner, "diffuser" or "trajectory-diffuser", and exit: run two of these
    side by side to use both cores, then the full benchmark reuses the finished runs"""
    results_dir: str = "bench/results"
    plot_dir: str = "docs"
    plot_only: bool = False
    """train and evaluate nothing: redraw ``<plot-dir>/planners_<task>.png`` from
    ``<results-dir>/planners_<task>.json`` as it is"""


def parse_args() -> Args:
    return parse_dataclass_args(Args, __doc__.split("\n")[0])


def fill_plan_latency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Planners replan every control step (Ta = 1), so every step is a planning step — also at k = 0, where
    only the transformer runs and the runner (which spots planning steps by denoiser calls) sees none."""
    for r in rows:
        if r.get("step_latency_ms_p50") is None and r.get("action_horizon") == 1:
            r["step_latency_ms_p50"], r["step_latency_ms_max_p99"] = r["latency_ms_p50"], r["latency_ms_p99"]
    return rows


def kv_cache_gain(td, obs_n: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Draft time (batch 1, as a plan runs it) with and without the KV cache, and with the cache but one
    draft per candidate (what the planner did before it shared the deterministic draft); medians of
    ``repeats``, interleaved, and the largest cached-vs-recomputed difference."""
    c = td.config.num_candidates
    variants = {"kv_cache": (obs_n, True), "recompute": (obs_n, False),
                "per_candidate": (obs_n.repeat_interleave(c, dim=0), True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        drafts = {c: td.draft(obs_n, use_cache=c)[0] for c in (True, False)}
        for _ in range(repeats):
            for name, (x, cached) in variants.items():
                t0 = time.perf_counter()
                td.draft(x, use_cache=cached)
                times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {k: float(np.median(v)) for k, v in times.items()}
    return {"draft_ms_kv_cache": ms["kv_cache"], "draft_ms_recompute": ms["recompute"],
            "kv_cache_speedup": ms["recompute"] / ms["kv_cache"],
            "draft_ms_per_candidate": ms["per_candidate"],
            "shared_draft_speedup": ms["per_candidate"] / ms["kv_cache"],
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
    from fastpolicy.bench.planners import (
        PLANNER_METHODS,
        build_planner_methods,
        planner_extra,
        planner_train_config,
        summarize_planner_targets,
    )
    from fastpolicy.bench.runner import (
        SUITES,
        Method,
        SuiteConfig,
        ensure_dataset,
        evaluate_methods,
        obs_windows_from_store,
    )
    from fastpolicy.bench.schema import write_results

    if args.plot_only:
        from fastpolicy.bench.schema import read_results

        rows = read_results(Path(args.results_dir) / f"planners_{args.task}.json")
        print(f"wrote {plot(rows, Path(args.plot_dir) / f'planners_{args.task}.png', args.task)}")
        return
    torch.set_num_threads(args.threads)
    work = Path(args.work) / args.task
    store = Path(args.store) if args.store else work / "data"
    if not (store / "zarr.json").exists():
        recipe = SUITES["planners"].dataset_recipes.get(args.task)
        store = ensure_dataset(args.task, store, args.dataset_size, recipe=recipe)
    options = {"pred_horizon": args.horizon, "action_horizon": args.action_horizon}

    def make_config(steps: int):
        return planner_train_config(steps, args.batch_size, args.lr)

    if args.train_only is not None:
        only = {kind: [m for m in PLANNER_METHODS if m.startswith(f"{kind}-")]
                for kind in ("diffuser", "trajectory-diffuser")}
        if args.train_only not in only:
            raise SystemExit(f"--train-only must be one of {sorted(only)}, got {args.train_only!r}")
        build_planner_methods(store, work, args.task, args.td_steps, args.diffuser_steps, make_config,
                              options, args.candidates, methods=only[args.train_only])
        return

    methods, planners = build_planner_methods(store, work, args.task, args.td_steps, args.diffuser_steps,
                                              make_config, options, args.candidates)
    td = planners["trajectory-diffuser"]
    td_seconds = next(m.extra["train_seconds"] for m in methods if m.policy is td)
    dd = planners["decision-diffuser-ddpm200"] if "decision-diffuser-ddpm200" in planners else None

    windows = obs_windows_from_store(store, td.obs_horizon, batch=8)
    suite = SuiteConfig("planners", episodes=args.episodes, seeds=list(args.seeds),
                        latency_steps=args.latency_steps, latency_rounds=args.latency_rounds,
                        throughput_calls=1, progress=False)
    print(f"[planners] evaluating {[m.name for m in methods]} on {args.task}", flush=True)
    rows = fill_plan_latency(evaluate_methods(methods, args.task, suite, windows, progress=True))
    first = td.normalize_obs(torch.as_tensor(windows[:1]))
    kv = kv_cache_gain(td, first)
    td_row = next(r for r in rows if r["method"] == td.method)
    td_row.update(kv)
    print(f"[planners] KV cache: {kv}", flush=True)
    for r in rows:
        r["suite"] = "planners"
        r["dataset"] = store.name
    path = Path(args.results_dir) / f"planners_{args.task}.json"
    write_results(path, rows)
    print(f"wrote {path}", flush=True)

    if args.unet_timing and dd is not None:
        timing = unet_timing(td, dd, windows[:1])
        print(f"[planners] U-Net timing (random weights): {timing}", flush=True)
        td_row["unet_timing"] = timing
        write_results(path, rows)

    if args.ablate:
        base_start = td.config.refine_start
        # k = 0 is the draft alone; (5, 0.05) is the reference's setting (its draft enters a 100-level chain
        # at level 5 and takes 5 reverse steps); the others go deeper in steps or in starting level
        grid = [(0, base_start), (1, 0.05), (2, 0.05), (3, 0.1), (3, 0.3), (5, 0.05)]
        ab_methods = []
        for k, start in grid:
            view = td.with_refinement(k, start)           # a view: td itself keeps its refinement
            name = f"trajectory-diffuser-k{k}-start{start:g}"
            ab_methods.append(Method(name, view, extra={**planner_extra(view, td_seconds), "ablation": True}))
        ab_suite = dataclasses.replace(suite, episodes=args.ablation_episodes)
        ab_rows = fill_plan_latency(evaluate_methods(ab_methods, args.task, ab_suite, windows, progress=True))
        for r in ab_rows:
            r["suite"] = "planners-ablation"
            r["dataset"] = store.name
        rows.extend(ab_rows)
        write_results(path, rows)
    plot(rows, Path(args.plot_dir) / f"planners_{args.task}.png", args.task)
    print_table(rows)
    targets = summarize_planner_targets(rows)
    print("targets:", {k: (round(v, 2) if isinstance(v, float) else v) for k, v in targets.items()})


def plot(rows: list[dict[str, Any]], png: Path, task: str) -> Path:
    """Score vs planning latency (p50, batch 1) per planner, ablation points hollow.

    Planners are told apart by colour and marker in a legend beside the axes, as in
    :func:`fastpolicy.bench.report.pareto_plot` (labels next to the points overlapped where the
    ablation's points cluster).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastpolicy.bench.report import save_figure, score_label

    fig, ax = plt.subplots(figsize=(9, 4.8))
    colors = plt.get_cmap("tab20").colors
    markers = "os^Dv<>pPhX*"
    points = [r for r in rows if r.get("step_latency_ms_p50") is not None and r.get("score_mean") is not None]
    for i, r in enumerate(points):
        hollow = r.get("ablation", False)
        color = colors[i % len(colors)]
        ax.errorbar(r["step_latency_ms_p50"], r["score_mean"], yerr=r.get("score_std") or 0,
                    fmt=markers[i % len(markers)], color=color, capsize=3, ms=7,
                    mfc="none" if hollow else color, alpha=0.7 if hollow else 1.0,
                    label=r["method"].replace("trajectory-diffuser", "TD"))
    ax.set_xscale("log")
    ax.set_xlabel("planning latency per control step, p50 (ms, batch 1, CPU, log scale)")
    ax.set_ylabel(score_label(points))
    ax.set_title(f"{task}: diffusion planners (hollow: TD refinement ablation)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, png)


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
