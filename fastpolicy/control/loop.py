"""The fixed-rate control loop: monotonic deadlines, asynchronous inference, deadline accounting.

Why: a robot needs an action every period whether or not the policy has one ready. The loop

* ticks at t0 + k·period on ``time.monotonic`` (sleeping until each deadline, so errors never
  accumulate into drift); a tick that overruns its successor skips the missed deadlines and counts them;
* never waits on inference: the ``ActionBroker`` plans on a worker thread and the loop takes whatever
  action is due now;
* when no action is due (the chunk is late) applies a defined fallback — ``hold`` the last action
  sent, or a configured ``safe`` action (e.g. zero velocity) — and counts the miss;
* records per-tick wake-up jitter and loop latency, and the broker records inference round trips, so
  ``LoopStats.summary()`` gives misses, jitter and p50/p99 latencies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastpolicy.control.broker import ActionBroker
from fastpolicy.utils.timing import percentile

FALLBACKS = ("hold", "safe")


@dataclass
class TickRecord:
    index: int
    time: float
    late: bool  # no planned action was due: the fallback was applied
    action: np.ndarray


@dataclass
class LoopStats:
    period_s: float
    ticks: int = 0
    misses: int = 0  # ticks that applied the fallback
    overruns: int = 0  # deadlines skipped because a tick ran past the next one
    jitter_s: list[float] = field(default_factory=list)
    step_latency_s: list[float] = field(default_factory=list)
    inference_latency_s: list[float] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return percentile(values, q, scale=1e3)

        return {
            "hz": 1.0 / self.period_s,
            "ticks": self.ticks,
            "misses": self.misses,
            "miss_rate": self.misses / self.ticks if self.ticks else 0.0,
            "overruns": self.overruns,
            "jitter_ms_p50": pct(self.jitter_s, 50),
            "jitter_ms_p99": pct(self.jitter_s, 99),
            "jitter_ms_max": pct(self.jitter_s, 100),
            "step_ms_p50": pct(self.step_latency_s, 50),
            "step_ms_p99": pct(self.step_latency_s, 99),
            "inference_ms_p50": pct(self.inference_latency_s, 50),
            "inference_ms_p99": pct(self.inference_latency_s, 99),
            "chunks": len(self.inference_latency_s),
            "nfe_per_chunk_mean": float(np.mean(self.nfe)) if self.nfe else None,
        }


class ControlLoop:
    """Run ``read_obs → broker → apply_action`` at ``hz`` with a fallback for late chunks.

    ``read_obs()`` returns the current observation (obs_dim,); ``apply_action(a)`` sends one action and may
    return True to signal the end of an episode (the broker is then reset). ``clock``/``sleep`` are
    injectable for tests.
    """

    def __init__(
        self,
        broker: ActionBroker,
        read_obs: Callable[[], np.ndarray],
        apply_action: Callable[[np.ndarray], Any],
        hz: float,
        fallback: str = "hold",
        safe_action: np.ndarray | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        record_ticks: bool = False,
    ) -> None:
        if hz <= 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        self.broker = broker
        self.read_obs, self.apply_action = read_obs, apply_action
        self.period_s = 1.0 / hz
        self.fallback = fallback
        dim = broker.source.action_dim
        self.safe_action = (
            np.zeros(dim, np.float32)
            if safe_action is None
            else np.asarray(safe_action, np.float32).reshape(dim)
        )
        self.clock, self.sleep = clock, sleep
        self.record_ticks = record_ticks
        self.ticks: list[TickRecord] = []
        self._last_action: np.ndarray | None = None
        self.episodes = 0

    def fallback_action(self) -> np.ndarray:
        if self.fallback == "hold" and self._last_action is not None:
            return self._last_action
        return self.safe_action

    def run(self, steps: int | None = None, duration_s: float | None = None, prime: bool = True) -> LoopStats:
        """Run ``steps`` ticks (or for ``duration_s``). ``prime`` fetches the first chunk before tick 0."""
        if steps is None and duration_s is None:
            raise ValueError("give steps or duration_s")
        if steps is None:
            steps = max(1, int(duration_s / self.period_s))
        stats = LoopStats(self.period_s)
        if prime:
            self.broker.observe(self.read_obs(), self.clock())
            self.broker.prime()
        n_chunks_before = len(self.broker.request_latency_s)
        t0 = self.clock()
        k = 0
        while k < steps:
            deadline = t0 + k * self.period_s
            now = self.clock()
            if deadline > now:
                self.sleep(deadline - now)
            t = self.clock()
            stats.jitter_s.append(max(0.0, t - deadline))
            obs = self.read_obs()
            # The tick's nominal time (its deadline) selects the action: wake-up jitter must not shift a
            # late tick onto its successor's action. Actions are timed on the same grid.
            self.broker.observe(obs, deadline)
            action = self.broker.act(deadline)
            late = action is None
            if late:
                action = self.fallback_action()
                stats.misses += 1
            done = self.apply_action(action)
            self._last_action = action
            stats.step_latency_s.append(self.clock() - t)
            if self.record_ticks:
                self.ticks.append(TickRecord(k, t, late, np.array(action, copy=True)))
            stats.ticks += 1
            if done:
                self.episodes += 1
                self.broker.reset()
                self.broker.observe(self.read_obs(), self.clock())
            k += 1
            # No drift: deadlines stay on the t0 grid. Deadlines already passed are skipped, not bunched.
            behind = math.floor((self.clock() - t0) / self.period_s) - k
            if behind > 0:
                stats.overruns += behind
                k += behind
        stats.inference_latency_s = list(self.broker.request_latency_s)[n_chunks_before:]
        stats.nfe = list(self.broker.nfe)[n_chunks_before:]
        return stats
