"""Fitting an inverse-dynamics model on the one ``Trainer``: per-member batches, best-on-validation weights.

The model and its checkpoint format are :mod:`fastpolicy.nets.inverse_dynamics`; this module trains it.
:class:`InverseDynamicsFit` is the training wrapper the :class:`~fastpolicy.train.trainer.Trainer` runs:

* one Trainer batch of ``ensemble × batch_size`` transitions is split into one batch per member, so the
  members see independent data as well as independent initialisations (the loss is their sum, and AdamW
  is elementwise: one optimizer over all members equals one optimizer per member);
* every ``eval_every`` steps ``after_step`` scores each member on the held-out *episodes* and copies a
  member's weights into its frozen ``best`` slot when it improves — frozen, so neither optimised nor
  averaged; buffers, so a resumed run restores them and the loss history exactly;
* ``export_state`` puts the best members into the checkpoint, so ``load_inverse_dynamics(run)`` loads
  what validation chose, and ``checkpoint_extra`` writes the fit report next to it.

The run is an ordinary training run: checkpoints, exact resume (tested bit for bit), progress bar.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastpolicy.nets.inverse_dynamics import (
    POLICY_TYPE,
    InverseDynamics,
    InverseDynamicsConfig,
    transition_windows,
)


@dataclass
class IDMTrainConfig:
    """How an inverse-dynamics model is fitted."""

    steps: int = 4000
    """optimizer steps per member"""
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.1
    """fraction of labeled episodes held out for validation / best-checkpoint selection"""
    eval_every: int = 100
    cosine: bool = True
    """cosine-decay the learning rate to 0 over ``steps`` (sharper optimum for the same budget)"""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IDMTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def trainer_config(self, ensemble: int, progress: bool = False) -> Any:
        """The shared loop's settings: no warm-up, no EMA, torch's AdamW β₁ 0.9, all members per batch."""
        from fastpolicy.train.config import TrainConfig

        return TrainConfig(steps=self.steps, batch_size=self.batch_size * ensemble, lr=self.lr,
                           lr_schedule="cosine" if self.cosine else "constant",
                           weight_decay=self.weight_decay,
                           adam_beta1=0.9, warmup_steps=0, ema=False, log_every=max(1, self.eval_every),
                           checkpoint_every=max(self.eval_every, self.steps // 4), keep_checkpoints=2,
                           seed=self.seed, device="cpu", progress=progress, tensorboard=False)


@dataclass
class IDMFitReport:
    """What training did: per member, the step it kept and its validation loss there."""

    best_step: list[int]
    best_val_loss: list[float]
    train_transitions: int
    val_transitions: int
    train_episodes: list[int]
    val_episodes: list[int]
    history: list[dict[str, float]]
    """(step, member, train_loss, val_loss) every eval_every steps"""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Split:
    """Transition windows split by whole episodes (no near-duplicate neighbouring steps leak across)."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    train_episodes: list[int]
    val_episodes: list[int]

    def sample_batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {"states": self.x_tr[idx], "action": self.y_tr[idx]}

    def __len__(self) -> int:
        return len(self.x_tr)


def _validation_episodes(candidates: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    n_val = min(int(round(len(candidates) * fraction)), len(candidates) - 1)
    if fraction > 0 and n_val == 0 and len(candidates) >= 2:
        n_val = 1
    return np.sort(np.random.default_rng(seed).choice(candidates, size=max(n_val, 0), replace=False))


def _split(obs: np.ndarray, action: np.ndarray, ends: np.ndarray, config: InverseDynamicsConfig,
           train: IDMTrainConfig, known: np.ndarray, next_obs: np.ndarray | None) -> _Split:
    windows, has_next = transition_windows(obs, ends, config.history, next_obs)
    usable = known & has_next
    if not usable.any():
        raise ValueError("no transition has both a known action and a next state; "
                         "cannot train inverse dynamics")
    episode = np.repeat(np.arange(len(ends)), np.diff(ends, prepend=0))
    labeled_eps = np.unique(episode[usable])
    val_eps = _validation_episodes(labeled_eps, train.val_fraction, train.seed)
    is_val = np.isin(episode, val_eps)
    tr_idx = np.flatnonzero(usable & ~is_val)
    va_idx = np.flatnonzero(usable & is_val)
    return _Split(torch.from_numpy(windows[tr_idx]), torch.from_numpy(action[tr_idx]),
                  torch.from_numpy(windows[va_idx]), torch.from_numpy(action[va_idx]),
                  np.setdiff1d(labeled_eps, val_eps).tolist(), val_eps.tolist())


class InverseDynamicsFit(nn.Module):
    """The Trainer's view of an inverse-dynamics fit: loss over per-member batches, validation after
    steps, the best members exported (see the module docstring)."""

    policy_type = POLICY_TYPE

    def __init__(self, model: InverseDynamics, split: _Split, train: IDMTrainConfig) -> None:
        super().__init__()
        self.model, self.split, self.train_config = model, split, train
        ensemble = model.config.ensemble
        self.best = copy.deepcopy(model.members).requires_grad_(False)
        n_evals = -(-train.steps // train.eval_every) + 1
        self.register_buffer("best_loss", torch.full((ensemble,), math.inf, dtype=torch.float64))
        self.register_buffer("best_step", torch.zeros(ensemble, dtype=torch.long))
        # rows (step, member, train_loss, val_loss); NaN rows are not written yet
        self.register_buffer("history", torch.full((n_evals * ensemble, 4), math.nan, dtype=torch.float64))
        self.register_buffer("last_losses", torch.full((ensemble,), math.nan, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        # a run resumed with more steps has room for more evaluations: keep the rows written so far
        key = prefix + "history"
        if key in state_dict and state_dict[key].shape != self.history.shape:
            old = state_dict[key]
            rows = old[torch.isfinite(old[:, 0])]
            state_dict[key] = torch.full_like(self.history, math.nan)
            state_dict[key][:len(rows)] = rows
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- what the Trainer calls -------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        e = self.model.config.ensemble
        states = batch["states"].view(e, -1, *batch["states"].shape[1:])
        action = batch["action"].view(e, -1, batch["action"].shape[-1])
        losses = torch.cat([self.model.member_losses(states[m], action[m], member=m) for m in range(e)])
        self.last_losses.copy_(losses.detach())
        return {"loss": losses.sum()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        train = self.train_config
        if step % train.eval_every and step != train.steps:
            return
        val = self._val_losses()
        e = self.model.config.ensemble
        row = int(torch.isfinite(self.history[:, 0]).sum())
        for m in range(e):
            self.history[row + m] = torch.tensor([step, m, float(self.last_losses[m]), val[m]],
                                                 dtype=torch.float64)
            score = val[m] if len(self.split.x_va) else -step   # no validation set: keep the last weights
            if score < self.best_loss[m]:
                self.best_loss[m], self.best_step[m] = score, step
                self.best[m].load_state_dict(self.model.members[m].state_dict())
        if step == train.steps and self.model.config.loss == "mse":
            self._set_mse_std()

    def export_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's weights with each member at its best validation step."""
        out = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        for k, v in state.items():
            if k.startswith("best."):
                out["members." + k[len("best."):]] = v
        return out

    def config_dict(self) -> dict[str, Any]:
        return self.model.config.to_dict()

    def normalizer_state(self) -> dict[str, torch.Tensor]:
        return self.model.normalizer_state()

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"inverse_dynamics": {"fit": self.report().to_dict()}}

    # --- results ------------------------------------------------------------------------------------
    def best_model(self) -> InverseDynamics:
        """A copy of the model with the best members, in eval mode."""
        model = copy.deepcopy(self.model)
        for m, member in enumerate(model.members):
            member.load_state_dict(self.best[m].state_dict())
        return model.eval()

    def report(self) -> IDMFitReport:
        has_val = len(self.split.x_va) > 0
        rows = self.history[torch.isfinite(self.history[:, 0])].tolist()
        return IDMFitReport(
            best_step=[int(s) for s in self.best_step],
            best_val_loss=[float(v) if has_val else math.nan for v in self.best_loss],
            train_transitions=len(self.split.x_tr), val_transitions=len(self.split.x_va),
            train_episodes=self.split.train_episodes, val_episodes=self.split.val_episodes,
            history=[{"step": int(s), "member": int(m), "train_loss": tl, "val_loss": vl}
                     for s, m, tl, vl in rows])

    def _val_losses(self) -> list[float]:
        x_va, y_va = self.split.x_va, self.split.y_va
        if not len(x_va):
            return [math.nan] * self.model.config.ensemble
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            out = [self.model.member_losses(x_va[i:i + 8192], y_va[i:i + 8192]) * len(x_va[i:i + 8192])
                   for i in range(0, len(x_va), 8192)]
        self.model.train(was_training)
        return (torch.stack(out).sum(0) / len(x_va)).tolist()

    def _set_mse_std(self) -> None:
        """MSE members have no variance head: their std is the best weights' RMSE per action dimension
        on validation (on training data without a validation set)."""
        split = self.split
        ref_x, ref_y = (split.x_va, split.y_va) if len(split.x_va) else (split.x_tr, split.y_tr)
        with torch.inference_mode():
            means, _ = self.best_model()(ref_x)
        self.model.config.mse_std = (means - ref_y).square().mean(1).sqrt().tolist()


def fit_inverse_dynamics(obs: np.ndarray, action: np.ndarray, episode_ends: np.ndarray,
                         config: InverseDynamicsConfig, train: IDMTrainConfig | None = None,
                         action_mask: np.ndarray | None = None, next_obs: np.ndarray | None = None,
                         progress: bool = False, run_dir: str | os.PathLike | None = None,
                         resume: bool = False) -> tuple[InverseDynamics, IDMFitReport]:
    """Train an inverse-dynamics model on the transitions with a known action and a next state.

    Validation holds out ``val_fraction`` of the labeled episodes (whole episodes); each member keeps
    the weights of its lowest validation loss (without a validation set: its last weights). Training is
    a :class:`~fastpolicy.train.trainer.Trainer` run in ``run_dir`` (a temporary directory when None;
    ``resume`` continues one there). Returns the model in eval mode and a report.
    """
    from fastpolicy.train.trainer import Trainer

    train = train or IDMTrainConfig()
    obs = np.asarray(obs, dtype=np.float32)
    action = np.asarray(action, dtype=np.float32)
    ends = np.asarray(episode_ends, dtype=np.int64)
    if obs.ndim != 2 or action.ndim != 2 or len(obs) != len(action):
        raise ValueError(f"obs (T, obs_dim) and action (T, action_dim) must share T; got {obs.shape}, "
                         f"{action.shape}")
    if (obs.shape[1], action.shape[1]) != (config.obs_dim, config.action_dim):
        raise ValueError(f"data dims (obs {obs.shape[1]}, action {action.shape[1]}) do not match the config "
                         f"(obs {config.obs_dim}, action {config.action_dim})")
    known = np.ones(len(obs), bool) if action_mask is None else np.asarray(action_mask, dtype=bool)
    split = _split(obs, action, ends, config, train, known, next_obs)
    torch.manual_seed(train.seed)
    fit = InverseDynamicsFit(InverseDynamics.from_data(config, obs[known], action[known]), split, train)
    with tempfile.TemporaryDirectory(prefix="idm-") if run_dir is None else nullcontext(run_dir) as run:
        Trainer(fit, split, train.trainer_config(config.ensemble, progress), Path(run), resume=resume).fit()
    return fit.best_model(), fit.report()

