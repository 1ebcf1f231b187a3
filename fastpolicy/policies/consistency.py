"""ConsistencyPolicy: a student distilled from a diffusion teacher that samples in 1–k denoiser calls.

Faithful by construction (docs/benchmarks.md "Students"): the student's time grid *is* the teacher's
evaluated sampler — its timesteps (spacing included), its parametrisation, its clipping and its
temperature (``teacher_sampler``, e.g. ``ddim:10`` or ``ddpm:100,temperature=0.5``). It never sees a
level the teacher does not use: a student distilled from DDIM-10 (leading) starts at t = 90, like the
teacher, never at t = 99 where an ε-model's clean estimate amplifies its error ~2000×.

Parameterisation (one formula for single-segment, multi-segment and streaming students). The student
network F(x_t, t, s) is the teacher's backbone plus a zero-initialised stop-time input s, and

    f(x_t, t, s) = DDIM step of F from t to s = α_s·x̂0 + σ_s·ε̂,   x̂0 = clip(x0(F)), ε̂ = ε(F)

with t = −1 the clean end (α = 1, σ = 0) and the same clipping as the teacher's sampler, in training
and inference alike. For an x0 (``sample``) or ``v`` teacher the boundary scalings are bounded: the
clean end is c_skip = 0, c_out = 1 (x0) or c_skip = α_t, c_out = −σ_t (v) — the EDM-style
c_skip/c_out of Consistency Policy with no division by α_t; an ε teacher is accepted only where the
guard (:func:`fastpolicy.diffusion.check_start_level`) bounds the amplification at the grid's top.
With s = −1 the student *is* the teacher's one-call clean estimate at initialisation (warm start); with
s = t it is the identity — the boundary condition f(x, t_min) = x holds exactly (``where``, not left
to rounding); a segment's lower boundary s is just another stop time (multistep consistency, Hyper-SD
TSCD).

Time grid: G + 1 points, point 0 = −1 (clean), point n = the teacher sampler's n-th timestep from the
bottom. A ``segments = k`` student maps any point inside segment j (grid points (jG/k, (j+1)G/k]) to the
segment's lower boundary jG/k; sampling chains the k segment maps from the teacher's initial noise
(× its temperature; k NFE). A single-segment student may chain 1–m steps by re-noising its clean
estimate to intermediate grid points (multistep consistency sampling).

Streaming + consistency (``streaming = True``, from an SDP teacher whose stream is ``ode:N``): the
rolling buffer of ``fastpolicy.policies.streaming`` on the SDP's own N-level grid, with h chunks and
*one segment per chunk*: chunk i waits at boundary (i+1)N/h, and one call maps every chunk from its
boundary to the next lower one (per-position t and s), so chunk 0 becomes clean. Prefix positions share
chunk 0's times; tail positions get s = t (identity). A fresh buffer is filled by one call of the
single-segment map (constant t = top, s = −1) and re-noised chunk-wise (``first_step = "denoise"``), or
starts from zeros at the chunk-wise levels as the reference SDP does (``"zeros"``: cheaper first
action, worse first chunk). Every control step costs exactly one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastpolicy.diffusion import SamplerSpec, check_start_level, inference_timesteps
from fastpolicy.diffusion.samplers import _ode_step_from_tables, ode_tables, predict_x0_eps
from fastpolicy.diffusion.schedule import broadcast_to_sample
from fastpolicy.nets import make_backbone
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.diffusion_policy import DiffusionPolicy, DiffusionPolicyConfig
from fastpolicy.policies.modes import policy_view, warn_mutator
from fastpolicy.policies.streaming import (
    StreamLayout,
    grid_timesteps,
    parse_stream,
    renoise,
    roll_buffer,
    timesteps_of,
)
from fastpolicy.utils.misc import calls

FIRST_STEPS = ("denoise", "zeros")


def student_grid(teacher_sampler: str, num_train_timesteps: int, streaming: bool = False) -> torch.Tensor:
    """(G+1,) int64 ascending grid: −1 (clean), then the teacher sampler's timesteps from low to high.

    ``teacher_sampler`` is a sampler spec (``ddim:10``, ``ddpm:100,temperature=0``) or, for a streaming
    student, the SDP's stream spec (``ode:6``: the streaming grid of 6 levels).
    """
    if streaming:
        _, levels = parse_stream(teacher_sampler)
        return grid_timesteps(num_train_timesteps, levels)
    ts = inference_timesteps(num_train_timesteps, SamplerSpec.parse(teacher_sampler))
    if len(set(ts.tolist())) != len(ts):
        raise ValueError(f"teacher sampler {teacher_sampler!r} repeats timesteps {ts.tolist()}")
    return torch.cat([torch.tensor([-1]), torch.from_numpy(np.sort(ts))]).long()


def sampler_temperature(teacher_sampler: str, streaming: bool = False) -> float:
    """The initial-noise scale of the teacher's evaluated sampler (streams have none: 1)."""
    return 1.0 if streaming else SamplerSpec.parse(teacher_sampler).temperature


@dataclass
class ConsistencyPolicyConfig(DiffusionPolicyConfig):
    """The teacher's fields plus what the student was distilled for and how it samples."""

    teacher_sampler: str = "ddim:10"
    """the teacher's evaluated sampler (or, streaming, its ``ode:N`` stream): grid, spacing, temperature"""
    segments: int = 1
    """k, consistency segments (stop-time boundaries at grid points jG/k)"""
    steps: int = 1
    """inference calls: = segments for a segmented student; 1–G chained steps for a single-segment one"""
    streaming: bool = False
    """rolling buffer, one call per control step (segments must equal the number of chunks)"""
    first_step: str = "denoise"
    """streaming: a fresh buffer is one-call denoised and re-noised (``denoise``) or starts at zeros"""

    @property
    def grid(self) -> int:
        """G, grid points of the teacher's sampler (its number of steps)."""
        return len(student_grid(self.teacher_sampler, self.num_train_timesteps, self.streaming)) - 1

    def validate(self) -> None:
        super().validate()
        grid = self.grid
        if self.segments < 1 or grid % self.segments:
            raise ValueError(f"segments={self.segments} must be ≥ 1 and divide the teacher sampler's "
                             f"{grid} steps ({self.teacher_sampler!r})")
        if self.steps < 1 or self.steps > grid:
            raise ValueError(f"steps must be in [1, grid={grid}], got {self.steps}")
        if self.segments > 1 and self.steps != self.segments and not self.streaming:
            raise ValueError(f"a {self.segments}-segment student samples with steps={self.segments}, "
                             f"got steps={self.steps}")
        if self.first_step not in FIRST_STEPS:
            raise ValueError(f"first_step must be one of {FIRST_STEPS}, got {self.first_step!r}")
        if self.streaming:
            layout = StreamLayout(self.pred_horizon, self.obs_horizon, self.action_horizon, grid)
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
        self.temperature = sampler_temperature(config.teacher_sampler, config.streaming)
        self._use_steps(config.steps)

    @classmethod
    def per_position_time(cls, config: DiffusionPolicyConfig) -> bool:
        return bool(getattr(config, "streaming", False))

    def with_steps(self, steps: int) -> ConsistencyPolicy:
        """This student spending ``steps`` calls per replan (single-segment students: chained re-noising):
        a view over the same weights whose config says so; this policy is unchanged."""
        return policy_view(self, steps=int(steps))._use_steps(steps)

    def set_steps(self, steps: int) -> ConsistencyPolicy:
        """Deprecated: switches this (possibly shared) student in place; use :meth:`with_steps`."""
        warn_mutator("set_steps", "with_steps")
        return self._use_steps(steps)

    def _use_steps(self, steps: int) -> ConsistencyPolicy:
        """Build the grid tables for ``steps`` calls on this object (construction and views only)."""
        cfg = self.config
        if cfg.segments > 1 and steps != cfg.segments and not cfg.streaming:
            raise ValueError(f"a {cfg.segments}-segment student samples with exactly {cfg.segments} steps")
        grid = student_grid(cfg.teacher_sampler, cfg.num_train_timesteps, cfg.streaming)
        if not 1 <= steps <= len(grid) - 1:
            raise ValueError(f"steps must be in [1, {len(grid) - 1}], got {steps}")
        # a student's first call maps its top grid level straight to a clean estimate: refuse a level
        # where that estimate is unbounded for the parametrisation (an ε-student at t = 99 outputs its clip)
        check_start_level(self.schedule, int(grid[-1]), cfg.prediction_type, clipped=False,
                          what=f"consistency student ({cfg.teacher_sampler})", one_call=True)
        self.steps = int(steps)
        self._grid = grid.to(self.device)   # tables built once here, not per call
        self._levels = [int(t) for t in grid.tolist()]
        self._level_features = (hasattr(self.backbone, "level_features")
                                and not getattr(self.backbone, "per_position_time", False))
        ac = self.schedule.alphas_cumprod.double().cpu()
        abar = [1.0 if t < 0 else float(ac[t]) for t in grid.tolist()]
        self._coef = [(a ** 0.5, (1.0 - a) ** 0.5) for a in abar]   # (α, σ) per grid point, floats
        self._ode_tables = ode_tables(self.schedule, 1.0)               # DDIM step tables, once
        if cfg.streaming:
            self.layout = StreamLayout(cfg.pred_horizon, cfg.obs_horizon, cfg.action_horizon, cfg.segments)
            idx = torch.arange(cfg.segments + 1) * (cfg.grid // cfg.segments)
            self._level_table = self._grid[idx.to(self.device)]
            self._streamed = self.layout.streamed().to(self.device)
            self._post_warmup = self.layout.post_warmup_levels().to(self.device)
            self._start_levels = self.layout.start_levels().to(self.device)
            self.method = "streaming-student-1call"
        elif cfg.segments > 1:
            self.method = f"progressive-student-{calls(cfg.segments)}"
        else:
            self.method = f"student-{calls(self.steps)}"
        return self

    def _use_sampler(self, spec: str) -> ConsistencyPolicy:  # the teacher's samplers do not apply
        super()._use_sampler(spec)
        if hasattr(self, "steps"):
            self._use_steps(self.steps)
        return self

    def _apply(self, fn, *args, **kwargs):  # keep the grid tables on the module's device
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "steps"):
            self._use_steps(self.steps)
        return out

    # --- the consistency function ------------------------------------------------------------------
    def grid_timesteps(self) -> torch.Tensor:
        """(G+1,) ascending timesteps of the teacher's sampler grid; entry 0 is −1 (clean)."""
        return self._grid

    def consistency_fn(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor,
                       backbone: torch.nn.Module | None = None, return_raw: bool = False):
        """f(x_t, t, s) for per-sample (B,) or per-position (B, T) times (−1 = clean); identity where t == s.

        ``backbone`` substitutes another network of the same shape (the EMA target during distillation).
        The clean estimate is clipped exactly as the teacher's sampler clips it (``clip_sample``), in
        training and in inference: the student learns the map it is evaluated with.
        """
        net = backbone if backbone is not None else self.backbone
        raw = net(x, t.clamp_min(0), cond, stop_time=s)
        f = _ode_step_from_tables(*self._ode_tables, x, raw, t.clamp_min(0), s, self.config.prediction_type,
                                  self.config.clip_sample, 1.0)
        f = torch.where(broadcast_to_sample(t.to(x.device) == s.to(x.device), x), x, f)
        return (f, raw) if return_raw else f

    # --- sampling --------------------------------------------------------------------------------------
    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Noise × the teacher sampler's temperature (as its initial noise and re-noising would be)."""
        noise = torch.randn(shape, generator=generator).to(self.device)
        return noise if self.temperature == 1.0 else noise * self.temperature

    def _grid_map(self, x: torch.Tensor, i: int, j: int, cond: torch.Tensor) -> torch.Tensor:
        """f(x, grid point i → grid point j < i) with one level for the whole batch: the sampling path.

        The same function as :meth:`consistency_fn` (tested equal), with the level's coefficients as
        Python floats from tables built once in :meth:`_use_steps` — no table rebuild, no identity mask,
        no per-call tensor bookkeeping around the one network call.
        """
        net, ptype = self.backbone, self.config.prediction_type
        # an MLP net at inference: the levels' time features, looked up once (inference tensors, so
        # not where autograd records)
        if self._level_features and not torch.is_grad_enabled():
            raw = net(x, None, cond, time_features=net.level_features(self._levels[i], self._levels[j]))
        else:
            b = x.shape[0]
            raw = net(x, self._grid[i].expand(b), cond, stop_time=self._grid[j].expand(b))
        if j == 0 and ptype == "sample":  # the clean end needs x0 only (α = 1, σ = 0)
            return raw.clamp(-1.0, 1.0) if self.config.clip_sample else raw
        x0, eps = predict_x0_eps(x, raw, *self._coef[i], ptype)
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        if j == 0:
            return x0
        sa_j, s1_j = self._coef[j]
        return sa_j * x0 + s1_j * eps

    def sample(self, cond: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Normalised (B, Tp, A) action sequence from the teacher's initial noise in ``steps`` calls."""
        cfg = self.config
        grid = len(self._grid) - 1
        x = self._noise((cond.shape[0], cfg.pred_horizon, cfg.action_dim), generator)
        if cfg.segments > 1:
            for j in range(cfg.segments - 1, -1, -1):
                x = self._grid_map(x, (j + 1) * grid // cfg.segments, j * grid // cfg.segments, cond)
            return x, cfg.segments
        x0 = self._grid_map(x, grid, 0, cond)
        for j in range(1, self.steps):
            # re-noise the estimate to evenly spaced intermediate grid points and map back to clean
            i = round(grid * (self.steps - j) / self.steps)
            sa, s1 = self._coef[i]
            x0 = self._grid_map(sa * x0 + s1 * self._noise(x0.shape, generator), i, 0, cond)
        return x0, self.steps

    def init_state(self, batch_size: int) -> PolicyState:
        if not self.config.streaming:
            return None
        cfg = self.config
        return {"buffer": torch.zeros(batch_size, cfg.pred_horizon, cfg.action_dim),
                "levels": self.layout.fresh_levels(batch_size)}

    def level_timesteps(self) -> torch.Tensor:
        """Streaming: (h+1,) timesteps of the segment boundaries; level ℓ ↔ boundary ℓ + 1."""
        return self._level_table

    @torch.inference_mode()
    def predict_chunk(self, obs_window: np.ndarray | torch.Tensor, state: PolicyState = None,
                      generator: torch.Generator | None = None) -> ChunkResult:
        cond = self.encode_obs(obs_window)
        if not self.config.streaming:
            x0, nfe = self.sample(cond, generator)
            return ChunkResult(self.chunk_from_prediction(x0), nfe, state)
        return self._stream(cond, state, generator)

    def _fill_fresh(self, cond: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """Buffers for fresh sessions: (B, Tp, A) at the post-warm-up levels, and the calls spent."""
        cfg, table = self.config, self._level_table
        b = cond.shape[0]
        shape = (b, cfg.pred_horizon, cfg.action_dim)
        if cfg.first_step == "zeros":   # the reference SDP: zeros at the chunk-wise start levels
            return torch.zeros(shape, device=self.device), 0
        # one call of the single-segment map (constant t = top, s = clean), re-noised chunk-wise
        x0 = self.consistency_fn(self._noise(shape, generator), table[-1].expand(b), table[0].expand(b), cond)
        post = self._post_warmup.expand(b, -1)
        return renoise(self.schedule, x0, timesteps_of(post, table), generator), 1

    def _stream(self, cond: torch.Tensor, state: PolicyState,
                generator: torch.Generator | None) -> ChunkResult:
        """One control step: fill fresh buffers, one call on the pending ones, execute chunk 0, roll."""
        cfg, layout, table = self.config, self.layout, self._level_table
        b = cond.shape[0]
        state = state if state is not None else self.init_state(b)
        layout.check_shapes(state, cfg.action_dim)
        buffer = state["buffer"].to(self.device, torch.float32)
        levels = state["levels"].to(self.device, torch.long)
        nfe = 0
        fresh, any_fresh = layout.read_step_flags(levels)
        if any_fresh:   # the one host read per step: fresh sessions need the warm-up branch
            filled, nfe = self._fill_fresh(cond[fresh], generator)
            start = self._post_warmup if cfg.first_step == "denoise" else self._start_levels
            buffer, levels = buffer.clone(), levels.clone()
            buffer[fresh] = filled
            levels[fresh] = start
        first = cfg.obs_horizon - 1
        pending = levels[:, first] >= 0
        if nfe == 0 or len(filled) < b:
            # one call maps every streamed position from its boundary to the next lower one; rows whose
            # chunk 0 is already clean (just warmed up) are held by s = t (identity)
            active = pending[:, None] & self._streamed[None, :]
            t = timesteps_of(levels, table)
            s = torch.where(active, timesteps_of((levels - 1).clamp_min(-1), table), t)
            buffer = self.consistency_fn(buffer, t, s, cond)
            levels = levels - active.long()
            nfe = 1   # fresh and pending rows are disjoint: a batch spends one call (per row) at most
        actions = self.chunk_from_prediction(buffer)
        buffer, levels = roll_buffer(layout, self.schedule, table, buffer, levels, generator)
        return ChunkResult(actions, nfe, {"buffer": buffer, "levels": levels})
