"""The main job end to end on a tiny budget: every demo method gets a valid row, a table and a plot."""

import json

from fastpolicy.bench.runner import SUITES
from fastpolicy.demo import run_demo
from fastpolicy.evaluation.results import validate_row


def test_demo_runs_every_stage_and_writes_results(tmp_path, capsys):
    tiny = dict(
        dataset_size=3000,
        teacher_steps=8,
        bc_steps=4,
        sdp_steps=4,
        cm_steps=4,
        sdp_cm_steps=4,
        batch_size=16,
        episodes=1,
        validation_seeds=[100],
        latency_steps=4,
        throughput_calls=1,
        progress=False,
    )
    rows = run_demo(str(tmp_path / "demo"), **tiny)
    assert [r["method"] for r in rows] == list(SUITES["demo"].methods)
    for row in rows:
        validate_row(row)
        assert row["step_latency_ms_max_p99"] is not None and row["throughput_b64"] > 0
    by_method = {r["method"]: r for r in rows}
    assert by_method["teacher-ddpm100"]["nfe_per_step_max"] == 100
    assert by_method["student-1call"]["nfe_per_step_max"] == 1
    assert by_method["streaming-student-1call"]["nfe_per_step_max"] == 1
    assert by_method["teacher-one-call-estimate"]["nfe_per_step_max"] == 1
    # every chunked diffusion method ran at the action horizon its validation episodes chose
    chunked = {"teacher-ddpm100", "teacher-ddim10", "teacher-ddim1-trailing", "teacher-one-call-estimate",
               "student-1call", "student-2calls"}
    for name, row in by_method.items():
        assert ("action_horizon_validation" in row) == (name in chunked), name
        if name in chunked:
            scores = {int(ta): v for ta, v in row["action_horizon_validation"].items()}
            assert row["action_horizon"] == max(scores, key=lambda ta: (scores[ta], ta))
    # the multimodal task: every row says which way its episodes went round the block
    assert all(set(r["mode_fractions"]) >= {"north", "south", "none"} for r in rows)
    # ≥ the suite's planning steps were timed per method, with the machine's load recorded
    assert all(r["step_latency_samples"] >= 4 and "load_avg_1m_before" in r for r in rows)
    saved = json.loads((tmp_path / "demo" / "demo_agv-bimodal-block.json").read_text())
    assert len(saved) == len(rows)
    assert (tmp_path / "demo" / "pareto_demo_agv-bimodal-block.png").stat().st_size > 10_000
    assert "student-1call" in capsys.readouterr().out
    # A second run reuses the dataset and every trained run instead of redoing them.
    before = sorted(
        p.name for p in (tmp_path / "demo" / "agv-bimodal-block" / "teacher" / "checkpoints").iterdir()
    )
    run_demo(str(tmp_path / "demo"), **tiny)
    checkpoints = tmp_path / "demo" / "agv-bimodal-block" / "teacher" / "checkpoints"
    after = sorted(p.name for p in checkpoints.iterdir())
    assert before == after
