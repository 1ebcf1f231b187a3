"""fastpolicy.policies.planners: inpainting, KV-cached drafts, inverse dynamics in the loop, guidance,
shapes / NFE accounting, training through the shared Trainer and checkpoint round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastpolicy.data.normalize import Normalizer
from fastpolicy.data.sampler import SequenceDataset
from fastpolicy.policies.planners import (
    RTG_KEY,
    DecisionDiffuserPlanner,
    DiffuserPlanner,
    TrajectoryDiffuser,
    decision_diffuser_from,
    discounted_returns,
    plan_cost,
    save_planner,
)
from fastpolicy.policies.registry import build_policy
from fastpolicy.train.checkpoint import load_policy

OBS, ACT, H = 4, 2, 8
SMALL = {"obs_dim": OBS, "action_dim": ACT, "pred_horizon": H, "backbone_kwargs": {"hidden": 64, "depth": 2},
         "critic_hidden": 32, "num_train_timesteps": 10, "sampler": "ddpm:10"}
TD_SMALL = {**SMALL, "d_model": 32, "n_layers": 2, "d_ff": 64, "idm_hidden": 32, "num_candidates": 3,
            "refine_steps": 2, "refine_start": 0.5}
TYPES = {"diffuser": SMALL, "decision-diffuser": {**SMALL, "idm_hidden": 32}, "trajectory-diffuser": TD_SMALL}


def _policy(kind: str, normalizer: dict | None = None, **overrides):
    torch.manual_seed(0)
    return build_policy(kind, {**TYPES[kind], **overrides}, normalizer).eval()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", list(TYPES))
def test_inpainting_holds_the_current_state_exactly(kind):
    policy = _policy(kind)
    obs = torch.randn(2, 1, OBS) * 2
    plans = policy.plan_states(obs, _gen())
    lo = ACT if kind == "diffuser" else 0
    state = policy.normalize_obs(obs[:, -1]).repeat_interleave(policy.config.num_candidates, 0)
    assert torch.equal(plans[:, 0, lo:lo + OBS], state)
    assert not torch.equal(plans[:, 1, lo:lo + OBS], state)  # the future is planned, not copied


def test_kv_cached_drafts_equal_uncached_drafts():
    td = _policy("trajectory-diffuser", obs_horizon=2)
    obs_n = torch.randn(5, 2, OBS)
    with torch.no_grad():
        cached, calls_c = td.draft(obs_n, use_cache=True)
        full, calls_f = td.draft(obs_n, use_cache=False)
    assert cached.shape == (5, H, OBS) and calls_c == calls_f == H - 1
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    assert torch.equal(cached[:, 0], obs_n[:, -1])


def _linear_system(episodes: int = 30, length: int = 40, seed: int = 0):
    """s_{t+1} = A s_t + B a_t (raw units far from [-1, 1], so normalisation mistakes show)."""
    a = np.array([[1.0, 0.1, 0, 0], [0, 1.0, 0, 0.1], [0, 0, 0.9, 0], [0, 0, 0, 0.9]])
    b = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.05, 0.05]])
    rng = np.random.default_rng(seed)
    obs, act = [], []
    for _ in range(episodes):
        s = rng.normal(size=4) + 3
        for _ in range(length):
            u = rng.uniform(-2, 2, size=2)
            obs.append(s)
            act.append(u)
            s = a @ s + b @ u
    ends = np.arange(1, episodes + 1) * length
    return np.asarray(obs, np.float32), np.asarray(act, np.float32), ends


def test_planner_actions_from_inverse_dynamics_recover_a_linear_system():
    """Train the planner's IDM through the planner's own loss, then read actions off exact state plans."""
    obs, act, ends = _linear_system()

    state = {**{f"obs.{k}": v for k, v in Normalizer("limits").fit(obs).state_dict().items()},
             **{f"action.{k}": v for k, v in Normalizer("limits").fit(act).state_dict().items()}}
    dd = _policy("decision-diffuser", state, idm_hidden=64)
    dd.train()
    ds = SequenceDataset({"episode_ends": ends, "obs": obs, "action": act,
                          RTG_KEY: discounted_returns(np.zeros(len(obs)), ends, 0.99)}, horizon=H,
                         keys=("obs", "action", RTG_KEY))
    opt = torch.optim.Adam(dd.idm.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(600):
        batch = ds.sample_batch(rng.integers(0, len(ds), 64))
        loss = dd._state_losses(batch, _gen())[0]["idm_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    dd.eval()
    test_obs, test_act, test_ends = _linear_system(episodes=4, seed=1)
    window = torch.from_numpy(test_obs[:H])[None]                     # an exact plan of the true system
    dd.config.action_horizon = 3
    with torch.no_grad():
        actions = dd._plan_actions(dd.normalize_obs(window))
    err = actions[0].numpy() - test_act[:3]
    assert np.mean(err ** 2) < 0.05 * np.var(act), err               # < 5% of the action variance


def test_guidance_weight_one_equals_the_conditional_model():
    dd = _policy("decision-diffuser")
    x, state = torch.randn(3, H, OBS), torch.randn(3, OBS)
    t = torch.tensor([0, 4, 9])
    with torch.no_grad():
        cond = dd.conditional_eps(x, t, state)
        torch.testing.assert_close(dd.guided_eps(x, t, state, weight=1.0), cond, atol=1e-5, rtol=0)
        uncond = dd.denoiser(x, t, dd._cond(state, torch.zeros(3), torch.zeros(3)))
        torch.testing.assert_close(dd.guided_eps(x, t, state, weight=0.0), uncond, atol=1e-5, rtol=0)
        w = dd.guided_eps(x, t, state, weight=1.2)
        torch.testing.assert_close(w, uncond + 1.2 * (cond - uncond), atol=1e-5, rtol=0)
    # the dropped condition is all zeros, whatever the return
    assert torch.equal(dd.return_condition(torch.tensor([0.7]), torch.tensor([0.0])), torch.zeros(1, 2))


CALLS = [("diffuser", 10, 0), ("decision-diffuser", 10, 0), ("trajectory-diffuser", 2, H - 1)]


@pytest.mark.parametrize("kind,denoiser_calls,transformer_calls", CALLS)
def test_predict_chunk_shapes_and_nfe(kind, denoiser_calls, transformer_calls):
    policy = _policy(kind, action_horizon=2)
    obs = np.random.default_rng(0).normal(size=(3, 1, OBS)).astype(np.float32)
    result = policy.predict_chunk(obs, None, _gen())
    assert result.actions.shape == (3, 2, ACT) and result.actions.dtype == np.float32
    assert result.nfe == denoiser_calls == plan_cost(policy)["denoiser_calls"]
    stats = policy.last_plan_stats
    assert stats["transformer_calls"] == transformer_calls == plan_cost(policy)["transformer_calls"]
    assert ("critic_calls" in stats) == (policy.config.num_candidates > 1)
    session = policy.new_session(batch_size=1, seed=0)
    session.act(obs[0, 0])
    assert session.stats.nfe == [denoiser_calls] and session.queued == 1


def test_refinement_levels_and_ablation_knobs():
    td = _policy("trajectory-diffuser")                      # N = 10, start 0.5, k = 2
    assert td.refine_levels() == [4, 2, -1]             # linspace(4, -1, 3) = 4, 1.5, -1 → rounded
    td.set_refinement(steps=0)
    assert td.refine_levels() == [] and td.predict_chunk(np.zeros((1, 1, OBS)), None, _gen()).nfe == 0
    td.set_refinement(steps=3, start=1.0)
    assert td.refine_levels()[0] == 9 and len(td.refine_levels()) == 4 and td.method.endswith("k3")
    with pytest.raises(ValueError, match="refine_start"):
        td.set_refinement(steps=2, start=0.0)


def test_discounted_returns_restart_at_episode_ends():
    r = np.array([1.0, 0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(discounted_returns(r, np.array([3, 5]), 0.5), [1.25, 0.5, 1.0, 1.5, 1.0])


def test_config_validation():
    with pytest.raises(ValueError, match="planned"):
        build_policy("decision-diffuser", {**SMALL, "action_horizon": H})
    with pytest.raises(ValueError, match="cond_dropout"):
        build_policy("decision-diffuser", {**SMALL, "cond_dropout": 1.0})
    with pytest.raises(KeyError, match="rtg"):
        _policy("diffuser")({"obs": torch.zeros(2, H, OBS), "action": torch.zeros(2, H, ACT)})


def test_trainer_checkpoint_load_policy_gives_identical_plans(tmp_path):
    """Two steps of the shared Trainer per planner, then checkpoint → load_policy → the same plans."""
    from fastpolicy.train.trainer import TrainConfig, Trainer

    obs, act, ends = _linear_system(episodes=4, length=20)
    reward = (np.linalg.norm(obs[:, :2], axis=1) < 3).astype(np.float32)
    ds = SequenceDataset({"episode_ends": ends, "obs": obs, "action": act,
                          RTG_KEY: discounted_returns(reward, ends, 0.99)}, horizon=H,
                         keys=("obs", "action", RTG_KEY))
    cfg = TrainConfig(steps=2, batch_size=8, warmup_steps=1, progress=False, tensorboard=False, device="cpu")
    obs_window = obs[None, :1]
    for kind in TYPES:
        policy = _policy(kind).train()
        stats = Trainer(policy, ds, cfg, tmp_path / kind).fit()
        assert np.isfinite(stats["loss"]) and stats["step"] == 2
        loaded = load_policy(tmp_path / kind)
        assert type(loaded) is type(policy)
        # the trainer's policy holds raw weights; the checkpoint holds the EMA weights → compare the
        # loaded policy with a second load (and with the EMA-free save below)
        again = load_policy(tmp_path / kind)
        a = loaded.predict_chunk(obs_window, None, _gen(3)).actions
        b = again.predict_chunk(obs_window, None, _gen(3)).actions
        np.testing.assert_array_equal(a, b)
        policy.eval()
        save_planner(policy, tmp_path / f"{kind}-direct")
        direct = load_policy(tmp_path / f"{kind}-direct")
        np.testing.assert_array_equal(policy.predict_chunk(obs_window, None, _gen(4)).actions,
                                      direct.predict_chunk(obs_window, None, _gen(4)).actions)


def test_decision_diffuser_shares_the_trajectory_diffusers_networks(tmp_path):
    td = _policy("trajectory-diffuser")
    dd = decision_diffuser_from(td)
    assert isinstance(dd, DecisionDiffuserPlanner) and dd.config.num_candidates == 1
    for name, tensor in dd.state_dict().items():
        assert torch.equal(tensor, td.state_dict()[name]), name
    x, state, t = torch.randn(2, H, OBS), torch.randn(2, OBS), torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(dd.guided_eps(x, t, state), td.guided_eps(x, t, state))
    assert isinstance(_policy("diffuser"), DiffuserPlanner) and isinstance(td, TrajectoryDiffuser)
