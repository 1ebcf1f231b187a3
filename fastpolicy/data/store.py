"""EpisodeStore: episodes concatenated over time in one zarr 3 group, written atomically.

Layout (the Diffusion Policy ReplayBuffer idea, on the zarr 3 API)::

    <store>/data/<key>            arrays with time as the first axis, all episodes back to back
    <store>/data/infos/<name>     nested keys ("infos/qpos") become subgroup arrays
    <store>/meta/episode_ends     int64 cumulative episode ends (episode i = [ends[i-1], ends[i]))
    <store> attributes            JSON dict: source, env_id, recipe, seed, task, reference scores, ...

Why this shape: a sampler needs random access to any window of any episode, which concatenated arrays
plus cumulative ends give for free; zarr chunks and compresses them and appends episode by episode.

Writing goes through :class:`EpisodeWriter` (``EpisodeStore.create``) or ``EpisodeStore.from_arrays``.
Both build the store in a temporary sibling directory (``fastpolicy.utils.atomic.atomic_dir``) and
rename it into place only when everything was written, so a crash or a kill never leaves a partial
store at the target and never damages a store already there. Every episode is validated on the way
in (same keys, lengths, shapes and dtypes; finite observations and actions) with errors that name the
key, the episode and what is wrong.

Integrity: zarr reads a missing chunk as its fill value (zeros) without a word, so ``close`` records
every chunk file with its size and sha256 in ``<store>/manifest.json`` (inside the temporary
directory, so it appears atomically with the store). ``EpisodeStore.open`` checks that every recorded
chunk is present with its recorded size (one ``stat`` per chunk: cheap), a read that fails names the
array and the chunk, and :func:`verify_store` (``fastpolicy data verify``) hashes and decodes every
chunk. A missing or damaged chunk raises :class:`StoreIntegrityError` naming the array and the chunk;
so does a recorded array that is gone (zarr would just list one key fewer) and a missing manifest of a
store whose attributes say it was written with one (``integrity_manifest``).

Length: the writer, the reader and the integrity check share one on-disk layout and manifest; split, each
would restate it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.utils.atomic import file_sha256 as _sha256

#: Keys every episode must carry.
REQUIRED_KEYS: tuple[str, ...] = ("obs", "action")
#: Conventional key order (other keys follow, sorted).
STANDARD_KEYS: tuple[str, ...] = ("obs", "action", "reward", "terminal", "timeout", "action_mask", "next_obs")
#: Floating keys stored as float32 (the data contract); integer data (images, discrete actions) is kept.
FLOAT32_KEYS: tuple[str, ...] = ("obs", "action", "reward", "next_obs")
#: Keys cast to bool; ``terminal``/``timeout`` default to all-False when an episode omits them.
BOOL_KEYS: tuple[str, ...] = ("terminal", "timeout", "action_mask")
#: Keys that must be finite (an unlabeled action is allowed to be NaN: it is stored as 0, masked).
FINITE_KEYS: tuple[str, ...] = ("obs", "action", "next_obs", "reward")
#: Keys whose (T, 1) shape is squeezed to (T,).
SCALAR_KEYS: tuple[str, ...] = ("reward", "terminal", "timeout", "action_mask")

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")
_CHUNK_BYTES = 4 << 20          # target chunk size before compression
_BUFFER_BYTES = 64 << 20        # flush the writer's in-memory episodes at this size at the latest
_MAX_CHUNK_ROWS = 1 << 16
_MIN_CHUNK_ROWS = 256
#: The chunk inventory written with every store (see the module docstring).
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fastpolicy-store-manifest/1"
#: Root attribute saying the store was written with a manifest: without it, deleting manifest.json
#: would silently turn every check off (the store would pass for one written before manifests).
MANIFEST_ATTR = "integrity_manifest"


class StoreIntegrityError(ValueError):
    """A chunk of a store is missing or damaged (the message names the array and the chunk)."""


def _fastpolicy_version() -> str:
    from fastpolicy import __version__
    return __version__


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def jsonable_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a plain-JSON copy of ``attrs`` (numpy scalars/arrays converted); ValueError names a bad key."""
    out: dict[str, Any] = {}
    for key, value in dict(attrs or {}).items():
        if not isinstance(key, str):
            raise ValueError(f"attribute names must be strings, got {key!r}")
        try:
            out[key] = json.loads(json.dumps(value, default=_json_default, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"attribute {key!r} is not JSON-serializable: {exc}") from None
    return out


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def _ordered_keys(keys: Any) -> list[str]:
    keys = set(keys)
    return [k for k in STANDARD_KEYS if k in keys] + sorted(keys - set(STANDARD_KEYS))


def _episode_of(ends: np.ndarray, row: int) -> int:
    return int(np.searchsorted(ends, row, side="right"))


def _normalize_block(data: Mapping[str, Any], ends: np.ndarray, episode_offset: int) -> dict[str, np.ndarray]:
    """Validate and normalise a block of whole episodes (``ends`` cumulative within the block).

    Returns flat ``key -> array`` with the contract's dtypes and shapes. Error messages name the key
    and the (global) episode index at fault.
    """
    flat = _flatten(data)

    def where(row: int) -> str:
        return f"episode {episode_offset + _episode_of(ends, row)}"

    last = episode_offset + len(ends) - 1
    block = f"episode {episode_offset}" if len(ends) == 1 else f"episodes {episode_offset}..{last}"
    for key in REQUIRED_KEYS:
        if key not in flat:
            raise ValueError(f"{block}: missing required key {key!r} (got keys {sorted(flat)})")
    n_rows = int(ends[-1])
    out: dict[str, np.ndarray] = {}
    for key in _ordered_keys(flat):
        if not _KEY_RE.match(key):
            raise ValueError(f"{block}: invalid key name {key!r} (letters, digits, _ . - and '/' nesting)")
        arr = np.asarray(flat[key])
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise ValueError(f"{block}: key {key!r} has unsupported dtype {arr.dtype} (numeric or bool only)")
        if arr.ndim == 0:
            raise ValueError(f"{block}: key {key!r} is a scalar; every key needs a time axis of "
                             f"length {n_rows}")
        if arr.shape[0] != n_rows:
            raise ValueError(f"{block}: key {key!r} has {arr.shape[0]} steps but 'obs' has "
                             f"{np.asarray(flat['obs']).shape[0]}")
        if key in SCALAR_KEYS and arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if key in SCALAR_KEYS and arr.ndim != 1:
            raise ValueError(f"{block}: key {key!r} must have shape (T,) or (T, 1), got {arr.shape}")
        if key in BOOL_KEYS:
            arr = arr.astype(bool, copy=False)
        elif key == "reward" or (key in FLOAT32_KEYS and arr.dtype.kind == "f"):
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{block}: key {key!r} has non-real dtype {arr.dtype}")
            arr = arr.astype(np.float32, copy=False)
        elif arr.dtype.kind == "c":
            raise ValueError(f"{block}: key {key!r} has complex dtype {arr.dtype} (not supported)")
        out[key] = arr
    for key in ("terminal", "timeout"):
        if key not in out:
            out[key] = np.zeros(n_rows, dtype=bool)
    if "action_mask" in out and out["action"].dtype.kind == "f":
        # Unlabeled actions may arrive as NaN; store them as 0 so sums/normalizers stay finite.
        unlabeled = ~out["action_mask"]
        if unlabeled.any():
            action = out["action"].copy()
            action[unlabeled] = 0
            out["action"] = action
    for key in FINITE_KEYS:
        arr = out.get(key)
        if arr is None or arr.dtype.kind not in "fc":
            continue
        finite = np.isfinite(arr).reshape(n_rows, -1).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            episode = _episode_of(ends, row)
            start = int(ends[episode - 1]) if episode > 0 else 0
            hint = " (mark unlabeled actions with action_mask=False)" if key == "action" else ""
            raise ValueError(f"{where(row)}: key {key!r} contains NaN/inf at step {row - start}{hint}")
    return out


def _chunk_rows(row_shape: tuple[int, ...], dtype: np.dtype, chunk_steps: int | None) -> int:
    if chunk_steps is not None:
        return max(1, int(chunk_steps))
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return int(min(_MAX_CHUNK_ROWS, max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // row_bytes)))


def _compressor(dtype: np.dtype):
    from zarr.codecs import BloscCodec
    shuffle = "bitshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")


class EpisodeWriter:
    """Append episodes to a new store; the store appears at ``path`` only when :meth:`close` succeeds.

    Use as a context manager (``with EpisodeStore.create(path) as w: w.add_episode(...)``): a clean
    exit closes (renames into place), an exception aborts (the temporary directory is removed, the
    target untouched). ``attrs`` may be updated until close. After close, ``store`` is the opened
    read-only :class:`EpisodeStore`.
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None,
                 overwrite: bool = False, chunk_steps: int | None = None):
        import zarr

        from fastpolicy.utils.atomic import atomic_dir

        self.path = Path(path)
        _check_target(self.path, overwrite)
        self.attrs: dict[str, Any] = jsonable_attrs(attrs)
        self.chunk_steps = chunk_steps
        self.store: EpisodeStore | None = None
        self._atomic = atomic_dir(self.path, overwrite=overwrite)
        self._tmp = self._atomic.__enter__()
        self._root = zarr.open_group(str(self._tmp), mode="w")
        self._data = self._root.require_group("data")
        self._schema: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None
        self._arrays: dict[str, Any] = {}
        self._buffer: dict[str, list[np.ndarray]] = {}
        self._buffered_steps = 0
        self._buffered_bytes = 0
        self._flush_steps = 0
        self._ends: list[int] = []
        self._done = False

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort(exc_type, exc, tb)

    # -- writing --------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return self._ends[-1] if self._ends else 0

    def add_episode(self, episode: Mapping[str, Any]) -> int:
        """Validate one episode (``key -> (T, ...) array``, nested dicts allowed) and append it.

        Returns the episode's index. Raises ValueError naming the key and episode on bad input.
        """
        self._check_open()
        index = len(self._ends)
        if not isinstance(episode, Mapping):
            raise ValueError(f"episode {index}: expected a dict of arrays, got {type(episode).__name__}")
        flat = _flatten(episode)
        if "obs" not in flat:
            raise ValueError(f"episode {index}: missing required key 'obs' (got keys {sorted(flat)})")
        if np.ndim(flat["obs"]) == 0:
            raise ValueError(f"episode {index}: key 'obs' is a scalar; it needs a time axis")
        length = int(np.shape(flat["obs"])[0])
        if length == 0:
            raise ValueError(f"episode {index} is empty (0 steps); episodes need at least one step")
        arrays = _normalize_block(flat, np.array([length], dtype=np.int64), index)
        self._check_schema(arrays, index)
        for key, arr in arrays.items():
            # Copy: the caller may reuse its arrays for the next episode before the buffer is flushed.
            self._buffer.setdefault(key, []).append(np.array(arr, copy=True))
        self._buffered_steps += length
        self._buffered_bytes += sum(arr.nbytes for arr in arrays.values())
        self._ends.append(self.n_steps + length)
        if self._buffered_steps >= self._flush_steps or self._buffered_bytes >= _BUFFER_BYTES:
            self._flush()
        return index

    def add_episodes(self, episodes) -> None:
        for episode in episodes:
            self.add_episode(episode)

    def _check_schema(self, arrays: dict[str, np.ndarray], index: int) -> None:
        schema = {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}
        if self._schema is None:
            self._schema = schema
            self._flush_steps = max(_chunk_rows(s, d, self.chunk_steps) for s, d in schema.values())
            return
        if set(schema) != set(self._schema):
            missing = sorted(set(self._schema) - set(schema))
            extra = sorted(set(schema) - set(self._schema))
            raise ValueError(f"episode {index}: keys differ from episode 0 "
                             f"(missing {missing}, extra {extra})")
        for key, (shape, dtype) in schema.items():
            shape0, dtype0 = self._schema[key]
            if shape != shape0:
                raise ValueError(f"episode {index}: key {key!r} has per-step shape {shape}, "
                                 f"but earlier episodes have {shape0}")
            if dtype != dtype0:
                raise ValueError(f"episode {index}: key {key!r} has dtype {dtype}, "
                                 f"but earlier episodes have {dtype0}")

    def _flush(self) -> None:
        if not self._buffered_steps:
            return
        assert self._schema is not None
        for key in self._schema:
            block = np.concatenate(self._buffer[key], axis=0)
            self._append(key, block)
        self._buffer = {}
        self._buffered_steps = 0
        self._buffered_bytes = 0

    def _append(self, key: str, block: np.ndarray) -> None:
        arr = self._arrays.get(key)
        if arr is None:
            chunks = (_chunk_rows(block.shape[1:], block.dtype, self.chunk_steps), *block.shape[1:])
            arr = self._data.create_array(key, shape=(0, *block.shape[1:]), chunks=chunks, dtype=block.dtype,
                                          compressors=_compressor(block.dtype))
            self._arrays[key] = arr
        arr.append(block, axis=0)

    def _write_block(self, arrays: dict[str, np.ndarray], ends: np.ndarray) -> None:
        """Append a pre-validated block of whole episodes (used by ``from_arrays``)."""
        self._check_schema(arrays, len(self._ends))
        offset = self.n_steps
        for key, arr in arrays.items():
            self._append(key, arr)
        self._ends.extend(int(e) + offset for e in ends)

    # -- finishing ------------------------------------------------------------------------------
    def close(self) -> EpisodeStore:
        """Flush, write ``meta/episode_ends`` and attrs, and rename the store into place."""
        self._check_open()
        try:
            if not self._ends:
                raise ValueError(f"no episodes were added to {self.path}; nothing written")
            self._flush()
            meta = self._root.require_group("meta")
            ends = np.asarray(self._ends, dtype=np.int64)
            meta.create_array("episode_ends", shape=ends.shape, chunks=(max(1, len(ends)),), dtype=np.int64,
                              compressors=_compressor(ends.dtype))[:] = ends
            attrs = {"fastpolicy_version": _fastpolicy_version(), **jsonable_attrs(self.attrs),
                     MANIFEST_ATTR: MANIFEST_FORMAT}
            self._root.attrs.update(attrs)
            arrays = ["meta/episode_ends", *(f"data/{k}" for k in _array_names(self._data))]
            _write_manifest(self._tmp, arrays)
        except BaseException as exc:
            self.abort(type(exc), exc, exc.__traceback__)
            raise
        self._done = True
        self._atomic.__exit__(None, None, None)
        self.store = EpisodeStore.open(self.path)
        return self.store

    def abort(self, exc_type=None, exc=None, tb=None) -> None:
        """Discard everything written so far; the target path is left as it was."""
        if self._done:
            return
        self._done = True
        exc_type = exc_type or RuntimeError
        exc = exc or RuntimeError("aborted")
        try:
            self._atomic.__exit__(exc_type, exc, tb)
        except BaseException as raised:  # atomic_dir re-raises the exception it was given
            if raised is not exc:
                raise

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"writer for {self.path} is already closed")


class EpisodeStore:
    """Read-only view of a store on disk. Open with :meth:`open`; write with :meth:`create`.

    Arrays are read lazily and cached on first use of :meth:`array`.
    """

    def __init__(self, path: Path, group: Any, manifest: dict[str, Any] | None = None):
        self.path = path
        self._group = group
        self._manifest = manifest
        self._cache: dict[str, np.ndarray] = {}
        self._ends = np.asarray(self._read("meta/episode_ends", slice(None)), dtype=np.int64)
        self._keys = _ordered_keys(_array_names(group["data"]))

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> EpisodeStore:
        """Open an existing store read-only; FileNotFoundError / ValueError if it is not one."""
        import zarr

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no dataset store at {path}")
        try:
            group = zarr.open_group(str(path), mode="r")
        except Exception as exc:
            raise ValueError(f"{path} is not a fastpolicy EpisodeStore (not a zarr group: {exc})") from None
        if "meta" not in group or "episode_ends" not in group["meta"]:
            raise ValueError(f"{path} is not a fastpolicy EpisodeStore (no meta/episode_ends)")
        if "data" not in group:
            raise ValueError(f"{path} is not a fastpolicy EpisodeStore (no data group)")
        manifest = read_manifest(path, expected=MANIFEST_ATTR in group.attrs)
        if manifest is not None:
            problems = _inventory_problems(path, manifest, _array_names(group["data"]))
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise StoreIntegrityError(f"{path}: {problems[0]}{more}; the store is damaged — rebuild it "
                                          f"(details: fastpolicy data verify {path})")
        store = cls(path, group, manifest)
        ends = store._ends
        if ends.ndim != 1 or (len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0))):
            raise ValueError(f"{path}: meta/episode_ends must be strictly increasing positive int64")
        for key in store.keys:
            rows = group[f"data/{key}"].shape[0]
            if rows != store.n_steps:
                raise ValueError(f"{path}: data/{key} has {rows} rows but episode_ends says {store.n_steps}")
        return store

    @classmethod
    def create(cls, path: str | os.PathLike, attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
               chunk_steps: int | None = None) -> EpisodeWriter:
        """Start writing a new store at ``path`` (built in a temp dir, renamed into place on close)."""
        return EpisodeWriter(path, attrs=attrs, overwrite=overwrite, chunk_steps=chunk_steps)

    @classmethod
    def from_arrays(cls, path: str | os.PathLike, data: Mapping[str, Any], episode_ends: Any,
                    attrs: Mapping[str, Any] | None = None, overwrite: bool = False,
                    chunk_steps: int | None = None) -> EpisodeStore:
        """Write a whole store from concatenated arrays and cumulative ``episode_ends`` in one go."""
        path = Path(path)
        _check_target(path, overwrite)
        ends = np.asarray(episode_ends)
        if ends.ndim != 1 or len(ends) == 0 or ends.dtype.kind not in "iu":
            raise ValueError(f"episode_ends must be a non-empty 1-D integer array, got shape {ends.shape} "
                             f"dtype {ends.dtype}")
        ends = ends.astype(np.int64)
        lengths = np.diff(ends, prepend=0)
        if np.any(lengths <= 0):
            bad = int(np.argmax(lengths <= 0))
            raise ValueError(f"episode {bad} is empty or episode_ends is not increasing "
                             f"(episode_ends[{bad}] = {int(ends[bad])})")
        flat = _flatten(data)
        n_obs = np.shape(flat["obs"])[0] if "obs" in flat and np.ndim(flat["obs"]) else None
        if n_obs is not None and n_obs != ends[-1]:
            raise ValueError(f"episode_ends[-1] = {int(ends[-1])} but 'obs' has {n_obs} steps")
        arrays = _normalize_block(flat, ends, 0)
        with cls.create(path, attrs=attrs, overwrite=overwrite, chunk_steps=chunk_steps) as writer:
            writer._write_block(arrays, ends)
        assert writer.store is not None
        return writer.store

    # -- properties -----------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        """Data keys, standard ones first (``obs, action, reward, ...``), nested ones as ``infos/qpos``."""
        return list(self._keys)

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    def __len__(self) -> int:
        return self.n_episodes

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __repr__(self) -> str:
        return (f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps}, "
                f"keys={self.keys})")

    # -- data access ----------------------------------------------------------------------------
    def _zarr(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(f"{self.path} has no key {key!r}; keys: {self.keys}")
        return self._group[f"data/{key}"]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._zarr(key).shape)

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(self._zarr(key).dtype)

    def _read(self, array: str, selection: Any) -> np.ndarray:
        """``group[array][selection]``; a chunk that cannot be decoded is a StoreIntegrityError naming it."""
        try:
            return np.asarray(self._group[array][selection])
        except Exception as exc:
            raise _damage_error(self.path, self._manifest, array, exc) from None

    def array(self, key: str) -> np.ndarray:
        """The whole ``data/<key>`` array in memory (read once, then cached; do not modify it)."""
        if key not in self._cache:
            self._zarr(key)  # KeyError naming the keys
            self._cache[key] = self._read(f"data/{key}", Ellipsis)
        return self._cache[key]

    def _bounds(self, i: int) -> tuple[int, int]:
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes")
        i %= n
        return (int(self._ends[i - 1]) if i > 0 else 0), int(self._ends[i])

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``key -> array`` (flat keys, e.g. ``infos/qpos``)."""
        start, end = self._bounds(i)
        out = {}
        for key in keys or self._keys:
            if key in self._cache:
                out[key] = self._cache[key][start:end]
            else:
                self._zarr(key)  # KeyError naming the keys
                out[key] = self._read(f"data/{key}", slice(start, end))
        return out

    def episodes(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.n_episodes):
            yield self.episode(i, keys)

    def to_dict(self, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Whole arrays for ``keys`` (default all) as a flat dict."""
        return {key: self.array(key) for key in (keys or self._keys)}

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode (float64)."""
        if "reward" not in self._keys:
            raise ValueError(f"{self.path} has no 'reward' key; cannot compute returns")
        reward = self.array("reward").astype(np.float64)
        starts = np.concatenate([[0], self._ends[:-1]])
        return np.add.reduceat(reward, starts) if len(starts) else np.zeros(0)


def _array_names(group: Any) -> list[str]:
    names = []
    for name, member in group.members(max_depth=None):
        if hasattr(member, "shape") and hasattr(member, "dtype"):
            names.append(name)
    return names


# -- integrity ----------------------------------------------------------------------------------------
def _chunk_files(root: Path, array: str) -> dict[str, Path]:
    """Chunk key (``c/0/0``, zarr 3's default encoding) → file, for one array of the store at ``root``."""
    base = root / array / "c"
    if not base.is_dir():
        return {}
    return {p.relative_to(root / array).as_posix(): p for p in sorted(base.rglob("*")) if p.is_file()}


def _write_manifest(root: Path, arrays: list[str]) -> None:
    """Record every chunk file of ``arrays`` (size, sha256) in ``root/manifest.json``."""
    manifest = {"format": MANIFEST_FORMAT, "arrays": {}}
    for array in sorted(arrays):
        manifest["arrays"][array] = {key: [p.stat().st_size, _sha256(p)]
                                     for key, p in _chunk_files(root, array).items()}
    with open(root / MANIFEST_NAME, "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
        f.write("\n")


def store_fingerprint(path: str | os.PathLike) -> str | None:
    """sha256 naming the store's content: its manifest lists every chunk's sha256, so two stores share a
    fingerprint only when every chunk is the same. None for a store written before manifests existed.
    A run records it, so a finished run is never reused for another dataset (``check_run_store``)."""
    import hashlib

    manifest = read_manifest(path)
    if manifest is None:
        return None
    return hashlib.sha256(json.dumps(manifest["arrays"], sort_keys=True).encode()).hexdigest()


def read_manifest(path: str | os.PathLike, expected: bool = False) -> dict[str, Any] | None:
    """The store's chunk manifest, or None for a store written before manifests existed.

    ``expected``: the store's attributes say it was written with one, so a missing file is damage.
    """
    file = Path(path) / MANIFEST_NAME
    if not file.exists():
        if expected:
            raise StoreIntegrityError(f"{path}: {MANIFEST_NAME} is missing although the store was written "
                                      "with one; its chunks cannot be checked — rebuild the store")
        return None
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise StoreIntegrityError(f"{path}: {MANIFEST_NAME} is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("arrays"), dict):
        raise StoreIntegrityError(f"{path}: {MANIFEST_NAME} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def _inventory_problems(path: Path, manifest: dict[str, Any], data_arrays: list[str]) -> list[str]:
    """Cheap check (one stat per chunk): every recorded chunk present with its recorded size."""
    problems = []
    recorded = manifest["arrays"]
    for name in data_arrays:
        if f"data/{name}" not in recorded:
            problems.append(f"array 'data/{name}' is not in {MANIFEST_NAME} "
                            "(added after the store was written)")
    for array in recorded:
        # zarr lists only arrays whose zarr.json is there: a lost one would just vanish from the keys
        if array.startswith("data/") and array[len("data/"):] not in data_arrays:
            problems.append(f"array '{array}' is missing (its {path / array / 'zarr.json'} is gone)")
    for array, chunks in recorded.items():
        for key, (size, _) in chunks.items():
            file = path / array / key
            try:
                actual = file.stat().st_size
            except FileNotFoundError:
                problems.append(f"array '{array}' chunk {key} is missing (file {file})")
                continue
            if actual != size:
                problems.append(f"array '{array}' chunk {key} is damaged ({actual} bytes, {size} recorded)")
    return problems


def _damage_error(path: Path, manifest: dict[str, Any] | None, array: str,
                  exc: Exception) -> StoreIntegrityError:
    """Name the chunk behind a failed read: the first one whose size or checksum is off."""
    cause = f"{type(exc).__name__}: {exc}"
    for key, (size, digest) in ((manifest or {}).get("arrays", {}).get(array, {})).items():
        file = path / array / key
        if not file.exists():
            return StoreIntegrityError(f"{path}: array '{array}' chunk {key} is missing ({cause})")
        if file.stat().st_size != size or _sha256(file) != digest:
            return StoreIntegrityError(f"{path}: array '{array}' chunk {key} is damaged "
                                       f"(checksum mismatch; {cause})")
    return StoreIntegrityError(f"{path}: array '{array}' cannot be read ({cause}); a chunk is damaged "
                               f"(details: fastpolicy data verify {path})")


@dataclass
class VerifyReport:
    """What :func:`verify_store` checked and found."""

    path: Path
    arrays: int = 0
    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    has_manifest: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | os.PathLike) -> VerifyReport:
    """Full check: every recorded chunk present, of its size and sha256, and every array decodes.

    Stores without a manifest (written before it existed) are decoded only: a missing chunk of such a
    store reads as zeros and cannot be told from real data, which the report says.
    """
    import zarr

    t0 = time.perf_counter()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset store at {path}")
    report = VerifyReport(path)
    try:
        expected = MANIFEST_ATTR in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # noqa: BLE001 - reported below, where the group is opened for the decode
        expected = False
    try:
        manifest = read_manifest(path, expected)
    except StoreIntegrityError as exc:
        report.problems.append(str(exc).removeprefix(f"{path}: "))
        manifest = None
    report.has_manifest = manifest is not None
    if manifest is not None:
        for array, chunks in sorted(manifest["arrays"].items()):
            for key, (size, digest) in chunks.items():
                file = path / array / key
                report.chunks += 1
                if not file.is_file():
                    report.problems.append(f"array '{array}' chunk {key} is missing (file {file})")
                    continue
                report.bytes += file.stat().st_size
                if file.stat().st_size != size:
                    report.problems.append(f"array '{array}' chunk {key} is damaged "
                                           f"({file.stat().st_size} bytes, {size} recorded)")
                elif _sha256(file) != digest:
                    report.problems.append(f"array '{array}' chunk {key} is damaged (sha256 mismatch)")
            extra = sorted(set(_chunk_files(path, array)) - set(chunks))
            if extra:
                report.problems.append(f"array '{array}' has chunk files not in {MANIFEST_NAME}: "
                                       f"{', '.join(extra[:5])}")
    try:
        group = zarr.open_group(str(path), mode="r")
        has_ends = "meta" in group and "episode_ends" in group["meta"]
        names = [*(["meta/episode_ends"] if has_ends else []),
                 *(f"data/{k}" for k in _array_names(group["data"]))]
    except Exception as exc:
        report.problems.append(f"not a readable store ({type(exc).__name__}: {exc})")
        group, names = None, []
    if manifest is not None:
        for name in names:
            if name not in manifest["arrays"]:
                report.problems.append(f"array '{name}' is not in {MANIFEST_NAME}")
        for name in sorted(set(manifest["arrays"]) - set(names)):
            if group is not None:
                report.problems.append(f"array '{name}' is missing (its zarr.json is gone)")
    for name in names:
        report.arrays += 1
        arr = group[name]
        step = max(1, int(arr.chunks[0]))
        for start in range(0, max(1, arr.shape[0]), step):  # chunk by chunk: bounded memory
            try:
                arr[start:start + step]
            except Exception as exc:
                report.problems.append(f"array '{name}' rows {start}..{start + step - 1} do not decode "
                                       f"({type(exc).__name__}: {exc})")
                break
    report.seconds = time.perf_counter() - t0
    return report
