"""AGV env throughput in robot-steps/s: the numba VectorEnv vs its numpy twin vs process-parallel
gymnasium vector envs over the single-robot env.

What is measured (all on the same layout, uniform random actions from a fixed pool, same-step
autoreset included, warm: envs are built, reset and stepped before timing so JIT compilation and
process start-up are excluded; medians over repeats):

* ``numba-vector``: ``AGVVectorEnv(backend="numba")`` at N robots, one kernel call per step, with
  numba's default thread count (all cores); ``numba-vector-1thread``: the same pinned to one thread.
* ``numpy-twin``: ``AGVVectorEnv(backend="numpy")``, same seed and same action sequence, stepped in
  lock-step with the numba env, so both run over the same states (checked at the end: the largest
  observation difference is recorded in the rows).
* ``async-vector``: gymnasium ``AsyncVectorEnv`` over ``gym.make(id)`` (one process per env, shared
  memory, same-step autoreset). Measured only for N <= ``async_max_procs`` processes: on a 2-core
  machine 64+ processes are pointless and 1024 impossible. For N >= 64 the row is an extrapolation,
  flagged ``measured: false``: the best throughput measured at any process count (throughput cannot
  grow with more processes than cores, so this is an upper bound for AsyncVectorEnv).
* ``procs2-syncvec`` (N >= 64): the measured alternative at scale: 2 worker processes, each stepping a
  gymnasium ``SyncVectorEnv`` of N/2 single envs, driven over pipes.

Writes bench/results/agv_throughput.json (rows via fastpolicy.evaluation.results) and docs/agv_throughput.png.

    .venv/bin/python bench/bench_agv_throughput.py            # full run (~2 min on 2 cores)
    .venv/bin/python bench/bench_agv_throughput.py --quick    # smoke run (N = 1, 64; seconds)
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastpolicy.utils.args import parse_dataclass_args

# numba's OpenMP layer spin-waits at the end of every parallel region by default; on a shared,
# oversubscribed machine a preempted thread then stalls the whole region (we saw 2 threads run 30x
# slower than 1). Passive waiting removes that pathology; it must be set before OpenMP starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class Args:
    layout: str = "complex-dynamic"
    """AGV tier (layout) to step: complex-dynamic is the heaviest (14 shelves, 5 moving obstacles)"""
    num_envs: list[int] = field(default_factory=lambda: [1, 64, 1024, 4096])
    """robot counts N for the numba and numpy vector envs"""
    async_procs: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """process counts at which AsyncVectorEnv is actually measured"""
    repeats: int = 5
    """timed repeats per configuration (the median is reported)"""
    min_seconds: float = 0.25
    """each repeat of the slower twin lasts about this long"""
    max_episode_steps: int = 4000
    """truncation limit (the tier's)"""
    seed: int = 0
    """env seed and action-pool seed"""
    out: str = "bench/results/agv_throughput.json"
    """where the JSON rows go"""
    plot: str = "docs/agv_throughput.png"
    """where the log-log plot goes"""
    quick: bool = False
    """smoke run: N = 1 and 16, async at 1 process, 2 short repeats"""


def parse_args() -> Args:
    args = parse_dataclass_args(Args, __doc__)
    if args.quick:
        args.num_envs, args.async_procs, args.repeats, args.min_seconds = [1, 16], [1], 2, 0.02
    return args


def env_id_of(layout: str) -> str:
    from fastpolicy.envs.agv import TIERS

    return TIERS[layout][0]


def action_pool(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Pre-generated actions (size, n, 2) cycled through, so timing excludes random number generation."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (size, n, 2)).astype(np.float32)


# ------------------------------------------------------------------------------------ numba & numpy
TWINS = {"numba-vector": ("numba", 0), "numba-vector-1thread": ("numba", 1), "numpy-twin": ("numpy", 0)}


def bench_twins(args: Args, n: int) -> tuple[dict[str, list[float]], int, float]:
    """Lock-step timing of the numba (all threads, one thread) and numpy vector envs.

    Returns per-repeat throughputs by method, steps per repeat, and the largest observation
    difference between the numba and numpy envs at the end (they ran the same actions from the
    same seed, so they must still be in the same states).
    """
    import numba

    from fastpolicy.envs.agv.layout import get_layout
    from fastpolicy.envs.agv.vector import AGVVectorEnv

    layout = get_layout(args.layout)
    default_threads = numba.config.NUMBA_NUM_THREADS
    envs = {m: AGVVectorEnv(n, layout, max_episode_steps=args.max_episode_steps, backend=b)
            for m, (b, _) in TWINS.items()}
    pool = action_pool(n, args.seed)
    for env in envs.values():
        env.reset(seed=args.seed)

    def run(method: str, k: int, start: int) -> float:
        numba.set_num_threads(TWINS[method][1] or default_threads)
        env = envs[method]
        t0 = time.perf_counter()
        for i in range(k):
            env.step(pool[(start + i) % len(pool)])
        return time.perf_counter() - t0

    # Warm-up (JIT compile / cache load) and calibration: size a repeat so the numpy twin takes
    # ~min_seconds and the numba env at least ~20 ms.
    per_step = {m: run(m, 3, 0) / 3 for m in envs}
    step = 3
    k = max(3, math.ceil(args.min_seconds / per_step["numpy-twin"]),
            math.ceil(0.02 / per_step["numba-vector"]))
    rates: dict[str, list[float]] = {m: [] for m in envs}
    for _ in range(args.repeats):
        for m in envs:
            rates[m].append(n * k / run(m, k, step))
        step += k
    numba.set_num_threads(default_threads)
    diff = max(float(np.abs(envs[m].core.obs - envs["numpy-twin"].core.obs).max()) for m in envs)
    return rates, k, diff


# --------------------------------------------------------------------------------------- async
def bench_async(args: Args, procs: int) -> tuple[list[float], int]:
    import gymnasium as gym
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode

    import fastpolicy.envs.agv  # noqa: F401  (registers the ids in this process)

    env_id = env_id_of(args.layout)

    def make() -> gym.Env:
        import fastpolicy.envs.agv as registers_ids  # noqa: F401  (the worker process needs the ids too)

        return gym.make(env_id, max_episode_steps=args.max_episode_steps)

    venv = AsyncVectorEnv([make] * procs, context="spawn", autoreset_mode=AutoresetMode.SAME_STEP)
    try:
        pool = action_pool(procs, args.seed)
        venv.reset(seed=args.seed)
        t0 = time.perf_counter()
        for i in range(20):
            venv.step(pool[i % len(pool)])
        per_step = (time.perf_counter() - t0) / 20
        k = max(20, math.ceil(args.min_seconds / per_step))
        rates = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(k):
                venv.step(pool[(r * k + i) % len(pool)])
            rates.append(procs * k / (time.perf_counter() - t0))
    finally:
        venv.close()
    return rates, k


# --------------------------------------------------------------------- 2 processes x SyncVectorEnv
def _sync_worker(conn, layout_name: str, n: int, max_steps: int, seed: int) -> None:
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    import fastpolicy.envs.agv  # noqa: F401
    from fastpolicy.envs.agv.layout import get_layout

    layout = get_layout(layout_name)        # parsed once, shared by the n envs
    env_id = env_id_of(layout_name)
    venv = SyncVectorEnv([lambda: gym.make(env_id, layout=layout, max_episode_steps=max_steps)] * n,
                         autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=seed)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            break
        obs, rew, term, trunc, _ = venv.step(msg)
        conn.send((obs, rew, term, trunc))
    venv.close()


def bench_procs2_sync(args: Args, n: int) -> tuple[list[float], int]:
    ctx = mp.get_context("spawn")
    half = [n // 2, n - n // 2]
    pipes, procs = [], []
    for w, m in enumerate(half):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_sync_worker, daemon=True,
                        args=(child, args.layout, m, args.max_episode_steps, args.seed + w))
        p.start()
        pipes.append(parent)
        procs.append(p)
    try:
        for c in pipes:
            assert c.recv() == "ready"
        pool = action_pool(n, args.seed)

        def run(k: int, start: int) -> float:
            t0 = time.perf_counter()
            for i in range(k):
                a = pool[(start + i) % len(pool)]
                pipes[0].send(a[:half[0]])
                pipes[1].send(a[half[0]:])
                for c in pipes:
                    c.recv()
            return time.perf_counter() - t0

        per_step = run(3, 0) / 3
        k = max(3, math.ceil(args.min_seconds / per_step))
        rates = [n * k / run(k, 3 + r * k) for r in range(args.repeats)]
    finally:
        for c in pipes:
            c.send(None)
        for p in procs:
            p.join(timeout=10)
    return rates, k


# ------------------------------------------------------------------------------------------- main
def plot(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.subplots()
    styles = {"numba-vector": ("o-", "#1f77b4"), "numba-vector-1thread": ("o:", "#17becf"),
              "numpy-twin": ("s-", "#ff7f0e"),
              "async-vector": ("^-", "#2ca02c"), "procs2-syncvec": ("d-", "#9467bd")}
    for method, (marker, color) in styles.items():
        for measured in (True, False):
            pts = sorted((r["num_envs"], r["robot_steps_per_s"]) for r in rows
                         if r["method"] == method and r["measured"] == measured)
            if not pts:
                continue
            x, y = zip(*pts)
            label = method if measured else f"{method} (extrapolated: best measured)"
            ax.plot(x, y, marker if measured else "^--", color=color, label=label,
                    alpha=1.0 if measured else 0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("robots per vector env (N)")
    ax.set_ylabel("robot-steps / s (median)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    import numba

    from fastpolicy.evaluation.results import make_row, write_results

    args = parse_args()
    task = f"agv-{args.layout}"
    common = {"quick": args.quick, "layout": args.layout, "repeats": args.repeats,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    rows: list[dict] = []
    print(f"layout {args.layout}, numba threads {numba.get_num_threads()}, repeats {args.repeats}")
    print(f"{'method':<22}{'N':>6}{'steps/rep':>10}{'robot-steps/s':>16}   all repeats")

    def report(method: str, n: int, rates: list[float] | None, k: int | None, measured: bool = True,
               **extra) -> dict:
        median = float(np.median(rates)) if rates else float(extra.pop("value"))
        row = make_row(task, method, num_envs=n, robot_steps_per_s=median, load_avg_1m=os.getloadavg()[0],
                       robot_steps_per_s_repeats=[round(r, 1) for r in rates or []], steps_per_repeat=k,
                       measured=measured, **common, **extra)
        rows.append(row)
        shown = " ".join(f"{r:,.0f}" for r in rates or [])
        tag = "" if measured else " (extrapolated)"
        print(f"{method:<22}{n:>6}{k or '-':>10}{median:>16,.0f}   {shown}{tag}", flush=True)
        return row

    twins = {}
    for n in args.num_envs:
        rates, k, diff = bench_twins(args, n)
        twins[n] = {m: report(m, n, r, k, max_obs_diff_vs_twin=diff,
                              numba_threads_used=TWINS[m][1] or numba.config.NUMBA_NUM_THREADS)
                    for m, r in rates.items()}
    async_best = 0.0
    for p in args.async_procs:
        rates, k = bench_async(args, p)
        async_best = max(async_best, float(np.median(rates)))
        report("async-vector", p, rates, k, processes=p)
    procs2 = {}
    for n in args.num_envs:
        if n >= 64:
            report("async-vector", n, None, None, measured=False, value=async_best,
                   note=f"not run ({n} processes on {mp.cpu_count()} cores); best AsyncVectorEnv "
                        f"throughput measured at {args.async_procs} processes")
            rates, k = bench_procs2_sync(args, n)
            procs2[n] = report("procs2-syncvec", n, rates, k, processes=2)

    print("\nspeed-ups of the numba VectorEnv (medians; targets at N >= 1024: >= 10x numpy twin, "
          ">= 50x AsyncVectorEnv):")
    for n, by_method in twins.items():
        npy = by_method["numpy-twin"]["robot_steps_per_s"]
        for method in ("numba-vector", "numba-vector-1thread"):
            row = by_method[method]
            rate = row["robot_steps_per_s"]
            row["speedup_vs_numpy_twin"] = rate / npy
            row["speedup_vs_async_best"] = rate / async_best
            parts = [f"{rate / npy:.1f}x numpy twin", f"{rate / async_best:.0f}x best AsyncVectorEnv"]
            if n in procs2:
                row["speedup_vs_procs2_syncvec"] = rate / procs2[n]["robot_steps_per_s"]
                parts.append(f"{row['speedup_vs_procs2_syncvec']:.0f}x 2-proc SyncVectorEnv")
            print(f"  {method:<22} N={n:<5} " + ", ".join(parts))
    path = write_results(Path(args.out), rows)
    plot(rows, Path(args.plot), f"AGV {args.layout}: env throughput ({mp.cpu_count()} CPUs, "
                                f"numba threads {numba.get_num_threads()})")
    print(f"wrote {len(rows)} rows to {path} and {args.plot}")


if __name__ == "__main__":
    main()
