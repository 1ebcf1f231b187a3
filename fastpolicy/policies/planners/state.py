"""State planners: plans of states only, return guidance, inverse dynamics; the Decision Diffuser.

**Return conditioning by classifier-free guidance** (Ajay et al., Decision Diffuser): the condition is
the normalised discounted return-to-go ``[R, 1]``; in training it is replaced by ``[0, 0]`` with
probability ``cond_dropout`` (0.25), and at sampling ``ε = ε_u + w (ε_c − ε_u)`` with ``w =
guidance_weight`` (1.2), both halves in one batched denoiser call. The return planned for is fixed in
advance by a rule, ``target_return_multiple`` (1.1) × the data's largest normalised return
``return_max``, above the data as the reference conditions, never tuned on test episodes.

**Inverse dynamics** (``fastpolicy.nets.inverse_dynamics.InverseDynamics`` with ``history = 0``, the one
implementation the proxy-labeling work uses too) turns consecutive planned states into actions.

The Decision Diffuser samples its plans from noise with the full DDPM chain (``ddpm:200`` over 200
training levels, the reference setting; any ``sampler`` works, e.g. ``ddim:10`` through
:meth:`~fastpolicy.policies.planners.base.BasePlanner.with_sampler`). The Trajectory Diffuser
(:mod:`fastpolicy.policies.planners.trajectory`) shares everything here but drafts instead.
"""

from __future__ import annotations

import torch

from fastpolicy.nets.inverse_dynamics import InverseDynamics, InverseDynamicsConfig
from fastpolicy.policies.planner_configs import StatePlannerConfig
from fastpolicy.policies.planners.base import BasePlanner, PlanOutput


class StatePlanner(BasePlanner):
    """State trajectories + return guidance + inverse dynamics."""

    config_cls = StatePlannerConfig

    def __init__(self, config: StatePlannerConfig, normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        idm_config = InverseDynamicsConfig(config.obs_dim, config.action_dim, history=0,
                                           hidden=config.idm_hidden, depth=config.idm_depth,
                                           activation="mish", loss="mse")
        self.idm = InverseDynamics(idm_config, self._idm_normalizer())

    def _idm_normalizer(self) -> dict[str, torch.Tensor]:
        """The policy's affine normalisers as the IDM's (mean, std): one normalisation for all parts."""
        out = {}
        for key in ("obs", "action"):
            scale = getattr(self, f"_{key}_n_scale")
            offset = getattr(self, f"_{key}_n_offset")
            safe = torch.where(scale.abs() > 0, scale, torch.ones_like(scale))
            out[f"{key}.mean"] = -offset / safe
            out[f"{key}.std"] = 1.0 / safe
        return out

    @property
    def cond_dim(self) -> int:
        return super().cond_dim + 2  # [return, present-flag]

    def return_condition(self, returns: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``[R·m, m]`` (N, 2): m = 1 conditions on return R, m = 0 is the unconditional (dropped) input."""
        present = present.to(returns.dtype)
        return torch.stack([returns * present, present], dim=-1)

    def _cond(self, state: torch.Tensor, returns: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return torch.cat([*self._obs_cond(state), self.return_condition(returns, present)], dim=-1)

    def guidance_cond(self, state: torch.Tensor) -> torch.Tensor:
        """The (2N, cond_dim) denoiser condition of a guided call: N conditional rows at the conditioning
        return, then N unconditional ones. Built once per plan and reused by every denoising step."""
        n = state.shape[0]
        target = torch.full((2 * n,), self.config.conditioning_return, device=state.device)
        present = torch.cat([torch.ones(n, device=state.device), torch.zeros(n, device=state.device)])
        return self._cond(state.repeat(2, 1), target, present)

    def guided_eps(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor,
                   weight: float | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier-free guidance at the conditioning return: ε_u + w(ε_c − ε_u), one batched call
        (``cond``: :meth:`guidance_cond` of ``state``, when the caller has it already)."""
        w = self.config.guidance_weight if weight is None else weight
        n = x.shape[0]
        cond = self.guidance_cond(state) if cond is None else cond
        if w in (0.0, 1.0):
            # ε_u + w(ε_c − ε_u) is one half alone: don't pay for a batch twice the size
            return self.denoiser(x, t, cond[:n] if w == 1.0 else cond[n:])
        eps = self.denoiser(x.repeat(2, 1, 1), t.repeat(2), cond)
        eps_c, eps_u = eps[:n], eps[n:]
        return eps_u + w * (eps_c - eps_u)

    def conditional_eps(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The return-conditional denoiser alone (no guidance), at the conditioning return."""
        n = x.shape[0]
        target = torch.full((n,), self.config.conditioning_return, device=x.device)
        return self.denoiser(x, t, self._cond(state, target, torch.ones(n, device=x.device)))

    def _state_losses(self, batch: dict[str, torch.Tensor],
                      generator: torch.Generator | None
                      ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        obs_raw, act_raw, obs_n, act_n, returns = self._batch_tensors(batch)
        state = obs_n[:, 0]
        keep = torch.rand(obs_n.shape[0], generator=generator).to(self.device) >= self.config.cond_dropout
        diffusion = self._diffusion_loss(obs_n, state, self._cond(state, returns[:, 0], keep), generator)
        # inverse dynamics on every consecutive pair of the window, in raw units (the IDM normalises)
        pairs = torch.stack([obs_raw[:, :-1], obs_raw[:, 1:]], dim=2).flatten(0, 1)   # (B·(H-1), 2, O)
        mask = batch.get("action_mask")
        mask = mask[:, : obs_raw.shape[1] - 1].flatten() if mask is not None else None
        idm = self.idm.loss(pairs, act_raw[:, :-1].flatten(0, 1), mask)
        critic = self._critic_loss(obs_n, act_n, returns)
        losses = {"diffusion_loss": diffusion, "idm_loss": idm, "critic_loss": critic}
        return losses, (obs_raw, act_raw, obs_n, act_n, returns)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        losses, _ = self._state_losses(batch, generator)
        return {"loss": sum(losses.values()), **losses}

    def _plan_actions(self, plans: torch.Tensor) -> torch.Tensor:
        ta = self.config.action_horizon
        raw = self.unnormalize_obs(plans[:, : ta + 1])
        return self.idm.action(raw[:, :-1], raw[:, 1:])


class DecisionDiffuserPlanner(StatePlanner):
    """Decision-Diffuser-style planner: state plans sampled from noise with guidance and inpainting."""

    policy_type = "decision-diffuser"
    config_cls = StatePlannerConfig

    def _plan(self, obs_n: torch.Tensor, candidates: int, generator: torch.Generator | None) -> PlanOutput:
        state = obs_n[:, -1].repeat_interleave(candidates, dim=0)
        shape = (state.shape[0], self.config.pred_horizon, self.config.obs_dim)
        cond = self.guidance_cond(state)
        plans, calls = self._sample_from_noise(
            shape, state, cond, lambda x, t, c: self.guided_eps(x, t, state, cond=c), generator)
        return plans, {"denoiser_calls": calls, "transformer_calls": 0}



__all__ = ["DecisionDiffuserPlanner", "StatePlanner"]
