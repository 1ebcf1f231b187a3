"""Action-free splits (SS-ORL protocol): keep the actions of a few low-return trajectories, remove the rest.

Zheng et al. (ICML 2023, "Semi-Supervised Offline RL with Action-Free Trajectories") study the regime
where only a small, *poor* part of the data carries actions: sort the trajectories by return, draw the
labeled set (10% of all trajectories) at random from the bottom 50%, and treat every other trajectory
as action-free. :func:`split_store` writes such a split as a new :class:`EpisodeStore`:

* every episode of the source is kept, in the same order (episode ``i`` of the split is episode ``i``
  of the source), so results can be compared per episode;
* the actions of unlabeled steps are **removed** — overwritten with zeros, the true values are never
  written — and ``action_mask`` is False there (True = action known); keys derived from the action
  (any other key whose name contains ``action``, e.g. ``infos/action_log_probs``) are zeroed too;
* ``infos/split`` (int8 per step) says which part a step belongs to: ``0`` labeled, ``1`` unlabeled
  in-distribution (the bottom part by return, where the labels were drawn), ``2`` unlabeled
  out-of-distribution (the top part); the attrs hold the same as episode index lists;
* the attrs record provenance: source path, a content hash of the source arrays, the source's own
  attrs, the seed and both fractions, and the return threshold between the two parts.

:func:`labeled_subset` extracts the episodes whose actions are all known (the "labeled-only" training
set of the protocol) — training on the masked split instead would spend 90% of every batch on steps
that contribute no loss. :func:`store_content_hash` is the provenance hash used by splits and labels.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.data.store import EpisodeStore

#: ``infos/split`` codes.
LABELED, UNLABELED_IN_DIST, UNLABELED_OUT_DIST = 0, 1, 2
SPLIT_NAMES: dict[int, str] = {LABELED: "labeled", UNLABELED_IN_DIST: "unlabeled_in_distribution",
                               UNLABELED_OUT_DIST: "unlabeled_out_of_distribution"}


@dataclass(frozen=True)
class SplitPlan:
    """Which episodes are labeled, and which unlabeled ones are in / out of the labeled distribution."""

    labeled: np.ndarray               # episode indices, sorted
    unlabeled_in_dist: np.ndarray     # bottom part by return, not drawn
    unlabeled_out_dist: np.ndarray    # top part by return
    return_threshold: float           # highest return of the bottom part

    def episode_codes(self, n_episodes: int) -> np.ndarray:
        """``infos/split`` code per episode."""
        codes = np.full(n_episodes, UNLABELED_OUT_DIST, dtype=np.int8)
        codes[self.unlabeled_in_dist] = UNLABELED_IN_DIST
        codes[self.labeled] = LABELED
        return codes


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 < value <= 1.0) or not np.isfinite(value):
        raise ValueError(f"{name} must be a fraction in (0, 1], got {value}")
    return value


def plan_split(returns: np.ndarray, labeled: float = 0.1, from_bottom: float = 0.5,
               seed: int = 0) -> SplitPlan:
    """Choose ``round(labeled·N)`` (≥ 1) episodes at random among the ``round(from_bottom·N)`` lowest
    returns.

    Ties in return are broken by episode index (stable sort), so the plan is a pure function of
    ``(returns, labeled, from_bottom, seed)``.
    """
    labeled = _check_fraction("labeled fraction", labeled)
    from_bottom = _check_fraction("from-bottom fraction", from_bottom)
    returns = np.asarray(returns, dtype=np.float64)
    n = len(returns)
    if n == 0:
        raise ValueError("cannot split a store with no episodes")
    if not np.isfinite(returns).all():
        raise ValueError("episode returns contain NaN/inf; cannot rank the episodes")
    n_labeled = max(1, int(round(labeled * n)))
    n_bottom = max(1, int(round(from_bottom * n)))
    if n_labeled > n_bottom:
        raise ValueError(f"cannot draw {n_labeled} labeled episodes ({labeled:g} of {n}) from the bottom "
                         f"{n_bottom} ({from_bottom:g} of {n}); the labeled fraction must not exceed "
                         "the from-bottom fraction")
    order = np.argsort(returns, kind="stable")
    bottom, top = order[:n_bottom], order[n_bottom:]
    chosen = np.random.default_rng(seed).choice(bottom, size=n_labeled, replace=False)
    rest = np.setdiff1d(bottom, chosen)
    return SplitPlan(labeled=np.sort(chosen), unlabeled_in_dist=np.sort(rest),
                     unlabeled_out_dist=np.sort(top),
                     return_threshold=float(returns[bottom[-1]]))


def store_content_hash(store: EpisodeStore, keys: list[str] | None = None) -> str:
    """SHA-256 over ``meta/episode_ends`` and the named data arrays (default: all), with their names,
    shapes and dtypes."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(store.episode_ends).tobytes())
    for key in keys or store.keys:
        arr = np.ascontiguousarray(store.array(key))
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _action_derived(key: str) -> bool:
    return key not in ("action", "action_mask") and "action" in key.rsplit("/", 1)[-1]


def split_store(source: str | os.PathLike | EpisodeStore, out: str | os.PathLike, labeled: float = 0.1,
                from_bottom: float = 0.5, seed: int = 0, overwrite: bool = False) -> EpisodeStore:
    """Write the SS-ORL split of ``source`` to ``out`` (atomically) and return the opened new store.

    Raises ValueError for fractions outside (0, 1], a labeled fraction above the from-bottom one, or a
    source without rewards or without any known action; FileExistsError if ``out`` exists and not
    ``overwrite``.
    """
    store = source if isinstance(source, EpisodeStore) else EpisodeStore.open(source)
    out = Path(out)
    if out.resolve() == Path(store.path).resolve():
        raise ValueError(f"the split must go to a new store, not over its source {store.path}")
    for key in ("action", "reward"):
        if key not in store.keys:
            raise ValueError(f"{store.path} has no {key!r} array; a split needs actions and rewards "
                             f"(keys: {store.keys})")
    known = store.array("action_mask") if "action_mask" in store.keys else np.ones(store.n_steps, bool)
    if not known.any():
        raise ValueError(f"{store.path} has no labeled actions (action_mask is False everywhere); "
                         "nothing to split")
    plan = plan_split(store.episode_returns(), labeled, from_bottom, seed)
    lengths = store.episode_lengths
    step_codes = np.repeat(plan.episode_codes(store.n_episodes), lengths)
    mask = known & (step_codes == LABELED)

    data: dict[str, np.ndarray] = {}
    for key in store.keys:
        if key in ("action_mask", "infos/split"):
            continue
        arr = store.array(key)
        if key == "action" or _action_derived(key):
            # A fresh array of zeros with only the labeled values copied in: the true values of unlabeled
            # steps are never written, not even transiently into the output buffer.
            removed = np.zeros_like(arr)
            removed[mask] = arr[mask]
            arr = removed
        data[key] = arr
    data["action_mask"] = mask
    data["infos/split"] = step_codes

    source_attrs = store.attrs
    attrs: dict[str, Any] = {k: v for k, v in source_attrs.items() if k not in ("split", "labeling")}
    attrs["split"] = {
        "protocol": "SS-ORL (Zheng et al. 2023): labeled = random draw from the bottom by return",
        "source_store": str(Path(store.path).resolve()),
        "source_hash": store_content_hash(store),
        "source_attrs": source_attrs,
        "seed": int(seed),
        "labeled_fraction": float(labeled),
        "from_bottom": float(from_bottom),
        "return_threshold": plan.return_threshold,
        "codes": {str(k): v for k, v in SPLIT_NAMES.items()},
        "labeled_episodes": plan.labeled.tolist(),
        "unlabeled_in_distribution": plan.unlabeled_in_dist.tolist(),
        "unlabeled_out_of_distribution": plan.unlabeled_out_dist.tolist(),
        "labeled_steps": int(mask.sum()),
        "unlabeled_steps": int((~mask).sum()),
    }
    return EpisodeStore.from_arrays(out, data, store.episode_ends, attrs=attrs, overwrite=overwrite)


def labeled_subset(source: str | os.PathLike | EpisodeStore, out: str | os.PathLike,
                   overwrite: bool = False) -> EpisodeStore:
    """Write the episodes whose actions are all known (``action_mask`` True everywhere) as a new store.

    ``infos/source_episode`` maps every step back to its episode index in ``source``.
    """
    store = source if isinstance(source, EpisodeStore) else EpisodeStore.open(source)
    mask = store.array("action_mask") if "action_mask" in store.keys else np.ones(store.n_steps, bool)
    lengths = store.episode_lengths
    starts = np.concatenate([[0], store.episode_ends[:-1]])
    full = np.logical_and.reduceat(mask, starts) if len(starts) else np.zeros(0, bool)
    keep = np.flatnonzero(full)
    if len(keep) == 0:
        raise ValueError(f"{store.path} has no fully labeled episode")
    step_keep = np.repeat(full, lengths)
    data = {key: store.array(key)[step_keep] for key in store.keys if key != "action_mask"}
    data["infos/source_episode"] = np.repeat(keep, lengths[keep]).astype(np.int64)
    attrs = dict(store.attrs)
    attrs["labeled_subset"] = {"source_store": str(Path(store.path).resolve()),
                               "source_episodes": keep.tolist()}
    return EpisodeStore.from_arrays(out, data, np.cumsum(lengths[keep]), attrs=attrs, overwrite=overwrite)
