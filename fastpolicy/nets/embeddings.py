"""Time embeddings shared by every denoiser backbone.

A diffusion backbone sees the noise level as an integer (or real) timestep. It is embedded with the
transformer's sinusoidal code and a small MLP, as in Diffusion Policy. fastpolicy adds two things:

* timesteps of any leading shape — ``(B,)`` per sample or ``(B, T)`` per position (streaming diffusion
  keeps one noise level per action in its buffer) — embed element-wise;
* :class:`StopTimeEmbedding`, the consistency-model "stop time" ``s``. Its last layer starts at zero so a
  student built with it computes exactly its teacher's function at initialisation (warm start).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """``x (...,) -> (..., dim)`` sinusoidal code (sin half then cos half), as in Diffusion Policy."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(max_period) / (half - 1)))
        # a buffer, not a parameter: it moves with .to(device) but is never trained nor saved
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = x.to(self.freqs.dtype).unsqueeze(-1) * self.freqs
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal code followed by ``Linear → Mish → Linear``; maps ``(...,)`` timesteps to ``(..., dim)``."""

    def __init__(self, dim: int, hidden_mult: int = 4) -> None:
        super().__init__()
        self.sinusoid = SinusoidalPosEmb(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * hidden_mult), nn.Mish(),
                                 nn.Linear(dim * hidden_mult, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t))


class StopTimeEmbedding(TimestepEmbedding):
    """Embedding of the consistency "stop time" ``s``, added to the timestep embedding.

    The last Linear is zero-initialised, so the sum equals the plain timestep embedding (bit for bit)
    until training moves it: a student with this module starts as an exact copy of its teacher.
    """

    def __init__(self, dim: int, hidden_mult: int = 4) -> None:
        super().__init__(dim, hidden_mult)
        last = self.mlp[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)


def as_timestep_tensor(timestep: int | float | torch.Tensor, batch_size: int, horizon: int,
                       device: torch.device) -> torch.Tensor:
    """Normalise a timestep argument to ``(B,)`` or ``(B, T)``; raise ValueError on any other shape.

    Accepts a Python number or a 0-d tensor (shared by the batch), ``(B,)`` or ``(B, T)``.
    """
    if not isinstance(timestep, torch.Tensor):
        timestep = torch.tensor(timestep, device=device)
    timestep = timestep.to(device)
    if timestep.dim() == 0:
        return timestep.expand(batch_size)
    if timestep.dim() == 1 and timestep.shape[0] == batch_size:
        return timestep
    if timestep.dim() == 2 and tuple(timestep.shape) == (batch_size, horizon):
        return timestep
    raise ValueError(f"timestep must be a scalar, ({batch_size},) or ({batch_size}, {horizon}); "
                     f"got shape {tuple(timestep.shape)}")
