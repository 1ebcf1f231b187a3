"""The checkpoint format: everything needed to rebuild a model, and everything needed to resume training.

It lives in ``utils``, below every package that writes or reads it: the policies
(``TorchPolicy.save`` / ``TorchPolicy.load``, ``fastpolicy.policies.checkpoint.load_policy``), the
inverse-dynamics model in ``nets`` and the trainer all share this one format.

Layout of one checkpoint directory (written atomically — a killed writer leaves the previous one intact):

    config.json            policy type + policy config + training step + content hashes
    model.safetensors      inference weights (the EMA weights when training used EMA)
    normalizer.safetensors normalizer statistics (obs / action scale and offset)
    train_state.safetensors  raw weights, optimizer tensors, RNG states   (resume only)
    train_state.json         optimizer hyper-parameters, scheduler and EMA counters (resume only)

No pickle: weights are safetensors, configs JSON. A run directory holds ``checkpoints/step_XXXXXXXX``
folders and a ``latest`` text file naming the newest; ``resolve_checkpoint`` accepts either kind of path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fastpolicy import __version__
from fastpolicy.utils.atomic import atomic_dir, atomic_file
from fastpolicy.utils.atomic import file_sha256 as _sha256

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or of an unknown kind."""


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(
    path: str | os.PathLike,
    *,
    policy_type: str,
    policy_config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    normalizer_state: dict[str, torch.Tensor],
    step: int,
    train_tensors: dict[str, torch.Tensor] | None = None,
    train_meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write one checkpoint directory atomically and return its path."""
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        save_file(_contiguous(normalizer_state), str(tmp / "normalizer.safetensors"))
        if train_tensors is not None:
            save_file(_contiguous(train_tensors), str(tmp / "train_state.safetensors"))
            (tmp / "train_state.json").write_text(json.dumps(train_meta or {}, indent=1))
        config = {
            "format": CHECKPOINT_FORMAT,
            "fastpolicy_version": __version__,
            "policy_type": policy_type,
            "policy_config": policy_config,
            "step": int(step),
            "sha256": {name: _sha256(tmp / name) for name in ("model.safetensors", "normalizer.safetensors")},
            **(extra or {}),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint dir, or a run dir (→ its ``latest`` checkpoint)."""
    path = Path(path)
    if (path / "config.json").exists():
        return path
    latest = path / "latest"
    if latest.exists():
        target = path / "checkpoints" / latest.read_text().strip()
        if (target / "config.json").exists():
            return target
        raise CheckpointError(f"{latest} names {target.name}, which is missing or incomplete")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path} is neither a checkpoint (no config.json) nor a run directory (no latest)")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = resolve_checkpoint(path)
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{ckpt / 'config.json'} is not valid JSON ({exc})") from exc
    for key in ("format", "policy_type", "policy_config", "step"):
        if key not in config:
            raise CheckpointError(f"{ckpt / 'config.json'} lacks {key!r}: not a fastpolicy checkpoint")
    if config["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{ckpt}: checkpoint format {config['format']} is not supported "
            f"(this fastpolicy reads format {CHECKPOINT_FORMAT})"
        )
    return config


def load_tensors(ckpt: Path, name: str, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load one safetensors file, checking its hash so truncation or corruption is named, not guessed."""
    file = ckpt / name
    if not file.exists():
        raise CheckpointError(f"{file} is missing")
    if expected_sha256 is not None and _sha256(file) != expected_sha256:
        raise CheckpointError(f"{file} is corrupted or truncated (sha256 does not match config.json)")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} cannot be read: {exc}") from exc


def model_hash(path: str | os.PathLike) -> str:
    """Content hash of a checkpoint's inference weights (the server announces it)."""
    return read_config(path)["sha256"]["model.safetensors"]


# --- run directories -------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def write_latest(run_dir: Path, name: str) -> None:
    with atomic_file(run_dir / "latest", "w") as f:
        f.write(name + "\n")


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (and whatever ``latest`` names)."""
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    latest = (run_dir / "latest").read_text().strip() if (run_dir / "latest").exists() else None
    for old in ckpts[:-keep] if keep > 0 else []:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
