"""D4RL HDF5 import / export and D4RL's ``qlearning_dataset``, without importing the ``d4rl`` package.

D4RL file layout: flat datasets ``observations (N, obs_dim)``, ``actions (N, act_dim)``, ``rewards``,
``terminals`` (true termination), ``timeouts`` (time limit; exclusive with terminals), optional
``next_observations``, ``infos/*`` (per-step, e.g. ``infos/qpos``) and ``metadata/*`` (scalars,
strings, policy weights). Store mapping: ``observations→obs, actions→action, rewards→reward,
terminals→terminal, timeouts→timeout, next_observations→next_obs, infos/x→infos/x``; any other
per-step dataset keeps its name; ``metadata/*`` goes to the store attribute ``metadata`` (arrays over
``METADATA_MAX_ELEMENTS`` elements, i.e. policy weights, and datasets that are not per-step are
skipped and listed in the attribute ``d4rl_skipped``).

Episode splitting follows D4RL's ``sequence_dataset``: an episode ends at every step where
``terminals | timeouts``. Differences, on purpose:

* D4RL drops a trailing partial episode (steps after the last flag); it is kept here as a final episode
  ending with neither flag, so no data is lost and export reproduces the file.
* Files without ``timeouts`` (old v0 files): D4RL falls back to counting ``env._max_episode_steps``
  (with an off-by-one: after the first split its counter restarts at 1, so later episodes are one step
  shorter). Here such files split only on ``terminals`` unless ``max_episode_steps`` is given, in which
  case an episode is also cut (and marked ``timeout``) every ``max_episode_steps`` steps since its start.
  D4RL's maze2d files have a ``timeouts`` key but both flags are all False (a continuing task whose
  goal moves), so they import as one long episode, exactly as in D4RL, where ``sequence_dataset``
  yields nothing for them; segment them by goal changes downstream if needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.data.store import EpisodeStore, jsonable_attrs

REQUIRED_H5_KEYS = ("observations", "actions", "rewards", "terminals")
H5_TO_STORE = {"observations": "obs", "actions": "action", "rewards": "reward", "terminals": "terminal",
               "timeouts": "timeout", "next_observations": "next_obs"}
STORE_TO_H5 = {v: k for k, v in H5_TO_STORE.items()}
METADATA_MAX_ELEMENTS = 4096
_ATTRS_KEY = "fastpolicy_attrs"


def _read_h5(h5_path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All datasets of the file (by full path) and its root attributes."""
    import h5py

    datasets: dict[str, np.ndarray] = {}
    with h5py.File(h5_path, "r") as f:
        def visit(name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                datasets[name] = item[()]
        f.visititems(visit)
        root_attrs = {k: f.attrs[k] for k in f.attrs}
    return datasets, root_attrs


def _metadata_value(value: Any) -> tuple[bool, Any]:
    if isinstance(value, bytes):
        return True, value.decode("utf-8", errors="replace")
    arr = np.asarray(value)
    if arr.dtype.kind == "S":
        return True, np.char.decode(arr, "utf-8").tolist()
    if arr.dtype == object:
        return True, [v.decode() if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    if arr.size > METADATA_MAX_ELEMENTS:
        return False, None
    return True, arr.tolist() if arr.ndim else arr.item()


def load_d4rl_arrays(h5_path: str | os.PathLike, max_episode_steps: int | None = None
                     ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Read and validate a D4RL file: ``(store-keyed arrays, episode_ends, attrs)``.

    Raises ValueError naming the file and key for a missing required key, a length mismatch or
    non-finite observations/actions.
    """
    h5_path = Path(h5_path)
    if not h5_path.exists():
        raise FileNotFoundError(f"no D4RL file at {h5_path}")
    try:
        datasets, root_attrs = _read_h5(h5_path)
    except OSError as exc:
        raise ValueError(f"{h5_path} is not a readable HDF5 file ({exc})") from None
    for key in REQUIRED_H5_KEYS:
        if key not in datasets:
            raise ValueError(f"{h5_path}: missing required key {key!r} (found {sorted(datasets)})")
    n = int(datasets["observations"].shape[0]) if datasets["observations"].ndim else 0
    if n == 0:
        raise ValueError(f"{h5_path}: 'observations' is empty")
    data: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {}
    skipped: list[str] = []
    for name, value in sorted(datasets.items()):
        if name.startswith("metadata/"):
            ok, converted = _metadata_value(value)
            if ok:
                metadata[name[len("metadata/"):]] = converted
            else:
                skipped.append(name)
            continue
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != n:
            if name in H5_TO_STORE or name.startswith("infos/"):
                length = arr.shape[0] if arr.ndim else "a scalar"
                raise ValueError(f"{h5_path}: key {name!r} has {length} rows but 'observations' has {n}")
            skipped.append(name)  # not per-step data: nothing to attach it to
            continue
        if name in ("rewards", "terminals", "timeouts") and arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if name in ("observations", "actions", "next_observations") and arr.dtype.kind == "f":
            bad = ~np.isfinite(arr).reshape(n, -1).all(axis=1)
            if bad.any():
                raise ValueError(f"{h5_path}: key {name!r} contains NaN/inf at row {int(np.argmax(bad))}")
        data[H5_TO_STORE.get(name, name)] = arr
    terminal = data["terminal"].astype(bool)
    has_timeouts = "timeout" in data
    timeout = data["timeout"].astype(bool) if has_timeouts else np.zeros(n, dtype=bool)
    if not has_timeouts and max_episode_steps:
        timeout = _cut_every(terminal, int(max_episode_steps))
    data["terminal"], data["timeout"] = terminal, timeout
    ends = np.flatnonzero(terminal | timeout) + 1
    if len(ends) == 0 or ends[-1] != n:
        ends = np.append(ends, n)  # trailing partial episode: kept, ends with neither flag
    attrs: dict[str, Any] = {}
    if _ATTRS_KEY in root_attrs:
        with contextlib.suppress(ValueError, TypeError):
            attrs.update(json.loads(root_attrs[_ATTRS_KEY]))
    attrs.setdefault("source", "d4rl")
    attrs["source_file"] = h5_path.name
    attrs["d4rl_has_timeouts"] = has_timeouts
    if metadata:
        attrs["metadata"] = metadata
    if skipped:
        attrs["d4rl_skipped"] = skipped
    return data, ends.astype(np.int64), attrs


def _cut_every(terminal: np.ndarray, max_steps: int) -> np.ndarray:
    """Timeout flags at every ``max_steps``-th step of an episode that has not terminated by then."""
    timeout = np.zeros_like(terminal)
    count = 0
    for i, term in enumerate(terminal):
        count += 1
        if term:
            count = 0
        elif count == max_steps:
            timeout[i] = True
            count = 0
    return timeout


def import_d4rl(h5_path: str | os.PathLike, store_path: str | os.PathLike, overwrite: bool = False,
                attrs: dict[str, Any] | None = None, max_episode_steps: int | None = None) -> EpisodeStore:
    """Convert a D4RL HDF5 file into an EpisodeStore at ``store_path`` (atomic)."""
    store_path = Path(store_path)
    if store_path.exists() and not overwrite:
        raise FileExistsError(f"{store_path} already exists (pass overwrite=True / --overwrite to replace)")
    data, ends, file_attrs = load_d4rl_arrays(h5_path, max_episode_steps=max_episode_steps)
    return EpisodeStore.from_arrays(store_path, data, ends, attrs={**file_attrs, **(attrs or {})},
                                    overwrite=overwrite)


def _flags_for_export(store: EpisodeStore) -> tuple[np.ndarray, np.ndarray]:
    """Terminals/timeouts such that D4RL's split reproduces the store's episodes exactly."""
    def flag(key: str) -> np.ndarray:
        return store.array(key).astype(bool) if key in store.keys else np.zeros(store.n_steps, dtype=bool)

    terminal, timeout = flag("terminal"), flag("timeout")
    flagged = np.flatnonzero(terminal | timeout)
    last_steps = store.episode_ends - 1
    inner = np.setdiff1d(flagged, last_steps)
    if len(inner):
        row = int(inner[0])
        episode = int(np.searchsorted(store.episode_ends, row, side="right"))
        raise ValueError(f"episode {episode} has a terminal/timeout flag at global step {row} before its "
                         "last step; D4RL files split episodes on those flags, so it cannot be exported "
                         "faithfully")
    # An episode that ends with neither flag (other than the final one) needs a timeout to stay split.
    unflagged = last_steps[:-1][~(terminal | timeout)[last_steps[:-1]]]
    timeout = timeout.copy()
    timeout[unflagged] = True
    return terminal, timeout


def export_d4rl(store: EpisodeStore | str | os.PathLike, h5_path: str | os.PathLike, overwrite: bool = False,
                compression: str | None = "gzip") -> Path:
    """Write the store as a D4RL HDF5 file (temp file + rename, so ``h5_path`` is never half-written).

    ``terminals``/``timeouts`` are written so that splitting on ``terminals | timeouts`` gives back the
    store's episodes; an episode (other than the last) that ends with neither flag gets ``timeouts=True``
    on its last step. ``next_observations`` is written when the store has ``next_obs``. Store attrs go to
    the root attribute ``fastpolicy_attrs`` (JSON) and ``attrs["metadata"]`` back to ``metadata/*``.
    """
    import h5py

    h5_path = Path(h5_path)
    if h5_path.exists() and not overwrite:
        raise FileExistsError(f"{h5_path} already exists (pass overwrite=True / --overwrite to replace it)")
    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    terminal, timeout = _flags_for_export(store)
    attrs = store.attrs
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{h5_path.name}-", dir=h5_path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for key in store.keys:
                if key in ("terminal", "timeout"):
                    continue
                arr = store.array(key)
                f.create_dataset(STORE_TO_H5.get(key, key), data=arr,
                                 compression=compression if arr.ndim and arr.size else None)
            f.create_dataset("terminals", data=terminal, compression=compression)
            f.create_dataset("timeouts", data=timeout, compression=compression)
            for name, value in (attrs.get("metadata") or {}).items():
                f.create_dataset(f"metadata/{name}", data=_metadata_to_h5(value))
            f.attrs[_ATTRS_KEY] = json.dumps(jsonable_attrs(attrs))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, h5_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return h5_path


def _metadata_to_h5(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return np.array([v.encode("utf-8") for v in value])
    return np.asarray(value)


def qlearning_dataset(store: EpisodeStore | str | os.PathLike,
                      terminate_on_end: bool = False) -> dict[str, np.ndarray]:
    """Transitions exactly as D4RL's ``d4rl.qlearning_dataset(env, dataset)`` builds them.

    D4RL walks rows ``i = 0 .. N-2`` of the concatenated data and, quirks included:

    * always drops the final row ``N-1`` (it has no ``observations[i+1]``), even when it is terminal;
    * skips every row flagged ``timeouts`` (unless ``terminate_on_end``), because its true next
      observation is not in the file;
    * uses ``next_observations = observations[i+1]`` for every kept row, *also* for a terminal row,
      whose "next" is then the first observation of the following episode (harmless: ``terminals``
      masks the bootstrap), and — with ``terminate_on_end`` — for timeout rows as well;
    * ``terminate_on_end=True`` keeps the timeout rows but, despite its docstring, does *not* set
      their ``terminals`` flag; ``terminals`` is always the file's true-termination flag.

    A store episode that ends with neither flag is treated as ending in a timeout (that is how
    :func:`export_d4rl` writes it), so ``qlearning_dataset(store)`` equals D4RL's function on the
    exported file. Output dtypes: float32 arrays and a bool ``terminals``; when the store has an
    ``action_mask`` it is returned too (D4RL has no notion of unlabeled actions).
    """
    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    for key in ("reward", "terminal"):
        if key not in store.keys:
            raise ValueError(f"{store.path} has no {key!r} key; qlearning_dataset needs obs, action, reward, "
                           "terminal")
    obs = store.array("obs")
    terminal, timeout = _flags_for_export(store)
    n = store.n_steps
    rows = np.arange(n - 1)
    if not terminate_on_end:
        rows = rows[~timeout[:-1]]
    out = {
        "observations": obs[rows].astype(np.float32),
        "actions": store.array("action")[rows].astype(np.float32),
        "next_observations": obs[rows + 1].astype(np.float32),
        "rewards": store.array("reward")[rows].astype(np.float32),
        "terminals": terminal[rows].astype(bool),
    }
    if "action_mask" in store.keys:
        out["action_mask"] = store.array("action_mask")[rows]
    return out
