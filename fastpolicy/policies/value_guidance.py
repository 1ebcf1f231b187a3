"""Value guidance for the Diffuser planner (Janner et al. 2022), apart from the sampling loop it steers.

The Diffuser reference does not sample plans blindly: a value function ``V(x_t, t)`` trained on *noisy*
plans (every noise level, the current state inpainted, target: the discounted return-to-go from the
window's start) steers each reverse step. Before the step at level t, ``n_guide_steps`` times,

    x_t ← x_t + scale · σ_t² · ∇_x V(x_t, t)      (no push where t < t_stopgrad; state re-inpainted)

with σ_t² the DDPM posterior variance (``scale_grad_by_std`` in the reference), and the model's step is
then taken from the pushed ``x_t``. Guiding ``x_t`` (not the model output) is what makes the rule
parametrisation-free: whether the denoiser predicts ε or the clean plan, the posterior mean it yields is
computed from the guided ``x_t``, so the push has the sign of ∇V and flows through both the model's
clean estimate and the mean's ``x_t`` term, as in the reference's ``p_mean_variance(x=guided x)``.
Finally the candidates are ranked by ``V(plan, 0)`` (the reference sorts 64 samples by value).

Sampling runs under ``torch.inference_mode`` for speed; the gradient is taken on fresh copies outside it
(inference tensors cannot enter autograd), so only the guided steps pay for autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fastpolicy.diffusion.schedule import NoiseSchedule
from fastpolicy.nets.embeddings import SinusoidalPosEmb
from fastpolicy.nets.mlp import MLP

ValueFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x_t (N, H, D), t (N,)) -> value (N,)``"""


class ValueFunction(nn.Module):
    """``V(x_t, t)``: an MLP on the flattened noisy plan and a sinusoidal code of its noise level.

    An MLP, like the planners' default denoiser, because CPU-sized plans (H ≤ 64) fit it comfortably;
    the reference uses half a temporal U-Net.
    """

    def __init__(self, horizon: int, plan_dim: int, hidden: int = 256, depth: int = 2,
                 time_dim: int = 32) -> None:
        super().__init__()
        self.horizon, self.plan_dim = horizon, plan_dim
        self.time_emb = SinusoidalPosEmb(time_dim)
        self.net = MLP(horizon * plan_dim + time_dim, 1, hidden=hidden, depth=depth, activation="mish")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.horizon, self.plan_dim):
            raise ValueError(f"value function expects plans (N, {self.horizon}, {self.plan_dim}); "
                             f"got {tuple(x.shape)}")
        t = t.expand(x.shape[0]) if t.dim() == 0 or t.numel() == 1 else t
        return self.net(torch.cat([x.flatten(1), self.time_emb(t)], dim=-1)).squeeze(-1)


def posterior_variance(schedule: NoiseSchedule) -> torch.Tensor:
    """DDPM posterior variance β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) per training level (N,), level 0 clipped to
    level 1's value as the reference's ``posterior_log_variance_clipped`` does (level 0's is 0)."""
    ac = schedule.alphas_cumprod
    prev = torch.cat([torch.ones_like(ac[:1]), ac[:-1]])
    var = schedule.betas.to(ac) * (1.0 - prev) / (1.0 - ac)
    if var.numel() > 1:
        var = torch.cat([var[1:2], var[1:]])
    return var


def value_and_gradient(value_fn: ValueFn, x: torch.Tensor, t: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V(x, t) (N,), ∇_x V (N, H, D))``, callable from inside ``torch.inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.clone().requires_grad_(True)   # a normal tensor: inference tensors cannot enter autograd
        value = value_fn(xg, t.clone())
        (grad,) = torch.autograd.grad(value.sum(), xg)
    return value.detach(), grad


def guide(value_fn: ValueFn, x: torch.Tensor, t: torch.Tensor, variance: torch.Tensor, scale: float,
          n_steps: int, t_stopgrad: int, inpaint: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``n_steps`` gradient-ascent pushes of the noisy plan ``x`` (N, H, D) at level ``t`` (N,) along
    ``scale · variance[t] · ∇V``; rows with ``t < t_stopgrad`` are left alone (the reference's
    ``grad[t < t_stopgrad] = 0``: near the data the value's gradient is noise, not signal)."""
    active = (t >= t_stopgrad).to(x.dtype).view(-1, 1, 1)
    if n_steps <= 0 or scale == 0.0 or not bool(active.any()):
        return x
    step = scale * variance[t].to(x.dtype).view(-1, 1, 1) * active
    for _ in range(n_steps):
        _, grad = value_and_gradient(value_fn, x, t)
        x = inpaint(x + step * grad)
    return x


def value_loss(value_fn: ValueFn, noisy_plans: torch.Tensor, t: torch.Tensor,
               returns: torch.Tensor) -> torch.Tensor:
    """MSE between ``V(x_t, t)`` and the window's (normalised) discounted return-to-go."""
    return (value_fn(noisy_plans, t) - returns).square().mean()


__all__ = ["ValueFn", "ValueFunction", "guide", "posterior_variance", "value_and_gradient", "value_loss"]
