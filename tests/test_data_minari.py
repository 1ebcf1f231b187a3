"""Minari import (datasets written by minari itself and by hand) and export back through minari."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from fastpolicy.data.minari_io import export_minari, import_minari
from fastpolicy.data.store import EpisodeStore

minari = pytest.importorskip("minari")


def episodes(seed=0, lengths=(3, 5, 1)):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        out.append({"observations": rng.normal(size=(n + 1, 3)).astype(np.float32),
                    "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
                    "rewards": rng.normal(size=n), "terminations": np.arange(n) == n - 1,
                    "truncations": np.zeros(n, bool),
                    "infos": {"qpos": rng.normal(size=(n + 1, 2)), "nested": {"a": np.arange(n + 1)}}})
    return out


def write_with_minari(tmp_path, monkeypatch, eps):
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari_root"))
    buffers = [EpisodeBuffer(id=i, observations=e["observations"], actions=e["actions"], rewards=e["rewards"],
                             terminations=e["terminations"], truncations=e["truncations"], infos=e["infos"])
               for i, e in enumerate(eps)]
    with pytest.warns(UserWarning):  # minari nags about author/permalink; not our concern here
        minari.create_dataset_from_buffers(
            "toy/test-v0", buffers, observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
            action_space=gym.spaces.Box(-1, 1, (2,), np.float32), algorithm_name="hand", data_format="hdf5")
    root = tmp_path / "minari_root" / "toy" / "test-v0"
    # Reference scores as D4RL-converted Minari datasets carry them (minari only computes them with an env).
    meta = json.loads((root / "data" / "metadata.json").read_text())
    meta.update(ref_min_score=0.0, ref_max_score=10.0)
    (root / "data" / "metadata.json").write_text(json.dumps(meta))
    return root


def test_import_dataset_written_by_minari(tmp_path, monkeypatch):
    eps = episodes()
    store = import_minari(write_with_minari(tmp_path, monkeypatch, eps), tmp_path / "store")
    np.testing.assert_array_equal(store.episode_ends, [3, 8, 9])
    for i, e in enumerate(eps):
        got = store.episode(i)
        np.testing.assert_array_equal(got["obs"], e["observations"][:-1])
        np.testing.assert_array_equal(got["next_obs"], e["observations"][1:])
        np.testing.assert_array_equal(got["action"], e["actions"])
        np.testing.assert_array_equal(got["reward"], e["rewards"].astype(np.float32))
        np.testing.assert_array_equal(got["terminal"], e["terminations"])
        np.testing.assert_array_equal(got["timeout"], e["truncations"])
        np.testing.assert_array_equal(got["infos/qpos"], e["infos"]["qpos"][:-1])  # aligned with obs
        np.testing.assert_array_equal(got["infos/nested/a"], e["infos"]["nested"]["a"][:-1])
    attrs = store.attrs
    assert attrs["source"] == "minari" and attrs["dataset_id"] == "toy/test-v0"
    assert attrs["ref_min_score"] == 0.0 and attrs["ref_max_score"] == 10.0
    assert "obs_keys" not in attrs


def test_dict_observations_are_flattened_in_sorted_key_order(tmp_path):
    n = 4
    rng = np.random.default_rng(1)
    obs = {"observation": rng.normal(size=(n + 1, 4)), "desired_goal": rng.normal(size=(n + 1, 2)),
           "achieved_goal": rng.normal(size=(n + 1, 2))}
    (tmp_path / "ds" / "data").mkdir(parents=True)
    with h5py.File(tmp_path / "ds" / "data" / "main_data.hdf5", "w") as f:
        for ep_id in (1, 0, 10, 2):  # written out of order; import orders by id
            g = f.create_group(f"episode_{ep_id}")
            for key, value in obs.items():
                g.create_dataset(f"observations/{key}", data=value + ep_id)
            g.create_dataset("actions", data=np.full((n, 2), ep_id, np.float32))
            g.create_dataset("rewards", data=np.ones(n))
            g.create_dataset("terminations", data=np.zeros(n, bool))
            g.create_dataset("truncations", data=np.arange(n) == n - 1)
            g.create_dataset("infos/success", data=np.zeros(n + 1, bool))
            g.create_dataset("infos/label", data=np.array([b"x"] * (n + 1)))  # not numeric: skipped
    store = import_minari(tmp_path / "ds", tmp_path / "store")
    assert store.n_episodes == 4 and store.shape("obs") == (16, 8)
    np.testing.assert_array_equal(store.episode(0)["action"][:, 0], 0)
    np.testing.assert_array_equal(store.episode(3)["action"][:, 0], 10)
    expected = np.concatenate([obs["achieved_goal"], obs["desired_goal"], obs["observation"]], axis=1) + 2
    np.testing.assert_allclose(store.episode(2)["obs"], expected[:-1].astype(np.float32))
    np.testing.assert_allclose(store.episode(2)["next_obs"], expected[1:].astype(np.float32))
    attrs = store.attrs
    assert attrs["obs_keys"] == ["achieved_goal", "desired_goal", "observation"]
    assert attrs["obs_key_dims"] == [2, 2, 4]
    assert attrs["minari_skipped_infos"] == ["infos/label"]
    assert "infos/success" in store.keys


def test_export_then_import_round_trip_and_minari_can_read_it(tmp_path):
    rng = np.random.default_rng(2)
    n = 9
    # Minari has no separate next observation inside an episode, so next_obs[t] == obs[t+1] there.
    full = [rng.normal(size=(5, 3)), rng.normal(size=(6, 3))]
    obs = np.concatenate([f[:-1] for f in full])
    next_obs = np.concatenate([f[1:] for f in full])
    store = EpisodeStore.from_arrays(tmp_path / "store", {
        "obs": obs, "next_obs": next_obs, "action": rng.normal(size=(n, 2)),
        "reward": rng.normal(size=n), "terminal": np.eye(1, n, 3, dtype=bool)[0],
        "timeout": np.eye(1, n, 8, dtype=bool)[0], "infos/qpos": rng.normal(size=(n, 2))},
        episode_ends=[4, 9], attrs={"source": "test", "ref_min_score": -1.0, "ref_max_score": 5.0})
    out = export_minari(store, tmp_path / "exported")
    dataset = minari.MinariDataset(out / "data")
    assert dataset.total_episodes == 2 and dataset.total_steps == n
    first = next(iter(dataset.iterate_episodes()))
    np.testing.assert_array_equal(first.observations[:-1], store.episode(0)["obs"])
    assert minari.get_normalized_score(dataset, np.array([2.0]))[0] == pytest.approx(0.5)
    back = import_minari(out, tmp_path / "back")
    np.testing.assert_array_equal(back.episode_ends, store.episode_ends)
    assert back.attrs["ref_min_score"] == -1.0 and back.attrs["ref_max_score"] == 5.0
    for key in store.keys:
        np.testing.assert_array_equal(back.array(key), store.array(key), err_msg=key)
    with pytest.raises(FileExistsError, match="already exists"):
        export_minari(store, tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "exported", "store"]  # temp root cleaned


def test_bad_minari_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Minari dataset"):
        import_minari(tmp_path / "nothing", tmp_path / "store")
    (tmp_path / "ds" / "data").mkdir(parents=True)
    with h5py.File(tmp_path / "ds" / "data" / "main_data.hdf5", "w") as f:
        g = f.create_group("episode_0")
        g.create_dataset("observations", data=np.zeros((3, 2)))  # should be 4 rows for 3 steps
        g.create_dataset("actions", data=np.zeros((3, 1)))
        for key in ("rewards", "terminations", "truncations"):
            g.create_dataset(key, data=np.zeros(3))
    with pytest.raises(ValueError, match=r"episode_0 has 3 observations for 3 actions"):
        import_minari(tmp_path / "ds", tmp_path / "store")
    assert not (tmp_path / "store").exists()
