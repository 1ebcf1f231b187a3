"""AGV expert demonstration recipes: ``fastpolicy data make agv-<tier>-expert``.

Rolls the built-in A* + pure-pursuit expert (``fastpolicy.envs.agv.expert``) through the tier's
registered env (``gym.make`` with its step limit) and stores the successful episodes: imitation wants
demonstrations of the task, while the success rate over every attempted episode goes into the attrs.
Deterministic for a given seed: the env is seeded once with ``reset(seed=seed)`` and later episodes
continue its ``np_random`` stream; the expert's only randomness, the side it passes the block on in
a layout with modes (bimodal-block), is drawn from that stream too.

Stored per step ``t``: ``obs`` (the env observation before the action, float32), ``action`` (the
normalised action in [-1, 1]^2 that was applied), ``reward``, ``terminal`` (goal reached or
collision), ``timeout``, ``infos/success`` (True on the step the goal is reached), ``infos/pose``
(x, y, theta before the action) and ``infos/goal``. On a layout with modes also ``infos/mode`` (int8,
constant over an episode): the index into ``attrs["mode_names"]`` of the side the expert committed to;
``attrs["mode_counts"]`` counts the stored episodes per mode.

Size: with ``size=None`` the recipe keeps ``episodes`` (200) successful episodes; with ``size`` set it
keeps episodes until ``size`` transitions, cutting the last one short (its final step marked
``timeout``) so the store holds exactly ``size`` steps.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_EPISODES = 200
TIER_NAMES = ("simple-static", "simple-dynamic", "complex-static", "complex-dynamic", "bimodal-block")


def recipe_name(tier: str) -> str:
    return f"agv-{tier}-expert"


def make_agv_expert_dataset(tier: str, out: Path, size: int | None = None, seed: int = 0,
                            overwrite: bool = False, progress: bool = True,
                            episodes: int = DEFAULT_EPISODES) -> Any:
    """Build the ``agv-<tier>-expert`` dataset at ``out`` (atomically) and return the EpisodeStore."""
    import gymnasium as gym
    from tqdm.auto import tqdm

    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.envs.agv import TIERS
    from fastpolicy.envs.agv.expert import AGVExpert, ExpertConfig, run_expert_episode

    if tier not in TIERS:
        raise ValueError(f"unknown AGV tier {tier!r}; known: {', '.join(TIERS)}")
    if size is not None and int(size) <= 0:
        raise ValueError(f"size must be a positive number of steps, got {size}")
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    env_id, limit = TIERS[tier]
    env = gym.make(env_id)
    layout = env.unwrapped.layout
    cfg = ExpertConfig()
    expert = AGVExpert(layout, cfg)
    attrs = {
        "source": "fastpolicy recipe (AGV A* + pure-pursuit expert)",
        "recipe": recipe_name(tier), "task": f"agv-{tier}", "env_id": env_id, "seed": int(seed),
        "layout": layout.name, "max_episode_steps": limit,
        "obs_layout": [f"lidar_{k}" for k in range(env.unwrapped.core.num_rays)]
        + ["goal_dist", "goal_cos", "goal_sin", "v", "omega"],
        "action": "normalised (v, omega) in [-1, 1]^2 (see fastpolicy.envs.agv.env)",
        "episodes_kept": "successful episodes only",
        "behavior": {"controller": "grid A* + pure pursuit + sampling avoidance", **vars(cfg)},
    }
    mode_names = list(layout.modes.names) if layout.modes is not None else []
    if mode_names:
        attrs["mode_names"] = mode_names
        attrs["behavior"]["mode"] = "side of the block drawn per episode from the env rng"
    mode_counts = dict.fromkeys(mode_names, 0)
    target_steps = None if size is None else int(size)
    max_attempts = 3 * (episodes if target_steps is None else max(episodes, target_steps // 50)) + 10
    attempted = succeeded = 0
    bar = tqdm(total=target_steps or episodes, desc=f"data make {recipe_name(tier)}",
               unit="step" if target_steps else "ep", disable=not progress, mininterval=0.5)
    try:
        with EpisodeStore.create(out, attrs=attrs, overwrite=overwrite) as writer:
            while (writer.n_steps < target_steps) if target_steps else (writer.n_episodes < episodes):
                if attempted >= max_attempts:
                    raise RuntimeError(f"AGV expert succeeded in only {succeeded}/{attempted} episodes on "
                                       f"{tier}; giving up before filling the dataset")
                ep = run_expert_episode(env, expert, seed=int(seed) if attempted == 0 else None)
                attempted += 1
                if not ep["is_success"]:
                    continue
                succeeded += 1
                n = len(ep["reward"])
                if target_steps:
                    n = min(n, target_steps - writer.n_steps)
                timeout = ep["timeout"][:n].copy()
                if n < len(ep["reward"]):
                    timeout[-1] = True
                episode = {
                    "obs": ep["obs"][:n], "action": ep["action"][:n], "reward": ep["reward"][:n],
                    "terminal": ep["terminal"][:n], "timeout": timeout,
                    "infos/success": ep["success"][:n],
                    "infos/pose": ep["pose"][:n].astype(np.float32),
                    "infos/goal": np.repeat(ep["goal"][None].astype(np.float32), n, axis=0),
                }
                if mode_names:
                    episode["infos/mode"] = np.full(n, mode_names.index(ep["mode"]), dtype=np.int8)
                    mode_counts[ep["mode"]] += 1
                writer.add_episode(episode)
                bar.update(n if target_steps else 1)
            writer.attrs.update(episodes_attempted=attempted, episodes_succeeded=succeeded,
                                expert_success_rate=succeeded / attempted, size=writer.n_steps)
            if mode_names:
                writer.attrs.update(mode_counts=mode_counts)
    finally:
        bar.close()
        env.close()
    return writer.store


RECIPES = {recipe_name(t): functools.partial(make_agv_expert_dataset, t) for t in TIER_NAMES}
