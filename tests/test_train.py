"""Training loop and checkpoints: round trip, corruption, exact resume after SIGKILL, torchrun DDP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fastpolicy.policies.checkpoint import load_policy
from fastpolicy.train.offline import train_offline
from fastpolicy.train.trainer import TrainConfig
from fastpolicy.utils.checkpoint import CheckpointError, resolve_checkpoint, save_checkpoint

TINY = {"backbone": "mlp", "backbone_kwargs": {"hidden": 32, "depth": 2}, "sampler": "ddim:4"}


def _cfg(**kw):
    base = dict(steps=8, batch_size=16, warmup_steps=2, checkpoint_every=4, progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoint_round_trip_gives_identical_actions(linear_store, tmp_path):
    policy, _ = train_offline(linear_store, tmp_path / "run", "diffusion", TINY, _cfg(ema=False))
    loaded = load_policy(tmp_path / "run")
    obs = np.random.default_rng(0).random((3, 2, 2)).astype(np.float32)
    policy.eval()
    a = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1)).actions
    b = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(1)).actions
    assert np.array_equal(a, b)
    assert loaded.checkpoint_step == 8


def test_only_recent_checkpoints_are_kept_and_latest_is_named(linear_store, tmp_path):
    train_offline(
        linear_store,
        tmp_path / "run",
        "bc",
        {"hidden": 16, "depth": 1},
        _cfg(steps=20, checkpoint_every=2, keep_checkpoints=2),
    )
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step_00000018", "step_00000020"]
    assert resolve_checkpoint(tmp_path / "run").name == "step_00000020"


def test_existing_run_is_not_overwritten_without_resume(linear_store, tmp_path):
    train_offline(linear_store, tmp_path / "run", "bc", {"hidden": 16, "depth": 1}, _cfg())
    before = (tmp_path / "run" / "latest").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train_offline(linear_store, tmp_path / "run", "bc", {"hidden": 16, "depth": 1}, _cfg())
    assert (tmp_path / "run" / "latest").read_text() == before


@pytest.fixture
def saved_checkpoint(linear_store, tmp_path):
    train_offline(linear_store, tmp_path / "run", "bc", {"hidden": 16, "depth": 1}, _cfg(steps=4))
    return resolve_checkpoint(tmp_path / "run")


def test_corrupted_checkpoint_is_named(saved_checkpoint):
    f = saved_checkpoint / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_policy(saved_checkpoint)


def test_truncated_checkpoint_is_named(saved_checkpoint):
    f = saved_checkpoint / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_policy(saved_checkpoint)


def test_garbled_config_is_named(saved_checkpoint):
    (saved_checkpoint / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_policy(saved_checkpoint)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "nope")


def test_save_refuses_to_overwrite_when_asked(tmp_path):
    save_checkpoint(
        tmp_path / "c",
        policy_type="bc",
        policy_config={},
        model_state={"w": torch.ones(2)},
        normalizer_state={},
        step=1,
    )
    with pytest.raises(FileExistsError):
        save_checkpoint(
            tmp_path / "c",
            policy_type="bc",
            policy_config={},
            model_state={"w": torch.zeros(2)},
            normalizer_state={},
            step=2,
            overwrite=False,
        )
    assert torch.equal(load_file(str(tmp_path / "c" / "model.safetensors"))["w"], torch.ones(2))


def _train_cmd(store, out, steps, extra=()):
    return [
        sys.executable,
        "-m",
        "fastpolicy.cli",
        "train",
        "--store",
        str(store),
        "--out",
        str(out),
        "--policy",
        "diffusion",
        "--option",
        f"backbone_kwargs={json.dumps(TINY['backbone_kwargs'])}",
        "--backbone",
        "mlp",
        "--steps",
        str(steps),
        "--batch-size",
        "16",
        "--warmup-steps",
        "5",
        "--checkpoint-every",
        "10",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def test_sigkill_then_resume_continues_exactly(linear_store, tmp_path):
    steps = 400
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(linear_store, run, steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (run / "latest").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "training never wrote a checkpoint"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(resolve_checkpoint(run).name.split("_")[1])
    assert killed_at < steps, "the run finished before it could be killed; the test proves nothing"
    done = subprocess.run(_train_cmd(linear_store, run, steps, ["--resume"]), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(linear_store, straight, steps), check=True, capture_output=True)
    a = load_file(str(resolve_checkpoint(run) / "model.safetensors"))
    b = load_file(str(resolve_checkpoint(straight) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_train_on_cpu(linear_store, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "fastpolicy.cli",
        "train",
        "--store",
        str(linear_store),
        "--out",
        str(run),
        "--policy",
        "bc",
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = resolve_checkpoint(run)
    meta = json.loads((ckpt / "train_state.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 6


def test_obs_normalization_option_picks_the_fitted_normalizer(linear_store, tmp_path):
    """``obs_normalization`` decides how the obs normalizer is fitted; it is saved with the checkpoint."""
    from fastpolicy.data.normalize import MODES

    gaussian = {"hidden": 16, "depth": 1, "obs_normalization": "gaussian"}
    train_offline(linear_store, tmp_path / "g", "bc", gaussian, _cfg(steps=2))
    train_offline(linear_store, tmp_path / "l", "bc", {"hidden": 16, "depth": 1}, _cfg(steps=2))
    modes = {name: int(load_policy(tmp_path / name).normalizer_state()["obs.mode"]) for name in ("g", "l")}
    assert modes == {"g": MODES.index("gaussian"), "l": MODES.index("limits")}
