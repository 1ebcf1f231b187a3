"""Teacher against BC over training seeds: is the gap on the D4RL table larger than its own noise?

One training seed and 30 episodes leave a standard error of ~4–5 normalized points on hopper-medium and
walker2d-medium (all-or-nothing episodes), wider than the gaps the D4RL table reports. This study repeats
the d4rl suite's BC and teacher (same budgets, ``fastpolicy.bench.suites.SUITES["d4rl"]``) over training
seeds, scores every method on the validation seeds and on the test seeds with per-episode scores kept,
and reads the result with the protocol fixed before any test row was seen:

* the teacher's sampler is the one with the best validation mean pooled over all training seeds
  (BC has no sampler to choose; its horizons were chosen on validation seeds earlier);
* a method's test score is the mean over every test episode of every training seed, with the standard
  error over training-seed means (``score_se``: what another training run would move it by) beside
  the episode std;
* the difference to BC is paired: same training seed, same env seed and episode index.

Training seed 0 is the suite's own run (``runs/bench/d4rl/<task>/{bc,teacher}``, identical to the
committed d4rl rows for a fixed seed); seed k > 0 trains into ``…/<task>/seed<k>/``. Rows per (method,
training seed, split) go to ``bench/results/d4rl_seeds_<task>.json`` as they finish (an interrupted run
resumes), the pooled rows to ``bench/results/d4rl_seeds.json`` and the plot to ``docs/d4rl_seeds.png``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_d4rl_seeds.py --tasks hopper-medium
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastpolicy.utils.args import parse_dataclass_args

ROOT = Path(__file__).resolve().parents[1]
BC = "bc-mlp"


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["hopper-medium", "walker2d-medium"])
    """task cards (MuJoCo medium tasks: their stores rebuild from the committed behaviour actors)"""
    train_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    validation_seeds: list[int] = field(default_factory=lambda: [100, 101, 102])
    """env seeds for choosing the sampler (episodes at s·1000 + i, disjoint from the test seeds)"""
    test_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    episodes: int = 10
    """episodes per env seed"""
    methods: list[str] | None = None
    """BC and teacher samplers to score (default: BC and every teacher sampler of the d4rl suite)"""
    threads: int = 1
    results_dir: str = "bench/results"
    runs_dir: str = "runs/bench/d4rl"
    plot: str = "docs/d4rl_seeds.png"
    summarize_only: bool = False
    """pool the rows already on disk (every training seed given) without training or evaluating: a run
    limited to some seeds (``--train-seeds 2``) pools only those, so summarise the full set afterwards"""
    quick: bool = False
    """smoke run: a 3,000-step store, 40 training steps, 2 episodes, into ``runs_dir``/``results_dir`` as
    given (point them at a temporary folder)"""


def run_dir(args: Args, task: str, train_seed: int) -> Path:
    """Seed 0 is the d4rl suite's own run; other seeds sit beside it."""
    base = ROOT / args.runs_dir / task
    return base if train_seed == 0 else base / f"seed{train_seed}"


def rows_path(args: Args, task: str) -> Path:
    """Per (method, training seed, split) rows of one task."""
    return ROOT / args.results_dir / f"d4rl_seeds_{task}.json"


def suite_for(args: Args) -> Any:
    from fastpolicy.bench.suites import SUITES

    suite = SUITES["d4rl"]
    if args.quick:
        suite = dataclasses.replace(suite, teacher_steps=40, bc_steps=40, batch_size=32, progress=False)
    return suite


def method_names(args: Args) -> list[str]:
    """The method ids to score (older ids such as ``dp-ddim10`` are accepted and mapped to today's)."""
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS
    from fastpolicy.evaluation.method_names import canonical_method

    names = ([canonical_method(m) for m in args.methods] if args.methods else
             [BC, *(m for m in suite_for(args).methods if m in TEACHER_SAMPLERS)])
    unknown = [m for m in names if m != BC and m not in TEACHER_SAMPLERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {[BC, *TEACHER_SAMPLERS]}")
    return names


def train(args: Args, task: str, store: Path, train_seed: int) -> dict[str, Path]:
    """BC and the teacher at the suite's budgets and this training seed (finished runs are reused)."""
    from fastpolicy.bench.methods import train_config
    from fastpolicy.train.offline import train_offline
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    suite = suite_for(args)
    runs = {}
    learners = (("teacher", "diffusion", suite.teacher_options, suite.teacher_steps),
                ("bc", "bc", suite.bc_options, suite.bc_steps))
    for name, policy_type, options, steps in learners:
        run = run_dir(args, task, train_seed) / name
        try:
            done = int(read_config(resolve_checkpoint(run))["step"]) >= steps
        except (FileNotFoundError, ValueError):
            done = False
        if not done:
            print(f"[seeds] {task} train seed {train_seed}: {name} ({steps} steps)", flush=True)
            train_offline(store, run, policy_type, dict(options), train_config(steps, suite, seed=train_seed),
                          resume=True, task=task)
        runs[name] = run
    return runs


def score(policy: Any, task: str, name: str, seeds: list[int], episodes: int, **extra: Any) -> dict[str, Any]:
    """One row of the shared schema with every episode's normalized score kept (for paired differences)."""
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation.results import score_row
    from fastpolicy.evaluation.rollouts import rollout

    spec = get_task(task)
    results = [rollout(policy, spec, episodes, seed * 1000) for seed in seeds]
    returns = np.concatenate([r.returns for r in results])
    return score_row(spec, name, steps=getattr(policy, "checkpoint_step", None), seeds=list(seeds),
                     returns=[r.returns for r in results], success=[r.success for r in results],
                     lengths=[r.lengths for r in results], nfe=[n for r in results for n in r.stats.nfe],
                     episode_scores=[float(s) for s in spec.normalized_score(returns)], **extra)


def measure(args: Args, task: str) -> Path:
    """Every (training seed, split, method) row not yet on disk, validation before test."""
    from tqdm.auto import tqdm

    import fastpolicy
    from fastpolicy.bench.methods import ensure_dataset, suite_store_path
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS
    from fastpolicy.evaluation.results import read_results, update_results

    suite = suite_for(args)
    if args.quick:
        store = ensure_dataset(task, ROOT / args.runs_dir / "data" / task, 3000)
    else:
        store = ensure_dataset(task, ROOT / suite_store_path(suite, task, ROOT / args.runs_dir),
                               suite.dataset_size)
    path = rows_path(args, task)
    key = lambda r: (r["method"], r["train_seed"], r["split"])  # noqa: E731
    names = method_names(args)
    for train_seed in args.train_seeds:
        runs = train(args, task, store, train_seed)
        teacher, bc = fastpolicy.load(runs["teacher"]), fastpolicy.load(runs["bc"])
        done = {key(r): r.get("checkpoint_hash") for r in (read_results(path) if path.exists() else [])}
        todo = [(split, seeds, name) for split, seeds in (("validation", args.validation_seeds),
                                                          ("test", args.test_seeds)) for name in names]
        for split, seeds, name in tqdm(todo, desc=f"{task} train seed {train_seed}", disable=args.quick):
            base = bc if name == BC else teacher
            ckpt = getattr(base, "checkpoint_hash", None)
            if done.get((name, train_seed, split), "missing") == ckpt:
                continue
            policy = bc if name == BC else teacher.with_sampler(TEACHER_SAMPLERS[name])
            t0 = time.perf_counter()
            row = score(policy, task, name, seeds, args.episodes, split=split, train_seed=train_seed,
                        checkpoint_hash=ckpt, eval_seconds=None)
            row["eval_seconds"] = round(time.perf_counter() - t0, 1)
            update_results(path, [row], key=key)
            print(f"[seeds] {task} seed {train_seed} {split:10s} {name:24s} {row['score_mean']:6.1f} "
                  f"± {row['score_std']:.1f} ({row['episodes']} episodes, {row['eval_seconds']} s)",
                  flush=True)
    return path


def pooled(rows: list[dict[str, Any]], task: str, train_seeds: list[int]) -> list[dict[str, Any]]:
    """Per method: test episodes pooled over training seeds, SE over seed means, paired Δ vs BC, and
    the validation pick. Only seeds with every method's validation and test rows are used."""
    from fastpolicy.bench.teacher_methods import TEACHER_SAMPLERS
    from fastpolicy.evaluation.results import make_row

    rows = [r for r in rows if r["task"] == task and r["train_seed"] in train_seeds]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    have = {(r["method"], r["train_seed"], r["split"]): r for r in rows}
    splits = ("validation", "test")
    seeds = [s for s in train_seeds if all((m, s, sp) in have for m in methods for sp in splits)]
    if not seeds:
        return []

    def scores(m: str, split: str) -> np.ndarray:  # (train seeds, episodes)
        return np.array([have[(m, s, split)]["episode_scores"] for s in seeds])

    val_mean = {m: float(scores(m, "validation").mean()) for m in methods}
    samplers = [m for m in methods if m in TEACHER_SAMPLERS]
    pick = max(samplers, key=val_mean.get) if samplers else None
    out = []
    for m in methods:
        test = scores(m, "test")
        seed_means = test.mean(1)
        se = float(seed_means.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else None
        first = have[(m, seeds[0], "test")]
        row = make_row(task, m, steps=first["steps"], score_mean=float(test.mean()),
                       score_std=float(test.std()),
                       episodes=int(test.size), seeds=first["seeds"],
                       nfe_per_step_mean=float(np.mean([have[(m, s, "test")]["nfe_per_step_mean"]
                                                        for s in seeds])),
                       nfe_per_step_max=int(max(have[(m, s, "test")]["nfe_per_step_max"] for s in seeds)),
                       latency_ms_p50=None, latency_ms_p99=None, train_seeds=seeds, score_se=se,
                       seed_means=[float(x) for x in seed_means], validation_score=val_mean[m],
                       validation_episodes=int(scores(m, "validation").size),
                       selected_on_validation=(m == pick) if m in TEACHER_SAMPLERS else None,
                       split="test")
        if m != BC and BC in methods:
            diff = test - scores(BC, "test")
            d_seed = diff.mean(1)
            row["diff_vs_bc_mean"] = float(diff.mean())
            row["diff_vs_bc_se"] = float(d_seed.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else None
        out.append(row)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastpolicy.bench.report import save_figure
    from fastpolicy.evaluation.results import read_results

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    suite_rows = ROOT / "bench" / "results" / "d4rl.json"
    peers = {r["task"]: r["score_mean"] for r in (read_results(suite_rows) if suite_rows.exists() else [])
             if r["method"] == "d3rlpy-bc"}
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = [r for r in rows if r["task"] == task]
        colors = ["tab:gray" if r["method"] == BC
                  else ("tab:red" if r["selected_on_validation"] else "tab:blue") for r in sub]
        ax.bar(range(len(sub)), [r["score_mean"] for r in sub], yerr=[r["score_se"] or 0 for r in sub],
               color=colors, capsize=3)
        ax.set_xticks(range(len(sub)), [r["method"] for r in sub], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{task}: test, {sub[0]['episodes']} episodes over training seeds "
                     f"{sub[0]['train_seeds']}", fontsize=9)
        peer = peers.get(task)
        if peer is not None:  # the acceptance bar of the D4RL table: d3rlpy BC on the same data
            ax.axhline(peer, color="k", ls="--", lw=1, label=f"d3rlpy BC {peer:.1f} (1 training seed)")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_ylabel("normalized score (± SE, training seeds)")
    fig.suptitle("red: teacher sampler chosen on validation seeds; gray: BC", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(args: Args) -> None:
    import torch

    from fastpolicy.bench.report import print_table
    from fastpolicy.evaluation.results import read_results, update_results

    torch.set_num_threads(args.threads)
    summary: list[dict[str, Any]] = []
    for task in args.tasks:
        path = rows_path(args, task) if args.summarize_only else measure(args, task)
        if not path.exists():
            raise FileNotFoundError(f"--summarize-only: no rows for {task} at {path}; run without it first")
        summary += pooled(read_results(path), task, args.train_seeds)
    if summary:
        out = ROOT / args.results_dir / "d4rl_seeds.json"
        update_results(out, summary, key=lambda r: (r["task"], r["method"]))
        print_table(summary, extra=("score_se", "validation_score", "selected_on_validation",
                                    "diff_vs_bc_mean", "diff_vs_bc_se"))
        print(f"wrote {out}, {plot(read_results(out), ROOT / args.plot)}")


if __name__ == "__main__":
    main(parse_dataclass_args(Args, description=__doc__))
