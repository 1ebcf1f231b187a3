"""DiffusionPolicy: the teacher (Chi et al., Diffusion Policy, CNN variant).

Denoising over an action sequence of length Tp (parametrisation ``prediction_type``: ``sample`` by
default — measured, see docs/benchmarks.md "Diffusion core"; ``epsilon`` and ``v_prediction`` too),
conditioned on the flattened window of To
normalised observations (global FiLM conditioning); receding horizon execution of
``pred[To-1 : To-1+Ta]``. Training noise tables and samplers come from ``fastpolicy.diffusion``;
the sampler is swappable at evaluation time (``set_sampler("ddim:10")``) without retraining.
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
        self.set_sampler(config.sampler)

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

    def set_sampler(self, spec: str | SamplerSpec) -> DiffusionPolicy:
        """Choose how to sample (``ddpm:100``, ``ddim:10,spacing=trailing``, ``ddpm:100,temperature=0.5``).

        The tables are built once here; a start level whose clean estimate is unbounded for this
        model's parametrisation is refused (see :func:`fastpolicy.diffusion.check_start_level`).
        """
        full = self._sampler_spec(spec)
        self.sampler = make_sampler(self.schedule, full, device=self.device)
        self.sampler_name = full.name
        self.method = f"dp-{full.slug}"
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
