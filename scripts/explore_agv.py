"""Explore an AGV task with PPO / RND-PPO / rnd-simple, then look at what the final actor does.

Top to bottom: ``fastpolicy.rl.explore.explore`` trains (checkpoints, TensorBoard, optional
EpisodeStore of the rollouts), the exported actor drives fresh robots deterministically in the
batched env, and their paths are drawn on the layout (``fastpolicy.envs.agv.render``).

    nice -n 10 .venv/bin/python scripts/explore_agv.py --task agv-sparse-detour --algo rnd-ppo \\
        --steps 800000 --out runs/explore_detour
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Args:
    task: str = "agv-sparse-detour"
    """AGV task card"""
    algo: str = "rnd-ppo"
    """ppo | rnd-ppo | rnd-simple"""
    steps: int = 800_000
    """env steps to train for"""
    num_envs: int = 64
    seed: int = 0
    out: Path = Path("runs/explore_agv")
    """run directory (pass --resume to continue it)"""
    resume: bool = False
    save_store: Path | None = None
    """also record the rollouts as an EpisodeStore here"""
    plot_robots: int = 16
    """fresh episodes drawn in <out>/trajectories.png"""


def parse_args() -> Args:
    d = Args()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default=d.task)
    p.add_argument("--algo", default=d.algo)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--save-store", type=Path, default=None)
    p.add_argument("--plot-robots", type=int, default=d.plot_robots)
    return Args(**vars(p.parse_args()))


def drive(actor_dir: Path, task: str, robots: int, seed: int) -> tuple[object, list[dict]]:
    """Run the deterministic actor for one episode per robot; return the layout and the trajectories."""
    import gymnasium as gym
    import torch

    from fastpolicy.envs.registry import get_task
    from fastpolicy.rl.explore import load_actor

    spec = get_task(task)
    actor, cfg = load_actor(actor_dir)
    venv = gym.make_vec(spec.env_id, num_envs=robots, vectorization_mode="vector_entry_point",
                        max_episode_steps=spec.max_episode_steps, **spec.env_kwargs)
    obs, _ = venv.reset(seed=seed)
    core = venv.unwrapped.core
    paths = [[core.pose[i, :2].copy()] for i in range(robots)]
    goals = core.goal.copy()
    done = np.zeros(robots, bool)
    success = np.zeros(robots, bool)
    while not done.all():
        with torch.no_grad():
            action = np.clip(actor(torch.as_tensor(obs)).numpy(), cfg["action_low"], cfg["action_high"])
        obs, _, term, trunc, info = venv.step(action)
        alive = ~done
        success |= alive & info["success"]
        ended = term | trunc
        for i in np.flatnonzero(alive):
            # A robot that just ended was already reset (same-step autoreset): its pose is a new start.
            if not ended[i]:
                paths[i].append(core.pose[i, :2].copy())
        done |= ended
    layout = venv.unwrapped.layout
    venv.close()
    return layout, [{"xy": np.array(p), "success": bool(s), "goal": g}
                    for p, s, g in zip(paths, success, goals)]


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from fastpolicy.envs.agv.render import plot_trajectories
    from fastpolicy.rl.explore import ExploreConfig, explore

    torch.set_num_threads(1)
    cfg = ExploreConfig(task=args.task, algo=args.algo, steps=args.steps, num_envs=args.num_envs,
                        seed=args.seed)
    result = explore(args.out, cfg, resume=args.resume, save_store=args.save_store)
    print(f"trained {result.num_timesteps} steps in {result.wall_s:.0f} s; actor -> {result.actor_dir}")
    layout, trajectories = drive(result.actor_dir, args.task, args.plot_robots, seed=10_000 + args.seed)
    rate = np.mean([t["success"] for t in trajectories])
    png = plot_trajectories(layout, trajectories, args.out / "trajectories.png",
                            title=f"{args.algo} after {result.num_timesteps} steps: success {rate:.2f}")
    print(f"deterministic actor: success {rate:.3f} over {args.plot_robots} episodes; plot -> {png}")


if __name__ == "__main__":
    main()
