"""Numba kernels for sequence windows over concatenated episodes (the sampler's hot path).

A dataset stores episodes back to back with cumulative ``episode_ends``. Training a diffusion policy
needs every fixed-length window of every episode, padded at the episode edges by repeating the first /
last frame (Diffusion Policy semantics). ``window_indices`` builds that index once; ``gather_windows``
materialises a batch of windows in one compiled loop, which is far cheaper than a Python ``__getitem__``
per sample when the model is small.

Each index row is ``[buffer_start, buffer_end, sample_start, sample_end]``: frames
``data[buffer_start:buffer_end]`` land at ``window[sample_start:sample_end]``; positions before
``sample_start`` repeat ``data[buffer_start]`` and positions from ``sample_end`` repeat
``data[buffer_end - 1]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def window_indices_masked(episode_ends: np.ndarray, sequence_length: int, pad_before: int, pad_after: int,
                          episode_mask: np.ndarray) -> np.ndarray:
    """Like :func:`window_indices`, but only for episodes whose ``episode_mask`` entry is True."""
    if sequence_length < 1:
        raise ValueError("sequence_length must be >= 1")
    if pad_before < 0 or pad_before > sequence_length - 1:
        raise ValueError("pad_before must be in [0, sequence_length - 1]")
    if pad_after < 0 or pad_after > sequence_length - 1:
        raise ValueError("pad_after must be in [0, sequence_length - 1]")
    if episode_mask.shape[0] != episode_ends.shape[0]:
        raise ValueError("episode_mask must have one entry per episode")
    # First pass counts rows so the output is allocated once.
    total = 0
    start = 0
    for i in range(episode_ends.shape[0]):
        end = episode_ends[i]
        length = end - start
        if length < 0:
            raise ValueError("episode_ends must be non-decreasing")
        if episode_mask[i]:
            n = length - sequence_length + pad_after + pad_before + 1
            if n > 0:
                total += n
        start = end
    out = np.empty((total, 4), dtype=np.int64)
    row = 0
    start = 0
    for i in range(episode_ends.shape[0]):
        end = episode_ends[i]
        length = end - start
        if episode_mask[i]:
            for idx in range(-pad_before, length - sequence_length + pad_after + 1):
                buffer_start = max(idx, 0) + start
                buffer_end = min(idx + sequence_length, length) + start
                out[row, 0] = buffer_start
                out[row, 1] = buffer_end
                out[row, 2] = buffer_start - (idx + start)
                out[row, 3] = sequence_length - ((idx + sequence_length + start) - buffer_end)
                row += 1
        start = end
    return out


@njit(cache=True)
def window_indices(episode_ends: np.ndarray, sequence_length: int, pad_before: int,
                   pad_after: int) -> np.ndarray:
    """All padded windows of ``sequence_length`` frames, as int64 rows ``[bs, be, ss, se]``.

    For an episode of length ``L`` the window start ``idx`` runs from ``-pad_before`` to
    ``L - sequence_length + pad_after`` inclusive; an episode shorter than that range yields no rows.
    """
    mask = np.ones(episode_ends.shape[0], dtype=np.bool_)
    return window_indices_masked(episode_ends, sequence_length, pad_before, pad_after, mask)


@njit(cache=True)
def gather_windows(data: np.ndarray, indices: np.ndarray, rows: np.ndarray, sequence_length: int,
                   out: np.ndarray) -> None:
    """Fill ``out[b]`` (``sequence_length`` x D) with the window ``indices[rows[b]]`` of 2-D ``data``."""
    dim = data.shape[1]
    for b in range(rows.shape[0]):
        r = rows[b]
        buffer_start = indices[r, 0]
        buffer_end = indices[r, 1]
        sample_start = indices[r, 2]
        sample_end = indices[r, 3]
        for t in range(sequence_length):
            if t < sample_start:
                src = buffer_start
            elif t >= sample_end:
                src = buffer_end - 1
            else:
                src = buffer_start + (t - sample_start)
            for d in range(dim):
                out[b, t, d] = data[src, d]
