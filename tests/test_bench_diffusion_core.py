"""Smoke test of bench/bench_diffusion_core.py: the real script on a tiny budget (CleanRL style)."""

from __future__ import annotations

import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_diffusion_core.py"


def test_diffusion_core_ablation_smoke(tmp_path, run_script):
    run_script(SCRIPT, "--task", "maze2d-umaze", "--steps", "4", "--episodes", "1", "--size", "1500",
               "--prediction-types", "sample", "v_prediction", "--horizons", "alt", "--samplers", "ddim:4",
               "--temperatures", "1", "0.5", "--work", tmp_path / "work",
               "--results", tmp_path / "res", "--store-root", tmp_path / "store")
    rows = json.loads((tmp_path / "res" / "diffusion_core_maze2d-umaze.json").read_text())
    methods = {r["method"] for r in rows}
    assert methods == {"bc-alt", "sample-alt-mlp ddim:4", "sample-alt-mlp ddim:4,temperature=0.5",
                       "v_prediction-alt-mlp ddim:4", "v_prediction-alt-mlp ddim:4,temperature=0.5"}
    for r in rows:
        assert r["split"] == "validation" and r["seeds"] == [100] and r["episodes"] == 1
        assert (r["obs_horizon"], r["pred_horizon"], r["action_horizon"]) == (1, 8, 4)
    assert {r["prediction_type"] for r in rows} == {None, "sample", "v_prediction"}
