"""SequenceDataset: padded fixed-length windows over an EpisodeStore (Diffusion Policy semantics).

Every window of ``horizon`` frames whose start runs from ``-pad_before`` to
``len - horizon + pad_after`` in each episode is a sample; frames outside the episode repeat its
first / last frame. With ``pad_before = To - 1`` and ``pad_after = Ta - 1`` a policy reads
``obs[:To]`` and ``action[To-1 : To-1+Ta]`` of each window.

The arrays are loaded into memory once and the window index is built once by a numba kernel
(``fastpolicy.kernels.sequence``). Two ways to read: the ``torch.utils.data.Dataset`` protocol
(``ds[i]``, works with ``DataLoader``) and :meth:`SequenceDataset.sample_batch`, which gathers a
whole batch in one compiled call — for small models the per-item Python overhead of a DataLoader
dominates a training step (see ``bench/bench_sampler.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fastpolicy.kernels.sequence import gather_windows, window_indices_masked


def episode_split(n_episodes: int, val_ratio: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation episode masks; at least one episode stays in train."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n_val = min(int(round(n_episodes * val_ratio)), max(n_episodes - 1, 0))
    val = np.zeros(n_episodes, dtype=bool)
    val[np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False)] = True
    return ~val, val


class SequenceDataset(torch.utils.data.Dataset):
    """Padded windows of ``horizon`` steps for ``keys`` from a store or an in-memory dict.

    ``source`` is an :class:`~fastpolicy.data.store.EpisodeStore` or a mapping with the arrays and an
    ``"episode_ends"`` entry. ``episode_mask`` (bool per episode) restricts the windows to a subset of
    episodes (train / validation split). Items are ``key -> float32 tensor (horizon, *shape)``; when
    ``"action"`` is requested and the source has an ``action_mask``, items also carry
    ``action_mask`` as a bool tensor ``(horizon,)`` (True = the action is a real label).
    """

    def __init__(self, source: Any, horizon: int, pad_before: int = 0, pad_after: int = 0,
                 keys: Sequence[str] = ("obs", "action"), episode_mask: np.ndarray | None = None):
        if int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        horizon = int(horizon)
        for name, pad in (("pad_before", pad_before), ("pad_after", pad_after)):
            if not 0 <= int(pad) <= horizon - 1:
                raise ValueError(f"{name} must be in [0, horizon - 1] = [0, {horizon - 1}], got {pad}")
        self.horizon = horizon
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)
        episode_ends, arrays = _load(source, keys)
        self.episode_ends = episode_ends
        n_episodes = len(episode_ends)
        if episode_mask is None:
            episode_mask = np.ones(n_episodes, dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != (n_episodes,):
            raise ValueError(f"episode_mask has shape {episode_mask.shape}, expected ({n_episodes},)")
        self.episode_mask = episode_mask
        self.indices = window_indices_masked(episode_ends, horizon, self.pad_before, self.pad_after,
                                             episode_mask)
        self.keys = tuple(arrays)
        # Gather works on 2-D (T, D) views; remember each key's per-step shape to restore it.
        self._flat: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for key, arr in arrays.items():
            if arr.dtype == np.bool_:
                arr = arr.view(np.uint8)
            elif arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            self._shapes[key] = arr.shape[1:]
            self._flat[key] = np.ascontiguousarray(arr.reshape(arr.shape[0], -1))
        self._reshape = {key for key, shape in self._shapes.items() if len(shape) != 1}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"window index {i} out of range for {n} windows")
        # Per item, numpy slicing beats a compiled call (numba's dispatch costs more than the copy).
        bs, be, ss, se = self.indices[i % n].tolist()
        out: dict[str, torch.Tensor] = {}
        for key, flat in self._flat.items():
            window = flat[bs:be]
            if ss > 0 or se < self.horizon:
                padded = np.empty((self.horizon, flat.shape[1]), dtype=flat.dtype)
                padded[:ss] = window[0]
                padded[se:] = window[-1]
                padded[ss:se] = window
                window = padded
            tensor = torch.from_numpy(np.array(window, copy=True) if window.base is not None else window)
            if flat.dtype == np.uint8:
                tensor = tensor.bool()
            if key in self._reshape:
                tensor = tensor.reshape(self.horizon, *self._shapes[key])
            out[key] = tensor
        return out

    def sample_batch(self, batch_indices: Any) -> dict[str, torch.Tensor]:
        """Windows ``batch_indices`` stacked: ``key -> tensor (B, horizon, *shape)`` in one gather."""
        rows = np.ascontiguousarray(np.asarray(batch_indices, dtype=np.int64).reshape(-1))
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.indices)):
            raise IndexError(f"batch indices must be in [0, {len(self.indices)}), got min {rows.min()} "
                             f"max {rows.max()}")
        out: dict[str, torch.Tensor] = {}
        for key, flat in self._flat.items():
            buf = np.empty((len(rows), self.horizon, flat.shape[1]), dtype=flat.dtype)
            gather_windows(flat, self.indices, rows, self.horizon, buf)
            tensor = torch.from_numpy(buf)
            if flat.dtype == np.uint8:
                tensor = tensor.bool()
            out[key] = tensor.reshape(len(rows), self.horizon, *self._shapes[key])
        return out

    def random_batch(self, batch_size: int, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """A batch of uniformly drawn windows (with replacement)."""
        return self.sample_batch(generator.integers(0, len(self.indices), size=batch_size))


def _load(source: Any, keys: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from fastpolicy.data.store import EpisodeStore

    keys = list(keys)
    if isinstance(source, EpisodeStore):
        available = set(source.keys)
        ends = source.episode_ends

        def get(key: str) -> np.ndarray:
            return source.array(key)
    elif isinstance(source, Mapping):
        if "episode_ends" not in source:
            raise KeyError("a dict source needs an 'episode_ends' entry (cumulative int64 ends)")
        available = set(source) - {"episode_ends"}
        ends = np.asarray(source["episode_ends"], dtype=np.int64)

        def get(key: str) -> np.ndarray:
            return np.asarray(source[key])
    else:
        raise TypeError(f"source must be an EpisodeStore or a dict of arrays, got {type(source).__name__}")
    if ends.ndim != 1 or len(ends) == 0 or np.any(np.diff(ends, prepend=0) < 0):
        raise ValueError("episode_ends must be a non-empty, non-decreasing 1-D array")
    if "action" in keys and "action_mask" in available and "action_mask" not in keys:
        keys.append("action_mask")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in available:
            raise KeyError(f"key {key!r} not in the dataset (has {sorted(available)})")
        arr = get(key)
        if arr.shape[0] != ends[-1]:
            raise ValueError(f"key {key!r} has {arr.shape[0]} steps but episode_ends[-1] = {int(ends[-1])}")
        arrays[key] = arr
    return ends, arrays
