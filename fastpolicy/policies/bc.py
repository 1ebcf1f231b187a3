"""BC-MLP baseline: regress the next Ta actions from the observation window (one forward per chunk).

It is the speed floor every diffusion method is compared against, and the learner of the
proxy-labeling experiments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastpolicy.nets import MLP
from fastpolicy.policies.base import ChunkResult, PolicyState
from fastpolicy.policies.diffusion_policy import masked_mse
from fastpolicy.policies.torch_policy import PolicyConfig, TorchPolicy


@dataclass
class BCConfig(PolicyConfig):
    hidden: int = 256
    depth: int = 3


class BCPolicy(TorchPolicy):
    policy_type = "bc"
    config_cls = BCConfig
    method = "bc-mlp"

    def __init__(self, config: BCConfig, normalizer_state: dict[str, torch.Tensor] | None = None):
        super().__init__(config, normalizer_state)
        self.net = MLP(
            config.obs_dim * config.obs_horizon,
            config.action_horizon * config.action_dim,
            hidden=config.hidden,
            depth=config.depth,
        )

    def _actions(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond).view(-1, self.config.action_horizon, self.config.action_dim)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        cfg = self.config
        cond = self.normalize_obs(batch["obs"][:, : cfg.obs_horizon]).flatten(1)
        start = cfg.obs_horizon - 1
        target = self.normalize_action(batch["action"][:, start : start + cfg.action_horizon])
        mask = batch.get("action_mask")
        mask = mask[:, start:] if mask is not None else None
        return {"loss": masked_mse(self._actions(cond), target, mask, cfg.action_horizon)}

    @torch.inference_mode()
    def predict_chunk(
        self,
        obs_window: np.ndarray | torch.Tensor,
        state: PolicyState = None,
        generator: torch.Generator | None = None,
    ) -> ChunkResult:
        actions = self.bounded_actions(self._actions(self.encode_obs(obs_window)))
        return ChunkResult(actions.float().cpu().numpy(), 1, state)
