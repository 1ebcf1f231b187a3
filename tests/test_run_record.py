"""The run record (fastpolicy.train.run_record): one cost.json per run, summed over resumes, and a
finished run reused rather than trained again — the same for every trainable thing a benchmark uses."""
import json

import pytest


def test_cost_accumulates_over_resumes_and_counts_earlier_stages_once(tmp_path):
    from fastpolicy.train.run_record import read_cost, record_cost

    run = tmp_path / "run"
    assert read_cost(run) is None
    record_cost(run, 2.0, 10, before=5.0, batch_size=64)
    cost = record_cost(run, 3.0, 20, before=99.0)  # a resume: earlier stages were counted already
    assert cost == read_cost(run)
    assert (cost["seconds"], cost["steps"]) == (5.0, 20)
    assert (cost["before_seconds"], cost["total_seconds"]) == (5.0, 10.0)
    assert cost["batch_size"] == 64
    assert [p.name for p in run.iterdir()] == ["cost.json"]  # written atomically: no temp file left
    json.loads((run / "cost.json").read_text())


def test_train_or_reuse_trains_once_then_reuses(linear_store, tmp_path, monkeypatch):
    from fastpolicy.train import offline
    from fastpolicy.train.config import TrainConfig
    from fastpolicy.train.run_record import read_cost, run_is_complete, train_or_reuse

    run = tmp_path / "bc"
    cfg = TrainConfig(steps=6, batch_size=8, warmup_steps=1, checkpoint_every=3, progress=False,
                      tensorboard=False, device="cpu")
    assert not run_is_complete(run, 6)
    seconds = train_or_reuse(linear_store, run, "bc", {"obs_horizon": 1, "pred_horizon": 2,
                                                       "action_horizon": 1}, cfg)
    assert run_is_complete(run, 6) and not run_is_complete(run, 7)
    assert seconds == pytest.approx(read_cost(run)["seconds"]) and read_cost(run)["steps"] == 6

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(offline, "train_offline", must_not_train)
    assert train_or_reuse(linear_store, run, "bc", {}, cfg) == seconds


def _cfg(steps):
    from fastpolicy.train.config import TrainConfig

    return TrainConfig(steps=steps, batch_size=8, warmup_steps=1, checkpoint_every=steps, progress=False,
                       tensorboard=False, device="cpu")


TINY_TD = {"d_model": 32, "n_layers": 1, "d_ff": 32, "idm_hidden": 16, "critic_hidden": 16,
           "backbone_kwargs": {"hidden": 32}, "num_train_timesteps": 10, "sampler": "ddpm:10",
           "pred_horizon": 6, "draft_mode": "one-pass"}


def test_a_run_of_another_recipe_is_refused_not_reused(linear_store, tmp_path, monkeypatch):
    """A finished run is reused only when it is what the call asks for: an explicit option, a changed
    default or another policy type name the field and leave the run untouched."""
    from fastpolicy.policies.planner_configs import TrajectoryDiffuserConfig
    from fastpolicy.train import offline
    from fastpolicy.train.run_record import RecipeMismatchError, read_cost, train_or_reuse

    run = tmp_path / "td"
    seconds = train_or_reuse(linear_store, run, "trajectory-diffuser", TINY_TD, _cfg(2))
    stored = (run / "latest").read_text()

    def must_not_train(*args, **kwargs):
        raise AssertionError("a complete run was trained again")

    monkeypatch.setattr(offline, "train_offline", must_not_train)
    # the same recipe (the data-set fields left to the store, as when it was trained): reused
    assert train_or_reuse(linear_store, run, "trajectory-diffuser", dict(TINY_TD), _cfg(2)) == seconds
    with pytest.raises(RecipeMismatchError, match=r"one_pass_prefixes: trained 'context', asked 'every'"):
        train_or_reuse(linear_store, run, "trajectory-diffuser", {**TINY_TD, "one_pass_prefixes": "every"},
                       _cfg(2))
    with pytest.raises(RecipeMismatchError, match="holds a 'trajectory-diffuser' run, asked for 'bc'"):
        train_or_reuse(linear_store, run, "bc", {}, _cfg(2))
    # a run trained when a default was different (its stored config says so) is caught although no
    # option names the field
    config_file = run / "checkpoints" / stored.strip() / "config.json"
    original = config_file.read_text()
    old = json.loads(original)
    assert old["policy_config"]["prediction_type"] == TrajectoryDiffuserConfig.prediction_type
    old["policy_config"]["prediction_type"] = "sample"
    config_file.write_text(json.dumps(old))
    with pytest.raises(RecipeMismatchError, match=r"prediction_type: trained 'sample', asked 'v_prediction'"):
        train_or_reuse(linear_store, run, "trajectory-diffuser", dict(TINY_TD), _cfg(2))
    config_file.write_text(original)
    # an unfinished run is checked before it is resumed, and nothing stored is touched
    with pytest.raises(RecipeMismatchError, match="d_model"):
        train_or_reuse(linear_store, run, "trajectory-diffuser", {**TINY_TD, "d_model": 64}, _cfg(4))
    assert (run / "latest").read_text() == stored and read_cost(run)["steps"] == 2


def test_bc_runs_are_checked_on_their_explicit_options(linear_store, tmp_path):
    from fastpolicy.train.run_record import RecipeMismatchError, train_or_reuse

    run = tmp_path / "bc"
    opts = {"obs_horizon": 1, "pred_horizon": 2, "action_horizon": 1}
    train_or_reuse(linear_store, run, "bc", opts, _cfg(2))
    with pytest.raises(RecipeMismatchError, match=r"pred_horizon: trained 2, asked 4"):
        train_or_reuse(linear_store, run, "bc", {**opts, "pred_horizon": 4}, _cfg(2))


def _linear_copy(path, seed, recipe="linear"):
    """A store shaped like ``linear_store`` with other episodes (``seed``) or another recipe name."""
    import numpy as np

    from fastpolicy.data.store import EpisodeStore

    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, attrs={"source": "test", "env_id": "none", "recipe": recipe,
                                          "seed": 0}) as w:
        for _ in range(12):
            n = int(rng.integers(20, 40))
            x = rng.uniform(-1, 1, size=(n, 1))
            goal = np.full((n, 1), rng.uniform(-1, 1))
            w.add_episode({"obs": np.concatenate([x, goal], 1).astype(np.float32),
                           "action": np.clip(goal - x, -1, 1).astype(np.float32),
                           "reward": -np.abs(goal - x)[:, 0].astype(np.float32),
                           "terminal": np.zeros(n, bool), "timeout": np.eye(1, n, n - 1, dtype=bool)[0]})
    return path


def test_a_run_trained_on_another_dataset_is_refused_not_reused(linear_store, tmp_path, monkeypatch):
    """Same recipe name, other content (a rebuilt store), or another recipe: the run is refused with the
    difference named; the same store, by path or opened, is reused."""
    from fastpolicy.data.store import EpisodeStore, store_fingerprint
    from fastpolicy.train import offline
    from fastpolicy.train.run_record import RecipeMismatchError, train_or_reuse
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    run = tmp_path / "bc"
    opts = {"obs_horizon": 1, "pred_horizon": 2, "action_horizon": 1}
    seconds = train_or_reuse(linear_store, run, "bc", opts, _cfg(4))
    trained = read_config(resolve_checkpoint(run))["train"]
    assert trained["store_fingerprint"] == store_fingerprint(linear_store) is not None
    assert trained["store_attrs"]["recipe"] == "linear"

    rebuilt = _linear_copy(tmp_path / "rebuilt", seed=1)
    renamed = _linear_copy(tmp_path / "renamed", seed=0, recipe="other")
    assert store_fingerprint(rebuilt) != store_fingerprint(linear_store)
    train_offline = offline.train_offline
    monkeypatch.setattr(offline, "train_offline", lambda *a, **k: pytest.fail("trained again"))
    with pytest.raises(RecipeMismatchError, match="content fingerprint"):
        train_or_reuse(rebuilt, run, "bc", opts, _cfg(4))
    with pytest.raises(RecipeMismatchError, match="recipe: trained 'linear', asked 'other'"):
        train_or_reuse(renamed, run, "bc", opts, _cfg(4))
    assert train_or_reuse(EpisodeStore.open(linear_store), run, "bc", opts, _cfg(4)) == seconds
    with pytest.raises(RecipeMismatchError, match="content fingerprint"):   # nor resumed on it
        train_offline(rebuilt, run, "bc", opts, _cfg(8), resume=True)
    # a worker that received the finished runs but not the data reuses them (nothing to compare against)
    assert train_or_reuse(tmp_path / "not-shipped", run, "bc", opts, _cfg(4)) == seconds
    assert (run / "latest").exists()


def test_planner_runs_record_their_dataset_too(linear_store, tmp_path):
    from fastpolicy.data.store import store_fingerprint
    from fastpolicy.train.run_record import RecipeMismatchError, train_or_reuse
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    run = tmp_path / "td"
    train_or_reuse(linear_store, run, "trajectory-diffuser", TINY_TD, _cfg(2))
    trained = read_config(resolve_checkpoint(run))["train"]
    assert trained["store_fingerprint"] == store_fingerprint(linear_store)
    rebuilt = _linear_copy(tmp_path / "rebuilt", seed=1)
    with pytest.raises(RecipeMismatchError, match="another dataset"):
        train_or_reuse(rebuilt, run, "trajectory-diffuser", TINY_TD, _cfg(2))
