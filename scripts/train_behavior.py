"""Train a SAC behavior policy for the D4RL-style MuJoCo recipes (CleanRL-style: one file, top to bottom).

    OMP_NUM_THREADS=1 nohup nice -n 15 .venv/bin/python scripts/train_behavior.py --env Hopper-v5 \
        --steps 1000000 --out runs/sac-hopper > runs/sac-hopper.log 2>&1 &
    # after an interruption (session end, kill): the same command with --resume
    .venv/bin/python scripts/train_behavior.py --env Hopper-v5 --steps 1000000 --out runs/sac-hopper --resume
    # copy the medium checkpoint (first eval return >= REF_MAX / 3) into datasets/behavior/
    .venv/bin/python scripts/train_behavior.py --out runs/sac-hopper --export medium

The run directory layout and its trust rules are in ``fastpolicy/rl/sac.py``; ``--export`` writes
``datasets/behavior/<env>-<band>.safetensors`` + ``.json`` (see ``fastpolicy/data/recipes/mujoco.py``).
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: 2 shared cores


@dataclasses.dataclass
class Args:
    env: str = "Hopper-v5"
    """gymnasium env id (Hopper-v5, HalfCheetah-v5, Walker2d-v5)"""
    steps: int = 1_000_000
    """total env steps of the run (resume may raise it)"""
    out: str = "runs/sac-hopper"
    """run directory (checkpoints, returns.json, replay buffer, TensorBoard)"""
    resume: bool = False
    """continue from the run's latest checkpoint, replay buffer included"""
    seed: int = 0
    """training seed"""
    checkpoint_every: int = 20_000
    """env steps between checkpoints (each is evaluated and exported)"""
    eval_episodes: int = 5
    """evaluation episodes per checkpoint (deterministic, and again stochastic)"""
    learning_starts: int = 10_000
    """uniform-random warm-up steps (rl-zoo MuJoCo default)"""
    no_progress: bool = False
    """disable the progress bar (for log files)"""
    export: str = ""
    """instead of training: export a band ('medium' or 'expert') of the run to datasets/behavior/"""
    export_dir: str = "datasets/behavior"
    """where --export writes"""


def parse_args() -> Args:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Args):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    return Args(**vars(parser.parse_args()))


def main() -> None:
    args = parse_args()
    if args.export:
        from fastpolicy.data.recipes.mujoco import export_band

        path = export_band(args.out, args.export, args.export_dir)
        print(f"exported {path}")
        return

    import torch

    from fastpolicy.rl.sac import train_sac

    torch.set_num_threads(1)
    result = train_sac(args.env, args.steps, args.out, resume=args.resume, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, eval_episodes=args.eval_episodes,
                       learning_starts=args.learning_starts, progress=not args.no_progress)
    print(f"done: step {result.step}, {len(result.returns)} checkpoints in {result.out}")


if __name__ == "__main__":
    main()
