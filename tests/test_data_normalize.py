"""Normalizers: limits / gaussian maps, constant dimensions, state dict round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastpolicy.data.normalize import Normalizer, NormalizerSet
from fastpolicy.data.store import EpisodeStore


def test_limits_maps_min_max_to_unit_interval_and_back():
    rng = np.random.default_rng(0)
    x = rng.uniform([-3, 0, 10], [5, 1, 20], size=(500, 3)).astype(np.float32)
    norm = Normalizer("limits").fit(x)
    y = norm.normalize(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_allclose(y.min(axis=0), -1, atol=1e-6)
    np.testing.assert_allclose(y.max(axis=0), 1, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize(y), x, atol=1e-5)
    # A hand-computed point: dim 0 has range [min, max]; its midpoint maps to 0.
    lo, hi = x[:, 0].min(), x[:, 0].max()
    mid = np.array([[(lo + hi) / 2, x[0, 1], x[0, 2]]], dtype=np.float32)
    assert abs(norm.normalize(mid)[0, 0]) < 1e-6


def test_constant_dimension_does_not_blow_up():
    x = np.stack([np.linspace(0, 1, 50), np.full(50, 7.25), np.full(50, -3.0)], axis=1).astype(np.float32)
    for mode in ("limits", "gaussian"):
        norm = Normalizer(mode).fit(x)
        y = norm.normalize(x)
        assert np.isfinite(y).all()
        np.testing.assert_array_equal(y[:, 1:], 0.0)
        np.testing.assert_array_equal(norm.unnormalize(np.zeros((1, 3), np.float32))[0, 1:], [7.25, -3.0])


def test_gaussian_standardises():
    rng = np.random.default_rng(1)
    x = rng.normal([1.0, -2.0], [3.0, 0.5], size=(4000, 2))
    norm = Normalizer("gaussian").fit(x)
    y = norm.normalize(torch.as_tensor(x, dtype=torch.float32))
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0, unbiased=False).numpy(), 1, atol=1e-4)


def test_torch_and_numpy_agree_and_leading_axes_are_reduced():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 16, 4)).astype(np.float32)  # (batch, horizon, dim)
    norm = Normalizer("limits").fit(x)
    assert tuple(norm.stats["scale"].shape) == (4,)
    np.testing.assert_allclose(norm.normalize(torch.from_numpy(x)).numpy(), norm.normalize(x), rtol=1e-6)
    with pytest.raises(ValueError, match="last dimension"):
        norm.normalize(np.zeros((2, 3)))


def test_state_dict_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    norms = NormalizerSet({"obs": Normalizer("limits").fit(rng.normal(size=(100, 5))),
                           "action": Normalizer("gaussian").fit(rng.normal(size=(100, 2)))})
    state = norms.state_dict()
    assert {"obs.scale", "obs.offset", "obs.mode", "action.scale", "action.mean"} <= set(state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    from safetensors.torch import load_file, save_file
    save_file(state, str(tmp_path / "norm.safetensors"))
    loaded = NormalizerSet.from_state_dict(load_file(str(tmp_path / "norm.safetensors")))
    assert loaded["action"].mode == "gaussian" and loaded["obs"].mode == "limits"
    x = {"obs": rng.normal(size=(7, 5)).astype(np.float32),
         "action": rng.normal(size=(7, 2)).astype(np.float32),
         "other": "passed through"}
    a, b = norms.normalize(x), loaded.normalize(x)
    np.testing.assert_array_equal(a["obs"], b["obs"])
    np.testing.assert_array_equal(a["action"], b["action"])
    assert b["other"] == "passed through"
    np.testing.assert_allclose(loaded.unnormalize(b)["obs"], x["obs"], atol=1e-5)
    with pytest.raises(ValueError, match="not fitted"):
        Normalizer().normalize(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="unknown normalizer mode"):
        Normalizer("minmax")
    with pytest.raises(KeyError, match="no normalizer for 'reward'"):
        loaded["reward"]
    with pytest.raises(ValueError, match="NaN"):
        Normalizer().fit(np.array([[np.nan]]))


def test_fit_from_store_ignores_unlabeled_actions(tmp_path):
    action = np.array([[0.0], [100.0], [2.0], [-2.0]])
    mask = np.array([True, False, True, True])
    store = EpisodeStore.from_arrays(tmp_path / "s", {"obs": np.arange(8.0).reshape(4, 2), "action": action,
                                                      "action_mask": mask}, [4])
    norms = NormalizerSet.fit_from_store(store, {"obs": "limits", "action": "limits"})
    assert float(norms["action"].stats["max"]) == 2.0 and float(norms["action"].stats["min"]) == -2.0
    np.testing.assert_allclose(norms["obs"].normalize(np.array([[0.0, 1.0], [6.0, 7.0]])), [[-1, -1], [1, 1]],
                               atol=1e-6)
