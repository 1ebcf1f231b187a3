"""fastpolicy: diffusion policies and planners made fast enough for real-time robot control.

The package has no import-time side effects; heavy optional dependencies (mujoco, stable-baselines3,
ray, minari, websockets) are imported inside the functions that need them.

The Python API in one place (stable-baselines3's ``learn / predict / save / load``, LeRobot's
``from_pretrained``)::

    import fastpolicy
    policy, _ = fastpolicy.train_offline(store, "runs/bc", "bc")   # a store object or its path
    policy = fastpolicy.load("runs/bc")                            # a run or checkpoint directory
    policy.save("my-policy")
    action = policy.new_session(seed=0).act(obs)

The names below are loaded lazily (PEP 562 ``__getattr__``), so ``import fastpolicy`` stays cheap
(no torch, zarr or gymnasium until a name is used) and no import cycle forms at start-up.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from fastpolicy.utils.lazy import lazy_exports  # noqa: E402 - after __version__, which modules read

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time the names come from __getattr__
    import torch

    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.evaluation import evaluate
    from fastpolicy.policies.bc import BCPolicy
    from fastpolicy.policies.consistency import ConsistencyPolicy
    from fastpolicy.policies.diffusion_policy import DiffusionPolicy
    from fastpolicy.policies.streaming import StreamingPolicy
    from fastpolicy.policies.torch_policy import TorchPolicy
    from fastpolicy.train.distill import distill
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

_EXPORTS = {
    "DiffusionPolicy": "fastpolicy.policies.diffusion_policy",
    "ConsistencyPolicy": "fastpolicy.policies.consistency",
    "StreamingPolicy": "fastpolicy.policies.streaming",
    "BCPolicy": "fastpolicy.policies.bc",
    "EpisodeStore": "fastpolicy.data.store",
    "TrainConfig": "fastpolicy.train.trainer",
    "train_offline": "fastpolicy.train.offline",
    "distill": "fastpolicy.train.distill",
    "evaluate": "fastpolicy.evaluation",
}


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> TorchPolicy:
    """The policy saved at ``path``: a checkpoint directory (``policy.save``) or a training run
    directory (its latest checkpoint), rebuilt from config, weights and normaliser — no pickle."""
    from fastpolicy.policies.checkpoint import load_policy

    return load_policy(path, device=device)


# Written out (not computed from _EXPORTS) so linters and type checkers read it; a test keeps them equal.
__all__ = [
    "BCPolicy",
    "ConsistencyPolicy",
    "DiffusionPolicy",
    "EpisodeStore",
    "StreamingPolicy",
    "TrainConfig",
    "__version__",
    "distill",
    "evaluate",
    "load",
    "train_offline",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
