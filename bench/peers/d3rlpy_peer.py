"""Train one d3rlpy baseline offline on a D4RL-format HDF5 file and evaluate it with fastpolicy's protocol.

Runs INSIDE the peer virtualenv bench/peers/.venv (d3rlpy 2.8.1, gymnasium 1.0.0); it must not import
fastpolicy. Driven by bench/bench_d4rl_peers.py, which turns the JSON it writes into result rows.

    bench/peers/.venv/bin/python bench/peers/d3rlpy_peer.py --hdf5 runs/peers/hopper-medium.hdf5 \
        --env-id Hopper-v5 --algo td3plusbc --steps 20000 --train-seed 0 --eval-seeds 0 1 2 \
        --episodes 10 --max-episode-steps 1000 --out result.json --threads 1

Evaluation protocol (identical to fastpolicy.evaluation): deterministic actions (``algo.predict``)
clipped to the action space, on ``gymnasium.make(env_id, max_episode_steps=...)``; for eval seed ``s``
episode ``i`` runs from ``env.reset(seed=s*1000+i)`` until terminated or truncated.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ALGOS = ("bc", "td3plusbc", "iql")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hdf5", type=Path, required=True, help="D4RL-format HDF5 file")
    p.add_argument("--env-id", required=True, help="gymnasium env id, e.g. Hopper-v5")
    p.add_argument("--algo", choices=ALGOS, required=True)
    p.add_argument("--steps", type=int, required=True, help="gradient steps")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=10, help="episodes per eval seed")
    p.add_argument("--max-episode-steps", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True, help="result JSON path (written atomically)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--latency-calls", type=int, default=200, help="timed batch-1 predict calls")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.episodes < 1:
        p.error("--episodes must be >= 1")
    return args


def load_d4rl(path: Path) -> dict[str, Any]:
    """The flat D4RL arrays, validated; a trailing run of steps with neither flag gets ``timeouts=True``
    on its last step (d3rlpy, like D4RL, would otherwise drop it; it is truncated data, not a failure)."""
    import h5py
    import numpy as np

    if not path.exists():
        raise FileNotFoundError(f"no D4RL file at {path}")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise ValueError(f"{path}: missing D4RL keys {missing} (found {sorted(f.keys())})")
        obs = np.asarray(f["observations"][()], dtype=np.float32)
        act = np.asarray(f["actions"][()], dtype=np.float32)
        rew = np.asarray(f["rewards"][()], dtype=np.float32).reshape(-1)
        term = np.asarray(f["terminals"][()]).astype(bool).reshape(-1)
        has_timeouts = "timeouts" in f
        tout = (np.asarray(f["timeouts"][()]).astype(bool).reshape(-1) if has_timeouts
                else np.zeros_like(term))
    n = obs.shape[0]
    for name, arr in (("actions", act), ("rewards", rew), ("terminals", term), ("timeouts", tout)):
        if arr.shape[0] != n:
            raise ValueError(f"{path}: {name!r} has {arr.shape[0]} rows but 'observations' has {n}")
    for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: {name!r} contains NaN/inf")
    if (term & tout).any():
        raise ValueError(f"{path}: a step is flagged both terminal and timeout")
    trailing_flagged = False
    if not (term[-1] or tout[-1]):
        tout = tout.copy()
        tout[-1] = True
        trailing_flagged = True
    return {"observations": obs, "actions": act, "rewards": rew, "terminals": term, "timeouts": tout,
            "has_timeouts": has_timeouts, "trailing_flagged_timeout": trailing_flagged}


def make_algo(name: str, steps: int) -> tuple[Any, dict[str, Any]]:
    """d3rlpy config + a JSON description of it. Hyperparameters follow d3rlpy's reproduction scripts
    (reproductions/offline/{td3_plus_bc,iql}.py) and the TD3+BC paper (state standardization)."""
    import d3rlpy

    scaler = d3rlpy.preprocessing.StandardObservationScaler
    if name == "bc":
        # TD3+BC paper's BC baseline: standardized states; d3rlpy BC with batch 256, lr 1e-3.
        hp = {"batch_size": 256, "learning_rate": 1e-3, "policy_type": "deterministic",
              "observation_scaler": "standard"}
        cfg = d3rlpy.algos.BCConfig(batch_size=256, learning_rate=1e-3, policy_type="deterministic",
                                    observation_scaler=scaler())
    elif name == "td3plusbc":
        hp = {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "batch_size": 256,
              "target_smoothing_sigma": 0.2, "target_smoothing_clip": 0.5, "alpha": 2.5,
              "update_actor_interval": 2, "gamma": 0.99, "tau": 0.005, "observation_scaler": "standard"}
        cfg = d3rlpy.algos.TD3PlusBCConfig(
            actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256,
            target_smoothing_sigma=0.2, target_smoothing_clip=0.5, alpha=2.5, update_actor_interval=2,
            observation_scaler=scaler())
    elif name == "iql":
        # d3rlpy's reproduction: ReturnBasedRewardScaler(multiplier=1000) and a cosine actor-lr schedule
        # over the whole run (T_max = steps here, 500k there).
        hp = {"actor_learning_rate": 3e-4, "critic_learning_rate": 3e-4, "batch_size": 256,
              "weight_temp": 3.0, "max_weight": 100.0, "expectile": 0.7, "gamma": 0.99, "tau": 0.005,
              "reward_scaler": "return_based(multiplier=1000)", "actor_lr_schedule": f"cosine(T_max={steps})",
              "observation_scaler": None}
        cfg = d3rlpy.algos.IQLConfig(
            actor_learning_rate=3e-4, critic_learning_rate=3e-4, batch_size=256, weight_temp=3.0,
            max_weight=100.0, expectile=0.7,
            reward_scaler=d3rlpy.preprocessing.ReturnBasedRewardScaler(multiplier=1000.0),
            actor_optim_factory=d3rlpy.optimizers.AdamFactory(
                lr_scheduler_factory=d3rlpy.optimizers.CosineAnnealingLRFactory(T_max=steps)))
    else:
        raise ValueError(f"unknown algo {name!r} (choose from {ALGOS})")
    return cfg.create(device=False), hp


def epochs_for(steps: int, max_epochs: int = 5) -> int:
    """Largest epoch count <= max_epochs that divides steps (d3rlpy drops a remainder of steps)."""
    return next(e for e in range(min(max_epochs, steps), 0, -1) if steps % e == 0)


def evaluate(algo: Any, env_id: str, max_episode_steps: int, eval_seeds: list[int], episodes: int
             ) -> tuple[list[list[float]], list[list[int]], list[Any]]:
    """Returns and lengths per eval seed; also a few visited observations for the latency probe."""
    import gymnasium
    import numpy as np

    env = gymnasium.make(env_id, max_episode_steps=max_episode_steps)
    low, high = env.action_space.low, env.action_space.high
    returns, lengths, probe = [], [], []
    try:
        for s in eval_seeds:
            seed_returns, seed_lengths = [], []
            for i in range(episodes):
                obs, _ = env.reset(seed=s * 1000 + i)
                total, n = 0.0, 0
                while True:
                    if len(probe) < 1000 and n % 5 == 0:
                        probe.append(np.asarray(obs, dtype=np.float32))
                    action = algo.predict(np.asarray(obs, dtype=np.float32)[None])[0]
                    obs, reward, terminated, truncated, _ = env.step(np.clip(action, low, high))
                    total += float(reward)
                    n += 1
                    if terminated or truncated:
                        break
                seed_returns.append(total)
                seed_lengths.append(n)
            returns.append(seed_returns)
            lengths.append(seed_lengths)
            print(f"[peer] eval seed {s}: mean return {np.mean(seed_returns):.1f} "
                  f"(episode lengths {seed_lengths})", flush=True)
    finally:
        env.close()
    return returns, lengths, probe


def measure_latency(algo: Any, observations: list[Any], calls: int, warmup: int = 20) -> dict[str, float]:
    """Batch-1 ``algo.predict`` wall time in ms (numpy in, numpy out), over real visited observations."""
    import numpy as np

    times = []
    for k in range(warmup + calls):
        x = observations[k % len(observations)][None]
        t0 = time.perf_counter()
        algo.predict(x)
        if k >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "calls": len(times)}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _finite(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    with contextlib.redirect_stderr(io.StringIO()):  # gym 0.26 (pulled by d3rlpy) prints a banner on import
        import d3rlpy
    import gymnasium
    import mujoco

    data = load_d4rl(args.hdf5)
    d3rlpy.seed(args.train_seed)
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
        terminals=data["terminals"].astype(np.float32), timeouts=data["timeouts"].astype(np.float32),
        action_space=d3rlpy.ActionSpace.CONTINUOUS)
    n_episodes = len(dataset.episodes)
    print(f"[peer] {args.hdf5}: {data['observations'].shape[0]} steps, {n_episodes} episodes "
          f"({int(data['terminals'].sum())} terminal); algo {args.algo}, {args.steps} steps, "
          f"seed {args.train_seed}, {args.threads} thread(s)", flush=True)

    algo, hp = make_algo(args.algo, args.steps)
    n_epochs = epochs_for(args.steps)
    with tempfile.TemporaryDirectory(prefix="d3rlpy-peer-") as logdir:
        t0 = time.perf_counter()
        history = algo.fit(
            dataset, n_steps=args.steps, n_steps_per_epoch=args.steps // n_epochs,
            experiment_name=f"{args.algo}-s{args.train_seed}", with_timestamp=False,
            logger_adapter=d3rlpy.logging.FileAdapterFactory(root_dir=logdir),
            show_progress=sys.stderr.isatty(), save_interval=10**9, evaluators=None)
        train_seconds = time.perf_counter() - t0
    print(f"[peer] trained in {train_seconds:.1f} s ({args.steps / train_seconds:.1f} steps/s)", flush=True)

    t0 = time.perf_counter()
    returns, lengths, probe = evaluate(algo, args.env_id, args.max_episode_steps, args.eval_seeds,
                                       args.episodes)
    eval_seconds = time.perf_counter() - t0
    latency = measure_latency(algo, probe, args.latency_calls)

    flat = [r for rs in returns for r in rs]
    result = {
        "algo": args.algo,
        "env_id": args.env_id,
        "steps": args.steps,
        "train_seed": args.train_seed,
        "eval_seeds": list(args.eval_seeds),
        "episodes": args.episodes,
        "max_episode_steps": args.max_episode_steps,
        "returns": returns,
        "episode_lengths": lengths,
        "return_mean": float(np.mean(flat)),
        "train_seconds": train_seconds,
        "train_steps_per_second": args.steps / train_seconds,
        "eval_seconds": eval_seconds,
        "predict_latency_ms_p50": latency["p50"],
        "predict_latency_ms_p99": latency["p99"],
        "predict_latency_calls": latency["calls"],
        "threads": args.threads,
        "n_epochs": n_epochs,
        "hyperparameters": hp,
        "fit_history": [{"epoch": int(e), **_finite(m)} for e, m in history],
        "dataset": {"path": str(args.hdf5), "steps": int(data["observations"].shape[0]),
                    "episodes": n_episodes, "terminal_steps": int(data["terminals"].sum()),
                    "has_timeouts": data["has_timeouts"],
                    "trailing_flagged_timeout": data["trailing_flagged_timeout"]},
        "d3rlpy_version": d3rlpy.__version__,
        "gymnasium_version": gymnasium.__version__,
        "mujoco_version": mujoco.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": sys.version.split()[0],
    }
    write_json_atomic(args.out, result)
    print(f"[peer] mean return {result['return_mean']:.1f}; predict p50 {latency['p50']:.3f} ms; "
          f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
