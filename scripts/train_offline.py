"""Train a diffusion teacher (or BC baseline) offline on a task's dataset, then evaluate it.

One file, top to bottom, CleanRL-style: the typed Args say what every knob does; the library does the
work (`fastpolicy.data.recipes`, `fastpolicy.train.offline`, `fastpolicy.evaluation`). Re-running with
the same --out resumes training from its last checkpoint.

    python scripts/train_offline.py --task maze2d-umaze --steps 20000 --backbone unet-small
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Args:
    task: str = "maze2d-umaze"
    """task card under envs/ (gives the dataset recipe, horizons and score normalisation)"""
    dataset_size: int | None = None
    """transitions to generate if the dataset is missing (None: the recipe's D4RL-sized default)"""
    store: str | None = None
    """use this EpisodeStore instead of generating one"""
    policy: str = "diffusion"
    """diffusion | bc"""
    backbone: str = "unet-small"
    """unet-small | unet-base | mlp (diffusion only)"""
    steps: int = 20000
    batch_size: int = 256
    seed: int = 0
    out: str = "runs/teacher"
    """run directory: checkpoints, TensorBoard; resumed when it exists"""
    samplers: str = "ddpm:100,ddim:10"
    """comma-separated samplers to evaluate (diffusion only)"""
    episodes: int = 10
    seeds: str = "0,1,2"


def parse_args() -> Args:
    from fastpolicy.utils.args import parse_dataclass_args

    return parse_dataclass_args(Args, __doc__.splitlines()[0])


def main(args: Args) -> None:
    from fastpolicy.bench.report import print_table
    from fastpolicy.data.recipes import make_dataset
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate
    from fastpolicy.evaluation.results import write_results
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

    task = get_task(args.task)
    store = Path(args.store or f"datasets/store/{task.dataset}")
    if not store.exists():
        make_dataset(task.dataset, store, size=args.dataset_size, seed=args.seed)
    options = {"backbone": args.backbone} if args.policy == "diffusion" else {}
    train_offline(
        store,
        args.out,
        args.policy,
        options,
        TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed),
        resume=True,
        task=args.task,
    )
    policy = load_policy(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for spec in args.samplers.split(",") if args.policy == "diffusion" else [None]:
        rows.append(evaluate(policy.with_sampler(spec) if spec else policy, task, args.episodes, seeds))
    print_table(rows)
    write_results(Path(args.out) / "eval.json", rows)


if __name__ == "__main__":
    main(parse_args())
