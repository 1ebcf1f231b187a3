"""The observation history a policy plans from, and the one rule for non-finite numbers.

Why one class: the local ``Session``, the server's ``ServerSession`` and the control loop's
``ActionBroker`` each kept the last To observations of a robot, padded at episode start and cleared on
reset, and they had drifted (only ``Session`` refused to hand out NaN actions). They now share this
class and :func:`require_finite_actions`, so the three paths pad, reset and refuse alike.

Padding: until To observations have arrived, the window is left-padded with the oldest one — the way
the training sampler pads the start of an episode, so the policy sees what it was trained on.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch


class NonFiniteActionError(FloatingPointError):
    """A policy produced NaN or inf actions; they must never reach an actuator."""


def all_finite(value: Any) -> bool:
    """True when every float in ``value`` (array, tensor, or a dict / list / tuple of them) is finite."""
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, np.ndarray):
        return value.dtype.kind != "f" or bool(np.isfinite(value).all())
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(all_finite(v) for v in value)
    if isinstance(value, float):
        return bool(np.isfinite(value))
    return True


def require_finite_actions(actions: Any, who: str = "the policy") -> None:
    """Raise :class:`NonFiniteActionError` if ``actions`` holds NaN or inf, so a caller's fallback takes
    over instead of an actuator receiving it."""
    if not all_finite(actions):
        raise NonFiniteActionError(f"{who} produced non-finite actions")


class ObservationHistory:
    """The last ``obs_horizon`` observations of ``batch_size`` robots acting in lockstep.

    ``append`` takes (B, obs_dim) — or (obs_dim,) when B == 1 — and refuses NaN / inf with a
    ``ValueError`` before anything is stored. ``window()`` is (B, To, obs_dim), oldest first.
    """

    def __init__(self, obs_horizon: int, batch_size: int = 1) -> None:
        if obs_horizon <= 0 or batch_size <= 0:
            raise ValueError(f"obs_horizon and batch_size must be positive, got {obs_horizon}, {batch_size}")
        self.obs_horizon = obs_horizon
        self.batch_size = batch_size
        self._frames: deque[np.ndarray] = deque(maxlen=obs_horizon)

    def __len__(self) -> int:
        """Observations held (at most ``obs_horizon``); 0 right after a reset."""
        return len(self._frames)

    def reset(self) -> None:
        """A new episode: forget every observation."""
        self._frames.clear()

    def append(self, obs: np.ndarray) -> None:
        frame = np.asarray(obs, dtype=np.float32).reshape(self.batch_size, -1)
        if not np.all(np.isfinite(frame)):
            raise ValueError("observation contains NaN or inf")
        self._frames.append(frame)

    def extend(self, frames: np.ndarray) -> None:
        """Append (k, obs_dim) observations of one robot in order (a request that carries k frames)."""
        for frame in np.asarray(frames, dtype=np.float32):
            self.append(frame)

    def window(self) -> np.ndarray:
        """(B, To, obs_dim): the history, left-padded with the oldest frame (as the training sampler pads)."""
        if not self._frames:
            raise ValueError("no observation yet: append one before asking for a window")
        frames = list(self._frames)
        frames = [frames[0]] * (self.obs_horizon - len(frames)) + frames
        return np.stack(frames, axis=1)

    def snapshot(self) -> list[np.ndarray]:
        """The frames held now, for :meth:`restore` when a request's result is refused."""
        return list(self._frames)

    def restore(self, frames: list[np.ndarray]) -> None:
        self._frames = deque(frames, maxlen=self.obs_horizon)
