"""StreamingPolicy (Streaming Diffusion Policy, Høeg et al. 2024): one noise level per buffer position.

Diffusion Policy denoises a fresh action sequence from pure noise at every replan: N denoiser calls per
observation. SDP keeps a rolling buffer of length Tp whose chunks sit at increasing noise levels: the
chunk about to be executed is almost clean, the last one is pure noise. Per observation a few calls
on the whole buffer (each lowers every position's level by one) make the first chunk clean; it is
executed, the buffer rolls by Ta and fresh noise enters at the top level. About N/h calls per
observation instead of N, with h = ⌊(Tp − (To − 1)) / Ta⌋ chunks.

Buffer layout (positions p = 0 … Tp−1, chunk index c(p)):

    prefix  p < To−1                    c = 0   the last executed actions, re-noised to chunk 0's level
    chunk i To−1+i·Ta ≤ p < To−1+(i+1)·Ta  c = i   chunk i starts a replan at level ⌊N(i+1)/h⌋ − 1
    tail    p ≥ To−1+h·Ta                c = h   leftover positions, held at the top level N − 1

One explicit index space. ``levels`` are indices into the sampling grid of N levels (−1 = clean);
level ℓ means training timestep ``grid_timesteps(T, N)[ℓ + 1]``. The conversion happens in exactly one
place (:meth:`StreamLayout.timesteps`); training uses the grid N = T, where level = timestep. (The
reference code mixed training-timestep and sampler-step indices in its DDIM variant.)

Two defects of the reference code are avoided on purpose: re-noising the prefix after a roll uses the
result of ``add_noise`` (the reference discarded it, so the prefix stayed clean while the network was
told it was noisy), and levels never mix index spaces.

Training mixes, per batch, 80 % chunk-wise levels (chunk i at ⌊T(i+1)/h⌋ − 1 − j, one offset
j ∈ [0, ⌊T/h⌋) per sample shared by its chunks, i.e. every intermediate state of a streaming replan) and
20 % one constant level (the Diffusion Policy case), so the same network is also a plain DP teacher:
``set_sampler("ddim:10")`` samples it like DiffusionPolicy, ``set_stream("ode:6")`` streams it.

Streaming steps: ``ddpm:N`` (ancestral posterior step between grid levels) and ``ode:N`` (deterministic
DDIM step; with a coarse grid, e.g. N = 6 and h = 3, two calls per control step). The first call of an
episode (the buffer is fresh: every level at N − 1) samples a whole sequence with constant levels on the
same grid and re-noises it to the chunk-wise levels — in distribution thanks to the 20 % constant mix.

Length: the stream layout, the buffer roll and the policy are one algorithm (SDP); the helpers serve the
policy and SDP fine-tuning alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastpolicy.diffusion import add_noise, training_target
from fastpolicy.diffusion.samplers import _ode_step_from_tables, ode_tables, predict_x0_eps
from fastpolicy.diffusion.schedule import NoiseSchedule, broadcast_to_sample
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.diffusion_policy import DiffusionPolicy, DiffusionPolicyConfig, masked_mse
from fastpolicy.policies.modes import policy_view, warn_mutator

STREAM_KINDS = ("ddpm", "ode")


# --- index space --------------------------------------------------------------------------------

def grid_timesteps(num_train_timesteps: int, num_levels: int) -> torch.Tensor:
    """(N+1,) int64: entry n is the training timestep of grid point n, ⌊n·T/N + ½⌋ − 1 (n = 0 → −1, clean).

    Level ℓ of a streaming buffer is grid point ℓ + 1; the top level N − 1 is timestep T − 1, and with
    N = T the grid is the identity (level = timestep).
    """
    if not 1 <= num_levels <= num_train_timesteps:
        raise ValueError(f"grid of {num_levels} levels must be in [1, {num_train_timesteps}]")
    n = torch.arange(num_levels + 1, dtype=torch.float64)
    return (torch.floor(n * num_train_timesteps / num_levels + 0.5) - 1).long()


def num_chunks(pred_horizon: int, obs_horizon: int, action_horizon: int) -> int:
    """h = ⌊(Tp − (To − 1)) / Ta⌋, the number of chunks the buffer streams."""
    return (pred_horizon - (obs_horizon - 1)) // action_horizon


def chunk_start_levels(num_levels: int, chunks: int) -> torch.Tensor:
    """(h,) int64: chunk i starts a replan at level ⌊N(i+1)/h⌋ − 1 (the last chunk at N − 1)."""
    i = torch.arange(chunks)
    return (num_levels * (i + 1)) // chunks - 1


@dataclass(frozen=True)
class StreamLayout:
    """Where each chunk lives in the buffer and at which level, for a grid of ``num_levels`` levels."""

    pred_horizon: int
    obs_horizon: int
    action_horizon: int
    num_levels: int

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError(f"no chunk fits: (Tp - (To-1)) // Ta = 0 for Tp={self.pred_horizon}, "
                             f"To={self.obs_horizon}, Ta={self.action_horizon}")
        if self.num_levels < self.chunks:
            raise ValueError(f"a grid of {self.num_levels} levels cannot stagger {self.chunks} chunks; "
                             f"use at least {self.chunks} levels")

    @property
    def chunks(self) -> int:
        return num_chunks(self.pred_horizon, self.obs_horizon, self.action_horizon)

    @property
    def top(self) -> int:
        return self.num_levels - 1

    def position_chunks(self) -> torch.Tensor:
        """(Tp,) chunk index per position: prefix → 0, tail → h."""
        p = torch.arange(self.pred_horizon)
        return ((p - (self.obs_horizon - 1)).clamp_min(0) // self.action_horizon).clamp_max(self.chunks)

    def streamed(self) -> torch.Tensor:
        """(Tp,) bool: positions that are denoised (everything but the tail)."""
        return self.position_chunks() < self.chunks

    def start_levels(self) -> torch.Tensor:
        """(Tp,) level of every position at the start of a steady replan (tail at the top)."""
        starts = torch.cat([chunk_start_levels(self.num_levels, self.chunks), torch.tensor([self.top])])
        return starts[self.position_chunks()]

    def post_warmup_levels(self) -> torch.Tensor:
        """(Tp,) levels after a replan that started from the start levels: chunk 0 clean, tail held."""
        start = self.start_levels()
        calls = int(start[self.obs_horizon - 1]) + 1
        return torch.where(self.streamed(), start - calls, start)

    def fresh_levels(self, batch_size: int) -> torch.Tensor:
        """(B, Tp) levels of a fresh buffer: every position pure noise at the top level."""
        return torch.full((batch_size, self.pred_horizon), self.top, dtype=torch.long)

    def is_fresh(self, levels: torch.Tensor) -> torch.Tensor:
        """(B,) bool: buffers with nothing planned yet (all positions at the top level)."""
        return (levels == self.top).all(dim=1)

    def check_state(self, state: dict[str, torch.Tensor], action_dim: int) -> None:
        """Shapes and level range of a state from outside (a client, a restored session)."""
        self.check_shapes(state, action_dim)
        lev = state["levels"]
        if int(lev.max()) > self.top or int(lev.min()) < -1:
            raise ValueError(f"streaming levels outside [-1, {self.top}]: the state was made for another "
                             "grid (reset the session after changing the stream)")

    def read_step_flags(self, levels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """(B,) "fresh" mask and whether any buffer is fresh, in the step's *one* host read, which also
        refuses levels made for another grid (a stale state after ``set_stream``)."""
        fresh = self.is_fresh(levels)
        any_fresh, out_of_range = torch.stack(
            [fresh.any(), (levels.max() > self.top) | (levels.min() < -1)]).tolist()
        if out_of_range:
            raise ValueError(f"streaming levels outside [-1, {self.top}]: the state was made for another "
                             "grid (reset the session after changing the stream)")
        return fresh, bool(any_fresh)

    def check_shapes(self, state: dict[str, torch.Tensor], action_dim: int) -> None:
        """The per-step check: shapes only (no read of the levels' values, so no device sync)."""
        buf, lev = state.get("buffer"), state.get("levels")
        if buf is None or lev is None:
            raise ValueError("streaming state needs 'buffer' and 'levels' (use policy.init_state(B))")
        if buf.dim() != 3 or tuple(buf.shape[1:]) != (self.pred_horizon, action_dim):
            raise ValueError(f"streaming buffer has shape {tuple(buf.shape)}, "
                             f"expected (B, {self.pred_horizon}, {action_dim})")
        if tuple(lev.shape) != tuple(buf.shape[:2]):
            raise ValueError(f"streaming levels have shape {tuple(lev.shape)}, "
                             f"expected {tuple(buf.shape[:2])}")


def timesteps_of(levels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Levels (any shape, −1 … N−1) → training timesteps through the (N+1,) grid table: the one conversion."""
    return table.to(levels.device)[levels + 1]


def renoise(schedule: NoiseSchedule, x0: torch.Tensor, timesteps: torch.Tensor,
            generator: torch.Generator | None) -> torch.Tensor:
    """q(x_t | x0) per position; positions at timestep −1 stay exactly ``x0``."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    noisy = add_noise(schedule, x0, noise, timesteps.clamp_min(0))
    return torch.where(broadcast_to_sample(timesteps < 0, x0), x0, noisy)


def roll_buffer(layout: StreamLayout, schedule: NoiseSchedule, table: torch.Tensor, buffer: torch.Tensor,
                levels: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """After chunk 0 was executed: shift by Ta, append fresh noise at the top level, re-noise the prefix.

    The To−1 prefix positions then hold the most recent executed (clean) actions; they take the new chunk
    0's level and are noised to it with ``add_noise`` — the result is used (the reference discarded it).
    """
    b, _, a = buffer.shape
    ta, pre = layout.action_horizon, layout.obs_horizon - 1
    fresh = torch.randn((b, ta, a), generator=generator).to(buffer.device)
    buffer = torch.cat([buffer[:, ta:], fresh], dim=1)
    levels = torch.cat([levels[:, ta:], torch.full((b, ta), layout.top, dtype=levels.dtype,
                                                   device=levels.device)], dim=1)
    if pre > 0:
        lead = levels[:, pre : pre + 1].expand(-1, pre)
        levels = torch.cat([lead, levels[:, pre:]], dim=1)
        prefix = renoise(schedule, buffer[:, :pre], timesteps_of(lead, table), generator)
        buffer = torch.cat([prefix, buffer[:, pre:]], dim=1)
    return buffer, levels


def ddpm_step_between(schedule: NoiseSchedule, x: torch.Tensor, model_output: torch.Tensor,
                      t_from: torch.Tensor, t_to: torch.Tensor, noise: torch.Tensor | None,
                      prediction_type: str = "epsilon", clip_sample: bool = True,
                      clip_sample_range: float = 1.0) -> torch.Tensor:
    """Ancestral DDPM step from ``t_from`` to ``t_to`` < ``t_from`` per sample or per position (−1 = clean).

    The posterior q(x_to | x_from, x0) with x0 predicted (and clipped) — diffusers' DDPMScheduler step
    with "fixed_small" variance, for arbitrary (skipping) level pairs. No noise is added at ``t_to = −1``.
    """
    table = torch.cat([torch.ones(1, dtype=schedule.alphas_cumprod.dtype, device=schedule.device),
                       schedule.alphas_cumprod])
    a_t = broadcast_to_sample(table[t_from.to(table.device) + 1].to(x.device, x.dtype), x)
    a_prev = broadcast_to_sample(table[t_to.to(table.device) + 1].to(x.device, x.dtype), x)
    x0, _ = predict_x0_eps(x, model_output, a_t ** 0.5, (1 - a_t) ** 0.5, prediction_type)
    if clip_sample:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    cur_alpha = a_t / a_prev
    cur_beta = 1 - cur_alpha
    mean = (a_prev ** 0.5 * cur_beta / (1 - a_t)) * x0 + (cur_alpha ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
    if noise is None:
        return mean
    std = torch.clamp((1 - a_prev) / (1 - a_t) * cur_beta, min=1e-20) ** 0.5
    std = torch.where(broadcast_to_sample(t_to.to(x.device) < 0, x), torch.zeros_like(std), std)
    return mean + std * noise


# --- policy ---------------------------------------------------------------------------------------

def parse_stream(spec: str) -> tuple[str, int]:
    """``"ddpm:100"`` / ``"ode:6"`` → (kind, number of grid levels)."""
    kind, sep, levels = spec.strip().lower().partition(":")
    if not sep or kind not in STREAM_KINDS or not levels.isdigit() or int(levels) < 1:
        raise ValueError(f"stream spec {spec!r} must look like 'ddpm:N' or 'ode:N' (N grid levels)")
    return kind, int(levels)


@dataclass
class StreamingPolicyConfig(DiffusionPolicyConfig):
    """DiffusionPolicy's fields plus the streaming options.

    Default horizons To=2, Tp=16, Ta=4 give h = 3 chunks (the teacher's Ta=8 gives h = 1: no streaming
    gain); the executed chunk is ``pred[To-1 : To-1+Ta]`` as for the teacher.
    """

    action_horizon: int = 4
    chunkwise_fraction: float = 0.8
    """share of every training batch with chunk-wise levels (the rest: one constant level, plain DP)"""
    stream: str = "ddpm:100"
    """streaming step and grid: ``ddpm:N`` or ``ode:N`` (N levels, h ≤ N ≤ num_train_timesteps)"""
    mode: str = "stream"
    """``stream`` (rolling buffer) or ``dp`` (ordinary sampling with ``sampler``, constant levels)"""
    first_step: str = "denoise"
    """a fresh buffer: ``denoise`` (sample a whole sequence, N calls, then re-noise it chunk-wise) or
    ``zeros`` (the reference SDP: zeros at the chunk-wise start levels, so the first control step costs
    the steady N/h calls, and the first chunks are rougher)"""

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.chunkwise_fraction <= 1.0:
            raise ValueError(f"chunkwise_fraction must be in [0, 1], got {self.chunkwise_fraction}")
        if self.first_step not in ("denoise", "zeros"):
            raise ValueError(f"first_step must be 'denoise' or 'zeros', got {self.first_step!r}")
        if self.mode not in ("stream", "dp"):
            raise ValueError(f"mode must be 'stream' or 'dp', got {self.mode!r}")
        _, levels = parse_stream(self.stream)
        if levels > self.num_train_timesteps:
            raise ValueError(f"stream grid of {levels} levels exceeds "
                             f"num_train_timesteps={self.num_train_timesteps}")
        StreamLayout(self.pred_horizon, self.obs_horizon, self.action_horizon, levels)


class StreamingPolicy(DiffusionPolicy):
    """SDP: DiffusionPolicy's network and training noise tables, with a rolling per-position-level buffer."""

    policy_type = "streaming"
    config_cls = StreamingPolicyConfig

    def __init__(self, config: StreamingPolicyConfig,
                 normalizer_state: dict[str, torch.Tensor] | None = None) -> None:
        if config.backbone == "mlp" and config.backbone_kwargs.get("per_position_time") is False:
            raise ValueError("a streaming policy's MLP denoiser needs per_position_time=True "
                             "(one noise level per buffer position)")
        super().__init__(config, normalizer_state)
        self.train_layout = StreamLayout(config.pred_horizon, config.obs_horizon, config.action_horizon,
                                         config.num_train_timesteps)
        if config.mode == "stream":
            self._use_stream(config.stream)

    @classmethod
    def per_position_time(cls, config: DiffusionPolicyConfig) -> bool:
        return True

    # --- modes (views over the same weights; see fastpolicy.policies.modes) ---------------------------
    def _sampler_config_changes(self) -> dict[str, Any]:
        return {"mode": "dp"}

    def with_stream(self, spec: str) -> StreamingPolicy:
        """This policy streaming with ``ddpm:N`` or ``ode:N``: a view over the same weights whose config
        says so; this policy is unchanged. Sessions must be opened on the view (levels are grid indices)."""
        return policy_view(self, mode="stream", stream=spec)._use_stream(spec)

    def set_sampler(self, spec: str) -> StreamingPolicy:
        """Deprecated: switches this (possibly shared) policy in place; use :meth:`with_sampler`."""
        warn_mutator("set_sampler", "with_sampler")
        return self._use_sampler(spec)

    def set_stream(self, spec: str) -> StreamingPolicy:
        """Deprecated: switches this (possibly shared) policy in place; use :meth:`with_stream`."""
        warn_mutator("set_stream", "with_stream")
        return self._use_stream(spec)

    def _use_sampler(self, spec: str) -> StreamingPolicy:
        """Ordinary (constant-level) sampling, e.g. ``ddim:10``: the network used as a plain DP teacher."""
        super()._use_sampler(spec)
        self.mode = "dp"
        self.method = f"streaming-net-as-teacher-{self.sampler.spec.slug}"
        return self

    def _use_stream(self, spec: str) -> StreamingPolicy:
        """Build the stream's layout and tables on this object (construction and views only)."""
        kind, levels = parse_stream(spec)
        cfg = self.config
        self.layout = StreamLayout(cfg.pred_horizon, cfg.obs_horizon, cfg.action_horizon, levels)
        self.stream_kind, self.stream_spec = kind, spec
        self._build_stream_tables()
        self.mode = "stream"
        self.method = f"streaming-{kind}{levels}"
        return self

    def _build_stream_tables(self) -> None:
        """Grid and layout tensors on the module's device, built once per stream (not per control step)."""
        layout = self.layout
        self._table = grid_timesteps(self.config.num_train_timesteps, layout.num_levels).to(self.device)
        self._streamed = layout.streamed().to(self.device)
        self._post_warmup = layout.post_warmup_levels().to(self.device)
        self._start_levels = layout.start_levels().to(self.device)
        self._ode_tables = ode_tables(self.schedule, 1.0)   # DDIM step tables, once per stream
        n, h = layout.num_levels, layout.chunks
        self._steady_calls = n // h if n % h == 0 else None

    def _apply(self, fn, *args, **kwargs):  # keep the stream tables on the module's device
        out = super()._apply(fn, *args, **kwargs)
        if hasattr(self, "stream_kind"):
            self._build_stream_tables()
        return out

    def init_state(self, batch_size: int) -> PolicyState:
        if self.mode != "stream":
            return None
        cfg = self.config
        return {"buffer": torch.zeros(batch_size, cfg.pred_horizon, cfg.action_dim),
                "levels": self.layout.fresh_levels(batch_size)}

    # --- streaming inference ------------------------------------------------------------------------
    def _step(self, x: torch.Tensor, out: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
              generator: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        if self.stream_kind == "ode":
            return _ode_step_from_tables(*self._ode_tables, x, out, t_from, t_to, cfg.prediction_type,
                                         cfg.clip_sample, 1.0)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return ddpm_step_between(self.schedule, x, out, t_from, t_to, noise, cfg.prediction_type,
                                 cfg.clip_sample)

    def _warmup(self, cond: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """Fresh buffers: sample a whole sequence with constant levels on the grid, re-noise it chunk-wise."""
        cfg, layout, table = self.config, self.layout, self._table
        b = cond.shape[0]
        x = torch.randn((b, cfg.pred_horizon, cfg.action_dim), generator=generator).to(self.device)
        for level in range(layout.top, -1, -1):
            t_from = table[level + 1].expand(b)
            out = self.backbone(x, t_from, cond)
            x = self._step(x, out, t_from, table[level].expand(b), generator)
        post = self._post_warmup.expand(b, -1)
        return renoise(self.schedule, x, timesteps_of(post, table), generator), layout.num_levels

    @torch.inference_mode()
    def predict_chunk(self, obs_window: np.ndarray | torch.Tensor, state: PolicyState = None,
                      generator: torch.Generator | None = None) -> ChunkResult:
        if self.mode != "stream":
            return super().predict_chunk(obs_window, state, generator)
        cfg, layout = self.config, self.layout
        cond = self.encode_obs(obs_window)
        b = cond.shape[0]
        state = state if state is not None else self.init_state(b)
        layout.check_shapes(state, cfg.action_dim)
        table, streamed = self._table, self._streamed
        buffer = state["buffer"].to(self.device, torch.float32)
        levels = state["levels"].to(self.device, torch.long)
        nfe = 0
        fresh, any_fresh = layout.read_step_flags(levels)
        first = cfg.obs_horizon - 1
        if any_fresh:
            buffer, levels = buffer.clone(), levels.clone()
            if cfg.first_step == "zeros":
                buffer[fresh] = 0.0
                levels[fresh] = self._start_levels
            else:
                warm, nfe = self._warmup(cond[fresh], generator)
                buffer[fresh] = warm
                levels[fresh] = self._post_warmup
        if self._steady_calls is not None and not any_fresh:
            # steady state with h | N: chunk 0 always arrives at level N/h − 1, so the call count is a
            # constant of the layout and needs no read of the levels
            calls = self._steady_calls
        else:
            calls = int(levels[:, first].max()) + 1      # until every buffer's chunk 0 is clean
        for _ in range(calls):
            active = (levels[:, first] >= 0)[:, None] & streamed[None, :]
            t_from = timesteps_of(levels, table)
            t_to = timesteps_of((levels - 1).clamp_min(-1), table)
            out = self.backbone(buffer, t_from.clamp_min(0), cond)
            stepped = self._step(buffer, out, t_from.clamp_min(0), t_to, generator)
            buffer = torch.where(active[..., None], stepped, buffer)
            levels = levels - active.long()
        nfe += calls
        actions = self.chunk_from_prediction(buffer)
        buffer, levels = roll_buffer(layout, self.schedule, table, buffer, levels, generator)
        return ChunkResult(actions, nfe, {"buffer": buffer, "levels": levels})

    # --- training -------------------------------------------------------------------------------------
    def sample_training_levels(self, batch_size: int, generator: torch.Generator | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tp) training timesteps and (B,) bool "chunk-wise" flags.

        The first round(fraction·B) samples are chunk-wise: position levels ``start − j`` with one offset
        j ∈ [0, ⌊T/h⌋) per sample (tail held at T − 1); the others get one constant level in [0, T).
        """
        cfg, layout = self.config, self.train_layout
        n_chunk = int(round(cfg.chunkwise_fraction * batch_size))
        chunkwise = torch.arange(batch_size) < n_chunk
        span = cfg.num_train_timesteps // layout.chunks
        offsets = torch.randint(0, span, (batch_size, 1), generator=generator)
        constant = torch.randint(0, cfg.num_train_timesteps, (batch_size, 1), generator=generator)
        start = layout.start_levels()[None, :]
        staggered = torch.where(layout.streamed()[None, :], start - offsets, start)
        levels = torch.where(chunkwise[:, None], staggered, constant.expand(-1, cfg.pred_horizon))
        return levels, chunkwise

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        cfg = self.config
        cond = self.normalize_obs(batch["obs"][:, : cfg.obs_horizon]).flatten(1)
        action = self.normalize_action(batch["action"][:, : cfg.pred_horizon])
        noise = torch.randn(action.shape, generator=generator).to(self.device)
        t, _ = self.sample_training_levels(action.shape[0], generator)
        t = t.to(self.device)
        pred = self.backbone(add_noise(self.schedule, action, noise, t), t, cond)
        target = training_target(self.schedule, action, noise, t, cfg.prediction_type)
        return {"loss": masked_mse(pred, target, batch.get("action_mask"), cfg.pred_horizon)}
