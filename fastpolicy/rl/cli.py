"""``fastpolicy explore``: argparse only at import time; stable-baselines3 loads inside the handler.

The run's flags come from :class:`fastpolicy.rl.explore.ExploreConfig` (that module imports only numpy
at the top), so each is defined once, with its default and help, in the config it fills.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastpolicy.rl.explore import ALGOS, ExploreConfig
from fastpolicy.utils.args import add_config_flags, config_kwargs

#: ExploreConfig fields offered as flags (the rest keep the config's defaults)
EXPLORE_FLAGS = ("task", "algo", "steps", "num_envs", "seed", "n_steps", "batch_size", "n_epochs",
                 "learning_rate", "ent_coef", "gamma", "beta", "checkpoint_every", "tensorboard", "progress")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="train PPO / RND-PPO / PPO+RND-bonus on a task's batched env",
                       description="Exploration with PPO, faithful RND-PPO (two value heads) or PPO on "
                                   "r_ext + beta * r_int. Writes checkpoints, TensorBoard logs, a success "
                                   "curve and the final actor (safetensors) under --out.")
    add_config_flags(p, ExploreConfig, EXPLORE_FLAGS, flags={"learning_rate": "--lr"},
                     helps={"algo": f"one of {', '.join(ALGOS)}: PPO, faithful RND-PPO (two value heads), "
                                    "or PPO on r_ext + beta * r_int"})
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument("--save-store", type=Path, default=None,
                   help="record this invocation's rollouts into an EpisodeStore at this path")
    p.add_argument("--overwrite-store", action="store_true", help="replace an existing --save-store")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=_cmd_explore)


def _cmd_explore(args: argparse.Namespace) -> int:
    import numba
    import torch

    from fastpolicy.rl.explore import explore
    from fastpolicy.utils.atomic import check_writable

    cfg = ExploreConfig(**config_kwargs(args, EXPLORE_FLAGS))  # validates before anything is written
    if args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    check_writable(args.out, inside=True)
    if args.save_store is not None:
        check_writable(args.save_store)
    torch.set_num_threads(args.threads)
    # numba's OpenMP layer shares the OpenMP runtime with torch: a numba kernel running more threads
    # than torch was told raises torch's count behind its back, so keep the two equal.
    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
    result = explore(args.out, cfg, resume=args.resume, save_store=args.save_store,
                     overwrite_store=args.overwrite_store)
    last = result.curve[-1]["success_rate"] if result.curve else float("nan")
    print(f"explore {cfg.algo} on {cfg.task}: {result.num_timesteps} steps in {result.wall_s:.0f} s, "
          f"last rollout success rate {last:.3f}; actor -> {result.actor_dir}"
          + (f"; store -> {result.store}" if result.store else ""))
    return 0
