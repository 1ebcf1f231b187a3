"""The training-seed D4RL study's reading: the sampler is chosen on validation rows only, test scores pool
every episode of every training seed, and the difference to BC is paired episode by episode."""

import numpy as np
import pytest
from bench_scripts import load_bench_script


def _row(method, seed, split, scores):
    return {"task": "hopper-medium", "method": method, "train_seed": seed, "split": split, "steps": 10,
            "seeds": [0], "nfe_per_step_mean": 1.0, "nfe_per_step_max": 1, "episode_scores": scores}


def test_pick_reads_validation_only_and_test_pools_seeds_with_paired_difference():
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS

    study = load_bench_script("bench_d4rl_seeds")
    a, b = list(TEACHER_SAMPLERS)[:2]
    rows = []
    for s in (0, 1, 2):
        rows += [_row(study.BC, s, "validation", [50.0, 50.0]), _row(study.BC, s, "test", [40.0 + s, 60.0])]
        # a wins on validation, b wins on test: the pick must be a
        rows += [_row(a, s, "validation", [70.0, 70.0]), _row(a, s, "test", [30.0, 30.0 + s])]
        rows += [_row(b, s, "validation", [60.0, 60.0]), _row(b, s, "test", [90.0, 90.0])]
    out = {r["method"]: r for r in study.pooled(rows, "hopper-medium", [0, 1, 2])}
    assert out[a]["selected_on_validation"] is True and out[b]["selected_on_validation"] is False
    assert out[study.BC]["selected_on_validation"] is None
    test_a = np.array([[30.0, 30.0], [30.0, 31.0], [30.0, 32.0]])
    assert out[a]["score_mean"] == pytest.approx(test_a.mean()) and out[a]["episodes"] == 6
    assert out[a]["score_se"] == pytest.approx(test_a.mean(1).std(ddof=1) / np.sqrt(3))
    bc = np.array([[40.0, 60.0], [41.0, 60.0], [42.0, 60.0]])
    assert out[a]["diff_vs_bc_mean"] == pytest.approx((test_a - bc).mean())
    assert out[a]["diff_vs_bc_se"] == pytest.approx((test_a - bc).mean(1).std(ddof=1) / np.sqrt(3))
    assert out[a]["validation_score"] == pytest.approx(70.0) and out[a]["validation_episodes"] == 6


def test_a_training_seed_missing_a_row_is_left_out():
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS

    study = load_bench_script("bench_d4rl_seeds")
    a = next(iter(TEACHER_SAMPLERS))
    splits = ("validation", "test")
    rows = [_row(m, s, sp, [float(s)]) for m in (study.BC, a) for s in (0, 1) for sp in splits]
    rows = [r for r in rows if not (r["method"] == a and r["train_seed"] == 1 and r["split"] == "test")]
    out = study.pooled(rows, "hopper-medium", [0, 1])
    assert {r["method"]: r["train_seeds"] for r in out} == {study.BC: [0], a: [0]}
    assert study.pooled([r for r in rows if r["train_seed"] == 1], "hopper-medium", [1]) == []


def test_summarize_only_pools_the_rows_on_disk_without_training(tmp_path):
    import json

    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS

    study = load_bench_script("bench_d4rl_seeds")
    a = next(iter(TEACHER_SAMPLERS))
    rows = [{**_row(m, s, sp, [float(s), 10.0]), "score_mean": (s + 10.0) / 2, "score_std": 1.0,
             "episodes": 2, "latency_ms_p50": None, "latency_ms_p99": None, "commit": "test"}
            for m in (study.BC, a) for s in (0, 1) for sp in ("validation", "test")]
    (tmp_path / "d4rl_seeds_hopper-medium.json").write_text(json.dumps(rows))
    args = study.Args(tasks=["hopper-medium"], train_seeds=[0, 1], summarize_only=True,
                      results_dir=str(tmp_path), runs_dir=str(tmp_path / "no-runs"),
                      plot=str(tmp_path / "p.png"))
    study.main(args)
    summary = json.loads((tmp_path / "d4rl_seeds.json").read_text())
    assert {r["method"]: r["train_seeds"] for r in summary} == {study.BC: [0, 1], a: [0, 1]}
    assert not (tmp_path / "no-runs").exists()  # nothing was trained
    with pytest.raises(FileNotFoundError, match="walker2d-medium"):
        study.main(study.Args(tasks=["walker2d-medium"], summarize_only=True, results_dir=str(tmp_path)))
