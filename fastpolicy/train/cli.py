"""``fastpolicy train``: offline training of a policy from an EpisodeStore (resumable, torchrun-ready)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy on an EpisodeStore (checkpoints, --resume, torchrun)")
    p.add_argument("--store", required=True, help="EpisodeStore path (see `fastpolicy data make/import`)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, TensorBoard)")
    p.add_argument(
        "--policy",
        default="diffusion",
        choices=["diffusion", "bc", "streaming", "diffuser", "decision-diffuser", "trajectory-diffuser"],
        help="policy type (the planners train on discounted returns-to-go computed from the store's rewards)",
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
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
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


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from fastpolicy.train.offline import train_offline
    from fastpolicy.train.trainer import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    options = parse_options(args.option)
    if args.backbone:
        options["backbone"] = args.backbone
    for name in ("obs_horizon", "pred_horizon", "action_horizon"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
        ema=not args.no_ema,
        progress=not args.no_progress,
    )
    _, stats = train_offline(
        args.store, args.out, args.policy, options, cfg, resume=args.resume, task=args.task
    )
    print(f"trained to step {stats['step']}: loss {stats['loss']:.4f} → {args.out}")
    return 0
