"""``fastpolicy eval CKPT --task T``: score and time a checkpoint on a task card, one row per sampler.

Arguments are checked before anything slow (episodes ≥ 1, samplers that apply to the policy, an output
that can be written); rows carry the checkpoint's content hash; results go to ``<run>/eval/<task>.json``
unless ``--out`` says otherwise (``--no-write``: print only). The evaluation itself is
:func:`fastpolicy.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a task (score, NFE per step, latency)",
                       description=__doc__)
    p.add_argument("checkpoint", help="checkpoint directory or training run directory")
    p.add_argument("--task", required=True, help="task card name (list them: fastpolicy tasks)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per seed (default: task card)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="evaluation seeds (default: task card)")
    p.add_argument(
        "--sampler",
        nargs="+",
        default=None,
        help="diffusion samplers to compare, e.g. ddpm:100 ddim:10 dpm:5 'ddim:10,spacing=trailing' "
        "(default: checkpoint's)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature for every --sampler (scales the initial and the stochastic steps' "
        "noise; 0 = deterministic DDPM). Default: the sampler spec's own (1)",
    )
    p.add_argument("--latency-steps", type=int, default=64, help="batch-1 control steps timed for latency")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, help="result JSON (default: <run>/eval/<task>.json)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.set_defaults(func=_cmd_eval)


def default_out(checkpoint: str | Path, task: str) -> Path:
    """``<run>/eval/<task>.json`` — the run directory of a checkpoint (``<run>/checkpoints/step_N``)."""
    path = Path(checkpoint)
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    return run / "eval" / f"{task}.json"


def _check_args(args: argparse.Namespace) -> None:
    if args.episodes is not None and args.episodes < 1:
        raise ValueError(f"--episodes must be ≥ 1, got {args.episodes}")
    if args.latency_steps < 0:
        raise ValueError(f"--latency-steps must be ≥ 0, got {args.latency_steps}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    if args.temperature is not None and args.temperature < 0:
        raise ValueError(f"--temperature must be ≥ 0, got {args.temperature}")


def _cmd_eval(args: argparse.Namespace) -> int:
    _check_args(args)  # before the heavy imports

    import torch

    from fastpolicy.bench.report import COLUMNS, HASH_COLUMN, print_table
    from fastpolicy.envs.registry import get_task
    from fastpolicy.evaluation import evaluate
    from fastpolicy.evaluation.results import write_results
    from fastpolicy.policies.checkpoint import load_policy
    from fastpolicy.utils.atomic import check_writable

    task = get_task(args.task)
    out = None if args.no_write else Path(args.out) if args.out else default_out(args.checkpoint, task.name)
    if out is not None:
        check_writable(out)  # before the evaluation, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = load_policy(args.checkpoint)
    samplers = args.sampler
    if args.temperature is not None and not samplers:
        samplers = [getattr(policy, "sampler_name", None)]
    if samplers:
        if policy.policy_type == "consistency":
            raise ValueError(f"--sampler/--temperature do not apply to a consistency student (it samples "
                             f"with its own {policy.method} schedule); evaluate it without them")
        if not hasattr(policy, "with_sampler"):
            raise ValueError(f"--sampler/--temperature apply to diffusion policies, not {policy.policy_type}")
    checkpoint_hash = getattr(policy, "checkpoint_hash", None)
    extra = {"checkpoint": str(args.checkpoint)}
    if checkpoint_hash:
        extra["checkpoint_hash"] = f"sha256:{checkpoint_hash}"
    rows = []
    for spec in samplers or [None]:
        if spec is not None:
            if args.temperature is not None:
                from fastpolicy.diffusion import SamplerSpec

                spec = SamplerSpec.parse(spec, temperature=args.temperature)
        view = policy if spec is None else policy.with_sampler(spec)  # the loaded policy stays as it is
        rows.append(evaluate(view, task, args.episodes, args.seeds, args.latency_steps, **extra))
    print_table(rows, columns=[*COLUMNS, HASH_COLUMN])
    if out is not None:
        print(f"wrote {write_results(out, rows)}")
    return 0
