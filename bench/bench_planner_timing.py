"""Planning latency of the three diffusion planners, measured alone on a quiet CPU (batch 1, 1 thread).

Why a separate script: closed-loop latencies in ``bench_planners.py`` are measured while other jobs share
the 2 cores, and the Trajectory Diffuser's draft (15 single-token passes streaming the transformer's 2.1M
weights) suffers far more from a neighbour evicting the shared cache than a small MLP denoiser does — a
loaded machine understated TD's speed-up by 2×. Run this when nothing else runs; every row records the
load average before and after, so a reader can check.

What it times, interleaved over ``--rounds`` (a round times every method once, in the same order):

* the trained planners of a task (``<work>/<task>/{trajectory-diffuser,diffuser}`` from
  ``bench_planners.py``) and the Decision Diffuser built from the TD's networks, at the reference DDPM-200
  and the strided DDPM-50: one ``predict_chunk`` of a real observation window from the dataset;
* the TD's two stages alone (draft; refinement of the C candidates) and the draft without the KV cache;
* the same state planners rebuilt with the reference-class U-Net denoiser (``unet-small``, random
  weights: latency does not depend on them), where a denoiser call costs ~15× an MLP call.

    OMP_NUM_THREADS=1 python bench/bench_planner_timing.py --tasks maze2d-umaze hopper-medium

Writes ``bench/results/planners_timing.json`` (shared schema, one row per task × method × denoiser) and
prints TD's speed-up over each planner. ``--plot-only`` redraws ``docs/planners_summary.png`` from the
committed ``bench/results/planners_summary.json`` without timing anything.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastpolicy.utils.args import parse_dataclass_args
from fastpolicy.utils.timing import percentile_fields


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["maze2d-umaze"])
    work: str = "runs/bench/planners"
    """where bench_planners.py trained the planners (``<work>/<task>/...``)"""
    rounds: int = 3
    repeats: int = 20
    """timed calls per method per round (after 3 warm-up calls)"""
    unet: bool = True
    """also time the state planners rebuilt with the U-Net denoiser (random weights)"""
    threads: int = 1
    out: str = "bench/results/planners_timing.json"
    plot: str = "docs/planners_summary.png"
    summary: str = "bench/results/planners_summary.json"
    """scores (from bench_planners.py's ``planners_<task>.json``) beside these quiet latencies, one row per
    task × planner, with the planners' targets checked on the Trajectory Diffuser's row"""
    plot_only: bool = False
    """time nothing: redraw ``--plot`` from the ``--summary`` JSON as it is"""
    protocol: bool = False
    """time the fair protocol's runs instead (``bench_planners.py``: training seed 0 of every family under
    ``<work>/<task>/<family>/seed0``, e.g. ``--work runs/bench/planners_protocol``), each method in the
    setting it was chosen with on validation (``planners_protocol_<task>.json`` beside ``--out``; the
    grid's first entry before there is one); the summary then reads that file's test rows"""


def parse_args() -> Args:
    return parse_dataclass_args(Args, __doc__.split("\n")[0])


def _time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def td_run(work: Path, task: str, protocol: bool) -> Path:
    """The Trajectory Diffuser's run: the suite's, or the protocol's seed 0 (autoregressive first)."""
    if not protocol:
        return work / task / "trajectory-diffuser"
    from fastpolicy.bench.planners_protocol import td_family

    runs = [work / task / td_family(mode) / "seed0" for mode in ("autoregressive", "one-pass")]
    return next((r for r in runs if (r / "latest").exists()), runs[0])


def planner_variants(work: Path, task: str, unet: bool, protocol: bool = False,
                     results_dir: Path | None = None) -> dict[tuple[str, str], Any]:
    """(method, denoiser) → policy: the trained planners, the derived Decision Diffusers, U-Net rebuilds."""
    from fastpolicy.bench.planners import with_default_refinement
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.planners import decision_diffuser_from
    from fastpolicy.policies.registry import build_policy

    if protocol:
        variants = protocol_variants(work, task, results_dir or Path("bench/results"))
        td = variants[next(k for k in variants if k[0].startswith("trajectory-diffuser"))]
        planners: list[Any] = []
    else:
        td = with_default_refinement(load_policy(work / task / "trajectory-diffuser").eval())
        planners = []
        diffuser_run = work / task / "diffuser"
        if (diffuser_run / "latest").exists():
            planners.append(load_policy(diffuser_run).eval())
        planners += [decision_diffuser_from(td), decision_diffuser_from(td, sampler="ddpm:50"), td]
        variants = {}
    if unet:
        cfg = {**td.config_dict(), "backbone": "unet-small", "backbone_kwargs": {}}
        td_u = build_policy("trajectory-diffuser", cfg, td.normalizer_state()).eval()
        planners += [decision_diffuser_from(td_u), decision_diffuser_from(td_u, sampler="ddpm:50"), td_u]
    return {**variants, **{(p.method, p.config.backbone): p for p in planners}}


def protocol_variants(work: Path, task: str, results_dir: Path) -> dict[tuple[str, str], Any]:
    """The protocol's methods with training seed 0's weights, each in its validation-chosen setting."""
    from fastpolicy.bench.planners_protocol import apply_setting, protocol_methods
    from fastpolicy.evaluation.results import read_results
    from fastpolicy.policies.checkpoint import load_policy

    scored = results_dir / f"planners_protocol_{task}.json"
    chosen = {r["method"]: r["setting_values"] for r in (read_results(scored) if scored.exists() else [])
              if r.get("split") == "test" and "setting_values" in r}
    loaded: dict[str, Any] = {}
    for family in ("decision-diffuser", "trajectory-diffuser", "trajectory-diffuser-one-pass"):
        if (work / task / family / "seed0" / "latest").exists():
            loaded[family] = load_policy(work / task / family / "seed0").eval()
    if "decision-diffuser" not in loaded:
        raise FileNotFoundError(f"no protocol runs under {work / task} (run bench/bench_planners.py first)")
    levels = loaded["decision-diffuser"].config.num_train_timesteps
    out = {}
    for m in protocol_methods(levels, td_draft_modes=("autoregressive", "one-pass")):
        run = work / task / m.family / "seed0"
        if m.family not in loaded and (run / "latest").exists():
            loaded[m.family] = load_policy(run).eval()
        if m.family in loaded:
            policy = apply_setting(loaded[m.family], chosen.get(m.name, m.settings()[0]))
            out[(m.name, getattr(policy.config, "backbone", "mlp"))] = policy
    return out


def time_task(task: str, args: Args) -> list[dict[str, Any]]:
    from fastpolicy.bench.runner import obs_windows_from_store
    from fastpolicy.evaluation.results import environment_fields, make_row
    from fastpolicy.policies.planners import BasePlanner, TrajectoryDiffuser, plan_cost
    from fastpolicy.utils.checkpoint import read_config

    work = Path(args.work)
    variants = planner_variants(work, task, args.unet, args.protocol, Path(args.out).parent)
    td = variants[next(k for k in variants if k[0].startswith("trajectory-diffuser"))]
    store = Path(read_config(td_run(work, task, args.protocol))["train"]["store"])
    window = obs_windows_from_store(store, td.config.obs_horizon, batch=1)
    obs_n = td.normalize_obs(torch.as_tensor(window)).view(1, td.config.obs_horizon, td.config.obs_dim)
    gen = torch.Generator().manual_seed(0)

    calls: dict[tuple[str, str], Callable[[], Any]] = {
        key: (lambda p=p: p.predict_chunk(window, None, gen)) for key, p in variants.items()}
    for key, p in list(variants.items()):
        if isinstance(p, TrajectoryDiffuser):
            draft = p.draft(obs_n)[0].repeat_interleave(p.config.num_candidates, dim=0)
            calls[(f"{key[0]}/draft", key[1])] = lambda p=p: p.draft(obs_n)
            calls[(f"{key[0]}/draft-no-kv-cache", key[1])] = lambda p=p: p.draft(obs_n, use_cache=False)
            calls[(f"{key[0]}/refine", key[1])] = lambda p=p, d=draft: p.refine(d, gen)

    load_before = os.getloadavg()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for r in range(args.rounds):
            for key, fn in calls.items():
                times[key].extend(_time_calls(fn, args.repeats))
            print(f"[timing] {task} round {r + 1}/{args.rounds}", flush=True)
    load_after = os.getloadavg()

    rows = []
    for (method, backbone), ts in times.items():
        base = method.split("/")[0]
        policy = variants.get((base, backbone))
        cost = plan_cost(policy) if isinstance(policy, BasePlanner) and "/" not in method else {}
        nfe = cost.get("denoiser_calls")
        row = make_row(task, method, **percentile_fields(ts), nfe_per_step_mean=nfe,
                       nfe_per_step_max=nfe, **environment_fields())
        trained = backbone == td.config.backbone
        row.update(backbone=backbone, stage="/" in method,
                   transformer_calls_per_plan=cost.get("transformer_calls"),
                   candidates=getattr(policy.config, "num_candidates", None) if policy is not None else None,
                   timed_calls=len(ts), rounds=args.rounds, latency_batch=1,
                   weights="trained" if trained else "random",
                   loadavg_1min_before=round(load_before[0], 2), loadavg_1min_after=round(load_after[0], 2))
        rows.append(row)
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``td_speedup``: this planner's p50 over the Trajectory Diffuser's with the same denoiser, per task."""
    for r in rows:
        td = next((o for o in rows if o["task"] == r["task"] and o["backbone"] == r["backbone"]
                   and o["method"].startswith("trajectory-diffuser") and not o["stage"]), None)
        if td is not None and not r["stage"]:
            r["td_speedup"] = r["latency_ms_p50"] / td["latency_ms_p50"]


def summarize(timing: list[dict[str, Any]], results_dir: Path,
              protocol: bool = False) -> list[dict[str, Any]]:
    """Rows of the scored planners (trained denoiser) with the quiet latency in place of the loaded one.

    The score fields come from ``planners_<task>.json`` (closed loop, bench_planners.py); ``latency_ms_*``
    from this script. The Trajectory Diffuser's row carries the targets: ≥ 5× faster than the Decision
    Diffuser (DDPM-200) at ≥ its score, and ≥ the Diffuser's score. ``protocol``: the scores are the test
    rows of ``planners_protocol_<task>.json``.
    """
    from fastpolicy.bench.planners import summarize_planner_targets
    from fastpolicy.evaluation.results import read_results

    out = []
    for task in sorted({r["task"] for r in timing}):
        name = f"planners_protocol_{task}.json" if protocol else f"planners_{task}.json"
        scored_file = results_dir / name
        if not scored_file.exists():
            continue
        scored = {r["method"]: r for r in read_results(scored_file)
                  if not r.get("ablation") and r.get("split", "test") == "test"}
        quiet = {r["method"]: r for r in timing if r["task"] == task and not r["stage"]
                 and r["weights"] == "trained"}
        rows = []
        for method, row in scored.items():
            if method not in quiet:
                continue
            q = quiet[method]
            rows.append({**row, "latency_ms_p50": q["latency_ms_p50"], "latency_ms_p99": q["latency_ms_p99"],
                         "step_latency_ms_p50": q["latency_ms_p50"],
                         "closed_loop_latency_ms_p50": row.get("latency_ms_p50"),
                         "latency_source": "bench/bench_planner_timing.py (quiet CPU, batch 1)",
                         "loadavg_1min_before": q["loadavg_1min_before"],
                         "td_speedup": q.get("td_speedup")})
        targets = summarize_planner_targets(rows)
        for r in rows:
            if r["method"].startswith("trajectory-"):
                r.update(targets)
        out.extend(rows)
    return out


def plot_summary(rows: list[dict[str, Any]], png: Path) -> Path:
    """Score and quiet planning latency per task and planner, side by side (bars; latency on a log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastpolicy.bench.report import save_figure, score_label

    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    width = 0.8 / max(1, len(methods))
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(12, 4.5))
    for j, method in enumerate(methods):
        xs, score, err, lat = [], [], [], []
        for i, task in enumerate(tasks):
            r = next((o for o in rows if o["task"] == task and o["method"] == method), None)
            if r is None:
                continue
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            score.append(r["score_mean"])
            err.append(r["score_std"] or 0.0)
            lat.append(r["latency_ms_p50"])
        ax_s.bar(xs, score, width, yerr=err, capsize=2, label=method)
        ax_t.bar(xs, lat, width, label=method)
    for ax, title, ylabel in (
            (ax_s, "score per planner (± std over episodes)", score_label(rows)),
            (ax_t, "planning latency (batch 1, quiet CPU, 1 thread)", "planning latency p50 (ms, log)")):
        ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax_t.set_yscale("log")
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, png)


def main(args: Args) -> None:
    from fastpolicy.evaluation.results import read_results, update_results

    if args.plot_only:
        print(f"wrote {plot_summary(read_results(args.summary), Path(args.plot))}")
        return
    if args.protocol:   # the protocol's timings and summary go to files of their own unless named
        defaults = Args()
        renamed = {k: getattr(defaults, k).replace("planners_", "planners_protocol_")
                   for k in ("out", "summary", "plot") if getattr(args, k) == getattr(defaults, k)}
        args = dataclasses.replace(args, **renamed)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for task in args.tasks:
        rows.extend(time_task(task, args))
    path = update_results(args.out, rows, key=lambda r: (r["task"], r["method"], r["backbone"]))
    print(f"wrote {path}")
    summary = summarize(rows, Path(args.out).parent, args.protocol)
    if summary:
        path = update_results(args.summary, summary, key=lambda r: (r["task"], r["method"]))
        print(f"wrote {path} and {plot_summary(read_results(path), Path(args.plot))}")
        for r in summary:
            prefixes = ("target_", "td_speedup_vs", "td_score_minus")
            checks = {k: v for k, v in r.items() if k.startswith(prefixes)}
            print(r["task"], r["method"], f"score {r['score_mean']:.1f}", f"p50 {r['latency_ms_p50']:.1f} ms",
                  checks)
    print("| task | method | denoiser | p50 ms | p99 ms | TD speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        speed = r.get("td_speedup")
        print(f"| {r['task']} | {r['method']} | {r['backbone']} | {r['latency_ms_p50']:.2f} | "
              f"{r['latency_ms_p99']:.2f} | {'' if speed is None else f'{speed:.2f}×'} |")


if __name__ == "__main__":
    main(parse_args())
