"""Return maths and dataset building for the planners: what a planner's training batch holds.

Every planner trains on windows of ``H`` steps with ``obs``, ``action`` and ``rtg`` — the raw discounted
return-to-go at every step of the window, computed per episode with no bootstrap past its end — so the
critic, the value function and the return condition all read the same numbers. Numpy only: building a
dataset needs no model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RTG_KEY = "rtg"
"""the batch key of the discounted returns-to-go (B, H)"""


def discounted_returns(reward: np.ndarray, episode_ends: np.ndarray, discount: float) -> np.ndarray:
    """Per-step discounted return-to-go within each episode (no bootstrap past the episode's end)."""
    reward = np.asarray(reward, dtype=np.float64)
    out = np.zeros_like(reward)
    start = 0
    for end in np.asarray(episode_ends, dtype=np.int64):
        acc = 0.0
        for t in range(end - 1, start - 1, -1):
            acc = reward[t] + discount * acc
            out[t] = acc
        start = end
    return out.astype(np.float32)


def offset_std(obs: np.ndarray, episode_ends: np.ndarray, max_offset: int, floor: float = 1e-6) -> np.ndarray:
    """(max_offset, obs_dim): per k = 1..max_offset and dimension, the standard deviation of the k-step
    offsets ``obs[t + k] − obs[t]`` within episodes; a dimension that never moves gets 1 (nothing to
    scale)."""
    obs = np.asarray(obs, dtype=np.float64)
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    out = np.ones((max_offset, obs.shape[1]))
    for k in range(1, max_offset + 1):
        parts = [obs[a + k:b] - obs[a:b - k] for a, b in zip(starts, ends) if b - a > k]
        if not parts:
            raise ValueError(f"no episode is longer than {k} steps: cannot measure {k}-step offsets")
        std = np.concatenate(parts).std(0)
        out[k - 1] = np.where(std > floor, std, 1.0)
    return out


def planner_dataset(store: Any, horizon: int, discount: float):
    """Windows of ``horizon`` steps inside episodes with ``obs``, ``action`` and ``rtg`` (no padding)."""
    from fastpolicy.data.sampler import SequenceDataset

    ends = np.asarray(store.episode_ends, dtype=np.int64)
    source = {"episode_ends": ends, "obs": store.array("obs"), "action": store.array("action"),
              RTG_KEY: discounted_returns(store.array("reward"), ends, discount)}
    if "action_mask" in store.keys:
        source["action_mask"] = store.array("action_mask")
    return SequenceDataset(source, horizon=horizon, keys=("obs", "action", RTG_KEY))



__all__ = ["RTG_KEY", "discounted_returns", "offset_std", "planner_dataset"]
