"""Forward latency of the denoiser backbones (unet-small, unet-base, mlp) at batch 1 and 64.

Measures what one denoiser call (one NFE) costs, the unit every sampler and acceleration is counted
in. Warm runs, median and p99, torch threads recorded; all backbones in one process so ratios are
comparable on a noisy shared machine. Writes bench/results/backbones.json.

    .venv/bin/python bench/bench_backbones.py            # full run (~1 min on 2 cores)
    .venv/bin/python bench/bench_backbones.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastpolicy.evaluation.results import make_row, write_results
from fastpolicy.evaluation.timing import percentile
from fastpolicy.nets import count_parameters, make_backbone
from fastpolicy.utils.args import parse_dataclass_args


@dataclass
class Args:
    backbones: list[str] = field(default_factory=lambda: ["unet-small", "unet-base", "mlp"])
    """backbones to time (names understood by make_backbone)"""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    """batch sizes to time"""
    horizon: int = 16
    """prediction horizon Tp"""
    action_dim: int = 2
    """action dimension (AGV: v, omega)"""
    obs_dim: int = 6
    """observation features per frame; the global condition is obs_horizon * obs_dim"""
    obs_horizon: int = 2
    """observation frames To"""
    runs: int = 30
    """timed warm runs per (backbone, batch); at least 30 for a stable median"""
    warmup: int = 5
    """untimed runs first"""
    max_seconds: float = 25.0
    """stop timing a configuration early after this many seconds (a guard; runs are normally all done)"""
    threads: int = 1
    """torch intra-op threads (1: stable on a shared 2-core machine; 0 keeps torch's default)"""
    seed: int = 0
    """seed for weights and inputs"""
    out: str = "bench/results/backbones.json"
    """where the JSON rows go"""
    quick: bool = False
    """tiny run for smoke tests: batch 1 and 4, 5 runs, no unet-base"""


def parse_args() -> Args:
    args = parse_dataclass_args(Args, __doc__)
    if args.quick:
        args.backbones = [b for b in args.backbones if b != "unet-base"]
        args.batch_sizes, args.runs, args.warmup = [1, 4], 5, 1
    return args


def time_calls(fn, runs: int, warmup: int, max_seconds: float) -> np.ndarray:
    """Milliseconds per call over ``runs`` warm calls (fewer if ``max_seconds`` runs out, never < 5)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for k in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if k >= 4 and time.perf_counter() - start > max_seconds:
            break
    return np.asarray(times)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cond_dim = args.obs_horizon * args.obs_dim
    rows = []
    print(f"torch threads {torch.get_num_threads()}, Tp={args.horizon}, act_dim={args.action_dim}, "
          f"cond={cond_dim}")
    print(f"{'backbone':<12}{'params':>12}{'batch':>7}{'runs':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for name in args.backbones:
        model = make_backbone(name, args.horizon, args.action_dim, cond_dim).eval()
        params = count_parameters(model)
        for batch in args.batch_sizes:
            x = torch.randn(batch, args.horizon, args.action_dim)
            g = torch.randn(batch, cond_dim)
            t = torch.randint(0, 100, (batch,))
            with torch.inference_mode():
                ms = time_calls(lambda m=model, x=x, t=t, g=g: m(x, t, g), args.runs, args.warmup,
                                args.max_seconds)
            p50, p99 = percentile(ms, 50), percentile(ms, 99)
            print(f"{name:<12}{params:>12,}{batch:>7}{len(ms):>6}{p50:>10.3f}{p99:>10.3f}")
            rows.append(make_row("backbone-forward", name, latency_ms_p50=p50, latency_ms_p99=p99,
                                 batch_size=batch, params=params, runs=len(ms), horizon=args.horizon,
                                 action_dim=args.action_dim, global_cond_dim=cond_dim, quick=args.quick))
    path = write_results(Path(args.out), rows)
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
