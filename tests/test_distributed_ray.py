"""Ray fan-out (fastpolicy.distributed.ray_runner): sweeps equal the local run, killed workers are retried,
sharded dataset builds are deterministic, and a missing Ray is one clear line naming the extra."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from fastpolicy.cli import main
from fastpolicy.distributed.ray_runner import RayConfig, shard_seed, shard_sizes

# --- without Ray ----------------------------------------------------------------------------------


@pytest.fixture
def no_ray(monkeypatch):
    """Make ``import ray`` fail as on a default install, even where the extra is installed."""
    monkeypatch.setitem(sys.modules, "ray", None)


def test_missing_ray_names_the_extra(no_ray, tmp_path, capsys):
    assert main(["bench", "--ray-address", "auto", "--no-write", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'fastpolicy[dist]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()  # refused before any work started
    assert main(["data", "make", "maze2d-umaze", "--out", str(tmp_path / "d"), "--ray-address", "local"]) == 2
    assert "pip install 'fastpolicy[dist]'" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_shards_without_ray_address_is_refused(tmp_path, capsys):
    assert main(["data", "make", "maze2d-umaze", "--out", str(tmp_path / "d"), "--shards", "2"]) == 2
    assert "--ray-address" in capsys.readouterr().err


def test_shard_plan_is_a_function_of_size_and_count():
    assert shard_sizes(900, 2, align=300) == [600, 300]
    assert shard_sizes(1000, 3, align=300) == [600, 400]  # whole episodes in every shard but the last
    assert shard_sizes(120_000) == [40_000] * 3              # default count: one per 50k steps
    assert sum(shard_sizes(12_345, 7)) == 12_345
    assert shard_seed(5, 0) == 5
    seeds = [shard_seed(5, i) for i in range(1, 4)]
    assert len(set(seeds)) == 3 and seeds == [shard_seed(5, i) for i in range(1, 4)]
    assert shard_seed(6, 1) != shard_seed(5, 1)
    with pytest.raises(ValueError, match="positive"):
        shard_sizes(0, 2)
    with pytest.raises(ValueError, match="max_retries"):
        RayConfig(max_retries=-1)


# --- with a local Ray instance --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # the helpers below live in this test module, which the workers cannot import: ship them by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _die_once(marker: str, x: int) -> tuple[int, int]:
    """Kill this worker process on the first attempt (as an OOM kill or a lost node would)."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x, os.getpid()


def test_killed_worker_is_retried_and_completes(ray_local, tmp_path):
    from fastpolicy.distributed.ray_runner import run_tasks

    marker = tmp_path / "died"
    [(value, pid)] = run_tasks(_die_once, [(str(marker), 7)], RayConfig(max_retries=2, progress=False))
    assert value == 49
    assert marker.exists() and int(marker.read_text()) != pid  # the first worker died; another finished
    # without retries the same death is an error: the retry is what completed the task above
    marker2 = tmp_path / "died2"
    with pytest.raises(ray_local.exceptions.WorkerCrashedError):
        run_tasks(_die_once, [(str(marker2), 3)], RayConfig(max_retries=0, progress=False))


TIMING = re.compile(r"latency|_ms|throughput|seconds|actions_per_s|load_avg")   # the machine, not the method


def test_sweep_on_ray_equals_local_run_result_for_result(ray_local, tmp_path, monkeypatch):
    import fastpolicy.bench.runner as runner

    suite = runner.SuiteConfig(
        "tiny", dataset_size=1200, teacher_steps=6, bc_steps=4, cm_steps=4, batch_size=16, episodes=1,
        seeds=[0, 1], latency_steps=4, latency_rounds=1, throughput_calls=1, seg_stages=(),
        teacher_options={"backbone": "mlp"}, methods=("bc-mlp", "teacher-ddim4", "student-2calls"),
        progress=False)
    # AGV, not maze2d: an untrained policy scores exactly 0 on the maze, whereas on the AGV track every
    # action moves the shaped return and the episode length (collisions end episodes early), so equal
    # rows mean equal rollouts
    task = "agv-simple-static"
    kwargs = dict(work_dir=tmp_path / "work", write=False, progress=False)
    local = runner.run_suite(suite, [task], **kwargs)

    # what workers receive: the final inference checkpoint of each run, never the dataset or train state
    import io
    import tarfile

    from fastpolicy.distributed.ray_runner import pack_runs

    data, teacher_arc = pack_runs(tmp_path / "work" / task, tmp_path / "work" / task / "teacher")
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert teacher_arc == "work/teacher" and "work/teacher/latest" in names
    assert {n.split("/")[1] for n in names} == {"teacher", "bc", "cm1"}
    assert not any("train_state" in n or n.startswith("work/data") for n in names)

    def no_local_scoring(*args, **kw):
        raise AssertionError("the Ray run scored methods in the driver process")

    monkeypatch.setattr(runner, "score_methods", no_local_scoring)
    remote = runner.run_suite(suite, [task], ray_config=RayConfig(progress=False), **kwargs)

    assert [r["method"] for r in remote] == [r["method"] for r in local] == list(suite.methods)
    for a, b in zip(local, remote):
        assert set(a) == set(b)
        same = {k for k in a if not TIMING.search(k)}
        assert {"score_mean", "return_mean", "score_std", "episodes", "seeds", "nfe_per_step_mean"} <= same
        assert {k: a[k] for k in same} == {k: b[k] for k in same}, a["method"]
        assert b["step_latency_ms_max_p99"] > 0 and b["eval_seconds"] > 0
    assert remote[0]["episodes"] == 2 and remote[0]["seeds"] == [0, 1]
    assert len({r["return_mean"] for r in remote}) == len(remote) and remote[0]["return_std"] > 0


def test_sharded_dataset_is_the_concatenation_of_its_shards(ray_local, tmp_path, capsys):
    from fastpolicy.data.recipes import make_dataset
    from fastpolicy.data.store import EpisodeStore

    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--size", "900", "--seed", "3", "--ray-address", "auto", "--no-progress"]
    assert main(["data", "make", "maze2d-umaze", "--out", str(one), "--shards", "1", *common]) == 0
    assert main(["data", "make", "maze2d-umaze", "--out", str(two), "--shards", "2", *common]) == 0
    assert "wrote" in capsys.readouterr().out
    local = make_dataset("maze2d-umaze", tmp_path / "local", size=900, seed=3, progress=False)
    shard1 = make_dataset("maze2d-umaze", tmp_path / "s1", size=300, seed=shard_seed(3, 1), progress=False)
    one, two = EpisodeStore.open(one), EpisodeStore.open(two)

    assert one.keys == two.keys == local.keys
    np.testing.assert_array_equal(one.episode_ends, local.episode_ends)
    np.testing.assert_array_equal(two.episode_ends, [300, 600, 900])
    for k in local.keys:
        np.testing.assert_array_equal(one.array(k), local.array(k))            # 1 shard == local build
        np.testing.assert_array_equal(two.array(k)[:600], local.array(k)[:600])  # shard 0 is its prefix
        np.testing.assert_array_equal(two.array(k)[600:], shard1.array(k))      # shard 1: its own seed
    assert not np.array_equal(two.array("obs")[600:], local.array("obs")[600:])
    attrs = two.attrs
    assert attrs["seed"] == 3 and attrs["size"] == 900 and attrs["recipe"] == "maze2d-umaze"
    assert [s["seed"] for s in attrs["shards"]] == [3, shard_seed(3, 1)]
    assert [s["size"] for s in attrs["shards"]] == [600, 300]
    # an existing output is refused before the cluster spends any time on it
    assert main(["data", "make", "maze2d-umaze", "--out", str(tmp_path / "two"), *common]) == 2
