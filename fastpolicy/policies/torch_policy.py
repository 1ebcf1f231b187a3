"""Shared machinery of the torch policies: typed config, normalisation, observation conditioning.

Normalisers are fitted on the data (``fastpolicy.data.normalize``) and saved with every checkpoint.
Inside the model they become four buffers per key (normalise: y = a·x + b, unnormalise: x = c·y + d),
derived by evaluating the normaliser at 0 and 1 — every normaliser we use is affine — so the hot
path is two fused multiply-adds on the model's device, whatever the normaliser's mode.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fastpolicy.policies.base import Policy
from fastpolicy.utils.checkpoint import save_checkpoint


@dataclass
class PolicyConfig:
    """Shapes and horizons every policy shares (Diffusion Policy's To=2, Tp=16, Ta=8 by default)."""

    obs_dim: int
    action_dim: int
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8

    def validate(self) -> None:
        for name in ("obs_dim", "action_dim", "obs_horizon", "pred_horizon", "action_horizon"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.obs_horizon - 1 + self.action_horizon > self.pred_horizon:
            raise ValueError(
                f"action_horizon {self.action_horizon} does not fit: executing "
                f"pred[To-1 : To-1+Ta] needs To-1+Ta ≤ pred_horizon ({self.pred_horizon})"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown options {sorted(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg


class TorchPolicy(nn.Module, Policy):
    """Base of the nn.Module policies; subclasses define ``forward`` (training loss) and ``predict_chunk``."""

    policy_type: ClassVar[str] = "torch"
    config_cls: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig, normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.obs_dim = config.obs_dim
        self.action_dim = config.action_dim
        self.obs_horizon = config.obs_horizon
        self.action_horizon = config.action_horizon
        self._normalizer_state = dict(normalizer_state or {})
        for key, dim in (("obs", config.obs_dim), ("action", config.action_dim)):
            a, b, c, d = _affine_from_state(self._normalizer_state, key, dim)
            self.register_buffer(f"_{key}_n_scale", a, persistent=False)
            self.register_buffer(f"_{key}_n_offset", b, persistent=False)
            self.register_buffer(f"_{key}_u_scale", c, persistent=False)
            self.register_buffer(f"_{key}_u_offset", d, persistent=False)
        lo, hi = _bounds_from_state(self._normalizer_state, "action", config.action_dim)
        self.register_buffer("_action_lo", lo, persistent=False)
        self.register_buffer("_action_hi", hi, persistent=False)

    # --- config / checkpoint --------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: dict[str, Any] | PolicyConfig, normalizer_state: dict[str, torch.Tensor] | None = None
    ):
        if isinstance(config, dict):
            config = cls.config_cls.from_dict(config)
        return cls(config, normalizer_state)

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def normalizer_state(self) -> dict[str, torch.Tensor]:
        return self._normalizer_state

    def save(self, path: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write this policy as a checkpoint directory that ``fastpolicy.load(path)`` rebuilds.

        Saves the weights this object holds (after ``train_offline`` that is the raw, not the EMA,
        model — ``fastpolicy.load(run_dir)`` gives the EMA one), its config and its normaliser, in
        the format the trainer writes (safetensors + JSON, atomically: a killed save leaves any
        checkpoint already at ``path`` intact). Returns the checkpoint's path.

        ``overwrite`` replaces a *checkpoint* already at ``path``; any other existing file or non-empty
        directory (a run directory, a dataset) is refused, since the atomic swap would delete it.
        """
        target = Path(path)
        if target.exists() and not (target / "config.json").is_file() \
                and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} exists and is not a checkpoint directory; policy.save replaces "
                                  "only a checkpoint — choose a new path")
        return save_checkpoint(
            target,
            policy_type=self.policy_type,
            policy_config=self.config_dict(),
            model_state=self.state_dict(),
            normalizer_state=self.normalizer_state(),
            step=int(getattr(self, "checkpoint_step", 0)),
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> TorchPolicy:
        """The policy saved at ``path`` (a checkpoint or a run directory), rebuilt from its config.

        Called on a subclass (``DiffusionPolicy.load(path)``) it also checks that the checkpoint holds
        that kind of policy, so a wrong path fails here rather than at the first ``predict_chunk``.
        """
        from fastpolicy.policies.checkpoint import load_policy  # the registry imports this module

        policy = load_policy(path, device=device)
        if not isinstance(policy, cls):
            raise ValueError(f"{path} holds a {policy.policy_type!r} policy, not a {cls.__name__}")
        return policy

    @property
    def device(self) -> torch.device:
        return self._obs_n_scale.device

    # --- normalisation --------------------------------------------------------------------------
    def normalize_obs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._obs_n_scale + self._obs_n_offset

    def normalize_action(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._action_n_scale + self._action_n_offset

    def unnormalize_action(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._action_u_scale + self._action_u_offset

    def bounded_actions(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised actions → raw actions inside the range seen in training.

        Every policy's output passes here, so no sampler (DPM-Solver runs unclipped, an ε-estimate can
        be amplified) ever hands an actuator an action outside the data the policy was trained on.
        """
        return torch.clamp(self.unnormalize_action(x), min=self._action_lo, max=self._action_hi)

    def encode_obs(self, obs_window: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, To, obs_dim) raw → (B, To·obs_dim) normalised global condition, with shape checks."""
        obs = torch.as_tensor(obs_window, dtype=torch.float32).to(self.device)
        expected = (self.config.obs_horizon, self.config.obs_dim)
        if obs.ndim != 3 or tuple(obs.shape[1:]) != expected:
            raise ValueError(
                f"observation window has shape {tuple(obs.shape)}, expected (B, {expected[0]}, {expected[1]})"
            )
        return self.normalize_obs(obs).flatten(1)

    def chunk_from_prediction(self, x0: torch.Tensor) -> np.ndarray:
        """Normalised (B, Tp, A) prediction → the raw actions to execute, ``pred[To-1 : To-1+Ta]``."""
        start = self.config.obs_horizon - 1
        chunk = self.bounded_actions(x0[:, start : start + self.config.action_horizon])
        return chunk.float().cpu().numpy()


def _bounds_from_state(state: dict[str, torch.Tensor], key: str,
                       dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (min, max) the normaliser of ``key`` was fitted on; ±inf when it recorded none."""
    lo, hi = state.get(f"{key}.min"), state.get(f"{key}.max")
    if lo is None or hi is None:
        return torch.full((dim,), -torch.inf), torch.full((dim,), torch.inf)
    lo = torch.as_tensor(lo, dtype=torch.float32).reshape(-1)
    hi = torch.as_tensor(hi, dtype=torch.float32).reshape(-1)
    if lo.shape != (dim,) or hi.shape != (dim,):
        raise ValueError(f"normalizer bounds for {key!r} have shape {tuple(lo.shape)}, "
                         f"the policy expects ({dim},)")
    return lo, hi


def _affine_from_state(state: dict[str, torch.Tensor], key: str, dim: int):
    """Evaluate the fitted normaliser of ``key`` at 0 and 1 to get its affine maps (identity if absent)."""
    ones, zeros = torch.ones(dim), torch.zeros(dim)
    if not any(k.startswith(f"{key}.") for k in state):
        return ones, zeros, ones.clone(), zeros.clone()
    from fastpolicy.data.normalize import NormalizerSet

    norm = NormalizerSet.from_state_dict(state)[key]
    probe = torch.stack([zeros, ones])
    n = torch.as_tensor(norm.normalize(probe), dtype=torch.float32)
    u = torch.as_tensor(norm.unnormalize(probe), dtype=torch.float32)
    if n.shape != (2, dim):
        raise ValueError(f"normalizer for {key!r} has dimension {n.shape[-1]}, the policy expects {dim}")
    return n[1] - n[0], n[0], u[1] - u[0], u[0]
