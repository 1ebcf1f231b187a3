"""bench/diag_diffuser_seeds.py: paired offline errors, the ranking probe and the cache's closed-loop
outcomes, on toy Diffusers."""

from __future__ import annotations

import json

import numpy as np
import torch
from bench_scripts import load_bench_script

from fastpolicy.bench.planners_protocol import EvalRecord
from fastpolicy.policies.planners import RTG_KEY
from fastpolicy.policies.registry import build_policy

OBS, ACT, H = 4, 2, 8


diag = load_bench_script("diag_diffuser_seeds")


def _diffuser(seed: int):
    torch.manual_seed(seed)
    return build_policy("diffuser", {"obs_dim": OBS, "action_dim": ACT, "pred_horizon": H,
                                     "backbone_kwargs": {"hidden": 32, "depth": 1}, "critic_hidden": 16,
                                     "num_train_timesteps": 6, "sampler": "ddpm:6", "value_guidance": True,
                                     "value_hidden": 16}).eval()


def _batch(n: int = 64):
    g = torch.Generator().manual_seed(0)
    return {"obs": torch.randn(n, H, OBS, generator=g), "action": torch.rand(n, H, ACT, generator=g) * 2 - 1,
            RTG_KEY: torch.randn(n, H, generator=g)}


def test_offline_errors_are_paired_and_tell_different_weights_apart():
    batch = _batch()
    a, a_again, b = diag.offline_errors(_diffuser(0), batch), diag.offline_errors(_diffuser(0), batch), \
        diag.offline_errors(_diffuser(1), batch)
    assert a == a_again                                   # same weights, same windows, same noise
    assert len(a["denoise_err_per_level"]) == 6 and np.isfinite(a["denoise_err_mean"])
    assert a["denoise_err_mean"] != b["denoise_err_mean"]
    assert a["first_action_err_mid_level_p99"] >= a["first_action_err_mid_level"]
    assert -1.0 <= a["value_corr_with_rtg"] <= 1.0


def test_ranking_probe_compares_the_top_valued_plan_with_the_average_one():
    policy = _diffuser(0)
    states = np.random.default_rng(0).normal(size=(3, OBS)).astype(np.float32)

    def step(obs, action):                               # a toy simulator: the state does not move
        return obs

    out = diag.ranking_probe(policy, states, 5, step, velocity_index=0, obs_scale=np.ones(OBS))
    assert set(out) == {"planned_velocity_top", "planned_velocity_mean", "dynamics_err_top",
                        "dynamics_err_mean", "corr_value_dynamics_err"}
    assert out["dynamics_err_mean"] > 0
    assert diag.ranking_probe(policy, states, 5, None, None, np.ones(OBS)) == {}


def test_closed_loop_outcomes_count_failed_episodes_per_setting_and_seed(tmp_path):
    for split, setting, seed, scores in [("validation", "a=1", 0, [80, 10, 85]), ("test", "a=1", 1, [5, 6])]:
        path = tmp_path / split / "diffuser-value-guided" / setting / f"train_seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = EvalRecord("diffuser-value-guided", setting, seed, split, [0], dict(enumerate(scores)), [])
        path.write_text(json.dumps(record.to_json()))
    rows = diag.closed_loop_outcomes(tmp_path, "diffuser-value-guided", (0, 1, 2), low_score=40)
    assert [(r["split"], r["train_seed"], r["episodes"], r["episodes_under_low_score"]) for r in rows] == [
        ("validation", 0, 3, 1), ("test", 1, 2, 2)]


def test_locomotion_step_reads_walker_observations_and_refuses_other_layouts():
    step, vel = diag.locomotion_step("Walker2d-v5", 17)
    assert vel == 8
    obs = np.zeros(17)
    obs[0] = 1.25                                        # standing height
    assert step(obs, np.zeros(6)).shape == (17,)
    assert diag.locomotion_step("Walker2d-v5", 18) == (None, None)
