"""The Diffuser planner (Janner et al. 2022): diffusion over joint ``[action, state]`` trajectories.

Unconditional, sampled in full from pure noise (the reference uses 20 steps), the current state
inpainted; actions are read straight off the plan. With ``value_guidance`` a value function on noisy
plans steers every reverse step and ranks the candidates instead of the critic
(:mod:`fastpolicy.policies.value_guidance`).
"""

from __future__ import annotations

import torch

from fastpolicy.diffusion import add_noise
from fastpolicy.policies.planner_configs import DiffuserConfig
from fastpolicy.policies.planners.base import BasePlanner, PlanOutput
from fastpolicy.policies.value_guidance import ValueFunction, guide, posterior_variance, value_loss


class DiffuserPlanner(BasePlanner):
    """Diffuser-style planner: diffusion over joint ``[action, state]`` trajectories, state inpainted."""

    policy_type = "diffuser"
    config_cls = DiffuserConfig

    def __init__(self, config: DiffuserConfig, normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        # built only when used, so unguided checkpoints keep their exact state dict
        self.value: ValueFunction | None = None
        if config.value_guidance:
            self.value = ValueFunction(config.pred_horizon, self.plan_dim, config.value_hidden,
                                       config.value_depth)

    @property
    def plan_dim(self) -> int:
        return self.config.action_dim + self.config.obs_dim

    @property
    def plan_dim_offset(self) -> int:
        return self.config.action_dim

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        _, _, obs_n, act_n, returns = self._batch_tensors(batch)
        x0 = torch.cat([act_n, obs_n], dim=-1)
        state = obs_n[:, 0]
        cond = torch.cat(self._obs_cond(state), -1) if self.config.obs_cond else None
        diffusion = self._diffusion_loss(x0, state, cond, generator)
        critic = self._critic_loss(obs_n, act_n, returns)
        losses = {"diffusion_loss": diffusion, "critic_loss": critic}
        if self.value is not None:
            # the reference's value model: noisy plans at random levels (state inpainted) → the window's
            # discounted return-to-go; drawn after the other losses' noise so those stay as without it
            noise = self._noise(tuple(x0.shape), generator)
            t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), generator=generator)
            t = t.to(self.device)
            xt = self.inpaint(add_noise(self.schedule, x0, noise, t), state)
            losses["value_loss"] = value_loss(self.value, xt, t, returns[:, 0])
        return {"loss": sum(losses.values()), **losses}

    def _plan(self, obs_n: torch.Tensor, candidates: int, generator: torch.Generator | None) -> PlanOutput:
        cfg = self.config
        state = obs_n[:, -1].repeat_interleave(candidates, dim=0)
        cond = state if cfg.obs_cond else None
        shape = (state.shape[0], cfg.pred_horizon, self.plan_dim)
        guide_fn, value_calls = None, 0
        if self.value is not None and cfg.guide_scale > 0 and cfg.n_guide_steps > 0:
            variance = posterior_variance(self.schedule)
            value = self.value

            def guide_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return guide(value, x, t, variance, cfg.guide_scale, cfg.n_guide_steps, cfg.t_stopgrad,
                             lambda y: self._inpaint_(y, state))

            guided_steps = int((self.sampler.timesteps >= cfg.t_stopgrad).sum())
            value_calls = guided_steps * cfg.n_guide_steps
        plans, calls = self._sample_from_noise(shape, state, cond, self.denoiser, generator, guide_fn)
        stats = {"denoiser_calls": calls, "transformer_calls": 0}
        return plans, stats if self.value is None else {**stats, "value_calls": value_calls}

    def plan_values(self, plans: torch.Tensor) -> torch.Tensor:
        """V(plan, level 0) (N,) of finished plans: what candidates are sorted by."""
        if self.value is None:
            raise RuntimeError("plan values need a Diffuser trained with value_guidance=True")
        return self.value(plans, torch.zeros(plans.shape[0], dtype=torch.long, device=plans.device))

    def _candidate_scores(self, obs_n: torch.Tensor, plans: torch.Tensor, actions: torch.Tensor,
                          candidates: int) -> tuple[torch.Tensor, str]:
        if self.value is None:
            return super()._candidate_scores(obs_n, plans, actions, candidates)
        return self.plan_values(plans), "value_calls"

    def _plan_actions(self, plans: torch.Tensor) -> torch.Tensor:
        ta = self.config.action_horizon
        return self.unnormalize_action(plans[:, :ta, : self.config.action_dim])



__all__ = ["DiffuserPlanner"]
