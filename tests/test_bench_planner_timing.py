"""bench/bench_planner_timing.py: quiet-CPU planner timing rows, TD speed-ups and the score summary."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fastpolicy.evaluation.results import validate_row, write_results

ROOT = Path(__file__).resolve().parents[1]


def _load_driver():
    spec = importlib.util.spec_from_file_location("bench_planner_timing",
                                                  ROOT / "bench" / "bench_planner_timing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


timing = _load_driver()

TINY = {"backbone_kwargs": {"hidden": 32, "depth": 1}, "critic_hidden": 16, "pred_horizon": 4}
"""tiny networks, each planner's default sampler (so the method names are the benchmark's)"""
TD_TINY = {"d_model": 16, "d_ff": 16, "n_layers": 1, "idm_hidden": 16, "refine_steps": 2}
"""trained with k = 2: the timing must still time the current default refinement (k = 1)"""


@pytest.fixture(scope="module")
def trained_work(tmp_path_factory):
    """Tiny Trajectory Diffuser + Diffuser trained for 2 steps where bench_planners.py would put them."""
    from fastpolicy.bench.planners import build_planner_methods, planner_train_config
    from fastpolicy.bench.runner import ensure_dataset

    root = tmp_path_factory.mktemp("timing")
    store = ensure_dataset("maze2d-umaze", root / "data", 1000)
    build_planner_methods(store, root / "work" / "maze2d-umaze", "maze2d-umaze", 2, 2,
                          lambda steps: planner_train_config(steps, 8, 1e-3, progress=False), TINY,
                          candidates=2, methods=("diffuser-ddpm20", "trajectory-diffuser-refine1"),
                          log=lambda msg: None,
                          options_by_type={"trajectory-diffuser": TD_TINY})
    return root / "work"


def test_timing_rows_speedups_and_summary(trained_work, tmp_path):
    args = timing.Args(tasks=["maze2d-umaze"], work=str(trained_work), rounds=1, repeats=2, unet=False)
    rows = timing.time_task("maze2d-umaze", args)
    for r in rows:
        validate_row(r)
        assert r["latency_ms_p50"] > 0 and r["timed_calls"] == 2 and r["weights"] == "trained"
    by = {r["method"]: r for r in rows}
    # the planners, the derived Decision Diffusers and the TD's stages, all timed
    assert {"diffuser-ddpm20", "decision-diffuser-ddpm200", "decision-diffuser-ddpm50",
            "trajectory-diffuser-refine1", "trajectory-diffuser-refine1/draft",
            "trajectory-diffuser-refine1/refine", "trajectory-diffuser-refine1/draft-no-kv-cache"} <= set(by)
    td = by["trajectory-diffuser-refine1"]
    assert td["td_speedup"] == 1.0 and td["transformer_calls_per_plan"] == 3
    dd = by["decision-diffuser-ddpm200"]
    assert dd["td_speedup"] == pytest.approx(dd["latency_ms_p50"] / td["latency_ms_p50"])
    assert "td_speedup" not in by["trajectory-diffuser-refine1/draft"]

    # the summary takes the scores from bench_planners.py's file and the latencies from the timing
    scored = [dict(by[m], score_mean=s, latency_ms_p50=999.0)
              for m, s in (("decision-diffuser-ddpm200", 5.0), ("trajectory-diffuser-refine1", 7.0),
                           ("diffuser-ddpm20", 9.0))]
    write_results(tmp_path / "planners_maze2d-umaze.json", scored)
    summary = {r["method"]: r for r in timing.summarize(rows, tmp_path)}
    assert summary["trajectory-diffuser-refine1"]["latency_ms_p50"] == td["latency_ms_p50"]
    assert summary["trajectory-diffuser-refine1"]["closed_loop_latency_ms_p50"] == 999.0
    # the Diffuser scored higher than TD here, so that target is reported as missed
    assert summary["trajectory-diffuser-refine1"]["target_score_ge_diffuser"] is False
    assert timing.plot_summary(list(summary.values()), tmp_path / "summary.png").stat().st_size > 0
