"""bench/manifest.toml: every study is listed, smoke-runs in quick mode, and feeds fresh docs tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_bench_script

ROOT = Path(__file__).resolve().parents[1]


manifest = load_bench_script("manifest")
STUDIES = manifest.load()
#: studies smoke-tested here (the others name the test file that runs their script: ``smoke_test``)
QUICK = [s for s in STUDIES if s.quick is not None and s.smoke_test is None]


def test_every_benchmark_script_is_a_study_and_every_study_is_runnable():
    listed = set().union(*(s.scripts for s in STUDIES))
    scripts = {f"bench/{p.name}" for p in (ROOT / "bench").glob("bench_*.py")}
    assert scripts - listed == set(), "benchmark scripts missing from bench/manifest.toml"
    assert all((ROOT / script).is_file() for script in listed)
    for study in STUDIES:
        assert study.about and study.results, study.name
        if study.smoke_test is not None:
            assert (ROOT / study.smoke_test).is_file(), f"{study.name}: no {study.smoke_test}"
        if study.quick is not None:   # a smoke run writes under {out}, never into the committed results
            assert any("{out}" in a for a in study.quick), study.name


def test_every_docs_table_comes_from_a_study_with_a_layout():
    update_docs = load_bench_script("update_docs")
    tables = manifest.tables()
    markers = set(re.findall(r"<!-- table:(\S+) -->", (ROOT / "docs" / "benchmarks.md").read_text()))
    assert markers - set(tables) == set(), "docs tables that no study feeds"
    for study in STUDIES:
        for table in study.tables:
            assert table.layout in update_docs.LAYOUTS, f"{table.name}: unknown layout {table.layout!r}"
            assert table.file in study.results, f"{table.name}: {table.file} is not in {study.name}'s results"


def test_docs_tables_are_fresh():
    """`python bench/update_docs.py --check`: the tables in docs/benchmarks.md match the committed JSON."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "update_docs.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_run_all_lists_every_study_from_the_manifest():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--list"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"^==> (\S+):", done.stdout, re.M)) | set(re.findall(r"^--- (\S+):", done.stdout,
                                                                                   re.M))
    assert listed == {s.name for s in STUDIES}


@pytest.mark.parametrize("study", QUICK, ids=[s.name for s in QUICK])
def test_study_quick_run(study, tmp_path):
    """The study's quick command end to end (seconds), outputs in a temp dir."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    committed = _committed_outputs(study)
    done = subprocess.run(manifest.argv(study.quick, tmp_path), capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, f"{study.name}: the quick run wrote nothing under its output folder"
    assert _committed_outputs(study) == committed, f"{study.name}: quick run rewrote committed results"


def _committed_outputs(study) -> dict[str, int]:
    """Modification times of the study's committed result files (a smoke run must leave them alone; other
    files are left out because other benchmarks may be writing theirs on this shared checkout)."""
    files = [ROOT / "bench" / "results" / name for name in study.results]
    return {str(p): p.stat().st_mtime_ns for p in files if p.exists()}


def test_gpu_studies_skip_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the GPU study for real (make bench)")
    gpu = [s.name for s in STUDIES if s.gpu]
    assert gpu, "the manifest lists the GPU study"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--only", *gpu],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(f"--- {name}: needs CUDA, skipped" in done.stdout for name in gpu)
