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

    from fastpolicy.bench.schema import read_results, update_results

    with tempfile.TemporaryDirectory(prefix="d4rl-methods-") as tmp:
        subprocess.run([*bench, "--methods", *args.methods, "--results-dir", tmp, "--plot-dir", tmp],
                       check=True, cwd=ROOT)
        rows = read_results(Path(tmp) / f"d4rl_{task}.json")
    target = ROOT / args.results_dir / f"d4rl_{task}.json"
    update_results(target, rows, key=lambda r: (r["task"], r["method"]))


def merge(tasks: list[str], results_dir: Path) -> list[dict[str, Any]]:
    """All measured rows of ``tasks`` (ours, then the peers'), in task order."""
    from fastpolicy.bench.schema import read_results

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
    from fastpolicy.bench.schema import read_results, update_results

    if not args.merge_only:
        for task in args.tasks:
            run_task(task, args)
    results_dir = ROOT / args.results_dir
    out = results_dir / "d4rl.json"
    new = merge(args.tasks, results_dir)
    if not new:
        raise SystemExit("no D4RL rows to merge")
    update_results(out, new, key=lambda r: r["task"])  # rows of tasks not run this time stay
    rows = read_results(out)
    print_table(rows, title="D4RL-style MuJoCo", extra=["train_seconds"])
    print(f"wrote {out}, {plot_scores(rows, ROOT / args.plot)}")


if __name__ == "__main__":
    main(parse_dataclass_args(Args, __doc__.split("\n")[0]))
