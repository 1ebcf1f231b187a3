"""Shared fixtures: small stores and quick policies, and one torch thread per test process (the CI
machine has 2 cores and tests must not fight each other or the numba kernels for them)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see fastpolicy/cli.py)
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def linear_store(tmp_path):
    """A tiny EpisodeStore of a 1-D linear system: obs (x, goal), action = clip(goal - x)."""
    from fastpolicy.data.store import EpisodeStore

    rng = np.random.default_rng(0)
    path = tmp_path / "linear"
    with EpisodeStore.create(
        path, attrs={"source": "test", "env_id": "none", "recipe": "linear", "seed": 0}
    ) as w:
        for _ in range(12):
            n = int(rng.integers(20, 40))
            x = rng.uniform(-1, 1, size=(n, 1))
            goal = np.full((n, 1), rng.uniform(-1, 1))
            action = np.clip(goal - x, -1, 1)
            w.add_episode(
                {
                    "obs": np.concatenate([x, goal], 1).astype(np.float32),
                    "action": action.astype(np.float32),
                    "reward": -np.abs(goal - x)[:, 0].astype(np.float32),
                    "terminal": np.zeros(n, bool),
                    "timeout": np.eye(1, n, n - 1, dtype=bool)[0],
                }
            )
    return path


@pytest.fixture
def run_script(monkeypatch):
    """Run a benchmark script as ``__main__`` with ``argv`` (CleanRL-style smoke tests).

    A ``SystemExit`` must carry code 0; the script's torch thread setting does not leak into other tests.
    """
    import runpy

    def run(script, *argv: str) -> None:
        monkeypatch.setattr("sys.argv", [str(script), *map(str, argv)])
        threads = torch.get_num_threads()
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code in (0, None), f"{script} exited with {exit_.code}"
        finally:
            torch.set_num_threads(threads)

    return run
