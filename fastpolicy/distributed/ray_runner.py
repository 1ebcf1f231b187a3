"""Ray helpers (session, retried tasks, runs shipped as one archive) and dataset generation over a cluster.

Why Ray and not a home-made job runner: scheduling by declared CPU/GPU resources, retries when a task
fails or its worker dies, an object store to ship inputs and results, and a standard cluster set-up
(``ray start --head`` / ``ray start --address``, docs/scaling.md). Ray is an optional extra
(``pip install 'fastpolicy[dist]'``) and is imported only inside these functions.

What fans out, and what stays on the driver:

* ``fastpolicy bench`` (``fastpolicy.bench.ray_sweep``, on top of the helpers here): the dataset, the
  teacher and every student are built on the driver (the
  expensive shared part, resumable on disk), then each (method, seed) score rollout is one Ray task.
  Workers need no shared file system: the final checkpoint of every run (config + weights +
  normaliser, safetensors/JSON — no optimizer state, no dataset) is put once into the object store
  and unpacked by each task into its own scratch directory. Each seed's rollouts are exactly those
  of the local run, and the merge is the local row's arithmetic, so the score / return fields equal
  the local run's. The timing fields are then measured on the driver, all methods interleaved,
  because latencies are only comparable on one machine.
* ``fastpolicy data make``: the recipe is split into shards of whole episodes, shard ``i`` built with
  :func:`shard_seed` and its share of the steps (:func:`shard_sizes`); the driver concatenates the
  shards in order. The result is deterministic for a given (seed, size, shard count) — the default
  shard count depends on the size only, never on the cluster. Shard 0 uses the seed itself, so one
  shard is byte for byte the local build and shard 0 is always a prefix of it. More than one shard
  is *not* the local build: the recipes are single sequential streams (one never-reset maze run; one
  env ``np_random`` stream for AGV), which cannot be cut without re-simulating their prefix.
"""

from __future__ import annotations

import io
import math
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fastpolicy.distributed import INSTALL_HINT

if TYPE_CHECKING:
    from fastpolicy.data.store import EpisodeStore

T = TypeVar("T")

DEFAULT_SHARD_STEPS = 50_000
"""steps per data shard when no shard count is given (so the count depends on the size only)"""


class RayNotInstalledError(ImportError, ValueError):
    """``--ray-address`` was given but Ray is not installed (a usage error: the CLI prints one line)."""


@dataclass(frozen=True)
class RayConfig:
    """Where the Ray tasks run and what each one asks for."""

    address: str = "auto"
    """``auto`` (the cluster this machine belongs to), ``HOST:PORT`` (a head node's GCS port, 6379 by
    default), ``ray://HOST:10001`` (Ray client) or ``local`` (start a private instance here)"""
    num_cpus: float = 1.0
    """CPUs each task declares (a rollout steps its own vector env and policy on these)"""
    num_gpus: float = 0.0
    """GPUs each task declares (fractions allowed, e.g. 0.25 to pack four evaluations on one GPU)"""
    max_retries: int = 3
    """retries of a task whose worker died or which raised"""
    retry_exceptions: bool = True
    """also retry tasks that raised (a flaky node); False retries only dead workers"""
    local_cpus: int | None = None
    """CPUs of the private instance for ``address='local'`` (None: all of this machine's)"""
    progress: bool = True
    """a progress bar over the finished tasks"""

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("the Ray address is empty; use auto, HOST:PORT, ray://HOST:PORT or local")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"task resources must be >= 0, got num_cpus={self.num_cpus}, "
                             f"num_gpus={self.num_gpus}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


# --- Ray plumbing ---------------------------------------------------------------------------------

def import_ray() -> Any:
    """``import ray``, or a one-line error naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalledError(
            f"--ray-address needs Ray, which is not installed ({exc}); install the extra: {INSTALL_HINT}"
        ) from exc
    return ray


@contextmanager
def ray_session(config: RayConfig) -> Iterator[Any]:
    """Connect to (or start) Ray for the duration of the block; yields the ``ray`` module.

    An already initialised Ray (a notebook, a test, a script that called ``ray.init``) is reused and left
    running; a connection opened here is closed on exit.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if config.address == "local":
            ray.init(address="local", num_cpus=config.local_cpus, include_dashboard=False,
                     log_to_driver=False)
        else:
            ray.init(address=config.address, log_to_driver=False)
    except ConnectionError as exc:
        raise ValueError(f"cannot reach a Ray cluster at {config.address!r} ({exc}); start one with "
                         f"`ray start --head` (docs/scaling.md) or use --ray-address local") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def run_tasks(fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], config: RayConfig,
              desc: str = "ray tasks") -> list[T]:
    """Run ``fn(*args)`` for every ``args`` in ``calls`` as Ray tasks; results in ``calls`` order.

    Each task declares ``config.num_cpus`` / ``num_gpus`` and is retried up to ``config.max_retries``
    times (a dead worker always counts; an exception only with ``retry_exceptions``). Progress is a bar
    over ``ray.wait``; the first task that fails for good cancels the others and its error is raised.
    ``fn`` must be importable on the workers (a module-level function of an installed package).
    """
    from tqdm.auto import tqdm

    with ray_session(config) as ray:
        remote = ray.remote(fn).options(num_cpus=config.num_cpus, num_gpus=config.num_gpus,
                                        max_retries=config.max_retries,
                                        retry_exceptions=config.retry_exceptions)
        refs = [remote.remote(*args) for args in calls]
        pending = list(refs)
        with tqdm(total=len(refs), desc=desc, unit="task", disable=not config.progress,
                  mininterval=0.5) as bar:
            try:
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    ray.get(done)  # raises here as soon as a task has failed for good
                    bar.update(len(done))
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        return list(ray.get(refs))


# --- shipping trained runs to workers ---------------------------------------------------------------

_INFERENCE_FILES = ("config.json", "model.safetensors", "normalizer.safetensors")


def _run_files(run: Path) -> list[Path]:
    """What loading ``run`` needs: ``latest``, ``cost.json`` and the inference files of that checkpoint."""
    if (run / "config.json").exists():  # a checkpoint directory itself
        return [run / f for f in _INFERENCE_FILES if (run / f).exists()]
    files = [run / "latest"]
    ckpt = run / "checkpoints" / (run / "latest").read_text().strip()
    files += [ckpt / f for f in _INFERENCE_FILES if (ckpt / f).exists()]
    if (run / "cost.json").exists():
        files.append(run / "cost.json")
    return files


def pack_runs(work: Path, teacher_run: Path) -> tuple[bytes, str]:
    """A tar of every run under ``work`` (not its dataset) plus the teacher; returns (bytes, arcname).

    ``arcname`` is where the teacher lies inside the archive (``work/teacher`` when it was trained by
    the suite, ``teacher`` when it came from ``--teacher``).
    """
    work, teacher_run = work.resolve(), teacher_run.resolve()
    entries: dict[str, Path] = {}
    runs = [p.parent for p in work.rglob("latest") if (work / "data") not in p.parents]
    for run in runs:
        for f in _run_files(run):
            entries[f"work/{f.relative_to(work).as_posix()}"] = f
    if teacher_run == work or work in teacher_run.parents:
        teacher_arc = f"work/{teacher_run.relative_to(work).as_posix()}"
    else:
        teacher_arc = "teacher"
        for f in _run_files(teacher_run):
            entries[f"teacher/{f.relative_to(teacher_run).as_posix()}"] = f
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arc in sorted(entries):
            tar.add(entries[arc], arcname=arc, recursive=False)
    return buf.getvalue(), teacher_arc


def unpack_runs(data: bytes, dest: Path) -> Path:
    """Unpack a :func:`pack_runs` archive into ``dest`` (refusing absolute paths and links out of it)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest


# --- dataset generation ---------------------------------------------------------------------------

def shard_seed(seed: int, index: int) -> int:
    """The recipe seed of shard ``index``: the seed itself for shard 0, an independent stream otherwise."""
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1)[0])


def _episode_steps(name: str) -> int:
    """Shard sizes are multiples of this, so shards hold whole episodes (maze: its chunk length)."""
    from fastpolicy.envs.maze import MAZES

    name = name.removesuffix("-dwell")  # the goal-holding variants chunk like their maze
    return MAZES[name].max_episode_steps if name in MAZES else 1


def _default_size(name: str) -> int:
    from fastpolicy.envs.maze import MAZES

    name = name.removesuffix("-dwell")
    if name in MAZES:
        return MAZES[name].dataset_size
    raise ValueError(f"a sharded build of {name!r} needs --size (its default is not a step count)")


def shard_sizes(size: int, shards: int | None = None, align: int = 1) -> list[int]:
    """Split ``size`` steps into at most ``shards`` parts, each a multiple of ``align`` but the last.

    ``shards=None`` uses ``ceil(size / DEFAULT_SHARD_STEPS)``: a function of the size only, so the same
    command gives the same dataset on any cluster.
    """
    if size <= 0:
        raise ValueError(f"size must be a positive number of steps, got {size}")
    shards = math.ceil(size / DEFAULT_SHARD_STEPS) if shards is None else int(shards)
    if shards <= 0:
        raise ValueError(f"shards must be positive, got {shards}")
    per = align * math.ceil(math.ceil(size / shards) / align)
    sizes = []
    while sum(sizes) < size:
        sizes.append(min(per, size - sum(sizes)))
    return sizes


def build_shard(name: str, size: int, seed: int) -> dict[str, Any]:
    """Ray task: build one shard with the recipe in a scratch dir and return its arrays and attrs."""
    from fastpolicy.data.recipes import make_dataset

    with tempfile.TemporaryDirectory(prefix="fastpolicy-shard-") as tmp:
        store = make_dataset(name, Path(tmp) / "shard", size=size, seed=seed, overwrite=False,
                             progress=False)
        return {"data": {k: np.array(store.array(k)) for k in store.keys},
                "episode_ends": store.episode_ends, "attrs": store.attrs}


def merge_shard_attrs(shards: Sequence[dict[str, Any]], seed: int, seeds: Sequence[int]) -> dict[str, Any]:
    """Attrs of the merged store: what every shard agrees on, per-shard values of the rest, the plan."""
    attrs_list = [dict(s["attrs"]) for s in shards]
    skip = {"seed", "size", "fastpolicy_version"}
    keys = [k for k in attrs_list[0] if k not in skip]
    common = {k: attrs_list[0][k] for k in keys if all(a.get(k) == attrs_list[0][k] for a in attrs_list)}
    differ = [k for k in keys if k not in common]
    steps = [int(s["episode_ends"][-1]) for s in shards]
    common.update(seed=int(seed), size=int(sum(steps)))
    common["shards"] = [
        {"index": i, "seed": int(sd), "size": n, "episodes": len(s["episode_ends"]),
         **{k: a.get(k) for k in differ}}
        for i, (s, sd, n, a) in enumerate(zip(shards, seeds, steps, attrs_list))]
    return common


def make_dataset_on_ray(name: str, out: str | Path, config: RayConfig, size: int | None = None,
                        seed: int = 0, overwrite: bool = False, shards: int | None = None) -> EpisodeStore:
    """``make_dataset`` with the recipe split into seed-sharded Ray tasks, concatenated in shard order."""
    from fastpolicy.data.recipes import all_recipes
    from fastpolicy.data.store import EpisodeStore

    out = Path(out)
    if name not in all_recipes():
        raise ValueError(f"unknown dataset recipe {name!r}; known: {', '.join(sorted(all_recipes()))}")
    if out.exists() and not overwrite:  # fail before spending the cluster's time
        raise FileExistsError(f"{out} already exists (pass overwrite=True / --overwrite to replace it)")
    size = _default_size(name) if size is None else int(size)
    sizes = shard_sizes(size, shards, _episode_steps(name))
    seeds = [shard_seed(seed, i) for i in range(len(sizes))]
    t0 = time.perf_counter()
    parts = run_tasks(build_shard, [(name, n, s) for n, s in zip(sizes, seeds)], config,
                      desc=f"data make {name} on ray")
    offsets = np.cumsum([0] + [int(p["episode_ends"][-1]) for p in parts[:-1]])
    ends = np.concatenate([np.asarray(p["episode_ends"], np.int64) + off for p, off in zip(parts, offsets)])
    data = {k: np.concatenate([p["data"][k] for p in parts]) for k in parts[0]["data"]}
    attrs = merge_shard_attrs(parts, seed, seeds)
    attrs["build_seconds"] = time.perf_counter() - t0
    return EpisodeStore.from_arrays(out, data, ends, attrs=attrs, overwrite=overwrite)
