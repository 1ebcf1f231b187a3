"""The action-chunk broker: turns chunk replies into on-time actions for a fixed-rate control loop.

Why: a chunk planned from the observation at time t is meant for times t, t+dt, t+2dt, …; by the time it
arrives (inference + network latency) its first actions are already due. Every action therefore carries
a target timestamp (on the robot's clock) and the broker

* drops actions whose time has passed (latency compensation) instead of executing them late,
* requests the next chunk *before* the queue runs dry (asynchronous prefetch on a worker thread, so
  actuation never waits on inference),
* optionally blends the first overlapping actions of a new chunk with the old plan so chunk boundaries
  do not jerk (a soft version of real-time chunking's frozen prefix).

``ChunkQueue`` is the pure, thread-free core (also used by the asyncio load benchmark);
``ActionBroker`` adds the history (the ``ObservationHistory`` a local ``Session`` and the server use),
the prefetch thread and the bookkeeping. A chunk with a NaN or inf action is refused as a failed
request (``require_finite_actions``, as ``Session.act`` refuses it): the loop's fallback covers the gap.
Sources: a local ``Policy`` (``LocalChunkSource``) or a remote server (``RemoteChunkSource``) — the
loop cannot tell them apart.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fastpolicy.policies.base import Policy, PolicyState
from fastpolicy.policies.history import ObservationHistory, require_finite_actions


@dataclass
class Chunk:
    """Actions (n, action_dim) with target times (n,) on the robot's clock."""

    actions: np.ndarray
    target_times: np.ndarray
    nfe: int = 0
    request_time: float = 0.0  # when the observation it was planned from was taken


class ChunkQueue:
    """A time-stamped action queue. Not thread-safe; ``ActionBroker`` guards it with a lock.

    An action with target time τ belongs to the tick at time t when |τ − t| ≤ tolerance · period.
    ``pop(t)`` drops actions that were due before that window and returns the one for this tick.
    """

    def __init__(self, period_s: float, blend_steps: int = 0, tolerance: float = 0.5) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.period_s = period_s
        self.blend_steps = blend_steps
        self.tolerance = tolerance
        self._items: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self.dropped_due = 0  # actions that arrived or waited past their time and were never executed

    def __len__(self) -> int:
        return len(self._items)

    @property
    def _slack(self) -> float:
        return self.tolerance * self.period_s

    def clear(self) -> None:
        self._items.clear()

    def remaining(self, now: float) -> int:
        """Actions still executable at or after ``now``."""
        return sum(1 for tau, _ in self._items if tau >= now - self._slack)

    def merge(self, chunk: Chunk, now: float) -> int:
        """Insert a new chunk: drop its already-due actions, replace (or blend into) the old plan from its
        first action on. Returns how many of the chunk's actions were dropped as already due."""
        taus = np.asarray(chunk.target_times, dtype=np.float64)
        actions = np.asarray(chunk.actions, dtype=np.float32)
        keep = taus >= now - self._slack
        dropped = int((~keep).sum())
        self.dropped_due += dropped
        taus, actions = taus[keep], actions[keep]
        if len(taus) == 0:
            return dropped
        start = taus[0] - self._slack
        old_tail = [(tau, a) for tau, a in self._items if tau >= start]
        self._items = collections.deque((tau, a) for tau, a in self._items if tau < start)
        if self.blend_steps > 0 and old_tail:
            actions = actions.copy()
            old_by_step = {round((tau - taus[0]) / self.period_s): a for tau, a in old_tail}
            for j in range(min(self.blend_steps, len(actions))):
                old = old_by_step.get(j)
                if old is not None:
                    w = (j + 1) / (self.blend_steps + 1)  # weight of the new plan grows over the overlap
                    actions[j] = (1 - w) * old + w * actions[j]
        self._items.extend(zip(taus.tolist(), actions))
        return dropped

    def pop(self, now: float) -> np.ndarray | None:
        """The action for the tick at ``now``, or None when none is due (the caller's fallback applies)."""
        while self._items and self._items[0][0] < now - self._slack:
            self._items.popleft()
            self.dropped_due += 1
        if self._items and self._items[0][0] <= now + self._slack:
            return self._items.popleft()[1]
        return None


class ChunkSource(Protocol):
    """Where chunks come from: a local policy or a remote server."""

    obs_horizon: int
    action_dim: int
    period_s: float

    def request(self, obs_window: np.ndarray, t: float) -> Chunk:
        """Plan from ``obs_window`` (k ≤ obs_horizon, obs_dim) observed at time ``t``."""

    def reset(self) -> None:
        """Start a new episode (clear the policy state)."""


class LocalChunkSource:
    """A ``Policy`` in this process, with its per-episode state kept here (batch of one).

    A graphed policy (``fastpolicy.policies.cuda_graphs.graphed``) replays its batch-1 CUDA graph here,
    the same path the server uses for its batches.
    """

    def __init__(self, policy: Policy, period_s: float, seed: int | None = None) -> None:
        self.policy = policy
        self.obs_horizon, self.action_dim = policy.obs_horizon, policy.action_dim
        self.period_s = period_s
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._state_lock = threading.Lock()
        self.state: PolicyState = policy.init_state(1)
        warmup = getattr(policy, "warmup", None)
        if callable(warmup) and getattr(policy, "graph_batch_sizes", ()):
            # a graphed policy captures its batch-1 graphs now, not on the loop's first ticks
            warmup((1,), self.generator)

    def request(self, obs_window: np.ndarray, t: float) -> Chunk:
        window = np.asarray(obs_window, dtype=np.float32)
        if len(window) < self.obs_horizon:  # pad with the oldest frame, as the training sampler does
            window = np.concatenate([np.repeat(window[:1], self.obs_horizon - len(window), 0), window])
        with self._state_lock, torch.inference_mode():
            result = self.policy.predict_chunk(window[None], self.state, self.generator)
            self.state = result.state
        actions = result.actions
        if isinstance(actions, torch.Tensor):
            actions = actions.detach().cpu().numpy()
        actions = np.asarray(actions, dtype=np.float32)[0]
        return Chunk(actions, t + self.period_s * np.arange(len(actions)), int(result.nfe), t)

    def reset(self) -> None:
        with self._state_lock:
            self.state = self.policy.init_state(1)


class RemoteChunkSource:
    """A policy server through ``fastpolicy.serve.client.PolicyClient`` (blocking, on the broker's thread)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        meta = client.metadata
        self.obs_horizon, self.action_dim = meta.obs_horizon, meta.action_dim
        self.period_s = meta.control_period_s

    def request(self, obs_window: np.ndarray, t: float) -> Chunk:
        reply = self.client.infer(np.asarray(obs_window, dtype=np.float32), client_time=t)
        return Chunk(reply.actions, reply.target_times, reply.nfe, t)

    def reset(self) -> None:
        self.client.reset()


class ActionBroker:
    """Observation history + chunk queue + asynchronous prefetch on one worker thread.

    Call ``observe(obs, t)`` then ``act(t)`` once per tick. ``act`` never blocks on inference: it returns
    the action for this tick or None (late), and starts a request when fewer than ``low_watermark``
    future actions remain and none is in flight.
    """

    def __init__(
        self,
        source: ChunkSource,
        low_watermark: int = 2,
        blend_steps: int = 0,
        clock: Callable[[], float] = time.monotonic,
        max_records: int = 100_000,
    ) -> None:
        self.source = source
        self.low_watermark = low_watermark
        self.clock = clock
        self.queue = ChunkQueue(source.period_s, blend_steps=blend_steps)
        self._history = ObservationHistory(source.obs_horizon, batch_size=1)
        self._lock = threading.Lock()
        # OpenMP thread counts are per thread: give the inference thread the caller's torch setting.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1,
            thread_name_prefix="fastpolicy-broker",
            initializer=torch.set_num_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._inflight: concurrent.futures.Future | None = None
        self._epoch = 0  # bumped by reset(): replies planned before it are discarded
        self.requests = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.request_latency_s: collections.deque[float] = collections.deque(maxlen=max_records)
        self.nfe: collections.deque[int] = collections.deque(maxlen=max_records)

    def observe(self, obs: np.ndarray, t: float | None = None) -> None:
        """Record this tick's observation (NaN / inf refused with ``ValueError``)."""
        self._history.append(obs)

    def window(self) -> np.ndarray:
        """(To, obs_dim), left-padded with the oldest frame at episode start."""
        return self._history.window()[0]

    @property
    def busy(self) -> bool:
        f = self._inflight
        return f is not None and not f.done()

    def act(self, t: float | None = None) -> np.ndarray | None:
        t = self.clock() if t is None else t
        with self._lock:
            action = self.queue.pop(t)
            low = self.queue.remaining(t) <= self.low_watermark
        if low and not self.busy and len(self._history):
            self._launch(t)
        return action

    def prime(self) -> None:
        """Fetch the first chunk synchronously before the clock starts, so tick 0 is not late.

        The robot is still waiting, so the chunk is re-timed to start now instead of being treated as
        late by the time it took to compute.
        """
        self.wait_idle()
        chunk = self.source.request(self.window(), self.clock())
        self.requests += 1
        require_finite_actions(chunk.actions, "the chunk source")
        now = self.clock()
        taus = np.asarray(chunk.target_times, dtype=np.float64)
        shifted = Chunk(chunk.actions, taus - taus[0] + now, chunk.nfe, now)
        with self._lock:
            self.queue.merge(shifted, now)

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        f = self._inflight
        if f is not None:
            concurrent.futures.wait([f], timeout_s)

    def _launch(self, t: float) -> None:
        window = self.window()
        epoch = self._epoch
        self.requests += 1
        self._inflight = self._executor.submit(self._fetch, window, t, epoch)

    def _fetch(self, window: np.ndarray, t: float, epoch: int) -> None:
        start = self.clock()
        try:
            chunk = self.source.request(window, t)
            require_finite_actions(chunk.actions, "the chunk source")
        except Exception as exc:  # the loop's fallback covers the gap; the next tick retries
            self.errors += 1
            self.last_error = exc
            return
        now = self.clock()
        self.request_latency_s.append(now - start)
        self.nfe.append(chunk.nfe)
        with self._lock:
            if epoch == self._epoch:
                self.queue.merge(chunk, now)

    def reset(self) -> None:
        """New episode: forget history and queued actions, reset the source's state."""
        with self._lock:
            self._epoch += 1
            self.queue.clear()
            self._history.reset()
        self.wait_idle()
        self.source.reset()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
