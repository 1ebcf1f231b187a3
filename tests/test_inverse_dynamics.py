"""Inverse dynamics (the nets model, its fit on the shared Trainer): recovery, selection, resume, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastpolicy.nets.inverse_dynamics import (
    InverseDynamics,
    InverseDynamicsConfig,
    load_inverse_dynamics,
    predict_windows,
    save_inverse_dynamics,
    transition_windows,
)
from fastpolicy.train.inverse_dynamics import IDMTrainConfig, InverseDynamicsFit, fit_inverse_dynamics

A = np.array([[1.0, 0.1, 0, 0], [0, 1.0, 0, 0.1], [0, 0, 0.9, 0], [0, 0, 0, 0.9]])
B = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.05, 0.05]])


def linear_system(episodes: int = 40, length: int = 50, seed: int = 0):
    """s_{t+1} = A s_t + B a_t with uniform actions in [-1, 1]^2."""
    rng = np.random.default_rng(seed)
    obs, act = [], []
    for _ in range(episodes):
        s = rng.normal(size=4)
        for _ in range(length):
            a = rng.uniform(-1, 1, size=2)
            obs.append(s)
            act.append(a)
            s = A @ s + B @ a
    ends = np.arange(1, episodes + 1, dtype=np.int64) * length
    return np.asarray(obs, np.float32), np.asarray(act, np.float32), ends


@pytest.mark.parametrize("history,loss", [(0, "mse"), (1, "nll")])
def test_recovers_actions_of_a_linear_system(history, loss):
    torch.manual_seed(0)
    obs, act, ends = linear_system()
    # Mish: a smooth activation fits a linear map far more precisely than ReLU for the same budget
    config = InverseDynamicsConfig(4, 2, history=history, hidden=64, loss=loss, activation="mish",
                                   action_low=-1, action_high=1)
    train = IDMTrainConfig(steps=1000, lr=3e-3, eval_every=50)
    model, report = fit_inverse_dynamics(obs, act, ends, config, train)
    # fresh trajectories of the same system, never seen in training
    obs2, act2, ends2 = linear_system(episodes=10, seed=1)
    windows, has_next = transition_windows(obs2, ends2, history)
    mean, std = predict_windows(model, windows)
    err = mean[has_next] - act2[has_next]
    assert np.mean(err ** 2) < 1.5e-3, np.mean(err ** 2)     # < 0.5% of the action variance (1/3)
    assert np.median(np.abs(err)) < 0.015
    assert np.all(np.abs(mean) <= 1.0)                        # labels are clipped to the action space
    assert std.shape == mean.shape and np.all(std > 0) and np.median(std) < 0.05
    if history == 0:  # the planners' call
        a = model.action(torch.from_numpy(obs2[:5]), torch.from_numpy(obs2[1:6]))
        np.testing.assert_allclose(a.detach().numpy(), mean[:5], atol=1e-6)


def test_best_checkpoint_is_chosen_on_validation_loss():
    """Actions that are pure noise: the net can only memorise, so validation loss rises after a while."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    act = rng.normal(size=(200, 1)).astype(np.float32)
    ends = np.arange(20, 201, 20)
    config = InverseDynamicsConfig(3, 1, history=0, hidden=128, loss="mse")
    train = IDMTrainConfig(steps=600, batch_size=64, lr=3e-3, eval_every=20, val_fraction=0.3, cosine=False)
    model, report = fit_inverse_dynamics(obs, act, ends, config, train)
    val = {h["step"]: h["val_loss"] for h in report.history}
    best = min(val, key=val.get)
    assert report.best_step == [best] and best < train.steps    # not simply the last weights
    assert report.best_val_loss[0] == pytest.approx(val[best])
    assert val[train.steps] > val[best]
    # the returned weights are the best ones: recomputing the validation loss gives that value
    val_rows = np.concatenate([np.arange(e - 20, e - 1) for e in ends[report.val_episodes]])
    windows, _ = transition_windows(obs, ends, 0)
    with torch.inference_mode():
        loss = model.member_losses(torch.from_numpy(windows[val_rows]), torch.from_numpy(act[val_rows]))
    assert float(loss[0]) == pytest.approx(report.best_val_loss[0], rel=1e-5)
    assert len(report.val_episodes) == 3 and not set(report.val_episodes) & set(report.train_episodes)


def test_ensemble_is_a_moment_matched_mixture():
    torch.manual_seed(0)
    config = InverseDynamicsConfig(3, 2, history=1, hidden=16, ensemble=3, action_low=-0.5, action_high=0.5)
    model = InverseDynamics(config).eval()
    states = torch.randn(7, 3, 3)
    means, stds = model(states)
    assert means.shape == stds.shape == (3, 7, 2)
    mean, std = model.predict(states, clip=False)
    mu = means.mean(0)
    torch.testing.assert_close(mean, mu)
    total_var = (stds ** 2).mean(0) + (means ** 2).mean(0) - mu ** 2
    torch.testing.assert_close(std ** 2, total_var, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.predict(states)[0], mu.clamp(-0.5, 0.5))


def test_save_load_roundtrip(tmp_path):
    obs, act, ends = linear_system(episodes=6, length=20)
    config = InverseDynamicsConfig(4, 2, history=1, hidden=32, ensemble=2, loss="mse")
    model, report = fit_inverse_dynamics(obs, act, ends, config, IDMTrainConfig(steps=50, eval_every=25))
    path = save_inverse_dynamics(model, tmp_path / "idm", report)
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", "model.safetensors", "normalizer.safetensors"]   # no pickle
    loaded = load_inverse_dynamics(path)
    windows, _ = transition_windows(obs, ends, 1)
    for a, b in zip(predict_windows(model, windows), predict_windows(loaded, windows)):
        np.testing.assert_array_equal(a, b)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["policy_type"] == "inverse-dynamics"
    assert loaded.checkpoint_hash == cfg["sha256"]["model.safetensors"]
    assert len(loaded.config.mse_std) == 2 and cfg["inverse_dynamics"]["fit"]["best_step"] == report.best_step
    with pytest.raises(FileExistsError):
        save_inverse_dynamics(model, path)


def test_transition_windows_pad_history_and_mark_missing_next():
    obs = np.arange(10, dtype=np.float32)[:, None]
    windows, has_next = transition_windows(obs, np.array([4, 10]), history=2)
    np.testing.assert_array_equal(windows[0, :, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(windows[5, :, 0], [4, 4, 5, 6])
    np.testing.assert_array_equal(has_next, [1, 1, 1, 0, 1, 1, 1, 1, 1, 0])
    nxt = obs + 100
    windows, has_next = transition_windows(obs, np.array([4, 10]), history=0, next_obs=nxt)
    assert has_next.all() and windows[3, 1, 0] == 103 and windows[2, 1, 0] == 3


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="loss"):
        InverseDynamicsConfig(3, 2, loss="l1")
    with pytest.raises(ValueError, match="history"):
        InverseDynamicsConfig(3, 2, history=-1)
    model = InverseDynamics(InverseDynamicsConfig(3, 2, history=1, hidden=8))
    with pytest.raises(ValueError, match=r"states must be \(B, 3, 3\)"):
        model(torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match="history=0"):
        model.action(torch.zeros(3), torch.zeros(3))
    obs, act, ends = linear_system(episodes=2, length=5)
    with pytest.raises(ValueError, match="no transition has both a known action"):
        fit_inverse_dynamics(obs, act, ends, InverseDynamicsConfig(4, 2),
                             action_mask=np.zeros(len(obs), bool))
    with pytest.raises(ValueError, match="do not match the config"):
        fit_inverse_dynamics(obs, act, ends, InverseDynamicsConfig(5, 2))


def test_fit_runs_on_the_shared_trainer_and_resumes_bit_for_bit(tmp_path):
    """Stopped after 40 of 80 steps and resumed: the same weights, best steps and history as one run;
    the run directory loads as the best-on-validation model with the fit report."""
    obs, act, ends = linear_system(episodes=12, length=30)
    config = InverseDynamicsConfig(4, 2, history=1, hidden=32, ensemble=2, dropout=0.1)

    def fit(steps, run, resume=False):
        train = IDMTrainConfig(steps=steps, eval_every=20, batch_size=32)
        return fit_inverse_dynamics(obs, act, ends, config, train, run_dir=run, resume=resume)

    whole, whole_report = fit(80, tmp_path / "whole")
    after_step = InverseDynamicsFit.after_step

    def crash_at_45(self, step):
        after_step(self, step)
        if step == 45:   # the last checkpoint is step 40's
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(InverseDynamicsFit, "after_step", crash_at_45)
        with pytest.raises(KeyboardInterrupt):
            fit(80, tmp_path / "split")
    resumed, resumed_report = fit(80, tmp_path / "split", resume=True)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed_report == whole_report
    assert [h["step"] for h in whole_report.history][::2] == [20, 40, 60, 80]
    loaded = load_inverse_dynamics(tmp_path / "whole")
    for a, b in zip(whole.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.checkpoint_info["fit"]["best_step"] == whole_report.best_step
    _, longer = fit(100, tmp_path / "whole", resume=True)   # trained further: the history grows
    assert [h["step"] for h in longer.history][::2] == [20, 40, 60, 80, 100]
    with pytest.raises(FileExistsError, match="resume"):
        fit(80, tmp_path / "whole")


def test_constant_schedule_and_beta1_reach_the_optimizer(tmp_path):
    from fastpolicy.train.config import TrainConfig
    from fastpolicy.train.trainer import Trainer

    cfg = IDMTrainConfig(steps=10, cosine=False).trainer_config(ensemble=1)
    assert (cfg.lr_schedule, cfg.adam_beta1, cfg.warmup_steps, cfg.ema) == ("constant", 0.9, 0, False)
    model = InverseDynamics(InverseDynamicsConfig(3, 1, history=0, hidden=8))
    trainer = Trainer(model, None, cfg, tmp_path / "run")
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert [trainer._lr_lambda(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cosine = Trainer(model, None, TrainConfig(steps=10, warmup_steps=0, ema=False, tensorboard=False),
                     tmp_path / "run2")
    assert cosine._lr_lambda(0) == 1.0 and cosine._lr_lambda(5) == pytest.approx(0.5)   # no warm-up step
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
