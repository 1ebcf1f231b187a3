"""Rebuilding a policy from a checkpoint: the registry turns ``config.json``'s policy type into a class.

The byte format (safetensors + JSON, atomic writes, hashes) is ``fastpolicy.utils.checkpoint``, shared
with the inverse-dynamics model and the trainer; this module adds the one step only the policies can
take, choosing the class by name. ``TorchPolicy.save`` / ``TorchPolicy.load`` and ``fastpolicy.load``
are the user-facing doors built on it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from fastpolicy.utils.checkpoint import CheckpointError, load_tensors, read_config, resolve_checkpoint

if TYPE_CHECKING:
    from fastpolicy.policies.torch_policy import TorchPolicy


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> TorchPolicy:
    """Rebuild a Policy from a checkpoint (or a run directory) — weights, config and normalizer."""
    # Imported here: the registry imports every policy module, and torch_policy imports this module.
    from fastpolicy.policies.registry import build_policy

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    weights = load_tensors(ckpt, "model.safetensors", config["sha256"].get("model.safetensors"))
    norm = load_tensors(ckpt, "normalizer.safetensors", config["sha256"].get("normalizer.safetensors"))
    policy = build_policy(config["policy_type"], config["policy_config"], normalizer_state=norm)
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: weights do not fit the {config['policy_type']} policy "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    policy.checkpoint_step = config["step"]
    policy.checkpoint_hash = config["sha256"]["model.safetensors"]
    return policy.to(device).eval()
