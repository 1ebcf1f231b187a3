"""Planner modes as values (``with_sampler`` / ``with_refinement`` views) and the planners' package split
(each module one job, under the house's ~400 lines; the training driver lives in ``train``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastpolicy.policies.registry import build_policy

OBS, ACT, H = 4, 2, 8
SMALL = {"obs_dim": OBS, "action_dim": ACT, "pred_horizon": H, "backbone_kwargs": {"hidden": 32, "depth": 1},
         "critic_hidden": 16, "num_train_timesteps": 10, "sampler": "ddpm:10", "idm_hidden": 16}
TD = {**SMALL, "d_model": 16, "n_layers": 1, "d_ff": 16, "num_candidates": 3, "refine_steps": 2,
      "refine_start": 0.5}


def _policy(kind: str, **overrides):
    torch.manual_seed(0)
    base = TD if kind == "trajectory-diffuser" else SMALL
    if kind == "diffuser":
        base = {k: v for k, v in base.items() if k != "idm_hidden"}
    return build_policy(kind, {**base, **overrides}).eval()


def _actions(policy, seed: int = 0) -> np.ndarray:
    obs = np.random.default_rng(1).normal(size=(2, 1, OBS)).astype(np.float32)
    return policy.predict_chunk(obs, None, torch.Generator().manual_seed(seed)).actions


@pytest.mark.parametrize("kind", ["diffuser", "decision-diffuser"])
def test_with_sampler_is_a_view_that_leaves_the_planner_alone(kind):
    planner = _policy(kind)
    before = _actions(planner)
    view = planner.with_sampler("ddim:4")
    assert view.config.sampler == "ddim:4" and view.method.endswith("ddim4") and view.sampler.num_steps == 4
    assert planner.config.sampler == "ddpm:10" and planner.sampler.num_steps == 10
    assert view.denoiser is planner.denoiser                       # the same weights, no copy
    np.testing.assert_array_equal(_actions(planner), before)
    # the view plans as a planner built with that sampler does
    np.testing.assert_array_equal(_actions(view), _actions(_policy(kind, sampler="ddim:4")))
    assert _actions(view).shape == before.shape and view.predict_chunk(
        np.zeros((1, 1, OBS), np.float32)).nfe == 4
    # a parsed spec (as `fastpolicy eval --sampler` builds one) works as its text does
    from fastpolicy.diffusion import SamplerSpec

    parsed = planner.with_sampler(SamplerSpec.parse("ddim:4"))
    assert parsed.config.sampler == "ddim:4"
    np.testing.assert_array_equal(_actions(parsed), _actions(view))


def test_with_refinement_is_a_view_and_validates():
    td = _policy("trajectory-diffuser")
    before = _actions(td)
    draft_only = td.with_refinement(steps=0)
    assert draft_only.refine_levels() == [] and draft_only.method.endswith("refine0")
    assert td.config.refine_steps == 2 and td.refine_levels() == [4, 2, -1]
    np.testing.assert_array_equal(_actions(td), before)
    np.testing.assert_array_equal(_actions(td.with_refinement(steps=3, start=1.0)),
                                  _actions(_policy("trajectory-diffuser", refine_steps=3, refine_start=1.0)))
    with pytest.raises(ValueError, match="refine_start"):
        td.with_refinement(steps=2, start=0.0)
    assert td.config.refine_start == 0.5


def test_set_refinement_still_works_but_warns():
    td = _policy("trajectory-diffuser")
    with pytest.warns(DeprecationWarning, match="with_refinement"):
        td.set_refinement(steps=1)
    assert td.config.refine_steps == 1
    with pytest.warns(DeprecationWarning, match="with_sampler"):
        td.set_sampler("ddim:5")
    assert td.config.sampler == "ddim:5"                           # config.json describes the object


def test_planner_modules_are_small_and_the_old_import_path_works():
    import fastpolicy.policies.planners as planners
    from fastpolicy.train.planners import train_planner

    root = Path(planners.__file__).parent
    sizes = {f.name: len(f.read_text().splitlines()) for f in root.glob("*.py")}
    assert set(sizes) >= {"base.py", "diffuser.py", "state.py", "trajectory.py", "data.py", "tools.py"}
    assert max(sizes.values()) <= 400, sizes
    for name in planners.__all__:
        assert hasattr(planners, name), name
    assert callable(train_planner) and not hasattr(planners, "train_planner")
