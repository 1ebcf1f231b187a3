"""``fastpolicy explore``: argparse only at import time; stable-baselines3 loads inside the handler."""

from __future__ import annotations

import argparse
from pathlib import Path

ALGOS = ("ppo", "rnd-ppo", "rnd-simple")  # the same tuple as fastpolicy.rl.explore.ALGOS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="train PPO / RND-PPO / PPO+RND-bonus on a task's batched env",
                       description="Exploration with PPO, faithful RND-PPO (two value heads) or PPO on "
                                   "r_ext + beta * r_int. Writes checkpoints, TensorBoard logs, a success "
                                   "curve and the final actor (safetensors) under --out.")
    p.add_argument("--task", required=True,
                   help="task card with a batched vector env, e.g. agv-sparse-detour (fastpolicy tasks)")
    p.add_argument("--algo", choices=ALGOS, default="rnd-ppo")
    p.add_argument("--steps", type=int, default=1_000_000, help="total env (robot) steps")
    p.add_argument("--num-envs", type=int, default=64, help="robots stepped per call of the batched env")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument("--save-store", type=Path, default=None,
                   help="record this invocation's rollouts into an EpisodeStore at this path")
    p.add_argument("--overwrite-store", action="store_true", help="replace an existing --save-store")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-steps", type=int, default=128, help="rollout length per robot")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument("--gamma", type=float, default=None,
                   help="extrinsic discount (default 0.99; 0.999 for rnd-ppo)")
    p.add_argument("--beta", type=float, default=0.5, help="rnd-simple: intrinsic reward weight")
    p.add_argument("--checkpoint-every", type=int, default=100_000, help="env steps between checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.set_defaults(func=_cmd_explore)


def _cmd_explore(args: argparse.Namespace) -> int:
    import numba
    import torch

    from fastpolicy.rl.explore import ExploreConfig, explore
    from fastpolicy.utils.atomic import check_writable

    for name in ("steps", "num_envs", "n_steps", "batch_size", "n_epochs", "checkpoint_every", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    check_writable(args.out, inside=True)
    if args.save_store is not None:
        check_writable(args.save_store)
    torch.set_num_threads(args.threads)
    # numba's OpenMP layer shares the OpenMP runtime with torch: a numba kernel running more threads
    # than torch was told raises torch's count behind its back, so keep the two equal.
    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
    cfg = ExploreConfig(task=args.task, algo=args.algo, steps=args.steps, num_envs=args.num_envs,
                        seed=args.seed, n_steps=args.n_steps, batch_size=args.batch_size,
                        n_epochs=args.n_epochs, learning_rate=args.lr, ent_coef=args.ent_coef,
                        gamma=args.gamma, beta=args.beta, checkpoint_every=args.checkpoint_every,
                        tensorboard=args.tensorboard, progress=args.progress)
    result = explore(args.out, cfg, resume=args.resume, save_store=args.save_store,
                     overwrite_store=args.overwrite_store)
    last = result.curve[-1]["success_rate"] if result.curve else float("nan")
    print(f"explore {cfg.algo} on {cfg.task}: {result.num_timesteps} steps in {result.wall_s:.0f} s, "
          f"last rollout success rate {last:.3f}; actor -> {result.actor_dir}"
          + (f"; store -> {result.store}" if result.store else ""))
    return 0
