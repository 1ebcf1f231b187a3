"""What every diffusion planner shares: normalisation, denoiser, noise schedule, critic, inpainting, the
sampling loop from noise, and the candidates → action pipeline of ``predict_chunk``.

A planner plans ``H = pred_horizon`` steps whose position 0 is the current state, held there exactly by
**inpainting**: written back after every denoising step, never noised nor scored in training, so the
model learns the distribution of futures given the present (Janner et al., Diffuser). Subclasses say
what a plan holds (:attr:`BasePlanner.plan_dim`), how candidates are planned (``_plan``) and how actions
are read off them (``_plan_actions``).

Modes as values (:mod:`fastpolicy.policies.modes`): :meth:`BasePlanner.with_sampler` returns a view over
the same weights sampling another way; the planner it came from is left as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from fastpolicy.diffusion import SamplerSpec, add_noise, make_sampler, make_schedule, training_target
from fastpolicy.diffusion.samplers import Sampler
from fastpolicy.nets import make_backbone
from fastpolicy.nets.critic import Critic
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.modes import policy_view, warn_mutator
from fastpolicy.policies.planner_configs import PlannerConfig
from fastpolicy.policies.planners.data import RTG_KEY
from fastpolicy.policies.torch_policy import TorchPolicy

PlanOutput = tuple[torch.Tensor, dict[str, int]]
"""candidate plans (N, H, D) and the network calls spent on them"""

INFERENCE_FIELDS: frozenset[str] = frozenset({
    "sampler", "num_candidates", "noise_scale", "action_horizon", "guidance_weight", "target_return",
    "target_return_multiple", "guide_scale", "n_guide_steps", "t_stopgrad", "refine_steps", "refine_start",
    "trim_draft", "kv_cache"})
"""config fields a planner can change without retraining (:meth:`BasePlanner.with_settings`), where its
type has them"""


class BasePlanner(TorchPolicy):
    """Normalisation, denoiser, schedule, critic, inpainting and the candidate → action pipeline."""

    config_cls: ClassVar[type[PlannerConfig]] = PlannerConfig

    def __init__(self, config: PlannerConfig, normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        self.schedule = make_schedule(config.num_train_timesteps, config.beta_schedule)
        self.denoiser = make_backbone(config.backbone, horizon=config.pred_horizon, input_dim=self.plan_dim,
                                      global_cond_dim=self.cond_dim, **config.backbone_kwargs)
        self.critic = Critic(config.obs_dim, config.action_dim, config.critic_hidden, config.critic_depth)
        self._use_sampler(config.sampler)
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
    def with_sampler(self, spec: str | SamplerSpec) -> BasePlanner:
        """This planner sampling plans with ``spec`` (``ddpm:200``, ``ddim:10``, or a parsed spec): a view
        over the same weights whose config says so, its tables built once here; this planner is
        unchanged."""
        spec = spec if isinstance(spec, str) else spec.name
        return policy_view(self, sampler=spec)._use_sampler(spec)

    def with_settings(self, **changes: Any) -> BasePlanner:
        """This planner with other inference-time settings (:data:`INFERENCE_FIELDS`: sampler, candidates,
        temperature, guidance, return target, refinement): a view over the same weights whose config says
        so; this planner is unchanged. Fields that shape the networks are refused (they need training)."""
        own = INFERENCE_FIELDS & {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(changes) - own)
        if unknown:
            raise ValueError(f"not inference-time settings of a {self.policy_type} planner: {unknown}; "
                             f"known: {', '.join(sorted(own))}")
        view = policy_view(self, **changes)
        view._use_sampler(view.config.sampler)
        return view

    def set_sampler(self, spec: str | SamplerSpec) -> BasePlanner:
        """Deprecated: switches this (possibly shared) planner in place; use :meth:`with_sampler`."""
        warn_mutator("set_sampler", "with_sampler")
        spec = spec if isinstance(spec, str) else spec.name
        config = dataclasses.replace(self.config, sampler=spec)
        config.validate()
        self.config = config
        return self._use_sampler(spec)

    def _use_sampler(self, spec: str) -> BasePlanner:
        """How plans are sampled from noise, e.g. ``ddpm:20`` or ``ddim:10`` (tables built once), on this
        object (construction, views and device moves only)."""
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
            self._use_sampler(self.sampler_name)
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
        mask = self._inpaint_mask(x0)
        return (self.denoising_error(x0, state, cond, noise, t.to(self.device)) * mask).sum() / mask.sum()

    def denoising_error(self, x0: torch.Tensor, state: torch.Tensor, cond: torch.Tensor | None,
                        noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Squared error (same shape as ``x0``) of the denoiser's target at levels ``t`` for the given
        ``noise``, the current state inpainted; the training loss averages it off the inpainted entries,
        diagnostics read it per level and per entry on fixed (paired) noise."""
        xt = self.inpaint(add_noise(self.schedule, x0, noise, t), state)
        target = training_target(self.schedule, x0, noise, t, self.config.prediction_type)
        return (self.denoiser(xt, t, cond) - target).square()

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
