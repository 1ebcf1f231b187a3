"""``fastpolicy explore`` (fastpolicy.rl.explore, fastpolicy.rl.cli): checkpoints, resume, store, actor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from fastpolicy.cli import main  # noqa: E402
from fastpolicy.rl.explore import ExploreConfig, explore, latest_checkpoint, load_actor  # noqa: E402

TASK = "agv-sparse-detour"
TINY = ["--task", TASK, "--num-envs", "8", "--n-steps", "32", "--batch-size", "64", "--n-epochs", "1",
        "--checkpoint-every", "256", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("algo", ["rnd-ppo", "rnd-simple"])
def test_explore_checkpoints_and_resumes_to_the_right_step_count(tmp_path, algo):
    run = tmp_path / "run"
    assert main(["explore", *TINY, "--algo", algo, "--steps", "512", "--out", str(run)]) == 0
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_0000000512.zip"
    assert (run / "checkpoints" / "step_0000000256.zip").exists()  # a periodic one, after 256 trained steps
    if algo == "rnd-simple":
        assert ckpt.with_name("step_0000000512.rnd.safetensors").exists()
    assert any((run / "tb").rglob("events.out.tfevents*"))
    curve = json.loads((run / "curve.json").read_text())
    assert [p["steps"] for p in curve][-1] == 512

    assert main(["explore", *TINY, "--algo", algo, "--steps", "768", "--out", str(run), "--resume"]) == 0
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_0000000768.zip"
    from stable_baselines3 import PPO

    from fastpolicy.rl.rnd import RNDPPO

    model = (RNDPPO if algo == "rnd-ppo" else PPO).load(ckpt, device="cpu")
    assert model.num_timesteps == 768
    steps = [p["steps"] for p in json.loads((run / "curve.json").read_text())]
    assert steps == sorted(steps) and steps[-1] == 768 and len(steps) == len(set(steps))
    # TensorBoard keeps writing into the same run folder.
    assert len([d for d in (run / "tb").iterdir() if d.is_dir()]) == 1


def test_explore_refuses_a_mismatched_or_missing_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["explore", *TINY, "--algo", "ppo", "--steps", "256", "--out", str(run), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["explore", *TINY, "--algo", "ppo", "--steps", "256", "--out", str(run)]) == 0
    assert main(["explore", *TINY, "--algo", "rnd-ppo", "--steps", "512", "--out", str(run), "--resume"]) == 2
    assert "algo='ppo'" in capsys.readouterr().err
    # A fresh start on a run with checkpoints would clobber it.
    assert main(["explore", *TINY, "--algo", "ppo", "--steps", "512", "--out", str(run)]) == 2
    assert main(["explore", *TINY, "--algo", "ppo", "--task", "no-such-task", "--steps", "256",
                 "--out", str(tmp_path / "x")]) == 2


def test_save_store_writes_a_valid_episode_store(tmp_path):
    from fastpolicy.data.store import EpisodeStore

    store_path = tmp_path / "store"
    cfg = ExploreConfig(task=TASK, algo="rnd-ppo", steps=512, num_envs=8, n_steps=32, batch_size=64,
                        n_epochs=1, obs_warmup_steps=4, tensorboard=False, progress=False)
    result = explore(tmp_path / "run", cfg, save_store=store_path)
    store = EpisodeStore.open(store_path)
    assert result.store == store_path
    assert store.n_steps == 512  # every transition of the run, none of the random warm-up
    for key in ("obs", "action", "reward", "terminal", "timeout", "infos/success", "infos/collision"):
        assert key in store.keys
    assert store.attrs["algo"] == "rnd-ppo" and store.attrs["task"] == TASK
    data = store.to_dict()
    assert data["obs"].shape == (512, 37) and data["action"].shape == (512, 2)
    assert np.abs(data["action"]).max() <= 1.0
    ends = store.episode_ends
    # Every episode ends in exactly one of: terminal, timeout (step limit or cut at the end of the run).
    last = ends - 1
    assert np.all(data["terminal"][last] | data["timeout"][last])
    inner = np.setdiff1d(np.arange(512), last)
    assert not np.any(data["terminal"][inner] | data["timeout"][inner])
    # Rewards are the environment's: -0.001 per step, +1 goal, -1 collision (+ step penalty), no bonus.
    allowed = np.array([-0.001, -1.001, 0.999])
    assert np.all(np.isclose(data["reward"][:, None], allowed, atol=1e-5).any(axis=1))
    assert np.isclose(data["reward"], -1.001, atol=1e-5).sum() == data["infos/collision"].sum() > 0
    assert np.array_equal(data["terminal"], data["infos/success"] | data["infos/collision"])


def test_exported_actor_matches_the_sb3_policy(tmp_path):
    cfg = ExploreConfig(task=TASK, algo="ppo", steps=256, num_envs=8, n_steps=32, batch_size=64, n_epochs=1,
                        tensorboard=False, progress=False)
    result = explore(tmp_path / "run", cfg)
    actor, config = load_actor(result.actor_dir)
    assert config["obs_dim"] == 37 and config["action_dim"] == 2 and config["algo"] == "ppo"
    from stable_baselines3 import PPO

    model = PPO.load(latest_checkpoint(tmp_path / "run"), device="cpu")
    obs = np.random.default_rng(0).uniform(0, 1, (5, 37)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    with torch.no_grad():
        got = np.clip(actor(torch.as_tensor(obs)).numpy(), -1, 1)
    np.testing.assert_allclose(got, expected, atol=1e-5)
