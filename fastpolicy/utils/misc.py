"""Seeding, git commit lookup and thread settings shared by training, evaluation and benchmarks."""

from __future__ import annotations

import functools
import os
import random
import subprocess

import numpy as np
import torch


def calls(k: int) -> str:
    """``1call``, ``2calls``: denoiser calls per plan as a method-id fragment (``student-2calls``)."""
    return f"{k}call" if k == 1 else f"{k}calls"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch RNGs (envs are seeded through their own ``reset(seed=)``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds libraries that still use the global RNG
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the working tree, with ``-dirty`` when it has changes; ``unknown`` outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def resolve_device(device: str | None = None) -> torch.device:
    """``auto``/None → CUDA when available, else CPU. GPU paths must always have this CPU fallback."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here (torch "
                             f"{torch.__version__}); use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                             "device(s) exist")
    return resolved
