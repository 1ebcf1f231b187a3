"""SAC behaviour-policy training (fastpolicy.rl.sac) and the safetensors actor (fastpolicy.rl.actor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
pytest.importorskip("mujoco")

from fastpolicy.rl.actor import (  # noqa: E402
    ActorMeta,
    GaussianActor,
    actor_sha256,
    load_actor,
    meta_from_spaces,
    save_actor,
)
from fastpolicy.rl.sac import load_replay_arrays, read_latest, read_returns, train_sac  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sb3_sac(env_id: str, net_arch=(32, 32), seed: int = 0):
    import gymnasium as gym
    from stable_baselines3 import SAC

    env = gym.make(env_id)
    model = SAC("MlpPolicy", env, policy_kwargs={"net_arch": list(net_arch)}, buffer_size=100,
                learning_starts=0, seed=seed, device="cpu")
    return model, env


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5"])   # bounds [-2, 2] and [-1, 1]
def test_actor_roundtrip_matches_sb3_predict(tmp_path, env_id):
    model, env = _sb3_sac(env_id)
    # Perturb the freshly initialised weights so log_std is not ~0 everywhere (a stronger check).
    with torch.no_grad():
        model.policy.actor.log_std.bias.uniform_(-1.0, 0.5)
        model.policy.actor.mu.bias.uniform_(-0.5, 0.5)
    meta = meta_from_spaces(env.observation_space, env.action_space, [32, 32], env_id=env_id, step=7)
    path = save_actor(tmp_path / "actor", model.policy.actor.state_dict(), meta)
    assert path.suffix == ".safetensors" and (tmp_path / "actor.json").is_file()
    actor = load_actor(tmp_path / "actor")
    assert actor.meta == meta and len(actor_sha256(path)) == 64

    obs = np.stack([env.observation_space.sample() for _ in range(64)]).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    got, _ = actor.act(torch.as_tensor(obs), deterministic=True)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # The numpy rollout path is the same function.
    policy = actor.numpy_policy(deterministic=True)
    np.testing.assert_allclose(np.stack([policy(o)[0] for o in obs]), expected, atol=1e-5)

    # Log-probs equal SB3's squashed-Gaussian log-probs of the same (scaled) actions.
    sb3_actor = model.policy.actor
    stochastic, logp = actor.act(torch.as_tensor(obs), generator=torch.Generator().manual_seed(0))
    low, high = torch.as_tensor(env.action_space.low), torch.as_tensor(env.action_space.high)
    assert torch.all(stochastic >= low) and torch.all(stochastic <= high)
    with torch.no_grad():
        mean, log_std, _ = sb3_actor.get_action_dist_params(torch.as_tensor(obs))
        dist = sb3_actor.action_dist.proba_distribution(mean, log_std)
        sb3_logp = dist.log_prob(actor.scale(stochastic))
    np.testing.assert_allclose(logp.numpy(), sb3_logp.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(actor.log_prob(torch.as_tensor(obs), stochastic).numpy(), logp.numpy(),
                               rtol=1e-4, atol=1e-3)
    env.close()


def test_numpy_policy_is_seeded(tmp_path):
    meta = ActorMeta(obs_dim=4, act_dim=2, action_low=[-1, -1], action_high=[1, 1], net_arch=[8])
    torch.manual_seed(0)
    actor = GaussianActor(meta)
    obs = np.ones(4, dtype=np.float32)
    a = [actor.numpy_policy(seed=3)(obs)[0] for _ in range(2)]
    b = actor.numpy_policy(seed=4)(obs)[0]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.allclose(a[0], b)


def test_actor_files_are_validated(tmp_path):
    meta = ActorMeta(obs_dim=4, act_dim=2, action_low=[-1, -1], action_high=[1, 1], net_arch=[8])
    with pytest.raises(RuntimeError):   # tensors that do not fit the metadata are refused when saving
        save_actor(tmp_path / "a", GaussianActor(ActorMeta(4, 3, [-1] * 3, [1] * 3, [8])).state_dict(), meta)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_actor(tmp_path / "missing")
    save_actor(tmp_path / "a", GaussianActor(meta).state_dict(), meta)
    data = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps({**data, "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        load_actor(tmp_path / "a")


def test_train_sac_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    kw = dict(checkpoint_every=100, eval_episodes=1, learning_starts=50, buffer_size=2000, net_arch=[32, 32],
              progress=False, tensorboard=False, log=lambda _: None)
    first = train_sac("Hopper-v5", 200, out, **kw)
    assert first.step == 200 and first.resumed_from is None
    assert [r["step"] for r in read_returns(out)] == [100, 200]
    assert read_latest(out)["step"] == 200
    for step in (100, 200):
        actor = load_actor(out / "checkpoints" / f"step_{step:08d}" / "actor")
        assert actor.meta.step == step and actor.meta.env_id == "Hopper-v5"
        assert actor.meta.eval_return == pytest.approx(read_returns(out)[step // 100 - 1]["mean_return"])
    saved = load_replay_arrays(out / read_latest(out)["replay"])
    assert len(saved["rewards"]) == 200 and len(list(out.glob("replay_*.npz"))) == 1
    # Per-transition infos line up with the observations (Hopper obs = qpos[1:], clip(qvel, ±10)).
    np.testing.assert_allclose(saved["observations"][:, :5], saved["infos_qpos"][:, 1:], atol=1e-12)
    np.testing.assert_allclose(saved["observations"][:, 5:], np.clip(saved["infos_qvel"], -10, 10),
                               atol=1e-12)
    assert np.allclose(saved["infos_action_log_probs"][:50], -3 * np.log(2.0))   # uniform warm-up actions
    assert np.all(np.isfinite(saved["infos_action_log_probs"]))

    with pytest.raises(FileExistsError, match="resume"):
        train_sac("Hopper-v5", 300, out, **kw)
    with pytest.raises(ValueError, match="Hopper-v5"):
        train_sac("Walker2d-v5", 300, out, resume=True, **kw)

    second = train_sac("Hopper-v5", 300, out, resume=True, **kw)
    assert second.resumed_from == 200 and second.step == 300
    assert [r["step"] for r in read_returns(out)] == [100, 200, 300]
    resumed = load_replay_arrays(out / read_latest(out)["replay"])
    assert len(resumed["rewards"]) == 300 and list(resumed["cuts"]) == [200]
    for key in ("observations", "actions", "rewards", "dones", "infos_qpos"):
        np.testing.assert_array_equal(resumed[key][:200], saved[key])   # the buffer survived the resume
    # Nothing left to do: returns at once.
    assert train_sac("Hopper-v5", 300, out, resume=True, **kw).step == 300


@pytest.mark.slow
def test_train_behavior_script_stops_cleanly_on_sigterm(tmp_path):
    """CleanRL-style smoke test of scripts/train_behavior.py: SIGTERM makes it checkpoint and exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_behavior.py"
    out = tmp_path / "run"
    args = [sys.executable, str(script), "--env", "Hopper-v5", "--out", str(out), "--checkpoint-every",
            "100000", "--learning-starts", "50", "--eval-episodes", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*args, "--steps", "100000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "progress.log").is_file() or "start" not in (out / "progress.log").read_text():
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    stopped = read_latest(out)["step"]
    assert 0 < stopped < 100000 and [r["step"] for r in read_returns(out)] == [stopped]
    assert f"stopped at step {stopped}" in (out / "progress.log").read_text()
    # (resuming is tested in-process above; a second interpreter start would double this test's time)
