"""The Python API: top-level exports (lazy), ``policy.save`` / ``fastpolicy.load``, training from a store
object or from arrays."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastpolicy
from fastpolicy.data.store import EpisodeStore
from fastpolicy.policies.registry import build_policy
from fastpolicy.train.offline import train_offline
from fastpolicy.train.trainer import TrainConfig

TINY = {"backbone": "mlp", "backbone_kwargs": {"hidden": 32, "depth": 2}, "sampler": "ddim:4"}
OBS = np.random.default_rng(0).random((3, 2, 2)).astype(np.float32)


def _cfg(**kw):
    base = dict(steps=6, batch_size=16, warmup_steps=2, checkpoint_every=6, progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def _actions(policy, seed=1):
    return policy.predict_chunk(OBS, generator=torch.Generator().manual_seed(seed)).actions


def test_top_level_names_resolve_lazily_without_importing_torch():
    names = ["load", "DiffusionPolicy", "ConsistencyPolicy", "StreamingPolicy", "BCPolicy", "EpisodeStore",
             "TrainConfig", "train_offline", "distill", "evaluate"]
    code = ("import sys, fastpolicy\n"
            "assert 'torch' not in sys.modules and 'zarr' not in sys.modules, 'import is not cheap'\n"
            f"from fastpolicy import {', '.join(names)}\n"
            "assert 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert set(fastpolicy.__all__) == set(names) | {"__version__"}
    assert set(fastpolicy._EXPORTS) | {"load", "__version__"} == set(fastpolicy.__all__)
    assert set(names) <= set(dir(fastpolicy))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fastpolicy.nope  # noqa: B018


def test_saved_diffusion_policy_loads_back_with_identical_actions(linear_store, tmp_path):
    policy, _ = train_offline(linear_store, tmp_path / "run", "diffusion", TINY, _cfg())
    policy.eval()
    path = policy.save(tmp_path / "saved")
    loaded = fastpolicy.load(path)
    assert type(loaded) is type(policy) and loaded.config == policy.config
    assert np.array_equal(_actions(loaded), _actions(policy))
    assert not np.array_equal(_actions(loaded, seed=1), _actions(loaded, seed=2))  # the seed matters
    # sessions with the same seed drive the same way
    a, b = policy.new_session(seed=3), loaded.new_session(seed=3)
    for obs in OBS[:, -1]:
        assert np.array_equal(a.act(obs), b.act(obs))
    assert loaded.checkpoint_step == 0  # a policy that never came from a checkpoint saves step 0


def test_save_writes_the_trainers_checkpoint_format(linear_store, tmp_path):
    train_offline(linear_store, tmp_path / "run", "bc", {"hidden": 16, "depth": 1}, _cfg())
    from_run = fastpolicy.load(tmp_path / "run")  # a run directory: its latest (EMA) checkpoint
    from_run.save(tmp_path / "copy")
    latest = (tmp_path / "run" / "latest").read_text().strip()
    run_ckpt = json.loads((tmp_path / "run" / "checkpoints" / latest / "config.json").read_text())
    copy = json.loads((tmp_path / "copy" / "config.json").read_text())
    for key in ("format", "policy_type", "policy_config", "step", "sha256"):
        assert copy[key] == run_ckpt[key], key  # same weights, same bytes, same step
    assert not (tmp_path / "copy" / "train_state.safetensors").exists()  # inference only
    assert np.array_equal(_actions(fastpolicy.load(tmp_path / "copy")), _actions(from_run))


def test_save_replaces_a_checkpoint_but_never_another_directory(tmp_path):
    policy = build_policy("bc", {"obs_dim": 2, "action_dim": 1, "hidden": 8, "depth": 1})  # untrained is fine
    policy.save(tmp_path / "ckpt")
    policy.save(tmp_path / "ckpt")  # a checkpoint is replaced atomically
    with pytest.raises(FileExistsError):
        policy.save(tmp_path / "ckpt", overwrite=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        policy.save(tmp_path / "run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def test_load_is_a_method_of_the_policy_classes(tmp_path):
    from fastpolicy.policies.bc import BCPolicy
    from fastpolicy.policies.diffusion_policy import DiffusionPolicy
    from fastpolicy.policies.torch_policy import TorchPolicy

    policy = build_policy("bc", {"obs_dim": 2, "action_dim": 1, "hidden": 8, "depth": 1})
    path = policy.save(tmp_path / "ckpt")
    for cls in (BCPolicy, TorchPolicy):  # the saved class or any base of it
        loaded = cls.load(path)
        assert type(loaded) is BCPolicy and np.array_equal(_actions(loaded), _actions(policy))
    with pytest.raises(ValueError, match="holds a 'bc' policy, not a DiffusionPolicy"):
        DiffusionPolicy.load(path)


def test_training_from_a_store_object_equals_training_from_its_path(linear_store, tmp_path):
    opts = {"hidden": 16, "depth": 1}
    by_path, _ = train_offline(linear_store, tmp_path / "a", "bc", opts, _cfg(ema=False))
    by_object, _ = train_offline(EpisodeStore.open(linear_store), tmp_path / "b", "bc", opts, _cfg(ema=False))
    for (name, x), (_, y) in zip(by_path.state_dict().items(), by_object.state_dict().items()):
        assert torch.equal(x, y), name
    recorded = json.loads((tmp_path / "b" / "checkpoints" / "step_00000006" / "config.json").read_text())
    assert recorded["train"]["store"] == str(linear_store)  # the run still names the store on disk


def test_training_from_arrays_through_from_arrays(tmp_path):
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, size=(90, 2)).astype(np.float32)
    action = np.clip(obs[:, 1:] - obs[:, :1], -1, 1)
    store = EpisodeStore.from_arrays(tmp_path / "arrays", {"obs": obs, "action": action}, [30, 60, 90])
    policy, stats = train_offline(store, tmp_path / "run", "bc", {"hidden": 16, "depth": 1}, _cfg())
    assert stats["step"] == 6 and np.isfinite(stats["loss"])
    assert fastpolicy.load(tmp_path / "run").new_session().act(obs[0]).shape == (1,)
