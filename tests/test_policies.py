"""DiffusionPolicy / BC / Session behaviour: shapes, receding horizon, NFE accounting, config errors."""

import numpy as np
import pytest
import torch

from fastpolicy.policies.bc import BCConfig, BCPolicy
from fastpolicy.policies.diffusion_policy import DiffusionPolicy


def _dp(**kw):
    cfg = dict(obs_dim=3, action_dim=2, backbone="mlp", sampler="ddim:4")
    cfg.update(kw)
    return DiffusionPolicy.from_config(cfg)


def test_predict_chunk_shapes_and_nfe():
    policy = _dp().eval()
    out = policy.predict_chunk(np.zeros((5, 2, 3), np.float32), generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (5, 8, 2) and out.nfe == 4


def test_session_replans_every_action_horizon_and_counts_nfe():
    policy = _dp().eval()
    session = policy.new_session(batch_size=2, seed=0)
    nfe = []
    for _ in range(20):
        action = session.act(np.random.default_rng(0).random((2, 3)).astype(np.float32))
        assert action.shape == (2, 2)
        nfe.append(session.stats.nfe[-1])
    assert nfe == [4, 0, 0, 0, 0, 0, 0, 0] * 2 + [4, 0, 0, 0]
    s = session.stats.summary()
    assert s["nfe_per_step_max"] == 4 and s["nfe_per_step_mean"] == pytest.approx(12 / 20)


def test_session_pads_history_with_first_frame():
    policy = _dp(obs_horizon=3, pred_horizon=16, action_horizon=4)
    session = policy.new_session()
    session.act(np.array([1.0, 2.0, 3.0], np.float32))
    window = session.observation_window()
    assert window.shape == (1, 3, 3) and np.all(window == [1.0, 2.0, 3.0])


def test_same_generator_seed_gives_same_actions():
    policy = _dp(sampler="ddpm:10").eval()
    obs = np.random.default_rng(1).random((1, 2, 3)).astype(np.float32)
    a = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)).actions
    b = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)).actions
    c = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(4)).actions
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_with_sampler_changes_nfe_and_method_on_a_view_only():
    policy = _dp(sampler="ddim:10").eval()
    config_before = dict(policy.config_dict())
    view = policy.with_sampler("ddpm:100", action_horizon=4)
    assert view.predict_chunk(np.zeros((1, 2, 3), np.float32)).nfe == 100 and view.method == "teacher-ddpm100"
    assert view.config.sampler == "ddpm:100" and view.action_horizon == view.config.action_horizon == 4
    # the shared policy is untouched: same mode, same config; the view shares its weights (no copy)
    assert policy.method == "teacher-ddim10" and policy.config_dict() == config_before
    assert policy.predict_chunk(np.zeros((1, 2, 3), np.float32)).nfe == 10
    assert all(a is b for a, b in zip(policy.parameters(), view.parameters()))
    with pytest.warns(DeprecationWarning, match="with_sampler"):
        policy.set_sampler("ddim:4")


def test_with_action_horizon_executes_a_prefix_of_the_same_plan_on_a_view():
    policy = _dp(sampler="ddim:4").eval()
    view = policy.with_action_horizon(3)
    obs = np.random.default_rng(0).normal(size=(2, 2, 3)).astype(np.float32)
    full = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1))
    short = view.predict_chunk(obs, generator=torch.Generator().manual_seed(1))
    assert short.actions.shape[1] == 3 and np.array_equal(short.actions, full.actions[:, :3])
    assert short.nfe == full.nfe == 4 and view.method == policy.method == "teacher-ddim4"
    assert policy.config.action_horizon == 8 and view.action_horizon == 3
    with pytest.raises(ValueError, match="action_horizon"):
        policy.with_action_horizon(16)       # beyond what the predicted sequence holds


def test_mode_evaluation_order_does_not_matter():
    """Evaluating mode A then B gives what B then A gives, and the policy's config is unchanged after."""
    from fastpolicy.evaluation import evaluate

    policy = _dp(obs_dim=6, sampler="ddim:10").eval()
    config_before = dict(policy.config_dict())

    def run(spec):
        row = evaluate(policy.with_sampler(spec), "maze2d-umaze", episodes=1, seeds=[0], latency_steps=0,
                       progress=False)
        return {k: row[k] for k in ("method", "score_mean", "return_mean", "nfe_per_step_mean")}

    a_then_b = [run("ddim:4"), run("ddpm:10")]
    b_then_a = [run("ddpm:10"), run("ddim:4")]
    assert a_then_b == b_then_a[::-1]
    assert policy.config_dict() == config_before and policy.method == "teacher-ddim10"


def test_bad_observation_window_is_named():
    with pytest.raises(ValueError, match="expected"):
        _dp().predict_chunk(np.zeros((1, 2, 4), np.float32))


def test_nan_observation_rejected_by_session():
    with pytest.raises(ValueError, match="NaN"):
        _dp().new_session().act(np.array([np.nan, 0, 0], np.float32))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(action_horizon=16), "action_horizon"),
        (dict(backbone="unet-small", pred_horizon=15, action_horizon=8), "divisible by 4"),
        (dict(sampler="euler:3"), "sampler|euler"),
        (dict(unknown_option=1), "unknown"),
    ],
)
def test_config_errors_are_clear(bad, match):
    with pytest.raises((ValueError, KeyError), match=match):
        _dp(**bad)


def test_training_loss_falls_on_a_small_problem():
    torch.manual_seed(0)
    policy = BCPolicy(BCConfig(obs_dim=2, action_dim=1, hidden=64, depth=2))
    opt = torch.optim.Adam(policy.parameters(), 1e-2)
    obs = torch.rand(256, 2, 2) * 2 - 1
    action = (obs[:, -1:, 1:] - obs[:, -1:, :1]).repeat(1, 16, 1).clamp(-1, 1)
    batch = {"obs": obs, "action": action}
    first = policy(batch)["loss"].item()
    for _ in range(200):
        loss = policy(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_diffusion_loss_is_finite_and_masks_unlabeled_steps():
    policy = _dp()
    batch = {"obs": torch.rand(8, 16, 3), "action": torch.rand(8, 16, 2)}
    g = torch.Generator().manual_seed(0)
    full = policy(batch, g)["loss"]
    assert torch.isfinite(full)
    mask = torch.zeros(8, 16, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    masked = policy({**batch, "action_mask": mask}, g)["loss"]
    assert masked.item() == 0.0


def test_session_refuses_to_emit_non_finite_actions():
    from fastpolicy.policies.base import ChunkResult

    policy = _dp().eval()
    policy.predict_chunk = lambda *a, **k: ChunkResult(np.full((1, 8, 2), np.nan, np.float32), 1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        policy.new_session().act(np.zeros(3, np.float32))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_every_sampler_stays_within_the_trained_action_bounds(prediction_type):
    """DPM-Solver runs unclipped and an ε estimate is amplified: outputs are still bounded by the data."""
    from fastpolicy.data.normalize import Normalizer, NormalizerSet

    rng = np.random.default_rng(0)
    actions = rng.uniform([-0.5, 0.0], [0.0, 2.0], size=(200, 2))      # actions in [-0.5, 2]
    norm = NormalizerSet({"obs": Normalizer("limits").fit(rng.normal(size=(200, 3))),
                          "action": Normalizer("limits").fit(actions)})
    policy = DiffusionPolicy.from_config(dict(obs_dim=3, action_dim=2, backbone="mlp",
                                              prediction_type=prediction_type), norm.state_dict()).eval()
    with torch.no_grad():   # an untrained net with a huge output: unbounded samplers would leave the range
        policy.backbone.output_layer.weight.mul_(300.0)
        policy.backbone.output_layer.bias.fill_(50.0)
    specs = ["ddpm:10", "ddim:10", "dpm:5,spacing=leading", "ddim:10,clip=false",
             "dpm:10,spacing=leading,order=1"]
    for spec in specs:
        out = policy.with_sampler(spec).predict_chunk(rng.normal(size=(4, 2, 3)).astype(np.float32),
                                   generator=torch.Generator().manual_seed(0))
        assert np.isfinite(out.actions).all()
        assert (out.actions >= np.array([-0.5, 0.0]) - 1e-6).all(), spec
        assert (out.actions <= np.array([0.0, 2.0]) + 1e-6).all(), spec


def test_sampler_spec_text_carries_spacing_and_temperature_into_the_policy():
    policy = _dp().with_sampler("ddim:10,spacing=trailing,temperature=0.5")
    assert policy.sampler.spec.timestep_spacing == "trailing" and policy.sampler.spec.temperature == 0.5
    assert policy.sampler.spec.prediction_type == policy.config.prediction_type == "sample"
    assert int(policy.sampler.timesteps[0]) == 99 and policy.method == "teacher-ddim10-trailing-temp0.5"
    eps = _dp(prediction_type="epsilon")
    with pytest.raises(ValueError, match="amplifies"):
        eps.with_sampler("dpm:5")                # unclipped from t = 99 with an ε model


def test_training_windows_let_the_last_frame_condition(linear_store):
    """pad_after = Tp − To: the final observation of every episode is a training condition."""
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.train.offline import build_dataset

    store = EpisodeStore.open(linear_store)
    ds = build_dataset(store, obs_horizon=2, pred_horizon=16, action_horizon=8)
    conditions = {tuple(ds[i]["obs"][1].tolist()) for i in range(len(ds))}
    obs = store.array("obs")
    for end in store.episode_ends:
        assert tuple(obs[end - 1].tolist()) in conditions
    # one window per frame: every frame conditions exactly once
    assert len(ds) == len(obs)
