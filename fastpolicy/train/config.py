"""``TrainConfig``: the optimisation settings of the one training loop, as a plain dataclass.

Kept apart from ``trainer.py`` (which imports torch) so the command line can build its training flags
from these fields — each flag defined once, here, with the field's docstring as its help — without
importing torch to print ``--help`` or to refuse a bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

LR_SCHEDULES = ("cosine", "constant")


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults follow Diffusion Policy (AdamW 1e-4, cosine, EMA power 0.75)."""

    steps: int = 5000
    """total optimizer steps"""
    batch_size: int = 256
    """samples per optimizer step"""
    lr: float = 1e-4
    """peak learning rate (AdamW, cosine decay after the warm-up)"""
    lr_schedule: str = "cosine"
    """after the warm-up: cosine (decay to 0 at the last step) | constant"""
    weight_decay: float = 1e-6
    adam_beta1: float = 0.95
    """AdamW's first-moment decay (Diffusion Policy's 0.95; 0.9 is torch's default)"""
    warmup_steps: int = 500
    """linear learning-rate warm-up steps (0: none)"""
    ema: bool = True
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    checkpoint_every: int = 1000
    """steps between checkpoints"""
    keep_checkpoints: int = 3
    log_every: int = 50
    seed: int = 0
    """seed of the weights' initialisation, the batches and the noise"""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N"""
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")
        if not 0.0 <= self.adam_beta1 < 1.0:
            raise ValueError(f"TrainConfig.adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be ≥ 0, got {self.warmup_steps}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}")
        return cls(**d)
