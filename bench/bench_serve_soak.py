"""Soak test: a fleet at a steady rate against `fastpolicy serve` on 127.0.0.1; server memory growth.

    python bench/bench_serve_soak.py --minutes 10 --sessions 32 --hz 20

The server runs as a subprocess; its resident set size (Linux /proc) is sampled every ``--sample-s``.
Memory growth is measured from the end of a warm-up (first 10% of the run, at least one sample) to the
end, as a percentage of the warm-up RSS, alongside the fit slope (MB per minute) so a leak shows even
when the run is short. Sessions reconnect periodically (``--churn-s``) so per-session state that is not
freed on disconnect would show up as growth too. Bounded: ≤ 256 sessions, ≤ 120 minutes.
Rows go to bench/results/serve_soak.json through ``fastpolicy.evaluation.results``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serve_load as load  # noqa: E402  (sibling script; also puts the repository on sys.path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--policy", default="builtin-mlp", help="builtin-mlp or a checkpoint path")
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--hz", type=float, default=20.0)
    p.add_argument("--replan", choices=["every", "chunk"], default="every")
    p.add_argument(
        "--churn-s", type=float, default=60.0, help="each robot reconnects after this many seconds"
    )
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--server-threads", type=int, default=1)
    p.add_argument("--builtin-hidden", type=int, default=256)
    p.add_argument("--builtin-nfe", type=int, default=2)
    p.add_argument("--out", default=str(load.ROOT / "bench" / "results" / "serve_soak.json"))
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 120:
        p.error("--minutes must be in (0, 120]")
    if not 1 <= args.sessions <= load.MAX_SESSIONS:
        p.error(f"--sessions must be in [1, {load.MAX_SESSIONS}]")
    return args


async def soak(
    server: load.ServerProcess, args: argparse.Namespace
) -> tuple[list[load.RobotStats], list, float]:
    duration = args.minutes * 60
    stats = [load.RobotStats() for _ in range(args.sessions)]
    samples: list[tuple[float, int]] = []
    start = time.monotonic()

    async def sampler() -> None:
        while time.monotonic() - start < duration:
            samples.append((time.monotonic() - start, server.rss_bytes()))
            await asyncio.sleep(args.sample_s)
        samples.append((time.monotonic() - start, server.rss_bytes()))

    async def robot(i: int) -> None:
        # Reconnect every churn_s: a new server session each time.
        while (left := duration - (time.monotonic() - start)) > 0.5:
            await load.robot_rate(server.url, i, args.hz, min(args.churn_s, left), args.replan, 2, stats[i])

    await asyncio.gather(sampler(), *[robot(i) for i in range(args.sessions)])
    return stats, samples, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    from fastpolicy.evaluation.results import make_row, write_results

    args = parse_args(argv)
    server = load.ServerProcess(
        args.policy,
        args.max_batch,
        args.max_wait_ms,
        args.hz,
        args.server_threads,
        args.builtin_hidden,
        args.builtin_nfe,
    )
    try:
        stats, samples, elapsed = asyncio.run(soak(server, args))
    finally:
        code = server.stop()
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples], dtype=np.float64) / 2**20
    warm = max(1, int(np.ceil(0.1 * len(rss))))
    base = float(np.median(rss[:warm]))
    growth_pct = 100.0 * (rss[-1] - base) / base
    tail = slice(warm - 1, None)
    slope = float(np.polyfit(t[tail] / 60, rss[tail], 1)[0]) if len(rss[tail]) >= 2 else 0.0
    summary = load.summarize(stats, elapsed)
    row = make_row(
        "serve-soak",
        f"{Path(args.policy).name}/max_batch={args.max_batch}",
        latency_ms_p50=summary["rtt_ms_p50"],
        latency_ms_p99=summary["rtt_ms_p99"],
        nfe_per_step_mean=summary["nfe_per_chunk"],
        minutes=args.minutes,
        sessions=args.sessions,
        hz=args.hz,
        replan=args.replan,
        churn_s=args.churn_s,
        rss_mb_start=base,
        rss_mb_end=float(rss[-1]),
        rss_mb_max=float(rss.max()),
        rss_growth_pct=growth_pct,
        rss_slope_mb_per_min=slope,
        rss_samples=[[round(float(a), 1), round(float(b), 2)] for a, b in zip(t, rss)],
        server_exit_code=code,
        **summary,
    )
    write_results(args.out, [row])
    print(
        json.dumps(
            {
                k: row[k]
                for k in (
                    "minutes",
                    "sessions",
                    "requests",
                    "rtt_ms_p50",
                    "rtt_ms_p99",
                    "deadline_miss_ticks",
                    "errors",
                    "rss_mb_start",
                    "rss_mb_end",
                    "rss_growth_pct",
                    "rss_slope_mb_per_min",
                    "server_exit_code",
                )
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
