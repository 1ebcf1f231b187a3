"""Smoke tests: the user-facing scripts run end to end on a tiny budget (CleanRL style)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train_offline(tmp_path, steps):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train_offline.py"),
        "--task",
        "maze2d-umaze",
        "--dataset-size",
        "2000",
        "--store",
        str(tmp_path / "store"),
        "--backbone",
        "mlp",
        "--steps",
        str(steps),
        "--batch-size",
        "16",
        "--out",
        str(tmp_path / "run"),
        "--samplers",
        "ddim:2",
        "--episodes",
        "1",
        "--seeds",
        "0",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp_path / "run" / "eval.json").read_text())


def test_train_offline_script_trains_evaluates_and_resumes(tmp_path):
    rows = _train_offline(tmp_path, 4)
    assert rows[0]["method"] == "teacher-ddim2" and rows[0]["steps"] == 4
    assert _train_offline(tmp_path, 6)[0]["steps"] == 6  # same --out: resumed from step 4, not restarted
