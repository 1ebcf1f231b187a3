"""The Policy contract and per-episode Sessions.

Why a Session: the model is stateless and shared; everything that belongs to one robot or one episode
(observation history, queued actions, a streaming buffer) lives in a Session, so one model can serve a
fleet (LeRobot keeps these queues inside the nn.Module: one model = one robot).

Shapes (documented once, here):
    obs window   (B, To, obs_dim)  raw (unnormalised) observations, oldest first
    chunk        (B, Ta, act_dim)  raw actions to execute in order
    state        a dict of tensors whose first dim is B (or None for stateless policies), so the server
                 can stack the states of many sessions into one batch and split them again.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from fastpolicy.policies.history import ObservationHistory, require_finite_actions
from fastpolicy.utils.timing import percentile_fields

PolicyState = dict[str, torch.Tensor] | None


@dataclass
class ChunkResult:
    """One planning call: the actions to execute next, what it cost and the carried state."""

    actions: np.ndarray
    nfe: int
    state: PolicyState = None


class Policy(ABC):
    """A policy maps an observation window to a chunk of actions. Subclasses stay free of episode state."""

    obs_dim: int
    action_dim: int
    obs_horizon: int
    action_horizon: int
    method: str = "policy"

    def init_state(self, batch_size: int) -> PolicyState:
        """Per-episode state beyond the observation history (e.g. a streaming buffer). None if stateless."""
        return None

    @abstractmethod
    def predict_chunk(
        self,
        obs_window: np.ndarray | torch.Tensor,
        state: PolicyState = None,
        generator: torch.Generator | None = None,
    ) -> ChunkResult:
        """Plan from ``obs_window`` (B, To, obs_dim); return (B, Ta', act_dim) actions with Ta' ≤ Ta."""

    def new_session(self, batch_size: int = 1, seed: int | None = None) -> Session:
        return Session(self, batch_size=batch_size, seed=seed)

    @staticmethod
    def stack_states(states: list[PolicyState]) -> PolicyState:
        """Stack per-session states along the batch dim (server micro-batching)."""
        if not states or states[0] is None:
            return None
        return {k: torch.cat([s[k] for s in states], dim=0) for k in states[0]}

    @staticmethod
    def split_state(state: PolicyState, sizes: list[int]) -> list[PolicyState]:
        if state is None:
            return [None] * len(sizes)
        parts = {k: torch.split(v, sizes, dim=0) for k, v in state.items()}
        return [{k: parts[k][i] for k in parts} for i in range(len(sizes))]


@dataclass
class StepStats:
    """Per control step accounting: denoiser calls spent and wall time of ``act``."""

    nfe: list[int] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        if not self.nfe:
            return {
                "nfe_per_step_mean": 0.0,
                "nfe_per_step_max": 0,
                "latency_ms_p50": float("nan"),
                "latency_ms_p99": float("nan"),
            }
        return {
            "nfe_per_step_mean": float(np.mean(self.nfe)),
            "nfe_per_step_max": int(np.max(self.nfe)),
            **percentile_fields(self.latency_s, scale=1e3),
        }


class Session:
    """Episode state for ``batch_size`` robots that act in lockstep.

    ``act(obs)`` takes (B, obs_dim) (or (obs_dim,) when B == 1) and returns one action per robot. It
    replans when the action queue is empty: receding horizon, execute Ta actions, then plan again.
    The observation history (padding, reset, refusing NaN) is the shared ``ObservationHistory``.
    """

    def __init__(self, policy: Policy, batch_size: int = 1, seed: int | None = None) -> None:
        self.policy = policy
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.stats = StepStats()
        self.reset()

    def reset(self) -> None:
        self._history = ObservationHistory(self.policy.obs_horizon, self.batch_size)
        self._queue: deque[np.ndarray] = deque()
        self.state: PolicyState = self.policy.init_state(self.batch_size)

    def observation_window(self) -> np.ndarray:
        """(B, To, obs_dim): the history, left-padded with the first frame (as the training sampler pads)."""
        return self._history.window()

    def act(self, obs: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        single = np.ndim(obs) == 1
        self._history.append(obs)  # refuses NaN / inf
        nfe = 0
        if not self._queue:
            result = self.policy.predict_chunk(self.observation_window(), self.state, self.generator)
            # Never hand NaN/inf to an actuator: fail loudly so a caller's fallback takes over.
            require_finite_actions(result.actions, getattr(self.policy, "method", type(self.policy).__name__))
            self.state = result.state
            nfe = result.nfe
            self._queue.extend(np.swapaxes(result.actions, 0, 1))  # queue of (B, act_dim)
        action = self._queue.popleft()
        self.stats.nfe.append(nfe)
        self.stats.latency_s.append(time.perf_counter() - t0)
        return action[0] if single else action

    def observe_only(self, obs: np.ndarray) -> None:
        """Record an observation without acting (used by the control loop when a chunk is in flight)."""
        self._history.append(obs)

    @property
    def queued(self) -> int:
        return len(self._queue)
