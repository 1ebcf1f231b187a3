"""RND machinery (fastpolicy.rl.rnd) and the SB3 VecEnv adapter (fastpolicy.rl.sb3_vec)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from fastpolicy.rl.rnd import (  # noqa: E402
    RNDPPO,
    RNDModule,
    RNDRewardWrapper,
    RNDRolloutBuffer,
    RunningMeanStd,
    gae,
)
from fastpolicy.rl.sb3_vec import GymnasiumVecEnv, make_sb3_vec_env  # noqa: E402

TASK = "agv-sparse-detour"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ intrinsic reward
def test_intrinsic_reward_higher_on_novel_than_on_seen_observations():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    seen = rng.normal(size=(256, 8)).astype(np.float32)
    novel = (rng.normal(size=(256, 8)) + 3.0).astype(np.float32)  # a region never trained on
    rnd = RNDModule(obs_dim=8, n_envs=1)
    rnd.update_obs_stats(seen)
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=1e-3)
    before = rnd.raw_intrinsic_reward(seen).mean()
    for _ in range(200):
        loss = rnd.predictor_loss(torch.as_tensor(seen), proportion=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after_seen = rnd.raw_intrinsic_reward(seen).mean()
    after_novel = rnd.raw_intrinsic_reward(novel).mean()
    assert after_seen < 0.2 * before
    assert after_novel > 5 * after_seen


def test_target_network_is_fixed_and_predictor_trains_on_a_fraction():
    torch.manual_seed(0)
    rnd = RNDModule(obs_dim=4, n_envs=1)
    target_before = [p.clone() for p in rnd.target.parameters()]
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=1e-3)
    loss = rnd.predictor_loss(torch.randn(4000, 4), proportion=0.25)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in rnd.target.parameters())
    assert all(torch.equal(a, b) for a, b in zip(target_before, rnd.target.parameters()))
    # The mask keeps ~25% of the samples: a sample outside it has no gradient path.
    x = torch.randn(4000, 4, requires_grad=True)
    rnd.predictor_loss(x, proportion=0.25).backward()
    used = (x.grad.abs().sum(1) > 0).float().mean().item()
    assert 0.2 < used < 0.3


# -------------------------------------------------------------------------------- normalisation
def test_running_mean_std_matches_whole_batch_statistics():
    rng = np.random.default_rng(1)
    data = rng.normal(loc=3.0, scale=2.0, size=(1000, 3))
    rms = RunningMeanStd((3,), epsilon=0.0)
    rms.count.fill_(0.0)
    for chunk in np.array_split(data, 7):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-10)


def test_observation_normalisation_uses_running_stats_and_clips_to_5():
    rnd = RNDModule(obs_dim=2, n_envs=1)
    rng = np.random.default_rng(2)
    rnd.update_obs_stats(rng.normal([10.0, -4.0], [2.0, 0.5], size=(20000, 2)))
    mean, std = rnd.obs_rms.mean.numpy(), rnd.obs_rms.std.numpy()
    np.testing.assert_allclose(mean, [10.0, -4.0], atol=0.05)
    np.testing.assert_allclose(std, [2.0, 0.5], atol=0.05)
    x = np.array([[12.0, -4.5], [1000.0, -1000.0]], dtype=np.float32)
    out = rnd.normalize_obs(x).numpy()
    np.testing.assert_allclose(out[0], (x[0] - mean) / std, rtol=1e-5)
    np.testing.assert_array_equal(out[1], [5.0, -5.0])
    # More data moves the statistics (they are running, not frozen at the first batch).
    rnd.update_obs_stats(np.full((20000, 2), 20.0))
    assert rnd.obs_rms.mean[0] > 14.0


def test_intrinsic_reward_is_divided_by_std_of_its_nonepisodic_discounted_sum():
    rnd = RNDModule(obs_dim=2, n_envs=2, gamma_int=0.5)
    rnd.ret_rms.count.fill_(0.0)
    rewards = np.array([[1.0, 2.0], [1.0, 0.0], [1.0, 4.0]])
    out = rnd.normalize_intrinsic(rewards)
    # forward filter per robot, never reset: r_0, 0.5 r_0 + r_1, ...
    discounted = np.array([[1.0, 2.0], [1.5, 1.0], [1.75, 4.5]])
    np.testing.assert_allclose(rnd.int_return_filter.numpy(), discounted[-1])
    np.testing.assert_allclose(out, rewards / discounted.std(), rtol=1e-6)


# ----------------------------------------------------------------------------- returns/advantage
def _hand_buffer(gamma=0.9, gamma_int=0.5, lam=1.0):
    from gymnasium import spaces

    obs_space = spaces.Box(-1, 1, (1,), np.float32)
    act_space = spaces.Box(-1, 1, (1,), np.float32)
    buf = RNDRolloutBuffer(3, obs_space, act_space, device="cpu", gae_lambda=lam, gamma=gamma, n_envs=1,
                           gamma_int=gamma_int, ext_coef=2.0, int_coef=1.0)
    # Steps 0, 1, 2; a new episode starts at step 2 (so step 1 ended one).
    for start in [1.0, 0.0, 1.0]:
        buf.add_transition(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), np.array([1.0]),
                           np.array([start]), torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1))
    buf.rewards_int[:] = np.array([[1.0], [1.0], [1.0]])
    buf.compute_returns_and_advantage(torch.zeros(1, 1), np.array([False]), torch.zeros(1, 1))
    return buf


def test_combined_advantage_is_2_ext_plus_int():
    buf = _hand_buffer()
    np.testing.assert_allclose(buf.advantages, 2.0 * buf.advantages_ext + 1.0 * buf.advantages_int)


def test_intrinsic_returns_run_across_episode_ends_extrinsic_returns_do_not():
    buf = _hand_buffer(gamma=0.9, gamma_int=0.5)
    # Zero values, lambda 1: returns are plain discounted sums. Extrinsic: the episode ends after step 1.
    np.testing.assert_allclose(buf.returns[:, 0], [1 + 0.9, 1.0, 1.0])
    # Intrinsic: one endless stream, 1 + 0.5 + 0.25 from step 0.
    np.testing.assert_allclose(buf.returns_int[:, 0], [1.75, 1.5, 1.0])


def test_gae_with_values_matches_hand_computation():
    rewards = np.array([[0.0], [1.0]], dtype=np.float32)
    values = np.array([[0.5], [0.2]], dtype=np.float32)
    adv = gae(rewards, values, None, np.array([0.4]), None, gamma=0.9, lam=0.8)
    d1 = 1.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    np.testing.assert_allclose(adv[:, 0], [d0 + 0.9 * 0.8 * d1, d1], rtol=1e-6)


# ------------------------------------------------------------------------------ the VecEnv adapter
def test_adapter_shapes_autoreset_and_terminal_observation():
    env = make_sb3_vec_env(TASK, 16, seed=0)
    assert isinstance(env, GymnasiumVecEnv)
    obs = env.reset()
    assert obs.shape == (16, *env.observation_space.shape) and obs.dtype == np.float32
    assert env.observation_space.contains(obs[0])
    rng = np.random.default_rng(0)
    saw_done = False
    for _ in range(120):
        obs, rewards, dones, infos = env.step(rng.uniform(-1, 1, (16, 2)).astype(np.float32))
        assert obs.shape == (16, 37) and rewards.shape == (16,) and dones.shape == (16,)
        assert rewards.dtype == np.float32 and dones.dtype == bool
        assert isinstance(infos, list) and len(infos) == 16
        for i in np.flatnonzero(dones):
            saw_done = True
            term = infos[i]["terminal_observation"]
            assert term.shape == (37,)
            assert not np.array_equal(term, obs[i])  # obs[i] is already the next episode's first
            assert "TimeLimit.truncated" in infos[i] and "episode" in infos[i] and "is_success" in infos[i]
        for i in np.flatnonzero(~dones):
            assert "terminal_observation" not in infos[i]
    assert saw_done
    assert env.get_attr("render_mode") == [None] * 16
    env.close()


def test_adapter_truncation_is_flagged_for_bootstrapping():
    import gymnasium as gym

    import fastpolicy.envs.agv  # noqa: F401 (registers the ids)

    venv = gym.make_vec("fastpolicy/AGV-SimpleStatic-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        max_episode_steps=5)
    env = GymnasiumVecEnv(venv)
    env.seed(3)
    env.reset()
    for _ in range(5):
        _, _, dones, infos = env.step(np.array([[-1.0, 0.0]] * 4, dtype=np.float32))  # stand still
    assert dones.all()
    assert all(info["TimeLimit.truncated"] for info in infos)
    assert all(info["episode"]["l"] == 5 for info in infos)


def test_adapter_seeding_reproduces():
    def run():
        env = make_sb3_vec_env(TASK, 4, seed=7)
        first = env.reset()
        obs, *_ = env.step(np.full((4, 2), 0.3, dtype=np.float32))
        return first, obs

    a, b = run(), run()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------------------- the algorithms
def test_rnd_ppo_learns_a_few_updates_and_saves_rnd_state(tmp_path):
    env = make_sb3_vec_env(TASK, 8, seed=0)
    model = RNDPPO("MlpPolicy", env, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu",
                   obs_warmup_steps=8)
    assert hasattr(model.policy, "value_net_int")
    model.learn(512)
    assert model.num_timesteps == 512
    assert model.obs_stats_warm
    assert float(model.rnd.obs_rms.count) > 8 * 8  # warm-up plus rollouts
    assert float(model.rnd.ret_rms.count) > 1
    model.save(tmp_path / "m.zip")
    loaded = RNDPPO.load(tmp_path / "m.zip", env=make_sb3_vec_env(TASK, 8, seed=1), device="cpu")
    for (k, a), b in zip(model.rnd.state_dict().items(), loaded.rnd.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.obs_stats_warm and loaded.num_timesteps == 512


def test_reward_wrapper_adds_scaled_intrinsic_reward():
    base = make_sb3_vec_env(TASK, 4, seed=0)
    env = RNDRewardWrapper(base, beta=0.5, update_every=4, epochs=1, batch_size=16)
    env.warmup(4, seed=0)
    env.reset()
    actions = np.array([[-1.0, 0.0]] * 4, dtype=np.float32)  # v = v_min = 0: stand still
    for _ in range(6):  # crosses one predictor update
        filt_before = env.rnd.int_return_filter.clone().numpy()
        count_before = float(env.rnd.ret_rms.count)
        obs, rewards, dones, infos = env.step(actions)
        raw = env.rnd.int_return_filter.numpy() - 0.99 * filt_before   # this step's raw intrinsic reward
        assert float(env.rnd.ret_rms.count) == count_before + 4
        std = float(env.rnd.ret_rms.std)
        ext = rewards - 0.5 * raw / std
        np.testing.assert_allclose(ext, -0.001, atol=1e-4)  # no goal or collision while standing still
    assert np.isfinite(env.last_predictor_loss)
