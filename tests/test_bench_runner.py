"""Bench runner rows (shared schema + bench fields), budget selection and the report command."""

import json
from pathlib import Path

import numpy as np
import pytest

from fastpolicy.bench.select import select_method
from fastpolicy.evaluation.results import make_row, read_results, validate_row, write_results


def _row(method, score, step_ms, **kw):
    fields = dict(steps=100, score_mean=score, score_std=1.0, episodes=10, seeds=[0], nfe_per_step_mean=1.0,
                  nfe_per_step_max=1, latency_ms_p50=step_ms / 4, latency_ms_p99=step_ms,
                  step_latency_ms_max_p99=step_ms, step_latency_ms_p50=step_ms * 0.9, throughput_b64=100.0,
                  distill_seconds=None)
    fields.update(kw)
    return make_row("maze2d-umaze", method, **fields)


TABLE = [
    _row("teacher-ddpm100", 80.0, 600.0),
    _row("teacher-ddim10", 78.0, 60.0),
    _row("streaming-student-1call", 77.0, 6.0, distill_seconds=90.0),
    _row("student-1call", 77.0, 5.5, distill_seconds=80.0),
    _row("student-2calls", 79.0, 11.0),
    _row("bc-mlp", 40.0, 0.3),
    _row("broken", None, 0.1),                 # no score: never selected
]


@pytest.mark.parametrize("budget, expected", [
    (1000, "teacher-ddpm100"), (100, "student-2calls"), (11, "student-2calls"), (10, "student-1call"),
    (5.5, "student-1call"),
    (1, "bc-mlp"),
])
def test_budget_picks_best_score_that_fits(budget, expected):
    assert select_method(TABLE, budget)["method"] == expected


def test_budget_ties_go_to_the_faster_method():
    # the streaming student has the same score but is slower
    assert select_method(TABLE, 8.0)["method"] == "student-1call"


def test_budget_nothing_fits_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no method fits a 0.2 ms budget.*bc-mlp"):
        select_method(TABLE, 0.2)
    with pytest.raises(ValueError, match="positive"):
        select_method(TABLE, -1)
    with pytest.raises(ValueError, match="no validated"):
        select_method(TABLE, 10, task="hopper-medium")


def test_bench_rows_validate_and_round_trip(tmp_path):
    for r in TABLE:
        validate_row(r)
    path = write_results(tmp_path / "quick_maze2d-umaze.json", TABLE)
    back = read_results(path)
    assert [r["method"] for r in back] == [r["method"] for r in TABLE]
    assert back[2]["step_latency_ms_max_p99"] == 6.0 and back[2]["distill_seconds"] == 90.0
    bad = dict(TABLE[0])
    bad["nfe_per_step_max"] = "many"
    with pytest.raises(ValueError, match="nfe_per_step_max"):
        validate_row(bad)


def test_timing_fields_worst_step_uses_planning_steps_only():
    from fastpolicy.bench.runner import summarize_targets
    from fastpolicy.evaluation.timing import timing_fields

    nfe = [4, 0, 0, 0] * 25
    lat = [0.010 if n else 0.001 for n in nfe]
    lat[0] = 0.020
    t = timing_fields(nfe, lat)
    assert t["step_latency_ms_max_p99"] == pytest.approx(np.percentile([20] + [10] * 24, 99))
    assert t["latency_ms_p50"] == pytest.approx(1.0) and t["nfe_per_step_max_steady"] == 4
    targets = summarize_targets(TABLE)
    # student-1call keeps 77 / 80 = 96 % at 600 / 5.5 = 109× DDPM-100 and 60 / 5.5 = 10.9× DDIM-10 (medians)
    assert targets["best_student"] == "student-1call" and targets["best_student_meets_all"] is True
    assert targets["best_student_speedup_vs_ddpm100"] == pytest.approx(600 / 5.5)
    assert targets["streaming_student_keeps_95pct"] is True
    slow = [{**r, "step_latency_ms_p50": 20.0} if r["method"].startswith("student-") else r for r in TABLE]
    t = summarize_targets(slow)   # 3× DDIM-10 only: reported as a miss, never hidden
    assert t["best_student_meets_all"] is False and t["best_student_speedup_vs_ddim10"] < 5


def test_report_command_renders_table_and_plot(tmp_path, capsys):
    from fastpolicy.cli import main

    path = write_results(tmp_path / "r.json", TABLE)
    md, png = tmp_path / "t.md", tmp_path / "p.png"
    assert main(["report", str(path), "--md", str(md), "--png", str(png), "--budget-ms", "10"]) == 0
    assert "student-1call" in md.read_text() and png.stat().st_size > 1000
    assert "budget 10 ms → student-1call" in capsys.readouterr().out
    assert main(["report", str(path), "--budget-ms", "0.01"]) == 2


def test_measurements_on_a_real_task(tmp_path):
    """A tiny untrained BC policy through the runner's evaluation: every bench field filled, schema valid."""
    import torch

    from fastpolicy.bench.runner import Method, SuiteConfig, evaluate_methods
    from fastpolicy.policies.bc import BCPolicy

    torch.manual_seed(0)
    policy = BCPolicy.from_config(dict(obs_dim=6, action_dim=2, hidden=32, depth=1)).eval()
    # methods with different observation histories are timed side by side (BC at To 2, a teacher at To 1)
    short = BCPolicy.from_config(dict(obs_dim=6, action_dim=2, hidden=32, depth=1, obs_horizon=1,
                                      pred_horizon=4, action_horizon=1)).eval()
    suite = SuiteConfig("test", episodes=2, seeds=[0], latency_steps=8, latency_rounds=1, throughput_calls=1)
    methods = [Method("bc-mlp", policy, extra={"distill_seconds": None}),
               Method("bc-short", short, extra={"distill_seconds": None})]
    rows = evaluate_methods(methods, "maze2d-umaze", suite,
                            np.zeros((64, 2, 6), np.float32), progress=False)
    for row in rows:
        validate_row(row)
        assert row["episodes"] == 2 and row["nfe_per_step_max"] == 1
        assert row["step_latency_ms_max_p99"] > 0 and row["throughput_b64"] > 0
        json.dumps(row)


def test_suite_store_path_shares_full_size_stores_only_when_asked(tmp_path):
    from fastpolicy.bench.runner import SUITES, SuiteConfig, suite_store_path

    work = tmp_path / "work"
    assert suite_store_path(SuiteConfig("t"), "hopper-medium", work) == work / "data"
    assert suite_store_path(SUITES["d4rl"], "hopper-medium-replay", work) == \
        Path("datasets/store/hopper-medium-replay")
    demo = SUITES["demo"]
    shared = SuiteConfig("t", store_root=str(tmp_path), dataset_recipes=demo.dataset_recipes)
    assert suite_store_path(shared, "maze2d-umaze", work) == tmp_path / "maze2d-umaze-dwell"
    assert SUITES["d4rl"].dataset_size is None  # the recipe's D4RL size (1M) unless told otherwise


def test_action_horizon_is_chosen_on_validation_seeds_per_method(monkeypatch):
    """Best validation score wins, ties go to the longer horizon, trained horizons are left alone."""
    import dataclasses

    import fastpolicy.evaluation as evaluation
    from fastpolicy.bench.methods import Method
    from fastpolicy.bench.runner import SUITES, choose_action_horizons

    class Chunked:
        def __init__(self, scores, ta=8, streaming=False):
            self.scores, self.streaming = scores, streaming
            self.config = type("Cfg", (), {"action_horizon": ta})()

        def per_position_time(self, config):
            return self.streaming

        def with_action_horizon(self, ta):
            return Chunked(self.scores, ta, self.streaming)

    calls = []

    def fake_evaluate(policy, spec, episodes, seeds, **kw):
        calls.append((policy.config.action_horizon, tuple(seeds), kw["split"]))
        return {"score_mean": policy.scores[policy.config.action_horizon]}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    suite = dataclasses.replace(SUITES["students"], action_horizons=(8, 4), validation_seeds=[100, 101])
    methods = [Method("better-at-4", Chunked({8: 0.5, 4: 0.9})), Method("tie", Chunked({8: 0.9, 4: 0.9})),
               Method("streaming", Chunked({8: 0.0, 4: 1.0}, ta=4, streaming=True)),
               Method("bc-mlp", object())]
    chosen = choose_action_horizons(methods, "agv-bimodal-block", suite, progress=False)
    assert [m.name for m in chosen] == [m.name for m in methods]
    assert chosen[0].policy.config.action_horizon == 4 and chosen[1].policy.config.action_horizon == 8
    assert chosen[0].extra["action_horizon_validation"] == {"8": 0.5, "4": 0.9}
    assert chosen[2] is methods[2] and chosen[3] is methods[3]      # trained horizons: untouched
    assert {seeds for _, seeds, _ in calls} == {(100, 101)} and {s for *_, s in calls} == {"validation"}
    assert len(calls) == 4                                           # two methods × two horizons
    with pytest.raises(ValueError, match="overlap"):
        dataclasses.replace(suite, validation_seeds=[0, 100])
