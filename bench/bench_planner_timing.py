"""Where the plan time of the fair protocol's planners goes: per method, TD stage and denoiser.

Why a separate script: ``bench_planners.py`` writes the scores and each chosen method's quiet plan latency
(``planners_protocol_<task>.json``), but not what a plan spends its time on. This script adds:

* the Trajectory Diffuser's stages alone (draft; refinement of the C candidates) and the draft without
  the KV cache, for each TD variant (autoregressive, one-pass);
* the state planners (Decision Diffuser, Trajectory Diffuser) rebuilt with the reference-class U-Net
  denoiser (``unet-small``, random weights: latency does not depend on them), where a denoiser call costs
  ~15× an MLP call.

It loads training seed 0 of every family (``<work>/<task>/<family>/seed0``), each method in the setting
chosen on validation (``planners_protocol_<task>.json`` beside ``--out``; the grid's first entry before
there is one), and times batch-1 ``predict_chunk`` calls on a real observation window, interleaved over
``--rounds``, one thread. Run it when nothing else runs: every row records the load average before and
after.

    OMP_NUM_THREADS=1 python bench/bench_planner_timing.py --tasks maze2d-umaze hopper-medium

Writes ``bench/results/planners_protocol_timing.json`` (shared schema, one row per task × method or stage
× denoiser; ``speedup_vs_dd_full``: DD at its full DDPM chain over the row, same denoiser).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastpolicy.utils.args import parse_dataclass_args
from fastpolicy.utils.timing import percentile_fields

STATE_FAMILIES: tuple[str, ...] = ("decision-diffuser", "trajectory-diffuser", "trajectory-diffuser-one-pass")
"""the families rebuilt with the U-Net: they share the state-planner config and its denoiser backbone"""


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["maze2d-umaze"])
    work: str = "runs/bench/planners_protocol"
    """where bench_planners.py trained the protocol's runs (``<work>/<task>/<family>/seed<k>``)"""
    rounds: int = 3
    repeats: int = 20
    """timed calls per method per round (after 3 warm-up calls)"""
    unet: bool = True
    """also time the state planners rebuilt with the U-Net denoiser (random weights)"""
    threads: int = 1
    out: str = "bench/results/planners_protocol_timing.json"
    """the rows; the chosen settings are read from ``planners_protocol_<task>.json`` in the same folder"""


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


def _rounded(load: float | None) -> float | None:
    return None if load is None else round(load, 2)


def protocol_variants(work: Path, task: str, results_dir: Path,
                      unet: bool) -> tuple[dict[tuple[str, str], Any], set[tuple[str, str]]]:
    """(method, denoiser) → policy: the protocol's methods with training seed 0's weights, each in its
    validation-chosen setting, and (``unet``) the state planners' methods again on a U-Net denoiser with
    random weights, in the same settings. Also returns the keys of the random-weight ones."""
    from fastpolicy.bench.planners_protocol import FAMILIES, apply_setting, protocol_methods
    from fastpolicy.evaluation.results import read_results
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.registry import build_policy

    scored = results_dir / f"planners_protocol_{task}.json"
    chosen = {r["method"]: r["setting_values"] for r in (read_results(scored) if scored.exists() else [])
              if r.get("split") == "test" and "setting_values" in r}
    loaded = {family: load_policy(work / task / family / "seed0").eval() for family in FAMILIES
              if (work / task / family / "seed0" / "latest").exists()}
    if "decision-diffuser" not in loaded:
        raise FileNotFoundError(f"no protocol runs under {work / task} (run bench/bench_planners.py first)")
    rebuilt = {}
    if unet:
        for family in STATE_FAMILIES:
            if family in loaded and loaded[family].config.backbone != "unet-small":
                trained = loaded[family]
                cfg = {**trained.config_dict(), "backbone": "unet-small", "backbone_kwargs": {}}
                rebuilt[family] = build_policy(FAMILIES[family], cfg, trained.normalizer_state()).eval()
    levels = loaded["decision-diffuser"].config.num_train_timesteps
    out, random_weights = {}, set()
    for m in protocol_methods(levels, td_draft_modes=("autoregressive", "one-pass")):
        setting = chosen.get(m.name, m.settings()[0])
        for policies in (loaded, rebuilt):
            if m.family in policies:
                policy = apply_setting(policies[m.family], setting)
                key = (m.name, getattr(policy.config, "backbone", "mlp"))
                out[key] = policy
                if policies is rebuilt:
                    random_weights.add(key)
    return out, random_weights


def time_task(task: str, args: Args) -> list[dict[str, Any]]:
    from fastpolicy.bench.runner import obs_windows_from_store
    from fastpolicy.evaluation.results import environment_fields, make_row
    from fastpolicy.evaluation.timing import load_average
    from fastpolicy.policies.planners import BasePlanner, TrajectoryDiffuser, plan_cost
    from fastpolicy.utils.checkpoint import read_config

    work = Path(args.work)
    variants, random_weights = protocol_variants(work, task, Path(args.out).parent, args.unet)
    store = Path(read_config(work / task / "decision-diffuser" / "seed0")["train"]["store"])
    longest = max(p.obs_horizon for p in variants.values())
    window = obs_windows_from_store(store, longest, batch=1)
    gen = torch.Generator().manual_seed(0)

    def own_window(p: Any) -> Any:
        return window[:, longest - p.obs_horizon:]

    calls: dict[tuple[str, str], Callable[[], Any]] = {
        key: (lambda p=p: p.predict_chunk(own_window(p), None, gen)) for key, p in variants.items()}
    for (method, backbone), p in list(variants.items()):
        # a refining TD's stages (its draft-alone method is timed whole above: that plan is the draft)
        if isinstance(p, TrajectoryDiffuser) and p.config.refine_steps > 0:
            obs_n = p.normalize_obs(torch.as_tensor(own_window(p))).view(1, p.obs_horizon, p.config.obs_dim)
            with torch.inference_mode():
                draft = p.draft(obs_n)[0].repeat_interleave(p.config.num_candidates, dim=0)
            calls[(f"{method}/draft", backbone)] = lambda p=p, o=obs_n: p.draft(o)
            calls[(f"{method}/draft-no-kv-cache", backbone)] = (
                lambda p=p, o=obs_n: p.draft(o, use_cache=False))
            calls[(f"{method}/refine", backbone)] = lambda p=p, d=draft: p.refine(d, gen)

    load_before = load_average()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for r in range(args.rounds):
            for key, fn in calls.items():
                times[key].extend(_time_calls(fn, args.repeats))
            print(f"[timing] {task} round {r + 1}/{args.rounds}", flush=True)
    load_after = load_average()

    rows = []
    for (method, backbone), ts in times.items():
        stage = "/" in method
        policy = variants[(method.split("/")[0], backbone)]
        cost = plan_cost(policy) if isinstance(policy, BasePlanner) and not stage else {}
        nfe = cost.get("denoiser_calls")
        row = make_row(task, method, **percentile_fields(ts), nfe_per_step_mean=nfe,
                       nfe_per_step_max=nfe, **environment_fields())
        row.update(backbone=backbone, stage=stage, transformer_calls_per_plan=cost.get("transformer_calls"),
                   candidates=getattr(policy.config, "num_candidates", None),
                   timed_calls=len(ts), rounds=args.rounds, latency_batch=1,
                   weights="random" if (method.split("/")[0], backbone) in random_weights else "trained",
                   loadavg_1min_before=_rounded(load_before), loadavg_1min_after=_rounded(load_after))
        rows.append(row)
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_dd_full``: the Decision Diffuser's p50 at its full DDPM chain over this row's, same task
    and denoiser (whole plans only: a stage is a part of one)."""
    for r in rows:
        dd = next((o for o in rows if o["task"] == r["task"] and o["backbone"] == r["backbone"]
                   and o["method"].startswith("decision-diffuser-ddpm") and not o["stage"]), None)
        if dd is not None and not r["stage"]:
            r["speedup_vs_dd_full"] = dd["latency_ms_p50"] / r["latency_ms_p50"]


def main(args: Args) -> None:
    from fastpolicy.evaluation.results import update_results

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for task in args.tasks:
        rows.extend(time_task(task, args))
    path = update_results(args.out, rows, key=lambda r: (r["task"], r["method"], r["backbone"]))
    print(f"wrote {path}")
    print("| task | method or stage | denoiser | weights | p50 ms | p99 ms | × DD full chain |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = r.get("speedup_vs_dd_full")
        speed = "" if speedup is None else f"{speedup:.2f}×"
        print(f"| {r['task']} | {r['method']} | {r['backbone']} | {r['weights']} | "
              f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p99']:.2f} | {speed} |")


if __name__ == "__main__":
    main(parse_args())
