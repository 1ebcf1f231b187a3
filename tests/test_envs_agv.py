"""AGV warehouse env (fastpolicy.envs.agv): gymnasium contract, registration and make_vec, autoreset,
bit-for-bit reproducibility, strict layout loading, rendering, the expert and the dataset recipe."""

from __future__ import annotations

import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import fastpolicy.envs.agv as agv_pkg
from fastpolicy.envs.agv.env import AGVEnv
from fastpolicy.envs.agv.layout import load_layout
from fastpolicy.envs.agv.vector import AGVVectorEnv


@pytest.mark.parametrize("layout", ["simple-static", "complex-dynamic"])
def test_check_env_passes(layout):
    env = gym.make(f"fastpolicy/AGV-{layout.title().replace('-', '')}-v0", render_mode="rgb_array")
    assert isinstance(env.unwrapped, AGVEnv)
    check_env(env.unwrapped, skip_render_check=False)


def test_step_semantics_and_info():
    env = gym.make("fastpolicy/AGV-SimpleStatic-v0")
    assert env.spec.max_episode_steps == 2000
    obs, info = env.reset(seed=0)
    assert obs.shape == (37,) and obs.dtype == np.float32
    base = env.unwrapped
    # Drive straight into the nearest wall: the episode must end in a collision worth -1.
    base.core.pose[0, 2] = 0.0
    base.core.pose[0, :2] = [15.65, 6.0]
    obs, r, term, trunc, info = env.step(np.array([1.0, 0.0], dtype=np.float32))
    assert term and not trunc and info["collision"] and not info["success"]
    assert r == pytest.approx(-1.001)
    assert sum(info["reward_terms"].values()) == pytest.approx(r)
    # Put the goal just ahead: reached on this step.
    env.reset(seed=1)
    base.core.goal[0] = base.core.pose[0, :2] + 0.05 * np.array([np.cos(base.core.pose[0, 2]),
                                                                 np.sin(base.core.pose[0, 2])])
    _, r, term, _, info = env.step(np.array([-1.0, 0.0], dtype=np.float32))   # v = 0: stays within tolerance
    assert term and info["success"] and r == pytest.approx(0.999)


def test_registered_ids_and_make_vec():
    for tier, (env_id, limit) in agv_pkg.TIERS.items():
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == limit and spec.kwargs["layout"] == tier
        assert spec.vector_entry_point == "fastpolicy.envs.agv.vector:AGVVectorEnv"
    venv = gym.make_vec("fastpolicy/AGV-ComplexDynamic-v0", num_envs=8,
                        vectorization_mode="vector_entry_point")
    assert isinstance(venv, AGVVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert venv.max_episode_steps == 4000
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (8, 37) and venv.observation_space.shape == (8, 37)
    assert venv.action_space.shape == (8, 2)
    assert venv.observation_space.contains(obs)


def test_vector_autoreset_same_step():
    venv = AGVVectorEnv(num_envs=32, layout="simple-static", max_episode_steps=30)
    obs, _ = venv.reset(seed=3)
    rng = np.random.default_rng(0)
    ended_by = {"terminated": False, "truncated": False}
    for _ in range(40):
        obs, rew, term, trunc, info = venv.step(rng.uniform(-1, 1, (32, 2)))
        done = term | trunc
        if done.any():
            assert (info["_final_obs"] == done).all()
            assert (venv.core.tstep[done] == 0).all() and (venv.core.tstep[~done] > 0).all()
            # The returned observation of a finished robot is its new episode's first one.
            assert not np.array_equal(info["final_obs"][done], obs[done])
            assert (info["final_info"]["collision"][term] | info["final_info"]["success"][term]).all()
            assert (obs[done, -2:] == 0).all()                     # fresh episode: v = omega = 0
        ended_by["terminated"] |= bool(term.any())
        ended_by["truncated"] |= bool(trunc.any())
        assert venv.observation_space.contains(obs)
    assert ended_by == {"terminated": True, "truncated": True}


def _rollout_vector(backend, seed, steps=200, n=24):
    venv = AGVVectorEnv(num_envs=n, layout="complex-dynamic", max_episode_steps=100, backend=backend)
    obs, _ = venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [obs]
    rewards = []
    for _ in range(steps):
        obs, r, term, trunc, _ = venv.step(rng.uniform(-1, 1, (n, 2)))
        out.append(obs)
        rewards.append(np.stack([r, term, trunc]))
    return np.stack(out), np.stack(rewards)


def test_seeded_rollouts_reproduce_bit_for_bit():
    obs_a, rew_a = _rollout_vector("numba", 7)
    obs_b, rew_b = _rollout_vector("numba", 7)
    assert np.array_equal(obs_a, obs_b) and np.array_equal(rew_a, rew_b)
    obs_c, _ = _rollout_vector("numba", 8)
    assert not np.array_equal(obs_a, obs_c)
    # The single env too, through gym.make.
    runs = []
    for _ in range(2):
        env = gym.make("fastpolicy/AGV-SimpleDynamic-v0")
        env.action_space.seed(5)
        trace = [env.reset(seed=5)[0]]
        for _ in range(300):
            obs, r, term, trunc, _ = env.step(env.action_space.sample())
            trace.append(np.append(obs, [r, term, trunc]))
            if term or trunc:
                trace.append(env.reset()[0])
        runs.append(np.concatenate(trace))
    assert np.array_equal(runs[0], runs[1])


def test_vector_numpy_backend_matches_numba_with_autoreset():
    obs_a, rew_a = _rollout_vector("numba", 11, steps=150)
    obs_b, rew_b = _rollout_vector("numpy", 11, steps=150)
    assert rew_a[:, 1].sum() > 0                                   # episodes ended and were reset
    np.testing.assert_allclose(obs_a, obs_b, atol=1e-6, rtol=0)
    np.testing.assert_allclose(rew_a, rew_b, atol=1e-12)


GOOD = """
name: tiny
size: [10.0, 8.0]
shelves:
  - [4.0, 0.0, 5.0, 6.0]
start_regions: [[0.6, 0.6, 2.0, 7.4]]
goal_regions: [[8.0, 0.6, 9.4, 7.4]]
"""


def _write(tmp_path, text):
    path = tmp_path / "layout.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_layout_loads(tmp_path):
    layout = load_layout(_write(tmp_path, GOOD))
    assert layout.shelves.shape == (1, 4) and layout.num_obstacles == 0
    assert layout.free_space.any()
    env = AGVEnv(layout=layout)
    obs, _ = env.reset(seed=0)
    assert np.isfinite(obs).all()


@pytest.mark.parametrize("text, message", [
    (GOOD + "colour: red\n", r"unknown keys \['colour'\]"),
    (GOOD.replace("size: [10.0, 8.0]", "size: [10.0, 8.0]\nrobot: {radius: 0.3, wheels: 4}"),
     r"robot: unknown keys \['wheels'\]"),
    (GOOD.replace("[4.0, 0.0, 5.0, 6.0]", "[4.0, 0.0, 11.0, 6.0]"), r"shelves\[0\].*out of bounds"),
    (GOOD + "obstacles:\n  - {radius: 0.3, from: [1.0, 1.0], to: [12.0, 1.0], speed: 0.5}\n",
     r"obstacles\[0\].*to=.*out of bounds"),
    (GOOD.replace("start_regions: [[0.6, 0.6, 2.0, 7.4]]", "start_regions: [[4.2, 1.0, 4.8, 2.0]]"),
     r"start region 0 .* inside an obstacle \(shelf 0"),
    (GOOD.replace("goal_regions: [[8.0, 0.6, 9.4, 7.4]]", "goal_regions: [[3.9, 6.05, 3.95, 6.1]]"),
     r"goal region 0 .* inside an obstacle"),
    (GOOD.replace("[4.0, 0.0, 5.0, 6.0]", "[4.0, 0.0, 5.0, 7.6]"), r"goal region 0 .* unreachable"),
    (GOOD.replace("name: tiny\n", ""), r"missing required key 'name'"),
])
def test_bad_layouts_name_the_problem(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_layout(_write(tmp_path, text))


def test_unknown_layout_name():
    with pytest.raises(ValueError, match="unknown AGV layout"):
        AGVEnv(layout="no-such-layout")


def test_render_and_trajectory_plot(tmp_path):
    from fastpolicy.envs.agv.render import plot_trajectories

    env = AGVEnv(layout="complex-dynamic", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 5        # shelves, robot, goal, obstacles, rays
    xy = np.cumsum(np.random.default_rng(0).normal(0, 0.1, (50, 2)), axis=0) + 5
    path = plot_trajectories(env.layout, [xy, {"xy": xy + 1, "success": True, "goal": xy[-1]}],
                             tmp_path / "traj.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_expert_succeeds_on_simple_static():
    from fastpolicy.envs.agv.expert import measure_expert

    result = measure_expert("simple-static", episodes=10, seed=123)
    assert result["success_rate"] >= 0.9, result


def test_recipe_writes_valid_store(tmp_path):
    from fastpolicy.data.recipes import all_recipes, make_dataset
    from fastpolicy.data.store import EpisodeStore

    names = {f"agv-{t}-expert" for t in agv_pkg.TIERS}
    assert names <= set(all_recipes())
    make_dataset("agv-simple-static-expert", tmp_path / "ds", size=400, seed=0, progress=False)
    store = EpisodeStore.open(tmp_path / "ds")
    assert store.n_steps == 400
    attrs = store.attrs
    assert attrs["env_id"] == "fastpolicy/AGV-SimpleStatic-v0"
    assert attrs["recipe"] == "agv-simple-static-expert"
    assert attrs["task"] == "agv-simple-static" and attrs["seed"] == 0
    assert 0 < attrs["expert_success_rate"] <= 1
    data = store.to_dict()
    assert data["obs"].shape == (400, 37) and data["action"].shape == (400, 2)
    assert np.abs(data["action"]).max() <= 1.0
    ends = store.episode_ends
    # Every complete episode ends in a goal; the last one was cut to fit the size and says so.
    assert data["infos/success"][ends[:-1] - 1].all() and data["terminal"][ends[:-1] - 1].all()
    assert data["terminal"][-1] or data["timeout"][-1]
