"""D4RL-style MuJoCo scores side by side: fastpolicy's BC and diffusion teacher, the d3rlpy peers, and the
published D4RL numbers — one table, one plot.

Per task (``hopper-medium``, ``hopper-medium-replay``, …):

1. fastpolicy — ``fastpolicy bench --suite d4rl --task T --refresh-committed``: BC-MLP and the
   diffusion teacher (MLP denoiser, evaluated with DDPM-100 and DDIM-10) trained on
   ``datasets/store/<recipe>`` (built by ``fastpolicy data make`` when missing) →
   ``bench/results/d4rl_<task>.json``;
2. peers — ``bench/bench_d4rl_peers.py`` (d3rlpy BC / TD3+BC in their own virtualenv, fed by the D4RL
   HDF5 export of the same store, same evaluation seeds) → ``bench/results/d4rl_peers_<task>.json``;
3. this script merges both into ``bench/results/d4rl.json`` (one row per task × method, the shared
   schema) and draws ``docs/d4rl_scores.png`` with the published numbers (D4RL v2 datasets, original
   gym v2 envs; :data:`PUBLISHED`) as reference marks. The published numbers are citations, not
   measurements: they are drawn as marks and listed in docs/benchmarks.md, never written as rows.

Steps 1–2 resume from whatever is on disk; ``--merge-only`` just redoes step 3.

    nice -n 5 .venv/bin/python bench/bench_d4rl.py --tasks hopper-medium hopper-medium-replay
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastpolicy.utils.args import parse_dataclass_args

ROOT = Path(__file__).resolve().parents[1]

#: Published normalized scores on the D4RL v2 datasets (mean over seeds), for reference only.
#: BC and Diffuser: Janner et al. 2022, "Planning with Diffusion for Flexible Behavior Synthesis", Table 1
#: (BC column as reported there, from Kumar et al. / Kostrikov et al.); TD3+BC: Fujimoto & Gu 2021, Table 1
#: (v2 numbers as re-reported by IQL, Kostrikov et al. 2021, Table 1); IQL: Kostrikov et al. 2021, Table 1.
PUBLISHED: dict[str, dict[str, float]] = {
    "hopper-medium": {"BC": 52.9, "Diffuser": 74.3, "TD3+BC": 59.3, "IQL": 66.3},
    "walker2d-medium": {"BC": 75.3, "Diffuser": 79.6, "TD3+BC": 83.7, "IQL": 78.3},
    "halfcheetah-medium": {"BC": 42.6, "Diffuser": 42.8, "TD3+BC": 48.3, "IQL": 47.4},
    "hopper-medium-replay": {"BC": 18.1, "Diffuser": 93.6, "TD3+BC": 60.9, "IQL": 94.7},
    "walker2d-medium-replay": {"BC": 26.0, "Diffuser": 70.6, "TD3+BC": 81.8, "IQL": 73.9},
    "halfcheetah-medium-replay": {"BC": 36.6, "Diffuser": 37.7, "TD3+BC": 44.6, "IQL": 44.2},
}


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["hopper-medium", "hopper-medium-replay"])
    """task cards to run"""
    peers: bool = True
    """also run the d3rlpy peers (bench/bench_d4rl_peers.py)"""
    peer_args: str = ""
    """extra arguments for bench_d4rl_peers.py, one quoted string (e.g. "--algos bc --steps 45000")"""
    methods: list[str] | None = None
    """re-run only these suite methods (their training runs are reused): their rows replace the same
    methods' rows in ``d4rl_<task>.json`` and every other row stays (e.g. a sampler added to the suite)"""
    validate: bool = False
    """instead of the test runs: score BC and the trained teacher's samplers on the validation seeds
    (``d4rl_validation_<task>.json``); the merge then marks, per task, the sampler that won there as
    "the teacher" (``selected_on_validation``) — chosen before, and never from, the test rows"""
    validation_seeds: list[int] = field(default_factory=lambda: [100, 101, 102])
    """validation env seeds (episodes at s·1000 + i: disjoint from the test seeds 0, 1, 2)"""
    validation_methods: list[str] | None = None
    """samplers to validate (default: every teacher sampler of the d4rl suite)"""
    action_error: bool = False
    """instead of rollouts: the action error (MSE of the first two predicted actions vs the data's, on 2,000
    windows of the store's last 10 % of episodes) of BC and each teacher sampler, at every kept checkpoint
    → ``d4rl_action_error_<task>.json`` (why a teacher trails BC on unimodal, noisy data)"""
    merge_only: bool = False
    """skip training/evaluation; merge the per-task JSON files already under bench/results/"""
    threads: int = 1
    results_dir: str = "bench/results"
    plot: str = "docs/d4rl_scores.png"


def run_task(task: str, args: Args) -> None:
    """Steps 1–2 for one task, each as its own process (the peers need their own interpreter).

    ``fastpolicy bench`` writes under ``runs/bench/d4rl`` by default; this script refreshes the
    committed results, so it asks for them (``--refresh-committed``: bench/results and docs), or for
    ``--results-dir`` when that is not the committed folder.
    """
    from fastpolicy.bench.cli import COMMITTED_RESULTS

    exe = sys.executable
    bench = [exe, "-m", "fastpolicy.cli", "bench", "--suite", "d4rl", "--task", task,
             "--threads", str(args.threads)]
    if args.methods:
        _run_some_methods(bench, task, args)
    else:
        if Path(args.results_dir) == Path(COMMITTED_RESULTS):
            where = ["--refresh-committed"]
        else:
            where = ["--results-dir", str(ROOT / args.results_dir)]
        subprocess.run([*bench, *where], check=True, cwd=ROOT)
    if args.peers:
        subprocess.run([exe, str(ROOT / "bench" / "bench_d4rl_peers.py"), "--tasks", task,
                        *shlex.split(args.peer_args)],
                       check=True, cwd=ROOT)


def _run_some_methods(bench: list[str], task: str, args: Args) -> None:
    """The suite restricted to ``args.methods``, written to a scratch folder, then merged by method into
    the task's results file (the suite itself rewrites its file whole)."""
    import tempfile

    from fastpolicy.evaluation.results import read_results, update_results

    with tempfile.TemporaryDirectory(prefix="d4rl-methods-") as tmp:
        subprocess.run([*bench, "--methods", *args.methods, "--results-dir", tmp, "--plot-dir", tmp],
                       check=True, cwd=ROOT)
        rows = read_results(Path(tmp) / f"d4rl_{task}.json")
    target = ROOT / args.results_dir / f"d4rl_{task}.json"
    update_results(target, rows, key=lambda r: (r["task"], r["method"]))


def suite_runs(task: str) -> Path:
    """Where ``fastpolicy bench --suite d4rl`` keeps the task's trained runs (``bc``, ``teacher``)."""
    return ROOT / "runs" / "bench" / "d4rl" / task


def validate(task: str, args: Args) -> Path:
    """BC and every teacher sampler of the d4rl suite on the validation seeds, from the suite's trained
    runs (``runs/bench/d4rl/<task>/{bc,teacher}``); rows already there for the same checkpoint and seeds
    are kept, so an interrupted validation resumes."""
    from tqdm.auto import tqdm

    import fastpolicy
    from fastpolicy.bench.suites import SUITES
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS
    from fastpolicy.evaluation import evaluate
    from fastpolicy.evaluation.method_names import canonical_method
    from fastpolicy.evaluation.results import read_results, update_results

    suite = SUITES["d4rl"]
    work = suite_runs(task)
    for run in ("teacher", "bc"):
        if not (work / run / "latest").exists():
            raise FileNotFoundError(f"{work / run} has no trained run: run `bench/bench_d4rl.py --tasks "
                                    f"{task}` first (validation scores the suite's own runs)")
    names = ([canonical_method(m) for m in args.validation_methods] if args.validation_methods else
             ["bc-mlp", *(m for m in suite.methods if m in TEACHER_SAMPLERS)])
    path = ROOT / args.results_dir / f"d4rl_validation_{task}.json"
    done = {(r["method"], r.get("checkpoint_hash"), tuple(r["seeds"])) for r in
            (read_results(path) if path.exists() else [])}
    teacher, bc = fastpolicy.load(work / "teacher"), fastpolicy.load(work / "bc")
    for name in tqdm(names, desc=f"validate {task}"):
        if name != "bc-mlp" and name not in TEACHER_SAMPLERS:
            raise ValueError(f"unknown teacher sampler {name!r}; known: {sorted(TEACHER_SAMPLERS)}")
        policy = bc if name == "bc-mlp" else teacher.with_sampler(TEACHER_SAMPLERS[name])
        ckpt = getattr(bc if name == "bc-mlp" else teacher, "checkpoint_hash", None)
        if (name, ckpt, tuple(args.validation_seeds)) in done:
            continue
        row = evaluate(policy, task, episodes=suite.episodes, seeds=args.validation_seeds, latency_steps=0,
                       progress=False, method=name, split="validation", checkpoint_hash=ckpt)
        update_results(path, [row], key=lambda r: r["method"])
        print(f"[validate] {task} {name}: {row['score_mean']:.1f} ± {row['score_std']:.1f} "
              f"({row['episodes']} episodes)", flush=True)
    return path


def action_errors(task: str, args: Args, windows: int = 2000) -> Path:
    """Per checkpoint of the suite's BC and teacher runs: predicted vs recorded actions (normalised units
    are the data's own, [-1, 1] here), so a gap in the mean-action fit is told apart from sampling noise."""
    import json

    import numpy as np
    import torch

    import fastpolicy
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.envs.registry import get_task
    from fastpolicy.utils.atomic import atomic_file

    store = EpisodeStore.open(ROOT / "datasets" / "store" / get_task(task).dataset)
    obs, act, ends = store.array("obs"), store.array("action"), store.episode_ends
    starts, rng = np.r_[0, ends[:-1]], np.random.default_rng(0)
    episodes = rng.integers(int(len(ends) * 0.9), len(ends), windows)
    picks = [rng.integers(starts[e] + 1, ends[e] - 2) for e in episodes if ends[e] - starts[e] >= 4]
    work, out = suite_runs(task), []
    for run in ("bc", "teacher"):
        for ckpt in sorted((work / run / "checkpoints").iterdir()):
            policy = fastpolicy.load(ckpt).eval()
            to = policy.obs_horizon
            win = np.stack([obs[i - to + 1:i + 1] for i in picks]).astype(np.float32)
            truth = np.stack([act[i:i + 2] for i in picks])
            specs = {"bc-mlp": None} if run == "bc" else {m: TEACHER_SAMPLERS[m] for m in (
                "teacher-ddim1-trailing-temp0", "teacher-ddim10-temp0", "teacher-ddpm100-temp0",
                "teacher-ddpm100-temp0.5", "teacher-ddpm100")}
            for name, spec in specs.items():
                view = policy if spec is None else policy.with_sampler(spec)
                pred = np.asarray(view.predict_chunk(win, generator=torch.Generator().manual_seed(0)).actions)
                out.append({"task": task, "method": name, "checkpoint": ckpt.name, "windows": len(picks),
                            "action_mse": float(np.mean((pred[:, :2] - truth) ** 2))})
                print(f"[action error] {task} {name} {ckpt.name}: {out[-1]['action_mse']:.4f}", flush=True)
    path = ROOT / args.results_dir / f"d4rl_action_error_{task}.json"
    with atomic_file(path, "w") as f:
        f.write(json.dumps(out, indent=1) + "\n")
    return path


def mark_selected(rows: list[dict[str, Any]], results_dir: Path) -> list[dict[str, Any]]:
    """Per task with validation rows: the teacher sampler with the best validation mean becomes "the
    teacher" (``selected_on_validation``; its validation score beside it). Test rows are never read."""
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS
    from fastpolicy.evaluation.results import read_results

    for task in dict.fromkeys(r["task"] for r in rows):
        path = results_dir / f"d4rl_validation_{task}.json"
        val = [r for r in read_results(path) if r["method"] in TEACHER_SAMPLERS] if path.exists() else []
        best = max(val, key=lambda r: r["score_mean"]) if val else None
        for r in rows:
            if r["task"] == task and r["method"] in TEACHER_SAMPLERS:
                r["selected_on_validation"] = None if best is None else r["method"] == best["method"]
                hit = [v for v in val if v["method"] == r["method"]]
                r["validation_score"] = hit[0]["score_mean"] if hit else None
    return rows


def merge(tasks: list[str], results_dir: Path) -> list[dict[str, Any]]:
    """All measured rows of ``tasks`` (ours, then the peers'), in task order."""
    from fastpolicy.evaluation.results import read_results

    rows: list[dict[str, Any]] = []
    for task in tasks:
        for name in (f"d4rl_{task}.json", f"d4rl_peers_{task}.json"):
            path = results_dir / name
            if path.exists():
                rows.extend(r for r in read_results(path) if r["task"] == task)
            else:
                print(f"[d4rl] no {path} yet — run without --merge-only", flush=True)
    return rows


def plot_scores(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars (task × method, error bar = std over episodes) with the published scores as marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fastpolicy.bench.report import save_figure

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * len(tasks), 4.2))
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, t in enumerate(tasks):
            hit = [r for r in rows if r["task"] == t and r["method"] == m]
            if hit:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(hit[0]["score_mean"])
                es.append(hit[0]["score_std"] or 0.0)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=m)
    markers = {"BC": "v", "Diffuser": "*", "TD3+BC": "D", "IQL": "s"}
    for name, mk in markers.items():
        pts = [(i, PUBLISHED[t][name]) for i, t in enumerate(tasks) if name in PUBLISHED.get(t, {})]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=mk, color="k", zorder=5, label=f"published {name}")
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("D4RL normalized score")
    ax.set_title("D4RL-style MuJoCo (gymnasium v5, locally built data) vs published D4RL v2 numbers")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


def main(args: Args) -> None:
    from fastpolicy.bench.report import print_table
    from fastpolicy.evaluation.results import read_results, update_results

    if args.action_error:
        for task in args.tasks:
            print(f"wrote {action_errors(task, args)}")
        return
    if args.validate:
        for task in args.tasks:
            print(f"wrote {validate(task, args)}")
    elif not args.merge_only:
        for task in args.tasks:
            run_task(task, args)
    results_dir = ROOT / args.results_dir
    out = results_dir / "d4rl.json"
    new = mark_selected(merge(args.tasks, results_dir), results_dir)
    if not new:
        raise SystemExit("no D4RL rows to merge")
    update_results(out, new, key=lambda r: r["task"])  # rows of tasks not run this time stay
    rows = read_results(out)
    print_table(rows, title="D4RL-style MuJoCo", extra=["train_seconds"])
    print(f"wrote {out}, {plot_scores(rows, ROOT / args.plot)}")


if __name__ == "__main__":
    main(parse_dataclass_args(Args, __doc__.split("\n")[0]))
