"""The run record (fastpolicy.train.run_record): one cost.json per run, summed over resumes, and a
finished run reused rather than trained again — the same for every trainable thing a benchmark uses."""
import json

import pytest


def test_cost_accumulates_over_resumes_and_counts_earlier_stages_once(tmp_path):
    from fastpolicy.train.run_record import read_cost, record_cost

    run = tmp_path / "run"
    assert read_cost(run) is None
    record_cost(run, 2.0, 10, before=5.0, batch_size=64)
    cost = record_cost(run, 3.0, 20, before=99.0)  # a resume: earlier stages were counted already
    assert cost == read_cost(run)
    assert (cost["seconds"], cost["steps"]) == (5.0, 20)
    assert (cost["before_seconds"], cost["total_seconds"]) == (5.0, 10.0)
    assert cost["batch_size"] == 64
    assert [p.name for p in run.iterdir()] == ["cost.json"]  # written atomically: no temp file left
    json.loads((run / "cost.json").read_text())


def test_train_or_reuse_trains_once_then_reuses(linear_store, tmp_path, monkeypatch):
    from fastpolicy.train import offline
    from fastpolicy.train.config import TrainConfig
    from fastpolicy.train.run_record import read_cost, run_is_complete, train_or_reuse

    run = tmp_path / "bc"
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=1, checkpoint_every=3, progress=False,
                      tensorboard=False, device="cpu")
    assert not run_is_complete(run, 6)
    seconds = train_or_reuse(linear_store, run, "bc", {"obs_horizon": 1, "pred_horizon": 2,
                                                       "action_horizon": 1}, cfg)
    assert run_is_complete(run, 6) and not run_is_complete(run, 7)
    assert seconds == pytest.approx(read_cost(run)["seconds"]) and read_cost(run)["steps"] == 6

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(offline, "train_offline", must_not_train)
    assert train_or_reuse(linear_store, run, "bc", {}, cfg) == seconds
