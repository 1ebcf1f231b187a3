"""Every bad input gets a clear answer, tried as a user would: through the ``fastpolicy``
command in a subprocess. One test per finding of the usability review: tracebacks where one line was
promised, Ctrl-C during training, a closed pipe, silently wrong results, surprising defaults and the plots.

The subprocesses of a test run concurrently (each spends most of its time importing), so the whole
module costs about as much as its slowest command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CLI = [sys.executable, "-m", "fastpolicy.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
TINY_DIFFUSION = ["--backbone", "mlp", "--option", 'backbone_kwargs={"hidden": 16, "depth": 1}',
                  "--batch-size", "8", "--threads", "1", "--no-progress"]


def run_all(commands: dict[str, list[str]], cwd: Path | None = None, timeout: float = 180):
    """Run the commands concurrently; name → CompletedProcess-like (returncode, stdout, stderr)."""
    procs = {name: subprocess.Popen([*CLI, *cmd], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name, cmd in commands.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def assert_one_line_error(result, *needles: str) -> None:
    """Non-zero exit; stderr is one ``fastpolicy ...: error: ...`` line naming what was wrong."""
    err = result.stderr
    assert result.returncode != 0, (result.args, result.stdout, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("fastpolicy ")]
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nothing can be created in — also for root (an immutable dir; chmod binds no root)."""
    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without chattr: cannot make a read-only directory")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)])


@pytest.fixture
def tiny_run(linear_store, tmp_path):
    """A 20-step MLP-denoiser diffusion run on the linear store (obs 2-D: not any task's)."""
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

    run = tmp_path / "run"
    train_offline(linear_store, run, "diffusion",
                  {"backbone": "mlp", "backbone_kwargs": {"hidden": 16, "depth": 1}},
                  TrainConfig(steps=20, batch_size=8, warmup_steps=2, checkpoint_every=20, progress=False,
                              tensorboard=False))
    return run


@pytest.fixture
def student_checkpoint(linear_store, tmp_path):
    """A consistency student checkpoint (untrained weights: only its kind matters here)."""
    from fastpolicy.data.normalize import NormalizerSet
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.policies.registry import build_policy
    from fastpolicy.utils.checkpoint import save_checkpoint

    norm = NormalizerSet.fit_from_store(EpisodeStore.open(linear_store)).state_dict()
    policy = build_policy("consistency", {"obs_dim": 2, "action_dim": 1, "backbone": "mlp",
                                          "backbone_kwargs": {"hidden": 16, "depth": 1}}, norm)
    return save_checkpoint(tmp_path / "student", policy_type="consistency",
                           policy_config=policy.config_dict(), model_state=policy.state_dict(),
                           normalizer_state=norm, step=1)


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracebacks_became_one_clear_line(read_only_dir, linear_store, tiny_run, tmp_path):
    import h5py

    h5 = tmp_path / "in.hdf5"
    with h5py.File(h5, "w") as f:
        for key, value in {"observations": np.zeros((4, 2)), "actions": np.zeros((4, 1)),
                           "rewards": np.zeros(4), "terminals": np.eye(1, 4, 3)[0].astype(bool),
                           "timeouts": np.zeros(4, bool)}.items():
            f[key] = value
    (tmp_path / "garbage.json").write_text("this is not json")
    ro = read_only_dir
    commands = {
        "make": ["data", "make", "maze2d-umaze", "--size", "50", "--out", str(ro / "store")],
        "import": ["data", "import", str(h5), "--out", str(ro / "store")],
        "export": ["data", "export", str(linear_store), "--out", str(ro / "x.hdf5")],
        "split": ["data", "split", str(linear_store), "--out", str(ro / "split")],
        "info": ["data", "info", str(linear_store), "--png", str(ro / "h.png")],
        "train": ["train", "--store", str(linear_store), "--out", str(ro / "run"), "--steps", "2",
                  *TINY_DIFFUSION],
        # written before the evaluation runs, not after it (this policy does not even fit the task)
        "eval": ["eval", str(tiny_run), "--task", "maze2d-umaze", "--out", str(ro / "e.json")],
        "hz": ["control", "--server", "ws://127.0.0.1:1", "--task", "maze2d-umaze", "--hz", "0"],
        "server": ["control", "--server", f"ws://127.0.0.1:{_free_port()}", "--task", "maze2d-umaze",
                   "--connect-timeout-s", "2"],
        "report": ["report", str(tmp_path / "garbage.json")],
        # checked before any dataset or training: seconds, not minutes
        "demo": ["demo", "--out", str(ro / "demo")],
        "distill": ["distill", "--teacher", str(tiny_run), "--store", str(linear_store),
                    "--out", str(ro / "student")],
        # a narrower student starts untrained: a bootstrapped target would be its own random network
        "narrow": ["distill", "--teacher", str(tiny_run), "--store", str(linear_store),
                   "--out", str(tmp_path / "narrow"), "--student-hidden", "32", "--target", "bootstrap"],
    }
    import torch

    if not torch.cuda.is_available():
        commands["cuda"] = ["train", "--store", str(linear_store), "--out", str(tmp_path / "cuda"),
                            "--device", "cuda", *TINY_DIFFUSION]
    t0 = time.monotonic()
    results = run_all(commands)
    for name in ("make", "import", "export", "split", "info", "train", "eval", "demo", "distill"):
        assert_one_line_error(results[name], str(ro))
    assert not (tmp_path / "cuda").exists()
    if "cuda" in results:
        assert_one_line_error(results["cuda"], "CUDA is not available")
    assert_one_line_error(results["hz"], "--hz must be > 0")
    assert_one_line_error(results["server"], "cannot reach the policy server")
    assert_one_line_error(results["report"], "garbage.json")
    assert_one_line_error(results["narrow"], "target='ode'")
    assert time.monotonic() - t0 < 60, "an unreachable server must be reported within seconds"


def test_ctrl_c_during_training_says_how_to_resume(linear_store, tmp_path):
    run = tmp_path / "run"
    cmd = [*CLI, "train", "--store", str(linear_store), "--out", str(run), "--steps", "100000",
           "--checkpoint-every", "100000", *TINY_DIFFUSION]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "tb").exists():  # the loop has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted at step" in err and "--resume" in err, err
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step_{step:08d}").is_dir() or (run / "latest").read_text().strip()


def test_closed_pipe_is_not_a_traceback(linear_store):
    read, write = os.pipe()
    os.close(read)  # as `fastpolicy data info STORE | head` once head has exited
    try:
        done = subprocess.run([*CLI, "data", "info", str(linear_store), "--no-png"], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode != 0


def test_silently_wrong_cases_now_refuse_or_warn(linear_store, tiny_run, student_checkpoint, tmp_path):
    explore_out = tmp_path / "explore"
    commands = {
        "explore": ["explore", "--task", "maze2d-umaze", "--out", str(explore_out), "--steps", "64"],
        "episodes": ["eval", str(tiny_run), "--task", "maze2d-umaze", "--episodes", "0", "--no-write"],
        "student": ["eval", str(student_checkpoint), "--task", "maze2d-umaze", "--sampler", "ddim:4",
                    "ddpm:100", "--no-write"],
        "past": ["train", "--store", str(linear_store), "--out", str(tiny_run), "--resume", "--steps", "10",
                 "--no-progress"],
        "backbone": ["train", "--store", str(linear_store), "--out", str(tiny_run), "--resume",
                     "--backbone", "unet-small", "--steps", "30", "--no-progress"],
        "warmup": ["train", "--store", str(linear_store), "--out", str(tmp_path / "warm"), "--steps", "3",
                   "--warmup-steps", "10", *TINY_DIFFUSION],
        "ticks": ["control", "--server", "ws://127.0.0.1:1", "--task", "maze2d-umaze", "--steps", "-5"],
    }
    results = run_all(commands)
    assert_one_line_error(results["explore"], "no natively batched vector env")
    assert not (explore_out / "config.json").exists()
    assert_one_line_error(results["episodes"], "--episodes must be ≥ 1")
    assert_one_line_error(results["student"], "consistency student")
    assert_one_line_error(results["past"], "already at step 20", "--steps 10")
    assert_one_line_error(results["backbone"], "backbone='mlp'", "unet-small")
    warm = results["warmup"]
    assert warm.returncode == 0, warm.stderr
    assert "fastpolicy: warning: --warmup-steps 10 ≥ --steps 3" in warm.stderr
    assert_one_line_error(results["ticks"], "--steps must be ≥ 1")


def test_defaults_help_listing_and_version(tmp_path):
    import argparse

    from fastpolicy.bench.cli import COMMITTED_RESULTS, output_dirs
    from fastpolicy.cli import EXAMPLES, build_parser
    from fastpolicy.envs.registry import get_task
    from fastpolicy.eval_cli import default_out

    results = run_all({"help": ["train", "--help"], "tasks": ["tasks"], "version": ["--version"]})
    help_text = results["help"].stdout
    assert "examples:" in help_text and "fastpolicy train --store" in help_text
    assert "(default: 5000)" in help_text and "(default: auto)" in help_text
    assert "maze2d-umaze" in results["tasks"].stdout and "agv-simple-static" in results["tasks"].stdout
    assert results["version"].stdout.startswith("fastpolicy 0.")
    # every command and subcommand: an example, no docstring markup; every example task exists
    stack = [("", build_parser())]
    while stack:
        path, parser = stack.pop()
        assert parser.epilog and "fastpolicy" in parser.epilog, f"no example for {path!r}"
        text = parser.format_help()
        assert "``" not in text and ":mod:" not in text, (path, text)
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        stack += [(f"{path} {n}".strip(), p) for n, p in (sub.choices.items() if sub else ())]
    for example in EXAMPLES.values():
        for task in example.split("--task ")[1:]:
            get_task(task.split()[0])
    # results land under the run directory unless the committed ones are asked for
    bench = build_parser().parse_args(["bench", "--suite", "quick"])
    assert output_dirs(bench, tmp_path / "work") == (tmp_path / "work", tmp_path / "work")
    refresh = build_parser().parse_args(["bench", "--refresh-committed"])
    os.chdir(Path(__file__).resolve().parents[1])
    assert output_dirs(refresh, tmp_path / "work")[0] == Path(COMMITTED_RESULTS)
    assert default_out(tmp_path / "run" / "checkpoints" / "step_00000020", "maze2d-umaze") == \
        tmp_path / "run" / "eval" / "maze2d-umaze.json"


def test_pareto_plot_labels_axes_and_draws_the_budget(tmp_path, monkeypatch):
    import fastpolicy.bench.report as report
    from fastpolicy.evaluation.results import make_row

    captured = {}

    def keep(fig, path, dpi=120):
        captured["fig"] = fig
        return Path(path)

    monkeypatch.setattr(report, "save_figure", keep)
    rows = [make_row("maze2d-umaze", m, score_mean=s, score_std=1.0, score_kind="d4rl",
                     step_latency_ms_max_p99=lat) for m, s, lat in
            [("a", 10.0, 5.0), ("b", 11.0, 5.2), ("c", 30.0, 50.0)]]
    report.pareto_plot(rows, tmp_path / "p.png", latency_key="step_latency_ms_max_p99", budget_ms=20.0)
    ax = captured["fig"].axes[0]
    assert "normalised" in ax.get_ylabel() and "100 = expert" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "budget 20 ms" in labels and {"a", "b", "c"} <= set(labels)
    assert not ax.texts  # no labels next to the points: they overlapped where methods cluster


def test_a_command_module_that_fails_to_import_is_an_error_not_a_missing_command(monkeypatch):
    from fastpolicy import cli

    monkeypatch.setitem(cli.COMMANDS, "broken", "fastpolicy.no_such_command_module")
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "fastpolicy.no_such_command_module"])
    with pytest.raises(ImportError, match="commands of fastpolicy.no_such_command_module cannot be loaded"):
        cli.build_parser("broken")
    with pytest.raises(ImportError, match="no_such_command_module"):
        cli.build_parser()  # `fastpolicy --help` lists every command, so it fails too


def test_a_key_error_is_a_bug_with_its_traceback_not_bad_input(monkeypatch, capsys):
    from fastpolicy import cli

    def boom(args):
        return {}["missing"]

    monkeypatch.setattr("fastpolicy.envs.cli._cmd_tasks", boom)
    with pytest.raises(KeyError, match="missing"):
        cli.main(["tasks"])
    assert cli.main(["train", "--store", "x", "--out", "y", "--task", "no-such-task"]) == cli.EXIT_USAGE
    assert "unknown task 'no-such-task'" in capsys.readouterr().err


def test_training_flags_are_defined_once_from_the_config_dataclasses():
    import dataclasses

    from fastpolicy.cli import build_parser
    from fastpolicy.train.cli import TRAINING_FLAGS
    from fastpolicy.train.config import TrainConfig
    from fastpolicy.train.inverse_dynamics import IDMTrainConfig

    parser = build_parser()
    train = vars(parser.parse_args(["train", "--store", "s", "--out", "o"]))
    assert {k: train[k] for k in TRAINING_FLAGS} == {k: getattr(TrainConfig(), k) for k in TRAINING_FLAGS}
    distill = vars(parser.parse_args(["distill", "--teacher", "t", "--store", "s", "--out", "o"]))
    assert (distill["steps"], distill["lr"], distill["device"]) == (1000, TrainConfig.lr, "auto")
    label = vars(parser.parse_args(["label", "s", "--idm", "m"]))
    assert {k: label[k] for k in ("steps", "batch_size", "lr", "val_fraction", "seed")} == {
        k: v for k, v in dataclasses.asdict(IDMTrainConfig()).items()
        if k in ("steps", "batch_size", "lr", "val_fraction", "seed")}
    root = Path(__file__).resolve().parents[1] / "fastpolicy" / "train"
    source = "".join((root / m).read_text() for m in ("cli.py", "distill_cli.py", "label_cli.py"))
    for flag in ("--steps", "--lr", "--warmup-steps", "--seed", "--device"):
        assert f'add_argument("{flag}"' not in source, f"{flag} is written by hand again"
    assert source.count('add_argument("--threads"') == 1  # add_threads_flag


def test_explore_flags_come_from_explore_config():
    import dataclasses

    from fastpolicy.cli import build_parser
    from fastpolicy.rl.cli import EXPLORE_FLAGS
    from fastpolicy.rl.explore import ExploreConfig

    parsed = vars(build_parser().parse_args(["explore", "--task", "t", "--out", "o", "--lr", "1e-3",
                                             "--no-progress"]))
    defaults = {f.name: f.default for f in dataclasses.fields(ExploreConfig)}
    assert parsed["learning_rate"] == 1e-3 and parsed["progress"] is False
    assert {k: parsed[k] for k in EXPLORE_FLAGS if k not in ("task", "learning_rate", "progress")} == {
        k: defaults[k] for k in EXPLORE_FLAGS if k not in ("task", "learning_rate", "progress")}
    source = (Path(__file__).resolve().parents[1] / "fastpolicy" / "rl" / "cli.py").read_text()
    for flag in ("--steps", "--lr", "--seed", "--num-envs", "--batch-size", "--gamma"):
        assert f'add_argument("{flag}"' not in source, f"{flag} is written by hand again"
    with pytest.raises(SystemExit):  # --task has no default in the config: a required flag
        build_parser().parse_args(["explore", "--out", "o"])
