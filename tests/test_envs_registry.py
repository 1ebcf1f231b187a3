"""Task registry: loading and validating task cards, making envs, normalized scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastpolicy.envs.registry import TaskSpec, get_task, list_tasks, load_task_card, make_env, make_vector_env

ROOT = Path(__file__).resolve().parents[1]

CARD = """\
name: {name}
env_id: PointMaze_UMaze-v3
import_module: gymnasium_robotics
max_episode_steps: 300
score: {{kind: d4rl, ref_min: 23.85, ref_max: 161.86}}
"""


@pytest.fixture
def tasks_dir(tmp_path, monkeypatch):
    """An isolated cards folder (``FASTPOLICY_TASKS_DIR``) holding two valid cards."""
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text(CARD.format(name=name))
    monkeypatch.setenv("FASTPOLICY_TASKS_DIR", str(tmp_path))
    return tmp_path


def test_every_card_in_the_repository_loads():
    cards = sorted((ROOT / "envs").glob("*.yaml"))
    assert {"maze2d-umaze", "maze2d-medium", "maze2d-large"} <= set(list_tasks())
    for path in cards:
        task = load_task_card(path)
        assert task.name == path.stem


def test_get_task_fields():
    task = get_task("maze2d-medium")
    assert isinstance(task, TaskSpec)
    assert task.env_id == "PointMaze_Medium-v3" and task.max_episode_steps == 600
    assert task.horizons == {"obs": 2, "pred": 16, "action": 8}
    assert task.score == {"kind": "d4rl", "ref_min": 13.13, "ref_max": 277.39}
    assert task.env_kwargs == {"continuing_task": True, "reset_target": False}
    assert task.reference["label"] == "D4RL-style (gymnasium-robotics v3)"


def test_unknown_task_lists_known_ones(tasks_dir):
    with pytest.raises(ValueError, match="no-such-task") as err:
        get_task("no-such-task")
    assert "alpha" in str(err.value) and "beta" in str(err.value)


def test_card_with_unknown_key_is_rejected(tasks_dir):
    (tasks_dir / "gamma.yaml").write_text(CARD.format(name="gamma") + "episode_len: 5\n")
    with pytest.raises(ValueError, match="episode_len"):
        get_task("gamma")


def test_d4rl_card_without_ref_max_is_rejected(tasks_dir):
    (tasks_dir / "delta.yaml").write_text(CARD.format(name="delta").replace(", ref_max: 161.86", ""))
    with pytest.raises(ValueError, match="ref_max") as err:
        get_task("delta")
    assert "ref_min" not in str(err.value)  # names exactly what is missing


@pytest.mark.parametrize("drop", ["name", "env_id", "max_episode_steps"])
def test_card_missing_required_key_is_rejected(tmp_path, drop):
    text = "\n".join(line for line in CARD.format(name="x").splitlines() if not line.startswith(drop + ":"))
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=drop):
        load_task_card(path)


def test_card_with_bad_score_is_rejected(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(CARD.format(name="x").replace("score: {kind: d4rl, ref_min: 23.85, ref_max: 161.86}",
                                                  "score: d4rl"))
    with pytest.raises(ValueError, match="score"):
        load_task_card(path)


def test_normalized_score_matches_d4rl_formula():
    task = get_task("maze2d-umaze")
    lo, hi = 23.85, 161.86
    returns = np.array([0.0, 23.85, 161.86, 250.0])
    np.testing.assert_allclose(task.normalized_score(returns), 100 * (returns - lo) / (hi - lo))
    assert task.normalized_score(161.86) == pytest.approx(100.0)
    assert isinstance(task.normalized_score(100.0), float)
    raw = TaskSpec(name="r", env_id="x", max_episode_steps=1, score={"kind": "success"})
    assert raw.normalized_score(0.7) == 0.7  # only d4rl cards normalise


def test_make_env_applies_wrapper_and_time_limit():
    pytest.importorskip("gymnasium_robotics")
    env = make_env("maze2d-umaze")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (6,)  # fastpolicy.envs.maze:wrap_maze was applied
    steps, truncated = 0, False
    while not truncated:
        obs, _, terminated, truncated, _ = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated  # continuing task
        steps += 1
    assert steps == 300
    env.close()


def test_make_vector_env():
    pytest.importorskip("gymnasium_robotics")
    envs = make_vector_env("maze2d-umaze", num_envs=2)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs.shape == (2, 6) and obs.dtype == np.float32
    assert not np.array_equal(obs[0], obs[1])
    obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 2), dtype=np.float32))
    assert obs.shape == (2, 6) and reward.shape == (2,) and "success" in info
    envs.close()


def test_card_normalization_is_validated_and_defaults_filled(tasks_dir):
    (tasks_dir / "eps.yaml").write_text(CARD.format(name="eps") + "normalization: {obs: gaussian}\n")
    assert get_task("eps").normalization == {"obs": "gaussian", "action": "limits"}
    (tasks_dir / "zeta.yaml").write_text(CARD.format(name="zeta") + "normalization: {obs: zscore}\n")
    with pytest.raises(ValueError, match="zscore"):
        get_task("zeta")


def test_task_card_teacher_options_are_validated_and_applied(tmp_path, linear_store):
    from fastpolicy.envs.registry import get_task, load_task_card
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

    card = tmp_path / "t.yaml"
    card.write_text("name: t\nenv_id: X-v0\nmax_episode_steps: 5\nteacher: {temperature: 0.5}\n")
    with pytest.raises(ValueError, match="teacher may set"):
        load_task_card(card)
    assert get_task("walker2d-medium").teacher == {"prediction_type": "v_prediction"}
    cfg = TrainConfig(steps=1, batch_size=4, warmup_steps=1, progress=False, tensorboard=False)
    policy, _ = train_offline(linear_store, tmp_path / "run", "diffusion", {"backbone": "mlp"}, cfg,
                              task="walker2d-medium")
    assert policy.config.prediction_type == "v_prediction" and policy.config.obs_horizon == 1
    # an explicit option wins over the card
    policy, _ = train_offline(linear_store, tmp_path / "run2", "diffusion",
                              {"backbone": "mlp", "prediction_type": "sample"}, cfg, task="walker2d-medium")
    assert policy.config.prediction_type == "sample"
