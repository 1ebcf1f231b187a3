"""Denoiser backbones and building blocks.

Every denoiser has one call signature, so policies never care which one they hold::

    model(sample (B, T, D), timestep: int | (B,) | (B, T), global_cond (B, C) | None,
          stop_time: int | (B,) | (B, T) | None = None) -> (B, T, D)

``make_backbone`` builds one by name from the shapes a policy knows (horizon, action dim, observation
feature dim).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fastpolicy.nets.embeddings import SinusoidalPosEmb, StopTimeEmbedding, TimestepEmbedding
from fastpolicy.nets.mlp import MLP, MLPDenoiser
from fastpolicy.nets.unet1d import UNET_SIZES, ConditionalUnet1D

BACKBONES: tuple[str, ...] = ("unet-small", "unet-base", "mlp")


def make_backbone(name: str, horizon: int, input_dim: int, global_cond_dim: int, stop_time: bool = False,
                  **kw: Any) -> nn.Module:
    """Build the denoiser ``name`` (one of :data:`BACKBONES`); ``kw`` goes to its constructor.

    Raises ValueError for an unknown name and when a U-Net cannot take ``horizon``.
    """
    if name.startswith("unet-"):
        size = name.removeprefix("unet-")
        if size not in UNET_SIZES:
            raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
        model = ConditionalUnet1D(input_dim, global_cond_dim, down_dims=kw.pop("down_dims", UNET_SIZES[size]),
                                  stop_time=stop_time, **kw)
        # fail at build time, not at the first forward deep inside training
        if horizon % model.horizon_multiple:
            raise ValueError(f"horizon {horizon} must be divisible by {model.horizon_multiple} for "
                             f"down_dims={list(model.down_dims)}")
        return model
    if name == "mlp":
        return MLPDenoiser(horizon, input_dim, global_cond_dim, stop_time=stop_time, **kw)
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["BACKBONES", "MLP", "UNET_SIZES", "ConditionalUnet1D", "MLPDenoiser", "SinusoidalPosEmb",
           "StopTimeEmbedding", "TimestepEmbedding", "count_parameters", "make_backbone"]
