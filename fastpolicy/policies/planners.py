"""Diffusion planners for offline RL: Diffuser, Decision Diffuser and Trajectory Diffuser, as Policies.

All three plan a trajectory of ``H = pred_horizon`` steps whose first position is the current state,
execute its first ``action_horizon`` actions and replan (receding horizon). What they share:

* **Inpainting.** Position 0 of the plan holds the current (normalised) state exactly: it is written
  back after every denoising step, and training never noises it nor scores it, so the model learns the
  conditional distribution of futures given the present (Janner et al., Diffuser).
* **Return conditioning by classifier-free guidance** (state planners): the condition is the normalised
  discounted return-to-go ``[R, 1]``; in training it is replaced by ``[0, 0]`` with probability
  ``cond_dropout`` (0.25), and at sampling ``ε = ε_u + w (ε_c − ε_u)`` with ``w = guidance_weight``
  (1.2), both halves in one batched denoiser call (Ajay et al., Decision Diffuser). The return planned
  for is fixed in advance by a rule, ``target_return_multiple`` (1.1) × the data's largest normalised
  return ``return_max``, above the data as the reference conditions, never tuned on test episodes.
* **Inverse dynamics** (``fastpolicy.nets.inverse_dynamics.InverseDynamics`` with ``history = 0``, the one
  implementation the proxy-labeling work uses too) turns consecutive planned states into actions.
* **A critic** Q(s, a) (``fastpolicy.nets.critic``), trained on Monte-Carlo discounted returns, picks the
  best of ``num_candidates`` plans by its first (state, action) pair.
* Denoisers are the shared backbones (``make_backbone``); besides inpainting they are FiLM-conditioned
  on the current state (``obs_cond``), which small CPU-sized models learn from far faster.

The three planners:

``DiffuserPlanner``          joint state-action trajectories (action first, then state, per position),
                             unconditional, ``sampler`` steps (Diffuser uses 20) from pure noise; with
                             ``value_guidance`` a value function on noisy plans steers every step and
                             ranks the candidates (:mod:`fastpolicy.policies.value_guidance`).
``DecisionDiffuserPlanner``  state trajectories, guidance, inverse dynamics, the full DDPM chain
                             (``ddpm:200`` over 200 training levels, the reference setting; any
                             ``sampler`` works, e.g. the strided ``ddpm:50``).
``TrajectoryDiffuser``       a causal transformer (``fastpolicy.nets.transformer``) drafts H−1 future
                             states and returns-to-go autoregressively with a KV cache (once per
                             observation: the draft is deterministic, so all candidates share it); each
                             candidate's copy is noised to level ``refine_start·N`` and refined by
                             ``refine_steps`` deterministic DDIM steps of the same state denoiser
                             (inpainting + guidance); inverse dynamics gives the actions, the critic picks.
                             ``draft_mode = "one-pass"`` drafts in a single transformer call instead;
                             without refinement the one draft is planned once (no duplicate candidates)
                             and ``trim_draft`` drafts only the states the actions read.

NFE accounting: ``ChunkResult.nfe`` counts denoiser calls per plan (a batched call — candidates and the
two guidance halves together — counts once); ``last_plan_stats`` adds the transformer calls.

Training: every planner's ``forward(batch)`` returns its summed losses, so the one ``Trainer`` trains it;
the batch needs ``obs``, ``action`` (B, H, ·) and ``rtg`` (B, H) raw discounted returns-to-go —
:func:`planner_dataset` builds it from an EpisodeStore and :func:`train_planner` runs the whole thing.
:func:`decision_diffuser_from` copies a trained Trajectory Diffuser's denoiser, inverse dynamics and
critic into a Decision Diffuser, so the two planners can be compared with identical networks.
Configurations live in :mod:`fastpolicy.policies.planner_configs` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fastpolicy.diffusion import (
    SamplerSpec,
    add_noise,
    ddim_ode_step,
    make_sampler,
    make_schedule,
    training_target,
)
from fastpolicy.diffusion.samplers import Sampler
from fastpolicy.nets import make_backbone
from fastpolicy.nets.critic import Critic
from fastpolicy.nets.inverse_dynamics import InverseDynamics, InverseDynamicsConfig
from fastpolicy.nets.transformer import CausalTransformer
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.planner_configs import (
    DiffuserConfig,
    PlannerConfig,
    StatePlannerConfig,
    TrajectoryDiffuserConfig,
)
from fastpolicy.policies.torch_policy import TorchPolicy
from fastpolicy.policies.value_guidance import ValueFunction, guide, posterior_variance, value_loss

RTG_KEY = "rtg"
PlanOutput = tuple[torch.Tensor, dict[str, int]]
"""candidate plans (N, H, D) and the network calls spent on them"""


# --- shared machinery ------------------------------------------------------------------------------

class _Planner(TorchPolicy):
    """Normalisation, denoiser, schedule, critic, inpainting and the candidate → action pipeline."""

    config_cls: ClassVar[type[PlannerConfig]] = PlannerConfig

    def __init__(self, config: PlannerConfig, normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        self.schedule = make_schedule(config.num_train_timesteps, config.beta_schedule)
        self.denoiser = make_backbone(config.backbone, horizon=config.pred_horizon, input_dim=self.plan_dim,
                                      global_cond_dim=self.cond_dim, **config.backbone_kwargs)
        self.critic = Critic(config.obs_dim, config.action_dim, config.critic_hidden, config.critic_depth)
        self.set_sampler(config.sampler)
        self.last_plan_stats: dict[str, int] = {}

    # sizes of what the denoiser sees
    @property
    def plan_dim(self) -> int:
        return self.config.obs_dim

    @property
    def plan_dim_offset(self) -> int:
        """Where the state starts in a plan position (the Diffuser puts the action first)."""
        return 0

    @property
    def cond_dim(self) -> int:
        return self.config.obs_dim if self.config.obs_cond else 0

    # --- device / sampler ----------------------------------------------------------------------------
    def set_sampler(self, spec: str) -> _Planner:
        """How plans are sampled from noise, e.g. ``ddpm:20`` or ``ddim:10`` (tables built once)."""
        parsed = SamplerSpec.parse(spec)
        overrides: dict[str, Any] = {"clip_sample": self.config.clip_sample,
                                     "prediction_type": self.config.prediction_type}
        self.sampler_name = spec
        self.sampler: Sampler = make_sampler(self.schedule, dataclasses.replace(parsed, **overrides),
                                             device=self.device)
        self._set_method()
        return self

    def _set_method(self) -> None:
        self.method = f"{self.policy_type}-{self.sampler_name.replace(':', '')}"

    def _apply(self, fn, *args, **kwargs):  # keep the noise tables on the module's device
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "sampler"):
            self.schedule = self.schedule.to(self.device)
            self.set_sampler(self.sampler_name)
        return out

    # --- units ---------------------------------------------------------------------------------------
    def unnormalize_obs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._obs_u_scale + self._obs_u_offset

    def normalized_returns(self, rtg: torch.Tensor) -> torch.Tensor:
        return rtg * self.config.return_scale

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(self.device)

    # --- inpainting ----------------------------------------------------------------------------------
    def inpaint(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Write the current normalised state (N, obs_dim) into position 0 of plans ``x`` (N, H, D)."""
        return self._inpaint_(x.clone(), state)

    def _inpaint_(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """:meth:`inpaint` in place, for sampling loops that own ``x`` (no copy per denoising step)."""
        lo = self.plan_dim_offset
        x[:, 0, lo:lo + self.config.obs_dim] = state
        return x

    def _inpaint_mask(self, like: torch.Tensor) -> torch.Tensor:
        """1 where the training loss applies: everything but the inpainted current state."""
        mask = torch.ones_like(like)
        lo = self.plan_dim_offset
        mask[:, 0, lo:lo + self.config.obs_dim] = 0.0
        return mask

    def _obs_cond(self, state: torch.Tensor) -> list[torch.Tensor]:
        return [state] if self.config.obs_cond else []

    # --- training pieces -----------------------------------------------------------------------------
    def _diffusion_loss(self, x0: torch.Tensor, state: torch.Tensor, cond: torch.Tensor | None,
                        generator: torch.Generator | None) -> torch.Tensor:
        """Denoising loss (target per ``prediction_type``) with the current state inpainted (never noised,
        never scored)."""
        noise = self._noise(tuple(x0.shape), generator)
        t = torch.randint(0, self.config.num_train_timesteps, (x0.shape[0],), generator=generator)
        t = t.to(self.device)
        xt = self.inpaint(add_noise(self.schedule, x0, noise, t), state)
        pred = self.denoiser(xt, t, cond)
        target = training_target(self.schedule, x0, noise, t, self.config.prediction_type)
        mask = self._inpaint_mask(x0)
        return ((pred - target).square() * mask).sum() / mask.sum()

    def _critic_loss(self, obs_n: torch.Tensor, act_n: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        return self.critic.loss(obs_n, act_n, returns)

    def _batch_tensors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        h = self.config.pred_horizon
        if RTG_KEY not in batch:
            raise KeyError(f"planner batches need {RTG_KEY!r} (discounted returns-to-go); build the dataset "
                           "with fastpolicy.policies.planners.planner_dataset")
        obs_raw = batch["obs"][:, :h]
        act_raw = batch["action"][:, :h]
        obs_n = self.normalize_obs(obs_raw)
        act_n = self.normalize_action(act_raw)
        returns = self.normalized_returns(batch[RTG_KEY][:, :h].reshape(obs_n.shape[0], h))
        return obs_raw, act_raw, obs_n, act_n, returns

    # --- planning ------------------------------------------------------------------------------------
    def _sample_from_noise(self, shape: tuple[int, ...], state: torch.Tensor, cond: torch.Tensor | None,
                           eps_fn, generator: torch.Generator | None,
                           guide_fn=None) -> tuple[torch.Tensor, int]:
        """Run ``self.sampler`` from pure noise with inpainting after every step; returns (x0, calls).
        ``guide_fn(x_t, t) -> x_t`` (value guidance) moves each noisy plan before the model sees it."""
        sampler, scale = self.sampler, self.config.noise_scale
        x = self._inpaint_(self._noise(shape, generator) * scale, state)
        for i in range(sampler.num_steps):
            t = sampler.timesteps[i].expand(shape[0])
            if guide_fn is not None:
                x = guide_fn(x, t)
            out = eps_fn(x, t, cond)
            noise = sampler.draw_noise(x, generator) * scale if sampler.needs_noise[i] else None
            x, _ = sampler.step(i, x, out, noise=noise)
            x = self._inpaint_(x, state)
        return x, sampler.num_steps

    def _plan(self, obs_n: torch.Tensor, candidates: int, generator: torch.Generator | None) -> PlanOutput:
        """``candidates`` plans per normalised window ``obs_n`` (B, To, obs_dim), candidate-major within
        each window → (plans (B·candidates, H, D), call counts)."""
        raise NotImplementedError

    def _plan_actions(self, plans: torch.Tensor) -> torch.Tensor:
        """Raw actions (N, Ta, action_dim) of plans (N, H, D)."""
        raise NotImplementedError

    def distinct_candidates(self) -> int:
        """Candidates that can differ from each other; identical copies are never planned twice."""
        return self.config.num_candidates

    def _candidate_scores(self, obs_n: torch.Tensor, plans: torch.Tensor, actions: torch.Tensor,
                          candidates: int) -> tuple[torch.Tensor, str]:
        """Scores (B·C,) the best candidate is picked by, and the stats key counting that call: the
        critic Q(s, a) of the first (state, action) pair."""
        s0 = obs_n[:, -1].repeat_interleave(candidates, dim=0)
        return self.critic(s0, self.normalize_action(actions[:, 0])), "critic_calls"

    @torch.inference_mode()
    def predict_chunk(
        self,
        obs_window: np.ndarray | torch.Tensor,
        state: PolicyState = None,
        generator: torch.Generator | None = None,
    ) -> ChunkResult:
        cfg = self.config
        obs_n = self.encode_obs(obs_window).view(-1, cfg.obs_horizon, cfg.obs_dim)
        batch, c = obs_n.shape[0], self.distinct_candidates()
        plans, stats = self._plan(obs_n, c, generator)
        # raw, inside the trained action range whatever the sampler or inverse dynamics produced
        actions = self.bounded_actions(self.normalize_action(self._plan_actions(plans)))   # (B·C, Ta, A)
        if c > 1:
            scores, key = self._candidate_scores(obs_n, plans, actions, c)
            best = scores.view(batch, c).argmax(dim=1)
            actions = actions.view(batch, c, *actions.shape[1:])[torch.arange(batch), best]
            stats[key] = stats.get(key, 0) + 1
        self.last_plan_stats = {"candidates": c, **stats}
        return ChunkResult(actions.float().cpu().numpy(), stats["denoiser_calls"], state)

    def plan_states(self, obs_window: np.ndarray | torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """The candidate plans (B·C, H, D) in normalised units, for inspection and tests."""
        obs_n = self.encode_obs(obs_window).view(-1, self.config.obs_horizon, self.config.obs_dim)
        with torch.inference_mode():
            return self._plan(obs_n, self.config.num_candidates, generator)[0]


# --- Diffuser ----------------------------------------------------------------------------------------

class DiffuserPlanner(_Planner):
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


# --- state planners (Decision Diffuser, Trajectory Diffuser) ----------------------------------------

class _StatePlanner(_Planner):
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


class DecisionDiffuserPlanner(_StatePlanner):
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


class TrajectoryDiffuser(_StatePlanner):
    """Trajectory Diffuser: transformer draft (KV cache) → lightly noised → k guided DDIM steps."""

    policy_type = "trajectory-diffuser"
    config_cls = TrajectoryDiffuserConfig

    def __init__(self, config: TrajectoryDiffuserConfig,
                 normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        o = config.obs_dim
        # one-pass: each position's output holds the H−1 following states' offsets from its own state
        out_dim = o + 1 if config.draft_mode == "autoregressive" else (config.pred_horizon - 1) * o
        self.transformer = CausalTransformer(o + 1, out_dim, d_model=config.d_model, n_layers=config.n_layers,
                                             n_heads=config.n_heads, d_ff=config.d_ff,
                                             max_len=config.obs_horizon + config.pred_horizon)

    def _set_method(self) -> None:
        cfg = self.config
        self.method = f"trajectory-diffuser-k{cfg.refine_steps}"

    def set_refinement(self, steps: int | None = None, start: float | None = None) -> TrajectoryDiffuser:
        """Change k and the starting noise level (fraction of N) without retraining (ablations)."""
        changes = {k: v for k, v in (("refine_steps", steps), ("refine_start", start)) if v is not None}
        self.config = dataclasses.replace(self.config, **changes)
        self.config.validate()
        self._set_method()
        return self

    # --- transformer -----------------------------------------------------------------------------------
    def _decode(self, out: torch.Tensor, prev_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head output → (next state, next return); the state head predicts the increment."""
        o = self.config.obs_dim
        return prev_state + out[..., :o], out[..., o]

    def draft_length(self) -> int:
        """States the plan needs drafted: all H, or with ``trim_draft`` and no refinement only the
        ``action_horizon + 1`` the inverse dynamics reads."""
        cfg = self.config
        return cfg.action_horizon + 1 if cfg.trim_draft and cfg.refine_steps == 0 else cfg.pred_horizon

    def draft(self, obs_n: torch.Tensor, returns: torch.Tensor | None = None,
              use_cache: bool | None = None, length: int | None = None) -> tuple[torch.Tensor, int]:
        """Draft (N, L, obs_dim) of ``length`` states (default H) from context states ``obs_n`` (N, To,
        obs_dim); returns it and the transformer calls spent.

        Position 0 is the current state. Autoregressive: positions 1..L−1 come from L−1 transformer calls,
        one prefill of the context, then one new token per call with the KV cache (``use_cache``) or, as
        the reference does, a full pass over the growing sequence. One-pass: one call over the context.
        """
        cfg = self.config
        length = cfg.pred_horizon if length is None else length
        if not 2 <= length <= cfg.pred_horizon:
            raise ValueError(f"draft length must be in [2, {cfg.pred_horizon}], got {length}")
        use_cache = cfg.kv_cache if use_cache is None else use_cache
        n = obs_n.shape[0]
        if returns is None:
            returns = torch.full((n, obs_n.shape[1]), cfg.conditioning_return, device=obs_n.device)
        tokens = torch.cat([obs_n, returns.unsqueeze(-1)], dim=-1)
        if cfg.draft_mode == "one-pass":
            offsets = self.transformer(tokens)[:, -1].view(n, cfg.pred_horizon - 1, cfg.obs_dim)
            now = obs_n[:, -1:]
            return torch.cat([now, now + offsets[:, : length - 1]], dim=1), 1
        if use_cache:
            out, cache = self.transformer.prefill(tokens)
        else:
            out = self.transformer(tokens)
        calls = 1
        states = [obs_n[:, -1]]
        nxt_s, nxt_r = self._decode(out[:, -1], states[-1])
        for step in range(length - 1):
            states.append(nxt_s)
            if step == length - 2:
                break
            token = torch.cat([nxt_s, nxt_r.unsqueeze(-1)], dim=-1).unsqueeze(1)
            if use_cache:
                out, cache = self.transformer.step(token, cache)
            else:
                tokens = torch.cat([tokens, token], dim=1)
                out = self.transformer(tokens)
            calls += 1
            nxt_s, nxt_r = self._decode(out[:, -1], states[-1])
        return torch.stack(states, dim=1), calls

    def _transformer_loss(self, obs_n: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        m = min(self.config.transformer_batch, obs_n.shape[0])
        obs_n, returns = obs_n[:m], returns[:m]
        tokens = torch.cat([obs_n, returns.unsqueeze(-1)], dim=-1)
        if self.config.draft_mode == "one-pass":
            return self._one_pass_loss(obs_n, tokens)
        out = self.transformer(tokens[:, :-1])
        pred_s, pred_r = self._decode(out, obs_n[:, :-1])
        return (pred_s - obs_n[:, 1:]).square().mean() + (pred_r - returns[:, 1:]).square().mean()

    def _one_pass_loss(self, obs_n: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Every prefix of the window predicts all the window's later states at once (offsets from the
        prefix's last state); targets past the window's end are masked out."""
        m, h, o = obs_n.shape
        pred = obs_n.unsqueeze(2) + self.transformer(tokens).view(m, h, h - 1, o)   # (B, p, k−1, O)
        later = torch.arange(h, device=obs_n.device)[:, None] + torch.arange(1, h, device=obs_n.device)
        valid = (later < h).to(obs_n.dtype)[None, :, :, None]
        target = obs_n[:, later.clamp(max=h - 1)]
        return ((pred - target).square() * valid).sum() / (valid.sum() * m * o)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        losses, (_, _, obs_n, _, returns) = self._state_losses(batch, generator)
        losses["transformer_loss"] = self._transformer_loss(obs_n, returns)
        return {"loss": sum(losses.values()), **losses}

    # --- refinement ------------------------------------------------------------------------------------
    def refine_levels(self) -> list[int]:
        """Noise levels of the refinement: from ``refine_start·N − 1`` down to −1 (clean), k steps."""
        cfg = self.config
        if cfg.refine_steps == 0:
            return []
        n = cfg.num_train_timesteps
        start = min(n - 1, max(0, round(cfg.refine_start * n) - 1))
        levels = np.unique(np.round(np.linspace(start, -1, cfg.refine_steps + 1)).astype(int))[::-1]
        return [int(v) for v in levels]

    def refine(self, draft: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Noise the draft to the first level (at the sampling temperature ``noise_scale``) and run the
        deterministic guided DDIM steps, inpainting."""
        levels = self.refine_levels()
        if not levels:
            return draft, 0
        state = draft[:, 0]
        n = draft.shape[0]
        cond = self.guidance_cond(state)
        t0 = torch.full((n,), levels[0], dtype=torch.long, device=draft.device)
        noise = self._noise(tuple(draft.shape), generator) * self.config.noise_scale
        noisy = add_noise(self.schedule, draft, noise, t0)
        x = self._inpaint_(noisy, state)
        for t_from, t_to in zip(levels[:-1], levels[1:]):
            tf = torch.full((n,), t_from, dtype=torch.long, device=draft.device)
            tt = torch.full((n,), t_to, dtype=torch.long, device=draft.device)
            out = self.guided_eps(x, tf, state, cond=cond)
            x = ddim_ode_step(self.schedule, x, out, tf, tt, self.config.prediction_type,
                              clip_sample=self.config.clip_sample)
            x = self._inpaint_(x, state)
        return x, len(levels) - 1

    def distinct_candidates(self) -> int:
        """Without refinement every candidate is the same draft: plan it once, no critic needed."""
        return self.config.num_candidates if self.config.refine_steps > 0 else 1

    def _plan(self, obs_n: torch.Tensor, candidates: int, generator: torch.Generator | None) -> PlanOutput:
        # the draft is a deterministic function of the context: draft once per window, not per candidate
        # (candidates differ by the refinement's noise), which divides the transformer's work by C
        draft, t_calls = self.draft(obs_n, length=self.draft_length())
        plans, d_calls = self.refine(draft.repeat_interleave(candidates, dim=0), generator)
        return plans, {"denoiser_calls": d_calls, "transformer_calls": t_calls}


# --- data and training -------------------------------------------------------------------------------

def discounted_returns(reward: np.ndarray, episode_ends: np.ndarray, discount: float) -> np.ndarray:
    """Per-step discounted return-to-go within each episode (no bootstrap past the episode's end)."""
    reward = np.asarray(reward, dtype=np.float64)
    out = np.zeros_like(reward)
    start = 0
    for end in np.asarray(episode_ends, dtype=np.int64):
        acc = 0.0
        for t in range(end - 1, start - 1, -1):
            acc = reward[t] + discount * acc
            out[t] = acc
        start = end
    return out.astype(np.float32)


def planner_dataset(store: Any, horizon: int, discount: float):
    """Windows of ``horizon`` steps inside episodes with ``obs``, ``action`` and ``rtg`` (no padding)."""
    from fastpolicy.data.sampler import SequenceDataset

    ends = np.asarray(store.episode_ends, dtype=np.int64)
    source = {"episode_ends": ends, "obs": store.array("obs"), "action": store.array("action"),
              RTG_KEY: discounted_returns(store.array("reward"), ends, discount)}
    if "action_mask" in store.keys:
        source["action_mask"] = store.array("action_mask")
    return SequenceDataset(source, horizon=horizon, keys=("obs", "action", RTG_KEY))


def train_planner(store_path: str | os.PathLike, run_dir: str | os.PathLike,
                  policy_type: str = "trajectory-diffuser", policy_options: dict[str, Any] | None = None,
                  train_config: Any = None, resume: bool = False, task: str | None = None):
    """Train a planner on an EpisodeStore with the shared Trainer; returns (policy, fit stats).

    Normalisers are fitted on the store (``limits`` for obs and action, as ``fastpolicy train`` does);
    ``return_scale`` defaults to 1 / the largest discounted return-to-go of the data, so returns lie in
    [0, 1], and ``return_max`` records that largest return in those units (the return-target rule's
    anchor). Resuming rebuilds the policy from the run's own checkpoint.
    """
    from fastpolicy.data.normalize import NormalizerSet
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.policies.registry import build_policy
    from fastpolicy.train.trainer import TrainConfig, Trainer
    from fastpolicy.utils.checkpoint import load_tensors, read_config, resolve_checkpoint
    from fastpolicy.utils.misc import seed_everything

    store = EpisodeStore.open(store_path)
    for key in ("obs", "action", "reward"):
        if key not in store.keys:
            raise ValueError(f"store {store_path} has no {key!r} array (keys: {store.keys})")
    train_config = train_config or TrainConfig()
    seed_everything(train_config.seed)
    run_dir = Path(run_dir)
    if resume and (run_dir / "latest").exists():
        ckpt = resolve_checkpoint(run_dir)
        cfg = read_config(ckpt)
        policy = build_policy(cfg["policy_type"], cfg["policy_config"],
                              normalizer_state=load_tensors(ckpt, "normalizer.safetensors"))
    else:
        options = dict(policy_options or {})
        first = store.episode(0)
        options.update(obs_dim=int(first["obs"].shape[-1]), action_dim=int(first["action"].shape[-1]))
        if "return_scale" not in options or "return_max" not in options:
            from fastpolicy.policies.registry import policy_class

            discount = options.get("discount", policy_class(policy_type).config_cls.discount)
            top = float(discounted_returns(store.array("reward"), store.episode_ends, discount).max())
            options.setdefault("return_scale", 1.0 / top if top > 0 else 1.0)
            options.setdefault("return_max", top * float(options["return_scale"]))
        normalizer = NormalizerSet.fit_from_store(store, modes={"obs": "limits", "action": "limits"})
        policy = build_policy(policy_type, options, normalizer_state=normalizer.state_dict())
    dataset = planner_dataset(store, policy.config.pred_horizon, policy.config.discount)
    extra = {"store": str(store_path), "task": task}
    trainer = Trainer(policy, dataset, train_config, run_dir, resume=resume, extra_config=extra)
    stats = trainer.fit()
    return policy.eval(), stats


def decision_diffuser_from(td: TrajectoryDiffuser, **overrides: Any) -> DecisionDiffuserPlanner:
    """A Decision Diffuser with ``td``'s denoiser, inverse dynamics and critic (same weights, same units)."""
    names = {f.name for f in dataclasses.fields(StatePlannerConfig)}
    config = {k: v for k, v in dataclasses.asdict(td.config).items() if k in names}
    config.update(num_candidates=1, **overrides)
    dd = DecisionDiffuserPlanner.from_config(config, td.normalizer_state())
    own = dd.state_dict()
    dd.load_state_dict({k: v for k, v in td.state_dict().items() if k in own}, strict=True)
    return dd.to(td.device).eval()


def save_planner(policy: _Planner, path: str | os.PathLike, step: int = 0, overwrite: bool = True) -> Path:
    """Write a planner (e.g. one built by :func:`decision_diffuser_from`) as a loadable checkpoint."""
    from fastpolicy.utils.checkpoint import save_checkpoint

    return save_checkpoint(path, policy_type=policy.policy_type, policy_config=policy.config_dict(),
                           model_state=policy.state_dict(), normalizer_state=policy.normalizer_state(),
                           step=step, overwrite=overwrite)


def is_planner_type(policy_type: str) -> bool:
    """Whether a registered policy type is one of these planners (they train on returns-to-go)."""
    from fastpolicy.policies.registry import policy_class

    return issubclass(policy_class(policy_type), _Planner)


def plan_cost(policy: _Planner) -> dict[str, int]:
    """Network calls per plan implied by the config (denoiser, transformer), for result rows."""
    cfg = policy.config
    if isinstance(policy, TrajectoryDiffuser):
        drafted = 1 if cfg.draft_mode == "one-pass" else policy.draft_length() - 1
        return {"denoiser_calls": max(len(policy.refine_levels()) - 1, 0), "transformer_calls": drafted}
    return {"denoiser_calls": policy.sampler.num_steps, "transformer_calls": 0}


__all__ = ["DecisionDiffuserPlanner", "DiffuserConfig", "DiffuserPlanner", "PlannerConfig", "RTG_KEY",
           "StatePlannerConfig", "TrajectoryDiffuser", "TrajectoryDiffuserConfig", "decision_diffuser_from",
           "discounted_returns", "is_planner_type", "plan_cost", "planner_dataset", "save_planner",
           "train_planner"]
