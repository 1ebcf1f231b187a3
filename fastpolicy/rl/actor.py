"""A SAC Gaussian actor rebuilt from safetensors: what dataset recipes roll out, without SB3 or pickle.

The network is stable-baselines3's SAC actor (``sac/policies.py: Actor``) laid out the same way, so its
``state_dict`` keys load unchanged::

    latent_pi = [Linear, ReLU] * len(net_arch)       (obs -> features)
    mu, log_std = Linear(features, act_dim) each      (log_std clamped to [-20, 2])
    u ~ N(mu, exp(log_std)),  a = tanh(u)  in [-1, 1],  action = low + (a + 1) / 2 * (high - low)

``log_prob`` is the density of the squashed action ``a`` (the change of variables SB3 uses, with its
``1e-6`` epsilon), the quantity D4RL stores as ``infos/action_log_probs``. Deterministic actions are
``tanh(mu)``, which is what SB3's ``predict(deterministic=True)`` returns after unscaling.

Files: ``<name>.safetensors`` (float32 tensors) and ``<name>.json`` (:class:`ActorMeta`: dims, bounds,
net arch, env id, training step, eval return). No pickle anywhere, so committed weights are safe to load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LOG_STD_MIN = -20.0
LOG_STD_MAX = 2.0
SQUASH_EPS = 1e-6   # SB3's SquashedDiagGaussianDistribution epsilon


@dataclasses.dataclass
class ActorMeta:
    """Everything needed to rebuild an actor and say where it came from (the ``.json`` beside the weights)."""

    obs_dim: int
    act_dim: int
    action_low: list[float]
    action_high: list[float]
    net_arch: list[int]
    env_id: str = ""
    step: int = 0                      # env steps of training when the checkpoint was taken
    eval_return: float | None = None   # mean (deterministic) evaluation return at that checkpoint
    eval_return_std: float | None = None
    eval_episodes: int = 0
    algo: str = "sb3-sac"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActorMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"actor metadata has unknown keys {sorted(unknown)}")
        return cls(**dict(data))


class GaussianActor(nn.Module):
    """SB3's SAC actor as a plain module: ``obs (B, obs_dim) -> (mean, log_std)`` of the pre-tanh Gaussian."""

    def __init__(self, meta: ActorMeta):
        super().__init__()
        self.meta = meta
        layers: list[nn.Module] = []
        width = meta.obs_dim
        for hidden in meta.net_arch:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.latent_pi = nn.Sequential(*layers)
        self.mu = nn.Linear(width, meta.act_dim)
        self.log_std = nn.Linear(width, meta.act_dim)
        low = torch.as_tensor(meta.action_low, dtype=torch.float32)
        high = torch.as_tensor(meta.action_high, dtype=torch.float32)
        if low.shape != (meta.act_dim,) or high.shape != (meta.act_dim,):
            raise ValueError(f"action bounds must have {meta.act_dim} entries, got {tuple(low.shape)} and "
                             f"{tuple(high.shape)}")
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.latent_pi(obs)
        return self.mu(latent), self.log_std(latent).clamp(LOG_STD_MIN, LOG_STD_MAX)

    # -- actions in the env's units ----------------------------------------------------------------
    def unscale(self, squashed: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> env action bounds (SB3's ``unscale_action``)."""
        return self.action_low + 0.5 * (squashed + 1.0) * (self.action_high - self.action_low)

    def scale(self, action: torch.Tensor) -> torch.Tensor:
        """Env action bounds -> [-1, 1]."""
        return 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0

    @staticmethod
    def _squashed_log_prob(gaussian: torch.Tensor, squashed: torch.Tensor, mean: torch.Tensor,
                           log_std: torch.Tensor) -> torch.Tensor:
        normal = torch.distributions.Normal(mean, log_std.exp())
        return (normal.log_prob(gaussian) - torch.log(1.0 - squashed.pow(2) + SQUASH_EPS)).sum(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(action in env units, log-prob of the squashed action)`` for a batch of observations.

        Stochastic noise is drawn from ``generator`` (a ``torch.Generator``) so rollouts are reproducible.
        For deterministic actions the log-prob is that of ``tanh(mean)`` under the same distribution.
        """
        mean, log_std = self(obs)
        if deterministic:
            gaussian = mean
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            gaussian = mean + log_std.exp() * noise
        squashed = torch.tanh(gaussian)
        return self.unscale(squashed), self._squashed_log_prob(gaussian, squashed, mean, log_std)

    @torch.no_grad()
    def log_prob(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-density of env-unit ``action`` (clipped just inside the bounds, as tanh never reaches them)."""
        squashed = self.scale(action).clamp(-1.0 + SQUASH_EPS, 1.0 - SQUASH_EPS)
        mean, log_std = self(obs)
        return self._squashed_log_prob(torch.atanh(squashed), squashed, mean, log_std)

    def numpy_policy(self, deterministic: bool = False, seed: int = 0):
        """A seeded ``obs (obs_dim,) -> (action, log_prob)`` callable for rollouts, on numpy.

        The same math as :meth:`act` (float32), without torch's per-call overhead (about 20x faster at
        batch 1, which is what a rollout of a million steps spends its time on). Noise comes from
        ``numpy.random.default_rng(seed)``, so a seed fixes the whole rollout.
        """
        rng = np.random.default_rng(seed)
        layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
                  for m in self.latent_pi if isinstance(m, nn.Linear)]
        w_mu, b_mu = self.mu.weight.detach().numpy().T.copy(), self.mu.bias.detach().numpy().copy()
        w_ls, b_ls = self.log_std.weight.detach().numpy().T.copy(), self.log_std.bias.detach().numpy().copy()
        low = self.action_low.numpy().astype(np.float64)
        span = self.action_high.numpy().astype(np.float64) - low
        half_log_2pi = 0.5 * math.log(2.0 * math.pi)

        def policy(obs: np.ndarray) -> tuple[np.ndarray, float]:
            h = np.asarray(obs, dtype=np.float32)
            for w, b in layers:
                h = np.maximum(h @ w + b, 0.0)
            mean = h @ w_mu + b_mu
            log_std = np.clip(h @ w_ls + b_ls, LOG_STD_MIN, LOG_STD_MAX)
            if deterministic:
                noise = np.zeros_like(mean)
            else:
                noise = rng.standard_normal(mean.shape).astype(np.float32)
            gaussian = mean + np.exp(log_std) * noise
            squashed = np.tanh(gaussian)
            logp = float(np.sum(-0.5 * noise.astype(np.float64) ** 2 - log_std - half_log_2pi
                                - np.log(1.0 - squashed.astype(np.float64) ** 2 + SQUASH_EPS)))
            return low + 0.5 * (squashed.astype(np.float64) + 1.0) * span, logp

        return policy


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_actor(path: str | Path, state_dict: Mapping[str, torch.Tensor], meta: ActorMeta) -> Path:
    """Write ``<path>.safetensors`` + ``<path>.json`` atomically; returns the safetensors path.

    ``state_dict`` is an SB3 SAC ``policy.actor.state_dict()`` (or a :class:`GaussianActor`'s); only the
    ``latent_pi.*``, ``mu.*`` and ``log_std.*`` tensors are kept.
    """
    from safetensors.torch import save

    from fastpolicy.utils.atomic import atomic_file

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()
               if k.split(".")[0] in ("latent_pi", "mu", "log_std")}
    GaussianActor(meta).load_state_dict(tensors)  # fail now, not when a recipe loads it
    weights, meta_path = _paths(path)
    blob = save(tensors, metadata={"format": "fastpolicy-sac-actor", "env_id": meta.env_id})
    with atomic_file(weights) as f:
        f.write(blob)
    with atomic_file(meta_path, "w") as f:
        json.dump(meta.to_json(), f, indent=2)
        f.write("\n")
    return weights


def load_actor(path: str | Path) -> GaussianActor:
    """Rebuild a :class:`GaussianActor` from ``<path>.safetensors`` + ``<path>.json`` (eval mode, CPU)."""
    from safetensors.torch import load_file

    weights, meta_path = _paths(path)
    for p in (weights, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"actor file {p} not found (an actor is a .safetensors + .json pair)")
    meta = ActorMeta.from_json(json.loads(meta_path.read_text()))
    actor = GaussianActor(meta)
    actor.load_state_dict(load_file(str(weights)))
    return actor.eval()


def actor_sha256(path: str | Path) -> str:
    """SHA-256 of the actor's safetensors file (recorded in dataset attrs so a store names its policy)."""
    weights, _ = _paths(path)
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def meta_from_spaces(observation_space: Any, action_space: Any, net_arch: Sequence[int],
                     **kw: Any) -> ActorMeta:
    """An :class:`ActorMeta` from gymnasium Box spaces."""
    return ActorMeta(obs_dim=int(np.prod(observation_space.shape)), act_dim=int(np.prod(action_space.shape)),
                     action_low=[float(x) for x in action_space.low],
                     action_high=[float(x) for x in action_space.high],
                     net_arch=[int(h) for h in net_arch], **kw)
