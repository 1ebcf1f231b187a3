"""The diffusion planners as benchmark methods: train (or reuse) them on a store and wrap them as Methods.

Used by the ``planners`` suite of ``fastpolicy bench`` (``fastpolicy.bench.runner``): a quick look at one
training seed, each planner at its default inference settings. The fair comparison — 3 training seeds,
every method's settings chosen on validation seeds, paired test episodes — is
``fastpolicy.bench.planners_protocol`` (run by ``bench/bench_planners.py``); its rows are the ones the docs
report.

Three training runs per task, as in the protocol, each planner its own: the value-guided Diffuser (joint
state-action denoiser + value function), the Decision Diffuser (state denoiser with classifier-free return
guidance + inverse dynamics) and the Trajectory Diffuser (draft transformer + state denoiser + inverse
dynamics + critic). The Decision Diffuser is scored at its reference full DDPM chain (``ddpm200``, as Ajay
et al.) and at DDIM-10, its fast sampler, since the TD's speed only counts against DD's fastest sampler
that keeps the score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PLANNER_METHODS: tuple[str, ...] = ("diffuser-ddpm20", "decision-diffuser-ddpm200",
                                    "decision-diffuser-ddim10", "trajectory-diffuser-refine1")
"""method names of the ``planners`` suite (value-guided Diffuser, Decision Diffuser at its full chain and at
DDIM-10, TD with its default refinement, k = 1)"""

DD_SAMPLERS: dict[str, str | None] = {"decision-diffuser-ddpm200": None,
                                      "decision-diffuser-ddim10": "ddim:10"}
"""the suite's Decision Diffuser methods → sampler (None: the run's own, its full DDPM chain)"""

SPEEDUP_TARGET = 10.0
"""the TD must plan this many times faster than DD's full chain at ≥ its score (the planners issue)"""

DEFAULT_PLANNER_OPTIONS: dict[str, Any] = {"pred_horizon": 16, "action_horizon": 1}
"""options every planner of the suite shares (H = 16 planned steps, replan every control step)"""


def planner_train_config(steps: int, batch_size: int, lr: float, seed: int = 0, progress: bool = True):
    """The TrainConfig the planner benchmarks use (warm-up 10% up to 200 steps, 4 checkpoints)."""
    from fastpolicy.train.trainer import TrainConfig

    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(200, steps // 10),
                       checkpoint_every=max(50, steps // 4), seed=seed, progress=progress, tensorboard=False)


def ensure_planner(store: str | Path, run: str | Path, policy_type: str, options: dict[str, Any],
                   train_config: Any, task: str | None = None) -> tuple[Any, float | None]:
    """Train ``policy_type`` into ``run`` (resuming), or load it when complete → (policy, train seconds
    from the run record, :mod:`fastpolicy.train.run_record`)."""
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.run_record import train_or_reuse

    seconds = train_or_reuse(store, run, policy_type, options, train_config, task=task)
    return load_policy(run), seconds


def with_default_refinement(td: Any, options: dict[str, Any] | None = None) -> Any:
    """A loaded Trajectory Diffuser viewed with the current default refinement (k, starting level), or the
    one in ``options``. Refinement is an inference-time choice, so a run reused from disk is benchmarked
    with the setting of today's code rather than the one it was trained under; the loaded planner itself
    is left as it was (a view, :mod:`fastpolicy.policies.modes`)."""
    from fastpolicy.policies.planners import TrajectoryDiffuserConfig

    options = options or {}
    return td.with_refinement(options.get("refine_steps", TrajectoryDiffuserConfig.refine_steps),
                              options.get("refine_start", TrajectoryDiffuserConfig.refine_start))


def planner_extra(policy: Any, train_seconds: float | None) -> dict[str, Any]:
    """The planner-specific fields of a result row (network calls per plan, candidates, sizes)."""
    from fastpolicy.policies.planners import plan_cost

    cost = plan_cost(policy)
    cfg = policy.config
    out = {"train_seconds": train_seconds, "denoiser_calls_per_plan": cost["denoiser_calls"],
           "transformer_calls_per_plan": cost["transformer_calls"],
           "candidates": policy.distinct_candidates(),      # identical copies of one draft count once
           "horizon": cfg.pred_horizon, "backbone": cfg.backbone,
           "num_train_timesteps": cfg.num_train_timesteps}
    if hasattr(cfg, "refine_steps"):
        out.update(refine_steps=cfg.refine_steps, refine_start=cfg.refine_start)
    return out


def build_planner_methods(store: str | Path, work: str | Path, task: str, td_steps: int, diffuser_steps: int,
                          make_train_config: Callable[[int], Any], options: dict[str, Any] | None = None,
                          candidates: int = 8, methods: Sequence[str] | None = None,
                          log: Callable[[str], None] = print,
                          options_by_type: dict[str, dict[str, Any]] | None = None
                          ) -> tuple[list[Any], dict[str, Any]]:
    """Train / reuse the planners under ``work`` (one run each) and return (Methods, the planners by type).

    ``options`` go to every trained planner (on top of :data:`DEFAULT_PLANNER_OPTIONS`),
    ``options_by_type["diffuser" | "decision-diffuser" | "trajectory-diffuser"]`` to one of them. The
    Diffuser trains ``diffuser_steps``, the state planners ``td_steps`` each (the same steps for DD and TD).
    ``methods`` restricts to some of :data:`PLANNER_METHODS` (None: all).
    """
    from fastpolicy.bench.methods import Method

    wanted = set(PLANNER_METHODS if methods is None else methods)
    unknown = sorted(wanted - set(PLANNER_METHODS))
    if unknown:
        raise ValueError(f"unknown planner methods {unknown}; known: {', '.join(PLANNER_METHODS)}")
    work = Path(work)
    common = {**DEFAULT_PLANNER_OPTIONS, **(options or {})}
    by_type = options_by_type or {}
    out: list[Any] = []
    planners: dict[str, Any] = {}
    if "diffuser-ddpm20" in wanted:
        log(f"[planners] Diffuser with its value function ({diffuser_steps} steps)")
        diffuser, seconds = ensure_planner(store, work / "diffuser", "diffuser",
                                           {**common, "value_guidance": True, **by_type.get("diffuser", {})},
                                           make_train_config(diffuser_steps), task)
        planners["diffuser"] = diffuser
        out.append(Method(diffuser.method, diffuser, extra=planner_extra(diffuser, seconds)))
    if wanted & set(DD_SAMPLERS):
        log(f"[planners] Decision Diffuser ({td_steps} steps, its own run)")
        dd, dd_seconds = ensure_planner(store, work / "decision-diffuser", "decision-diffuser",
                                        {**common, **by_type.get("decision-diffuser", {})},
                                        make_train_config(td_steps), task)
        planners["decision-diffuser"] = dd
        for name, sampler in DD_SAMPLERS.items():
            if name in wanted:
                view = dd.with_settings(sampler=sampler) if sampler else dd
                out.append(Method(view.method, view, extra=planner_extra(view, dd_seconds)))
    if "trajectory-diffuser-refine1" in wanted:
        log(f"[planners] Trajectory Diffuser ({td_steps} steps)")
        td_options = {**common, "num_candidates": candidates, **by_type.get("trajectory-diffuser", {})}
        td, td_seconds = ensure_planner(store, work / "trajectory-diffuser", "trajectory-diffuser",
                                        td_options, make_train_config(td_steps), task)
        td = with_default_refinement(td, td_options)
        planners["trajectory-diffuser"] = td
        out.append(Method(td.method, td, extra=planner_extra(td, td_seconds)))
    return out, planners


def summarize_planner_targets(rows: Sequence[dict[str, Any]],
                              latency_key: str = "step_latency_ms_p50") -> dict[str, Any]:
    """The planners' targets from one seed's rows: the TD ≥ 10× faster than DD's full chain (DDPM-200) while
    scoring at least as well (difference ≥ −1 standard error, unpaired here), and how it compares with
    DD-DDIM-10 and the Diffuser. Misses are reported as such; ablation rows are ignored. The protocol's
    paired, tuned verdict is in ``bench/bench_planners.py``'s rows."""
    main = [r for r in rows if not r.get("ablation")]
    by = {r["method"]: r for r in main}
    td = next((r for r in main if r["method"].startswith("trajectory-diffuser")), None)
    if td is None or td.get(latency_key) is None:
        return {}
    out: dict[str, Any] = {}
    for name, key in (("decision-diffuser-ddpm200", "dd200"), ("decision-diffuser-ddim10", "dd_ddim10"),
                      ("diffuser-ddpm20", "diffuser")):
        ref = by.get(name)
        if ref is None or ref.get(latency_key) is None:
            continue
        out[f"td_speedup_vs_{key}"] = ref[latency_key] / td[latency_key]
        if ref.get("score_mean") is not None and td.get("score_mean") is not None:
            out[f"td_score_minus_{key}"] = td["score_mean"] - ref["score_mean"]
            out[f"td_score_minus_{key}_se"] = _difference_se(td, ref)
    if "td_speedup_vs_dd200" in out and "td_score_minus_dd200" in out:
        out["target_10x_vs_dd200_at_its_score"] = bool(
            out["td_speedup_vs_dd200"] >= SPEEDUP_TARGET
            and out["td_score_minus_dd200"] >= -out["td_score_minus_dd200_se"])
    if "td_score_minus_diffuser" in out:
        out["target_score_ge_diffuser"] = bool(out["td_score_minus_diffuser"] >= 0)
    return out


def _difference_se(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Standard error of the difference of two rows' mean scores (independent episodes; 0 when a row lacks
    its spread)."""
    var = 0.0
    for row in (a, b):
        n = row.get("episodes") or 0
        if n and row.get("score_std") is not None:
            var += row["score_std"] ** 2 / n
    return var ** 0.5


__all__ = ["DD_SAMPLERS", "DEFAULT_PLANNER_OPTIONS", "PLANNER_METHODS", "SPEEDUP_TARGET",
           "build_planner_methods", "ensure_planner", "planner_extra", "planner_train_config",
           "summarize_planner_targets", "with_default_refinement"]
