"""Percentiles of timing samples: the one definition every latency column in fastpolicy uses.

It sits in ``utils``, below every package, so the session statistics (``policies``), the control loop,
evaluation, the benchmark runner and the study scripts all report "p99" the same way (numpy's linear
interpolation; None, not NaN, for no samples). Measurements that need a policy live in
``fastpolicy.evaluation.timing``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def percentile(values: Sequence[float] | np.ndarray, q: float, scale: float = 1.0) -> float | None:
    """The ``q``-th percentile of ``values`` × ``scale`` (e.g. 1e3: seconds → ms); None when empty."""
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr * scale, q)) if arr.size else None


def percentile_fields(values: Sequence[float] | np.ndarray, prefix: str = "latency_ms",
                      qs: Iterable[int] = (50, 99), scale: float = 1.0) -> dict[str, float | None]:
    """``{f"{prefix}_p{q}": ...}`` for each ``q`` — the columns a result row carries."""
    return {f"{prefix}_p{q}": percentile(values, q, scale) for q in qs}
