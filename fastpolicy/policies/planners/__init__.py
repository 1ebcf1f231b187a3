"""Diffusion planners for offline RL: Diffuser, Decision Diffuser and Trajectory Diffuser, as Policies.

All three plan a trajectory of ``H = pred_horizon`` steps whose first position is the current state,
execute its first ``action_horizon`` actions and replan (receding horizon). One module per job:

``base``        what they share: normalisation, denoiser (the shared backbones, ``make_backbone``, also
                FiLM-conditioned on the current state: small CPU-sized models learn that far faster),
                inpainting, the sampling loop, a critic Q(s, a) trained on Monte-Carlo returns that picks
                the best of ``num_candidates`` plans by its first (state, action) pair.
``diffuser``    ``DiffuserPlanner``: joint state-action trajectories, unconditional, the full chain of
                ``sampler`` steps from noise; optional value guidance.
``state``       ``StatePlanner`` (return guidance, inverse dynamics) and ``DecisionDiffuserPlanner``
                (state plans from noise, the reference's ``ddpm:200``).
``trajectory``  ``TrajectoryDiffuser``: a transformer draft (KV cache or one pass) refined by k guided
                DDIM steps.
``data``        discounted returns-to-go and the planners' window dataset.
``tools``       derive a Decision Diffuser from a Trajectory Diffuser's networks, save, plan cost.

NFE accounting: ``ChunkResult.nfe`` counts denoiser calls per plan (a batched call — candidates and the
two guidance halves together — counts once); ``last_plan_stats`` adds the transformer calls.

Modes as values: ``planner.with_sampler("ddim:10")`` and ``td.with_refinement(k, start)`` return views
over the same weights (:mod:`fastpolicy.policies.modes`). Training: every planner's ``forward(batch)``
returns its summed losses, so the one ``Trainer`` trains it; :func:`fastpolicy.train.planners.
train_planner` runs the whole thing from a store. Configurations live in
:mod:`fastpolicy.policies.planner_configs` (re-exported here).
"""

from __future__ import annotations

from fastpolicy.policies.planner_configs import (
    DiffuserConfig,
    PlannerConfig,
    StatePlannerConfig,
    TrajectoryDiffuserConfig,
)
from fastpolicy.policies.planners.base import BasePlanner, PlanOutput
from fastpolicy.policies.planners.data import RTG_KEY, discounted_returns, offset_std, planner_dataset
from fastpolicy.policies.planners.diffuser import DiffuserPlanner
from fastpolicy.policies.planners.state import DecisionDiffuserPlanner, StatePlanner
from fastpolicy.policies.planners.tools import (
    decision_diffuser_from,
    is_planner_type,
    plan_cost,
    save_planner,
)
from fastpolicy.policies.planners.trajectory import TrajectoryDiffuser

__all__ = ["BasePlanner", "DecisionDiffuserPlanner", "DiffuserConfig", "DiffuserPlanner", "PlanOutput",
           "PlannerConfig", "RTG_KEY", "StatePlanner", "StatePlannerConfig", "TrajectoryDiffuser",
           "TrajectoryDiffuserConfig", "decision_diffuser_from", "discounted_returns", "is_planner_type",
           "offset_std", "plan_cost", "planner_dataset", "save_planner"]
