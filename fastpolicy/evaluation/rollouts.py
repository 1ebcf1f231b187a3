"""Closed-loop rollouts of a Policy on a task card, scored and timed in one result row.

Score: episodes run in lockstep on a gymnasium vector env (one Session of batch B), so DDPM-100
evaluations finish on a CPU. Latency: measured separately at batch 1 — what one robot sees per
action — over real closed-loop steps after a warm-up. NFE per control step: denoiser calls spent in
each ``Session.act`` (0 while the action queue lasts, the sampler's step count when it replans).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastpolicy.envs.registry import TaskSpec, get_task, make_env, make_vector_env
from fastpolicy.evaluation.results import score_row
from fastpolicy.policies.base import Policy, StepStats


@dataclass
class RolloutResult:
    returns: np.ndarray  # (episodes,)
    success: np.ndarray  # (episodes,) bool
    lengths: np.ndarray  # (episodes,)
    stats: StepStats


def _check_dims(policy: Policy, space) -> None:
    if space.shape[-1] != policy.obs_dim:
        raise ValueError(
            f"the task's observation has {space.shape[-1]} dims but the policy was trained "
            f"on {policy.obs_dim}"
        )


def _step_success(info: dict, n: int) -> np.ndarray:
    """Per-env success of this step. With same-step autoreset the info of an env that just finished
    is in ``final_info`` (the top level already belongs to its next episode), so read both."""
    success = np.asarray(info.get("success", np.zeros(n)), bool)
    final = info.get("final_info")
    if isinstance(final, dict) and "success" in final:
        ended = np.asarray(info.get("_final_info", np.ones(n, bool)), bool)
        success = np.where(ended, np.asarray(final["success"], bool), success)
    return success


def rollout(
    policy: Policy, task: TaskSpec, episodes: int, seed: int, progress: bool = False,
    step_hook: Callable[[Any, np.ndarray], None] | None = None,
) -> RolloutResult:
    """Run ``episodes`` episodes in lockstep (env seeds seed, seed+1, …); finished envs are ignored.

    ``step_hook(venv, alive)`` is called after every step with the vector env and the (episodes,) mask
    of episodes that were still running during that step — e.g. to record trajectories and classify
    which way (mode) each episode went.
    """
    from tqdm.auto import tqdm

    venv = make_vector_env(task, episodes)
    try:
        _check_dims(policy, venv.single_observation_space)
        low, high = venv.single_action_space.low, venv.single_action_space.high
        obs, _ = venv.reset(seed=seed)
        session = policy.new_session(batch_size=episodes, seed=seed)
        done = np.zeros(episodes, bool)
        returns = np.zeros(episodes)
        success = np.zeros(episodes, bool)
        lengths = np.zeros(episodes, int)
        for _ in tqdm(
            range(task.max_episode_steps), desc=f"{task.name} seed {seed}", disable=not progress, leave=False
        ):
            action = np.clip(session.act(obs), low, high)
            obs, reward, terminated, truncated, info = venv.step(action)
            alive = ~done
            if step_hook is not None:
                step_hook(venv, alive)
            returns += np.where(alive, reward, 0.0)
            lengths += alive
            success |= alive & _step_success(info, episodes)
            done |= terminated | truncated
            if done.all():
                break
        return RolloutResult(returns, success, lengths, session.stats)
    finally:
        venv.close()


def measure_latency(
    policy: Policy, task: TaskSpec, steps: int = 64, warmup: int = 8, seed: int = 10_000,
    planning_steps: int | None = None,
) -> StepStats:
    """Per-action latency at batch 1 over real closed-loop steps (after ``warmup`` untimed steps).

    ``planning_steps``: run until that many timed control steps called the denoiser (a policy that
    plans every Ta steps needs Ta× more control steps), instead of ``steps`` control steps.
    """
    env = make_env(task)
    try:
        _check_dims(policy, env.observation_space)
        obs, _ = env.reset(seed=seed)
        session = policy.new_session(batch_size=1, seed=seed)
        i = planned = 0
        while True:
            if i == warmup:
                session.stats = StepStats()
            if i >= warmup:
                # (a policy that never calls a denoiser stops after 64 control steps per planning step)
                done = (planned >= planning_steps
                        or i - warmup >= 64 * planning_steps) if planning_steps else i - warmup >= steps
                if done:
                    break
            obs, _, terminated, truncated, _ = env.step(
                np.clip(session.act(obs), env.action_space.low, env.action_space.high)
            )
            planned += i >= warmup and session.stats.nfe[-1] > 0   # a running count: O(1) per step
            if terminated or truncated:
                obs, _ = env.reset()
                session.reset()
            i += 1
        return session.stats
    finally:
        env.close()


def evaluate(
    policy: Policy,
    task: TaskSpec | str,
    episodes: int | None = None,
    seeds: Sequence[int] | None = None,
    latency_steps: int = 64,
    progress: bool = True,
    method: str | None = None,
    step_hook: Callable[[int, Any, np.ndarray], None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Score + latency of one policy on one task, as a row of the shared result schema.

    ``step_hook(seed, venv, alive)``: see :func:`rollout`.

    ``episodes`` per seed; ``None`` means the task card's ``eval.episodes`` (10 if it has none).
    """
    if episodes is not None and episodes < 1:
        # 0 used to fall through to the task default and silently run 10 episodes
        raise ValueError(f"episodes must be ≥ 1 (or None for the task card's default), got {episodes}")
    task = get_task(task) if isinstance(task, str) else task
    if episodes is None:
        episodes = int(task.eval.get("episodes", 10))
    seeds = list(seeds if seeds is not None else task.eval.get("seeds", [0]))
    results = [rollout(policy, task, episodes, seed * 1000, progress,
                       None if step_hook is None else functools.partial(step_hook, seed))
               for seed in seeds]
    latency = measure_latency(policy, task, steps=latency_steps).summary() if latency_steps else {}
    return score_row(
        task, method or getattr(policy, "method", type(policy).__name__),
        steps=getattr(policy, "checkpoint_step", None), seeds=seeds,
        returns=[r.returns for r in results], success=[r.success for r in results],
        lengths=[r.lengths for r in results], nfe=[n for r in results for n in r.stats.nfe],
        latency=latency, **extra)
