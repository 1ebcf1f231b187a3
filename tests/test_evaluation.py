"""Closed-loop evaluation on a real task card: result rows, NFE accounting, CLI, and clear errors."""

import json

import numpy as np
import pytest

from fastpolicy.cli import main
from fastpolicy.evaluation import evaluate
from fastpolicy.evaluation.results import REQUIRED_FIELDS
from fastpolicy.policies.checkpoint import load_policy
from fastpolicy.train.offline import train_offline
from fastpolicy.train.trainer import TrainConfig


@pytest.fixture(scope="module")
def maze_teacher(tmp_path_factory):
    from fastpolicy.data.recipes import make_dataset

    root = tmp_path_factory.mktemp("maze")
    make_dataset("maze2d-umaze", root / "store", size=3000, seed=0, progress=False)
    cfg = TrainConfig(
        steps=10, batch_size=32, warmup_steps=2, checkpoint_every=10, progress=False, tensorboard=False
    )
    train_offline(
        root / "store",
        root / "run",
        "diffusion",
        {"backbone": "mlp", "backbone_kwargs": {"hidden": 32, "depth": 1}, "sampler": "ddim:4"},
        cfg,
        task="maze2d-umaze",
    )
    return root


def test_evaluate_row_has_schema_score_and_nfe(maze_teacher):
    policy = load_policy(maze_teacher / "run")
    row = evaluate(policy, "maze2d-umaze", episodes=2, seeds=[0], latency_steps=8, progress=False)
    assert set(REQUIRED_FIELDS) <= set(row)
    assert row["episodes"] == 2 and row["seeds"] == [0] and row["steps"] == 10
    # ddim:4 replans every Ta = 8 steps: mean NFE per control step is 4/8, the worst step costs 4.
    assert row["nfe_per_step_max"] == 4 and row["nfe_per_step_mean"] == pytest.approx(0.5, abs=0.02)
    assert row["latency_ms_p99"] >= row["latency_ms_p50"] > 0
    # The score is D4RL-normalised return: consistent with the raw return the row also carries.
    assert row["score_mean"] == pytest.approx(100 * (row["return_mean"] - 23.85) / (161.86 - 23.85))


def test_eval_cli_compares_samplers_and_writes_json(maze_teacher, capsys):
    out = maze_teacher / "eval.json"
    rc = main(
        [
            "eval",
            str(maze_teacher / "run"),
            "--task",
            "maze2d-umaze",
            "--episodes",
            "2",
            "--seeds",
            "1",
            "--sampler",
            "ddim:4",
            "ddim:2",
            "--latency-steps",
            "4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["teacher-ddim4", "teacher-ddim2"]
    assert [r["nfe_per_step_max"] for r in rows] == [4, 2]
    # which weights were measured: the checkpoint's content hash, in every row and in the table
    expected = "sha256:" + load_policy(maze_teacher / "run").checkpoint_hash
    assert {r["checkpoint_hash"] for r in rows} == {expected}
    out = capsys.readouterr().out
    assert "teacher-ddim2" in out and expected[:15] in out


def test_policy_for_another_task_is_refused_clearly(linear_store, tmp_path):
    train_offline(
        linear_store,
        tmp_path / "run",
        "bc",
        {"hidden": 8, "depth": 1},
        TrainConfig(steps=2, batch_size=8, checkpoint_every=2, progress=False, tensorboard=False),
    )
    with pytest.raises(ValueError, match="observation has 6 dims but the policy was trained on 2"):
        evaluate(load_policy(tmp_path / "run"), "maze2d-umaze", episodes=1, seeds=[0], latency_steps=0)


def test_eval_cli_unknown_task_is_one_line_error(maze_teacher, capsys):
    rc = main(["eval", str(maze_teacher / "run"), "--task", "no-such-task"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown task 'no-such-task'" in err and "Traceback" not in err


def test_lockstep_rollouts_are_reproducible(maze_teacher):
    policy = load_policy(maze_teacher / "run")
    a = evaluate(policy, "maze2d-umaze", episodes=2, seeds=[3], latency_steps=0, progress=False)
    b = evaluate(policy, "maze2d-umaze", episodes=2, seeds=[3], latency_steps=0, progress=False)
    assert a["return_mean"] == b["return_mean"] and np.isfinite(a["score_mean"])


def test_success_of_an_episode_that_ends_is_read_from_final_info():
    """Same-step autoreset: the finished env's top-level info is already its next episode's."""
    from fastpolicy.evaluation import _step_success

    info = {"success": np.array([False, False]), "final_info": {"success": np.array([True, False])},
            "_final_info": np.array([True, False])}
    assert _step_success(info, 2).tolist() == [True, False]
    assert _step_success({}, 3).tolist() == [False, False, False]


@pytest.mark.parametrize("episodes", [0, -3])
def test_evaluate_refuses_zero_or_negative_episodes(episodes):
    """0 used to mean "task default" and silently ran 10 episodes; None is the default."""
    with pytest.raises(ValueError, match=f"episodes must be ≥ 1.*got {episodes}"):
        evaluate(object(), "maze2d-umaze", episodes=episodes, seeds=[0], latency_steps=0)


def test_step_hook_sees_every_step_of_every_running_episode(maze_teacher):
    policy = load_policy(maze_teacher / "run")
    calls = []
    row = evaluate(policy, "maze2d-umaze", episodes=2, seeds=[4, 5], latency_steps=0, progress=False,
                   step_hook=lambda seed, venv, alive: calls.append((seed, alive.copy())))
    assert {seed for seed, _ in calls} == {4, 5}
    assert all(alive.shape == (2,) for _, alive in calls)
    # the hook saw exactly the steps the episodes ran
    steps_seen = sum(int(alive.sum()) for _, alive in calls)
    assert steps_seen == round(row["episode_length_mean"] * 4)


def test_measure_latency_stops_at_the_requested_planning_steps(maze_teacher):
    """ddim:4 at Ta 8 plans on one control step in eight: 5 timed plans need 40 timed control steps."""
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.rollouts import measure_latency

    stats = measure_latency(load_policy(maze_teacher / "run"), get_task("maze2d-umaze"), warmup=3,
                            planning_steps=5)
    assert sum(n > 0 for n in stats.nfe) == 5 and set(stats.nfe) == {0, 4}
    assert len(stats.nfe) == len(stats.latency_s) and 33 <= len(stats.nfe) <= 40
