"""EpisodeStore: round trip, validation messages, and atomic creation (including SIGKILL mid-write)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from fastpolicy.data.store import EpisodeStore

REPO = Path(__file__).resolve().parents[1]


def make_episode(rng: np.random.Generator, length: int, obs_dim: int = 4, act_dim: int = 2) -> dict:
    return {
        "obs": rng.normal(size=(length, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, act_dim)).astype(np.float32),
        "reward": rng.normal(size=length).astype(np.float32),
        "terminal": np.arange(length) == length - 1,
        "timeout": np.zeros(length, dtype=bool),
        "infos": {"qpos": rng.normal(size=(length, 3)), "step": np.arange(length, dtype=np.int32)},
    }


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_round_trip_episode_by_episode(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, n) for n in (5, 1, 12, 7)]
    attrs = {"source": "test", "env_id": "Toy-v0", "seed": np.int64(3), "ref": {"min": 0.0, "max": 1.5}}
    with EpisodeStore.create(tmp_path / "s", attrs=attrs, chunk_steps=4) as writer:
        for ep in episodes:
            writer.add_episode(ep)
        writer.attrs["n_written"] = writer.n_episodes
    store = EpisodeStore.open(tmp_path / "s")
    assert store.keys == ["obs", "action", "reward", "terminal", "timeout", "infos/qpos", "infos/step"]
    assert store.n_episodes == 4 and store.n_steps == 25 and len(store) == 4
    np.testing.assert_array_equal(store.episode_ends, [5, 6, 18, 25])
    np.testing.assert_array_equal(store.episode_lengths, [5, 1, 12, 7])
    assert store.attrs["seed"] == 3 and store.attrs["ref"] == {"min": 0.0, "max": 1.5}
    assert store.attrs["n_written"] == 4 and store.attrs["fastpolicy_version"]
    assert store.dtype("obs") == np.float32 and store.dtype("terminal") == np.bool_
    assert store.dtype("infos/qpos") == np.float64 and store.dtype("infos/step") == np.int32
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        for key in ("obs", "action", "reward", "terminal", "timeout"):
            np.testing.assert_array_equal(got[key], ep[key])
        np.testing.assert_array_equal(got["infos/qpos"], ep["infos"]["qpos"])
    np.testing.assert_array_equal(store.episode(-1)["obs"], episodes[-1]["obs"])
    np.testing.assert_array_equal(store.array("obs"), np.concatenate([e["obs"] for e in episodes]))
    expected_returns = [e["reward"].astype(np.float64).sum() for e in episodes]
    np.testing.assert_allclose(store.episode_returns(), expected_returns, rtol=1e-6)
    assert [len(e["obs"]) for e in store.episodes()] == [5, 1, 12, 7]
    assert set(store.to_dict(["obs", "reward"])) == {"obs", "reward"}
    with pytest.raises(IndexError, match="out of range"):
        store.episode(4)
    # The store on disk is the documented zarr layout, opened read-only.
    group = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert group["meta/episode_ends"].dtype == np.int64
    assert group["data/infos/qpos"].shape == (25, 3)
    assert siblings(tmp_path / "s") == []  # no temp dir left behind


def test_from_arrays_matches_writer_and_normalises_dtypes(tmp_path):
    n = 9
    data = {"obs": np.arange(n * 2, dtype=np.float64).reshape(n, 2), "action": np.ones((n, 1)),
            "reward": np.arange(n, dtype=np.float64).reshape(n, 1),
            "terminal": np.eye(1, n, 3, dtype=np.int64)[0]}
    store = EpisodeStore.from_arrays(tmp_path / "a", data, episode_ends=[4, 9], attrs={"source": "x"})
    assert store.dtype("obs") == np.float32 and store.dtype("action") == np.float32
    assert store.shape("reward") == (n,) and store.dtype("reward") == np.float32
    assert store.dtype("terminal") == np.bool_ and store.array("terminal")[3]
    assert not store.array("timeout").any()  # defaulted
    np.testing.assert_array_equal(store.episode_returns(), [0 + 1 + 2 + 3, 4 + 5 + 6 + 7 + 8])


def test_unlabeled_actions_stored_as_zero_with_mask(tmp_path):
    action = np.array([[1.0], [np.nan], [np.nan], [2.0]], dtype=np.float32)
    mask = np.array([True, False, False, True])
    with EpisodeStore.create(tmp_path / "m") as w:
        w.add_episode({"obs": np.zeros((4, 2)), "action": action, "action_mask": mask})
    store = w.store
    np.testing.assert_array_equal(store.array("action")[:, 0], [1.0, 0.0, 0.0, 2.0])
    np.testing.assert_array_equal(store.array("action_mask"), mask)


def ep(obs=(3, 4), action=(3, 2), reward=(3,)):
    """An episode for the error cases: a tuple is a shape of zeros, None leaves the key out."""
    out = {"obs": obs, "action": action, "reward": reward}
    return {k: np.zeros(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}


@pytest.mark.parametrize("second, match", [
    (ep(reward=None), r"episode 1: keys differ from episode 0 \(missing \['reward'\]"),
    (ep(action=(2, 2)), r"episode 1: key 'action' has 2 steps but 'obs' has 3"),
    (ep(obs=(3, 5)), r"episode 1: key 'obs' has per-step shape \(5,\), but earlier episodes have \(4,\)"),
    (ep(action=np.zeros((3, 2), dtype=np.int64)), r"episode 1: key 'action' has dtype int64, but .* float32"),
    (ep((0, 4), (0, 2), (0,)), r"episode 1 is empty"),
    (ep(obs=None), r"episode 1: missing required key 'obs'"),
    (ep(obs=np.full((3, 4), np.inf)), r"episode 1: key 'obs' contains NaN/inf at step 0"),
    (ep(action=np.array([[0, 0], [0, 0], [np.nan, 1]])),
     r"episode 1: key 'action' contains NaN/inf at step 2"),
    (ep(reward=(3, 2)), r"episode 1: key 'reward' must have shape \(T,\) or \(T, 1\)"),
])
def test_validation_errors_name_the_problem(tmp_path, second, match):
    first = {"obs": np.zeros((2, 4)), "action": np.zeros((2, 2)), "reward": np.zeros(2)}
    with pytest.raises(ValueError, match=match):
        with EpisodeStore.create(tmp_path / "bad") as w:
            w.add_episode(first)
            w.add_episode(second)
    assert not (tmp_path / "bad").exists() and siblings(tmp_path / "bad") == []


def test_masked_nan_is_rejected_where_mask_true_and_from_arrays_names_episode(tmp_path):
    with pytest.raises(ValueError, match=r"episode 0: key 'action' contains NaN/inf at step 1"):
        with EpisodeStore.create(tmp_path / "x") as w:
            w.add_episode({"obs": np.zeros((3, 1)), "action": np.array([[0.0], [np.nan], [np.nan]]),
                           "action_mask": np.array([True, True, False])})
    obs = np.zeros((6, 2))
    obs[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"episode 1: key 'obs' contains NaN/inf at step 1"):
        EpisodeStore.from_arrays(tmp_path / "y", {"obs": obs, "action": np.zeros((6, 1))}, [3, 6])
    with pytest.raises(ValueError, match=r"episode 1 is empty or episode_ends is not increasing"):
        EpisodeStore.from_arrays(tmp_path / "y", {"obs": obs, "action": np.zeros((6, 1))}, [3, 3, 6])
    with pytest.raises(ValueError, match=r"episode_ends\[-1\] = 5 but 'obs' has 6 steps"):
        EpisodeStore.from_arrays(tmp_path / "y", {"obs": obs, "action": np.zeros((6, 1))}, [3, 5])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_no_episodes_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="no episodes were added"):
        with EpisodeStore.create(tmp_path / "empty"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_an_error_before_any_work(tmp_path):
    rng = np.random.default_rng(1)
    EpisodeStore.from_arrays(tmp_path / "s", make_episode(rng, 4), [4])
    with pytest.raises(FileExistsError, match="already exists"):
        EpisodeStore.create(tmp_path / "s")
    with pytest.raises(FileExistsError, match="already exists"):
        EpisodeStore.from_arrays(tmp_path / "s", make_episode(rng, 4), [4])
    assert siblings(tmp_path / "s") == []


def test_exception_mid_write_keeps_existing_store(tmp_path):
    rng = np.random.default_rng(2)
    old = EpisodeStore.from_arrays(tmp_path / "s", make_episode(rng, 6), [6], attrs={"version": "old"})
    old_obs = old.array("obs").copy()
    with pytest.raises(RuntimeError, match="boom"):
        with EpisodeStore.create(tmp_path / "s", overwrite=True, chunk_steps=2) as w:
            for _ in range(5):
                w.add_episode(make_episode(rng, 3))
            raise RuntimeError("boom")
    store = EpisodeStore.open(tmp_path / "s")
    assert store.attrs["version"] == "old"
    np.testing.assert_array_equal(store.array("obs"), old_obs)
    assert siblings(tmp_path / "s") == []
    # ... and a successful overwrite replaces it.
    EpisodeStore.from_arrays(tmp_path / "s", make_episode(rng, 2), [2], attrs={"version": "new"},
                             overwrite=True)
    assert EpisodeStore.open(tmp_path / "s").attrs["version"] == "new"


WRITER_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from fastpolicy.data.store import EpisodeStore
    target, overwrite = sys.argv[1], sys.argv[2] == "1"
    rng = np.random.default_rng(0)
    with EpisodeStore.create(target, attrs={"version": "killed"}, overwrite=overwrite, chunk_steps=50) as w:
        for i in range(10**7):
            w.add_episode({"obs": rng.normal(size=(50, 8)), "action": rng.normal(size=(50, 2))})
            if i == 3:
                print("writing", flush=True)
""")


def run_and_kill(target: Path, overwrite: bool) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(target), "1" if overwrite else "0"],
                            stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"writing", f"writer did not start: {line!r}"
        time.sleep(0.3)
        tmp_dirs = [p for p in target.parent.iterdir() if p.name.startswith(f".tmp-{target.name}-")]
        assert tmp_dirs and any((d / "data" / "obs").exists() for d in tmp_dirs), "writer has not written yet"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_write_leaves_no_store(tmp_path):
    target = tmp_path / "killed"
    run_and_kill(target, overwrite=False)
    assert not target.exists()
    with pytest.raises(FileNotFoundError, match="no dataset store"):
        EpisodeStore.open(target)


def test_sigkill_during_overwrite_keeps_old_store(tmp_path):
    rng = np.random.default_rng(3)
    target = tmp_path / "store"
    old = EpisodeStore.from_arrays(target, make_episode(rng, 30), [10, 30], attrs={"version": "old"})
    old_obs = old.array("obs").copy()
    run_and_kill(target, overwrite=True)
    store = EpisodeStore.open(target)
    assert store.attrs["version"] == "old" and store.n_episodes == 2
    np.testing.assert_array_equal(store.array("obs"), old_obs)
    np.testing.assert_array_equal(store.array("infos/qpos").shape, (30, 3))


def test_open_rejects_missing_and_foreign_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset store at"):
        EpisodeStore.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a fastpolicy EpisodeStore"):
        EpisodeStore.open(tmp_path / "plain")
    group = zarr.open_group(str(tmp_path / "foreign"), mode="w")
    group.create_array("data/obs", shape=(3, 2), dtype="float32")
    with pytest.raises(ValueError, match=r"no meta/episode_ends"):
        EpisodeStore.open(tmp_path / "foreign")
    with pytest.raises(KeyError, match="has no key 'nope'"):
        data = {"obs": np.zeros((2, 1)), "action": np.zeros((2, 1))}
        EpisodeStore.from_arrays(tmp_path / "ok", data, [2]).array("nope")


def test_attrs_must_be_json(tmp_path):
    with pytest.raises(ValueError, match="attribute 'bad' is not JSON-serializable"):
        EpisodeStore.create(tmp_path / "s", attrs={"bad": object()})
    assert not (tmp_path / "s").exists()


def test_writer_copies_caller_buffers(tmp_path):
    buf = {"obs": np.zeros((4, 2), np.float32), "action": np.zeros((4, 1), np.float32)}
    with EpisodeStore.create(tmp_path / "s") as w:
        for value in (1.0, 2.0):
            buf["obs"][:] = value  # a collector reusing its arrays between episodes
            w.add_episode(buf)
    np.testing.assert_array_equal(w.store.array("obs")[:, 0], [1, 1, 1, 1, 2, 2, 2, 2])


def test_nan_reward_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"episode 0: key 'reward' contains NaN/inf at step 1"):
        EpisodeStore.from_arrays(tmp_path / "s", {"obs": np.zeros((3, 1)), "action": np.zeros((3, 1)),
                                                  "reward": np.array([0.0, np.nan, 0.0])}, [3])
