"""Budget selection: the best-scoring method whose worst-case control step fits a latency budget.

A pure function over result rows (the shared schema), so ``fastpolicy bench --budget-ms X`` and a
robot's launch script make the same choice from the same JSON. "Validated" rows are those with a
measured score (``score_mean`` not None/NaN, at least one episode) and a measured worst-case step
latency; ties in score go to the faster method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

LATENCY_KEY = "step_latency_ms_max_p99"


def _number(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def validated(row: dict[str, Any], latency_key: str = LATENCY_KEY) -> bool:
    """True when the row has a measured score over ≥ 1 episode and a measured step latency."""
    return (_number(row.get("score_mean")) is not None and _number(row.get(latency_key)) is not None
            and (row.get("episodes") or 0) >= 1)


def select_method(rows: Sequence[dict[str, Any]], budget_ms: float, task: str | None = None,
                  latency_key: str = LATENCY_KEY) -> dict[str, Any]:
    """The validated row (of ``task``, if given) with the best score whose ``latency_key`` ≤ ``budget_ms``.

    Raises ValueError naming the budget and the fastest validated method when nothing fits (or when
    there is no validated row at all).
    """
    if budget_ms is None or not budget_ms > 0:
        raise ValueError(f"--budget-ms must be a positive number of milliseconds, got {budget_ms}")
    pool = [r for r in rows if (task is None or r.get("task") == task) and validated(r, latency_key)]
    if not pool:
        where = f" for task {task!r}" if task else ""
        raise ValueError(f"no validated result rows{where} (need score_mean, episodes and {latency_key})")
    fits = [r for r in pool if _number(r[latency_key]) <= budget_ms]
    if not fits:
        fastest = min(pool, key=lambda r: _number(r[latency_key]))
        raise ValueError(f"no method fits a {budget_ms:g} ms budget: the fastest, {fastest['method']!r}, "
                         f"needs "
                         f"{_number(fastest[latency_key]):.3g} ms per control step ({latency_key})")
    return max(fits, key=lambda r: (_number(r["score_mean"]), -_number(r[latency_key])))
