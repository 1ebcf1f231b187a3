"""``fastpolicy control CKPT --task T --hz 20``: drive a task's env in real time (local or remote policy).

The env stands in for the robot: each tick reads its observation, takes the action due now (or the
fallback when the chunk is late) and steps it. Prints the loop's deadline accounting as JSON.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastpolicy.serve.cli import add_graph_arguments, add_token_arguments


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "control",
        help="run a fixed-rate control loop on a task (local or remote policy)",
        description=__doc__,
    )
    p.add_argument(
        "checkpoint", nargs="?", default=None, help="checkpoint path for a local policy (omit with --server)"
    )
    p.add_argument("--task", required=True, help="task card name (list them: fastpolicy tasks)")
    p.add_argument("--hz", type=float, default=20.0, help="control rate")
    p.add_argument("--server", default=None, help="ws://host:port of a `fastpolicy serve` (instead of CKPT)")
    add_token_arguments(p, "server token")
    add_graph_arguments(p)
    p.add_argument("--connect-timeout-s", type=float, default=5.0,
                   help="give up on an unreachable --server after this long")
    p.add_argument("--steps", type=int, default=400, help="control ticks to run")
    p.add_argument(
        "--fallback",
        choices=["hold", "safe"],
        default="hold",
        help="late chunk: hold the last action, or apply --safe-action",
    )
    p.add_argument("--safe-action", type=float, nargs="+", default=None, help="safe action (default zeros)")
    p.add_argument("--low-watermark", type=int, default=2, help="prefetch when this few actions remain")
    p.add_argument("--blend-steps", type=int, default=0, help="blend this many overlapping actions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (local policy)")
    p.add_argument("--json-out", default=None, help="also write the summary to this JSON file")
    p.set_defaults(func=_control)


def _check_args(args: argparse.Namespace) -> None:
    if not args.hz > 0:
        raise ValueError(f"--hz must be > 0 (control ticks per second), got {args.hz}")
    if args.steps < 1:
        raise ValueError(f"--steps must be ≥ 1 (control ticks to run), got {args.steps}")
    if args.low_watermark < 0 or args.blend_steps < 0:
        raise ValueError("--low-watermark and --blend-steps must be ≥ 0")
    if not args.connect_timeout_s > 0:
        raise ValueError(f"--connect-timeout-s must be > 0, got {args.connect_timeout_s}")
    if args.server is not None and not args.server.startswith(("ws://", "wss://")):
        raise ValueError(f"--server {args.server!r}: expected a ws://HOST:PORT or wss://HOST:PORT URL")


def _connect(url: str, token: str | None, timeout_s: float) -> Any:
    """A PolicyClient for ``url``, or one ConnectionError line within ``timeout_s`` when it is unreachable.

    The first connection is tried with a short budget (the client's own reconnect budget is meant for
    a server that went away mid-run); afterwards the client reconnects as usual.
    """
    from websockets.exceptions import InvalidHandshake, WebSocketException

    from fastpolicy.serve.client import AuthenticationError, PolicyClient

    try:
        client = PolicyClient(url, token, connect_timeout_s=min(timeout_s, 5.0),
                              reconnect_timeout_s=timeout_s)
    except AuthenticationError:
        raise ConnectionError(f"{url} refused the token (HTTP 401); check --token-file / "
                              "$FASTPOLICY_TOKEN") from None
    except (OSError, InvalidHandshake, WebSocketException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConnectionError(f"cannot reach the policy server at {url} within {timeout_s:g} s ({reason}); "
                              "is `fastpolicy serve` running there?") from None
    client.backoff = (*client.backoff[:2], 30.0)  # mid-run: the client's usual reconnect budget
    return client


def _control(args: argparse.Namespace) -> int:
    from fastpolicy.utils.atomic import check_writable

    if (args.checkpoint is None) == (args.server is None):
        raise ValueError("give either a checkpoint (local policy) or --server URL (remote policy)")
    _check_args(args)  # before the heavy imports: a typo costs no start-up time
    if args.json_out:
        check_writable(args.json_out)

    import numpy as np
    import torch

    from fastpolicy.control.broker import ActionBroker, LocalChunkSource, RemoteChunkSource
    from fastpolicy.control.loop import ControlLoop
    from fastpolicy.envs.registry import get_task, make_env
    from fastpolicy.serve.cli import resolve_token

    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task(args.task)
    client = None
    if args.server:
        client = _connect(args.server, resolve_token(args), args.connect_timeout_s)
        source: Any = RemoteChunkSource(client)
    else:
        from fastpolicy.serve.cli import load_policy_spec, place_policy

        policy, _, _ = load_policy_spec(args.checkpoint)
        policy = place_policy(policy, args)
        source = LocalChunkSource(policy, 1.0 / args.hz, seed=args.seed)

    env = make_env(task)
    obs, _ = env.reset(seed=args.seed)
    if isinstance(obs, dict):
        raise ValueError(f"task {args.task}: dict observations are not supported by the control loop")
    low, high = env.action_space.low, env.action_space.high
    current = {"obs": np.asarray(obs, np.float32).ravel(), "return": 0.0}
    returns: list[float] = []

    def read_obs() -> np.ndarray:
        return current["obs"]

    def apply_action(action: np.ndarray) -> bool:
        obs, reward, terminated, truncated, _ = env.step(
            np.clip(action, low, high).astype(env.action_space.dtype)
        )
        current["return"] += float(reward)
        if terminated or truncated:
            returns.append(current["return"])
            obs, _ = env.reset()
            current["return"] = 0.0
        current["obs"] = np.asarray(obs, np.float32).ravel()
        return bool(terminated or truncated)

    broker = ActionBroker(source, low_watermark=args.low_watermark, blend_steps=args.blend_steps)
    loop = ControlLoop(
        broker,
        read_obs,
        apply_action,
        hz=args.hz,
        fallback=args.fallback,
        safe_action=None if args.safe_action is None else np.asarray(args.safe_action),
    )
    try:
        stats = loop.run(steps=args.steps)
    finally:
        broker.close()
        env.close()
        if client is not None:
            client.close()
    summary = {
        "task": args.task,
        "source": args.server or args.checkpoint,
        **stats.summary(),
        "episodes": len(returns),
        "returns": returns,
        "broker_errors": broker.errors,
    }
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json_out:
        from fastpolicy.utils.atomic import atomic_file

        with atomic_file(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0
