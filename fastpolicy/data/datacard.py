"""Data cards: a JSON summary and a return histogram PNG written next to a dataset store.

For a store at ``datasets/store/hopper-medium`` the card is ``datasets/store/hopper-medium.datacard.json``
and the histogram ``datasets/store/hopper-medium.returns.png`` (the same PNG ``fastpolicy data info``
writes). The card says what the data is and how good it is, so a reader never has to open the store:

* identity: name, label (e.g. "D4RL-style (gymnasium v5)"), env id, task, recipe, seed, source,
  checkpoint step and actor SHA-256 (when a behaviour policy built it);
* sizes: steps, episodes, terminal / timeout / unflagged episode ends;
* return and length statistics of the episodes (complete episodes only for the return stats of
  rollouts: the last, size-cut episode is excluded and counted separately);
* reference scores: D4RL's REF_MIN/REF_MAX and the normalized mean (from the attrs ``ref_min_score`` /
  ``ref_max_score``), plus whatever locally measured references the builder passes (random return,
  behaviour-policy returns);
* anything else the builder passes in ``extra`` (training progress, availability of other bands, notes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.data.store import EpisodeStore, jsonable_attrs

CARD_SUFFIX = ".datacard.json"
PNG_SUFFIX = ".returns.png"


def datacard_paths(store_path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<store>.datacard.json, <store>.returns.png)`` beside the store directory."""
    path = Path(store_path)
    return path.parent / f"{path.name}{CARD_SUFFIX}", path.parent / f"{path.name}{PNG_SUFFIX}"


def _stats(values: np.ndarray) -> dict[str, float | int | None]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "p25": None, "median": None, "p75": None,
                "max": None}
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "p25": float(p25), "median": float(median), "p75": float(p75),
            "max": float(values.max())}


def build_datacard(store: EpisodeStore | str | os.PathLike, extra: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The data card of ``store`` as a JSON-ready dict (``extra`` merged in at the top level)."""
    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    attrs = store.attrs
    ends = store.episode_ends
    last = ends - 1
    terminal = store.array("terminal")[last] if "terminal" in store.keys else np.zeros(len(ends), bool)
    timeout = store.array("timeout")[last] if "timeout" in store.keys else np.zeros(len(ends), bool)
    flagged = terminal | timeout
    lengths = store.episode_lengths
    card: dict[str, Any] = {
        "name": store.path.name,
        "label": attrs.get("label"),
        "env_id": attrs.get("env_id"),
        "task": attrs.get("task"),
        "recipe": attrs.get("recipe"),
        "seed": attrs.get("seed"),
        "source": attrs.get("source"),
        "checkpoint_step": attrs.get("checkpoint_step"),
        "actor_sha256": attrs.get("actor_sha256"),
        "sizes": {"steps": int(store.n_steps), "episodes": int(store.n_episodes),
                  "terminal_episodes": int(terminal.sum()), "timeout_episodes": int(timeout.sum()),
                  "unflagged_episodes": int((~flagged).sum()), "keys": store.keys},
        "lengths": _stats(lengths),
    }
    if "reward" in store.keys:
        returns = store.episode_returns()
        # A trailing episode with neither flag was cut by the dataset size: its return is not comparable.
        complete = returns if flagged[-1] else returns[:-1]
        card["returns"] = {**_stats(complete),
                           "excluded_size_cut_episodes": int(len(returns) - len(complete))}
        lo, hi = attrs.get("ref_min_score"), attrs.get("ref_max_score")
        scores: dict[str, Any] = {}
        if lo is not None and hi is not None and len(complete):
            normalized = 100.0 * (complete - lo) / (hi - lo)
            scores["d4rl"] = {"ref_min": lo, "ref_max": hi, "env_id": attrs.get("d4rl_env_id"),
                              "normalized_mean": float(normalized.mean()),
                              "normalized_std": float(normalized.std())}
        local = dict((extra or {}).get("local_reference", attrs.get("local_reference") or {}))
        if local:
            scores["local"] = local
            random = local.get("random_return")
            policies = [v for k, v in local.items()
                        if k.endswith("eval_return_deterministic") and v is not None]
            best = max(policies, default=None)
            if random is not None and best is not None and best > random and len(complete):
                scores["local"]["normalized_mean_vs_local_random_and_best_policy"] = float(
                    100.0 * (complete.mean() - random) / (best - random))
        card["reference_scores"] = scores
    card.update({k: v for k, v in (extra or {}).items() if k != "local_reference"})
    return jsonable_attrs(card)


def write_datacard(store: EpisodeStore | str | os.PathLike, extra: Mapping[str, Any] | None = None,
                   png: bool = True) -> tuple[Path, Path | None]:
    """Write ``<store>.datacard.json`` and ``<store>.returns.png``; returns both paths."""
    from fastpolicy.data.info import plot_returns
    from fastpolicy.utils.atomic import atomic_file

    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    card_path, png_path = datacard_paths(store.path)
    card = build_datacard(store, extra)
    if png:
        plot_returns(store, png_path)
        card["histogram_png"] = png_path.name
    with atomic_file(card_path, "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    return card_path, png_path if png else None


def read_datacard(store_path: str | os.PathLike) -> dict[str, Any]:
    card_path, _ = datacard_paths(store_path)
    if not card_path.is_file():
        raise FileNotFoundError(f"no data card {card_path}")
    return json.loads(card_path.read_text())
