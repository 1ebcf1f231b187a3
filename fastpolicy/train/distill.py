"""Accelerating a trained teacher: consistency distillation (``fastpolicy distill``) and SDP fine-tuning.

Consistency distillation (Song et al. 2023; Consistency Policy, Prasad et al. 2024; multistep /
segmented: Heek et al. 2024, Hyper-SD TSCD), faithful to the sampler the teacher is *evaluated* with:
the student's grid is that sampler's timesteps (``DistillConfig.teacher_sampler``, default the
teacher's own configured sampler, or an SDP teacher's stream), its noise is scaled by that sampler's
temperature, and every clean estimate is clipped as that sampler clips it. One training step, for a
batch of data x0:

1. draw grid points g per sample (per position for a streaming student) and the lower boundary b of
   g's segment; x_g = α_g·x0 + σ_g·τ·ε (τ: the sampler's temperature);
2. one deterministic teacher step t_g → t_{g−1} *on that grid* — DDIM (1 teacher call; with the
   teacher's clipping it is exactly one step of the teacher's DDIM sampler) or Heun (2 calls);
   a stochastic DDPM sampler is distilled through its ODE (DDIM) on the same grid, since DDPM noise
   would break consistency;
3. target = f_EMA(x̂_{g−1}, t_{g−1}, t_b) with the EMA *target* network (identity when g−1 = b, the
   boundary), prediction = f_θ(x_g, t_g, t_b); loss = pseudo-Huber(prediction − target)
   + ``denoise_weight`` × the teacher's own denoising loss on the student's raw output where the
   student maps to the clean end (bounded: the x0 / v / ε target the teacher was trained on).

The student (``ConsistencyPolicy``) starts from the teacher's weights with a zero-initialised
stop-time embedding (``strict=False`` load: the only missing keys are the stop-time MLP), so at step 0
it *is* the teacher's one-call clean estimate — the baseline every student must beat ("what an
untrained student would do"). The target network starts as the student too. Segmented students are
trained progressively (e.g. k = 4 → 2 → 1), each stage initialised from the previous one; the final
stage is written to ``--out`` itself and the earlier stages to ``--out/stages/seg{k}``, each a
loadable "consistency" checkpoint.

The loop is the one ``Trainer``: ``ConsistencyDistiller`` is an nn.Module whose ``forward`` returns
the loss; the frozen teacher and the EMA target are submodules with ``requires_grad=False`` (saved in
the resume state, so ``--resume`` continues bit for bit), and ``export_state`` makes each checkpoint
hold the student alone.

``student_hidden`` gives a narrower MLP student from a seeded random init instead (cheaper per call;
the exact target makes its fit a regression onto the teacher's sampler output).

``finetune_streaming`` warm-starts a StreamingPolicy (SDP) from a DiffusionPolicy teacher's weights —
same backbone, per-position timesteps — and trains it on the chunk-wise/constant level mix.

Length: the distillation objective (``ConsistencyDistiller``), its staged driver and the SDP fine-tune
share the teacher loading and the run bookkeeping.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastpolicy.diffusion import add_noise, ddim_ode_step, training_target
from fastpolicy.diffusion.samplers import predict_x0_eps
from fastpolicy.diffusion.schedule import broadcast_to_sample
from fastpolicy.policies.consistency import ConsistencyPolicy, ConsistencyPolicyConfig, student_grid
from fastpolicy.policies.diffusion_policy import DiffusionPolicy
from fastpolicy.policies.streaming import StreamingPolicy, StreamLayout, num_chunks, parse_stream
from fastpolicy.train.run_record import read_cost, record_cost, run_is_complete

SOLVERS = ("ddim", "heun")
TARGETS = ("ode", "bootstrap")


@dataclass
class DistillConfig:
    """What the student is distilled for (and how). ``segments`` is one stage's k."""

    teacher_sampler: str | None = None
    """the sampler the teacher is evaluated with (its grid, spacing, temperature); None: the teacher's
    configured ``sampler`` (an SDP teacher: its ``stream``, which must be ``ode:N``)"""
    segments: int = 1
    solver: str = "ddim"
    """teacher step between grid points: ddim (1 teacher call, the sampler's own step) or heun (2 calls)"""
    target: str = "ode"
    """``ode``: the teacher's sampler run from x_g to the segment's boundary (≤ G/k teacher calls; exact);
    ``bootstrap``: one teacher step then the EMA target network (Song et al.'s CD; drifts, see docs)"""
    trajectory_fraction: float = 0.5
    """``ode``: share of each batch whose inputs lie on the teacher's own trajectories from its initial
    noise (the rest: q(x_t | x0) of the data, which the chained re-noising steps meet)"""
    hard_fraction: float = 0.25
    """share of each batch (taken from the trajectory rows) whose observation windows are where the
    teacher's sampler is multimodal — the windows in which two noise draws give the most different
    plans (top 5 % of 8192 data windows): a 1-step student fails closed-loop exactly there"""
    top_fraction: float = 0.25
    """share of each batch at the grid's top (taken from the trajectory rows: the teacher's initial noise),
    the only level a 1-step student is evaluated at; the rest are spread over the grid"""
    target_decay: float = 0.95
    """EMA rate of the target network for ``bootstrap`` (OpenAI's consistency distillation: 0.95)"""
    huber_c: float | None = None
    """pseudo-Huber constant; default 0.00054·sqrt(Tp·A) (iCT)"""
    denoise_weight: float = 0.0
    """weight of the denoising auxiliary loss (the teacher's own loss on the student's raw output)"""
    streaming: bool = False
    """distil a streaming student (per-position segments = chunks) from an SDP teacher"""
    chunkwise_fraction: float = 0.8
    """streaming: share of chunk-wise samples; the rest trains the single-segment warm-up map"""
    student_hidden: int | None = None
    """the student MLP's width; None: the teacher's, warm-started from its weights. A narrower student
    costs less per call, cold and warm — the lever when a 1-call plan's time is mostly its one network
    call — and starts from a seeded random init instead: with the exact ``ode`` target the fit is a
    regression onto the teacher's sampler output, with no bootstrap for a poor start to drift from"""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not 0.0 <= self.hard_fraction <= 1.0:   # used up to trajectory_fraction (its rows carry it)
            raise ValueError(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {self.top_fraction}")
        if not 0.0 <= self.trajectory_fraction <= 1.0:
            raise ValueError(f"trajectory_fraction must be in [0, 1], got {self.trajectory_fraction}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.segments < 1:
            raise ValueError(f"segments must be ≥ 1, got {self.segments}")
        if not 0.0 <= self.target_decay < 1.0:
            raise ValueError(f"target_decay must be in [0, 1), got {self.target_decay}")
        if self.denoise_weight < 0:
            raise ValueError(f"denoise_weight must be ≥ 0, got {self.denoise_weight}")
        if self.student_hidden is not None and self.student_hidden < 1:
            raise ValueError(f"student_hidden must be ≥ 1 (None: the teacher's width), "
                             f"got {self.student_hidden}")
        if self.student_hidden is not None and self.target != "ode":
            raise ValueError("a student of another width starts untrained; it needs the exact target "
                             "(target='ode'), since a bootstrap target would be its own random network")


def evaluated_sampler(teacher: DiffusionPolicy, streaming: bool = False) -> str:
    """The teacher's evaluated sampler as text: its configured sampler, or an SDP's ``ode:N`` stream."""
    if streaming:
        spec = getattr(teacher, "stream_spec", None) or teacher.config.stream
        kind, _ = parse_stream(spec)
        if kind != "ode":
            raise ValueError(f"a streaming student distils the SDP's deterministic stream (ode:N); the "
                             f"teacher streams {spec!r} — pass teacher_sampler='ode:N'")
        return spec
    return teacher.sampler_name


def student_from_teacher(teacher: DiffusionPolicy, teacher_sampler: str | None = None, segments: int = 1,
                         streaming: bool = False, hidden: int | None = None,
                         seed: int = 0) -> ConsistencyPolicy:
    """A ConsistencyPolicy with the teacher's config and weights plus a zero stop-time input.

    Its grid is ``teacher_sampler`` (default: the sampler the teacher is evaluated with). ``hidden``
    other than the teacher's MLP width gives a student of that width from a random init seeded by
    ``seed`` (the teacher's weights do not fit it).
    """
    keep = {f.name for f in dataclasses.fields(ConsistencyPolicyConfig)}
    base = {k: v for k, v in teacher.config_dict().items() if k in keep}
    base["sampler"] = "ddim:10"  # unused by the student; any valid spec
    spec = teacher_sampler or evaluated_sampler(teacher, streaming)
    steps = 1 if streaming else segments
    width = getattr(teacher.backbone, "hidden", None)     # an MLP denoiser's width
    resize = hidden is not None and hidden != width
    if resize:
        if width is None:
            raise ValueError(f"student_hidden resizes an MLP denoiser; the teacher's backbone is "
                             f"{base.get('backbone')!r}")
        base["backbone_kwargs"] = {**(base.get("backbone_kwargs") or {}), "hidden": int(hidden)}
    config = ConsistencyPolicyConfig.from_dict({**base, "teacher_sampler": spec, "segments": segments,
                                                "steps": steps, "streaming": streaming})
    norm = {k: v.clone() for k, v in teacher.normalizer_state().items()}
    if resize:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ConsistencyPolicy(config, norm).to(teacher.device)
    student = ConsistencyPolicy(config, norm)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    bad = [k for k in missing if ".stop_time_embedding." not in k]
    if bad or unexpected:
        raise ValueError(f"teacher weights do not fit the student (missing {bad[:4]}, "
                         f"unexpected {unexpected[:4]})")
    return student.to(teacher.device)


class ConsistencyDistiller(nn.Module):
    """Trainable module for the Trainer: student (trained), teacher (frozen), EMA target (frozen)."""

    policy_type = "consistency"

    def __init__(self, teacher: DiffusionPolicy, student: ConsistencyPolicy, config: DistillConfig) -> None:
        super().__init__()
        self.config = config
        self.student = student
        self.teacher = teacher
        self.target = copy.deepcopy(student.backbone)
        for p in [*self.teacher.parameters(), *self.target.parameters()]:
            p.requires_grad_(False)
        scfg = student.config
        if config.segments != scfg.segments or config.streaming != scfg.streaming:
            raise ValueError(f"distill config (segments {config.segments}, streaming {config.streaming}) "
                             f"does not match the student ({scfg.segments}, {scfg.streaming})")
        if scfg.prediction_type != teacher.config.prediction_type:
            raise ValueError("student and teacher must share the parametrisation")
        self.grid = scfg.grid
        if config.streaming:
            self.layout = StreamLayout(scfg.pred_horizon, scfg.obs_horizon, scfg.action_horizon, self.grid)
            if self.layout.chunks != config.segments:
                raise ValueError(f"streaming distillation needs segments = chunks = {self.layout.chunks}")
        dim = scfg.pred_horizon * scfg.action_dim
        self.huber_c = config.huber_c if config.huber_c is not None else 0.00054 * math.sqrt(dim)
        self.hard_conds: torch.Tensor | None = None

    @torch.no_grad()
    def find_hard_windows(self, dataset: Any, windows: int = 8192, quantile: float = 0.95,
                          seed: int = 0) -> torch.Tensor:
        """Observation windows (as conditions) where two draws of the teacher's sampler disagree most.

        Runs the teacher's sampler twice from independent initial noise on ``windows`` data windows and
        keeps the top ``1 − quantile`` by the squared distance of the two plans: the decision points of a
        multimodal task (on unimodal data it is just the noisiest windows). Deterministic in ``seed``.
        """
        st = self.student
        scfg = st.config
        rng = np.random.default_rng(seed)
        batch = dataset.sample_batch(rng.integers(0, len(dataset), min(windows, len(dataset))))
        cond = st.normalize_obs(batch["obs"][:, : scfg.obs_horizon].to(st.device)).flatten(1)
        gen = torch.Generator().manual_seed(seed)
        n = cond.shape[0]
        shape = (n, scfg.pred_horizon, scfg.action_dim)
        top = torch.full((n, scfg.pred_horizon), self.grid, device=st.device)
        plans = [self.teacher_solve(torch.randn(shape, generator=gen).to(st.device) * st.temperature,
                                    top, torch.zeros_like(top), cond) for _ in range(2)]
        spread = (plans[0] - plans[1]).pow(2).flatten(1).mean(1)
        keep = spread >= torch.quantile(spread, quantile)
        self.hard_conds = cond[keep]
        return self.hard_conds

    # --- what the Trainer saves -----------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return self.student.config_dict()

    def normalizer_state(self) -> dict[str, torch.Tensor]:
        return self.student.normalizer_state()

    def export_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's weights only (the checkpoint is a plain "consistency" policy)."""
        return {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}

    # --- pieces -------------------------------------------------------------------------------------
    def sample_grid(self, batch_size: int,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Tp) grid points g and segment boundaries b ≤ g (g == b: a held position, identity)."""
        cfg, scfg = self.config, self.student.config
        tp, seg_len = scfg.pred_horizon, self.grid // cfg.segments
        if not cfg.streaming:
            n = torch.randint(0, self.grid, (batch_size, 1), generator=generator)
            g, b = n + 1, (n // seg_len) * seg_len
            return g.expand(-1, tp).clone(), b.expand(-1, tp).clone()
        layout = self.layout
        chunk = layout.position_chunks()[None, :]                       # tail → h
        offset = torch.randint(0, seg_len, (batch_size, 1), generator=generator)
        bound = (chunk * seg_len).clamp_max(self.grid)
        g_stream = torch.where(chunk < layout.chunks, bound + offset + 1, bound)
        n = torch.randint(0, self.grid, (batch_size, 1), generator=generator)
        n_chunk = int(round(cfg.chunkwise_fraction * batch_size))
        chunkwise = (torch.arange(batch_size) < n_chunk)[:, None]
        g = torch.where(chunkwise, g_stream, (n + 1).expand(-1, tp))
        b = torch.where(chunkwise, bound.expand(batch_size, -1), torch.zeros_like(g))
        return g, b

    def _net_t(self, t: torch.Tensor) -> torch.Tensor:
        # per-sample times take the cheaper (B,) path of the backbone
        return t if self.config.streaming else t[:, 0]

    def _alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ac = self.teacher.schedule.alphas_cumprod
        abar = torch.where(t < 0, torch.ones((), dtype=ac.dtype, device=ac.device), ac[t.clamp_min(0)])
        abar = broadcast_to_sample(abar.to(like.dtype), like)
        return abar.sqrt(), (1 - abar).sqrt()

    def _teacher_eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.teacher.backbone(x, self._net_t(t.clamp_min(0)), cond)
        a, s = self._alpha_sigma(t, x)
        return predict_x0_eps(x, out, a, s, self.teacher.config.prediction_type)[1]

    @torch.no_grad()
    def teacher_step(self, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
                     cond: torch.Tensor) -> torch.Tensor:
        """One deterministic teacher step per position between grid points (held where t_from == t_to).

        ``ddim``: exactly the teacher's DDIM sampler step (same clipping of the clean estimate).
        """
        tcfg = self.teacher.config
        if self.config.solver == "ddim":
            out = self.teacher.backbone(x, self._net_t(t_from.clamp_min(0)), cond)
            new = ddim_ode_step(self.teacher.schedule, x, out, t_from.clamp_min(0), t_to,
                                tcfg.prediction_type, clip_sample=tcfg.clip_sample)
        else:
            # Heun on the probability-flow ODE in (x/α, σ/α) coordinates, where DDIM is the Euler step
            a1, s1 = self._alpha_sigma(t_from, x)
            a2, s2 = self._alpha_sigma(t_to, x)
            eps1 = self._teacher_eps(x, t_from, cond)
            d_rho = s2 / a2 - s1 / a1
            euler = a2 * (x / a1 + d_rho * eps1)
            eps2 = self._teacher_eps(euler, t_to, cond)
            heun = a2 * (x / a1 + d_rho * 0.5 * (eps1 + eps2))
            new = torch.where(broadcast_to_sample(t_to < 0, x), euler, heun)  # no 2nd call at the clean end
        return torch.where(broadcast_to_sample(t_from == t_to, x), x, new)

    @torch.no_grad()
    def teacher_solve(self, x: torch.Tensor, g: torch.Tensor, b: torch.Tensor,
                      cond: torch.Tensor) -> torch.Tensor:
        """The teacher's own sampler run from grid point g down to the boundary b, per sample/position.

        ``max(g − b)`` batched teacher steps (≤ G/k), each lowering every position still above its
        boundary by one grid point — the exact value the consistency function must take at (x_g, t_g),
        with no bootstrapped target in between.
        """
        if g.numel() == 0:
            return x
        ts = self.student.grid_timesteps()
        level = g.clone()
        for _ in range(int((g - b).max())):
            step_to = torch.maximum(level - 1, b)
            x = self.teacher_step(x, ts[level], ts[step_to], cond)
            level = step_to
        return x

    @torch.no_grad()
    def teacher_trajectory(self, g: torch.Tensor, b: torch.Tensor, cond: torch.Tensor,
                           generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the teacher's sampler from its initial noise (× temperature) over the whole grid.

        Returns, per row, the state at grid point g (the student's input) and at the boundary b (its
        target): the exact inputs the student meets at inference from the top, which q(x_t | x0) of the
        data only approximates (at the top it still carries a trace of x0, the sampler's noise does not).
        """
        st = self.student
        scfg = st.config
        ts = st.grid_timesteps()
        n = cond.shape[0]
        x = torch.randn((n, scfg.pred_horizon, scfg.action_dim), generator=generator).to(st.device)
        x = x * st.temperature
        states = [x]
        for level in range(self.grid, 0, -1):
            x = self.teacher_step(x, ts[level].expand(n, scfg.pred_horizon),
                                  ts[level - 1].expand(n, scfg.pred_horizon), cond)
            states.append(x)
        stack = torch.stack(states[::-1])            # (G+1, n, Tp, A), index = grid point
        rows = torch.arange(n, device=st.device)
        return stack[g, rows], stack[b, rows]

    @torch.no_grad()
    def update_target(self) -> None:
        decay = self.config.target_decay
        for tgt, src in zip(self.target.parameters(), self.student.backbone.parameters()):
            tgt.lerp_(src.detach(), 1.0 - decay)

    def pseudo_huber(self, diff: torch.Tensor) -> torch.Tensor:
        sq = diff.pow(2).flatten(1).sum(1)
        return (torch.sqrt(sq + self.huber_c ** 2) - self.huber_c).mean()

    # --- the loss -------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        # the target follows the student as it was after the previous optimizer step
        self.update_target()
        st = self.student
        scfg = st.config
        cond = st.normalize_obs(batch["obs"][:, : scfg.obs_horizon]).flatten(1)
        x0 = st.normalize_action(batch["action"][:, : scfg.pred_horizon])
        g, b = self.sample_grid(x0.shape[0], generator)
        n_top = 0 if self.config.streaming else int(round(self.config.top_fraction * x0.shape[0]))
        g[:n_top] = self.grid       # rows at the top: the one input a 1-step student is ever given
        b[:n_top] = self.grid - self.grid // self.config.segments
        g, b = g.to(st.device), b.to(st.device)
        ts = st.grid_timesteps()
        noise = torch.randn(x0.shape, generator=generator).to(st.device) * st.temperature
        t_g, t_b = ts[g], ts[b]
        t_prev = ts[torch.maximum(g - 1, b)]
        x_g = add_noise(st.schedule, x0, noise, t_g.clamp_min(0))
        n_traj = 0 if self.config.streaming else int(round(self.config.trajectory_fraction * x0.shape[0]))
        with torch.no_grad():
            if self.config.target == "ode":
                target = self.teacher_solve(x_g[n_traj:], g[n_traj:], b[n_traj:], cond[n_traj:])
                # hard windows replace the observations of trajectory rows only (they need no data x0)
                n_hard = (0 if self.hard_conds is None
                          else min(n_traj, int(round(self.config.hard_fraction * x0.shape[0]))))
                if n_hard:
                    pick = torch.randint(0, len(self.hard_conds), (n_hard,), generator=generator)
                    cond = torch.cat([self.hard_conds[pick.to(self.hard_conds.device)], cond[n_hard:]])
                if n_traj:
                    # rows on the teacher's own trajectories from its initial noise: what inference sees
                    x_traj, t_traj = self.teacher_trajectory(g[:n_traj, 0], b[:n_traj, 0], cond[:n_traj],
                                                             generator)
                    x_g = torch.cat([x_traj, x_g[n_traj:]])
                    target = torch.cat([t_traj, target])
            else:
                x_prev = self.teacher_step(x_g, t_g, t_prev, cond)
                target = st.consistency_fn(x_prev, self._net_t(t_prev), self._net_t(t_b), cond,
                                           backbone=self.target)
        pred, raw = st.consistency_fn(x_g, self._net_t(t_g), self._net_t(t_b), cond, return_raw=True)
        mask = batch.get("action_mask")
        weight = mask[:, : scfg.pred_horizon, None].to(x0.dtype) if mask is not None else 1.0
        loss_cd = self.pseudo_huber((pred - target) * weight)
        out = {"loss": loss_cd, "cd_loss": loss_cd.detach()}
        if self.config.denoise_weight > 0:
            # the teacher's own (bounded) loss on the raw output, where the student maps to the clean end
            goal = training_target(st.schedule, x0, noise, t_g.clamp_min(0), scfg.prediction_type)
            to_clean = broadcast_to_sample(t_b < 0, raw).to(x0.dtype)
            aux = ((raw - goal) * weight * to_clean).pow(2).mean()
            out["loss"] = loss_cd + self.config.denoise_weight * aux
            out["denoise_loss"] = aux.detach()
        return out


# --- drivers --------------------------------------------------------------------------------------

def _fit(module: nn.Module, store_path: str | os.PathLike, run_dir: Path, train_config, resume: bool,
         extra: dict[str, Any], before_seconds: float = 0.0) -> dict[str, float]:
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.train.offline import build_dataset
    from fastpolicy.train.trainer import Trainer

    cfg = module.student.config if isinstance(module, ConsistencyDistiller) else module.config
    dataset = build_dataset(EpisodeStore.open(store_path), cfg.obs_horizon, cfg.pred_horizon,
                            cfg.action_horizon)
    if (isinstance(module, ConsistencyDistiller) and module.config.hard_fraction > 0
            and not module.config.streaming and module.config.target == "ode"):
        module.find_hard_windows(dataset, seed=train_config.seed)
    # a stage directory may exist without a run in it (it holds the earlier stages): nothing to resume
    resume = resume and (run_dir / "latest").exists()
    trainer = Trainer(module, dataset, train_config, run_dir, resume=resume, extra_config=extra)
    t0 = time.perf_counter()
    stats = trainer.fit()
    record_cost(run_dir, time.perf_counter() - t0, trainer.step, before_seconds)
    return stats


def distill(teacher: str | os.PathLike | DiffusionPolicy, store: str | os.PathLike, out: str | os.PathLike,
            segments: tuple[int, ...] | list[int] = (1,), train_config=None, resume: bool = False,
            distill_config: DistillConfig | None = None) -> ConsistencyPolicy:
    """Distil ``teacher`` (checkpoint/run path or policy) into a consistency student, stage by stage.

    ``segments`` lists the stages (e.g. ``(8, 4, 2, 1)``); each stage starts from the previous student.
    With ``distill_config.streaming`` the teacher must be a StreamingPolicy and ``segments`` its chunks.
    Returns the final student (EMA weights, loaded from its checkpoint).
    """
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.trainer import TrainConfig

    train_config = train_config or TrainConfig(steps=1000, batch_size=64, warmup_steps=50)
    base = distill_config or DistillConfig()
    segments = [int(k) for k in segments]
    if not segments:
        raise ValueError("segments must name at least one stage")
    teacher_path = None
    if not isinstance(teacher, DiffusionPolicy):
        teacher_path = str(teacher)
        teacher = load_policy(teacher)
    if not isinstance(teacher, DiffusionPolicy) or isinstance(teacher, ConsistencyPolicy):
        raise ValueError(f"the teacher must be a diffusion or streaming policy, got {type(teacher).__name__}")
    if base.streaming and not isinstance(teacher, StreamingPolicy):
        raise ValueError("streaming distillation needs a StreamingPolicy (SDP) teacher: per-position levels")
    if base.streaming:
        h = num_chunks(teacher.config.pred_horizon, teacher.config.obs_horizon, teacher.config.action_horizon)
        if segments != [h]:
            raise ValueError(f"a streaming student has one segment per chunk: --segments {h}")
    teacher = teacher.eval()
    base = dataclasses.replace(base, teacher_sampler=base.teacher_sampler
                               or evaluated_sampler(teacher, base.streaming))
    grid = len(student_grid(base.teacher_sampler, teacher.config.num_train_timesteps, base.streaming)) - 1
    if base.target == "ode" and grid > 20:
        import warnings

        warnings.warn(f"distilling {base.teacher_sampler!r}: the exact target runs up to {grid} teacher "
                      "calls per training batch; if the teacher is as good with fewer steps (e.g. 'ddim:10', "
                      "compare with `fastpolicy eval --sampler`), pass that as the teacher sampler",
                      UserWarning, stacklevel=2)
    out = Path(out)
    prev: ConsistencyPolicy | None = None
    prev_seconds = 0.0
    for i, k in enumerate(segments):
        dcfg = dataclasses.replace(base, segments=k)
        run_dir = out if i == len(segments) - 1 else out / "stages" / f"seg{k}"
        if resume:
            _refuse_other_recipe(run_dir, dcfg)
        if resume and run_is_complete(run_dir, train_config.steps):
            prev = load_policy(run_dir)
            prev_seconds = float((read_cost(run_dir) or {}).get("total_seconds", prev_seconds))
            continue
        student = student_from_teacher(teacher, dcfg.teacher_sampler, k, dcfg.streaming,
                                       hidden=dcfg.student_hidden, seed=train_config.seed)
        if prev is not None:  # progressive: the previous stage's (EMA) student, re-targeted to k segments
            student.backbone.load_state_dict(prev.backbone.state_dict())
        module = ConsistencyDistiller(teacher, student, dcfg)
        extra = {"store": str(store), "teacher": teacher_path, "distill": dataclasses.asdict(dcfg),
                 "stages": segments, "stage": i}
        _fit(module, store, run_dir, train_config, resume, extra, before_seconds=prev_seconds)
        prev = load_policy(run_dir)
        prev_seconds = float((read_cost(run_dir) or {}).get("total_seconds", prev_seconds))
    assert prev is not None
    return prev


def _refuse_other_recipe(run_dir: Path, dcfg: DistillConfig) -> None:
    """A run directory reused or resumed must hold a student of the same recipe (width included):
    reusing one distilled otherwise would report its numbers under the new settings."""
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    try:
        saved = read_config(resolve_checkpoint(run_dir)).get("train", {}).get("distill")
    except (FileNotFoundError, ValueError):
        return
    if not isinstance(saved, dict):
        return
    defaults = dataclasses.asdict(DistillConfig())   # keys an older run did not record had these values
    differ = {k: (saved.get(k, defaults[k]), v) for k, v in dataclasses.asdict(dcfg).items()
              if saved.get(k, defaults[k]) != v}
    if differ:
        raise ValueError(f"{run_dir} holds a student distilled with other settings (saved, asked): {differ}; "
                         "distil into another directory or remove that one")


def finetune_streaming(teacher: str | os.PathLike | DiffusionPolicy, store: str | os.PathLike,
                       out: str | os.PathLike, train_config=None, resume: bool = False,
                       options: dict[str, Any] | None = None) -> StreamingPolicy:
    """Train an SDP network warm-started from a DiffusionPolicy teacher (same backbone weights).

    ``options`` override the streaming config (default: the teacher's config with Ta = 4, i.e. h = 3
    chunks for To = 2, Tp = 16). Returns the trained policy (EMA weights, from its checkpoint).
    """
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.policies.streaming import StreamingPolicyConfig
    from fastpolicy.train.trainer import TrainConfig

    train_config = train_config or TrainConfig(steps=1000, batch_size=64, warmup_steps=50)
    if not isinstance(teacher, DiffusionPolicy):
        teacher = load_policy(teacher)
    keep = {f.name for f in dataclasses.fields(StreamingPolicyConfig)}
    config = {k: v for k, v in teacher.config_dict().items() if k in keep}
    config.update({"action_horizon": 4, **(options or {})})
    if config.get("backbone") == "mlp":   # the buffer holds one level per position
        config["backbone_kwargs"] = {**config.get("backbone_kwargs", {}), "per_position_time": True}
    norm = {k: v.clone() for k, v in teacher.normalizer_state().items()}
    policy = StreamingPolicy.from_config(config, norm)
    if hasattr(policy.backbone, "load_per_sample_weights"):
        policy.backbone.load_per_sample_weights(teacher.backbone.state_dict())
    else:
        policy.backbone.load_state_dict(teacher.backbone.state_dict())
    out = Path(out)
    if not (resume and run_is_complete(out, train_config.steps)):
        _fit(policy, store, out, train_config, resume, {"store": str(store), "warm_start": "teacher"})
    return load_policy(out)
