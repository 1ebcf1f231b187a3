"""``fastpolicy train``: offline training of a policy from an EpisodeStore (resumable, torchrun-ready)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastpolicy.train.config import TrainConfig
from fastpolicy.utils.args import add_config_flags, config_kwargs

POLICY_TYPES = ["diffusion", "bc", "streaming", "diffuser", "decision-diffuser", "trajectory-diffuser"]

#: The training flags every training command shares, each defined once by its ``TrainConfig`` field.
TRAINING_FLAGS = ("steps", "batch_size", "lr", "warmup_steps", "checkpoint_every", "seed", "device")


def add_training_flags(parser: argparse.ArgumentParser, defaults: dict | None = None,
                       helps: dict[str, str] | None = None) -> None:
    """``--steps --batch-size --lr --warmup-steps --checkpoint-every --seed --device`` from
    ``TrainConfig`` (``defaults`` / ``helps`` adjust them for one command), and ``--threads``."""
    add_config_flags(parser, TrainConfig, TRAINING_FLAGS, defaults, helps)
    add_threads_flag(parser)


def add_threads_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def training_config(args: argparse.Namespace, **extra) -> TrainConfig:
    """The ``TrainConfig`` the training flags describe (``extra``: fields without a flag)."""
    return TrainConfig(**config_kwargs(args, TRAINING_FLAGS), **extra)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy on an EpisodeStore (checkpoints, --resume, torchrun)")
    p.add_argument("--store", required=True, help="EpisodeStore path (see `fastpolicy data make/import`)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, TensorBoard)")
    p.add_argument(
        "--policy",
        default=None,
        choices=POLICY_TYPES,
        help="policy type (default: diffusion, or the resumed run's; the planners train on discounted "
             "returns-to-go computed from the store's rewards)",
    )
    p.add_argument("--backbone", default=None, help="diffusion backbone: unet-small | unet-base | mlp")
    p.add_argument("--task", default=None, help="task card whose horizons to use (default To=2, Tp=16, Ta=8)")
    p.add_argument("--obs-horizon", type=int, default=None)
    p.add_argument("--pred-horizon", type=int, default=None)
    p.add_argument("--action-horizon", type=int, default=None)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra policy config, e.g. --option sampler='\"ddim:10\"' (repeatable)",
    )
    add_training_flags(p, helps={"steps": "total optimizer steps (with --resume: the step to train up to)"})
    p.add_argument("--no-ema", action="store_true", help="train without EMA weights")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)


def parse_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option {pair!r}: expected KEY=JSON")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value  # a bare string
    return out


def check_resume(run_dir: Path, policy_type: str | None, options: dict, steps: int) -> None:
    """``--resume`` continues a run as it was configured: a different policy type or option, or a
    ``--steps`` the run is already past, is an error naming the difference (it used to be ignored)."""
    from fastpolicy.utils.checkpoint import read_config, resolve_checkpoint

    if not (run_dir / "latest").exists():
        return  # nothing to resume: a fresh run starts
    config = read_config(resolve_checkpoint(run_dir))
    if int(config["step"]) > steps:
        raise ValueError(f"{run_dir} is already at step {config['step']}, past --steps {steps}; pass --steps "
                         f"above {config['step']} to train further")
    hint = "drop it to resume, or pass another --out for a new run"
    if policy_type is not None and policy_type != config["policy_type"]:
        raise ValueError(f"--resume: {run_dir} trains a {config['policy_type']!r} policy, not "
                         f"--policy {policy_type!r} ({hint})")
    saved = config["policy_config"]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}" if key in _FLAG_OPTIONS else f"--option {key}"
        if key not in saved:
            raise ValueError(f"--resume: {flag} is not an option of the run's {config['policy_type']} "
                             f"policy, so it cannot change on resume ({hint})")
        if not _agrees(saved[key], value):
            raise ValueError(f"--resume: {run_dir} was trained with {key}={saved[key]!r}; {flag} {value!r} "
                             f"differs ({hint})")


def _agrees(saved: object, given: object) -> bool:
    """``given`` matches the saved option; for a mapping, the keys it names (the rest were defaults)."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return all(k in saved and _agrees(saved[k], v) for k, v in given.items())
    if isinstance(saved, list | tuple) and isinstance(given, list | tuple):
        return len(saved) == len(given) and all(_agrees(a, b) for a, b in zip(saved, given))
    return saved == given


_FLAG_OPTIONS = ("backbone", "obs_horizon", "pred_horizon", "action_horizon")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be ≥ 0, got {args.warmup_steps}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")


def _cmd_train(args: argparse.Namespace) -> int:
    _check_args(args)  # before the heavy imports

    import torch

    from fastpolicy.data.store import EpisodeStore
    from fastpolicy.train.offline import train_offline
    from fastpolicy.utils.atomic import check_writable
    from fastpolicy.utils.misc import resolve_device

    resolve_device(args.device)  # no CUDA → one line now, not a traceback later
    if args.task is not None:
        from fastpolicy.envs.registry import get_task

        get_task(args.task)
    EpisodeStore.open(args.store)  # missing or damaged store → one line before anything is built
    out = Path(args.out)
    check_writable(out, inside=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = parse_options(args.option)
    if args.backbone:
        options["backbone"] = args.backbone
    for name in ("obs_horizon", "pred_horizon", "action_horizon"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.resume:
        check_resume(out, args.policy, options, args.steps)
    cfg = training_config(args, ema=not args.no_ema, progress=not args.no_progress)
    _, stats = train_offline(
        args.store, args.out, args.policy or "diffusion", options, cfg, resume=args.resume, task=args.task
    )
    print(f"trained to step {stats['step']}: loss {stats['loss']:.4f} → {args.out}")
    return 0
