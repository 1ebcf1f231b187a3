"""bench/diag_td_draft.py: the draft's one-step R² and the action error through it, on toy TDs."""

from __future__ import annotations

import numpy as np
import torch
from bench_scripts import load_bench_script

from fastpolicy.policies.planners import RTG_KEY
from fastpolicy.policies.registry import build_policy

OBS, ACT, H = 3, 2, 6
diag = load_bench_script("diag_td_draft")


def _td():
    torch.manual_seed(0)
    return build_policy("trajectory-diffuser", {
        "obs_dim": OBS, "action_dim": ACT, "pred_horizon": H, "backbone_kwargs": {"hidden": 16, "depth": 1},
        "critic_hidden": 16, "num_train_timesteps": 6, "sampler": "ddpm:6", "d_model": 16, "n_layers": 1,
        "d_ff": 16, "idm_hidden": 16, "draft_mode": "one-pass"}).eval()


def _batch(n: int = 256):
    g = torch.Generator().manual_seed(0)
    obs = torch.cumsum(torch.randn(n, H, OBS, generator=g) * 0.1, dim=1)
    return {"obs": obs, "action": torch.rand(n, H, ACT, generator=g) * 2 - 1, RTG_KEY: torch.rand(n, H)}


def test_one_step_r2_is_one_for_an_exact_draft_and_zero_for_a_draft_that_predicts_no_change():
    td, batch = _td(), _batch()
    obs_n = td.normalize_obs(batch["obs"])

    class Exact(torch.nn.Module):                       # the true offsets of the window's next state
        def forward(self, tokens):
            out = torch.zeros(tokens.shape[0], tokens.shape[1], (H - 1) * OBS)
            out[:, -1, :OBS] = obs_n[:, 1] - obs_n[:, 0]
            return out

    class Still(torch.nn.Module):                       # "nothing changes"
        def forward(self, tokens):
            return torch.zeros(tokens.shape[0], tokens.shape[1], (H - 1) * OBS)

    td.transformer = Exact()
    exact = diag.draft_errors(td, batch)
    np.testing.assert_allclose(exact["one_step_r2"], 1.0, atol=1e-4)
    assert exact["action_rmse_via_draft"] == exact["action_rmse_via_true_next_state"]
    td.transformer = Still()
    still = diag.draft_errors(td, batch)
    change = (batch["obs"][:, 1] - batch["obs"][:, 0]).double()
    expected = 1 - change.square().mean(0) / change.var(0, unbiased=False)     # ≤ 0: the mean is not 0
    np.testing.assert_allclose(still["one_step_r2"], expected.numpy(), atol=1e-4)


def test_regression_action_rmse_scores_a_state_to_action_policy():
    class Zero:
        def new_session(self, batch_size, seed):
            class S:
                def act(self, obs):
                    return np.zeros((len(obs), ACT))
            return S()

    batch = _batch()
    rmse = diag.regression_action_rmse(Zero(), batch)
    assert np.isclose(rmse, float(batch["action"][:, 0].square().mean().sqrt()), atol=1e-6)
