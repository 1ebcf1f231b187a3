"""D4RL-style MuJoCo recipes (fastpolicy.data.recipes.mujoco) and data cards (fastpolicy.data.datacard).

A tiny random actor made here stands in for the committed SAC actors; a hand-made run directory stands
in for a SAC run's replay buffer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from fastpolicy.data import recipes  # noqa: E402
from fastpolicy.data.d4rl import export_d4rl, import_d4rl, qlearning_dataset  # noqa: E402
from fastpolicy.data.datacard import datacard_paths, read_datacard  # noqa: E402
from fastpolicy.data.recipes import mujoco  # noqa: E402
from fastpolicy.data.recipes.mujoco import select_expert_checkpoint, select_medium_checkpoint  # noqa: E402
from fastpolicy.data.store import EpisodeStore  # noqa: E402
from fastpolicy.rl.actor import ActorMeta, GaussianActor, actor_sha256, load_actor, save_actor  # noqa: E402

RETURNS = [(10_000, 20.0), (20_000, 310.0), (30_000, 1070.0), (40_000, 900.0), (50_000, 2400.0),
           (60_000, 2700.0)]


def test_select_medium_checkpoint_first_crossing_not_best():
    assert select_medium_checkpoint(RETURNS, 1064.0) == 30_000           # not 60k (best), not 50k
    assert select_medium_checkpoint(list(reversed(RETURNS)), 1064.0) == 30_000   # order does not matter
    assert select_medium_checkpoint(RETURNS, 1070.0) == 30_000           # >= threshold counts
    assert select_medium_checkpoint(RETURNS, 1070.1) == 50_000           # the dip at 40k does not count
    assert select_medium_checkpoint([(5, float("nan")), (6, 2000.0)], 1064.0) == 6
    with pytest.raises(ValueError, match="2700.0 at step 60000"):
        select_medium_checkpoint(RETURNS, 3000.0)
    with pytest.raises(ValueError, match="no checkpoints"):
        select_medium_checkpoint([], 1.0)


def test_select_expert_checkpoint_is_last_and_must_be_in_band():
    assert select_expert_checkpoint(RETURNS, 2587.4) == 60_000
    with pytest.raises(ValueError, match="expert band"):
        select_expert_checkpoint(RETURNS[:-1], 2587.4)   # last (50k) is below, although it is the best


def test_every_env_and_band_is_registered():
    names = recipes.all_recipes()
    for env in ("hopper", "halfcheetah", "walker2d"):
        for band in mujoco.BANDS:
            assert f"{env}-{band}" in names


@pytest.fixture()
def behavior(tmp_path, monkeypatch):
    """A tiny Hopper actor as both 'medium' and 'expert'; runs dir pointed at an empty temp folder."""
    folder = tmp_path / "behavior"
    torch.manual_seed(0)
    for i, band in enumerate(("medium", "expert")):
        meta = ActorMeta(obs_dim=11, act_dim=3, action_low=[-1.0] * 3, action_high=[1.0] * 3,
                         net_arch=[16, 16], env_id="Hopper-v5", step=30_000 * (i + 1),
                         eval_return=1100.0 + 2000 * i,
                         extra={"stochastic_eval_return": 900.0, "run_steps_reached": 60_000,
                                "return_curve": [list(r) + [0.0] for r in RETURNS]})
        save_actor(folder / f"hopper-{band}", GaussianActor(meta).state_dict(), meta)
    monkeypatch.setenv("FASTPOLICY_BEHAVIOR_DIR", str(folder))
    monkeypatch.setenv("FASTPOLICY_SAC_RUNS", str(tmp_path / "runs"))
    return folder


def _same_store(a: EpisodeStore, b: EpisodeStore) -> None:
    assert a.keys == b.keys
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in a.keys:
        np.testing.assert_array_equal(a.array(key), b.array(key), err_msg=key)
    strip = lambda attrs: {k: v for k, v in attrs.items() if k != "fastpolicy_version"}  # noqa: E731
    assert strip(a.attrs) == strip(b.attrs)


def test_medium_same_seed_identical_store_and_d4rl_semantics(tmp_path, behavior):
    a = recipes.make_dataset("hopper-medium", tmp_path / "a", size=1500, seed=3, progress=False)
    b = recipes.make_dataset("hopper-medium", tmp_path / "b", size=1500, seed=3, progress=False)
    c = recipes.make_dataset("hopper-medium", tmp_path / "c", size=1500, seed=4, progress=False)
    _same_store(a, b)
    assert not np.array_equal(a.array("action"), c.array("action"))

    assert a.n_steps == 1500
    attrs = a.attrs
    assert attrs["recipe"] == "hopper-medium" and attrs["env_id"] == "Hopper-v5" and attrs["seed"] == 3
    assert attrs["checkpoint_step"] == 30_000 and attrs["task"] == "hopper-medium"
    assert attrs["actor_sha256"] == actor_sha256(behavior / "hopper-medium.safetensors")
    assert attrs["ref_min_score"] == -20.272305 and attrs["ref_max_score"] == 3234.3
    assert attrs["label"] == "D4RL-style (gymnasium v5)"
    for key in ("infos/qpos", "infos/qvel", "infos/action_log_probs", "next_obs"):
        assert key in a.keys

    obs, qpos, qvel = a.array("obs"), a.array("infos/qpos"), a.array("infos/qvel")
    np.testing.assert_allclose(obs[:, :5], qpos[:, 1:], atol=1e-6)               # the state the obs shows
    np.testing.assert_allclose(obs[:, 5:], np.clip(qvel, -10, 10), atol=1e-5)
    actor = load_actor(behavior / "hopper-medium")
    logp = actor.log_prob(torch.as_tensor(obs), torch.as_tensor(a.array("action")))
    np.testing.assert_allclose(a.array("infos/action_log_probs"), logp.numpy(), rtol=1e-3, atol=1e-3)

    terminal, timeout = a.array("terminal"), a.array("timeout")
    assert not np.any(terminal & timeout)
    last = a.episode_ends - 1
    assert np.all((terminal | timeout)[last][:-1])                 # every episode but the cut one is flagged
    assert not np.any((terminal | timeout)[np.setdiff1d(np.arange(a.n_steps), last)])
    assert np.all(a.episode_lengths[timeout[last]] == 1000)        # timeouts only at the time limit
    # next_obs is the observation that followed, inside an episode
    inner = np.setdiff1d(np.arange(a.n_steps - 1), last)
    np.testing.assert_array_equal(a.array("next_obs")[inner], obs[inner + 1])


def test_timeouts_at_the_limit_and_uniform_log_probs(tmp_path, behavior):
    store = recipes.make_dataset("halfcheetah-random", tmp_path / "hc", size=2300, seed=0, progress=False)
    np.testing.assert_array_equal(store.episode_ends, [1000, 2000, 2300])   # HalfCheetah never terminates
    timeout, terminal = store.array("timeout"), store.array("terminal")
    assert np.flatnonzero(timeout).tolist() == [999, 1999] and not terminal.any()
    assert np.allclose(store.array("infos/action_log_probs"), -6 * np.log(2.0))
    card = read_datacard(tmp_path / "hc")
    assert card["sizes"] == {**card["sizes"], "steps": 2300, "episodes": 3, "timeout_episodes": 2,
                             "unflagged_episodes": 1}
    assert card["returns"]["count"] == 2 and card["returns"]["excluded_size_cut_episodes"] == 1


def test_medium_expert_concatenates_and_expert_requires_the_band(tmp_path, behavior):
    store = recipes.make_dataset("hopper-medium-expert", tmp_path / "me", size=1000, seed=0, progress=False)
    assert store.n_steps == 1000
    assert store.attrs["checkpoint_step"] == {"medium": 30_000, "expert": 60_000}
    assert [b["steps"] for b in store.attrs["behavior"]] == [500, 500]
    (behavior / "hopper-expert.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="expert band"):
        recipes.make_dataset("hopper-expert", tmp_path / "ex", size=100, seed=0, progress=False)
    with pytest.raises(FileNotFoundError, match="expert band"):
        recipes.make_dataset("hopper-medium-expert", tmp_path / "me2", size=100, seed=0, progress=False)
    assert not (tmp_path / "me2").exists()


def test_datacard_written_next_to_store(tmp_path, behavior):
    recipes.make_dataset("hopper-medium", tmp_path / "hm", size=600, seed=0, progress=False)
    card_path, png_path = datacard_paths(tmp_path / "hm")
    assert card_path.name == "hm.datacard.json" and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = json.loads(card_path.read_text())
    assert card["label"] == "D4RL-style (gymnasium v5)" and card["recipe"] == "hopper-medium"
    assert card["seed"] == 0 and card["checkpoint_step"] == 30_000 and card["sizes"]["steps"] == 600
    d4rl = card["reference_scores"]["d4rl"]
    assert d4rl["ref_max"] == 3234.3 and d4rl["ref_min"] == -20.272305
    local = card["reference_scores"]["local"]
    assert local["random_return"] > 0 and local["medium_policy_eval_return_deterministic"] == 1100.0
    assert card["training"]["run_steps_reached"] == 60_000 and card["training"]["expert_band_reached"]
    assert card["availability"]["medium-replay"].startswith("no:")
    assert card["command"] == "fastpolicy data make hopper-medium --size 600 --seed 0"


def _fake_run(root, rows=900, medium_step=600):
    """A SAC run directory by hand: config, returns, latest and a replay buffer with known flags."""
    run = root / "sac-hopper"
    (run / "checkpoints").mkdir(parents=True)
    rng = np.random.default_rng(0)
    dones = np.zeros(rows, dtype=np.float32)
    timeouts = np.zeros(rows, dtype=np.float32)
    dones[[99, 299, 499]] = 1          # two terminations and one time limit (at 299)
    timeouts[299] = 1
    arrays = {
        "observations": rng.standard_normal((rows, 11)), "next_observations": rng.standard_normal((rows, 11)),
        "actions": rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
        "rewards": rng.random(rows).astype(np.float32),
        "dones": dones, "timeouts": timeouts, "infos_qpos": rng.standard_normal((rows, 6)),
        "infos_qvel": rng.standard_normal((rows, 6)), "infos_action_log_probs": rng.standard_normal(rows),
        "pos": np.array(rows), "full": np.array(False), "step": np.array(rows), "cuts": np.array([400]),
    }
    np.savez(run / f"replay_step_{rows:08d}.npz", **arrays)
    (run / "config.json").write_text(json.dumps({"env_id": "Hopper-v5", "seed": 0}))
    (run / "latest.json").write_text(json.dumps({"step": rows, "checkpoint": "checkpoints/x",
                                                 "replay": f"replay_step_{rows:08d}.npz"}))
    (run / "returns.json").write_text(json.dumps([{"step": s, "mean_return": r} for s, r in
                                                  [(300, 500.0), (medium_step, 1100.0), (900, 2000.0)]]))
    return arrays


def test_medium_replay_from_the_runs_buffer(tmp_path, behavior):
    arrays = _fake_run(tmp_path / "runs")
    store = recipes.make_dataset("hopper-medium-replay", tmp_path / "mr", progress=False)
    assert store.n_steps == 600                                   # rows up to the medium checkpoint only
    np.testing.assert_array_equal(store.episode_ends, [100, 300, 400, 500, 600])
    terminal, timeout = store.array("terminal"), store.array("timeout")
    assert np.flatnonzero(terminal).tolist() == [99, 499]
    assert np.flatnonzero(timeout).tolist() == [299, 399, 599]   # time limit, resume cut, medium cut
    np.testing.assert_allclose(store.array("obs"), arrays["observations"][:600].astype(np.float32))
    np.testing.assert_allclose(store.array("infos/qpos"), arrays["infos_qpos"][:600])
    assert store.attrs["checkpoint_step"] == 600 and store.attrs["medium_actor_matches_run"] is False
    assert store.attrs["behavior"]["resume_cuts"] == [400]
    small = recipes.make_dataset("hopper-medium-replay", tmp_path / "mr2", size=250, progress=False)
    np.testing.assert_array_equal(small.episode_ends, [100, 250])


def test_medium_replay_without_a_run_says_so(tmp_path, behavior):
    with pytest.raises(FileNotFoundError, match="replay buffer"):
        recipes.make_dataset("hopper-medium-replay", tmp_path / "mr", progress=False)


def test_d4rl_export_roundtrip(tmp_path, behavior):
    store = recipes.make_dataset("hopper-medium", tmp_path / "hm", size=800, seed=1, progress=False)
    h5 = export_d4rl(store, tmp_path / "hm.hdf5")
    back = import_d4rl(h5, tmp_path / "back")
    np.testing.assert_array_equal(back.episode_ends, store.episode_ends)
    for key in store.keys:
        expected = store.array(key)
        if key == "timeout":   # the size-cut last episode keeps neither flag (D4RL's trailing partial)
            assert not expected[-1]
        np.testing.assert_array_equal(back.array(key), expected, err_msg=key)
    assert back.attrs["recipe"] == "hopper-medium"
    assert back.attrs["actor_sha256"] == store.attrs["actor_sha256"]
    q = qlearning_dataset(back)
    assert len(q["observations"]) == store.n_steps - 1 - int(store.array("timeout").sum())


def test_minari_export_roundtrip(tmp_path, behavior):
    pytest.importorskip("minari")
    from fastpolicy.data.minari_io import export_minari, import_minari

    store = recipes.make_dataset("hopper-random", tmp_path / "hr", size=300, seed=0, progress=False)
    path = export_minari(store, tmp_path / "minari" / "hopper-random-v0")
    back = import_minari(path, tmp_path / "back")
    np.testing.assert_array_equal(back.episode_ends, store.episode_ends)
    for key in ("obs", "action", "reward", "terminal", "infos/qpos", "infos/action_log_probs"):
        np.testing.assert_allclose(back.array(key), store.array(key), err_msg=key)
