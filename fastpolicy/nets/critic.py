"""Q(s, a) critic: an MLP on ``[s, a]`` that scores candidate plans by their first action.

Planners sample several candidate trajectories per control step; the critic picks the one whose first
(state, action) pair has the highest estimated return, as the Trajectory Diffuser reference does. It is
trained by regression on Monte-Carlo discounted returns-to-go of the dataset (no bootstrapping, so no
target network and no over-estimation from out-of-distribution actions: it evaluates the behaviour
policy, which is what ranking in-distribution candidates needs).
"""

from __future__ import annotations

import torch
from torch import nn

from fastpolicy.nets.mlp import MLP


class Critic(nn.Module):
    """``(state (..., S), action (..., A)) -> Q (...)``, in whatever units the caller normalises to."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.net = MLP(obs_dim + action_dim, 1, hidden=hidden, depth=depth, activation="mish")

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if state.shape[-1] != self.obs_dim or action.shape[-1] != self.action_dim:
            raise ValueError(f"critic expects state (..., {self.obs_dim}), action (..., {self.action_dim}); "
                             f"got {tuple(state.shape)} and {tuple(action.shape)}")
        return self.net(torch.cat([state, action], dim=-1)).squeeze(-1)

    def loss(self, state: torch.Tensor, action: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """Monte-Carlo regression: MSE between Q(s, a) and the observed discounted return-to-go."""
        return (self(state, action) - returns).square().mean()


__all__ = ["Critic"]
