"""Configurations of the diffusion planners (:mod:`fastpolicy.policies.planners`): typed, validated data.

Kept apart from the modeling code, as LeRobot splits configuration from modeling, so every option a
planner has — and why it has its default — reads in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from fastpolicy.diffusion import SamplerSpec
from fastpolicy.diffusion.samplers import PREDICTION_TYPES
from fastpolicy.policies.torch_policy import PolicyConfig

DRAFT_MODES: tuple[str, ...] = ("autoregressive", "one-pass")
"""how the Trajectory Diffuser's transformer drafts (``TrajectoryDiffuserConfig.draft_mode``)"""
ONE_PASS_PREFIXES: tuple[str, ...] = ("context", "every")
"""which window prefixes a one-pass draft head trains on (``TrajectoryDiffuserConfig.one_pass_prefixes``)"""


@dataclass
class PlannerConfig(PolicyConfig):
    """What every planner shares. ``pred_horizon`` is the planning horizon H (position 0 = now)."""

    obs_horizon: int = 1
    pred_horizon: int = 16
    action_horizon: int = 1
    backbone: str = "mlp"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    num_train_timesteps: int = 20
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    prediction_type: str = "sample"
    """what the denoiser predicts: the clean plan (``sample``, the Diffuser reference's
    ``predict_epsilon: False``; measured: Diffuser on hopper-medium 10 → 66, Decision Diffuser on
    maze2d-umaze 45 → 152 against ``epsilon``), ``epsilon`` or ``v_prediction``"""
    sampler: str = "ddpm:20"
    """how plans are sampled from noise (Diffuser and Decision Diffuser)"""
    obs_cond: bool = True
    """FiLM-condition the denoiser on the current normalised state (in addition to inpainting)"""
    num_candidates: int = 1
    """plans sampled per control step; the critic picks one when > 1"""
    noise_scale: float = 1.0
    """sampling temperature: the starting noise and every ancestral step's noise are scaled by it (the
    Decision Diffuser samples at 0.5, Diffuser at 1)"""
    discount: float = 0.99
    return_scale: float = 1.0
    """normalised return = discounted return-to-go × return_scale (set from the data by train_planner)"""
    return_max: float = 1.0
    """the data's largest normalised discounted return-to-go (set by train_planner; 1 when return_scale is
    fitted): the anchor of the rule that fixes the conditioning return in advance"""
    critic_hidden: int = 256
    critic_depth: int = 2

    def validate(self) -> None:
        super().validate()
        if self.pred_horizon < 2:
            raise ValueError(f"a plan needs pred_horizon >= 2 (now and next), got {self.pred_horizon}")
        if self.action_horizon > self.pred_horizon - 1:
            raise ValueError(f"action_horizon {self.action_horizon} needs {self.action_horizon + 1} planned "
                             f"states, more than pred_horizon {self.pred_horizon}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {self.prediction_type!r}")
        if not 0.0 < self.noise_scale <= 1.0:
            raise ValueError(f"noise_scale must be in (0, 1], got {self.noise_scale}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        spec = SamplerSpec.parse(self.sampler)
        if spec.steps > self.num_train_timesteps:
            raise ValueError(f"sampler {self.sampler} has more steps than num_train_timesteps "
                             f"{self.num_train_timesteps}")


@dataclass
class DiffuserConfig(PlannerConfig):
    """Diffuser: 20 diffusion steps, sampled in full (Janner et al. use 20 for locomotion). Value guidance
    is off by default, so unguided Diffusers keep their plans, networks and checkpoints unchanged."""

    value_guidance: bool = False
    """train a value function V(x_t, t) on noised plans beside the denoiser, push every reverse step along
    its gradient and pick the candidate of highest value instead of the critic's choice (the reference
    guides 64 candidates: ``num_candidates = 64``); see :mod:`fastpolicy.policies.value_guidance`"""
    guide_scale: float = 0.1
    """the reference's ``scale``: step size of each push, × the posterior variance (0: sort only)"""
    n_guide_steps: int = 2
    """gradient pushes per reverse step (reference 2)"""
    t_stopgrad: int = 2
    """no guidance at training levels below this (reference 2: near the data the gradient is noise)"""
    value_hidden: int = 256
    value_depth: int = 2

    def validate(self) -> None:
        super().validate()
        if self.guide_scale < 0 or self.n_guide_steps < 0 or self.t_stopgrad < 0:
            raise ValueError("guide_scale, n_guide_steps and t_stopgrad must be >= 0, got "
                             f"{self.guide_scale}, {self.n_guide_steps}, {self.t_stopgrad}")


@dataclass
class StatePlannerConfig(PlannerConfig):
    """State-trajectory planners with return guidance and inverse dynamics (Decision Diffuser)."""

    num_train_timesteps: int = 200
    """Decision Diffuser's reference setting (Ajay et al.: 200 levels, sampled in full)"""
    sampler: str = "ddpm:200"
    noise_scale: float = 0.5
    """low-temperature sampling, as in the Decision Diffuser's reference code (x_T and each step's noise
    × 0.5)"""
    guidance_weight: float = 1.2
    cond_dropout: float = 0.25
    """probability that training drops the return condition (the reference's 0.25): it trains the
    unconditional model that classifier-free guidance subtracts"""
    target_return: float | None = None
    """the normalised return plans are conditioned on; None: the rule below, fixed before any evaluation
    (a value tuned on test episodes would flatter the planner)"""
    target_return_multiple: float = 1.1
    """rule: target = this × ``return_max`` (on its magnitude when negative). The Decision Diffuser
    conditions above the data's maximum (0.9 × a per-task ``returns_scale`` chosen above the largest
    return, about 1.1 × it on hopper); the former fixed 0.7 was the 24th percentile of hopper-medium's
    returns-to-go"""
    idm_hidden: int = 256
    idm_depth: int = 2

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.target_return_multiple <= 0:
            raise ValueError(f"target_return_multiple must be > 0, got {self.target_return_multiple}")

    @property
    def conditioning_return(self) -> float:
        """The normalised return plans are conditioned on: ``target_return`` or the fixed rule."""
        if self.target_return is not None:
            return float(self.target_return)
        # on the magnitude, so a multiple > 1 lands above the maximum whatever its sign
        return self.return_max + (self.target_return_multiple - 1.0) * abs(self.return_max)


@dataclass
class TrajectoryDiffuserConfig(StatePlannerConfig):
    """Transformer draft + few-step refinement; transformer sizes follow the reference."""

    prediction_type: str = "v_prediction"
    """v, not the clean plan, for the TD's denoiser: it only refines a draft from low noise, where an
    x0-predicting network's estimate is its own reconstruction error while v's, α·x_t − σ·v̂, keeps the
    input as σ → 0 (Salimans & Ho 2022). Measured on maze2d-medium (one-pass TD, seed 1, 2048 data windows,
    ``bench/diag_td_draft.py``): after one step from level 3 the x0 denoiser's next state missed by 1.9–2.8 ×
    a one-step move at every start level down to 0 (action RMSE 0.69 against the draft's 0.59), the v
    denoiser's kept it (0.61; 0.60 from level 0); closed loop on env seeds 555000–555007, 72.0 → 120.3.
    The Diffuser and the Decision Diffuser sample from pure noise and keep ``sample``."""
    num_candidates: int = 16
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    transformer_batch: int | None = None
    """rows of each training batch the transformer trains on; ``None``: every row where it reads only the
    context (one-pass with ``context`` prefixes: ``obs_horizon`` tokens per row), 32 where it reads the whole
    window (autoregressive, or one-pass with ``every`` prefix: H tokens per row, most of a step's cost)"""
    refine_steps: int = 1
    """k: DDIM steps of the refinement (0: use the draft as it is)"""
    refine_start: float = 0.02
    """noise level the draft is lifted to, as a fraction of num_train_timesteps. The defaults (k = 1 from
    level 3 of 200) come from the maze2d-umaze ablation at CPU training budgets (bench/bench_planners.py):
    the draft, which predicts state increments, is more precise step to step than the MLP denoiser, and
    deeper refinement (k ≥ 2 or higher levels) cost most of the score; the reference refines from level 5
    of a 100-level chain."""
    kv_cache: bool = True
    draft_mode: str = "autoregressive"
    """``autoregressive``: H−1 transformer calls, one state each (KV-cached with ``kv_cache``), as the
    reference drafts; ``one-pass``: a single call over the context whose last output holds every future
    state (a non-autoregressive head, trained on the prefixes ``one_pass_prefixes`` names)"""
    one_pass_prefixes: str = "context"
    """which prefixes of the window the one-pass head learns from: ``context``, the first ``obs_horizon``
    (a plan drafts from that many tokens: the only outputs inference reads), or ``every`` prefix (runs
    trained before 2026-12-07). Why: with To = 1, ``every`` spent 15 of 16 predictions on histories no plan
    has and, at H tokens per row, trained on 32 rows of the 128; ``context`` trains the one prediction on
    all 128 and a step costs less. Measured on maze2d-medium (3 seeds, the planners protocol's 8k steps ×
    128, ``bench/diag_td_draft.py``): the draft's action RMSE 0.59–0.60 → 0.51 (BC's regression
    0.51–0.52), its velocity-change R² 0.28–0.31 → 0.47–0.49. In closed loop (validation seeds
    100–102 × 4, return target 1.1×) the seeds moved apart: TD 82.4 / 88.6 / 80.3 → 99.6 / 97.4 / 45.8,
    draft 92.9 / 91.8 / 90.9 → 109.0 / 95.6 / 79.2 (seed 2 now does best at 0.5×: TD 97.0, draft 109.0)."""
    trim_draft: bool = False
    """with ``refine_steps = 0`` (the draft is the plan), draft only the ``action_horizon + 1`` states the
    inverse dynamics reads (Ta transformer calls instead of H−1); plans are then that long"""
    draft_offset_std: list[list[float]] | None = None
    """(H−1, obs_dim): the data's standard deviation of the k-step offsets s_{t+k} − s_t of the normalised
    states, k = 1..H−1 (set from the data by ``train_planner``; ``None``: offsets unscaled, as runs trained
    before it). The transformer predicts offsets in these units, so its loss weighs every future step and
    dimension by its own spread. Why: the inverse dynamics reads the action off the one-step velocity
    change, 3 % of the velocity's normalised range on maze2d, which the unscaled loss left under the
    position and goal errors — the maze2d-medium drafts explained under 20 % of its variance (BC's action
    regression explains 48 % of the action's)."""

    def validate(self) -> None:
        super().validate()
        if self.draft_mode not in DRAFT_MODES:
            raise ValueError(f"draft_mode must be one of {', '.join(DRAFT_MODES)}, got {self.draft_mode!r}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if self.refine_steps and not 0.0 < self.refine_start <= 1.0:
            raise ValueError(f"refine_start must be in (0, 1], got {self.refine_start}")
        if self.transformer_batch is not None and self.transformer_batch < 1:
            raise ValueError(f"transformer_batch must be >= 1 or None, got {self.transformer_batch}")
        if self.one_pass_prefixes not in ONE_PASS_PREFIXES:
            raise ValueError(f"one_pass_prefixes must be one of {', '.join(ONE_PASS_PREFIXES)}, "
                             f"got {self.one_pass_prefixes!r}")
        if self.draft_offset_std is not None:
            std = np.asarray(self.draft_offset_std, dtype=np.float64)
            if std.shape != (self.pred_horizon - 1, self.obs_dim):
                raise ValueError(f"draft_offset_std must be (pred_horizon − 1, obs_dim) = "
                                 f"({self.pred_horizon - 1}, {self.obs_dim}), got {std.shape}")
            if not np.all(std > 0):
                raise ValueError("draft_offset_std must be positive everywhere")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrajectoryDiffuserConfig:
        """A stored config that has every field but ``one_pass_prefixes`` was written before that field
        existed, by a run that trained every prefix: it is read as such (``every``), not as the default."""
        missing = {f.name for f in fields(cls)} - set(d)
        if missing == {"one_pass_prefixes"}:
            d = {**d, "one_pass_prefixes": "every"}
        return super().from_dict(d)

    def transformer_rows(self, batch_size: int) -> int:
        """Rows of a ``batch_size`` training batch the transformer trains on (``transformer_batch``, or its
        default: all of them for a context-only one-pass head, else 32)."""
        rows = self.transformer_batch
        if rows is None:
            rows = batch_size if self.draft_mode == "one-pass" and self.one_pass_prefixes == "context" else 32
        return min(rows, batch_size)


__all__ = ["DRAFT_MODES", "ONE_PASS_PREFIXES", "DiffuserConfig", "PlannerConfig", "StatePlannerConfig",
           "TrajectoryDiffuserConfig"]
