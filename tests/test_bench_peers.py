"""bench/bench_d4rl_peers.py: peer result JSON -> shared-schema rows (no peer venv needed)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from bench_scripts import load_bench_script

from fastpolicy.envs.registry import TaskSpec
from fastpolicy.evaluation.results import REQUIRED_FIELDS, validate_row

peers = load_bench_script("bench_d4rl_peers")

TASK = TaskSpec(name="hopper-test", env_id="Hopper-v5", max_episode_steps=1000,
                score={"kind": "d4rl", "ref_min": -20.0, "ref_max": 3180.0})


def _peer_json(seed: int = 0, algo: str = "td3plusbc", offset: float = 0.0) -> dict:
    return {
        "algo": algo, "env_id": "Hopper-v5", "steps": 500, "train_seed": seed,
        "eval_seeds": [0, 1], "episodes": 3, "max_episode_steps": 1000,
        "returns": [[1580.0 + offset, 3180.0 + offset, -20.0 + offset], [780.0 + offset] * 3],
        "train_seconds": 12.5, "eval_seconds": 3.0, "train_steps_per_second": 40.0,
        "predict_latency_ms_p50": 0.1 + seed, "predict_latency_ms_p99": 0.5 + seed, "threads": 1,
        "hyperparameters": {"alpha": 2.5},
        "d3rlpy_version": "2.8.1", "gymnasium_version": "1.0.0", "mujoco_version": "4.0.0",
        "torch_version": "2.13.0+cpu",
    }


def test_row_normalizes_with_task_card():
    row = peers.peer_row(TASK, [_peer_json()])
    validate_row(row)
    assert set(REQUIRED_FIELDS) <= set(row)
    # (R + 20) / 3200 * 100: 1580 -> 50, 3180 -> 100, -20 -> 0, 780 -> 25.
    scores = np.array([50.0, 100.0, 0.0, 25.0, 25.0, 25.0])
    assert row["task"] == "hopper-test" and row["method"] == "d3rlpy-td3bc"
    assert row["score_mean"] == pytest.approx(scores.mean())
    assert row["score_std"] == pytest.approx(scores.std())
    assert row["score_mean_per_eval_seed"] == pytest.approx([50.0, 25.0])
    assert row["episodes"] == 6 and row["seeds"] == [0, 1] and row["steps"] == 500
    assert row["nfe_per_step_mean"] == 1.0 and row["nfe_per_step_max"] == 1
    assert row["latency_ms_p50"] == pytest.approx(0.1) and row["latency_ms_p99"] == pytest.approx(0.5)
    assert row["return_mean"] == pytest.approx(np.mean([1580, 3180, -20, 780, 780, 780]))
    assert row["train_seconds"] == 12.5 and row["train_seeds"] == [0]
    assert row["peer_versions"] == {"d3rlpy": "2.8.1", "gymnasium": "1.0.0", "mujoco": "4.0.0",
                                    "torch": "2.13.0+cpu"}
    assert isinstance(row["commit"], str)


def test_train_seeds_pool_and_method_names():
    rows = peers.peer_row_fields(TASK, [_peer_json(0), _peer_json(1, offset=32.0)])
    assert rows["train_seeds"] == [0, 1] and rows["episodes"] == 12
    assert rows["score_mean_per_train_seed"][1] - rows["score_mean_per_train_seed"][0] == pytest.approx(1.0)
    assert rows["latency_ms_p50"] == pytest.approx(0.6) and rows["latency_ms_p99"] == pytest.approx(1.5)
    assert peers.peer_row(TASK, [_peer_json(algo="bc")])["method"] == "d3rlpy-bc"
    assert peers.peer_row(TASK, [_peer_json(algo="iql")])["method"] == "d3rlpy-iql"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("returns"), "missing key 'returns'"),
    (lambda d: d.update(steps="500"), "'steps' has type str"),
    (lambda d: d["returns"].pop(), "'returns' has 1 rows but there are 2 eval seeds"),
    (lambda d: d["returns"][1].pop(), "eval seed 1 has 2 entries, expected 3"),
    (lambda d: d["returns"][0].__setitem__(0, float("nan")), "non-finite"),
    (lambda d: d.update(algo="cql"), "unknown algo 'cql'"),
    (lambda d: d.update(env_id="Walker2d-v5"), "does not match task"),
    (lambda d: d.update(predict_latency_ms_p50=-1.0), "'predict_latency_ms_p50' must be finite"),
])
def test_malformed_peer_json_names_the_problem(mutate, message):
    bad = copy.deepcopy(_peer_json())
    mutate(bad)
    with pytest.raises(ValueError, match="peer.json") as exc:
        peers.peer_row_fields(TASK, [bad], sources=["peer.json"])
    assert message in str(exc.value)


def test_not_an_object_and_mismatched_seeds():
    with pytest.raises(ValueError, match="expected a JSON object"):
        peers.validate_peer_result([1, 2], "x.json")
    other = _peer_json(1)
    other["steps"] = 1000
    with pytest.raises(ValueError, match="'steps' is 1000"):
        peers.peer_row_fields(TASK, [_peer_json(0), other])
    with pytest.raises(ValueError, match="duplicate train seeds"):
        peers.peer_row_fields(TASK, [_peer_json(0), _peer_json(0)])


def test_merge_replaces_only_rerun_methods():
    old = [{"method": "d3rlpy-bc", "v": 1}, {"method": "d3rlpy-iql", "v": 1}]
    new = [{"method": "d3rlpy-bc", "v": 2}]
    from fastpolicy.evaluation.results import merge_rows

    merged = merge_rows(old, new, peers.row_key)
    assert merged == [{"method": "d3rlpy-iql", "v": 1}, {"method": "d3rlpy-bc", "v": 2}]


def test_merge_rows_keeps_other_label_conditions():
    from fastpolicy.evaluation.results import merge_rows
    old = [{"task": "t", "method": "d3rlpy-td3bc", "label_condition": c, "score_mean": 1.0}
           for c in ("labeled", "proxy")]
    new = [{"task": "t", "method": "d3rlpy-td3bc", "label_condition": "proxy", "score_mean": 2.0}]
    merged = merge_rows(old, new, peers.row_key)
    assert [(r["label_condition"], r["score_mean"]) for r in merged] == [("labeled", 1.0), ("proxy", 2.0)]
