"""Inverse dynamics: the action that led from a short state history to the next state.

One implementation for two users:

* **proxy labeling** (SS-ORL, Zheng et al. 2023): a Gaussian head on ``[s_{t-k}, …, s_t, s_{t+1}]``
  (``history = k = 1`` by default) trained by negative log-likelihood on the labeled transitions labels
  the action-free ones with its mean (clipped to the action range) and reports its std;
* **planners** (Decision Diffuser / Trajectory Diffuser): ``history = 0`` gives the plain
  ``[s_t, s_{t+1}] → a_t`` model that turns a planned state sequence into actions.

Pieces:

``InverseDynamicsConfig``  typed config (JSON-able, saved with the weights).
``InverseDynamics``        the ``nn.Module``: ``forward(states) -> (mean, std)`` per ensemble member in raw
                           action units, ``predict(states)`` (ensemble mixture, clipped mean),
                           ``loss(states, action)`` (NLL or MSE). ``states`` is ``(B, k+2, obs_dim)``:
                           the k+1 states up to ``s_t`` followed by ``s_{t+1}``, raw (unnormalised).
``transition_windows``     builds those windows from concatenated episodes (edge-padded history; the
                           last step of an episode has no next state unless ``next_obs`` is given).
``fit_inverse_dynamics``   (in ``fastpolicy.train.inverse_dynamics``, on the shared ``Trainer``) trains
                           on arrays: episode-level validation hold-out (10%), best weights on validation
                           loss, per ensemble member.
``save_inverse_dynamics`` / ``load_inverse_dynamics``   safetensors + ``config.json`` through
                           ``fastpolicy.utils.checkpoint`` (no pickle); the model hash is the hash of the
                           weights file, as for policies.

Normalisation: observations and actions are standardised (``gaussian`` normalisers) with statistics
fitted on the labeled data only and stored next to the weights; the network works in normalised
units and every public output is in raw units.

Ensemble: members share nothing but the data; each sees its own random batches and keeps its own best
checkpoint. The prediction is the Gaussian-mixture moment match: mean of the means, total variance =
mean of (σᵢ² + μᵢ²) − μ̄². In MSE mode a member has no variance head; its std is its validation
RMSE per action dimension (a calibrated homoscedastic estimate), so ``std`` is always meaningful.

A planner that trains its IDM jointly with its diffusion model calls :meth:`InverseDynamics.loss`
from its own ``forward``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastpolicy.nets.mlp import MLP

LOSSES = ("nll", "mse")
POLICY_TYPE = "inverse-dynamics"
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class InverseDynamicsConfig:
    """Shapes and head of an inverse-dynamics model."""

    obs_dim: int
    action_dim: int
    history: int = 1
    """k: states s_{t-k} … s_t before s_{t+1} (0 = the plain [s_t, s_{t+1}] model)"""
    hidden: int = 512
    depth: int = 2
    activation: str = "relu"
    dropout: float = 0.0
    ensemble: int = 1
    """number of independently trained members"""
    loss: str = "nll"
    """nll: Gaussian head (mean, log-std); mse: mean only"""
    min_log_std: float = -7.0
    max_log_std: float = 1.0
    """bounds of the predicted log-std in normalised action units (soft-clamped)"""
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    """labels are clipped to [action_low, action_high] (per dim); None: no clipping"""
    mse_std: list[list[float]] = field(default_factory=list)
    """MSE mode: per member, per action dim validation RMSE (raw units), set by training"""

    def __post_init__(self) -> None:
        for name in ("obs_dim", "action_dim", "hidden", "depth", "ensemble"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"InverseDynamicsConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.history) < 0:
            raise ValueError(f"history must be >= 0, got {self.history}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.min_log_std >= self.max_log_std:
            raise ValueError("min_log_std must be below max_log_std")
        for name in ("action_low", "action_high"):
            value = getattr(self, name)
            if value is not None:
                flat = np.broadcast_to(np.asarray(value, dtype=np.float64), (self.action_dim,))
                setattr(self, name, [float(v) for v in flat])
        if self.action_low is not None and self.action_high is not None:
            if any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
                raise ValueError(f"action_low {self.action_low} exceeds action_high {self.action_high}")

    @property
    def window(self) -> int:
        """States per input window: k+1 history states and the next state."""
        return self.history + 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InverseDynamicsConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"InverseDynamicsConfig: unknown options {sorted(unknown)}")
        return cls(**d)


def _standardizer(data: np.ndarray | None, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per dimension; nearly constant dimensions get std 1 so they map to 0, not inf."""
    if data is None:
        return torch.zeros(dim), torch.ones(dim)
    x = np.asarray(data, dtype=np.float64).reshape(-1, dim)
    if len(x) == 0 or not np.isfinite(x).all():
        raise ValueError("normalisation statistics need finite, non-empty data")
    mean, std = x.mean(0), x.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)


class InverseDynamics(nn.Module):
    """Gaussian (or MSE) MLP inverse-dynamics model, optionally an ensemble; raw units in and out.

    Build with :meth:`from_data` to fit the normalisers on (labeled) data, or pass
    ``normalizer_state`` (``obs.mean``, ``obs.std``, ``action.mean``, ``action.std``) as loaded from
    a checkpoint.
    """

    def __init__(self, config: InverseDynamicsConfig,
                 normalizer_state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.config = config
        state = dict(normalizer_state or {})
        for key, dim in (("obs", config.obs_dim), ("action", config.action_dim)):
            identity = _standardizer(None, dim)  # until fitted / loaded: mean 0, std 1
            for i, stat in enumerate(("mean", "std")):
                value = torch.as_tensor(state.get(f"{key}.{stat}", identity[i])).float().clone()
                if tuple(value.shape) != (dim,):
                    raise ValueError(f"normaliser {key}.{stat} has shape {tuple(value.shape)}, "
                                     f"expected ({dim},)")
                self.register_buffer(f"{key}_{stat}", value, persistent=False)
        out = config.action_dim * (2 if config.loss == "nll" else 1)
        self.members = nn.ModuleList([self._member(out) for _ in range(config.ensemble)])
        inf = [math.inf] * config.action_dim
        low = config.action_low if config.action_low is not None else [-v for v in inf]
        high = config.action_high if config.action_high is not None else inf
        self.register_buffer("action_low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("action_high", torch.tensor(high, dtype=torch.float32), persistent=False)

    def _member(self, out: int) -> nn.Module:
        cfg = self.config
        mlp = MLP(cfg.window * cfg.obs_dim, out, hidden=cfg.hidden, depth=cfg.depth,
                  activation=cfg.activation)
        if cfg.dropout > 0:
            # dropout after every hidden activation (SS-ORL uses 0.1)
            layers: list[nn.Module] = []
            for layer in mlp.net:
                layers.append(layer)
                if not isinstance(layer, nn.Linear):
                    layers.append(nn.Dropout(cfg.dropout))
            mlp.net = nn.Sequential(*layers)
        return mlp

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_data(cls, config: InverseDynamicsConfig, obs: np.ndarray, action: np.ndarray) -> InverseDynamics:
        """A fresh model whose normalisers are fitted on ``obs`` (N, obs_dim) and ``action``
        (N, action_dim) — pass the labeled steps only."""
        return cls(config, normalizer_stats(obs, action))

    def normalizer_state(self) -> dict[str, torch.Tensor]:
        return {f"{key}.{stat}": getattr(self, f"{key}_{stat}").detach().cpu().clone()
                for key in ("obs", "action") for stat in ("mean", "std")}

    # --- model --------------------------------------------------------------------------------------
    def _check(self, states: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if states.dim() != 3 or tuple(states.shape[1:]) != (cfg.window, cfg.obs_dim):
            raise ValueError(f"states must be (B, {cfg.window}, {cfg.obs_dim}) = [s_(t-{cfg.history}) .. "
                             f"s_t, s_(t+1)]; got {tuple(states.shape)}")
        return ((states - self.obs_mean) / self.obs_std).flatten(1)

    def _heads(self, states: torch.Tensor,
               member: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-member mean and log-std in *normalised* action units: (E, B, A) each (log-std None for MSE).

        ``member`` restricts the output to that one member (E = 1).
        """
        x = self._check(states)
        members = self.members if member is None else [self.members[member]]
        out = torch.stack([m(x) for m in members])
        if self.config.loss == "mse":
            return out, None
        mean, raw = out.chunk(2, dim=-1)
        lo, hi = self.config.min_log_std, self.config.max_log_std
        log_std = hi - nn.functional.softplus(hi - raw)          # smooth upper bound
        log_std = lo + nn.functional.softplus(log_std - lo)      # smooth lower bound
        return mean, log_std

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member ``(mean, std)``, each ``(E, B, action_dim)`` in raw action units (mean not clipped)."""
        mean_n, log_std = self._heads(states)
        mean = mean_n * self.action_std + self.action_mean
        if log_std is not None:
            std = log_std.exp() * self.action_std
        else:
            std = self._mse_std(mean)
        return mean, std

    def _mse_std(self, like: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.mse_std:
            table = torch.as_tensor(cfg.mse_std, dtype=like.dtype, device=like.device)  # (E, A)
        else:
            table = torch.zeros(cfg.ensemble, cfg.action_dim, dtype=like.dtype, device=like.device)
        return table[:, None, :].expand_as(like)

    def predict(self, states: torch.Tensor, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble prediction ``(mean, std)``, each ``(B, action_dim)``: the proxy label and its uncertainty.

        mean = mean of member means, clipped to the action range when ``clip``; std = sqrt of the total
        variance mean(σᵢ² + μᵢ²) − μ̄² (computed before clipping).
        """
        means, stds = self(states)
        mean = means.mean(0)
        var = (stds.square() + means.square()).mean(0) - mean.square()
        std = var.clamp_min(0.0).sqrt()
        if clip:
            mean = torch.maximum(torch.minimum(mean, self.action_high), self.action_low)
        return mean, std

    def action(self, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        """Planner convenience for ``history = 0``: the clipped mean ``a_t`` from ``s_t`` and ``s_{t+1}``
        (``(..., obs_dim)`` each, raw units); differentiable."""
        if self.config.history != 0:
            raise ValueError(f"action(state, next_state) needs history=0; this model uses history="
                             f"{self.config.history} (call predict with a state window)")
        lead = state.shape[:-1]
        dim = state.shape[-1]
        window = torch.stack([state.reshape(-1, dim), next_state.reshape(-1, dim)], dim=1)
        return self.predict(window)[0].reshape(*lead, self.config.action_dim)

    def member_losses(self, states: torch.Tensor, action: torch.Tensor, mask: torch.Tensor | None = None,
                      member: int | None = None) -> torch.Tensor:
        """Loss of every member (or of ``member`` alone), ``(E,)``: Gaussian NLL per action dim in
        normalised units, or MSE. ``mask`` (B,) bool/float excludes steps whose action is unknown.
        """
        mean, log_std = self._heads(states, member)
        target = (action - self.action_mean) / self.action_std
        if log_std is None:
            per = (mean - target).square()
        else:
            per = 0.5 * ((target - mean) / log_std.exp()).square() + log_std + 0.5 * _LOG_2PI
        per = per.mean(-1)  # (E, B)
        if mask is None:
            return per.mean(-1)
        w = mask.to(per.dtype)
        return (per * w).sum(-1) / w.sum().clamp_min(1.0)

    def loss(self, states: torch.Tensor, action: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar training loss: the sum of the members' losses (members are independent)."""
        return self.member_losses(states, action, mask).sum()


def normalizer_stats(obs: np.ndarray, action: np.ndarray) -> dict[str, torch.Tensor]:
    """The normaliser state of a model fitted on ``obs`` and ``action`` (labeled data only)."""
    obs = np.asarray(obs)
    action = np.asarray(action)
    obs_mean, obs_std = _standardizer(obs, obs.shape[-1])
    act_mean, act_std = _standardizer(action, action.shape[-1])
    return {"obs.mean": obs_mean, "obs.std": obs_std, "action.mean": act_mean, "action.std": act_std}


# --- data ------------------------------------------------------------------------------------------

def transition_windows(obs: np.ndarray, episode_ends: np.ndarray, history: int = 1,
                       next_obs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Input windows for every step: ``(T, history+2, obs_dim)`` and ``has_next`` ``(T,)`` bool.

    Row t holds ``s_{t-k} … s_t`` (steps before the episode start repeat its first state) followed by
    ``s_{t+1}``: the next row of the same episode, else ``next_obs[t]`` when given. The last step of an
    episode without ``next_obs`` has no next state: its row repeats ``s_t`` and ``has_next`` is False.
    """
    obs = np.asarray(obs, dtype=np.float32)
    ends = np.asarray(episode_ends, dtype=np.int64)
    n = obs.shape[0]
    if ends.ndim != 1 or len(ends) == 0 or ends[-1] != n:
        raise ValueError(f"episode_ends must be cumulative and end at {n}")
    starts = np.repeat(np.concatenate([[0], ends[:-1]]), np.diff(ends, prepend=0))
    episode_last = np.repeat(ends - 1, np.diff(ends, prepend=0))
    t = np.arange(n)
    cols = [np.maximum(t - lag, starts) for lag in range(history, -1, -1)]
    has_next = t < episode_last
    nxt = obs[np.minimum(t + 1, episode_last)]
    if next_obs is not None:
        nxt = np.where(has_next[:, None], nxt, np.asarray(next_obs, dtype=np.float32))
        has_next = np.ones(n, dtype=bool)
    windows = np.stack([obs[c] for c in cols] + [nxt], axis=1)
    return windows, has_next


@torch.inference_mode()
def predict_windows(model: InverseDynamics, windows: np.ndarray, batch_size: int = 8192,
                    clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble ``(mean, std)`` for ``(T, window, obs_dim)`` windows, in fixed-size batches
    (deterministic for a given model)."""
    model.eval()
    means, stds = [], []
    for i in range(0, len(windows), batch_size):
        batch = torch.as_tensor(np.asarray(windows[i:i + batch_size], dtype=np.float32))
        mean, std = model.predict(batch, clip=clip)
        means.append(mean.numpy())
        stds.append(std.numpy())
    return np.concatenate(means), np.concatenate(stds)


def gaussian_nll(mean: np.ndarray, std: np.ndarray, action: np.ndarray, min_std: float = 1e-6) -> np.ndarray:
    """Per-step Gaussian NLL of ``action`` (raw units), averaged over action dims."""
    std = np.maximum(std, min_std)
    z = (action - mean) / std
    return (0.5 * z * z + np.log(std) + 0.5 * _LOG_2PI).mean(-1)


# --- checkpoints -----------------------------------------------------------------------------------

def save_inverse_dynamics(model: InverseDynamics, path: str | os.PathLike, report: Any = None,
                          extra: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` as a checkpoint directory (``model.safetensors``, ``normalizer.safetensors``,
    ``config.json`` with policy_type ``inverse-dynamics``), atomically."""
    from fastpolicy.utils.checkpoint import save_checkpoint

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    step = max(report.best_step) if report is not None else 0
    info = {"inverse_dynamics": {"fit": report.to_dict() if report is not None else None, **(extra or {})}}
    return save_checkpoint(path, policy_type=POLICY_TYPE, policy_config=model.config.to_dict(),
                           model_state=model.state_dict(), normalizer_state=model.normalizer_state(),
                           step=step, extra=info, overwrite=True)


def load_inverse_dynamics(path: str | os.PathLike, device: str | torch.device = "cpu") -> InverseDynamics:
    """Rebuild a model saved by :func:`save_inverse_dynamics` (hashes checked); sets ``checkpoint_hash``."""
    from fastpolicy.utils.checkpoint import CheckpointError, load_tensors, read_config, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    if config["policy_type"] != POLICY_TYPE:
        raise CheckpointError(f"{ckpt} holds a {config['policy_type']!r} model, not an inverse-dynamics "
                              "model")
    weights = load_tensors(ckpt, "model.safetensors", config["sha256"].get("model.safetensors"))
    norm = load_tensors(ckpt, "normalizer.safetensors", config["sha256"].get("normalizer.safetensors"))
    model = InverseDynamics(InverseDynamicsConfig.from_dict(config["policy_config"]), norm)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt}: weights do not fit the inverse-dynamics config ({exc})") from None
    model.checkpoint_hash = config["sha256"]["model.safetensors"]
    model.checkpoint_info = config.get("inverse_dynamics", {})
    return model.to(device).eval()
