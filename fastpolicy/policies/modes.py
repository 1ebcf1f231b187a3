"""Modes as values: a sampler, stream, step count or action horizon is chosen on a *view* of a policy.

Why: a policy is shared — by a fleet of sessions, by a server, by every method of a benchmark. Switching
it in place (``set_sampler``) made results depend on evaluation order and left ``config.json`` describing
a different object than the one in memory. A view is a second policy object over the same weights
(parameters, buffers and sub-modules are the same tensors, no copy) with its own config and its own
sampling tables, so choosing a mode never touches the policy it came from (as diffusers passes a
scheduler object instead of mutating the model).

Make views after moving the policy to its device: ``policy.to(...)`` moves the shared parameters but
rebuilds only its own buffers and tables.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any, TypeVar

P = TypeVar("P")


def policy_view(policy: P, **config_changes: Any) -> P:
    """A shallow twin of ``policy`` sharing its weights, with ``config_changes`` applied to its own config.

    The caller then builds the view's mode tables (``view._use_sampler(...)`` etc.); registries of
    parameters, buffers and modules are copied dicts, so assigning on the view never reaches ``policy``.
    """
    view = copy.copy(policy)
    for registry in ("_parameters", "_buffers", "_modules"):
        if registry in policy.__dict__:
            view.__dict__[registry] = dict(policy.__dict__[registry])
    config = dataclasses.replace(policy.config, **config_changes)
    config.validate()
    view.__dict__["config"] = config
    view.__dict__["action_horizon"] = config.action_horizon
    return view


def warn_mutator(name: str, replacement: str) -> None:
    """The in-place switches stay for old callers only: say what to use instead."""
    warnings.warn(f"policy.{name}(...) switches a shared policy in place (results then depend on call order "
                  f"and config.json no longer describes it); use policy.{replacement}(...), which returns a "
                  "view sharing the weights", DeprecationWarning, stacklevel=3)
