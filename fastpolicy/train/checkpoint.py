"""Old import path of the checkpoint format, kept so existing scripts and benchmarks still import.

The format lives in ``fastpolicy.utils.checkpoint`` and ``load_policy`` in
``fastpolicy.policies.checkpoint``; new code imports from there.
"""

from fastpolicy.policies.checkpoint import load_policy
from fastpolicy.utils.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    checkpoint_name,
    load_tensors,
    model_hash,
    prune_checkpoints,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
    write_latest,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "checkpoint_name",
    "load_policy",
    "load_tensors",
    "model_hash",
    "prune_checkpoints",
    "read_config",
    "resolve_checkpoint",
    "save_checkpoint",
    "write_latest",
]
