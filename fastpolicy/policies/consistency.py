"""ConsistencyPolicy: a student distilled from a diffusion teacher that samples in 1–k denoiser calls.

Parameterisation (one formula for single-segment, multi-segment and streaming students). The student
network F(x_t, t, s) is the teacher's backbone plus a zero-initialised stop-time input s, and

    f(x_t, t, s) = DDIM step of F from t to s = c_skip(t, s)·x_t + c_out(t, s)·F(x_t, t, s)
    c_skip = α_s / α_t,   c_out = σ_s − α_s σ_t / α_t        (ε-prediction; α² = ᾱ, σ² = 1 − ᾱ)

with t = −1 the clean end (α = 1, σ = 0). Why this form: with s = −1 it is exactly the teacher's
x0 prediction at initialisation (warm start, CTM / Consistency Policy's DDIM variant); with s = t it
is the identity — the boundary condition f(x, t_min) = x holds *exactly* (enforced with ``where``, not
left to rounding); and a segment's lower boundary s is just another stop time (multistep consistency /
Hyper-SD TSCD).

Time grid: G grid points, point n at training timestep ⌊n·T/G + ½⌋ − 1 (point 0 = −1, clean). A
``segments = k`` student maps any point inside segment j (grid points (jG/k, (j+1)G/k]) to the
segment's lower boundary jG/k; sampling chains the k segment maps from pure noise (k NFE). A
single-segment student may chain 1–m steps by re-noising its clean estimate to intermediate grid
points (multistep consistency sampling).

Streaming + consistency (``streaming = True``, from an SDP teacher): the rolling buffer of
``fastpolicy.policies.streaming`` with h chunks and *one grid level per segment*: k = h segments, chunk
i waits at boundary (i+1)G/h, and one call maps every chunk from its boundary to the next lower one
(per-position t and s into the student), so chunk 0 becomes clean. Prefix positions share chunk 0's
times; tail positions get s = t (identity). A fresh buffer is filled by one call of the single-segment
map (constant t = top, s = −1) and re-noised chunk-wise. So every control step costs at most one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastpolicy.diffusion import add_noise, check_start_level, ddim_ode_step
from fastpolicy.diffusion.schedule import broadcast_to_sample
from fastpolicy.nets import make_backbone
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.diffusion_policy import DiffusionPolicy, DiffusionPolicyConfig
from fastpolicy.policies.streaming import (
    StreamLayout,
    grid_timesteps,
    renoise,
    roll_buffer,
    timesteps_of,
)


@dataclass
class ConsistencyPolicyConfig(DiffusionPolicyConfig):
    """The teacher's fields plus what the student was distilled for and how it samples."""

    grid: int = 24
    """G, grid points of the teacher ODE the student was distilled on"""
    segments: int = 1
    """k, consistency segments (stop-time boundaries at grid points jG/k)"""
    steps: int = 1
    """inference calls: = segments for a segmented student; 1–G chained steps for a single-segment one"""
    streaming: bool = False
    """rolling buffer, one call per control step (segments must equal the number of chunks)"""

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.grid <= self.num_train_timesteps:
            raise ValueError(f"grid must be in [1, {self.num_train_timesteps}], got {self.grid}")
        if self.segments < 1 or self.grid % self.segments:
            raise ValueError(f"segments={self.segments} must be ≥ 1 and divide grid={self.grid}")
        if self.steps < 1 or self.steps > self.grid:
            raise ValueError(f"steps must be in [1, grid={self.grid}], got {self.steps}")
        if self.segments > 1 and self.steps != self.segments and not self.streaming:
            raise ValueError(f"a {self.segments}-segment student samples with steps={self.segments}, "
                             f"got steps={self.steps}")
        if self.streaming:
            layout = StreamLayout(self.pred_horizon, self.obs_horizon, self.action_horizon, self.segments)
            if layout.chunks != self.segments:
                raise ValueError(f"a streaming student needs segments = number of chunks ({layout.chunks}), "
                                 f"got {self.segments}")


class ConsistencyPolicy(DiffusionPolicy):
    """Student with a stop-time backbone; ``predict_chunk`` spends ``steps`` calls (1 when streaming)."""

    policy_type = "consistency"
    config_cls = ConsistencyPolicyConfig

    def __init__(self, config: ConsistencyPolicyConfig,
                 normalizer_state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(config, normalizer_state)
        # the teacher's architecture plus the zero-initialised stop-time embedding
        self.backbone = make_backbone(config.backbone, horizon=config.pred_horizon,
                                      input_dim=config.action_dim,
                                      global_cond_dim=config.obs_dim * config.obs_horizon, stop_time=True,
                                      **config.backbone_kwargs)
        self.set_steps(config.steps)

    @classmethod
    def per_position_time(cls, config: DiffusionPolicyConfig) -> bool:
        return bool(getattr(config, "streaming", False))

    def set_steps(self, steps: int) -> ConsistencyPolicy:
        """Number of calls per replan (single-segment students: chained re-noising)."""
        cfg = self.config
        if cfg.segments > 1 and steps != cfg.segments and not cfg.streaming:
            raise ValueError(f"a {cfg.segments}-segment student samples with exactly {cfg.segments} steps")
        # a student's first call maps its top grid level straight to a clean estimate: refuse a level
        # where that estimate is unbounded for the parametrisation (an ε-student at t = 99 outputs its clip)
        top = int(grid_timesteps(cfg.num_train_timesteps, cfg.grid)[-1])
        check_start_level(self.schedule, top, cfg.prediction_type, clipped=False,
                          what=f"consistency student (grid {cfg.grid})", one_call=True)
        self.steps = int(steps)
        if cfg.streaming:
            self.layout = StreamLayout(cfg.pred_horizon, cfg.obs_horizon, cfg.action_horizon, cfg.segments)
            self.method = "sdp-cm"
        elif cfg.segments > 1:
            self.method = f"cm-seg{cfg.segments}"
        else:
            self.method = f"cm-{self.steps}step"
        return self

    def set_sampler(self, spec: str) -> ConsistencyPolicy:  # the teacher's samplers do not apply
        super().set_sampler(spec)
        if hasattr(self, "steps"):
            self.set_steps(self.steps)
        return self

    # --- the consistency function ------------------------------------------------------------------
    def grid_timesteps(self) -> torch.Tensor:
        return grid_timesteps(self.config.num_train_timesteps, self.config.grid).to(self.device)

    def consistency_fn(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor,
                       backbone: torch.nn.Module | None = None, return_raw: bool = False,
                       clip_x0: bool = False):
        """f(x_t, t, s) for per-sample (B,) or per-position (B, T) times (−1 = clean); identity where t == s.

        ``backbone`` substitutes another network of the same shape (the EMA target during distillation).
        ``clip_x0`` clips the implied clean estimate to the data range before stepping to ``s``; streaming
        inference needs it, since its buffer is stepped and rolled indefinitely and an unclipped estimate
        error compounds until the actions overflow (seen: NaN actions after ~70 control steps).
        """
        net = backbone if backbone is not None else self.backbone
        raw = net(x, t, cond, stop_time=s)
        f = ddim_ode_step(self.schedule, x, raw, t, s, self.config.prediction_type, clip_sample=clip_x0)
        f = torch.where(broadcast_to_sample(t.to(x.device) == s.to(x.device), x), x, f)
        return (f, raw) if return_raw else f

    # --- sampling --------------------------------------------------------------------------------------
    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1.0, 1.0) if self.config.clip_sample else x

    def sample(self, cond: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Normalised (B, Tp, A) action sequence from pure noise in ``steps`` calls."""
        cfg = self.config
        b = cond.shape[0]
        ts = self.grid_timesteps()
        x = torch.randn((b, cfg.pred_horizon, cfg.action_dim), generator=generator).to(self.device)
        if cfg.segments > 1:
            bounds = [ts[j * cfg.grid // cfg.segments].expand(b) for j in range(cfg.segments + 1)]
            for j in range(cfg.segments - 1, -1, -1):
                x = self.consistency_fn(x, bounds[j + 1], bounds[j], cond)
            return self._clip(x), cfg.segments
        clean = ts[0].expand(b)
        x0 = self._clip(self.consistency_fn(x, ts[-1].expand(b), clean, cond))
        for j in range(1, self.steps):
            # re-noise the estimate to evenly spaced intermediate grid points and map back to clean
            t = ts[round(cfg.grid * (self.steps - j) / self.steps)].expand(b)
            noise = torch.randn(x0.shape, generator=generator).to(self.device)
            x0 = self._clip(self.consistency_fn(add_noise(self.schedule, x0, noise, t), t, clean, cond))
        return x0, self.steps

    def init_state(self, batch_size: int) -> PolicyState:
        if not self.config.streaming:
            return None
        cfg = self.config
        return {"buffer": torch.zeros(batch_size, cfg.pred_horizon, cfg.action_dim),
                "levels": self.layout.fresh_levels(batch_size)}

    def level_timesteps(self) -> torch.Tensor:
        """Streaming: (h+1,) timesteps of the segment boundaries; level ℓ ↔ boundary ℓ + 1."""
        cfg = self.config
        idx = torch.arange(cfg.segments + 1) * (cfg.grid // cfg.segments)
        return self.grid_timesteps()[idx.to(self.device)]

    @torch.inference_mode()
    def predict_chunk(self, obs_window: np.ndarray | torch.Tensor, state: PolicyState = None,
                      generator: torch.Generator | None = None) -> ChunkResult:
        cond = self.encode_obs(obs_window)
        if not self.config.streaming:
            x0, nfe = self.sample(cond, generator)
            return ChunkResult(self.chunk_from_prediction(x0), nfe, state)
        return self._stream(cond, state, generator)

    def _stream(self, cond: torch.Tensor, state: PolicyState,
                generator: torch.Generator | None) -> ChunkResult:
        cfg, layout = self.config, self.layout
        b = cond.shape[0]
        state = state if state is not None else self.init_state(b)
        layout.check_state(state, cfg.action_dim)
        table = self.level_timesteps()
        buffer = state["buffer"].to(self.device, torch.float32).clone()
        levels = state["levels"].to(self.device, torch.long).clone()
        nfe = 0
        fresh = layout.is_fresh(levels)
        if bool(fresh.any()):
            # one call of the single-segment map (constant t = top, s = clean), re-noised chunk-wise
            nb = int(fresh.sum())
            noise = torch.randn((nb, cfg.pred_horizon, cfg.action_dim), generator=generator).to(self.device)
            top, clean = table[-1].expand(nb), table[0].expand(nb)
            x0 = self._clip(self.consistency_fn(noise, top, clean, cond[fresh]))
            post = layout.post_warmup_levels().to(self.device).expand(nb, -1)
            buffer[fresh] = renoise(self.schedule, x0, timesteps_of(post, table), generator)
            levels[fresh] = post
            nfe = 1
        first = cfg.obs_horizon - 1
        pending = levels[:, first] >= 0
        if bool(pending.any()):
            # one call maps every streamed position from its boundary to the next lower one
            active = pending[:, None] & layout.streamed().to(self.device)[None, :]
            t = timesteps_of(levels, table)
            s = torch.where(active, timesteps_of((levels - 1).clamp_min(-1), table), t)
            stepped = self.consistency_fn(buffer[pending], t[pending], s[pending], cond[pending],
                                          clip_x0=cfg.clip_sample)
            buffer[pending] = stepped
            levels = levels - active.long()
            nfe = max(nfe, 1)  # fresh and pending rows are disjoint: one batched call each at most
        chunk_positions = slice(first, first + cfg.action_horizon)
        buffer[:, chunk_positions] = self._clip(buffer[:, chunk_positions])
        actions = self.chunk_from_prediction(buffer)
        buffer, levels = roll_buffer(layout, self.schedule, table, buffer, levels, generator)
        return ChunkResult(actions, nfe, {"buffer": buffer, "levels": levels})
