"""Peer baselines for the D4RL-style tasks: d3rlpy 2.8.1 (BC, TD3+BC, IQL) on our own datasets.

What it does, per task (e.g. ``hopper-medium``): export the zarr store ``datasets/store/<task>`` (built by
``fastpolicy data make <task>``) to a D4RL HDF5 file ``runs/peers/<task>.hdf5``; train each d3rlpy
algorithm offline on it and evaluate it on the task's gymnasium env with fastpolicy's protocol (seed
``s`` episode ``i`` starts from ``env.reset(seed=s*1000+i)``, deterministic actions, the card's time
limit); turn the returns into D4RL normalized scores with the task card and write shared-schema rows
(methods ``d3rlpy-bc``, ``d3rlpy-td3bc``, ``d3rlpy-iql``) to ``bench/results/d4rl_peers_<task>.json``.

Why a separate virtualenv: d3rlpy 2.8.1 pins ``gymnasium==1.0.0`` and pulls ``gym`` 0.26, which cannot
share an environment with fastpolicy's gymnasium. So d3rlpy lives in ``bench/peers/.venv`` (made by
``bench/peers/setup_venv.sh`` from ``bench/peers/requirements.txt``, torch from the local CPU wheel),
and training + evaluation run there as a subprocess (``bench/peers/d3rlpy_peer.py``, which never
imports fastpolicy). The peer venv uses mujoco 4.0.0 like fastpolicy's: Hopper-v5 under gymnasium 1.0.0
gives bit-identical observations and rewards to fastpolicy's eval env. This script runs in fastpolicy's
venv and only converts the peer's JSON (``peer_row_fields`` is a pure function, tested offline).

Each (task, algo, train seed, steps) result is cached as ``runs/peers/<task>/<algo>-s<seed>-<steps>.json``
and reused (unless the store is newer or the eval settings differ), so an interrupted run resumes.

Reproduce (one torch thread per run; on the shared 2-core dev machine d3rlpy ran ~65 TD3+BC and ~130 BC
gradient steps/s, so these step counts are ~6 min of training per run, ~30 min in all):

    nice -n 5 .venv/bin/python bench/bench_d4rl_peers.py --tasks hopper-medium hopper-medium-replay \
        --algos bc td3plusbc --steps 22000 --algo-steps bc=45000 --train-seeds 0 --eval-seeds 0 1 2 \
        --episodes 10

(The peer venv alone: ``bash bench/peers/setup_venv.sh``.) These are short runs: d3rlpy's reproduction
scripts train 500k steps, so the scores are a budget-matched comparison, not the published numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEER_DIR = ROOT / "bench" / "peers"
PEER_VENV = PEER_DIR / ".venv"
PEER_PYTHON = PEER_VENV / "bin" / "python"
PEER_SCRIPT = PEER_DIR / "d3rlpy_peer.py"
STORE_ROOT = ROOT / "datasets" / "store"
CACHE_ROOT = ROOT / "runs" / "peers"
RESULTS_DIR = ROOT / "bench" / "results"

METHODS = {"bc": "d3rlpy-bc", "td3plusbc": "d3rlpy-td3bc", "iql": "d3rlpy-iql"}

_NUMBER = (int, float)
# Keys the peer's result JSON must have, with their types.
PEER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "algo": str,
    "env_id": str,
    "steps": int,
    "train_seed": int,
    "eval_seeds": list,
    "episodes": int,
    "returns": list,
    "train_seconds": _NUMBER,
    "eval_seconds": _NUMBER,
    "predict_latency_ms_p50": _NUMBER,
    "predict_latency_ms_p99": _NUMBER,
    "d3rlpy_version": str,
    "gymnasium_version": str,
    "mujoco_version": str,
    "torch_version": str,
}


# --- conversion (pure) ----------------------------------------------------------------------------------


def validate_peer_result(result: Any, source: str = "peer result") -> None:
    """Raise ValueError naming ``source`` and the first problem in one peer result JSON."""
    if not isinstance(result, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(result).__name__}")
    for key, kind in PEER_FIELDS.items():
        if key not in result:
            raise ValueError(f"{source}: missing key {key!r}")
        value = result[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{source}: key {key!r} has type {type(value).__name__}, expected {kind}")
    if result["algo"] not in METHODS:
        raise ValueError(f"{source}: unknown algo {result['algo']!r} (known: {', '.join(METHODS)})")
    seeds, episodes, returns = result["eval_seeds"], result["episodes"], result["returns"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{source}: 'eval_seeds' must be a non-empty list of ints, got {seeds!r}")
    if episodes < 1:
        raise ValueError(f"{source}: 'episodes' must be >= 1, got {episodes}")
    if len(returns) != len(seeds):
        raise ValueError(f"{source}: 'returns' has {len(returns)} rows but there are {len(seeds)} eval seeds")
    for seed, row in zip(seeds, returns):
        if not isinstance(row, list) or len(row) != episodes:
            n = len(row) if isinstance(row, list) else type(row).__name__
            raise ValueError(f"{source}: 'returns' for eval seed {seed} has {n} entries, expected {episodes}")
        for r in row:
            if not isinstance(r, _NUMBER) or isinstance(r, bool) or not math.isfinite(r):
                raise ValueError(f"{source}: 'returns' for eval seed {seed} contains a non-finite or "
                                 f"non-numeric value {r!r}")
    for key in ("train_seconds", "eval_seconds", "predict_latency_ms_p50", "predict_latency_ms_p99"):
        if not math.isfinite(result[key]) or result[key] < 0:
            raise ValueError(f"{source}: {key!r} must be finite and >= 0, got {result[key]!r}")


def peer_row_fields(task: Any, results: Sequence[dict[str, Any]],
                    sources: Sequence[str] | None = None) -> dict[str, Any]:
    """Schema-row fields for one (task, algo, steps) from the peer results of its train seeds.

    ``task`` is a TaskSpec (its ``normalized_score`` turns returns into scores, as
    ``fastpolicy.evaluation.evaluate`` does). Score mean/std run over every episode of every train and
    eval seed; latency p50 is the median over runs of their batch-1 ``algo.predict`` p50, p99 the max.
    """
    if not results:
        raise ValueError(f"{task.name}: no peer results to convert")
    sources = list(sources) if sources is not None else [f"peer result #{i}" for i in range(len(results))]
    for res, src in zip(results, sources):
        validate_peer_result(res, src)
    first, src0 = results[0], sources[0]
    if first["env_id"] != task.env_id:
        raise ValueError(f"{src0}: env_id {first['env_id']!r} does not match task {task.name!r} "
                         f"({task.env_id!r})")
    for key in ("algo", "env_id", "steps", "eval_seeds", "episodes"):
        for res, src in zip(results[1:], sources[1:]):
            if res[key] != first[key]:
                raise ValueError(f"{src}: {key!r} is {res[key]!r} but {src0} has {first[key]!r}; results "
                                 "of one row must share it")
    train_seeds = [int(r["train_seed"]) for r in results]
    if len(set(train_seeds)) != len(train_seeds):
        raise ValueError(f"{task.name}: duplicate train seeds {train_seeds}")

    returns = np.array([r["returns"] for r in results], dtype=np.float64)  # (train, eval seed, episode)
    scores = np.asarray(task.normalized_score(returns), dtype=np.float64)
    per_train = scores.reshape(len(results), -1).mean(axis=1)
    versions = {k: first[f"{k}_version"] for k in ("d3rlpy", "gymnasium", "mujoco", "torch")}
    threads = first.get("threads")
    fields: dict[str, Any] = {
        "steps": int(first["steps"]),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "episodes": int(returns.size),
        "seeds": [int(s) for s in first["eval_seeds"]],
        "nfe_per_step_mean": 1.0,
        "nfe_per_step_max": 1,
        "latency_ms_p50": float(np.median([r["predict_latency_ms_p50"] for r in results])),
        "latency_ms_p99": float(np.max([r["predict_latency_ms_p99"] for r in results])),
        "train_seconds": float(np.mean([r["train_seconds"] for r in results])),
        "eval_seconds": float(np.mean([r["eval_seconds"] for r in results])),
        "train_seeds": train_seeds,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "score_mean_per_train_seed": [float(s) for s in per_train],
        "score_mean_per_eval_seed": [float(s) for s in scores.mean(axis=(0, 2))],
        "score_kind": task.score.get("kind", "return"),
        "episodes_per_seed": int(first["episodes"]),
        "peer_versions": versions,
        "peer": "d3rlpy",
        "algo": first["algo"],
        "env_id": first["env_id"],
        "latency_batch": 1,
        "latency_kind": "algo.predict, numpy in/out, peer venv",
    }
    if "train_steps_per_second" in first:
        fields["train_steps_per_second"] = float(np.mean([r["train_steps_per_second"] for r in results]))
    if "hyperparameters" in first:
        fields["hyperparameters"] = first["hyperparameters"]
    if threads is not None:  # the row's torch fields describe where the peer ran, not this process
        fields["torch_threads"] = int(threads)
    fields["torch"] = versions["torch"]
    return fields


def peer_row(task: Any, results: Sequence[dict[str, Any]], sources: Sequence[str] | None = None
             ) -> dict[str, Any]:
    """One shared-schema row (``fastpolicy.evaluation.results.make_row``) for a (task, algo, steps)."""
    from fastpolicy.evaluation.results import make_row

    fields = peer_row_fields(task, results, sources)
    return make_row(task.name, METHODS[fields["algo"]], **fields)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A peer row is replaced by a rerun of the same task, method and label condition."""
    return row.get("task"), row.get("method"), row.get("label_condition")




# --- orchestration ----------------------------------------------------------------------------------------


def ensure_peer_venv(force: bool = False) -> None:
    """Create / check bench/peers/.venv (idempotent; the script says what it does)."""
    cmd = ["bash", str(PEER_DIR / "setup_venv.sh")] + (["--force"] if force else [])
    print(f"==> {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)


def _mtime(path: Path) -> float:
    """Latest mtime of a store (its root metadata or folder) or a file."""
    candidates = [path, path / "zarr.json"] if path.is_dir() else [path]
    return max(p.stat().st_mtime for p in candidates if p.exists())


def task_store(task: Any) -> Path:
    """The task's own store, ``datasets/store/<its dataset recipe>``."""
    return STORE_ROOT / (task.dataset or task.name)


def ensure_store(task: Any, build: bool) -> Path:
    name = task.dataset or task.name
    store = task_store(task)
    if (store / "zarr.json").exists():
        return store
    cmd = [str(Path(sys.executable).parent / "fastpolicy"), "data", "make", name, "--out", str(store)]
    if not build:
        raise SystemExit(f"no dataset store at {store}; build it with\n    cd {ROOT} && .venv/bin/fastpolicy "
                         f"data make {name}\nor rerun this script with --build")
    print(f"==> building {store}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return store


def ensure_hdf5(store: Path, out: Path) -> Path:
    """``runs/peers/<task>.hdf5``, re-exported when missing or older than the store."""
    from fastpolicy.data.d4rl import export_d4rl

    if out.exists() and out.stat().st_mtime > _mtime(store):
        print(f"==> reusing {out}", flush=True)
        return out
    print(f"==> exporting {store} -> {out} (D4RL HDF5)", flush=True)
    t0 = time.perf_counter()
    export_d4rl(store, out, overwrite=True)
    print(f"    done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _cached(path: Path, store: Path, args: argparse.Namespace, env_id: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        validate_peer_result(result, str(path))
    except ValueError as exc:
        print(f"    ignoring cached {path}: {exc}", flush=True)
        return None
    if path.stat().st_mtime < _mtime(store):
        print(f"    ignoring cached {path}: the store is newer", flush=True)
        return None
    want = {"eval_seeds": list(args.eval_seeds), "episodes": args.episodes, "env_id": env_id,
            "max_episode_steps": args.max_episode_steps_resolved}
    stale = [k for k, v in want.items() if result.get(k) != v]
    if stale:
        print(f"    ignoring cached {path}: {', '.join(stale)} differ from this run", flush=True)
        return None
    return result


def _own_store(task: Any, args: argparse.Namespace) -> bool:
    """Whether this run trains on the task's own store (its cached results are shared across conditions)."""
    return args.store is None or args.store.resolve() == task_store(task).resolve()


def _cache_dir(task: Any, args: argparse.Namespace) -> Path:
    """``runs/peers/<task>`` (``.../<task>/<condition>`` for another store given with --store)."""
    return CACHE_ROOT / task.name if _own_store(task, args) else CACHE_ROOT / task.name / args.condition


def run_peer(task: Any, algo: str, steps: int, seed: int, hdf5: Path, store: Path,
             args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    out = _cache_dir(task, args) / f"{algo}-s{seed}-{steps}.json"
    cached = None if args.rerun else _cached(out, store, args, task.env_id)
    if cached is not None:
        print(f"==> {task.name} {algo} seed {seed} {steps} steps: cached {out.relative_to(ROOT)}", flush=True)
        return cached, str(out)
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "--hdf5", str(hdf5), "--env-id", task.env_id,
           "--algo", algo, "--steps", str(steps), "--train-seed", str(seed),
           "--eval-seeds", *map(str, args.eval_seeds), "--episodes", str(args.episodes),
           "--max-episode-steps", str(args.max_episode_steps_resolved), "--out", str(out),
           "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    print(f"==> {task.name} {algo} seed {seed} {steps} steps: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    if rc:
        raise RuntimeError(f"peer run failed (exit {rc}): {' '.join(cmd)}")
    result = json.loads(out.read_text())
    validate_peer_result(result, str(out))
    print(f"<== {algo} seed {seed}: return {result.get('return_mean', float('nan')):.1f}, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return result, str(out)


def _steps_for(algo: str, args: argparse.Namespace) -> int:
    for item in args.algo_steps or []:
        name, _, n = item.partition("=")
        if name == algo:
            return int(n)
    return args.steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["hopper-medium"], help="task card names")
    p.add_argument("--algos", nargs="+", choices=sorted(METHODS), default=["bc", "td3plusbc"])
    p.add_argument("--steps", type=int, default=20000, help="gradient steps per run")
    p.add_argument("--algo-steps", nargs="*", default=None, metavar="ALGO=N",
                   help="per-algo override of --steps, e.g. bc=40000")
    p.add_argument("--train-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=10, help="episodes per eval seed")
    p.add_argument("--max-episode-steps", type=int, default=None, help="default: the task card's")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each peer run")
    p.add_argument("--build", action="store_true", help="build a missing store (fastpolicy data make)")
    p.add_argument("--rerun", action="store_true", help="ignore cached peer results")
    p.add_argument("--force-venv", action="store_true", help="rebuild bench/peers/.venv")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--store", type=Path, default=None,
                   help="train on this store instead of datasets/store/<task> (one task; needs --condition)")
    p.add_argument("--condition", default=None,
                   help="label condition of --store (e.g. labeled, proxy, full: the proxy-labeling study); "
                        "recorded as the rows' label_condition")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default <out-dir>/d4rl_peers_<task>.json); rows are merged in")
    args = p.parse_args(argv)
    if args.store is not None and (len(args.tasks) != 1 or not args.condition):
        p.error("--store trains one task's peers on another store: give one --tasks and a --condition")
    for item in args.algo_steps or []:
        name, sep, n = item.partition("=")
        if not sep or name not in METHODS or not n.isdigit():
            p.error(f"--algo-steps expects ALGO=N with ALGO in {sorted(METHODS)}, got {item!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.results import update_results

    args = parse_args(argv)
    tasks = [get_task(t) for t in args.tasks]  # fail fast on an unknown task
    ensure_peer_venv(args.force_venv)
    for task in tasks:
        args.max_episode_steps_resolved = args.max_episode_steps or task.max_episode_steps
        store = args.store if args.store is not None else ensure_store(task, args.build)
        if not (store / "zarr.json").exists():
            raise SystemExit(f"no dataset store at {store}")
        suffix = "" if _own_store(task, args) else f"-{args.condition}"
        hdf5 = ensure_hdf5(store, CACHE_ROOT / f"{task.name}{suffix}.hdf5")
        rows = []
        for algo in args.algos:
            steps = _steps_for(algo, args)
            runs = [run_peer(task, algo, steps, seed, hdf5, store, args) for seed in args.train_seeds]
            row = peer_row(task, [r for r, _ in runs], [s for _, s in runs])
            if args.condition:
                row.update(label_condition=args.condition, train_store=str(store))
            rows.append(row)
        out = args.out or args.out_dir / f"d4rl_peers_{task.name}.json"
        update_results(out, rows, key=row_key)
        print(f"==> wrote {out}", flush=True)
        for r in rows:
            print(f"    {r['task']:24s} {r['method']:14s} steps {r['steps']:6d}  score "
                  f"{r['score_mean']:6.1f} ± {r['score_std']:5.1f}  (return {r['return_mean']:.0f}, "
                  f"train {r['train_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
