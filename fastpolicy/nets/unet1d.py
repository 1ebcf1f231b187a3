"""ConditionalUnet1D: Diffusion Policy's temporal U-Net, with per-position timesteps and a stop time.

The architecture follows Diffusion Policy (Chi et al. 2023): residual blocks of two
``Conv1d → GroupNorm → Mish`` layers, FiLM (per-channel scale and bias) from a condition vector made of
the timestep embedding and the flattened observation features, a down path that keeps skips and halves
the horizon, two mid blocks, an up path that doubles it back, and a final conv.

What fastpolicy adds, and why:

* **Per-position timesteps** ``(B, T)``. Streaming diffusion keeps one noise level per action in its
  buffer, so the condition becomes a sequence ``(B, T, C)``. FiLM is then applied position by position;
  at each U-Net level the condition sequence is average-pooled by 2 along with the features, so its
  temporal resolution follows the level. With all positions at the same level the result equals the
  ``(B,)`` path (average of equal values is exact); the ``(B,)`` path stays the cheap default.
* **Stop time** ``s`` (consistency models): its own embedding MLP, zero-initialised last layer, added to
  the timestep embedding, so a student starts as an exact copy of the teacher.
* Shape checks with messages that say what to change (Diffusion Policy silently needs multiples of 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastpolicy.nets.embeddings import StopTimeEmbedding, TimestepEmbedding, as_timestep_tensor

UNET_SIZES: dict[str, tuple[int, ...]] = {"small": (64, 128, 256), "base": (256, 512, 1024)}


class Conv1dBlock(nn.Module):
    """``Conv1d → GroupNorm → Mish`` with 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM in between; the condition is ``(B, C)`` or per position ``(B, T, C)``."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int = 5,
                 n_groups: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                                     Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)])
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.out_channels = out_channels
        self.residual_conv = (nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels
                              else nn.Identity())

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        film = self.cond_encoder(cond)
        if cond.dim() == 2:     # (B, 2C) -> (B, 2, C, 1): one scale/bias per sample
            film = film.view(film.shape[0], 2, self.out_channels, 1)
        else:                   # (B, T, 2C) -> (B, 2, C, T): one scale/bias per position
            film = film.view(film.shape[0], film.shape[1], 2, self.out_channels).permute(0, 2, 3, 1)
        out = film[:, 0] * out + film[:, 1]
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class Downsample1d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser ``(sample (B,T,D), timestep, global_cond (B,C)) -> (B,T,D)``.

    Args:
        input_dim: D, the action (or state) dimension of one position.
        global_cond_dim: C, the flattened observation features (0 for an unconditional model).
        down_dims: channels per level; the horizon must be divisible by ``2 ** (len(down_dims) - 1)``.
        kernel_size, n_groups: conv kernel and GroupNorm groups (Diffusion Policy: 5 and 8).
        time_embed_dim: width of the timestep embedding.
        stop_time: add the zero-initialised consistency stop-time input ``s``.
    """

    def __init__(self, input_dim: int, global_cond_dim: int, down_dims: Sequence[int] = UNET_SIZES["small"],
                 kernel_size: int = 5, n_groups: int = 8, time_embed_dim: int = 128,
                 stop_time: bool = False) -> None:
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if not down_dims:
            raise ValueError("down_dims must name at least one level")
        for d in down_dims:
            if d % n_groups:
                raise ValueError(f"every entry of down_dims {down_dims} must be divisible by "
                                 f"n_groups={n_groups}")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.down_dims = down_dims
        self.horizon_multiple = 2 ** (len(down_dims) - 1)

        self.time_embedding = TimestepEmbedding(time_embed_dim)
        self.stop_time_embedding = StopTimeEmbedding(time_embed_dim) if stop_time else None
        cond_dim = time_embed_dim + global_cond_dim

        def block(cin: int, cout: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups)

        all_dims = (input_dim, *down_dims)
        in_out = list(zip(all_dims[:-1], all_dims[1:]))
        self.down_modules = nn.ModuleList()
        for level, (cin, cout) in enumerate(in_out):
            is_last = level == len(in_out) - 1
            self.down_modules.append(nn.ModuleList([
                block(cin, cout), block(cout, cout), Downsample1d(cout) if not is_last else nn.Identity()]))
        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([block(mid, mid), block(mid, mid)])
        # As in Diffusion Policy the up path has one level fewer than the down path: it consumes the
        # skips of the deeper levels, and the finest level's features reach the output through the
        # upsampled stream (its skip is not concatenated).
        self.up_modules = nn.ModuleList()
        for cin, cout in reversed(in_out[1:]):
            self.up_modules.append(nn.ModuleList([block(cout * 2, cin), block(cin, cin), Upsample1d(cin)]))
        start = down_dims[0]
        self.final_conv = nn.Sequential(Conv1dBlock(start, start, kernel_size, n_groups),
                                        nn.Conv1d(start, input_dim, 1))

    # -- conditioning -------------------------------------------------------------------------
    def _condition(self, timestep: torch.Tensor, stop_time: torch.Tensor | None,
                   global_cond: torch.Tensor | None) -> torch.Tensor:
        """``(B, C)`` when both times are per sample, else the per-position ``(B, T, C)``."""
        emb = self.time_embedding(timestep)
        if stop_time is not None:
            s_emb = self.stop_time_embedding(stop_time)
            if emb.dim() != s_emb.dim():  # one per sample, the other per position: broadcast over T
                emb, s_emb = (emb.unsqueeze(1), s_emb) if emb.dim() == 2 else (emb, s_emb.unsqueeze(1))
            emb = emb + s_emb
        if global_cond is None:
            return emb
        if emb.dim() == 3:
            global_cond = global_cond.unsqueeze(1).expand(-1, emb.shape[1], -1)
        return torch.cat([emb, global_cond], dim=-1)

    def _level_conditions(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """The condition at each U-Net level: shared, or per position average-pooled by 2 per level."""
        if cond.dim() == 2:
            return [cond] * len(self.down_dims)
        levels = [cond]
        for _ in range(len(self.down_dims) - 1):
            c = levels[-1]
            levels.append(F.avg_pool1d(c.transpose(1, 2), 2).transpose(1, 2))
        return levels

    # -- forward ------------------------------------------------------------------------------
    def _check(self, sample: torch.Tensor, global_cond: torch.Tensor | None) -> None:
        if sample.dim() != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"sample must be (B, T, {self.input_dim}); got {tuple(sample.shape)}")
        horizon = sample.shape[1]
        if horizon % self.horizon_multiple:
            raise ValueError(f"horizon {horizon} must be divisible by {self.horizon_multiple} for "
                             f"down_dims={list(self.down_dims)} (the U-Net halves it "
                             f"{len(self.down_dims) - 1} times)")
        if self.global_cond_dim:
            if global_cond is None:
                raise ValueError(f"global_cond (B, {self.global_cond_dim}) is required by this model")
            if tuple(global_cond.shape) != (sample.shape[0], self.global_cond_dim):
                raise ValueError(f"global_cond must be ({sample.shape[0]}, {self.global_cond_dim}); "
                                 f"got {tuple(global_cond.shape)}")
        elif global_cond is not None and global_cond.numel():
            raise ValueError("this model was built with global_cond_dim=0 but got a global_cond")

    def forward(self, sample: torch.Tensor, timestep: int | float | torch.Tensor,
                global_cond: torch.Tensor | None = None,
                stop_time: int | float | torch.Tensor | None = None) -> torch.Tensor:
        """Predict the denoising target for ``sample`` (B, T, D).

        ``timestep`` and ``stop_time``: a number, ``(B,)`` or per position ``(B, T)``.
        ``stop_time`` requires a model built with ``stop_time=True``; None skips the stop-time embedding
        (at initialisation both give the same output).
        """
        self._check(sample, global_cond)
        batch, horizon = sample.shape[:2]
        t = as_timestep_tensor(timestep, batch, horizon, sample.device)
        s = None
        if stop_time is not None:
            if self.stop_time_embedding is None:
                raise ValueError("stop_time given, but the model was built with stop_time=False")
            s = as_timestep_tensor(stop_time, batch, horizon, sample.device)
        if self.global_cond_dim == 0:
            global_cond = None
        conds = self._level_conditions(self._condition(t, s, global_cond))

        x = sample.transpose(1, 2)      # (B, D, T): Conv1d wants channels first
        skips = []
        for level, (res1, res2, down) in enumerate(self.down_modules):
            x = res2(res1(x, conds[level]), conds[level])
            skips.append(x)
            x = down(x)
        for res in self.mid_modules:
            x = res(x, conds[-1])
        for j, (res1, res2, up) in enumerate(self.up_modules):
            level = len(self.down_dims) - 1 - j
            x = torch.cat([x, skips.pop()], dim=1)
            x = res2(res1(x, conds[level]), conds[level])
            x = up(x)
        return self.final_conv(x).transpose(1, 2)
