"""GPU check of the real-time path: per-step latency eager vs CUDA graph (+ bf16), and a fleet server.

    bash bench/gpu_check.sh             # on a GPU machine: ≤ 5 min, rows → bench/results/gpu_*.json
    python bench/bench_gpu.py --quick   # CPU dry run of the same logic (tiny nets, graphs in dry-run mode)

What it measures (the real-time path's acceptance checks on a GPU):

* ``gpu_latency.json``: the wall time of one planning call (``predict_chunk``: a replanning control step,
  noise drawn, actions back on the host) — median, p99 and the sample count (≥ 200) — at batch 1 and 64
  for DDPM-100, DDIM-10, the 1- and 2-step consistency students and streaming + consistency, on the
  unet-small and unet-base backbones, each eager, as a CUDA graph, and as a CUDA graph under bf16
  autocast. bf16 rows at batch 1 also carry ``compare_precision`` (actions vs fp32 eager, same noise).
* ``gpu_serve.json``: ``fastpolicy serve`` (a subprocess, 1-step student, unet-small, CUDA graphs at
  the batch sizes below) under 256 simulated robots at 50 Hz, each replanning when two actions remain:
  round trip p50/p99, ticks without a due action (deadline misses), server inference time, batch sizes.

Weights are random-init (latency does not depend on them; every row says ``weights: random-init``).
A job that would run past ``--budget-s`` is written as a skipped row, never silently dropped; the
acceptance-critical jobs run first. Without CUDA (and without ``--quick``) the script exits 2 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:  # run as a script from a checkout without installing
        sys.path.insert(0, str(path))

METHODS = ("student-1call", "teacher-ddpm100", "teacher-ddim10", "student-2calls", "streaming-student-1call")
VARIANTS = ("eager", "graph", "graph-bf16")


@dataclass
class Args:
    quick: bool = False
    """CPU dry run: tiny nets, few samples, graphs in dry-run mode, rows to a temp dir"""
    out_dir: str | None = None
    """where gpu_latency.json and gpu_serve.json go (default bench/results; --quick: a temp dir)"""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    backbones: list[str] = field(default_factory=lambda: ["unet-small", "unet-base"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    samples: int = 200
    """timed calls per row (after the warm-up calls, which include the capture)"""
    warmup: int = 5
    obs_dim: int = 20
    action_dim: int = 7
    server: bool = True
    server_sessions: int = 256
    server_hz: float = 50.0
    server_duration_s: float = 15.0
    server_graph_sizes: str = "1,8,32,64,128,256"
    budget_s: float = 270.0
    """jobs that would start after this many seconds are written as skipped rows"""
    precision_calls: int = 4


def parse_args(argv: list[str] | None = None) -> Args:
    from fastpolicy.evaluation.method_names import canonical_method

    d = Args()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--methods", nargs="+", type=canonical_method, choices=METHODS, default=d.methods,
                   help="method ids (older ids such as cm-1step are accepted)")
    p.add_argument("--backbones", nargs="+", default=d.backbones)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=d.batch_sizes)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=d.variants)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--no-server", dest="server", action="store_false")
    p.add_argument("--server-sessions", type=int, default=None)
    p.add_argument("--server-hz", type=float, default=d.server_hz)
    p.add_argument("--server-duration-s", type=float, default=None)
    p.add_argument("--budget-s", type=float, default=d.budget_s)
    ns = p.parse_args(argv)
    args = Args(quick=ns.quick, out_dir=ns.out_dir, methods=ns.methods, backbones=ns.backbones,
                batch_sizes=ns.batch_sizes, variants=ns.variants, server=ns.server, server_hz=ns.server_hz,
                budget_s=ns.budget_s)
    if args.quick:  # tiny sizes: the logic runs, the numbers mean nothing
        args.samples, args.warmup, args.server_sessions, args.server_duration_s = 3, 2, 4, 2.0
        args.server_hz, args.server_graph_sizes, args.precision_calls = 10.0, "1,4", 2
        args.batch_sizes = [min(b, 4) for b in args.batch_sizes]
        args.backbones = args.backbones[:1]
    for name in ("samples", "warmup", "server_sessions", "server_duration_s"):
        if getattr(ns, name) is not None:
            setattr(args, name, getattr(ns, name))
    return args


# --------------------------------------------------------------------------- policies


def build_policy(method: str, backbone: str, args: Args, device: str):
    """A random-init policy of ``method`` on ``backbone`` (``--quick``: a tiny U-Net)."""
    from fastpolicy.policies.consistency import ConsistencyPolicy, ConsistencyPolicyConfig
    from fastpolicy.policies.diffusion_policy import DiffusionPolicy

    cfg: dict[str, Any] = {"obs_dim": args.obs_dim, "action_dim": args.action_dim, "backbone": backbone}
    if args.quick:
        cfg["backbone_kwargs"] = {"down_dims": [16, 32]}
    if method.startswith("teacher-"):
        sampler = {"teacher-ddpm100": "ddpm:100", "teacher-ddim10": "ddim:10"}[method]
        policy = DiffusionPolicy.from_config({**cfg, "sampler": sampler})
    else:
        fields = {f.name for f in dataclasses.fields(ConsistencyPolicyConfig)}
        if method == "streaming-student-1call":
            # To=2, Tp=16, Ta=4: h = 3 chunks, one segment each (grid from the SDP stream when the config
            # names its teacher's sampler, else the default grid)
            cfg.update(streaming=True, segments=3, action_horizon=4)
            if "teacher_sampler" in fields:
                cfg["teacher_sampler"] = "ode:6"
        else:
            cfg["steps"] = {"student-1call": 1, "student-2calls": 2}[method]
        policy = ConsistencyPolicy.from_config(cfg)
    return policy.to(device).eval()


def time_calls(policy, batch: int, args: Args, seed: int = 0) -> tuple[list[float], list[int]]:
    """Warm-up calls, then ``samples`` timed ``predict_chunk`` calls carrying the state (streaming)."""
    import torch

    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((batch, policy.obs_horizon, policy.obs_dim)).astype(np.float32)
    generator = torch.Generator().manual_seed(seed)
    state = policy.init_state(batch)
    lat, nfe = [], []
    for i in range(args.warmup + args.samples):
        t0 = time.perf_counter()
        result = policy.predict_chunk(obs, state, generator)
        dt = time.perf_counter() - t0
        state = result.state
        if i >= args.warmup:
            lat.append(dt)
            nfe.append(int(result.nfe))
    return lat, nfe


def latency_row(method: str, backbone: str, batch: int, variant: str, args: Args, device: str,
                cache: dict) -> dict[str, Any]:
    from fastpolicy.evaluation.results import make_row
    from fastpolicy.evaluation.timing import percentile_fields
    from fastpolicy.policies.cuda_graphs import GraphedPolicy, compare_precision

    key = (method, backbone)
    if key not in cache:
        cache.clear()  # one model on the device at a time
        cache[key] = build_policy(method, backbone, args, device)
    base = cache[key]
    extra: dict[str, Any] = {}
    if variant == "eager":
        policy = base
    else:
        dtype = "bf16" if variant.endswith("bf16") else None
        policy = GraphedPolicy(base, (batch,), dtype, dry_run=args.quick)
    lat, nfe = time_calls(policy, batch, args)
    if variant != "eager":
        extra["graph_status"] = policy.status()
        if variant == "graph-bf16" and batch == 1:
            rep = compare_precision(base, "bf16", batch_size=1, calls=args.precision_calls,
                                    dry_run=args.quick)
            extra.update(bf16_rel_rms=rep.rel_rms, bf16_max_abs_diff=rep.max_abs_diff, bf16_ok=rep.ok,
                         bf16_tolerance=rep.tolerance)
    ms = np.asarray(lat) * 1e3
    return make_row(
        "gpu-latency", method, steps=None, nfe_per_step_mean=float(np.mean(nfe)),
        nfe_per_step_max=int(max(nfe)),
        **percentile_fields(ms),
        latency_ms_mean=float(ms.mean()), samples=len(lat), backbone=backbone, batch_size=batch,
        variant=variant, weights="random-init", status="ok", dry_run=args.quick,
        per_step="one predict_chunk call (a replanning step): noise drawn, actions back on the host",
        **extra,
    )


def skipped_row(task: str, method: str, reason: str, args: Args, **fields: Any) -> dict[str, Any]:
    from fastpolicy.evaluation.results import make_row

    return make_row(task, method, status=reason, weights="random-init", dry_run=args.quick, **fields)


# --------------------------------------------------------------------------- server


def serve_row(args: Args, device: str) -> dict[str, Any]:
    """256 robots at 50 Hz against ``fastpolicy serve --cuda-graphs`` (1-step student, unet-small)."""
    if str(ROOT / "bench") not in sys.path:  # imported as a module (the smoke test), not run as a script
        sys.path.insert(0, str(ROOT / "bench"))
    import bench_serve_load as load

    from fastpolicy.evaluation.results import make_row
    from fastpolicy.utils.checkpoint import save_checkpoint

    policy = build_policy("student-1call", args.backbones[0], args, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "student-1call", policy_type=policy.policy_type,
                               policy_config=policy.config_dict(), model_state=policy.state_dict(),
                               normalizer_state=policy.normalizer_state(), step=0)
        largest = max(int(s) for s in args.server_graph_sizes.split(","))
        server = load.ServerProcess(str(ckpt), max_batch=largest,
                                    max_wait_ms=2.0, hz=args.server_hz, threads=4, builtin_hidden=256,
                                    builtin_nfe=1,
                                    extra_args=("--device", device, "--cuda-graphs", args.server_graph_sizes))
        try:
            fleet_args = load.Args(hz=args.server_hz, duration_s=args.server_duration_s, low_watermark=2)
            stats, elapsed = asyncio.run(load.run_fleet(server.url, args.server_sessions, "rate", fleet_args,
                                                        replan="chunk"))
            graph_log = [e for e in server.events if e.get("event") == "cuda_graphs"]
        finally:
            server.stop()
    summary = load.summarize(stats, elapsed)
    return make_row(
        "gpu-serve", "student-1call", steps=None, nfe_per_step_mean=summary["nfe_per_chunk"],
        latency_ms_p50=summary["rtt_ms_p50"], latency_ms_p99=summary["rtt_ms_p99"],
        sessions=args.server_sessions, hz=args.server_hz, duration_s=args.server_duration_s,
        backbone=args.backbones[0], graph_batch_sizes=args.server_graph_sizes,
        replan="chunk (≤ 2 actions left)",
        graph_status=graph_log[-1] if graph_log else None, weights="random-init", status="ok",
        dry_run=args.quick, latency="round trip of one request (client send → actions received)", **summary,
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    import torch

    from fastpolicy.evaluation.results import write_results

    args = parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or pass --quick for a CPU dry run", file=sys.stderr)
        return 2
    device = "cpu" if args.quick else "cuda"
    out_dir = Path(args.out_dir) if args.out_dir else (
        Path(tempfile.mkdtemp(prefix="bench_gpu_")) if args.quick else ROOT / "bench" / "results")
    start = time.monotonic()
    jobs = [(m, b, n, v) for m in args.methods for b in args.backbones for n in args.batch_sizes
            for v in args.variants]
    # acceptance-critical first: the 1-step student and DDPM-100 on unet-small at batch 1, then the server
    critical = {("student-1call", "unet-small", 1), ("teacher-ddpm100", "unet-small", 1)}
    jobs.sort(key=lambda j: (0 if j[:3] in critical else 1))
    n_critical = sum(1 for j in jobs if j[:3] in critical)
    rows: list[dict[str, Any]] = []
    serve_rows: list[dict[str, Any]] = []
    errors = 0
    cache: dict = {}

    def run_server() -> None:
        nonlocal errors
        if time.monotonic() - start > args.budget_s:
            serve_rows.append(skipped_row("gpu-serve", "student-1call", "skipped: time budget", args))
            return
        try:
            serve_rows.append(serve_row(args, device))
        except Exception as exc:  # noqa: BLE001 - written as a row; the exit code says it failed
            errors += 1
            traceback.print_exc()
            reason = f"error: {type(exc).__name__}: {exc}"
            serve_rows.append(skipped_row("gpu-serve", "student-1call", reason, args))
        print(f"[{time.monotonic() - start:6.1f}s] server: {serve_rows[-1].get('status')}", flush=True)

    for i, (method, backbone, batch, variant) in enumerate(jobs):
        if i == n_critical and args.server:
            run_server()
        fields = {"backbone": backbone, "batch_size": batch, "variant": variant}
        if time.monotonic() - start > args.budget_s:
            rows.append(skipped_row("gpu-latency", method, "skipped: time budget", args, **fields))
            continue
        try:
            rows.append(latency_row(method, backbone, batch, variant, args, device, cache))
        except Exception as exc:  # noqa: BLE001
            errors += 1
            traceback.print_exc()
            reason = f"error: {type(exc).__name__}: {exc}"
            rows.append(skipped_row("gpu-latency", method, reason, args, **fields))
        r = rows[-1]
        print(f"[{time.monotonic() - start:6.1f}s] {method:10s} {backbone:10s} b{batch:<3d} {variant:10s} "
              f"p50 {r.get('latency_ms_p50')} ms  p99 {r.get('latency_ms_p99')} ms  {r['status']}",
              flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.server and not serve_rows:
        run_server()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(out_dir / "gpu_latency.json", rows)
    if serve_rows:
        write_results(out_dir / "gpu_serve.json", serve_rows)
    serve_note = f" and {out_dir / 'gpu_serve.json'}" if serve_rows else ""
    print(f"wrote {out_dir / 'gpu_latency.json'}{serve_note} in {time.monotonic() - start:.0f} s; "
          f"{errors} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
