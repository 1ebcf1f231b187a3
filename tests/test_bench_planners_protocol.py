"""The planners' fair protocol (fastpolicy.bench.planners_protocol, bench/bench_planners.py): disjoint
validation and test seeds, selection blind to test records, paired differences on matching episodes,
training seeds aggregated, finished evaluations reused; and the whole protocol at toy size (--quick)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from bench_scripts import load_bench_script

from fastpolicy.bench.planners_protocol import (
    EvalRecord,
    cached_record,
    check_disjoint,
    env_seeds,
    owns_unit,
    paired_difference,
    parse_shard,
    protocol_methods,
    select_settings,
    setting_key,
    summarize_method,
)


def _rec(method: str, setting: str, seed: int, split: str, scores: dict[int, float]) -> EvalRecord:
    return EvalRecord(method, setting, seed, split, sorted({e // 1000 for e in scores}), dict(scores), [1, 1])


def test_validation_and_test_episodes_are_disjoint():
    assert env_seeds([100, 101], 3) == [100000, 100001, 100002, 101000, 101001, 101002]
    check_disjoint([100, 101, 102], [0, 1, 2, 3], 5)
    with pytest.raises(ValueError, match="share env seeds"):
        check_disjoint([0, 100], [0, 1], 2)
    with pytest.raises(ValueError, match="1000 episodes"):
        check_disjoint([100], [0], 1001)


def test_selection_reads_only_validation_records():
    """On validation setting A wins; on test B would win by far: the choice is A, and test records alone
    choose nothing."""
    val = {100_000: 0.0, 100_001: 0.0}
    test = {0: 0.0, 1: 0.0}
    records = []
    for seed in (0, 1, 2):
        records += [_rec("m", "A", seed, "validation", {e: 10.0 + seed for e in val}),
                    _rec("m", "B", seed, "validation", {e: 5.0 for e in val}),
                    _rec("m", "A", seed, "test", {e: 0.0 for e in test}),
                    _rec("m", "B", seed, "test", {e: 99.0 for e in test})]
    assert select_settings(records) == {"m": ("A", pytest.approx(11.0))}
    assert select_settings([r for r in records if r.split == "test"]) == {}
    # a tie keeps the setting declared first (grids list the reference setting first)
    tie = [_rec("m", "ref", 0, "validation", val), _rec("m", "other", 0, "validation", val)]
    assert select_settings(tie)["m"][0] == "ref"


def test_three_training_seeds_are_aggregated_with_standard_errors():
    episodes = [0, 1, 1000, 1001]
    per_seed = {0: [1.0, 2.0, 3.0, 4.0], 1: [3.0, 4.0, 5.0, 6.0], 2: [5.0, 6.0, 7.0, 8.0]}
    records = [_rec("m", "s", seed, "test", dict(zip(episodes, v))) for seed, v in per_seed.items()]
    out = summarize_method(records[::-1])                             # order of the records does not matter
    every = np.concatenate(list(per_seed.values()))
    assert out["score_mean"] == pytest.approx(every.mean()) and out["score_std"] == pytest.approx(every.std())
    assert out["train_seeds"] == [0, 1, 2] and out["train_seed_scores"] == [2.5, 4.5, 6.5]
    assert out["score_se_train_seeds"] == pytest.approx(np.std([2.5, 4.5, 6.5], ddof=1) / np.sqrt(3))
    episode_means = np.mean(list(per_seed.values()), axis=0)          # 3, 4, 5, 6
    assert out["score_se_episodes"] == pytest.approx(np.std(episode_means, ddof=1) / 2)
    assert out["episodes"] == 4 and out["seeds"] == [0, 1]


def test_paired_differences_match_episodes_by_env_seed():
    a = [_rec("a", "s", seed, "test", {0: 1.0 + seed, 1: 5.0, 1000: 2.0}) for seed in (0, 1)]
    b = [_rec("b", "s", seed, "test", {1000: 1.0, 0: 0.0, 1: 2.0 * seed}) for seed in (0, 1)]
    d = paired_difference(a, b)
    diffs = [1.5 - 0.0, 5.0 - 1.0, 2.0 - 1.0]                          # by env seed 0, 1, 1000
    assert d["pairs"] == 3 and d["mean"] == pytest.approx(np.mean(diffs))
    assert d["se"] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(3))
    with pytest.raises(ValueError, match="same env seeds"):
        paired_difference(a, [_rec("b", "s", 0, "test", {0: 0.0, 1: 0.0, 2000: 0.0})])


def test_finished_evaluations_are_reused(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return _rec("m", "k=1", 0, "validation", {100_000: 3.0, 100_001: 4.0})

    first = cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 2, None, compute)
    again = cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 2, None, compute)
    assert calls == [1] and again.scores == first.scores
    cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 3, None, compute)   # other episodes: rerun
    assert len(calls) == 2


def test_a_retrained_run_never_reuses_its_predecessors_scores(tmp_path):
    """Same step, other weights (retrained on another store, or with another recipe): evaluate again."""
    calls = []

    def compute(digest):
        def run():
            calls.append(digest)
            return dataclasses.replace(_rec("m", "k=1", 0, "validation", {100_000: float(len(calls))}),
                                       checkpoint_step=8000, checkpoint_hash=digest)
        return run

    first = cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, compute("aa"),
                          checkpoint_hash="aa")
    assert cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, None,
                         checkpoint_hash="aa").scores == first.scores
    assert cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, None,
                         checkpoint_hash="bb") is None
    second = cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, compute("bb"),
                           checkpoint_hash="bb")
    assert calls == ["aa", "bb"] and second.scores == {100_000: 2.0}


def test_a_record_without_a_weight_hash_is_not_trusted_for_hashed_weights(tmp_path):
    legacy = dataclasses.replace(_rec("m", "k=1", 0, "validation", {100_000: 3.0}), checkpoint_step=8000)
    cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, lambda: legacy)
    assert cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, None) is not None
    assert cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, 8000, None,
                         checkpoint_hash="aa") is None


def test_a_shard_reads_other_shards_units_from_the_cache_only(tmp_path):
    def compute():
        return _rec("m", "k=1", 0, "validation", {100_000: 3.0})

    assert cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, None, None) is None
    cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, None, compute)
    assert cached_record(tmp_path, "m", "k=1", 0, "validation", [100], 1, None, None).scores == {100_000: 3.0}


def test_shards_partition_the_units():
    shards = [parse_shard(f"{i}/3") for i in range(3)]
    owners = [[i for i, s in enumerate(shards) if owns_unit(u, s)] for u in range(10)]
    assert all(len(o) == 1 for o in owners) and all(owns_unit(u, None) for u in range(10))
    for bad in ["2", "2/2", "-1/2", "a/b", "1/0"]:
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_guidance_at_weight_one_or_zero_runs_one_half_only():
    """ε_u + w(ε_c − ε_u) at w = 1 is ε_c: the denoiser sees N rows, not 2N, and the result is unchanged."""
    import torch

    from fastpolicy.policies.registry import build_policy

    dd = build_policy("decision-diffuser", {"obs_dim": 3, "action_dim": 1, "pred_horizon": 4,
                                            "num_train_timesteps": 10, "sampler": "ddpm:10"}).eval()
    rows = []
    dd.denoiser.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    x, state, t = torch.randn(5, 4, 3), torch.randn(5, 3), torch.full((5,), 4)
    with torch.no_grad():
        full = dd.denoiser(x.repeat(2, 1, 1), t.repeat(2), dd.guidance_cond(state))
        for w, half in ((1.0, full[:5]), (0.0, full[5:])):
            torch.testing.assert_close(dd.guided_eps(x, t, state, weight=w), half, atol=1e-6, rtol=0)
        dd.guided_eps(x, t, state, weight=1.2)
    assert rows == [10, 5, 5, 10]


def test_declared_grids_and_settings_as_views():
    from fastpolicy.policies.registry import build_policy

    assert {m.name for m in protocol_methods(200, td_draft_modes=["autoregressive", "one-pass"])} >= {
        "trajectory-diffuser-draft", "trajectory-diffuser-one-pass", "trajectory-diffuser-one-pass-draft"}
    methods = {m.name: m for m in protocol_methods(200)}
    assert set(methods) == {"bc-mlp", "diffuser-value-guided", "decision-diffuser-ddpm200",
                            "decision-diffuser-ddim10", "decision-diffuser-ddim4", "trajectory-diffuser",
                            "trajectory-diffuser-draft"}
    # the reference settings come first, so a tie keeps them
    assert methods["decision-diffuser-ddpm200"].settings()[0] == {
        "sampler": "ddpm:200", "guidance_weight": 1.2, "target_return_multiple": 1.1}
    assert methods["diffuser-value-guided"].settings()[0] == {"guide_scale": 0.1, "num_candidates": 64}
    # every planner that ranks candidates can also be validated without ranking (one plan as sampled)
    for name in ("diffuser-value-guided", "trajectory-diffuser"):
        assert any(s["num_candidates"] == 1 for s in methods[name].settings()), name
    assert all(s["refine_steps"] == 0 for s in methods["trajectory-diffuser-draft"].settings())
    # every return-conditioned method is tuned over the same return targets (a grid entry without one
    # plans with the config's default rule)
    from fastpolicy.policies.planner_configs import StatePlannerConfig

    default = StatePlannerConfig.target_return_multiple
    targets = {name: {s.get("target_return_multiple", default) for s in methods[name].settings()}
               for name in ("decision-diffuser-ddpm200", "decision-diffuser-ddim4", "trajectory-diffuser",
                            "trajectory-diffuser-draft")}
    shared = targets["decision-diffuser-ddpm200"]
    assert all(t == shared for t in targets.values()) and len(shared) >= 3 and 1.1 in shared, targets
    assert setting_key({"b": 1, "a": "x"}) == "a=x,b=1" and setting_key({}) == "default"
    td = build_policy("trajectory-diffuser", {"obs_dim": 3, "action_dim": 1, "pred_horizon": 4,
                                              "num_train_timesteps": 10, "sampler": "ddpm:10", "d_model": 16,
                                              "d_ff": 16, "n_layers": 1})
    view = td.with_settings(**methods["trajectory-diffuser"].settings()[2])
    assert view.config.refine_steps == 2 and td.config.refine_steps == 1
    assert view.transformer is td.transformer
    with pytest.raises(ValueError, match="d_model"):
        td.with_settings(d_model=32)                                  # shapes a network: needs training
    with pytest.raises(ValueError, match="guide_scale"):
        td.with_settings(guide_scale=0.1)                             # a Diffuser's setting, not a TD's


@pytest.mark.slow
def test_quick_protocol_end_to_end(tmp_path):
    """bench/bench_planners.py --quick: every method trained per training seed, tuned on validation,
    scored on the shared test episodes, paired and timed (~1 min on a busy 2-core machine)."""
    from fastpolicy.evaluation.results import read_results

    driver = load_bench_script("bench_planners")
    args = driver.Args(quick=True, work=str(tmp_path / "work"), results_dir=str(tmp_path),
                       plot_dir=str(tmp_path), td_draft_modes=["one-pass"])
    # two shards share the evaluations through the cache and write no rows; the plain run finishes
    evals = tmp_path / "work" / "maze2d-umaze" / "evals"
    driver.main(dataclasses.replace(args, shard="1/2"))
    n_validation = len(list((evals / "validation").rglob("*.json")))
    assert n_validation > 0 and not (evals / "test").exists()
    driver.main(dataclasses.replace(args, shard="0/2"))
    assert len(list((evals / "validation").rglob("*.json"))) > n_validation
    assert (evals / "test").exists() and not (tmp_path / "planners_protocol_maze2d-umaze.json").exists()
    driver.main(args)
    rows = read_results(tmp_path / "planners_protocol_maze2d-umaze.json")
    val = [r for r in rows if r["split"] == "validation"]
    test = {r["method"]: r for r in rows if r["split"] == "test"}
    assert len(test) == 7 and {"bc-mlp", "decision-diffuser-ddpm10", "trajectory-diffuser-one-pass",
                               "trajectory-diffuser-one-pass-draft"} <= set(test)
    assert set(env_seeds(val[0]["seeds"], 2)).isdisjoint(env_seeds(test["bc-mlp"]["seeds"], 2))
    for name, r in test.items():
        assert r["train_seeds"] == [0, 1, 2] and len(r["train_seed_scores"]) == 3
        assert r["latency_ms_p50"] > 0 and r["latency_samples"] == 6 and r["samples_seen"] == 20 * 16
        # the chosen setting is the validation winner of that method
        own = [v for v in val if v["method"] == name]
        best = max(own, key=lambda v: v["score_mean"])
        assert r["setting"] == next(v["setting"] for v in own if v["selected_on_validation"])
        assert r["validation_score"] == pytest.approx(best["score_mean"])
        if name != "bc-mlp":
            assert r["diff_vs_bc_pairs"] == r["episodes"] == 4
    td = test["trajectory-diffuser-one-pass"]
    assert "diff_vs_dd_full_mean" in td and td["transformer_calls_per_plan"] == 1
    assert td["dd_full_method"] == "decision-diffuser-ddpm10"
    # the verdict fields, computed from the same run's rows
    assert td["td_10x_faster_than_dd_full"] == (td["speedup_vs_dd_full"] >= 10)
    assert td["td_scores_at_least_dd_full"] == (td["diff_vs_dd_full_mean"] >= -td["diff_vs_dd_full_se"])
    fastest = td["fastest_dd_at_td_score"]
    if fastest is not None:
        assert fastest.startswith("decision-diffuser")
        assert td["speedup_vs_fastest_dd_at_td_score"] == pytest.approx(
            test[fastest]["latency_ms_p50"] / td["latency_ms_p50"])
    assert test["decision-diffuser-ddim4"]["setting_values"]["sampler"] == "ddim:4"
    runs = tmp_path / "work" / "maze2d-umaze"
    assert (runs / "trajectory-diffuser-one-pass" / "seed2" / "cost.json").exists()
    assert (tmp_path / "planners_protocol_maze2d-umaze.png").stat().st_size > 0
    cached = list((tmp_path / "work" / "maze2d-umaze" / "evals" / "test").rglob("*.json"))
    assert len(cached) == 7 * 3 and json.loads(cached[0].read_text())["split"] == "test"
