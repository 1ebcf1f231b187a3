"""bench/diag_return_target.py: the planned forward velocity and the cache's validation score per target."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from bench_scripts import load_bench_script

from fastpolicy.bench.planners_protocol import EvalRecord, env_seeds
from fastpolicy.policies.registry import build_policy

diag = load_bench_script("diag_return_target")
OBS, H, VEL = 5, 6, 3


class _KnownPlans:
    """A planner stub whose normalised plans put ``k`` at the velocity of state k and ``2·x + 1`` back."""

    plan_dim_offset = 0

    def plan_states(self, obs_window, generator=None):
        plans = torch.zeros(len(obs_window), H, OBS)
        plans[:, :, VEL] = torch.arange(H, dtype=torch.float32)
        return plans

    def unnormalize_obs(self, x):
        return 2 * x + 1


def test_planned_velocity_reads_the_velocity_in_raw_units_at_the_next_state_and_over_the_plan():
    vel = diag.planned_velocity(_KnownPlans(), np.zeros((4, OBS)), VEL)
    assert vel["next_state"] == 3.0                                 # state 1: 2·1 + 1
    assert vel["plan"] == float(np.mean([2 * k + 1 for k in range(1, H)]))   # states 1..H−1, not the current


def test_planned_velocity_of_a_real_planner_is_paired_by_its_noise_seed():
    torch.manual_seed(0)
    dd = build_policy("decision-diffuser", {
        "obs_dim": OBS, "action_dim": 2, "pred_horizon": H, "backbone_kwargs": {"hidden": 16, "depth": 1},
        "critic_hidden": 16, "num_train_timesteps": 6, "sampler": "ddpm:6", "idm_hidden": 16}).eval()
    states = np.random.default_rng(0).normal(size=(8, OBS)).astype(np.float32)
    a, again = diag.planned_velocity(dd, states, VEL), diag.planned_velocity(dd, states, VEL)
    other = diag.planned_velocity(dd, states, VEL, noise_seed=12)
    assert a == again and a != other


def test_validation_score_reads_the_cached_record_of_this_checkpoint_and_the_unnamed_default(tmp_path):
    seeds, episodes = [100, 101], 2
    policy = SimpleNamespace(checkpoint_step=50, config=SimpleNamespace(target_return_multiple=1.1))
    scores = {s: float(i) for i, s in enumerate(env_seeds(seeds, episodes))}

    def cache(key: str, step: int) -> None:
        record = EvalRecord(method="m", setting=key, train_seed=0, split="validation", eval_seeds=seeds,
                            scores=scores, nfe=[1], checkpoint_step=step)
        path = tmp_path / "validation" / "m" / key / "train_seed0.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record.to_json()))

    cache("sampler=ddim:4,target_return_multiple=0.3", 50)
    cache("sampler=ddim:4", 50)                       # the grid's entry at the default target, unnamed
    cache("sampler=ddim:4,target_return_multiple=0.5", 49)    # an older checkpoint's: not this policy's

    def score(target: float) -> float | None:
        setting = {"sampler": "ddim:4", "target_return_multiple": target}
        return diag.validation_score(tmp_path, "m", setting, 0, policy, seeds, episodes)

    assert score(0.3) == np.mean(list(scores.values()))
    assert score(1.1) == score(0.3)
    assert score(0.5) is None
    assert score(0.8) is None                         # never evaluated
