"""``fastpolicy data ...`` through ``fastpolicy.cli.main``: import, info, export, make, and error exits."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from fastpolicy.cli import main
from fastpolicy.data.store import EpisodeStore


@pytest.fixture
def d4rl_file(tmp_path):
    n = 20
    rng = np.random.default_rng(0)
    terminals = np.zeros(n, bool)
    terminals[[4, 11]] = True
    timeouts = np.zeros(n, bool)
    timeouts[15] = True
    path = tmp_path / "toy.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 3)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = terminals
        f["timeouts"] = timeouts
    return path


def test_import_info_export(tmp_path, d4rl_file, capsys):
    store_path = tmp_path / "store"
    assert main(["data", "import", str(d4rl_file), "--out", str(store_path)]) == 0
    assert "4 episodes, 20 steps" in capsys.readouterr().out
    assert EpisodeStore.open(store_path).n_episodes == 4

    assert main(["data", "info", str(store_path)]) == 0
    text = capsys.readouterr().out
    assert "4 episodes, 20 steps" in text and "obs" in text and "return: mean 5" in text
    png = tmp_path / "store.returns.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["data", "info", str(store_path), "--json", "--png", str(tmp_path / "h.png")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 4 and info["steps"] == 20
    assert info["returns"]["percentiles"]["50"] == pytest.approx(4.5)  # lengths 5, 7, 4, 4 with reward 1
    assert info["keys"]["obs"]["shape"] == [3] and info["keys"]["obs"]["dtype"] == "float32"
    assert info["terminal_episodes"] == 2 and info["timeout_episodes"] == 1
    assert (tmp_path / "h.png").exists()

    out = tmp_path / "out.hdf5"
    assert main(["data", "export", str(store_path), "--format", "d4rl", "--out", str(out)]) == 0
    with h5py.File(out, "r") as f, h5py.File(d4rl_file, "r") as g:
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(f[key][()], g[key][()])


def test_errors_exit_2_with_one_line(tmp_path, d4rl_file, capsys):
    store_path = tmp_path / "store"
    assert main(["data", "import", str(d4rl_file), "--out", str(store_path)]) == 0
    capsys.readouterr()
    assert main(["data", "import", str(d4rl_file), "--out", str(store_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "import", str(d4rl_file), "--out", str(store_path), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "missing")]) == 2
    assert "no dataset store" in capsys.readouterr().err
    assert main(["data", "import", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "taken.hdf5").write_bytes(b"keep")
    assert main(["data", "export", str(store_path), "--out", str(tmp_path / "taken.hdf5")]) == 2
    assert (tmp_path / "taken.hdf5").read_bytes() == b"keep"


def test_import_minari_directory(tmp_path, capsys):
    n = 3
    (tmp_path / "ds" / "data").mkdir(parents=True)
    with h5py.File(tmp_path / "ds" / "data" / "main_data.hdf5", "w") as f:
        g = f.create_group("episode_0")
        g["observations"] = np.arange((n + 1) * 2, dtype=np.float32).reshape(n + 1, 2)
        g["actions"] = np.zeros((n, 1), np.float32)
        g["rewards"] = np.ones(n)
        g["terminations"] = np.arange(n) == n - 1
        g["truncations"] = np.zeros(n, bool)
    assert main(["data", "import", str(tmp_path / "ds"), "--out", str(tmp_path / "store")]) == 0
    assert "(minari)" in capsys.readouterr().out
    assert EpisodeStore.open(tmp_path / "store").n_steps == n


def test_make_calls_recipe_with_defaults(tmp_path, monkeypatch, capsys):
    import fastpolicy.data.recipes as recipes

    calls = []

    def fake_make_dataset(name, out, size=None, seed=0, overwrite=False, progress=True):
        calls.append((name, str(out), size, seed, overwrite, progress))
        data = {"obs": np.zeros((3, 1)), "action": np.zeros((3, 1))}
        return EpisodeStore.from_arrays(tmp_path / "made", data, [3], overwrite=True)

    monkeypatch.setattr(recipes, "make_dataset", fake_make_dataset)
    assert main(["data", "make", "maze2d-umaze", "--size", "1000", "--seed", "7", "--overwrite"]) == 0
    assert calls[-1] == ("maze2d-umaze", "datasets/store/maze2d-umaze", 1000, 7, True, True)
    assert main(["data", "make", "agv", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert calls[-1] == ("agv", str(tmp_path / "o"), None, 0, False, False)
    assert "1 episodes, 3 steps" in capsys.readouterr().out


def test_make_unknown_recipe_is_a_clean_error(tmp_path, monkeypatch, capsys):
    import fastpolicy.data.recipes as recipes

    monkeypatch.setattr(recipes, "all_recipes", lambda: {"known": None})
    assert main(["data", "make", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown dataset recipe 'nope'" in capsys.readouterr().err
