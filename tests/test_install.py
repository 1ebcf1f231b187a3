"""A non-editable install works from any directory: task cards, AGV layouts and behaviour actors ship
inside the package (installed, it used to know no task at all).

The install is the real one (``pip install`` of the source tree: setup.py's build step and all) into a
temporary target, without dependencies or build isolation so it takes seconds; the installed package
is then used from another directory with only that target (not the checkout) on its path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["fastpolicy", "envs", "datasets/behavior", "setup.py", "setup.cfg", "pyproject.toml", "README.md",
           "MANIFEST.in"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install <copy of the source tree> --target <dir>``; returns the target."""
    pytest.importorskip("setuptools")
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "store")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    shutil.rmtree(src)  # nothing may be read from the source copy either
    return target


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTPOLICY_TASKS_DIR", "FASTPOLICY_BEHAVIOR_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    return env


def test_installed_package_finds_tasks_layouts_and_actors_from_another_directory(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import fastpolicy, pathlib\n"
        "from fastpolicy.envs.registry import get_task, list_tasks\n"
        "from fastpolicy.envs.agv.layout import list_layouts\n"
        "from fastpolicy.data.recipes.mujoco import actor_path\n"
        f"assert pathlib.Path(fastpolicy.__file__).is_relative_to({str(installed)!r}), fastpolicy.__file__\n"
        "assert get_task('maze2d-umaze').env_id == 'PointMaze_UMaze-v3'\n"
        "assert 'agv-simple-static' in list_tasks() and 'simple-static' in list_layouts()\n"
        "assert actor_path('hopper', 'medium').is_file(), actor_path('hopper', 'medium')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=_env(installed),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_installed_cli_lists_tasks_and_makes_a_tiny_dataset_from_another_directory(installed, tmp_path):
    pytest.importorskip("mujoco")
    cli = [sys.executable, "-m", "fastpolicy.cli"]
    env = _env(installed)
    # Both commands at once: the machine has 2 cores and each spends most of its time importing.
    tasks = subprocess.Popen([*cli, "tasks"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    make = subprocess.Popen([*cli, "data", "make", "hopper-medium", "--size", "20", "--out", "hop",
                             "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = tasks.communicate(timeout=120)
    assert tasks.returncode == 0, err
    assert "maze2d-umaze" in out and str(installed) in out  # the cards come from the installed package
    out, err = make.communicate(timeout=120)
    assert make.returncode == 0, err
    assert "wrote hop: 1 episodes, 20 steps" in out
    assert (tmp_path / "hop" / "manifest.json").is_file()
