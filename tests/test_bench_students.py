"""Smoke test of bench/bench_students.py: the real script on a tiny budget, every method and the curve."""

from __future__ import annotations

import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_students.py"


def test_students_benchmark_smoke(tmp_path, run_script):
    run_script(SCRIPT, "--quick", "--task", "agv-bimodal-block", "--out", tmp_path)
    rows = {r["method"]: r for r in json.loads((tmp_path / "students_agv-bimodal-block.json").read_text())}
    assert {"bc-mlp", "teacher-ddpm100", "teacher-ddim10", "teacher-one-call-estimate", "student-1call",
            "student-2calls", "streaming-student-1call"} <= set(rows)
    assert rows["student-1call"]["nfe_per_step_max"] == 1
    assert rows["streaming-student-1call"]["nfe_per_step_max"] == 1
    assert all("modes" in r and r["step_latency_samples"] >= 4 for r in rows.values())
    curve = json.loads((tmp_path / "students_curve_agv-bimodal-block.json").read_text())
    assert curve[0]["distill_steps"] == 0 and curve[-1]["distill_steps"] > 0
    assert (tmp_path / "students_curve.png").stat().st_size > 5_000


def test_student_capacity_smoke(tmp_path, run_script):
    """The capacity study: a widened student computes its narrow twin's function before distillation,
    and the script writes validation rows for both widths at every action horizon, with latency."""
    import torch

    from fastpolicy.policies.checkpoint import load_policy

    script = SCRIPT.parent / "bench_student_capacity.py"
    run_script(script, "--quick", "--out", tmp_path)
    rows = json.loads((tmp_path / "student_capacity_agv-bimodal-block.json").read_text())
    assert {(r["method"], r["action_horizon"]) for r in rows} >= {("student-1call", 8),
                                                                  ("student-h512-1call", 4)}
    assert all(r["split"] == "validation" and min(r["seeds"]) >= 100 for r in rows)
    assert any(r.get("step_latency_samples") for r in rows if r["method"] == "student-h512-1call")

    import runpy

    widen = runpy.run_path(str(script))["widen"]
    student = load_policy(tmp_path / "work" / "agv-bimodal-block" / "cm1").eval()
    wide = widen(student, 512)
    x, cond = torch.randn(2, 16, 2), torch.randn(2, student.config.obs_dim * student.config.obs_horizon)
    t, s = torch.full((2,), 90), torch.full((2,), -1)
    with torch.no_grad():
        same = student.backbone(x, t, cond, stop_time=s)
        assert torch.allclose(wide.backbone(x, t, cond, stop_time=s), same, atol=5e-3)
