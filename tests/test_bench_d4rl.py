"""bench/bench_d4rl.py: the ``fastpolicy bench`` call it makes writes where the script reads back."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import load_bench_script

ROOT = Path(__file__).resolve().parents[1]


d4rl = load_bench_script("bench_d4rl")


def _bench_command(monkeypatch, **args) -> list[str]:
    calls = []
    monkeypatch.setattr(d4rl.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    d4rl.run_task("hopper-medium", d4rl.Args(peers=False, **args))
    assert len(calls) == 1 and calls[0][2:6] == ["fastpolicy.cli", "bench", "--suite", "d4rl"]
    return calls[0]


def test_refreshes_the_committed_results_it_merges(monkeypatch):
    """``fastpolicy bench`` writes under runs/bench unless asked; merge() reads bench/results."""
    cmd = _bench_command(monkeypatch)
    assert "--refresh-committed" in cmd and "--results-dir" not in cmd


def test_another_results_dir_is_passed_on(monkeypatch):
    cmd = _bench_command(monkeypatch, results_dir="runs/d4rl-results")
    assert "--refresh-committed" not in cmd
    assert cmd[cmd.index("--results-dir") + 1] == str(ROOT / "runs/d4rl-results")


def _row(task: str, method: str, score: float, **extra) -> dict:
    from fastpolicy.evaluation.results import make_row

    return make_row(task, method, steps=1, score_mean=score, score_std=1.0, episodes=30, seeds=[0, 1, 2],
                    nfe_per_step_mean=1.0, nfe_per_step_max=1, latency_ms_p50=None, latency_ms_p99=None,
                    **extra)


def test_the_teacher_is_the_sampler_that_won_on_validation_not_on_test(tmp_path):
    """The validation winner is marked even where another sampler scores higher on the test rows."""
    from fastpolicy.evaluation.results import write_results

    write_results(tmp_path / "d4rl_validation_hopper-medium.json",
                  [_row("hopper-medium", "bc-mlp", 90.0), _row("hopper-medium", "teacher-ddpm100", 50.0),
                   _row("hopper-medium", "teacher-ddim10-temp0", 70.0)])
    rows = [_row("hopper-medium", "bc-mlp", 60.0), _row("hopper-medium", "teacher-ddpm100", 65.0),
            _row("hopper-medium", "teacher-ddim10-temp0", 55.0),
            _row("hopper-medium", "teacher-ddim10", 99.0), _row("walker2d-medium", "teacher-ddpm100", 80.0)]
    marked = {(r["task"], r["method"]): r for r in d4rl.mark_selected(rows, tmp_path)}
    assert marked[("hopper-medium", "teacher-ddim10-temp0")]["selected_on_validation"] is True
    assert marked[("hopper-medium", "teacher-ddim10-temp0")]["validation_score"] == 70.0
    assert marked[("hopper-medium", "teacher-ddpm100")]["selected_on_validation"] is False
    # not validated: never chosen
    assert marked[("hopper-medium", "teacher-ddim10")]["validation_score"] is None
    assert marked[("hopper-medium", "teacher-ddim10")]["selected_on_validation"] is False
    assert "selected_on_validation" not in marked[("hopper-medium", "bc-mlp")]  # BC is not a teacher sampler
    # no validation run
    assert marked[("walker2d-medium", "teacher-ddpm100")]["selected_on_validation"] is None


def test_validation_refuses_a_task_without_trained_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(d4rl, "ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="no trained run"):
        d4rl.validate("hopper-medium", d4rl.Args(validate=True))


def test_some_methods_replace_only_their_rows(tmp_path, monkeypatch):
    """``--methods``: the suite writes a scratch file; only those methods' rows change in the task file."""
    from fastpolicy.evaluation.results import read_results, write_results

    monkeypatch.setattr(d4rl, "ROOT", tmp_path)
    (tmp_path / "res").mkdir()
    write_results(tmp_path / "res" / "d4rl_hopper-medium.json",
                  [_row("hopper-medium", "bc-mlp", 60.0), _row("hopper-medium", "teacher-ddpm100", 50.0)])

    def fake_suite(cmd, **kw):
        out = Path(cmd[cmd.index("--results-dir") + 1])
        assert cmd[cmd.index("--methods") + 1] == "teacher-ddpm100"
        write_results(out / "d4rl_hopper-medium.json", [_row("hopper-medium", "teacher-ddpm100", 55.0)])

    monkeypatch.setattr(d4rl.subprocess, "run", fake_suite)
    d4rl.run_task("hopper-medium", d4rl.Args(peers=False, methods=["teacher-ddpm100"], results_dir="res"))
    rows = {r["method"]: r["score_mean"] for r in read_results(tmp_path / "res" / "d4rl_hopper-medium.json")}
    assert rows == {"bc-mlp": 60.0, "teacher-ddpm100": 55.0}
