"""fastpolicy.policies.planners: inpainting, KV-cached drafts, inverse dynamics in the loop, guidance,
shapes / NFE accounting, training through the shared Trainer and checkpoint round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastpolicy.data.normalize import Normalizer
from fastpolicy.data.sampler import SequenceDataset
from fastpolicy.policies.checkpoint import load_policy
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
    assert td.refine_levels()[0] == 9 and len(td.refine_levels()) == 4 and td.method.endswith("refine3")
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
    with pytest.raises(ValueError, match="noise_scale"):
        build_policy("decision-diffuser", {**SMALL, "noise_scale": 0.0})


@pytest.mark.parametrize("kind", ["diffuser", "decision-diffuser"])
def test_noise_scale_is_the_sampling_temperature(kind):
    """The plan the denoiser first sees is the inpainted starting noise × noise_scale (the Decision Diffuser
    samples at 0.5 by default, the Diffuser at 1)."""
    seen = {}

    class Seen(Exception):
        pass

    def first_call(x, t, cond):
        seen["x"] = x.clone()
        raise Seen

    def start(scale: float) -> torch.Tensor:
        policy = _policy(kind, noise_scale=scale)
        state = torch.full((2, OBS), 0.3)
        with pytest.raises(Seen):
            policy._sample_from_noise((2, H, policy.plan_dim), state, None, first_call, _gen(5))
        return seen["x"]

    assert _policy("decision-diffuser").config.noise_scale == 0.5
    assert _policy("diffuser").config.noise_scale == 1.0
    cold, hot = start(0.5), start(1.0)
    lo = _policy(kind).plan_dim_offset
    torch.testing.assert_close(cold[:, 1:], 0.5 * hot[:, 1:])
    torch.testing.assert_close(cold[:, 0, lo:lo + OBS], torch.full((2, OBS), 0.3))   # inpainted, not scaled


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


def test_candidates_share_one_draft_per_observation():
    """The draft is deterministic: drafting once per window equals drafting every candidate's copy."""
    td = _policy("trajectory-diffuser", refine_steps=0)
    obs = torch.randn(2, 1, OBS)
    obs_n = td.normalize_obs(obs)
    with torch.inference_mode():
        once, _ = td.draft(obs_n)
        per_candidate, _ = td.draft(obs_n.repeat_interleave(3, dim=0))
    torch.testing.assert_close(once.repeat_interleave(3, dim=0), per_candidate, atol=1e-6, rtol=1e-6)
    plans = td.plan_states(obs, _gen())                    # k = 0: the candidates are the draft itself
    assert plans.shape == (6, H, OBS)
    torch.testing.assert_close(plans, per_candidate, atol=1e-6, rtol=1e-6)
    td.set_refinement(steps=2, start=0.5)                  # refinement noise makes them differ
    plans = td.plan_states(obs, _gen())
    assert not torch.equal(plans[0], plans[1])


def test_fastpolicy_train_trains_a_planner_from_store_rewards(linear_store, tmp_path):
    """`fastpolicy train --policy trajectory-diffuser`: rewards → discounted returns-to-go, one Trainer run,
    a checkpoint that loads through the server's path and answers predict_chunk / Session.act."""
    from fastpolicy.cli import main
    from fastpolicy.serve.cli import load_policy_spec

    run = tmp_path / "td"
    opts = ["--option", "d_model=32", "--option", "n_layers=1", "--option", "d_ff=32", "--option",
            "idm_hidden=16", "--option", "critic_hidden=16", "--option", 'backbone_kwargs={"hidden": 32}',
            "--option", "num_train_timesteps=10", "--option", 'sampler="ddpm:10"', "--option",
            "num_candidates=2", "--option", "pred_horizon=6"]
    code = main(["train", "--store", str(linear_store), "--out", str(run), "--policy", "trajectory-diffuser",
                 "--steps", "3", "--batch-size", "8", "--warmup-steps", "1", "--checkpoint-every", "3",
                 "--no-progress", *opts])
    assert code == 0
    policy, model_id, _ = load_policy_spec(str(run))
    assert isinstance(policy, TrajectoryDiffuser) and model_id == "td" and policy.checkpoint_step == 3
    # return_scale is fitted from the store's rewards (all negative here → the neutral 1.0)
    assert policy.config.return_scale == 1.0 and policy.config.pred_horizon == 6
    # the return target's anchor is the data's largest return, and the rule conditions above it
    assert policy.config.return_max < 0 and policy.config.conditioning_return > policy.config.return_max
    # the draft's offsets are scaled by the data's k-step spread, measured on the store
    assert np.asarray(policy.config.draft_offset_std).shape == (5, 2)
    obs = np.zeros((3, 1, 2), np.float32)
    result = policy.predict_chunk(obs, None, _gen())
    assert result.actions.shape == (3, 1, 1) and np.isfinite(result.actions).all()
    session = policy.new_session(batch_size=1, seed=0)
    assert session.act(obs[0, 0]).shape == (1,)
    # resuming finds the planner from its checkpoint, whatever --policy says
    code = main(["train", "--store", str(linear_store), "--out", str(run), "--steps", "4",
                 "--batch-size", "8", "--warmup-steps", "1", "--checkpoint-every", "4", "--no-progress",
                 "--resume"])
    assert code == 0 and load_policy_spec(str(run))[0].checkpoint_step == 4


def test_planners_suite_is_selectable_and_targets_are_summarised():
    from fastpolicy.bench.planners import PLANNER_METHODS, summarize_planner_targets
    from fastpolicy.bench.runner import SUITES
    from fastpolicy.cli import main

    assert SUITES["planners"].family == "planners" and "trajectory-diffuser-refine1" in PLANNER_METHODS
    assert main(["bench", "--suite", "planners", "--methods", "teacher-ddpm100", "--no-write"]) == 2
    rows = [{"method": "decision-diffuser-ddpm200", "score_mean": 10.0, "step_latency_ms_p50": 60.0},
            {"method": "diffuser-ddpm20", "score_mean": 12.0, "step_latency_ms_p50": 5.0},
            {"method": "trajectory-diffuser-refine3", "score_mean": 11.0, "step_latency_ms_p50": 10.0},
            {"method": "trajectory-diffuser-refine1-start0.3", "score_mean": 99.0, "step_latency_ms_p50": 1.0,
             "ablation": True}]
    t = summarize_planner_targets(rows)
    assert t["td_speedup_vs_dd200"] == 6.0 and t["target_10x_vs_dd200_at_its_score"] is False  # 6× < 10×
    assert t["td_score_minus_diffuser"] == -1.0 and t["target_score_ge_diffuser"] is False
    rows[0]["step_latency_ms_p50"] = 120.0
    assert summarize_planner_targets(rows)["target_10x_vs_dd200_at_its_score"] is True
    # within one standard error below DD counts as "at its score"; beyond it does not
    rows[2].update(score_mean=9.0, score_std=4.0, episodes=4)          # se of the difference: 2.0
    assert summarize_planner_targets(rows)["target_10x_vs_dd200_at_its_score"] is True
    rows[2]["score_mean"] = 7.5
    assert summarize_planner_targets(rows)["target_10x_vs_dd200_at_its_score"] is False


@pytest.mark.slow
def test_planners_suite_runs_end_to_end(tmp_path):
    """`fastpolicy bench --suite planners` at toy size: train each planner (DD its own run), score, time,
    write schema rows (a 300-step episode per method: ~20 s on a quiet 2-core machine, minutes under load)."""
    from fastpolicy.bench.runner import SuiteConfig, run_suite
    from fastpolicy.evaluation.results import read_results

    tiny = {"backbone_kwargs": {"hidden": 32, "depth": 1}, "critic_hidden": 16, "num_train_timesteps": 10,
            "pred_horizon": 4}
    suite = SuiteConfig("planners-test", family="planners", dataset_size=2000, teacher_steps=2,
                        diffuser_steps=2,
                        batch_size=8, episodes=1, latency_steps=2, latency_rounds=1, throughput_calls=1,
                        progress=False, planner_candidates=2,
                        methods=("diffuser-ddpm20", "decision-diffuser-ddpm200", "decision-diffuser-ddim10",
                                 "trajectory-diffuser-refine1"),
                        planner_options={"*": tiny, "diffuser": {"sampler": "ddpm:10", "value_hidden": 16},
                                         "decision-diffuser": {"sampler": "ddpm:10", "idm_hidden": 16},
                                         "trajectory-diffuser": {"sampler": "ddpm:10", "d_model": 16,
                                                                 "d_ff": 16, "n_layers": 1,
                                                                 "idm_hidden": 16}})
    rows = run_suite(suite, ["maze2d-umaze"], work_dir=tmp_path / "work", results_dir=tmp_path,
                     plot_dir=tmp_path, progress=False)
    names = [r["method"] for r in rows]
    assert names == ["diffuser-ddpm10", "decision-diffuser-ddpm10", "decision-diffuser-ddim10",
                     "trajectory-diffuser-refine1"]
    assert all(r["step_latency_ms_p50"] > 0 and r["suite"] == "planners-test" for r in rows)
    assert rows[3]["transformer_calls_per_plan"] == 3 and rows[2]["denoiser_calls_per_plan"] == 10
    assert len(read_results(tmp_path / "planners-test_maze2d-umaze.json")) == 4
    runs = tmp_path / "work" / "maze2d-umaze"
    assert {p.name for p in runs.iterdir() if (p / "cost.json").exists()} == {
        "diffuser", "decision-diffuser", "trajectory-diffuser"}                 # three training runs


# --- value guidance, return targets, one-pass and trimmed drafts ------------------------------

class _GaussianCleanPlan(torch.nn.Module):
    """The exact clean-plan predictor when plans are N(0, I): E[x0 | x_t] = sqrt(ᾱ_t) x_t."""

    def __init__(self, schedule):
        super().__init__()
        self.register_buffer("sqrt_ab", schedule.sqrt_alphas_cumprod.clone())

    def forward(self, x, t, cond=None):
        return self.sqrt_ab[t].view(-1, 1, 1) * x


class _LinearValue(torch.nn.Module):
    """An analytic value: the sum of the planned future (positions 1..H−1), all features."""

    def forward(self, x, t):
        return x[:, 1:].sum(dim=(1, 2))


def _toy_guided_diffuser(**overrides):
    policy = _policy("diffuser", value_guidance=True, value_hidden=16, num_candidates=16, **overrides)
    policy.denoiser = _GaussianCleanPlan(policy.schedule)
    policy.value = _LinearValue()
    return policy


def test_value_guidance_moves_samples_toward_higher_value():
    """Same noise, exact denoiser for N(0, I) plans, analytic value: guided samples score higher, more so
    with a larger scale, and not at all when every level is below t_stopgrad."""
    obs = torch.zeros(1, 1, OBS)

    def values(**overrides):
        policy = _toy_guided_diffuser(**overrides)
        return policy.value(policy.plan_states(obs, _gen(7)), torch.zeros(16, dtype=torch.long))

    unguided = values(guide_scale=0.0)
    guided = values()                                           # reference: scale 0.1, 2 steps, t_stopgrad 2
    strong = values(guide_scale=1.0)
    assert guided.mean() > unguided.mean() and (guided >= unguided - 1e-5).all()
    assert strong.mean() > guided.mean() + 1.0
    torch.testing.assert_close(values(t_stopgrad=10), unguided)   # N = 10: no level is guided


def test_guided_diffuser_picks_the_candidate_of_highest_value_and_counts_calls():
    policy = _toy_guided_diffuser(action_horizon=2)
    obs = np.zeros((2, 1, OBS), np.float32)
    plans = policy.plan_states(obs, _gen(3))
    best = policy.plan_values(plans).view(2, 16).argmax(dim=1)
    expected = policy._plan_actions(plans).view(2, 16, 2, ACT)[torch.arange(2), best]
    expected = policy.bounded_actions(policy.normalize_action(expected))
    result = policy.predict_chunk(obs, None, _gen(3))
    np.testing.assert_allclose(result.actions, expected.numpy(), atol=1e-6)
    stats = policy.last_plan_stats
    # levels ≥ t_stopgrad (2..9 of ddpm:10) × 2 guide steps, plus the ranking call; the critic is unused
    assert stats["value_calls"] == 8 * 2 + 1 and "critic_calls" not in stats


def test_value_function_trains_on_noised_plans_and_is_absent_when_off(tmp_path):
    obs, act, ends = _linear_system(episodes=4, length=20)
    reward = obs[:, 0] / 10
    ds = SequenceDataset({"episode_ends": ends, "obs": obs, "action": act,
                          RTG_KEY: discounted_returns(reward, ends, 0.9)}, horizon=H,
                         keys=("obs", "action", RTG_KEY))
    batch = ds.sample_batch(np.arange(32))
    plain = _policy("diffuser")
    assert set(plain(batch, _gen())) == {"loss", "diffusion_loss", "critic_loss"}
    assert not any(k.startswith("value") for k in plain.state_dict())
    guided = _policy("diffuser", value_guidance=True, value_hidden=32).train()
    # off by default and on: the other losses draw the same noise, so they are unchanged
    torch.testing.assert_close(guided(batch, _gen())["diffusion_loss"],
                               plain(batch, _gen())["diffusion_loss"])
    opt = torch.optim.Adam(guided.value.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        loss = guided(batch, _gen(step))["value_loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    guided.eval()
    save_planner(guided, tmp_path / "guided")
    loaded = load_policy(tmp_path / "guided")
    assert loaded.value is not None and loaded.config.value_guidance
    window = obs[None, :1]
    np.testing.assert_array_equal(guided.predict_chunk(window, None, _gen(2)).actions,
                                  loaded.predict_chunk(window, None, _gen(2)).actions)


def test_return_conditioning_changes_the_plan():
    obs = torch.randn(2, 1, OBS)

    def plans(target, weight=1.2):
        dd = _policy("decision-diffuser", target_return=target, guidance_weight=weight)
        return dd.plan_states(obs, _gen())

    assert not torch.allclose(plans(0.1), plans(1.5), atol=1e-4)
    # the target enters only the conditional branch: w = 0 (unconditional) plans ignore it
    torch.testing.assert_close(plans(0.1, weight=0.0), plans(1.5, weight=0.0))


def test_return_target_is_a_rule_fixed_in_advance():
    dd = _policy("decision-diffuser", return_max=0.8)
    assert dd.config.target_return is None and dd.config.conditioning_return == pytest.approx(1.1 * 0.8)
    assert _policy("decision-diffuser", return_max=-2.0).config.conditioning_return == pytest.approx(-1.8)
    assert _policy("decision-diffuser", target_return=0.7).config.conditioning_return == 0.7
    with pytest.raises(ValueError, match="target_return_multiple"):
        build_policy("decision-diffuser", {**SMALL, "target_return_multiple": 0.0})


def test_training_drops_the_return_condition_at_the_configured_rate():
    dd = _policy("decision-diffuser", cond_dropout=0.25).train()
    seen = []
    dd.denoiser.register_forward_hook(lambda mod, args, out: seen.append(args[2].detach().clone()))
    n = 800
    batch = {"obs": torch.randn(n, H, OBS), "action": torch.randn(n, H, ACT), RTG_KEY: torch.rand(n, H) + 0.5}
    dd._state_losses(batch, _gen())
    ret, present = seen[0][:, -2], seen[0][:, -1]
    assert abs((present == 0).float().mean().item() - 0.25) < 0.05
    assert torch.equal(ret[present == 0], torch.zeros(int((present == 0).sum())))
    assert (ret[present == 1] > 0).all()


def test_one_pass_draft_shapes_calls_and_loss_targets():
    td = _policy("trajectory-diffuser", obs_horizon=2, draft_mode="one-pass")
    obs_n = torch.randn(5, 2, OBS)
    with torch.no_grad():
        full, calls = td.draft(obs_n)
        short, short_calls = td.draft(obs_n, length=3)
    assert full.shape == (5, H, OBS) and calls == short_calls == 1
    assert torch.equal(full[:, 0], obs_n[:, -1]) and torch.equal(short, full[:, :3])
    result = td.predict_chunk(np.zeros((2, 2, OBS), np.float32), None, _gen())
    assert result.actions.shape == (2, 1, ACT) and td.last_plan_stats["transformer_calls"] == 1
    assert plan_cost(td)["transformer_calls"] == 1
    # the loss's targets: prefix p predicts states p+1.. of the window as offsets from state p; outputs
    # past the window's end are masked (a "transformer" exact inside, garbage outside, scores 0)
    window = torch.randn(3, H, OBS)
    later = torch.arange(H)[:, None] + torch.arange(1, H)
    exact = torch.where((later < H)[None, :, :, None], window[:, later.clamp(max=H - 1)] - window[:, :, None],
                        torch.full((1,), 1e3))

    class Exact(torch.nn.Module):
        def forward(self, tokens):
            return exact[:, : tokens.shape[1]].flatten(2)

    td.transformer = Exact()
    tokens = torch.zeros(3, H, OBS + 1)
    assert td.config.one_pass_prefixes == "context"
    assert td._one_pass_loss(window, tokens).item() < 1e-10
    # by default only the obs_horizon = 2 prefixes a plan drafts from are trained: garbage at longer
    # prefixes costs nothing, unless every prefix is trained
    exact[:, 2:] = 7.0
    assert td._one_pass_loss(window, tokens).item() < 1e-10
    every = _policy("trajectory-diffuser", obs_horizon=2, draft_mode="one-pass", one_pass_prefixes="every")
    every.transformer = Exact()
    assert every._one_pass_loss(window, tokens).item() > 1.0
    with pytest.raises(ValueError, match="one_pass_prefixes"):
        build_policy("trajectory-diffuser", {**TD_SMALL, "one_pass_prefixes": "all"})
    with pytest.raises(ValueError, match="draft_mode"):
        build_policy("trajectory-diffuser", {**TD_SMALL, "draft_mode": "parallel"})


def test_one_pass_transformer_trains():
    td = _policy("trajectory-diffuser", draft_mode="one-pass").train()
    batch = {"obs": torch.randn(8, H, OBS), "action": torch.randn(8, H, ACT), RTG_KEY: torch.rand(8, H)}
    losses = td(batch, _gen())
    losses["transformer_loss"].backward()
    assert torch.isfinite(losses["loss"]) and td.transformer.head.weight.grad.abs().sum() > 0


def test_transformer_trains_on_every_row_only_where_a_row_is_one_token():
    """A context-only one-pass head reads obs_horizon tokens per row: it trains on the whole batch; where
    the transformer reads the whole window (H tokens per row) it keeps 32 rows, and a set value wins."""
    rows = {(mode, prefixes): _policy("trajectory-diffuser", draft_mode=mode,
                                      one_pass_prefixes=prefixes).config.transformer_rows(128)
            for mode in ("one-pass", "autoregressive") for prefixes in ("context", "every")}
    assert rows == {("one-pass", "context"): 128, ("one-pass", "every"): 32,
                    ("autoregressive", "context"): 32, ("autoregressive", "every"): 32}
    assert _policy("trajectory-diffuser", transformer_batch=16).config.transformer_rows(128) == 16
    assert _policy("trajectory-diffuser", transformer_batch=256).config.transformer_rows(128) == 128


def test_stored_td_config_from_before_one_pass_prefixes_reads_as_every_prefix():
    """A run's stored config holds every field; one without ``one_pass_prefixes`` was trained on every
    prefix and must say so when loaded. Options a user passes (a few fields) get the default."""
    import dataclasses

    from fastpolicy.policies.planners import TrajectoryDiffuserConfig

    stored = dataclasses.asdict(_policy("trajectory-diffuser", draft_mode="one-pass").config)
    del stored["one_pass_prefixes"]
    assert TrajectoryDiffuserConfig.from_dict(stored).one_pass_prefixes == "every"
    partial = {k: stored[k] for k in ("obs_dim", "action_dim", "draft_mode")}
    assert TrajectoryDiffuserConfig.from_dict(partial).one_pass_prefixes == "context"


def test_trimmed_draft_plans_only_the_states_the_action_needs_once():
    """Without refinement the candidates are one draft: planned once (no critic), and with trim_draft only
    the Ta + 1 states the inverse dynamics reads are drafted — same actions, fewer transformer calls."""
    obs = np.random.default_rng(1).normal(size=(2, 1, OBS)).astype(np.float32)
    full = _policy("trajectory-diffuser", refine_steps=0, action_horizon=2)
    trimmed = _policy("trajectory-diffuser", refine_steps=0, action_horizon=2, trim_draft=True)
    a = full.predict_chunk(obs, None, _gen()).actions
    b = trimmed.predict_chunk(obs, None, _gen()).actions
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert full.last_plan_stats["candidates"] == 1 and "critic_calls" not in full.last_plan_stats
    assert full.last_plan_stats["transformer_calls"] == H - 1
    assert trimmed.last_plan_stats["transformer_calls"] == 2 == plan_cost(trimmed)["transformer_calls"]
    obs_n = trimmed.normalize_obs(torch.from_numpy(obs))
    with torch.no_grad():                                          # cached prefix == uncached full draft
        short, calls = trimmed.draft(obs_n, length=3, use_cache=True)
        long, _ = trimmed.draft(obs_n, use_cache=False)
    assert calls == 2
    torch.testing.assert_close(short, long[:, :3], atol=1e-5, rtol=0)
    # refinement needs the whole plan: trim_draft is then ignored
    assert trimmed.set_refinement(steps=1).draft_length() == H


def test_guidance_options_are_validated():
    with pytest.raises(ValueError, match="guide_scale"):
        build_policy("diffuser", {**SMALL, "guide_scale": -0.1})


def test_offset_std_measures_k_step_spread_within_episodes_only():
    from fastpolicy.policies.planners import offset_std

    # episode 1 moves dim 0 by +1 per step, episode 2 by +3; dim 1 never moves. A pair across the episode
    # boundary (jump 100) would inflate the spread if it were counted.
    ep1 = np.stack([np.arange(4.0), np.zeros(4)], 1)
    ep2 = np.stack([100.0 + 3 * np.arange(4.0), np.zeros(4)], 1)
    std = offset_std(np.concatenate([ep1, ep2]), np.array([4, 8]), max_offset=2)
    np.testing.assert_allclose(std[:, 0], [np.std([1, 1, 1, 3, 3, 3]), np.std([2, 2, 6, 6])])
    np.testing.assert_allclose(std[:, 1], [1.0, 1.0])          # never moves: left unscaled
    with pytest.raises(ValueError, match="longer than 4"):
        offset_std(ep1, np.array([4]), max_offset=4)


@pytest.mark.parametrize("mode", ["autoregressive", "one-pass"])
def test_draft_offsets_are_predicted_in_units_of_the_datas_spread(mode):
    """With draft_offset_std the transformer's outputs are offsets in units of the data's k-step spread: a
    head that outputs ones drafts s_0 + k·std_1 (autoregressive) or s_0 + std_k (one-pass) — equal here,
    the spread growing linearly in k — and the loss, in those units, is zero on a window moving that way."""
    base = np.linspace(0.01, 2.0, OBS)
    std = np.arange(1, H)[:, None] * base
    td = _policy("trajectory-diffuser", draft_mode=mode, draft_offset_std=std.tolist())
    out_dim = OBS + 1 if mode == "autoregressive" else (H - 1) * OBS

    class Ones(torch.nn.Module):
        def forward(self, tokens):
            return torch.ones(*tokens.shape[:-1], out_dim)

    td.transformer = Ones()
    s0 = torch.randn(2, 1, OBS)
    with torch.no_grad():
        draft, _ = td.draft(s0, use_cache=False)
    expected = torch.tensor(std, dtype=torch.float32).expand(2, -1, -1)
    torch.testing.assert_close(draft[:, 1:] - s0, expected, atol=1e-5, rtol=0)
    assert td._transformer_loss(draft, torch.ones(2, H)).item() < 1e-10
    assert td._transformer_loss(draft + 0.01 * torch.randn_like(draft), torch.ones(2, H)).item() > 0
    with pytest.raises(ValueError, match="draft_offset_std"):
        build_policy("trajectory-diffuser", {**TD_SMALL, "draft_offset_std": std[:-1].tolist()})
    with pytest.raises(ValueError, match="positive"):
        build_policy("trajectory-diffuser", {**TD_SMALL, "draft_offset_std": (0 * std).tolist()})


def test_v_refinement_from_low_noise_keeps_the_draft_where_a_clean_plan_estimate_does_not():
    """The TD's denoiser predicts v: refining from the lowest level returns ≈ the draft (α·x_t − σ·v̂ with
    σ ≈ 0.016) whatever the network says, while an x0 network returns its own estimate (random here)."""
    opts = {"num_train_timesteps": 200, "refine_steps": 1, "refine_start": 0.005, "noise_scale": 0.5}
    assert build_policy("trajectory-diffuser", {**TD_SMALL}).config.prediction_type == "v_prediction"
    draft = torch.randn(4, H, OBS).clamp(-1, 1)
    moved = {}
    for kind in ("v_prediction", "sample"):
        td = _policy("trajectory-diffuser", prediction_type=kind, **opts)
        assert td.refine_levels() == [0, -1]
        with torch.no_grad():
            refined, calls = td.refine(draft.clone(), _gen())
        assert calls == 1 and torch.equal(refined[:, 0], draft[:, 0])      # the current state inpainted
        moved[kind] = (refined - draft).abs().max().item()
    assert moved["v_prediction"] < 0.1 < moved["sample"]
