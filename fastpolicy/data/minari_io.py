"""Minari dataset import (read the HDF5 directly with h5py) and export (through ``minari``).

A Minari dataset directory holds ``data/main_data.hdf5`` with one group per episode,
``episode_<id>``, containing ``observations`` (N+1 rows: the reset observation plus one per step;
a group for Dict/Tuple spaces), ``actions`` (N), ``rewards``, ``terminations``, ``truncations`` (N)
and ``infos`` (a group; arrays of N+1 or N rows), plus ``data/metadata.json``.

Import reads the file directly so it needs neither the ``minari`` package nor its environment:
``obs = observations[:-1]``, ``next_obs = observations[1:]``, ``terminal = terminations``,
``timeout = truncations``; an info array with N+1 rows is aligned with the observations (row t is the
info at obs t, the last row is dropped), one with N rows is kept as is; nested info groups become
``infos/a/b``. Dict observations (and Tuple ones, as ``_index_<i>`` groups) are flattened per step and
concatenated in sorted key order; the layout is recorded in the store attributes ``obs_keys`` and
``obs_key_dims``.

Export uses ``minari.create_dataset_from_buffers`` with ``EpisodeBuffer`` objects (no jax needed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.data.store import EpisodeStore

_EPISODE_RE = re.compile(r"^episode_(\d+)$")


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _flatten_obs(node: Any, name: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A dataset as (rows, -1), or a group's leaves concatenated in sorted key order, with the layout."""
    import h5py

    if isinstance(node, h5py.Dataset):
        arr = np.asarray(node[()])
        if arr.ndim == 0:
            raise ValueError(f"{node.file.filename}: {node.name} is a scalar, expected per-step rows")
        dim = int(np.prod(arr.shape[1:], dtype=np.int64))
        return arr.reshape(arr.shape[0], -1), [{"key": name, "dim": dim}]
    parts, layout = [], []
    for key in sorted(node.keys(), key=_natural_key):
        arr, sub = _flatten_obs(node[key], f"{name}/{key}" if name else key)
        parts.append(arr)
        layout.extend(sub)
    if not parts:
        raise ValueError(f"{node.file.filename}: {node.name} is an empty group")
    if len({p.shape[0] for p in parts}) != 1:
        raise ValueError(f"{node.file.filename}: members of {node.name} have different lengths "
                         f"{[p.shape[0] for p in parts]}")
    dtype = np.result_type(*parts)
    return np.concatenate([p.astype(dtype) for p in parts], axis=1), layout


def _read_infos(group: Any, n_steps: int, prefix: str, out: dict[str, np.ndarray],
                skipped: list[str]) -> None:
    import h5py

    for key in sorted(group.keys()):
        node = group[key]
        name = f"{prefix}/{key}"
        if isinstance(node, h5py.Group):
            _read_infos(node, n_steps, name, out, skipped)
            continue
        arr = np.asarray(node[()])
        if arr.dtype.kind not in "biuf" or arr.ndim == 0:
            skipped.append(name)
            continue
        if arr.shape[0] == n_steps + 1:
            arr = arr[:-1]
        if arr.shape[0] != n_steps:
            skipped.append(name)
            continue
        out[name] = arr


def _resolve_main_file(path: Path) -> tuple[Path, Path | None]:
    candidates = [path / "data" / "main_data.hdf5", path / "main_data.hdf5", path]
    for candidate in candidates:
        if candidate.is_file():
            meta = candidate.parent / "metadata.json"
            return candidate, meta if meta.is_file() else None
    raise FileNotFoundError(f"no Minari dataset at {path} (expected {path}/data/main_data.hdf5)")


def import_minari(path_or_dataset_dir: str | os.PathLike, store_path: str | os.PathLike,
                  overwrite: bool = False, attrs: dict[str, Any] | None = None) -> EpisodeStore:
    """Convert a Minari dataset directory (or its ``main_data.hdf5``) into an EpisodeStore."""
    import h5py

    store_path = Path(store_path)
    if store_path.exists() and not overwrite:
        raise FileExistsError(f"{store_path} already exists (pass overwrite=True / --overwrite to replace)")
    main_file, meta_file = _resolve_main_file(Path(path_or_dataset_dir))
    metadata: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file else {}
    layout: list[dict[str, Any]] | None = None
    skipped: list[str] = []
    with h5py.File(main_file, "r") as f:
        names = sorted((n for n in f.keys() if _EPISODE_RE.match(n)), key=lambda n: int(n.split("_")[1]))
        if not names:
            raise ValueError(f"{main_file}: no episode_<id> groups found")
        with EpisodeStore.create(store_path, overwrite=overwrite) as writer:
            for name in names:
                group = f[name]
                for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                    if key not in group:
                        raise ValueError(f"{main_file}: {name} is missing {key!r}")
                observations, ep_layout = _flatten_obs(group["observations"], "")
                if layout is None:
                    layout = ep_layout
                actions, _ = _flatten_obs(group["actions"], "")
                n = actions.shape[0]
                if observations.shape[0] != n + 1:
                    raise ValueError(f"{main_file}: {name} has {observations.shape[0]} observations for "
                                     f"{n} actions (Minari stores N+1 observations for N steps)")
                episode: dict[str, Any] = {
                    "obs": observations[:-1], "next_obs": observations[1:], "action": actions,
                    "reward": np.asarray(group["rewards"][()]),
                    "terminal": np.asarray(group["terminations"][()]),
                    "timeout": np.asarray(group["truncations"][()]),
                }
                if "infos" in group:
                    infos: dict[str, np.ndarray] = {}
                    _read_infos(group["infos"], n, "infos", infos, skipped)
                    episode.update(infos)
                writer.add_episode(episode)
            structured = layout is not None and (len(layout) > 1 or layout[0]["key"] != "")
            found = {
                "source": "minari",
                "dataset_id": metadata.get("dataset_id"),
                "env_id": _env_id(metadata),
                "ref_min_score": metadata.get("ref_min_score"),
                "ref_max_score": metadata.get("ref_max_score"),
                "minari_metadata": metadata,
                "obs_keys": [entry["key"] for entry in layout] if structured else None,
                "obs_key_dims": [entry["dim"] for entry in layout] if structured else None,
                "obs_layout_note": ("dict observations flattened per step, concatenated in sorted key "
                                    "order" if structured else None),
                "minari_skipped_infos": sorted(set(skipped)) or None,
            }
            writer.attrs.update({k: v for k, v in found.items() if v is not None})
            writer.attrs.update(attrs or {})
    assert writer.store is not None
    return writer.store


def _env_id(metadata: dict[str, Any]) -> str | None:
    spec = metadata.get("env_spec")
    if isinstance(spec, str):
        with contextlib.suppress(ValueError):
            spec = json.loads(spec)
    return spec.get("id") if isinstance(spec, dict) else None


def export_minari(store: EpisodeStore | str | os.PathLike, dataset_dir: str | os.PathLike,
                  dataset_id: str | None = None, overwrite: bool = False) -> Path:
    """Write the store as a Minari dataset at ``dataset_dir`` (needs the ``minari`` package).

    Minari wants N+1 observations per episode: the last one is ``next_obs[-1]`` when the store has
    ``next_obs``, else the last observation repeated (said in the dataset description). Minari's layout
    has no separate next observation inside an episode: ``next_obs[t]`` is taken to be ``obs[t+1]``.
    Infos get the same extra row so that :func:`import_minari` gives the arrays back. ``dataset_id``
    defaults to ``<dir name>-v0``; the dataset is built in a temporary directory and renamed into place.
    """
    try:
        import gymnasium as gym
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError as exc:
        raise ImportError("export_minari needs the 'minari' extra (pip install 'fastpolicy[minari]')"
                          ) from exc
    from fastpolicy.utils.atomic import atomic_dir

    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    dataset_dir = Path(dataset_dir)
    if dataset_dir.exists() and not overwrite:
        raise FileExistsError(f"{dataset_dir} already exists (pass overwrite=True to replace it)")
    if dataset_id is None:
        name = re.sub(r"[^A-Za-z0-9_\-]", "_", dataset_dir.name)
        dataset_id = name if re.search(r"-v\d+$", name) else f"{name}-v0"
    has_next = "next_obs" in store.keys
    info_keys = [k for k in store.keys if k.startswith("infos/")]

    def space(key: str) -> Any:
        shape = store.shape(key)[1:]
        dtype = store.dtype(key)
        if dtype.kind == "f":
            return gym.spaces.Box(-np.inf, np.inf, shape=shape, dtype=dtype)
        info = np.iinfo(dtype)
        return gym.spaces.Box(info.min, info.max, shape=shape, dtype=dtype)

    buffers = []
    for i, ep in enumerate(store.episodes()):
        last = ep["next_obs"][-1:] if has_next else ep["obs"][-1:]
        infos: dict[str, Any] = {}
        for key in info_keys:
            node = infos
            parts = key.split("/")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = np.concatenate([ep[key], ep[key][-1:]], axis=0)
        buffers.append(EpisodeBuffer(
            id=i, observations=np.concatenate([ep["obs"], last], axis=0), actions=ep["action"],
            rewards=ep["reward"] if "reward" in ep else np.zeros(len(ep["obs"]), np.float32),
            terminations=ep["terminal"], truncations=ep["timeout"], infos=infos or None))
    attrs = store.attrs
    description = (f"Exported by fastpolicy from {store.path.name} (source {attrs.get('source')!r}). "
                   + ("" if has_next else "The final observation of each episode is the last one repeated."))
    # Without an env spec minari drops reference scores (it would roll out the env to get them), so
    # they are written into metadata.json directly after creation.
    ref_scores = {k: float(attrs[k]) for k in ("ref_min_score", "ref_max_score") if attrs.get(k) is not None}
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".minari-{dataset_dir.name}-", dir=dataset_dir.parent))
    previous = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(root)
        with warnings.catch_warnings():
            # minari warns about unset author / permalink / eval env; an export has none of these.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\.")
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers, observation_space=space("obs"),
                action_space=space("action"), algorithm_name=str(attrs.get("recipe") or attrs.get("source")),
                description=description, data_format="hdf5")
        data_dir = root / dataset_id / "data"
        if ref_scores:
            meta_path = data_dir / "metadata.json"
            meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **ref_scores}))
        with atomic_dir(dataset_dir, overwrite=overwrite) as tmp:
            os.rename(data_dir, tmp / "data")
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(root, ignore_errors=True)
    return dataset_dir
