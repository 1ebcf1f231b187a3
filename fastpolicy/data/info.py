"""Dataset summaries: what is in a store (``fastpolicy data info``), as a dict, text and a histogram.

Why: before training on a dataset you want to see its size, per-key statistics (a constant or
exploding dimension shows up here), and the spread of episode returns and lengths (is it expert,
medium, mixed?) without writing a notebook.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.data.store import EpisodeStore

PERCENTILES = (0, 5, 25, 50, 75, 95, 100)
_MAX_DIMS_LISTED = 64


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _stats(arr: np.ndarray) -> dict[str, Any]:
    if arr.dtype == np.bool_:
        return {"true_fraction": float(arr.mean()) if arr.size else None}
    x = arr.reshape(arr.shape[0], -1).astype(np.float64)
    out: dict[str, Any] = {
        "mean": _finite(x.mean()), "std": _finite(x.std()), "min": _finite(x.min()), "max": _finite(x.max()),
    }
    if 1 < x.shape[1] <= _MAX_DIMS_LISTED:
        out["per_dim"] = {
            "mean": [_finite(v) for v in x.mean(axis=0)], "std": [_finite(v) for v in x.std(axis=0)],
            "min": [_finite(v) for v in x.min(axis=0)], "max": [_finite(v) for v in x.max(axis=0)],
        }
    return out


def _distribution(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": _finite(values.mean()), "std": _finite(values.std()),
            "percentiles": {str(p): _finite(v)
                            for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}}


def store_info(store: EpisodeStore | str | os.PathLike) -> dict[str, Any]:
    """Episodes, steps, per-key shape/dtype/statistics, return and length distributions, attrs."""
    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    keys = {}
    for key in store.keys:
        arr = store.array(key)
        keys[key] = {"shape": list(arr.shape[1:]), "dtype": str(arr.dtype), **_stats(arr)}
    lengths = store.episode_lengths
    last_steps = store.episode_ends - 1

    def episodes_ending_with(key: str) -> int | None:
        return int(store.array(key)[last_steps].sum()) if key in store.keys else None

    info: dict[str, Any] = {
        "path": str(store.path),
        "episodes": store.n_episodes,
        "steps": store.n_steps,
        "keys": keys,
        "episode_length": _distribution(lengths),
        "returns": _distribution(store.episode_returns()) if "reward" in store.keys else None,
        "terminal_episodes": episodes_ending_with("terminal"),
        "timeout_episodes": episodes_ending_with("timeout"),
        "attrs": store.attrs,
    }
    if "action_mask" in store.keys:
        info["labeled_fraction"] = float(store.array("action_mask").mean())
    return info


def format_info(info: dict[str, Any]) -> str:
    """Plain-text rendering of :func:`store_info` for the terminal."""
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    lines = [f"{info['path']}: {info['episodes']} episodes, {info['steps']} steps"]
    lengths = info["episode_length"]
    p = lengths["percentiles"]
    lines.append(f"  episode length: mean {num(lengths['mean'])}  min {num(p['0'])}  median {num(p['50'])}  "
                 f"max {num(p['100'])}")
    if info.get("returns"):
        r = info["returns"]
        q = r["percentiles"]
        lines.append(f"  return: mean {num(r['mean'])} ± {num(r['std'])}  "
                     + "[" + ", ".join(f"p{p} {num(q[str(p)])}" for p in (0, 5, 50, 95, 100)) + "]")
    if info.get("terminal_episodes") is not None:
        lines.append(f"  episodes ending terminal / timeout / neither: {info['terminal_episodes']} / "
                     f"{info['timeout_episodes']} / "
                     f"{info['episodes'] - info['terminal_episodes'] - info['timeout_episodes']}")
    if "labeled_fraction" in info:
        lines.append(f"  labeled actions: {100 * info['labeled_fraction']:.1f}% of steps")
    lines.append(f"  {'key':<22}{'shape':<14}{'dtype':<10}{'mean':>11}{'std':>11}{'min':>11}{'max':>11}")
    for key, k in info["keys"].items():
        shape = "(" + ", ".join(str(s) for s in k["shape"]) + ")"
        if "true_fraction" in k:
            stats = f"{'true ' + num(k['true_fraction']):>22}"
        else:
            stats = "".join(f"{num(k[s]):>11}" for s in ("mean", "std", "min", "max"))
        lines.append(f"  {key:<22}{shape:<14}{k['dtype']:<10}{stats}")
    attrs = {k: v for k, v in info["attrs"].items() if not isinstance(v, (dict, list))}
    if attrs:
        lines.append("  attrs: " + ", ".join(f"{k}={v}" for k, v in sorted(attrs.items())))
    return "\n".join(lines)


def plot_returns(store: EpisodeStore | str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Histogram of episode returns (when the store has rewards) and of episode lengths, as a PNG."""
    # A bare Figure renders with Agg and touches no global pyplot state (safe in servers and tests).
    from matplotlib.figure import Figure

    from fastpolicy.utils.atomic import atomic_file

    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    panels = [("episode length", store.episode_lengths)]
    if "reward" in store.keys:
        panels.insert(0, ("episode return", store.episode_returns()))
    fig = Figure(figsize=(5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels))
    axes = np.atleast_1d(axes)
    for ax, (label, values) in zip(axes, panels):
        ax.hist(values, bins=min(50, max(5, len(values) // 2)), color="tab:blue", alpha=0.85)
        ax.set_xlabel(label)
        ax.set_ylabel("episodes")
        ax.axvline(float(np.median(values)), color="k", lw=1, ls="--", label="median")
        ax.legend(loc="upper right", fontsize=8)
    title = store.attrs.get("env_id") or store.attrs.get("recipe") or store.path.name
    fig.suptitle(f"{title}: {store.n_episodes} episodes, {store.n_steps} steps")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_file(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return png_path
