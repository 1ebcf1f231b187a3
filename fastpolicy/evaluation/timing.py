"""Latency arithmetic shared by evaluation, the benchmark runner and the benchmark scripts.

The percentiles themselves come from ``fastpolicy.utils.timing`` (one definition of "p99" for every
latency column, re-exported here); this module adds the measurements that need a policy (bare backbone
forward, batch-64 throughput, first call of an episode), the benchmark's timing fields, and the
1-minute load average recorded with every timing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastpolicy.utils.timing import percentile, percentile_fields

__all__ = ["backbone_forward_ms", "first_step_ms", "load_average", "measure_throughput", "percentile",
           "percentile_fields", "timing_fields"]


def timing_fields(nfe: Sequence[int], latency_s: Sequence[float]) -> dict[str, Any]:
    """Per-action and worst-case-step latency fields from interleaved batch-1 closed-loop samples."""
    lat = np.asarray(latency_s, dtype=np.float64) * 1e3
    nfe_arr = np.asarray(nfe)
    planning = lat[nfe_arr > 0]
    return {"latency_ms_p50": percentile(lat, 50), "latency_ms_p99": percentile(lat, 99),
            # amortised: all control steps' time over the actions they returned (the median per action
            # is a queue pop whenever Ta > 1)
            "latency_ms_mean_per_action": float(lat.mean()) if lat.size else None,
            "step_latency_ms_p50": percentile(planning, 50),
            "step_latency_ms_max_p99": percentile(planning, 99),
            "nfe_per_step_max_steady": int(nfe_arr.max()) if nfe_arr.size else None,
            "latency_samples": int(lat.size), "step_latency_samples": int(planning.size)}


def load_average() -> float | None:
    """1-minute load average (a quiet-machine check recorded beside every timing), None where unknown."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def backbone_forward_ms(policy: Any, calls: int = 100) -> dict[str, float | None]:
    """p50/p99 of one bare batch-1 backbone forward (no sampler, no session, no normalisation)."""
    import torch

    cfg = policy.config
    x = torch.randn(1, cfg.pred_horizon, cfg.action_dim, device=policy.device)
    t = torch.full((1,), cfg.num_train_timesteps - 1, device=policy.device)
    cond = torch.randn(1, cfg.obs_dim * cfg.obs_horizon, device=policy.device)
    times = []
    with torch.inference_mode():
        for i in range(calls + 5):
            t0 = time.perf_counter()
            policy.backbone(x, t, cond)
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1e3)
    return percentile_fields(times, "backbone_forward_ms")


def measure_throughput(policy: Any, obs_windows: np.ndarray, calls: int) -> float:
    """Chunks per second at batch ``len(obs_windows)`` (streaming state carried, warm-up call untimed)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    state = policy.init_state(len(obs_windows))
    state = policy.predict_chunk(obs_windows, state, gen).state
    t0 = time.perf_counter()
    for _ in range(calls):
        state = policy.predict_chunk(obs_windows, state, gen).state
    return calls * len(obs_windows) / (time.perf_counter() - t0)


def first_step_ms(policy: Any, obs_window: np.ndarray, repeats: int = 2) -> float:
    """Latency of the first call of an episode (fresh state) at batch 1, best of ``repeats``."""
    import torch

    best = float("inf")
    for r in range(repeats):
        gen = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        policy.predict_chunk(obs_window, policy.init_state(1), gen)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3
