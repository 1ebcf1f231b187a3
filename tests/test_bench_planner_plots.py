"""bench/bench_planners.py --plot-only: the protocol's plot redrawn from the committed JSON, nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import load_bench_script

import fastpolicy.bench.report as report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture
def figures(monkeypatch):
    """The axes of every figure the plots save, read before save_figure closes them."""
    saved = []
    real = report.save_figure

    def keep(fig, path, **kw):
        saved.append([(ax.get_ylabel(), ax.get_legend()) for ax in fig.axes])
        return real(fig, path, **kw)

    monkeypatch.setattr(report, "save_figure", keep)
    return saved


@pytest.mark.skipif(not (RESULTS / "planners_protocol_maze2d-umaze.json").exists(),
                    reason="no committed protocol results")
def test_planners_plot_only_names_points_in_a_legend(tmp_path, figures):
    planners = load_bench_script("bench_planners")
    planners.main(planners.Args(task="maze2d-umaze", plot_only=True, results_dir=str(RESULTS),
                                plot_dir=str(tmp_path), work=str(tmp_path / "never")))
    png = tmp_path / "planners_protocol_maze2d-umaze.png"
    assert png.stat().st_size > 0 and not (tmp_path / "never").exists()
    ((ylabel, legend),) = figures[0]
    names = [t.get_text() for t in legend.get_texts()]
    assert ylabel == report.SCORE_LABELS["d4rl"] and "bc-mlp" in names and "TD-one-pass" in names
