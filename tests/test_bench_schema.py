import json
import math
from pathlib import Path

import pytest

from fastpolicy.evaluation.results import REQUIRED_FIELDS, make_row, read_results, validate_row, write_results


def _row(**kw):
    base = dict(
        steps=10,
        score_mean=50.0,
        score_std=1.0,
        episodes=10,
        seeds=[0, 1],
        nfe_per_step_mean=1.25,
        nfe_per_step_max=10,
        latency_ms_p50=1.0,
        latency_ms_p99=2.0,
    )
    base.update(kw)
    return make_row("maze2d-umaze", "teacher-ddim10", **base)


def test_row_has_every_required_field_and_environment():
    row = _row()
    assert set(REQUIRED_FIELDS) <= set(row)
    assert row["commit"] and row["torch_threads"] >= 1 and "device" in row


@pytest.mark.parametrize("field", ["task", "score_mean", "commit"])
def test_missing_field_is_named(field):
    row = _row()
    del row[field]
    with pytest.raises(ValueError, match=field):
        validate_row(row)


def test_wrong_type_is_named():
    with pytest.raises(ValueError, match="episodes"):
        _row(episodes="ten")


def test_round_trip_and_nan_becomes_null(tmp_path):
    rows = [_row(), _row(latency_ms_p99=float("nan"))]
    path = write_results(tmp_path / "r.json", rows)
    raw = json.loads(path.read_text())
    assert raw[1]["latency_ms_p99"] is None
    back = read_results(path)
    assert back[0]["score_mean"] == 50.0 and not any(
        isinstance(v, float) and math.isnan(v) for v in back[1].values()
    )


def test_read_rejects_non_list(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"task": 1}')
    with pytest.raises(ValueError, match="list"):
        read_results(p)


def test_schema_lives_with_evaluation_and_no_old_path_is_left():
    import importlib

    import fastpolicy.evaluation.results as results

    for old in ("fastpolicy.bench.schema", "fastpolicy.train.checkpoint"):   # removed re-export shims
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
    source = (Path(results.__file__).parent / "rollouts.py").read_text() + Path(results.__file__).read_text()
    assert "fastpolicy.bench" not in source      # evaluation sits below bench


def test_percentiles_have_one_home():
    from fastpolicy.evaluation.timing import percentile, percentile_fields

    assert percentile([], 50) is None and percentile([1.0, 3.0], 50) == 2.0
    assert percentile_fields([0.001, 0.003], scale=1e3) == {"latency_ms_p50": 2.0,
                                                            "latency_ms_p99": pytest.approx(2.98)}
