"""Evaluation: closed-loop scoring and timing of a policy on a task card, and the result row it writes.

* :mod:`~fastpolicy.evaluation.rollouts` — ``evaluate`` (score + latency → one row), ``rollout``,
  ``measure_latency``;
* :mod:`~fastpolicy.evaluation.results` — the shared result schema (``make_row``, ``write_results``,
  ``read_results``, …) and ``score_row``, the score arithmetic every evaluation path shares;
* :mod:`~fastpolicy.evaluation.timing` — percentiles and the timing measurements benchmarks share;
* :mod:`~fastpolicy.evaluation.method_names` — ``canonical_method``: the self-explanatory method ids, and
  the old ids of result files written before the rename mapped to them.

The names below resolve on first use, so importing the schema does not import the environments.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "rollouts", "rollout": "rollouts", "measure_latency": "rollouts", "RolloutResult": "rollouts",
    "_step_success": "rollouts",
    "make_row": "results", "write_results": "results", "read_results": "results", "update_results": "results",
    "validate_row": "results", "score_row": "results", "REQUIRED_FIELDS": "results",
    "canonical_method": "method_names",
}

__all__ = [name for name in _EXPORTS if not name.startswith("_")]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastpolicy.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fastpolicy.evaluation.{_EXPORTS[name]}"), name)
