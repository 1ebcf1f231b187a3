"""A stable-baselines3 ``VecEnv`` over a natively batched gymnasium ``VectorEnv`` (gymnasium 1.x).

SB3's own ``DummyVecEnv``/``SubprocVecEnv`` step N copies of a single env in a Python loop (or N
processes). The AGV vector env steps thousands of robots in one numba call, so this adapter hands
the whole action batch to ``VectorEnv.step`` and only translates the result to SB3's conventions:

* ``done = terminated | truncated``; the vector env must use **same-step** autoreset, so the returned
  observation of a finished robot is already its next episode's first one and the ended episode's
  last observation goes to ``infos[i]["terminal_observation"]`` (from gymnasium's ``final_obs``);
* ``infos[i]["TimeLimit.truncated"]`` is ``truncated and not terminated`` (SB3 bootstraps those);
* on episode end, ``infos[i]["episode"] = {"r", "l", "t"}`` and ``infos[i]["is_success"]`` so SB3's
  ``rollout/ep_rew_mean`` and ``rollout/success_rate`` work without a ``VecMonitor`` (whose per-step
  Python loop we avoid).

An optional ``recorder`` (``fastpolicy.rl.explore.EpisodeRecorder``) sees every batched transition;
that is how ``fastpolicy explore --save-store`` turns rollouts into an EpisodeStore without SB3
knowing about it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn


class TransitionRecorder(Protocol):
    """What the adapter calls on every reset and step (all arrays batched over robots)."""

    def on_reset(self, obs: np.ndarray) -> None: ...

    def on_step(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray, next_obs: np.ndarray, success: np.ndarray,
                collision: np.ndarray) -> None: ...


class GymnasiumVecEnv(VecEnv):
    """SB3 VecEnv interface over a gymnasium ``VectorEnv`` with ``AutoresetMode.SAME_STEP``.

    Args:
        venv: the gymnasium vector env, e.g.
            ``gym.make_vec(id, N, vectorization_mode="vector_entry_point")``.
        recorder: optional transition recorder (see module docstring).
    """

    def __init__(self, venv: Any, recorder: TransitionRecorder | None = None) -> None:
        from gymnasium.vector import AutoresetMode

        mode = venv.metadata.get("autoreset_mode")
        if mode is not None and mode != AutoresetMode.SAME_STEP:
            raise ValueError(f"GymnasiumVecEnv needs a vector env with same-step autoreset, got {mode}")
        self.venv = venv
        self.recorder = recorder
        self._actions: np.ndarray | None = None
        self._obs: np.ndarray | None = None
        n = int(venv.num_envs)
        self._ep_return = np.zeros(n)
        self._ep_length = np.zeros(n, dtype=np.int64)
        self._t0 = time.time()
        super().__init__(n, venv.single_observation_space, venv.single_action_space)

    # ------------------------------------------------------------------------------- VecEnv core
    def reset(self) -> VecEnvObs:
        seed = self._seeds[0]
        options = self._options[0] or None
        obs, _ = self.venv.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._obs = np.asarray(obs)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        if self.recorder is not None:
            self.recorder.on_reset(self._obs)
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs, *self.action_space.shape)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None or self._obs is None:
            raise RuntimeError("call reset() and step_async() before step_wait()")
        obs, reward, terminated, truncated, vinfo = self.venv.step(self._actions)
        obs = np.asarray(obs)
        reward = np.asarray(reward, dtype=np.float32)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        dones = terminated | truncated
        n = self.num_envs
        success = np.asarray(vinfo.get("success", np.zeros(n, dtype=bool)), dtype=bool)
        collision = np.asarray(vinfo.get("collision", np.zeros(n, dtype=bool)), dtype=bool)
        # The true next observation of every robot (the ended episode's last one where done).
        next_obs = obs
        if dones.any():
            next_obs = obs.copy()
            final = vinfo.get("final_obs")
            if final is None:
                raise RuntimeError("the vector env ended an episode without infos['final_obs']")
            final = _as_batch(final, n)
            next_obs[dones] = final[dones]
        if self.recorder is not None:
            self.recorder.on_step(self._obs, self._actions, reward, terminated, truncated, next_obs, success,
                                  collision)
        self._ep_return += reward
        self._ep_length += 1
        infos: list[dict[str, Any]] = [{} for _ in range(n)]
        elapsed = round(time.time() - self._t0, 6)
        for i in np.flatnonzero(dones):
            infos[i] = {
                "terminal_observation": next_obs[i],
                "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                "episode": {"r": float(self._ep_return[i]), "l": int(self._ep_length[i]), "t": elapsed},
                "is_success": bool(success[i]),
            }
        self._ep_return[dones] = 0.0
        self._ep_length[dones] = 0
        self._obs = obs
        self._actions = None
        return obs, reward, dones, infos

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------- attribute passthrough
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        # One batched env: every robot shares its attributes.
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [self.venv.render()]


def _as_batch(final: Any, n: int) -> np.ndarray:
    """gymnasium's ``final_obs`` is a dense (N, ...) array for native vector envs and an object array
    (None where not done) for Sync/AsyncVectorEnv; return a dense array either way."""
    arr = np.asarray(final)
    if arr.dtype != object:
        return arr
    template = next(x for x in arr if x is not None)
    out = np.zeros((n, *np.shape(template)), dtype=np.asarray(template).dtype)
    for i, x in enumerate(arr):
        if x is not None:
            out[i] = x
    return out


def make_sb3_vec_env(task: str, num_envs: int, seed: int | None = None,
                     recorder: TransitionRecorder | None = None) -> GymnasiumVecEnv:
    """The SB3 VecEnv for a task card: its env id's natively batched vector env (N robots, one call per
    step) with the card's ``env_kwargs`` and step limit."""

    import gymnasium as gym

    from fastpolicy.envs.registry import _quiet_import, get_task

    spec = get_task(task)
    if spec.import_module:
        _quiet_import(spec.import_module)
    env_spec = gym.spec(spec.env_id)
    if env_spec.vector_entry_point is None:
        raise ValueError(f"task {task!r} ({spec.env_id}) has no natively batched vector env; "
                         "explore needs one (the AGV tasks have it)")
    venv = gym.make_vec(spec.env_id, num_envs=num_envs, vectorization_mode="vector_entry_point",
                        max_episode_steps=spec.max_episode_steps, **spec.env_kwargs)
    env = GymnasiumVecEnv(venv, recorder=recorder)
    if seed is not None:
        env.seed(seed)
    return env
