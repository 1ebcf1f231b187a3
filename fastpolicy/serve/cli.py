"""``fastpolicy serve CKPT``: serve a checkpoint (or the built-in test MLP) to a fleet over websockets."""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import Any

BUILTIN = "builtin-mlp"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a policy over websockets (msgpack, micro-batched)", description=__doc__
    )
    p.add_argument("checkpoint", help=f"checkpoint path, or {BUILTIN!r} for the built-in test policy")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, logged at start)")
    add_token_arguments(p, "shared secret clients send as 'Authorization: Bearer …'")
    p.add_argument("--max-batch", type=int, default=32, help="largest micro-batch (1 disables batching)")
    p.add_argument(
        "--max-wait-ms", type=float, default=2.0, help="longest a request waits for a batch to fill"
    )
    p.add_argument("--max-frame-bytes", type=int, default=1 << 20, help="protocol frame limit")
    p.add_argument("--idle-timeout-s", type=float, default=300.0, help="close sessions idle this long")
    p.add_argument("--max-sessions", type=int, default=256)
    p.add_argument(
        "--hz",
        type=float,
        default=None,
        help="control rate for target timestamps (default: the policy's, else 20)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for inference")
    p.add_argument("--builtin-hidden", type=int, default=256, help=f"{BUILTIN}: hidden width")
    p.add_argument("--builtin-nfe", type=int, default=2, help=f"{BUILTIN}: MLP calls per chunk")
    p.add_argument("--log-level", default="INFO")
    add_graph_arguments(p)
    p.set_defaults(func=_serve)


TOKEN_ENV = "FASTPOLICY_TOKEN"


def add_graph_arguments(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--cuda-graphs`` and ``--graph-dtype`` (serve and control share them)."""
    p.add_argument("--device", default="cpu", help="torch device of the policy (cpu, cuda, cuda:1)")
    p.add_argument("--cuda-graphs", default=None, metavar="SIZES",
                   help="capture the planning call as CUDA graphs at these batch sizes, e.g. 1,64 "
                        "(eager on CPU, with the reason logged)")
    p.add_argument("--graph-dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the captured call (check it: bench/bench_gpu.py)")


def place_policy(policy: Any, args: argparse.Namespace) -> Any:
    """Move the policy to ``--device`` and wrap it in CUDA graphs when ``--cuda-graphs`` is given."""
    import torch

    device = getattr(args, "device", "cpu") or "cpu"
    if device != "cpu":
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if isinstance(policy, torch.nn.Module):
            policy = policy.to(device)
    if getattr(args, "cuda_graphs", None):
        from fastpolicy.policies.cuda_graphs import graphed, parse_batch_sizes

        policy = graphed(policy, parse_batch_sizes(args.cuda_graphs), args.graph_dtype)
    return policy


def add_token_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """``--token-file`` (preferred), ``$FASTPOLICY_TOKEN``, or ``--token`` (visible in the process list)."""
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"{what}: read it from this file (first line). Default: ${TOKEN_ENV}")
    p.add_argument("--token", default=None,
                   help=f"{what} on the command line — visible to every user in the process list (ps); "
                        f"prefer --token-file or ${TOKEN_ENV}")


def resolve_token(args: argparse.Namespace) -> str | None:
    """The token from --token-file, --token (with a warning) or $FASTPOLICY_TOKEN; None when none is set."""
    import sys

    if args.token_file is not None and args.token is not None:
        raise ValueError("give the token once: --token-file or --token, not both")
    if args.token_file is not None:
        try:
            lines = open(args.token_file, encoding="utf-8").read().splitlines()
        except OSError as exc:
            raise ValueError(f"--token-file {args.token_file}: cannot read it ({exc.strerror})") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
        return token
    if args.token is not None:
        print(f"fastpolicy: warning: --token is visible to every user of this machine in the process list; "
              f"use --token-file PATH or ${TOKEN_ENV} instead", file=sys.stderr)
        return args.token or None
    return os.environ.get(TOKEN_ENV) or None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_policy_spec(spec: str, builtin_kwargs: dict[str, Any] | None = None) -> tuple[Any, str, str]:
    """``builtin-mlp`` or a checkpoint path → (policy, model_id, model_hash)."""
    from fastpolicy.policies.builtin import builtin_policy
    from fastpolicy.serve.server import checkpoint_fingerprint, policy_fingerprint

    if spec == BUILTIN:
        policy = builtin_policy(spec, **(builtin_kwargs or {}))
        return policy, BUILTIN, policy_fingerprint(policy)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"checkpoint {spec!r} not found (or pass {BUILTIN!r})")
    from fastpolicy.policies.checkpoint import load_policy

    policy = load_policy(spec)
    return policy, os.path.basename(os.path.normpath(spec)), checkpoint_fingerprint(spec)


def _serve(args: argparse.Namespace) -> int:
    import torch

    from fastpolicy.serve.server import ServerConfig, configure_logging, run_server

    token = resolve_token(args)
    if token is None and not _is_loopback(args.host):
        raise ValueError(f"refusing to serve on {args.host} without a token "
                         f"(--token-file PATH or ${TOKEN_ENV})")
    if args.max_batch < 1:
        raise ValueError("--max-batch must be ≥ 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_wait_ms", "idle_timeout_s"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.max_frame_bytes < 1024 or args.max_sessions < 1:
        raise ValueError("--max-frame-bytes must be ≥ 1024 and --max-sessions ≥ 1")
    if args.hz is not None and not args.hz > 0:
        raise ValueError(f"--hz must be > 0, got {args.hz}")
    if args.threads:
        torch.set_num_threads(args.threads)
    policy, model_id, model_hash = load_policy_spec(
        args.checkpoint, {"hidden": args.builtin_hidden, "nfe": args.builtin_nfe}
    )
    configure_logging(args.log_level.upper())
    policy = place_policy(policy, args)
    period = 1.0 / args.hz if args.hz else float(getattr(policy, "control_period_s", None) or 1 / 20)
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=token,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_frame_bytes=args.max_frame_bytes,
        idle_timeout_s=args.idle_timeout_s,
        max_sessions=args.max_sessions,
        control_period_s=period,
        model_id=model_id,
        model_hash=model_hash,
    )
    run_server(policy, config)
    return 0
