"""What a sampling loop costs beyond its denoiser calls, and our step vs diffusers' step.

For each backbone (unet-small, mlp) and sampler (ddim:10, ddpm:100, dpm:5): the time of a full
``Sampler.sample`` loop against the same number of bare forward calls; the difference is the
sampler's overhead (tables, noise draws, the update math). Then the per-call cost of one DDIM step —
fastpolicy's table-driven ``step`` against diffusers' ``DDIMScheduler.step`` — and, per kind, a whole
loop of steps without a model (diffusers including the ``set_timesteps`` Diffusion Policy calls per
inference). Loop and bare runs are interleaved so drift on the shared machine hits both alike.
Writes bench/results/sampling_overhead.json.

    .venv/bin/python bench/bench_sampling_overhead.py            # full run (~1 min on 2 cores)
    .venv/bin/python bench/bench_sampling_overhead.py --quick    # smoke run (seconds)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastpolicy.diffusion import SamplerSpec, make_sampler, make_schedule
from fastpolicy.evaluation.results import make_row, write_results
from fastpolicy.evaluation.timing import percentile
from fastpolicy.nets import make_backbone
from fastpolicy.utils.args import parse_dataclass_args


@dataclass
class Args:
    backbones: list[str] = field(default_factory=lambda: ["unet-small", "mlp"])
    """backbones whose sampling loops are timed"""
    samplers: list[str] = field(default_factory=lambda: ["ddim:10", "ddpm:100", "dpm:5"])
    """sampler specs (kind:steps)"""
    batch_size: int = 1
    """batch for the loop timings (1 = one robot, the latency case)"""
    step_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    """batches for the per-step comparison against diffusers"""
    horizon: int = 16
    """prediction horizon Tp"""
    action_dim: int = 2
    """action dimension"""
    cond_dim: int = 12
    """global condition size (2 frames x 6 obs features)"""
    loop_runs: int = 15
    """interleaved (loop, bare) pairs per configuration, bounded by max_seconds"""
    step_runs: int = 2000
    """calls per step timing"""
    max_seconds: float = 12.0
    """time budget per loop configuration (unet-small ddpm:100 gets ~7 pairs)"""
    threads: int = 1
    """torch intra-op threads (1: stable on a shared 2-core machine; 0 keeps torch's default)"""
    seed: int = 0
    """seed for weights and inputs"""
    out: str = "bench/results/sampling_overhead.json"
    """where the JSON rows go"""
    quick: bool = False
    """tiny run for smoke tests: mlp only, ddim:10 and dpm:5, few runs"""


def parse_args() -> Args:
    args = parse_dataclass_args(Args, __doc__)
    if args.quick:
        args.backbones, args.samplers = ["mlp"], ["ddim:10", "dpm:5"]
        args.loop_runs, args.step_runs, args.step_batch_sizes, args.max_seconds = 3, 200, [1], 2.0
    return args


def interleaved_ms(fn_a, fn_b, runs: int, max_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Milliseconds of alternating calls to ``fn_a`` and ``fn_b`` after one warm-up of each."""
    fn_a(), fn_b()
    a, b = [], []
    start = time.perf_counter()
    for k in range(runs):
        for fn, acc in ((fn_a, a), (fn_b, b)):
            t0 = time.perf_counter()
            fn()
            acc.append((time.perf_counter() - t0) * 1e3)
        if k >= 2 and time.perf_counter() - start > max_seconds:
            break
    return np.asarray(a), np.asarray(b)


def per_call_us(fn, calls: int) -> float:
    """Median over 5 blocks of the mean µs per call in a block."""
    for _ in range(min(50, calls)):
        fn()
    blocks = []
    per_block = max(1, calls // 5)
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(per_block):
            fn()
        blocks.append((time.perf_counter() - t0) * 1e6 / per_block)
    return float(np.median(blocks))


def diffusers_scheduler(spec: SamplerSpec):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    kw = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
              prediction_type=spec.prediction_type)
    if spec.kind == "ddpm":
        return DDPMScheduler(clip_sample=True, **kw)
    if spec.kind == "ddim":
        return DDIMScheduler(clip_sample=True, **kw)
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **kw)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    schedule = make_schedule(100, "squaredcos_cap_v2")
    rows = []
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, Tp={args.horizon}")
    print(f"{'backbone':<12}{'sampler':<10}{'nfe':>5}{'loop ms':>10}{'bare ms':>10}{'overhead':>10}"
          f"{'ovh(min)':>10}{'pairs':>7}")
    for name in args.backbones:
        model = make_backbone(name, args.horizon, args.action_dim, args.cond_dim).eval()
        g = torch.randn(args.batch_size, args.cond_dim)
        x_T = torch.randn(args.batch_size, args.horizon, args.action_dim)
        for text in args.samplers:
            sampler = make_sampler(schedule, SamplerSpec.parse(text, prediction_type="sample"))
            ts = [t.expand(args.batch_size) for t in sampler.timesteps]
            gen = torch.Generator().manual_seed(0)

            def loop(sampler=sampler, model=model, g=g, x_T=x_T, gen=gen):
                return sampler.sample(model, x_T, generator=gen, cond=g)

            def bare(model=model, g=g, x_T=x_T, ts=ts):
                for t in ts:
                    model(x_T, t, g)

            with torch.inference_mode():
                loop_ms, bare_ms = interleaved_ms(loop, bare, args.loop_runs, args.max_seconds)
            lp, bp = percentile(loop_ms, 50), percentile(bare_ms, 50)
            overhead = 100.0 * (lp - bp) / bp
            # the minimum is the least contended run of each: a steadier estimate on a shared machine
            overhead_min = 100.0 * (loop_ms.min() - bare_ms.min()) / bare_ms.min()
            print(f"{name:<12}{text:<10}{sampler.num_steps:>5}{lp:>10.2f}{bp:>10.2f}{overhead:>9.1f}%"
                  f"{overhead_min:>9.1f}%{len(loop_ms):>7}")
            rows.append(make_row("sampling-overhead", f"{name}/{text}", latency_ms_p50=lp,
                                 latency_ms_p99=percentile(loop_ms, 99),
                                 nfe_per_step_mean=sampler.num_steps, nfe_per_step_max=sampler.num_steps,
                                 bare_forward_ms_p50=bp, overhead_pct=overhead,
                                 loop_ms_min=float(loop_ms.min()), bare_forward_ms_min=float(bare_ms.min()),
                                 overhead_pct_min=float(overhead_min), batch_size=args.batch_size,
                                 pairs=len(loop_ms), quick=args.quick))

    # one DDIM step per call, and whole step loops without a model, vs diffusers
    print(f"\n{'step':<26}{'batch':>6}{'fastpolicy us':>15}{'diffusers us':>14}{'ratio':>8}")
    for batch in args.step_batch_sizes:
        x = torch.randn(batch, args.horizon, args.action_dim)
        eps = torch.randn_like(x) * 0.5
        ddim = SamplerSpec.parse("ddim:10", prediction_type="sample")
        ours, ref = make_sampler(schedule, ddim), diffusers_scheduler(ddim)
        ref.set_timesteps(10)
        t_ref = ref.timesteps[3]
        with torch.inference_mode():
            us_ours = per_call_us(lambda o=ours, x=x, e=eps: o.step(3, x, e), args.step_runs)
            us_ref = per_call_us(lambda r=ref, x=x, e=eps, t=t_ref: r.step(e, t, x), args.step_runs)
        print(f"{'ddim step (one call)':<26}{batch:>6}{us_ours:>15.1f}{us_ref:>14.1f}"
              f"{us_ref / us_ours:>7.1f}x")
        rows.append(make_row("scheduler-step", "ddim-step", batch_size=batch, fastpolicy_us=us_ours,
                             diffusers_us=us_ref, speedup=us_ref / us_ours, quick=args.quick))
        for text in args.samplers:
            spec = SamplerSpec.parse(text, prediction_type="sample")
            ours, ref = make_sampler(schedule, spec), diffusers_scheduler(spec)
            gen_ours, gen_ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)

            def our_steps(o=ours, x=x, e=eps, gen=gen_ours):
                y, d = x, None
                for i in range(o.num_steps):
                    noise = o.draw_noise(y, gen) if o.needs_noise[i] else None
                    y, d = o.step(i, y, e, noise=noise, prev_output=d)

            def ref_steps(r=ref, x=x, e=eps, k=spec.steps, gen=gen_ref, ddpm=spec.kind == "ddpm"):
                r.set_timesteps(k)
                y = x
                for t in r.timesteps:
                    y = (r.step(e, t, y, generator=gen) if ddpm else r.step(e, t, y)).prev_sample

            calls = max(5, args.step_runs // (10 * spec.steps))
            with torch.inference_mode():
                us_ours = per_call_us(our_steps, calls) / spec.steps
                us_ref = per_call_us(ref_steps, calls) / spec.steps
            print(f"{text + ' loop, per step':<26}{batch:>6}{us_ours:>15.1f}{us_ref:>14.1f}"
                  f"{us_ref / us_ours:>7.1f}x")
            rows.append(make_row("scheduler-step", f"{text}-loop", batch_size=batch, fastpolicy_us=us_ours,
                                 diffusers_us=us_ref, speedup=us_ref / us_ours, quick=args.quick))
    path = write_results(Path(args.out), rows)
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
