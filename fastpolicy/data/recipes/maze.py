"""Maze2d dataset recipes: D4RL's ``generate_maze2d_datasets.py`` on gymnasium-robotics PointMaze.

One long run that never resets the point mass: D4RL's waypoint expert (``fastpolicy.envs.maze``) drives
to the current goal with N(0, 1)·0.5 action noise (clipped to [−1, 1]); when it reports the goal reached
(within 0.1 and slow), or after ``max_episode_steps`` of pursuit as in D4RL, a new goal is drawn with
gymnasium-robotics' own sampler (a random free cell, ±0.25 noise) and the run goes on. The run is cut
into fixed ``max_episode_steps`` chunks (300 / 600 / 800) marked with ``timeout`` at their ends; nothing
is ever ``terminal``. D4RL's sizes are the defaults: 1M (umaze), 2M (medium), 4M (large) steps.

Why not gymnasium-robotics' ``reset_target=True``: it swaps the goal as soon as the ball is within 0.45,
before the expert has slowed down, so the data would never show the ball stopping at a goal — which is
exactly what the continuing evaluation (reward for every step spent at the goal) pays for. D4RL swaps
on the controller's "solved" signal; so does this recipe, by setting the env's goal directly.

Stored per step ``t`` (obs layout of ``fastpolicy.envs.maze.OBS_LAYOUT``):
``obs = [x, y, vx, vy, goal_x, goal_y]`` before the action, ``action``, ``reward = 1`` if the position
*after* the step is within 0.5 of the goal in force during the step (the gymnasium convention, the same
reward the evaluation env pays; D4RL's relabel script scores the position before the step against the
fixed eval target instead), ``infos/goal`` (float32, equals ``obs[:, 4:6]``), ``infos/qpos`` and
``infos/qvel`` (float64, the exact simulator state, so any step can be re-simulated).
Deterministic for a given seed: the env is seeded once through ``reset(seed=)``, the expert's
waypoint jitter and the action noise come from their own ``numpy`` generators derived from the seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.envs.maze import GOAL_RADIUS, LABEL, MAZES, OBS_LAYOUT, MazeSpec, WaypointController

DEFAULT_NOISE = 0.5


def _make_point_maze(spec: MazeSpec) -> Any:
    """The raw PointMazeEnv (no wrappers: the recipe steps it a million times, overhead matters)."""
    import gymnasium as gym

    from fastpolicy.envs.registry import _quiet_import

    gym.register_envs(_quiet_import("gymnasium_robotics"))
    return gym.make(spec.env_id, continuing_task=True, reset_target=False).unwrapped


def _draw_goal(env: Any, pos: np.ndarray) -> np.ndarray:
    """A new goal from gymnasium-robotics' sampler, not already reached at ``pos``."""
    while True:
        goal = env.add_xy_position_noise(env.generate_target_goal())
        if math.hypot(goal[0] - pos[0], goal[1] - pos[1]) > GOAL_RADIUS:
            return goal


def iter_maze_chunks(name: str, size: int, seed: int = 0, noise: float = DEFAULT_NOISE,
                     progress: bool = False, dwell: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yield the recipe's episodes (chunks of ``max_episode_steps``, the last one may be shorter).

    ``dwell`` > 0 departs from D4RL: after the expert reaches a goal it keeps holding that goal for
    ``dwell`` more steps before a new one is drawn. D4RL's data switches goals on arrival, so it never
    shows staying at a goal — which is what the continuing evaluation rewards; policies imitating it
    learn to drive away from the goal (measured: BC 2.3 → 149 normalized on maze2d-umaze with dwell 50).
    """
    if dwell < 0:
        raise ValueError(f"dwell must be >= 0 steps, got {dwell}")
    from tqdm.auto import tqdm

    spec = MAZES[name]
    if size <= 0:
        raise ValueError(f"size must be a positive number of steps, got {size}")
    env = _make_point_maze(spec)
    jitter_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    noise_rng = np.random.default_rng(noise_seed)
    expert = WaypointController(env.maze.maze_map, rng=np.random.default_rng(jitter_seed))
    obs, _ = env.reset(seed=seed)
    point = obs["observation"]
    goal = _draw_goal(env, point[:2])
    env.goal = goal
    env.update_target_site_pos()
    pursuit = 0
    held = -1  # steps spent holding a reached goal (dwell), -1 while still pursuing it
    bar = tqdm(total=size, desc=f"data make {name}", unit="step", disable=not progress, mininterval=0.5)
    try:
        done = 0
        while done < size:
            length = min(spec.max_episode_steps, size - done)
            qpos = np.empty((length, 2))
            qvel = np.empty((length, 2))
            goals = np.empty((length, 2))
            actions = np.empty((length, 2))
            rewards = np.empty(length, dtype=np.float32)
            for t in range(length):
                qpos[t], qvel[t], goals[t] = point[:2], point[2:4], goal
                action, reached = expert.act(point[:2], point[2:4], goal)
                if noise > 0:
                    action = np.clip(action + noise * noise_rng.standard_normal(2), -1.0, 1.0)
                actions[t] = action
                obs, _, _, _, _ = env.step(action)
                point = obs["observation"]
                rewards[t] = math.hypot(point[0] - goal[0], point[1] - goal[1]) <= GOAL_RADIUS
                pursuit += 1
                if reached and held < 0:
                    held = 0
                if held >= 0:
                    held += 1
                if held > dwell or (held < 0 and pursuit >= spec.max_episode_steps):
                    goal = _draw_goal(env, point[:2])
                    env.goal = goal
                    env.update_target_site_pos()
                    pursuit, held = 0, -1
            done += length
            bar.update(length)
            timeout = np.zeros(length, dtype=bool)
            timeout[-1] = True
            goals32 = goals.astype(np.float32)
            yield {
                "obs": np.concatenate([qpos, qvel, goals], axis=1).astype(np.float32),
                "action": actions.astype(np.float32),
                "reward": rewards,
                "terminal": np.zeros(length, dtype=bool),
                "timeout": timeout,
                "infos/goal": goals32,
                "infos/qpos": qpos,
                "infos/qvel": qvel,
            }
    finally:
        bar.close()
        env.close()


def recipe_attrs(name: str, size: int, seed: int, noise: float, dwell: int = 0) -> dict[str, Any]:
    """Store attributes of a maze2d dataset (what built it, and the scores it is measured against)."""
    from fastpolicy.envs.registry import get_task

    spec = MAZES[name]
    try:  # the locally measured expert / random returns of the task card, to score against
        card = get_task(spec.task).reference
        local = {k: card[k] for k in ("label", "expert_return", "random_return") if k in card}
    except (KeyError, ValueError):
        local = {}
    return {
        "source": "fastpolicy recipe",
        "recipe": name,
        "task": spec.task,
        "env_id": spec.env_id,
        "seed": int(seed),
        "size": int(size),
        "noise": float(noise),
        "label": LABEL,
        "d4rl_env_id": spec.d4rl_env_id,
        "ref_min_score": spec.ref_min,
        "ref_max_score": spec.ref_max,
        "local_reference": local,
        "max_episode_steps": spec.max_episode_steps,
        "obs_layout": list(OBS_LAYOUT),
        "reward": f"1 if |qpos[t+1] - goal[t]| <= {GOAL_RADIUS} else 0",
        "behavior": {"controller": "d4rl-waypoint (Q-iteration + PD)", "p_gain": 10.0, "d_gain": -1.0,
                     "solve_thresh": 0.1, "action_noise_std": float(noise)},
        "dwell": int(dwell),
        **({"note": f"not D4RL's recipe: goals are held {dwell} steps after being reached"} if dwell else {}),
    }


def make_maze_dataset(name: str, out: Path, size: int | None = None, seed: int = 0, overwrite: bool = False,
                      progress: bool = True, noise: float = DEFAULT_NOISE, dwell: int = 0) -> Any:
    """Build the ``name`` maze2d dataset at ``out`` (atomically) and return the opened EpisodeStore."""
    from fastpolicy.data.store import EpisodeStore

    if name not in MAZES:
        raise ValueError(f"unknown maze recipe {name!r}; known: {', '.join(MAZES)}")
    size = MAZES[name].dataset_size if size is None else int(size)
    if size <= 0:
        raise ValueError(f"size must be a positive number of steps, got {size}")
    attrs = recipe_attrs(name, size, seed, noise, dwell)
    if dwell:
        attrs["recipe"] = f"{name}-dwell{dwell}"
    with EpisodeStore.create(out, attrs=attrs, overwrite=overwrite) as writer:
        for episode in iter_maze_chunks(name, size, seed=seed, noise=noise, progress=progress, dwell=dwell):
            writer.add_episode(episode)
    return writer.store


DEMO_DWELL = 50
RECIPES = {name: functools.partial(make_maze_dataset, name) for name in MAZES}
# Variants that hold each reached goal (see iter_maze_chunks): what a goal-reaching imitation learner needs.
RECIPES.update({f"{name}-dwell": functools.partial(make_maze_dataset, name, dwell=DEMO_DWELL)
                for name in MAZES})
