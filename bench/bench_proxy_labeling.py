"""Learning from action-free trajectories: inverse-dynamics proxy labels (SS-ORL protocol) end to end.

Per task (a task card + its EpisodeStore):

1. split: sort episodes by return, keep the actions of 10% of all episodes drawn from the bottom 50%
   (``fastpolicy.data.split``); the labeled episodes alone form the *labeled-only* store;
2. inverse dynamics on the labeled transitions (Gaussian NLL, 10% validation hold-out, best checkpoint);
   its action error (MSE, NLL) on the unlabeled in-distribution (bottom 50%) and out-of-distribution
   (top 50%) parts, against the true actions of the source store;
3. proxy labels for every unlabeled step (``fastpolicy.train.label``);
4. each learner (BC-MLP, the diffusion teacher with a CPU-sized MLP denoiser) trained with
   ``fastpolicy.train.offline.train_offline`` on labeled-only / proxy-labeled / fully-labeled data, the
   same steps and seed, and scored with ``fastpolicy.evaluation.evaluate`` (same episodes and seeds);
5. optionally the proxy-labeled teacher distilled into a one-step consistency student
   (``fastpolicy.train.distill``) — the labeled data flows into the accelerated pipeline unchanged.

Rows (``fastpolicy.evaluation.results``) go to ``bench/results/proxy_labeling.json``: one per task × learner ×
label condition (method ``<learner>``, field ``label_condition``), one per task × unlabeled part for the
inverse dynamics (method ``inverse-dynamics``), and the distilled student. A markdown table is printed
and written next to the run (``<work-dir>/proxy_labeling.md``).

Any task with a task card and a store plugs in: ``--tasks hopper-medium walker2d-medium --stores
datasets/store/hopper-medium datasets/store/walker2d-medium`` once those datasets exist. A missing
store whose task card names a recipe is built with ``fastpolicy data make`` (``--make-size`` steps).

    nice -n 10 .venv/bin/python bench/bench_proxy_labeling.py      # maze2d-umaze + AGV (~25-40 min, 2 cores)
    .venv/bin/python bench/bench_proxy_labeling.py --quick                 # smoke run (~2 min)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastpolicy.evaluation.results import make_row, update_results
from fastpolicy.utils.args import parse_dataclass_args

CONDITIONS = ("labeled", "proxy", "full")


@dataclass
class Args:
    tasks: list[str] = field(default_factory=lambda: ["maze2d-umaze", "agv-simple-static"])
    """task cards (envs/*.yaml) to run"""
    stores: list[str] = field(default_factory=list)
    """store per task (same order); default datasets/store/<task card's dataset>"""
    make_size: list[int] = field(default_factory=lambda: [150_000, 0])
    """steps for a store that must be built first, per task (0: the recipe's default)"""
    labeled: float = 0.1
    """fraction of all episodes that keep their actions"""
    from_bottom: float = 0.5
    """the labeled episodes are drawn from this lowest-return fraction"""
    split_seed: int = 0
    """seed of the labeled draw"""
    idm_history: int = 1
    """k: inverse dynamics on [s_(t-k) .. s_t, s_(t+1)]"""
    idm_hidden: int = 256
    """inverse-dynamics MLP width (2 hidden layers)"""
    idm_ensemble: int = 1
    """inverse-dynamics ensemble members"""
    idm_steps: int = 3000
    """inverse-dynamics optimizer steps"""
    learners: list[str] = field(default_factory=lambda: ["bc", "diffusion"])
    """policy types trained on each label condition"""
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    """label conditions: labeled (labeled episodes only), proxy (true + proxy labels), full (all true)"""
    train_steps: int = 3000
    """optimizer steps per learner (the same for every condition)"""
    batch_size: int = 256
    """training batch size"""
    lr: float = 1e-3
    """learning rate (MLP-sized learners train well at 1e-3 on this budget)"""
    diffusion_backbone: str = "mlp"
    """denoiser of the diffusion teacher (CPU-sized)"""
    diffusion_sampler: str = "ddim:10"
    """teacher sampler at evaluation"""
    distill_steps: int = 1500
    """consistency distillation steps of the proxy-labeled teacher (0: skip)"""
    eval_episodes: int = 0
    """episodes per evaluation seed (0: the task card's)"""
    eval_seeds: list[int] = field(default_factory=list)
    """evaluation seeds (empty: the task card's)"""
    latency_steps: int = 16
    """batch-1 control steps timed per evaluation"""
    seed: int = 0
    """training seed"""
    threads: int = 1
    """torch threads"""
    work_dir: str = "runs/proxy_labeling"
    """splits, stores, checkpoints and the markdown table go here"""
    out: str = "bench/results/proxy_labeling.json"
    """where the JSON rows go"""
    quick: bool = False
    """tiny run for smoke testing (first task, a few hundred steps)"""


def parse_args(argv: list[str] | None = None) -> Args:
    args = parse_dataclass_args(Args, __doc__, argv)
    if args.quick:
        defaults = Args()
        args = dataclasses.replace(
            args, tasks=args.tasks[:1], make_size=[30_000], idm_steps=300, train_steps=200,
            distill_steps=min(args.distill_steps, 50), eval_episodes=3, eval_seeds=[0], latency_steps=4,
            # a smoke run never overwrites the real results unless told to
            work_dir=args.work_dir + "_quick" if args.work_dir == defaults.work_dir else args.work_dir,
            out="bench/results/proxy_labeling_quick.json" if args.out == defaults.out else args.out)
    unknown = set(args.conditions) - set(CONDITIONS)
    if unknown:
        raise SystemExit(f"unknown conditions {sorted(unknown)}; valid: {CONDITIONS}")
    return args


def ensure_store(task, store: str | None, size: int) -> Path:
    """The task's store, built from its recipe when missing."""
    from fastpolicy.data.recipes import make_dataset

    path = Path(store) if store else Path("datasets/store") / task.dataset
    if not path.exists():
        print(f"  building {path} ({task.dataset}, {size or 'default'} steps)")
        make_dataset(task.dataset, path, size=size or None, seed=0, progress=False)
    return path


def train_learner(store: Path, run: Path, learner: str, args: Args, task: str):
    """Train (or reuse a finished run of) one learner; returns (policy, seconds from its run record)."""
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.run_record import train_or_reuse
    from fastpolicy.train.trainer import TrainConfig

    options: dict[str, Any] = {}
    if learner == "diffusion":
        options = {"backbone": args.diffusion_backbone, "sampler": args.diffusion_sampler}
    cfg = TrainConfig(steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=min(200, args.train_steps // 10), checkpoint_every=args.train_steps,
                      keep_checkpoints=1, seed=args.seed, progress=False, tensorboard=False)
    seconds = train_or_reuse(store, run, learner, options, cfg, task=task)
    return load_policy(run), seconds


def run_task(task_name: str, store_arg: str | None, size: int, args: Args) -> list[dict[str, Any]]:
    """All rows of one task; every finished row is written at once (replacing the task's earlier rows,
    keeping other tasks') so a long run that is stopped keeps what it measured — and a rerun reuses the
    finished training runs."""
    from fastpolicy.data.split import labeled_subset, split_store
    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate
    from fastpolicy.nets.inverse_dynamics import load_inverse_dynamics
    from fastpolicy.train.inverse_dynamics import IDMTrainConfig
    from fastpolicy.train.label import idm_errors, label_store, train_idm_on_store

    task = get_task(task_name)
    source_path = ensure_store(task, store_arg, size)
    source = EpisodeStore.open(source_path)
    work = Path(args.work_dir) / task_name
    work.mkdir(parents=True, exist_ok=True)
    common = {"dataset": str(source_path), "dataset_episodes": source.n_episodes,
              "dataset_steps": source.n_steps, "labeled_fraction": args.labeled,
              "from_bottom": args.from_bottom, "split_seed": args.split_seed}

    # 1. split (always rebuilt: it is cheap and must match the arguments)
    split = split_store(source, work / "split", args.labeled, args.from_bottom, args.split_seed,
                        overwrite=True)
    labeled_only = labeled_subset(split, work / "labeled_only", overwrite=True)
    info = split.attrs["split"]
    print(f"  split: {len(info['labeled_episodes'])} labeled episodes ({info['labeled_steps']} steps), "
          f"{len(info['unlabeled_in_distribution'])} ID + "
          f"{len(info['unlabeled_out_of_distribution'])} OOD unlabeled")

    # 2. inverse dynamics + its error on the unlabeled parts
    t0 = time.perf_counter()
    idm_dir = work / "idm"
    options = {"history": args.idm_history, "hidden": args.idm_hidden, "ensemble": args.idm_ensemble}
    idm_train = IDMTrainConfig(steps=args.idm_steps, seed=args.seed)
    _, report = train_idm_on_store(split.path, idm_dir, options, idm_train, overwrite=True)
    idm_seconds = time.perf_counter() - t0
    model = load_inverse_dynamics(idm_dir)
    errors = idm_errors(model, split, source.array("action"))
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        update_results(args.out, rows, key=lambda r: r["task"])

    action_var = float(np.var(source.array("action"), axis=0).mean())
    for part, err in errors.items():
        emit(make_row(task.name, "inverse-dynamics", steps=report.best_step[0], label_condition=part,
                             idm_action_mse=err["mse"], idm_action_nll=err["nll"],
                             idm_std_mean=err["std_mean"],
                             idm_relative_mse=err["mse"] / action_var, evaluated_steps=err["steps"],
                             idm_history=args.idm_history, idm_hidden=args.idm_hidden,
                             idm_ensemble=args.idm_ensemble, idm_best_val_loss=report.best_val_loss[0],
                             idm_train_seconds=round(idm_seconds, 2), idm_model_hash=model.checkpoint_hash,
                             **common))
        print(f"  inverse dynamics on {part}: MSE {err['mse']:.4f} (relative {err['mse'] / action_var:.3f}), "
              f"NLL {err['nll']:.3f}, mean std {err['std_mean']:.3f}")

    # 3. proxy labels
    proxy = label_store(split.path, idm_dir, work / "proxy", overwrite=True)
    stores = {"labeled": labeled_only.path, "proxy": proxy.path, "full": source_path}

    # 4. learners on every condition, one evaluation protocol
    eval_kw: dict[str, Any] = {"episodes": args.eval_episodes or None, "seeds": args.eval_seeds or None,
                               "latency_steps": args.latency_steps, "progress": False}
    scores: dict[tuple[str, str], float] = {}
    successes: dict[tuple[str, str], float] = {}
    teacher_runs: dict[str, Path] = {}
    for learner in args.learners:
        for condition in args.conditions:
            run = work / "runs" / f"{learner}-{condition}"
            policy, seconds = train_learner(Path(stores[condition]), run, learner, args, task.name)
            if learner == "diffusion":
                teacher_runs[condition] = run
            row = evaluate(policy, task, method=learner, label_condition=condition, learner=learner,
                           train_store=str(stores[condition]), train_steps=args.train_steps,
                           train_seconds=None if seconds is None else round(seconds, 1),
                           batch_size=args.batch_size, lr=args.lr,
                           idm_model_hash=model.checkpoint_hash if condition == "proxy" else None, **common,
                           **eval_kw)
            scores[(learner, condition)] = row["score_mean"]
            successes[(learner, condition)] = row["success_rate"]
            emit(row)
            print(f"  {learner:<10} {condition:<8} score {row['score_mean']:7.2f} ± {row['score_std']:.2f} "
                  f"(train {seconds:.0f} s)")
    for row in rows:
        if row["method"] in args.learners:
            full = scores.get((row["method"], "full"))
            # a ratio is only meaningful against a positive reference score
            row["score_vs_full"] = row["score_mean"] / full if full and full > 0 else None
            full_success = successes.get((row["method"], "full"))
            row["success_vs_full"] = row["success_rate"] / full_success if full_success else None

    # 5. the proxy-labeled teacher → one-step consistency student
    if args.distill_steps and "proxy" in teacher_runs:
        emit(distill_row(task, teacher_runs["proxy"], proxy.path, work, args, common, eval_kw,
                         scores.get(("diffusion", "full")), successes.get(("diffusion", "full"))))
    return rows


def distill_row(task, teacher_run: Path, store: Path, work: Path, args: Args, common: dict[str, Any],
                eval_kw: dict[str, Any], full_score: float | None, full_success: float | None
                ) -> dict[str, Any]:
    from fastpolicy.evaluation import evaluate
    from fastpolicy.train.distill import distill
    from fastpolicy.train.trainer import TrainConfig

    cfg = TrainConfig(steps=args.distill_steps, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=min(100, args.distill_steps // 10), checkpoint_every=args.distill_steps,
                      keep_checkpoints=1, seed=args.seed, progress=False, tensorboard=False)
    t0 = time.perf_counter()
    student = distill(teacher_run, store, work / "runs" / "consistency-proxy", segments=(1,),
                      train_config=cfg, resume=True)
    seconds = time.perf_counter() - t0
    row = evaluate(student, task, method="consistency-1", label_condition="proxy", learner="consistency",
                   train_store=str(store), teacher=str(teacher_run), train_steps=args.distill_steps,
                   train_seconds=round(seconds, 1), **common, **eval_kw)
    row["score_vs_full"] = row["score_mean"] / full_score if full_score and full_score > 0 else None
    row["success_vs_full"] = row["success_rate"] / full_success if full_success else None
    print(f"  consistency-1 (from proxy teacher) score {row['score_mean']:7.2f} ± {row['score_std']:.2f}")
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    def pct(value: float | None) -> str:
        return f"{100 * value:.0f}%" if value is not None else "–"

    lines = ["| task | learner | labels | score (mean ± std) | score vs full | success | success vs full "
             "| NFE/step | p50 ms | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "inverse-dynamics":
            continue
        p50 = f"{r['latency_ms_p50']:.2f}" if r.get("latency_ms_p50") is not None else "–"
        lines.append(f"| {r['task']} | {r['method']} | {r['label_condition']} | {r['score_mean']:.2f} ± "
                     f"{r['score_std']:.2f} | {pct(r.get('score_vs_full'))} | {r['success_rate']:.2f} | "
                     f"{pct(r.get('success_vs_full'))} | {r['nfe_per_step_mean']:.2f} | {p50} | "
                     f"{r.get('train_seconds', '–')} |")
    lines += ["", "| task | inverse dynamics on | steps | action MSE | MSE / action variance | NLL "
              "| mean std |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "inverse-dynamics":
            lines.append(f"| {r['task']} | {r['label_condition']} | {r['evaluated_steps']} | "
                         f"{r['idm_action_mse']:.4f} | {r['idm_relative_mse']:.3f} | "
                         f"{r['idm_action_nll']:.3f} | "
                         f"{r['idm_std_mean']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for i, task in enumerate(args.tasks):
        store = args.stores[i] if i < len(args.stores) else None
        size = args.make_size[i] if i < len(args.make_size) else 0
        print(f"[{task}]")
        rows += run_task(task, store, size, args)
    total = time.perf_counter() - t0
    for row in rows:
        row["experiment_seconds"] = round(total, 1)
    path = update_results(args.out, rows, key=lambda r: r["task"])
    table = markdown(rows)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.work_dir) / "proxy_labeling.md").write_text(table + "\n")
    print(table)
    print(f"wrote {path} ({len(rows)} rows) in {total / 60:.1f} min")


if __name__ == "__main__":
    main()
