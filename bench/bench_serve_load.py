"""Load test: N simulated robots at f Hz against a `fastpolicy serve` on 127.0.0.1, batched vs unbatched.

    python bench/bench_serve_load.py --sessions 16 64 --hz 20 --duration-s 20

For each session count it starts the server twice as a subprocess (``--max-batch B`` and ``--max-batch 1``)
and runs two workloads from one asyncio process:

* ``rate``: every robot ticks at ``hz`` on its own phase, takes the action due at each tick from a
  latency-compensating ``ChunkQueue`` and asks for a new chunk whenever none is in flight (``--replan
  every``, the worst case: one request per tick, as a streaming policy does) or when the queue runs low
  (``--replan chunk``). Reports round trip p50/p99, ticks without a due action (deadline misses), replies
  slower than one period (late replies), throughput, server queue/inference time and batch sizes.
* ``saturate``: every robot sends its next request as soon as the previous reply arrives; the
  throughput ceiling, which is where micro-batching pays (reported as the batched/unbatched ratio).

Traffic goes to 127.0.0.1 only; session count (≤ 256) and duration (≤ 120 s per run) are bounded.
Rows go to bench/results/serve_load.json through ``fastpolicy.evaluation.results``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout without installing
    sys.path.insert(0, str(ROOT))
TOKEN = "bench-token"
MAX_SESSIONS, MAX_DURATION_S = 256, 120.0


@dataclass
class Args:
    policy: str = "builtin-mlp"
    """``builtin-mlp`` or a checkpoint path (loaded with fastpolicy.policies.checkpoint.load_policy)"""
    sessions: list[int] = field(default_factory=lambda: [16, 64])
    """simulated robots per run"""
    hz: float = 20.0
    """control rate of every robot"""
    duration_s: float = 20.0
    """length of each rate run (saturation runs take half)"""
    max_batch: int = 64
    """micro-batch limit of the batched server (the unbatched one uses 1)"""
    max_wait_ms: float = 2.0
    replan: list[str] = field(default_factory=lambda: ["every", "chunk"])
    """``every``: request at every tick (worst case); ``chunk``: when ≤ low_watermark actions remain"""
    low_watermark: int = 2
    server_threads: int = 1
    """torch threads of the server process (the client process uses the other core)"""
    builtin_hidden: int = 256
    builtin_nfe: int = 2
    out: str = str(ROOT / "bench" / "results" / "serve_load.json")
    modes: list[str] = field(default_factory=lambda: ["rate", "saturate"])


def parse_args(argv: list[str] | None = None) -> Args:
    d = Args()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default=d.policy)
    p.add_argument("--sessions", type=int, nargs="+", default=d.sessions)
    p.add_argument("--hz", type=float, default=d.hz)
    p.add_argument("--duration-s", type=float, default=d.duration_s)
    p.add_argument("--max-batch", type=int, default=d.max_batch)
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    p.add_argument("--replan", nargs="+", choices=["every", "chunk"], default=d.replan)
    p.add_argument("--low-watermark", type=int, default=d.low_watermark)
    p.add_argument("--server-threads", type=int, default=d.server_threads)
    p.add_argument("--builtin-hidden", type=int, default=d.builtin_hidden)
    p.add_argument("--builtin-nfe", type=int, default=d.builtin_nfe)
    p.add_argument("--modes", nargs="+", choices=["rate", "saturate"], default=d.modes)
    p.add_argument("--out", default=d.out)
    args = Args(**vars(p.parse_args(argv)))
    if not all(1 <= n <= MAX_SESSIONS for n in args.sessions):
        p.error(f"--sessions must be in [1, {MAX_SESSIONS}]")
    if not 0 < args.duration_s <= MAX_DURATION_S:
        p.error(f"--duration-s must be in (0, {MAX_DURATION_S}]")
    return args


# --------------------------------------------------------------------------- server subprocess


class ServerProcess:
    """`python -m fastpolicy.cli serve POLICY --port 0` on 127.0.0.1; its JSON log tells the port."""

    def __init__(
        self,
        policy: str,
        max_batch: int,
        max_wait_ms: float,
        hz: float,
        threads: int,
        builtin_hidden: int,
        builtin_nfe: int,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "fastpolicy.cli",
            "serve",
            policy,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(max_wait_ms),
            "--hz",
            str(hz),
            "--threads",
            str(threads),
            "--max-sessions",
            str(MAX_SESSIONS),
            "--builtin-hidden",
            str(builtin_hidden),
            "--builtin-nfe",
            str(builtin_nfe),
            *extra_args,  # e.g. --device cuda --cuda-graphs 1,64 (bench/bench_gpu.py)
        ]
        env = {**os.environ, "FASTPOLICY_TOKEN": TOKEN}
        self.proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        self.events: deque[dict] = deque(maxlen=1000)
        self.port: int | None = None
        self._ready = threading.Event()
        # Drain stderr continuously: a full pipe would block the server.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(120) or self.port is None:
            self.stop()
            raise RuntimeError(f"server did not become ready; last log lines: {list(self.events)[-5:]}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"raw": line.rstrip()}
            self.events.append(event)
            if event.get("event") == "listening":
                self.port = int(event["port"])
            if event.get("event") == "ready":
                self._ready.set()
        self._ready.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        """Resident set size of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: graceful shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


# --------------------------------------------------------------------------- simulated robots


@dataclass
class RobotStats:
    ticks: int = 0
    misses: int = 0
    late_replies: int = 0
    errors: int = 0
    rtt_s: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)
    inference_ms: list[float] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)

    def add_reply(self, rtt: float, reply) -> None:
        self.rtt_s.append(rtt)
        self.queue_ms.append(reply.queue_ms)
        self.inference_ms.append(reply.inference_ms)
        self.batch.append(reply.batch_size)
        self.nfe.append(reply.nfe)


def _obs(rng: np.random.Generator, t: float, dim: int) -> np.ndarray:
    return (np.sin(t + np.arange(dim)) + 0.01 * rng.standard_normal(dim)).astype(np.float32)


async def robot_rate(
    url: str, index: int, hz: float, duration_s: float, replan: str, low_watermark: int, stats: RobotStats
) -> None:
    """One robot at ``hz``: a fixed-period loop that never waits on inference."""
    from fastpolicy.control.broker import Chunk, ChunkQueue
    from fastpolicy.serve.client import AsyncPolicyClient

    rng = np.random.default_rng(index)
    client = await AsyncPolicyClient.open(url, TOKEN, reply_timeout_s=10)
    meta = client.metadata
    period = 1.0 / hz
    queue = ChunkQueue(period)
    history: deque[np.ndarray] = deque(maxlen=meta.obs_horizon)
    watermark = meta.action_horizon if replan == "every" else low_watermark
    inflight: asyncio.Task | None = None

    async def request(window: np.ndarray, t: float) -> None:
        sent = time.monotonic()
        try:
            reply = await client.infer(window, client_time=t)
        except Exception:  # noqa: BLE001 - counted; the robot keeps ticking
            stats.errors += 1
            return
        now = time.monotonic()
        stats.add_reply(now - sent, reply)
        if now - t > period:
            stats.late_replies += 1
        queue.merge(Chunk(reply.actions, reply.target_times, reply.nfe, t), now)

    try:
        # Prime (as ControlLoop.prime does), then start the clock on a random phase.
        t = time.monotonic()
        history.append(_obs(rng, t, meta.obs_schema[0]["shape"][0]))
        await request(np.stack(history), t)
        await asyncio.sleep(rng.uniform(0, period))
        t0 = time.monotonic()
        k = 0
        while True:
            deadline = t0 + k * period
            if deadline - t0 > duration_s:
                break
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            history.append(_obs(rng, deadline, meta.obs_schema[0]["shape"][0]))
            if queue.pop(deadline) is None:
                stats.misses += 1
            stats.ticks += 1
            if queue.remaining(deadline) <= watermark and (inflight is None or inflight.done()):
                inflight = asyncio.create_task(request(np.stack(history), deadline))
            k += 1
        if inflight is not None:
            await inflight
    finally:
        await client.close()


async def robot_saturate(url: str, index: int, duration_s: float, stats: RobotStats) -> None:
    """Back-to-back requests: measures the server's throughput ceiling."""
    from fastpolicy.serve.client import AsyncPolicyClient

    rng = np.random.default_rng(index)
    client = await AsyncPolicyClient.open(url, TOKEN, reply_timeout_s=30)
    dim = client.metadata.obs_schema[0]["shape"][0]
    try:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            sent = time.monotonic()
            try:
                reply = await client.infer(_obs(rng, sent, dim))
            except Exception:  # noqa: BLE001
                stats.errors += 1
                continue
            stats.add_reply(time.monotonic() - sent, reply)
    finally:
        await client.close()


async def run_fleet(
    url: str, n: int, mode: str, args: Args, replan: str = "every"
) -> tuple[list[RobotStats], float]:
    stats = [RobotStats() for _ in range(n)]
    duration = args.duration_s if mode == "rate" else args.duration_s / 2
    start = time.monotonic()
    if mode == "rate":
        coros = [
            robot_rate(url, i, args.hz, duration, replan, args.low_watermark, stats[i]) for i in range(n)
        ]
    else:
        coros = [robot_saturate(url, i, duration, stats[i]) for i in range(n)]
    await asyncio.wait_for(asyncio.gather(*coros), duration + 120)
    return stats, time.monotonic() - start


def summarize(stats: list[RobotStats], elapsed: float) -> dict:
    rtt = np.concatenate([s.rtt_s for s in stats]) * 1e3 if any(s.rtt_s for s in stats) else np.zeros(0)
    cat = lambda name: np.concatenate([getattr(s, name) for s in stats]) if rtt.size else np.zeros(0)  # noqa: E731
    from fastpolicy.evaluation.timing import percentile as pct

    ticks = sum(s.ticks for s in stats)
    misses = sum(s.misses for s in stats)
    queue_ms, inf_ms, batch = cat("queue_ms"), cat("inference_ms"), cat("batch")
    return {
        "requests": int(rtt.size),
        "throughput_rps": rtt.size / elapsed if elapsed else None,
        "rtt_ms_p50": pct(rtt, 50),
        "rtt_ms_p99": pct(rtt, 99),
        "rtt_ms_max": pct(rtt, 100),
        "ticks": ticks,
        "deadline_miss_ticks": misses,
        "miss_rate": misses / ticks if ticks else None,
        "late_replies": sum(s.late_replies for s in stats),
        "errors": sum(s.errors for s in stats),
        "server_queue_ms_p50": pct(queue_ms, 50),
        "server_queue_ms_p99": pct(queue_ms, 99),
        "server_inference_ms_p50": pct(inf_ms, 50),
        "server_inference_ms_p99": pct(inf_ms, 99),
        "batch_size_mean": float(batch.mean()) if batch.size else None,
        "batch_size_max": int(batch.max()) if batch.size else None,
        "nfe_per_chunk": float(cat("nfe").mean()) if rtt.size else None,
    }


def main(argv: list[str] | None = None) -> int:
    from fastpolicy.evaluation.results import make_row, write_results

    args = parse_args(argv)
    rows = []
    for n in args.sessions:
        saturate: dict[int, float] = {}
        for max_batch in (args.max_batch, 1):
            server = ServerProcess(
                args.policy,
                max_batch,
                args.max_wait_ms,
                args.hz,
                args.server_threads,
                args.builtin_hidden,
                args.builtin_nfe,
            )
            workloads = [("rate", r) for r in args.replan if "rate" in args.modes]
            workloads += [("saturate", None)] if "saturate" in args.modes else []
            try:
                for mode, replan in workloads:
                    stats, elapsed = asyncio.run(run_fleet(server.url, n, mode, args, replan or "every"))
                    summary = summarize(stats, elapsed)
                    if mode == "saturate":
                        saturate[max_batch] = summary["throughput_rps"] or 0.0
                    builtin = (
                        {"hidden": args.builtin_hidden, "nfe": args.builtin_nfe}
                        if args.policy == "builtin-mlp"
                        else None
                    )
                    row = make_row(
                        "serve-load",
                        f"{Path(args.policy).name}/max_batch={max_batch}",
                        latency_ms_p50=summary["rtt_ms_p50"],
                        latency_ms_p99=summary["rtt_ms_p99"],
                        nfe_per_step_mean=summary["nfe_per_chunk"],
                        mode=mode,
                        replan=replan,
                        sessions=n,
                        hz=args.hz,
                        duration_s=round(elapsed, 2),
                        max_batch=max_batch,
                        max_wait_ms=args.max_wait_ms,
                        server_threads=args.server_threads,
                        policy=args.policy,
                        builtin=builtin,
                        **summary,
                    )
                    rows.append(row)
                    keys = (
                        "mode",
                        "replan",
                        "sessions",
                        "max_batch",
                        "throughput_rps",
                        "rtt_ms_p50",
                        "rtt_ms_p99",
                    )
                    keys += ("deadline_miss_ticks", "late_replies", "batch_size_mean", "errors")
                    print(json.dumps({k: row[k] for k in keys}), flush=True)
            finally:
                server.stop()
        if args.max_batch in saturate and saturate.get(1):
            ratio = saturate[args.max_batch] / saturate[1]
            for row in rows:
                if row["sessions"] == n and row["mode"] == "saturate" and row["max_batch"] == args.max_batch:
                    row["throughput_vs_unbatched"] = ratio
            print(
                json.dumps({"sessions": n, "saturated_throughput_ratio_batched_vs_unbatched": ratio}),
                flush=True,
            )
    write_results(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
