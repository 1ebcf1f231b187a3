"""D4RL HDF5 import/export round trips, episode splitting, qlearning_dataset, and bad-input messages."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from fastpolicy.data.d4rl import export_d4rl, import_d4rl, qlearning_dataset
from fastpolicy.data.store import EpisodeStore


def write_h5(path, datasets, attrs=None):
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def read_h5(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                out[name] = item[()]
        f.visititems(visit)
    return out


def mujoco_like(n=12, seed=0):
    """Terminal at 3, timeout at 7, and a trailing partial episode 8..11 (neither flag)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    terminals = np.zeros(n, bool)
    terminals[3] = True
    timeouts = np.zeros(n, bool)
    timeouts[7] = True
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
        "infos/qpos": rng.normal(size=(n, 4)),
        "infos/action_log_probs": rng.normal(size=n).astype(np.float32),
        "metadata/algorithm": b"SAC",
        "metadata/iteration": np.int64(42),
        "metadata/policy/fc0/weight": rng.normal(size=(64, 100)).astype(np.float32),  # too big: skipped
    }


def test_import_splits_episodes_and_keeps_trailing_partial(tmp_path):
    src = mujoco_like()
    path = write_h5(tmp_path / "hopper.hdf5", src)
    store = import_d4rl(path, tmp_path / "store", attrs={"env_id": "Hopper-v5"})
    np.testing.assert_array_equal(store.episode_ends, [4, 8, 12])
    assert store.keys == ["obs", "action", "reward", "terminal", "timeout", "next_obs",
                          "infos/action_log_probs", "infos/qpos"]
    np.testing.assert_array_equal(store.array("obs"), src["observations"])
    np.testing.assert_array_equal(store.array("next_obs"), src["next_observations"])
    np.testing.assert_array_equal(store.array("infos/qpos"), src["infos/qpos"])
    last = store.episode(2)
    assert not last["terminal"].any() and not last["timeout"].any()  # the partial episode is kept
    attrs = store.attrs
    assert attrs["source"] == "d4rl" and attrs["env_id"] == "Hopper-v5" and attrs["d4rl_has_timeouts"]
    assert attrs["metadata"] == {"algorithm": "SAC", "iteration": 42}
    assert attrs["d4rl_skipped"] == ["metadata/policy/fc0/weight"]


def test_round_trip_reproduces_arrays_exactly(tmp_path):
    src = mujoco_like()
    store = import_d4rl(write_h5(tmp_path / "in.hdf5", src), tmp_path / "store")
    export_d4rl(store, tmp_path / "out.hdf5")
    out = read_h5(tmp_path / "out.hdf5")
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations",
                "infos/qpos", "infos/action_log_probs"):
        assert out[key].dtype == np.asarray(src[key]).dtype, key
        np.testing.assert_array_equal(out[key], src[key], err_msg=key)
    assert out["metadata/algorithm"] == b"SAC" and out["metadata/iteration"] == 42
    # ... and back again into an identical store.
    again = import_d4rl(tmp_path / "out.hdf5", tmp_path / "store2")
    np.testing.assert_array_equal(again.episode_ends, store.episode_ends)
    for key in store.keys:
        np.testing.assert_array_equal(again.array(key), store.array(key), err_msg=key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.hdf5", "out.hdf5", "store", "store2"]


def test_file_without_timeouts_and_column_rewards(tmp_path):
    n = 10
    rng = np.random.default_rng(1)
    terminals = np.zeros((n, 1), np.float32)
    terminals[2] = terminals[6] = 1.0
    src = {"observations": rng.normal(size=(n, 2)).astype(np.float32),
           "actions": rng.normal(size=(n, 1)).astype(np.float32),
           "rewards": rng.normal(size=(n, 1)).astype(np.float32), "terminals": terminals}
    store = import_d4rl(write_h5(tmp_path / "old.hdf5", src), tmp_path / "store")
    np.testing.assert_array_equal(store.episode_ends, [3, 7, 10])  # split on terminals only, tail kept
    assert store.shape("reward") == (n,) and store.dtype("terminal") == np.bool_
    assert not store.array("timeout").any() and store.attrs["d4rl_has_timeouts"] is False
    export_d4rl(store, tmp_path / "out.hdf5")
    out = read_h5(tmp_path / "out.hdf5")
    np.testing.assert_array_equal(out["rewards"], src["rewards"][:, 0])
    np.testing.assert_array_equal(out["terminals"], src["terminals"][:, 0].astype(bool))
    assert out["timeouts"].shape == (n,) and not out["timeouts"].any()
    assert "next_observations" not in out  # never invented
    # With D4RL's max_episode_steps fallback, long stretches are cut and marked as timeouts.
    cut = import_d4rl(tmp_path / "old.hdf5", tmp_path / "cut", max_episode_steps=2)
    np.testing.assert_array_equal(cut.episode_ends, [2, 3, 5, 7, 9, 10])
    np.testing.assert_array_equal(np.flatnonzero(cut.array("timeout")), [1, 4, 8])


def test_maze2d_style_file_is_one_episode(tmp_path):
    n = 7
    src = {"observations": np.arange(n * 4, dtype=np.float32).reshape(n, 4),
           "actions": np.zeros((n, 2), np.float32),
           "rewards": np.zeros(n, np.float32), "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool),
           "infos/goal": np.ones((n, 2), np.float32)}
    store = import_d4rl(write_h5(tmp_path / "maze2d.hdf5", src), tmp_path / "store")
    np.testing.assert_array_equal(store.episode_ends, [n])
    assert store.keys[-1] == "infos/goal"


def test_qlearning_dataset_matches_hand_computed_d4rl_output(tmp_path):
    # rows:      0  1  2  3  4  5  6  7
    # terminal:  .  .  T  .  .  .  .  .
    # timeout:   .  .  .  .  .  X  .  .      (row 7 is the final row; 6..7 a trailing partial episode)
    n = 8
    obs = np.arange(n, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)
    terminals = np.zeros(n, bool)
    terminals[2] = True
    timeouts = np.zeros(n, bool)
    timeouts[5] = True
    src = {"observations": obs, "actions": np.arange(n, dtype=np.float32)[:, None] + 0.5,
           "rewards": np.arange(n, dtype=np.float32) * 2, "terminals": terminals, "timeouts": timeouts}
    store = import_d4rl(write_h5(tmp_path / "q.hdf5", src), tmp_path / "store")
    q = qlearning_dataset(store)
    # Kept rows: 0..6 minus the timeout row 5; the final row 7 is always dropped.
    np.testing.assert_array_equal(q["observations"], [[0, 0], [1, 10], [2, 20], [3, 30], [4, 40], [6, 60]])
    # next obs is always observations[i+1], also across the terminal at row 2 (row 3 starts a new episode).
    np.testing.assert_array_equal(q["next_observations"],
                                  [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50], [7, 70]])
    np.testing.assert_array_equal(q["actions"], [[0.5], [1.5], [2.5], [3.5], [4.5], [6.5]])
    np.testing.assert_array_equal(q["rewards"], [0, 2, 4, 6, 8, 12])
    np.testing.assert_array_equal(q["terminals"], [False, False, True, False, False, False])
    assert q["observations"].dtype == np.float32 and q["terminals"].dtype == np.bool_
    # terminate_on_end keeps the timeout row but (like D4RL) does not flag it as terminal.
    q2 = qlearning_dataset(store, terminate_on_end=True)
    np.testing.assert_array_equal(q2["observations"][:, 0], [0, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(q2["next_observations"][:, 0], [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(q2["terminals"], [False, False, True, False, False, False, False])


def test_store_episode_without_flags_exports_as_timeout(tmp_path):
    n = 6
    data = {"obs": np.arange(n, dtype=np.float32)[:, None], "action": np.zeros((n, 1)), "reward": np.ones(n)}
    store = EpisodeStore.from_arrays(tmp_path / "s", data, [2, 4, 6])
    export_d4rl(store, tmp_path / "out.hdf5")
    out = read_h5(tmp_path / "out.hdf5")
    np.testing.assert_array_equal(np.flatnonzero(out["timeouts"]), [1, 3])  # the last episode stays partial
    back = import_d4rl(tmp_path / "out.hdf5", tmp_path / "back")
    np.testing.assert_array_equal(back.episode_ends, [2, 4, 6])
    q = qlearning_dataset(store)
    np.testing.assert_array_equal(q["observations"][:, 0], [0, 2, 4])  # rows 1, 3 are timeouts, 5 is final


def test_export_refuses_flags_inside_an_episode(tmp_path):
    terminal = np.array([False, True, False, False])
    store = EpisodeStore.from_arrays(tmp_path / "s", {"obs": np.zeros((4, 1)), "action": np.zeros((4, 1)),
                                                      "terminal": terminal}, [4])
    with pytest.raises(ValueError, match=r"episode 0 has a terminal/timeout flag at global step 1"):
        export_d4rl(store, tmp_path / "out.hdf5")
    assert not (tmp_path / "out.hdf5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp file left


def test_missing_key_is_named(tmp_path):
    src = mujoco_like()
    del src["terminals"]
    path = write_h5(tmp_path / "bad.hdf5", src)
    with pytest.raises(ValueError, match=r"bad\.hdf5: missing required key 'terminals'"):
        import_d4rl(path, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_length_mismatch_names_both_keys(tmp_path):
    src = mujoco_like()
    src["actions"] = src["actions"][:-1]
    with pytest.raises(ValueError, match=r"key 'actions' has 11 rows but 'observations' has 12"):
        import_d4rl(write_h5(tmp_path / "bad.hdf5", src), tmp_path / "store")


def test_nan_in_actions_is_named(tmp_path):
    src = mujoco_like()
    src["actions"][5, 1] = np.nan
    with pytest.raises(ValueError, match=r"key 'actions' contains NaN/inf at row 5"):
        import_d4rl(write_h5(tmp_path / "bad.hdf5", src), tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_existing_outputs_are_never_overwritten(tmp_path):
    path = write_h5(tmp_path / "in.hdf5", mujoco_like())
    store = import_d4rl(path, tmp_path / "store")
    with pytest.raises(FileExistsError, match="already exists"):
        import_d4rl(path, tmp_path / "store")
    (tmp_path / "out.hdf5").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="already exists"):
        export_d4rl(store, tmp_path / "out.hdf5")
    assert (tmp_path / "out.hdf5").read_bytes() == b"precious"
    export_d4rl(store, tmp_path / "out.hdf5", overwrite=True)
    assert read_h5(tmp_path / "out.hdf5")["observations"].shape == (12, 3)
    with pytest.raises(FileNotFoundError, match="no D4RL file"):
        import_d4rl(tmp_path / "missing.hdf5", tmp_path / "other")
