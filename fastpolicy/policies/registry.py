"""Policy types by name, so a checkpoint's ``config.json`` can rebuild its policy without pickle."""

from __future__ import annotations

import importlib
from typing import Any

import torch

POLICY_TYPES: dict[str, str] = {
    "diffusion": "fastpolicy.policies.diffusion_policy:DiffusionPolicy",
    "bc": "fastpolicy.policies.bc:BCPolicy",
    "streaming": "fastpolicy.policies.streaming:StreamingPolicy",
    "consistency": "fastpolicy.policies.consistency:ConsistencyPolicy",
    "diffuser": "fastpolicy.policies.planners:DiffuserPlanner",
    "decision-diffuser": "fastpolicy.policies.planners:DecisionDiffuserPlanner",
    "trajectory-diffuser": "fastpolicy.policies.planners:TrajectoryDiffuser",
}


def policy_class(policy_type: str):
    if policy_type not in POLICY_TYPES:
        raise ValueError(f"unknown policy type {policy_type!r}; known: {', '.join(sorted(POLICY_TYPES))}")
    module, _, name = POLICY_TYPES[policy_type].partition(":")
    return getattr(importlib.import_module(module), name)


def build_policy(
    policy_type: str, config: dict[str, Any], normalizer_state: dict[str, torch.Tensor] | None = None
):
    cls = policy_class(policy_type)
    return cls.from_config(config, normalizer_state=normalizer_state)
