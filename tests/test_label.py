"""fastpolicy.train.label and ``fastpolicy label``: proxy labels, determinism, provenance, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fastpolicy.cli import main
from fastpolicy.data.split import split_store, store_content_hash
from fastpolicy.data.store import EpisodeStore
from fastpolicy.train.inverse_dynamics import IDMTrainConfig
from fastpolicy.train.label import idm_errors, label_store, train_idm_on_store
from fastpolicy.utils.checkpoint import model_hash

A = np.array([[1.0, 0.1, 0], [0, 0.9, 0], [0, 0, 0.8]])
B = np.array([[0.0, 0], [0.5, 0], [0, 0.5]])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A linear-system store (30 episodes), its split, and an inverse-dynamics model trained on the split."""
    root = tmp_path_factory.mktemp("label")
    rng = np.random.default_rng(0)
    with EpisodeStore.create(root / "source", attrs={"source": "test", "env_id": "none", "recipe": "lin",
                                                     "seed": 0}) as w:
        for _ in range(30):
            n = int(rng.integers(20, 30))
            s = rng.normal(size=3)
            obs, act = [], []
            for _ in range(n):
                a = rng.uniform(-1, 1, size=2)
                obs.append(s)
                act.append(a)
                s = A @ s + B @ a
            w.add_episode({"obs": np.asarray(obs, np.float32), "action": np.asarray(act, np.float32),
                           "reward": rng.normal(size=n).astype(np.float32)})
    source = EpisodeStore.open(root / "source")
    split = split_store(source, root / "split", labeled=0.3, from_bottom=0.5, seed=5)
    torch.manual_seed(0)
    train_idm_on_store(split.path, root / "idm", {"hidden": 64, "activation": "mish"},
                       IDMTrainConfig(steps=600, lr=3e-3, eval_every=50), action_low=-1, action_high=1)
    return root, source, split


def test_labeled_store_has_true_and_proxy_labels(stores):
    root, source, split = stores
    labeled = label_store(split.path, root / "idm", root / "labeled")
    known = split.array("action_mask")
    true = source.array("action")
    action, label_source = labeled.array("action"), labeled.array("label_source")
    std = labeled.array("infos/label_std")
    np.testing.assert_array_equal(action[known], true[known])
    np.testing.assert_array_equal(label_source, np.where(known, 0, 1))
    assert labeled.array("action_mask").all()
    np.testing.assert_array_equal(std[known], 0.0)
    assert (std[~known] > 0).all()
    assert np.abs(action).max() <= 1.0
    # proxy labels are close to the removed true actions on this (invertible) linear system
    last = np.zeros(labeled.n_steps, bool)
    last[labeled.episode_ends - 1] = True          # no next state: holds the previous label
    proxy = ~known & ~last
    assert np.mean((action[proxy] - true[proxy]) ** 2) < 0.01
    np.testing.assert_array_equal(action[~known & last], action[np.flatnonzero(~known & last) - 1])
    # every other key of the source is carried over
    np.testing.assert_array_equal(labeled.array("obs"), source.array("obs"))
    np.testing.assert_array_equal(labeled.array("infos/split"), split.array("infos/split"))


def test_labeling_is_deterministic(stores):
    root, _, split = stores
    a = label_store(split.path, root / "idm", root / "det_a")
    b = label_store(split.path, root / "idm", root / "det_b")
    for key in ("action", "label_source", "infos/label_std"):
        np.testing.assert_array_equal(a.array(key), b.array(key))
    assert store_content_hash(a) == store_content_hash(b)


def test_labeled_store_records_provenance(stores):
    root, _, split = stores
    labeled = label_store(split.path, root / "idm", root / "prov")
    info = labeled.attrs["labeling"]
    assert info["source_store"] == str(split.path.resolve())
    assert info["source_hash"] == store_content_hash(split)
    assert info["split_seed"] == 5 and info["split_labeled_fraction"] == 0.3
    assert info["split_source_store"] == split.attrs["split"]["source_store"]
    weights = (root / "idm" / "model.safetensors").read_bytes()
    assert info["idm_model_hash"] == model_hash(root / "idm") == hashlib.sha256(weights).hexdigest()
    assert info["idm_checkpoint"] == str((root / "idm").resolve())
    assert info["proxy_steps"] == int((~split.array("action_mask")).sum())


def test_idm_errors_per_part(stores):
    root, source, split = stores
    from fastpolicy.nets.inverse_dynamics import load_inverse_dynamics

    errors = idm_errors(load_inverse_dynamics(root / "idm"), split, source.array("action"))
    assert set(errors) == {"labeled", "unlabeled_in_distribution", "unlabeled_out_of_distribution"}
    assert all(e["mse"] < 0.01 and e["steps"] > 0 for e in errors.values())
    with pytest.raises(ValueError, match="not a split store"):
        idm_errors(load_inverse_dynamics(root / "idm"), source, source.array("action"))


def test_cli_train_and_label(stores, capsys):
    root, _, split = stores
    out, idm = root / "cli_labeled", root / "cli_idm"
    assert main(["label", str(split.path), "--train-idm", str(idm), "--out", str(out), "--steps", "20",
                 "--hidden", "16", "--action-low", "-1", "--action-high", "1"]) == 0
    text = capsys.readouterr().out
    assert "inverse dynamics on" in text and "proxy-labeled steps" in text
    assert EpisodeStore.open(out).attrs["labeling"]["idm_model_hash"] == model_hash(idm)
    assert main(["label", str(split.path), "--idm", str(idm), "--out", str(root / "cli2")]) == 0


def test_bad_input_gets_a_clear_error(stores, tmp_path, capsys):
    root, source, split = stores
    assert main(["label", str(split.path), "--idm", str(root / "idm")]) == 2
    assert "--idm needs --out" in capsys.readouterr().err
    unlabeled = EpisodeStore.from_arrays(tmp_path / "unlabeled", {
        "obs": source.array("obs"), "action": source.array("action"),
        "action_mask": np.zeros(source.n_steps, bool)}, source.episode_ends)
    assert main(["label", str(unlabeled.path), "--idm", str(root / "idm"), "--out", str(tmp_path / "o")]) == 2
    assert "no labeled action" in capsys.readouterr().err
    wrong_dims = EpisodeStore.from_arrays(tmp_path / "dims", {
        "obs": np.zeros((10, 5), np.float32), "action": np.zeros((10, 2), np.float32)}, np.array([10]))
    with pytest.raises(ValueError, match="obs dim 3"):
        label_store(wrong_dims.path, root / "idm", tmp_path / "o2")
    missing = tmp_path / "missing"
    assert main(["label", str(split.path), "--idm", str(missing), "--out", str(tmp_path / "o3")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o3").exists()
