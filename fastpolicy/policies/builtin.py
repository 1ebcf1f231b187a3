"""``builtin-mlp``: a policy with a real policy's shape and no checkpoint, for serving without a model.

Why it exists: the server (``fastpolicy serve builtin-mlp``), the load and soak benchmarks and the tests
need a policy with a realistic shape — an observation window in, an action chunk out, a per-session
state tensor that must be stacked and split, ``nfe`` MLP calls per chunk — without a trained
checkpoint. Its outputs are meaningless but exactly reproducible from ``seed``, so a test can check that
each session gets its own actions, and a load test measures the server rather than a model.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch

from fastpolicy.policies.base import ChunkResult, Policy, PolicyState

BUILTIN = "builtin-mlp"


class BuiltinMLPPolicy(Policy):
    """A small deterministic MLP policy with a streaming-like per-session buffer (see the module)."""

    method = BUILTIN

    def __init__(
        self,
        obs_dim: int = 16,
        action_dim: int = 4,
        obs_horizon: int = 2,
        action_horizon: int = 8,
        pred_horizon: int = 16,
        hidden: int = 256,
        layers: int = 3,
        nfe: int = 2,
        seed: int = 0,
        delay_s: float = 0.0,
    ) -> None:
        if pred_horizon < action_horizon:
            raise ValueError("pred_horizon must be ≥ action_horizon")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_horizon, self.action_horizon, self.pred_horizon = obs_horizon, action_horizon, pred_horizon
        self.nfe = nfe
        self.delay_s = delay_s
        gen = torch.Generator().manual_seed(seed)
        dims = [obs_horizon * obs_dim + pred_horizon * action_dim + 1] + [hidden] * layers
        mods: list[torch.nn.Module] = []
        for a, b in itertools.pairwise(dims):
            mods += [torch.nn.Linear(a, b), torch.nn.Mish()]
        mods.append(torch.nn.Linear(dims[-1], pred_horizon * action_dim))
        self.net = torch.nn.Sequential(*mods)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)
        self.net.eval()

    def init_state(self, batch_size: int) -> PolicyState:
        return {"buffer": torch.zeros(batch_size, self.pred_horizon, self.action_dim)}

    def predict_chunk(
        self,
        obs_window: np.ndarray | torch.Tensor,
        state: PolicyState = None,
        generator: torch.Generator | None = None,
    ) -> ChunkResult:
        obs = torch.as_tensor(np.asarray(obs_window, dtype=np.float32))
        if obs.ndim != 3 or obs.shape[1:] != (self.obs_horizon, self.obs_dim):
            raise ValueError(
                f"obs_window must be (B, {self.obs_horizon}, {self.obs_dim}), got {tuple(obs.shape)}"
            )
        b = obs.shape[0]
        buf = (state or self.init_state(b))["buffer"]
        ta = self.action_horizon
        # Streaming-like: shift out the executed chunk, append a fresh (zero) tail, refine nfe times.
        x = torch.cat([buf[:, ta:], torch.zeros(b, ta, self.action_dim)], dim=1)
        with torch.no_grad():
            for i in range(self.nfe):
                t = torch.full((b, 1), (self.nfe - i) / self.nfe)
                target = self.net(torch.cat([obs.flatten(1), x.flatten(1), t], dim=1)).view_as(x)
                x = x + (target - x) / (self.nfe - i)
            x = torch.tanh(x)
        if self.delay_s:
            time.sleep(self.delay_s)
        return ChunkResult(actions=x[:, :ta].numpy().copy(), nfe=self.nfe, state={"buffer": x})


def builtin_policy(spec: str = BUILTIN, **kwargs: Any) -> Policy:
    """``builtin-mlp`` → BuiltinMLPPolicy(**kwargs). Used by ``serve``, the load bench and the tests."""
    if spec != BUILTIN:
        raise ValueError(f"unknown built-in policy {spec!r} (known: {BUILTIN})")
    return BuiltinMLPPolicy(**kwargs)
