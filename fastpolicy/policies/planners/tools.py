"""Operations on built planners: derive a Decision Diffuser from a Trajectory Diffuser, save a planner,
tell a planner type, and count the network calls a plan costs (for result rows)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from fastpolicy.policies.planner_configs import StatePlannerConfig
from fastpolicy.policies.planners.base import BasePlanner
from fastpolicy.policies.planners.state import DecisionDiffuserPlanner
from fastpolicy.policies.planners.trajectory import TrajectoryDiffuser


def decision_diffuser_from(td: TrajectoryDiffuser, **overrides: Any) -> DecisionDiffuserPlanner:
    """A Decision Diffuser with ``td``'s denoiser, inverse dynamics and critic (same weights, same units)."""
    names = {f.name for f in dataclasses.fields(StatePlannerConfig)}
    config = {k: v for k, v in dataclasses.asdict(td.config).items() if k in names}
    config.update(num_candidates=1, **overrides)
    dd = DecisionDiffuserPlanner.from_config(config, td.normalizer_state())
    own = dd.state_dict()
    dd.load_state_dict({k: v for k, v in td.state_dict().items() if k in own}, strict=True)
    return dd.to(td.device).eval()


def save_planner(policy: BasePlanner, path: str | os.PathLike, step: int = 0, overwrite: bool = True) -> Path:
    """Write a planner (e.g. one built by :func:`decision_diffuser_from`) as a loadable checkpoint."""
    from fastpolicy.utils.checkpoint import save_checkpoint

    return save_checkpoint(path, policy_type=policy.policy_type, policy_config=policy.config_dict(),
                           model_state=policy.state_dict(), normalizer_state=policy.normalizer_state(),
                           step=step, overwrite=overwrite)


def is_planner_type(policy_type: str) -> bool:
    """Whether a registered policy type is one of these planners (they train on returns-to-go)."""
    from fastpolicy.policies.registry import policy_class

    return issubclass(policy_class(policy_type), BasePlanner)


def plan_cost(policy: BasePlanner) -> dict[str, int]:
    """Network calls per plan implied by the config (denoiser, transformer), for result rows."""
    cfg = policy.config
    if isinstance(policy, TrajectoryDiffuser):
        drafted = 1 if cfg.draft_mode == "one-pass" else policy.draft_length() - 1
        return {"denoiser_calls": max(len(policy.refine_levels()) - 1, 0), "transformer_calls": drafted}
    return {"denoiser_calls": policy.sampler.num_steps, "transformer_calls": 0}



__all__ = ["decision_diffuser_from", "is_planner_type", "plan_cost", "save_planner"]
