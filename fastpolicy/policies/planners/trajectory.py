"""The Trajectory Diffuser: a causal transformer drafts the plan, a few guided DDIM steps refine it.

A causal transformer (``fastpolicy.nets.transformer``) drafts H−1 future states and returns-to-go from
the context autoregressively with a KV cache — once per observation: the draft is deterministic, so all
candidates share it. Each candidate's copy is noised to level ``refine_start·N`` and refined by
``refine_steps`` deterministic DDIM steps of the state denoiser (inpainting + return guidance, from
:class:`~fastpolicy.policies.planners.state.StatePlanner`); inverse dynamics gives the actions, the
critic picks. ``draft_mode = "one-pass"`` drafts in a single transformer call instead; without
refinement the one draft is planned once (no duplicate candidates) and ``trim_draft`` drafts only the
states the actions read.

Refinement is an inference-time choice: :meth:`TrajectoryDiffuser.with_refinement` returns a view with
another k or starting level over the same weights.

What a plan computes, and why: with one action per plan the inverse dynamics reads only states 0 and 1.
Without refinement (``trim_draft``) only those are drafted. With refinement the whole draft is needed:
the denoiser sees the flattened plan (MLP) or a receptive field covering it (U-Net), so its estimate of
state 1 depends on every later noisy state — refining a truncated plan would be a different model. The
refinement costs one batched denoiser call per step whatever H is; the draft is what scales with H,
which the one-pass mode makes a single call.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fastpolicy.diffusion import add_noise, ddim_ode_step
from fastpolicy.nets.transformer import CausalTransformer
from fastpolicy.policies.modes import policy_view, warn_mutator
from fastpolicy.policies.planner_configs import TrajectoryDiffuserConfig
from fastpolicy.policies.planners.base import PlanOutput
from fastpolicy.policies.planners.state import StatePlanner


class TrajectoryDiffuser(StatePlanner):
    """Trajectory Diffuser: transformer draft (KV cache) → lightly noised → k guided DDIM steps."""

    policy_type = "trajectory-diffuser"
    config_cls = TrajectoryDiffuserConfig

    def __init__(self, config: TrajectoryDiffuserConfig,
                 normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        o = config.obs_dim
        # one-pass: each position's output holds the H−1 following states' offsets from its own state
        out_dim = o + 1 if config.draft_mode == "autoregressive" else (config.pred_horizon - 1) * o
        self.transformer = CausalTransformer(o + 1, out_dim, d_model=config.d_model, n_layers=config.n_layers,
                                             n_heads=config.n_heads, d_ff=config.d_ff,
                                             max_len=config.obs_horizon + config.pred_horizon)
        std = config.draft_offset_std
        # the transformer's offsets are in units of the data's k-step spread (1 where unscaled)
        self.register_buffer("_offset_std", torch.ones(config.pred_horizon - 1, o) if std is None
                             else torch.as_tensor(std, dtype=torch.float32), persistent=False)

    def _set_method(self) -> None:
        cfg = self.config
        self.method = f"trajectory-diffuser-refine{cfg.refine_steps}"

    def with_refinement(self, steps: int | None = None, start: float | None = None) -> TrajectoryDiffuser:
        """This planner refining with k = ``steps`` from level ``start`` (fraction of N), where given: a view
        over the same weights whose config says so (no retraining); this planner is unchanged."""
        view = policy_view(self, **self._refinement_changes(steps, start))
        view._set_method()
        return view

    def set_refinement(self, steps: int | None = None, start: float | None = None) -> TrajectoryDiffuser:
        """Deprecated: changes k and the starting level of this (possibly shared) planner in place; use
        :meth:`with_refinement`."""
        warn_mutator("set_refinement", "with_refinement")
        config = dataclasses.replace(self.config, **self._refinement_changes(steps, start))
        config.validate()
        self.config = config
        self._set_method()
        return self

    @staticmethod
    def _refinement_changes(steps: int | None, start: float | None) -> dict[str, int | float]:
        return {k: v for k, v in (("refine_steps", steps), ("refine_start", start)) if v is not None}

    # --- transformer -----------------------------------------------------------------------------------
    def _decode(self, out: torch.Tensor, prev_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head output → (next state, next return); the state head predicts the increment, in units of
        the data's one-step spread."""
        o = self.config.obs_dim
        return prev_state + out[..., :o] * self._offset_std[0], out[..., o]

    def draft_length(self) -> int:
        """States the plan needs drafted: all H, or with ``trim_draft`` and no refinement only the
        ``action_horizon + 1`` the inverse dynamics reads."""
        cfg = self.config
        return cfg.action_horizon + 1 if cfg.trim_draft and cfg.refine_steps == 0 else cfg.pred_horizon

    def draft(self, obs_n: torch.Tensor, returns: torch.Tensor | None = None,
              use_cache: bool | None = None, length: int | None = None) -> tuple[torch.Tensor, int]:
        """Draft (N, L, obs_dim) of ``length`` states (default H) from context states ``obs_n`` (N, To,
        obs_dim); returns it and the transformer calls spent.

        Position 0 is the current state. Autoregressive: positions 1..L−1 come from L−1 transformer calls,
        one prefill of the context, then one new token per call with the KV cache (``use_cache``) or, as
        the reference does, a full pass over the growing sequence. One-pass: one call over the context.
        """
        cfg = self.config
        length = cfg.pred_horizon if length is None else length
        if not 2 <= length <= cfg.pred_horizon:
            raise ValueError(f"draft length must be in [2, {cfg.pred_horizon}], got {length}")
        use_cache = cfg.kv_cache if use_cache is None else use_cache
        n = obs_n.shape[0]
        if returns is None:
            returns = torch.full((n, obs_n.shape[1]), cfg.conditioning_return, device=obs_n.device)
        tokens = torch.cat([obs_n, returns.unsqueeze(-1)], dim=-1)
        if cfg.draft_mode == "one-pass":
            scaled = self.transformer(tokens)[:, -1].view(n, cfg.pred_horizon - 1, cfg.obs_dim)
            offsets = scaled * self._offset_std
            now = obs_n[:, -1:]
            return torch.cat([now, now + offsets[:, : length - 1]], dim=1), 1
        if use_cache:
            out, cache = self.transformer.prefill(tokens)
        else:
            out = self.transformer(tokens)
        calls = 1
        states = [obs_n[:, -1]]
        nxt_s, nxt_r = self._decode(out[:, -1], states[-1])
        for step in range(length - 1):
            states.append(nxt_s)
            if step == length - 2:
                break
            token = torch.cat([nxt_s, nxt_r.unsqueeze(-1)], dim=-1).unsqueeze(1)
            if use_cache:
                out, cache = self.transformer.step(token, cache)
            else:
                tokens = torch.cat([tokens, token], dim=1)
                out = self.transformer(tokens)
            calls += 1
            nxt_s, nxt_r = self._decode(out[:, -1], states[-1])
        return torch.stack(states, dim=1), calls

    def _transformer_loss(self, obs_n: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        m = self.config.transformer_rows(obs_n.shape[0])
        obs_n, returns = obs_n[:m], returns[:m]
        tokens = torch.cat([obs_n, returns.unsqueeze(-1)], dim=-1)
        if self.config.draft_mode == "one-pass":
            return self._one_pass_loss(obs_n, tokens)
        out = self.transformer(tokens[:, :-1])
        pred_s, pred_r = self._decode(out, obs_n[:, :-1])
        state_err = ((pred_s - obs_n[:, 1:]) / self._offset_std[0]).square().mean()
        return state_err + (pred_r - returns[:, 1:]).square().mean()

    def _one_pass_loss(self, obs_n: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Prefixes of the window predict all the window's later states at once (offsets from the prefix's
        last state, in units of the data's k-step spread); targets past the window's end are masked out.

        Which prefixes (``one_pass_prefixes``): ``context``, the first ``obs_horizon`` — a plan drafts
        from that many tokens, so these are the predictions inference reads; ``every``, all H, the
        longer ones standing for histories a plan never has."""
        m, h, o = obs_n.shape
        p = min(self.config.obs_horizon, h) if self.config.one_pass_prefixes == "context" else h
        scaled = self.transformer(tokens[:, :p]).view(m, p, h - 1, o)               # (B, p, H−1, O)
        later = torch.arange(p, device=obs_n.device)[:, None] + torch.arange(1, h, device=obs_n.device)
        valid = (later < h).to(obs_n.dtype)[None, :, :, None]
        target = (obs_n[:, later.clamp(max=h - 1)] - obs_n[:, :p].unsqueeze(2)) / self._offset_std
        return ((scaled - target).square() * valid).sum() / (valid.sum() * m * o)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        losses, (_, _, obs_n, _, returns) = self._state_losses(batch, generator)
        losses["transformer_loss"] = self._transformer_loss(obs_n, returns)
        return {"loss": sum(losses.values()), **losses}

    # --- refinement ------------------------------------------------------------------------------------
    def refine_levels(self) -> list[int]:
        """Noise levels of the refinement: from ``refine_start·N − 1`` down to −1 (clean), k steps.

        Computed once per setting, not per plan (kept with the setting it was computed for, so a config
        changed by hand still gets its own levels)."""
        cfg = self.config
        key = (cfg.refine_steps, cfg.refine_start, cfg.num_train_timesteps)
        cached = self.__dict__.get("_refine_levels")
        if cached is None or cached[0] != key:
            cached = (key, self._compute_refine_levels())
            self.__dict__["_refine_levels"] = cached
        return list(cached[1])

    def _compute_refine_levels(self) -> list[int]:
        cfg = self.config
        if cfg.refine_steps == 0:
            return []
        n = cfg.num_train_timesteps
        start = min(n - 1, max(0, round(cfg.refine_start * n) - 1))
        levels = np.unique(np.round(np.linspace(start, -1, cfg.refine_steps + 1)).astype(int))[::-1]
        return [int(v) for v in levels]

    def refine(self, draft: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """Noise the draft to the first level (at the sampling temperature ``noise_scale``) and run the
        deterministic guided DDIM steps, inpainting."""
        levels = self.refine_levels()
        if not levels:
            return draft, 0
        state = draft[:, 0]
        n = draft.shape[0]
        cond = self.guidance_cond(state)
        t0 = torch.full((n,), levels[0], dtype=torch.long, device=draft.device)
        noise = self._noise(tuple(draft.shape), generator) * self.config.noise_scale
        noisy = add_noise(self.schedule, draft, noise, t0)
        x = self._inpaint_(noisy, state)
        for t_from, t_to in zip(levels[:-1], levels[1:]):
            tf = torch.full((n,), t_from, dtype=torch.long, device=draft.device)
            tt = torch.full((n,), t_to, dtype=torch.long, device=draft.device)
            out = self.guided_eps(x, tf, state, cond=cond)
            x = ddim_ode_step(self.schedule, x, out, tf, tt, self.config.prediction_type,
                              clip_sample=self.config.clip_sample)
            x = self._inpaint_(x, state)
        return x, len(levels) - 1

    def distinct_candidates(self) -> int:
        """Without refinement every candidate is the same draft: plan it once, no critic needed."""
        return self.config.num_candidates if self.config.refine_steps > 0 else 1

    def _plan(self, obs_n: torch.Tensor, candidates: int, generator: torch.Generator | None) -> PlanOutput:
        # the draft is a deterministic function of the context: draft once per window, not per candidate
        # (candidates differ by the refinement's noise), which divides the transformer's work by C
        draft, t_calls = self.draft(obs_n, length=self.draft_length())
        plans, d_calls = self.refine(draft.repeat_interleave(candidates, dim=0), generator)
        return plans, {"denoiser_calls": d_calls, "transformer_calls": t_calls}



__all__ = ["TrajectoryDiffuser"]
