"""Smoke test of bench/bench_students.py: the real script on a tiny budget, every method and the curve."""

from __future__ import annotations

import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_students.py"


def test_students_benchmark_smoke(tmp_path, run_script):
    run_script(SCRIPT, "--quick", "--task", "agv-bimodal-block", "--out", tmp_path)
    rows = {r["method"]: r for r in json.loads((tmp_path / "students_agv-bimodal-block.json").read_text())}
    assert {"bc-mlp", "dp-ddpm100", "dp-ddim10", "dp-onecall", "cm-1step", "cm-2step", "sdp-cm"} <= set(rows)
    assert rows["cm-1step"]["nfe_per_step_max"] == 1 and rows["sdp-cm"]["nfe_per_step_max"] == 1
    assert all("modes" in r and r["step_latency_samples"] >= 4 for r in rows.values())
    curve = json.loads((tmp_path / "students_curve_agv-bimodal-block.json").read_text())
    assert curve[0]["distill_steps"] == 0 and curve[-1]["distill_steps"] > 0
    assert (tmp_path / "students_curve.png").stat().st_size > 5_000
