"""bench/bench_d4rl.py: the ``fastpolicy bench`` call it makes writes where the script reads back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_driver():
    spec = importlib.util.spec_from_file_location("bench_d4rl", ROOT / "bench" / "bench_d4rl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


d4rl = _load_driver()


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
