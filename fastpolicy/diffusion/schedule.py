"""Noise schedules as plain tensor tables, and the forward (noising) process.

Training and every sampler read the same tables, computed exactly as diffusers computes them (float32
betas; the squared-cosine schedule discretises alpha_bar with betas capped at 0.999), so a model trained
here can be sampled by diffusers and vice versa. The container holds tensors only — no scheduler state —
so it can be moved to a device once and indexed from anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

BETA_SCHEDULES: tuple[str, ...] = ("squaredcos_cap_v2", "linear")


@dataclass(frozen=True)
class NoiseSchedule:
    """Per-training-timestep tables, all float32 of shape ``(num_train_timesteps,)``."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    num_train_timesteps: int
    beta_schedule: str = "squaredcos_cap_v2"

    def to(self, device: torch.device | str | None) -> NoiseSchedule:
        """A copy with every table on ``device``."""
        tables = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **tables)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device


def _squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Glide's cosine schedule: beta_i = min(1 - abar((i+1)/N) / abar(i/N), max_beta), in float64 math."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
             for i in range(num_train_timesteps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_schedule(num_train_timesteps: int = 100, beta_schedule: str = "squaredcos_cap_v2",
                  beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
    """Build the tables; ``beta_start``/``beta_end`` only matter for the ``linear`` schedule."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if beta_schedule == "squaredcos_cap_v2":
        betas = _squaredcos_cap_v2_betas(num_train_timesteps)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    return NoiseSchedule(betas=betas, alphas=alphas, alphas_cumprod=alphas_cumprod,
                         sqrt_alphas_cumprod=alphas_cumprod.sqrt(),
                         sqrt_one_minus_alphas_cumprod=(1.0 - alphas_cumprod).sqrt(),
                         num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)


def broadcast_to_sample(coef: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Append singleton dims so a ``(B,)`` or per-position ``(B, T)`` coefficient broadcasts."""
    return coef.reshape(*coef.shape, *([1] * (sample.dim() - coef.dim())))


def add_noise(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Forward process ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

    ``t`` is a LongTensor ``(B,)`` (one level per sample, as diffusers' ``add_noise``) or ``(B, T)``
    (one level per position along dim 1; broadcast over the remaining dims).
    """
    if t.dim() > x0.dim() or tuple(t.shape) != tuple(x0.shape[:t.dim()]):
        raise ValueError(f"timesteps of shape {tuple(t.shape)} do not index the leading dims of a sample "
                         f"of shape {tuple(x0.shape)}")
    t = t.to(schedule.device)
    # diffusers computes abar ** 0.5 and (1 - abar) ** 0.5 on the fly; the stored sqrt tables are the same
    # float32 ops, so results agree bit for bit.
    sqrt_a = schedule.sqrt_alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype)
    sqrt_1ma = schedule.sqrt_one_minus_alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype)
    return broadcast_to_sample(sqrt_a, x0) * x0 + broadcast_to_sample(sqrt_1ma, x0) * noise


def training_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What a denoiser of ``prediction_type`` learns to output for ``add_noise(schedule, x0, noise, t)``.

    ``epsilon`` → the noise, ``sample`` → x0, ``v_prediction`` → sqrt(abar) noise − sqrt(1 − abar) x0
    (diffusers' ``get_velocity``). ``t`` as in :func:`add_noise`. The one place every trainer (policies,
    planners, distillation) takes its target from.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        t = t.to(schedule.device)
        sqrt_a = broadcast_to_sample(schedule.sqrt_alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype), x0)
        sqrt_1ma = broadcast_to_sample(
            schedule.sqrt_one_minus_alphas_cumprod[t].to(device=x0.device, dtype=x0.dtype), x0)
        return sqrt_a * noise - sqrt_1ma * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: epsilon, sample, v_prediction")
