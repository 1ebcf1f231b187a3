"""DiffusionPolicy: the teacher (Chi et al., Diffusion Policy, CNN variant).

Denoising over an action sequence of length Tp (parametrisation ``prediction_type``: ``sample`` by
default — measured, see docs/benchmarks.md "Diffusion core"; ``epsilon`` and ``v_prediction`` too),
conditioned on the flattened window of To
normalised observations (global FiLM conditioning); receding horizon execution of
``pred[To-1 : To-1+Ta]``. Training noise tables and samplers come from ``fastpolicy.diffusion``;
the sampler is chosen at evaluation time without retraining: ``policy.with_sampler("ddim:10")`` returns a
view over the same weights (``fastpolicy.policies.modes``), leaving the shared policy as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastpolicy.diffusion import SamplerSpec, add_noise, make_sampler, make_schedule, training_target
from fastpolicy.diffusion.samplers import PREDICTION_TYPES
from fastpolicy.nets import make_backbone
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.modes import policy_view, warn_mutator
from fastpolicy.policies.torch_policy import PolicyConfig, TorchPolicy


@dataclass
class DiffusionPolicyConfig(PolicyConfig):
    backbone: str = "unet-small"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    clip_sample: bool = True
    sampler: str = "ddpm:100"

    def validate(self) -> None:
        super().validate()
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {self.prediction_type!r}")
        SamplerSpec.parse(self.sampler)


class DiffusionPolicy(TorchPolicy):
    policy_type = "diffusion"
    config_cls = DiffusionPolicyConfig

    def __init__(
        self, config: DiffusionPolicyConfig, normalizer_state: dict[str, torch.Tensor] | None = None
    ):
        super().__init__(config, normalizer_state)
        if config.backbone == "mlp" and "per_position_time" not in config.backbone_kwargs:
            # recorded in the config: a checkpoint (and a student warm-started from it) rebuilds the same net
            per_position = self.per_position_time(config)
            config.backbone_kwargs = {**config.backbone_kwargs, "per_position_time": per_position}
        self.backbone = make_backbone(
            config.backbone,
            horizon=config.pred_horizon,
            input_dim=config.action_dim,
            global_cond_dim=config.obs_dim * config.obs_horizon,
            **config.backbone_kwargs,
        )
        self.schedule = make_schedule(config.num_train_timesteps, config.beta_schedule)
        self._use_sampler(config.sampler)

    @classmethod
    def per_position_time(cls, config: DiffusionPolicyConfig) -> bool:
        """Whether the denoiser must take one timestep per buffer position (streaming policies do)."""
        return False

    # --- sampling -------------------------------------------------------------------------------
    def _sampler_spec(self, spec: str | SamplerSpec) -> SamplerSpec:
        """The spec with this model's parametrisation (and, for DDPM unless the text says, its clipping)."""
        parsed = spec if isinstance(spec, SamplerSpec) else SamplerSpec.parse(spec)
        overrides: dict[str, Any] = {"prediction_type": self.config.prediction_type}
        if parsed.kind == "ddpm" and not (isinstance(spec, str) and "clip" in spec):
            overrides["clip_sample"] = self.config.clip_sample
        return dataclasses.replace(parsed, **overrides)  # SamplerSpec is frozen

    def with_sampler(self, spec: str | SamplerSpec, action_horizon: int | None = None) -> DiffusionPolicy:
        """This policy sampling with ``spec`` (``ddpm:100``, ``ddim:10,spacing=trailing``,
        ``ddpm:100,temperature=0.5``), executing ``action_horizon`` actions per plan if given: a view over
        the same weights whose config says so; this policy is unchanged.

        The tables are built once here; a start level whose clean estimate is unbounded for this
        model's parametrisation is refused (see :func:`fastpolicy.diffusion.check_start_level`).
        """
        changes: dict[str, Any] = {"sampler": spec if isinstance(spec, str) else spec.name}
        if action_horizon is not None:
            changes["action_horizon"] = int(action_horizon)
        view = policy_view(self, **self._sampler_config_changes(), **changes)
        return view._use_sampler(spec)

    def with_action_horizon(self, action_horizon: int) -> DiffusionPolicy:
        """This policy executing ``action_horizon`` actions per plan with its current sampler (an
        inference setting, chosen on validation seeds like a sampler): a view; this policy is unchanged.

        A streaming policy refuses: its action horizon is the chunk length its buffer was trained on.
        """
        if self.per_position_time(self.config):
            raise ValueError(f"{type(self).__name__} streams chunks of its trained action horizon "
                             f"({self.config.action_horizon}); it cannot execute {action_horizon} per plan")
        view = policy_view(self, action_horizon=int(action_horizon))
        return view._use_sampler(self.config.sampler)

    def _sampler_config_changes(self) -> dict[str, Any]:
        """Config fields a subclass changes with the sampler (a streaming policy leaves its stream)."""
        return {}

    def set_sampler(self, spec: str | SamplerSpec) -> DiffusionPolicy:
        """Deprecated: switches this (possibly shared) policy in place; use :meth:`with_sampler`."""
        warn_mutator("set_sampler", "with_sampler")
        return self._use_sampler(spec)

    def _use_sampler(self, spec: str | SamplerSpec) -> DiffusionPolicy:
        """Build the sampler's tables on this object (construction and views only)."""
        full = self._sampler_spec(spec)
        self.sampler = make_sampler(self.schedule, full, device=self.device)
        self.sampler_name = full.name
        self.method = f"teacher-{full.slug}"
        return self

    def _apply(self, fn, *args, **kwargs):  # keep sampler tables on the module's device
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "sampler"):
            self.schedule = self.schedule.to(self.device)
            self.sampler = make_sampler(self.schedule, self.sampler.spec, device=self.device)
        return out

    @torch.inference_mode()
    def predict_chunk(
        self,
        obs_window: np.ndarray | torch.Tensor,
        state: PolicyState = None,
        generator: torch.Generator | None = None,
    ) -> ChunkResult:
        cond = self.encode_obs(obs_window)
        cfg = self.config
        x = self.sampler.initial_noise((cond.shape[0], cfg.pred_horizon, cfg.action_dim), generator,
                                       device=self.device)
        x0, nfe = self.sampler.sample(lambda xt, t: self.backbone(xt, t, cond), x, generator=generator)
        return ChunkResult(self.chunk_from_prediction(x0), nfe, state)

    # --- training -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        cfg = self.config
        cond = self.normalize_obs(batch["obs"][:, : cfg.obs_horizon]).flatten(1)
        action = self.normalize_action(batch["action"][:, : cfg.pred_horizon])
        b = action.shape[0]
        noise = torch.randn(action.shape, generator=generator).to(self.device)
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=generator).to(self.device)
        pred = self.backbone(add_noise(self.schedule, action, noise, t), t, cond)
        target = training_target(self.schedule, action, noise, t, cfg.prediction_type)
        return {"loss": masked_mse(pred, target, batch.get("action_mask"), cfg.pred_horizon)}


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, horizon: int
) -> torch.Tensor:
    """MSE over positions whose action is known (``action_mask`` True); plain MSE without a mask."""
    if mask is None:
        return F.mse_loss(pred, target)
    m = mask[:, :horizon].to(pred.dtype).unsqueeze(-1)
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)
