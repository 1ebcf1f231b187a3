"""fastpolicy.diffusion against diffusers: same tables, timesteps and trajectories (≤ 1e-5 per step)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from fastpolicy.diffusion import (
    SamplerSpec,
    add_noise,
    ddim_ode_step,
    inference_timesteps,
    make_sampler,
    make_schedule,
)

# diffusers' DPM-Solver calls np.array on a tensor in set_timesteps; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_TRAIN = 100
TOL = 1e-5
SCHEDULE = make_schedule(N_TRAIN, "squaredcos_cap_v2")


def reference_scheduler(spec: SamplerSpec):
    """The diffusers scheduler configured like ``spec`` (as Diffusion Policy configures it)."""
    common = dict(num_train_timesteps=N_TRAIN, beta_schedule="squaredcos_cap_v2",
                  prediction_type=spec.prediction_type, timestep_spacing=spec.timestep_spacing,
                  steps_offset=spec.steps_offset)
    if spec.kind == "ddpm":
        ref = DDPMScheduler(clip_sample=spec.clip_sample, clip_sample_range=spec.clip_sample_range,
                            variance_type="fixed_small", **common)
    elif spec.kind == "ddim":
        ref = DDIMScheduler(clip_sample=spec.clip_sample, clip_sample_range=spec.clip_sample_range,
                            set_alpha_to_one=spec.set_alpha_to_one, **common)
    else:
        ref = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=spec.solver_order,
                                          **common)
    ref.set_timesteps(spec.steps)
    return ref


def fake_model(prediction_type: str, dim: int = 3, seed: int = 0):
    """A fixed deterministic "denoiser" of (x, t): affine in x plus a t-dependent bias.

    For epsilon it mimics an ideal model's scale (eps ≈ sqrt(1 - abar) x + sqrt(abar) · ...), so x0
    predictions stay O(1) even at t=99 where sqrt(abar) ~ 1e-3; a raw random map there gives
    |x0| ~ 1e4 and the float32 comparison would measure round-off of huge numbers, not the math.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g) * 0.3
    c = torch.randn(dim, generator=g) * 0.5
    sa, s1a = SCHEDULE.sqrt_alphas_cumprod, SCHEDULE.sqrt_one_minus_alphas_cumprod

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = sa[t].view(-1, 1, 1)
        b = s1a[t].view(-1, 1, 1)
        mix = x @ w + (t.float() / N_TRAIN).view(-1, 1, 1) * c
        if prediction_type == "epsilon":
            return b * x + a * torch.tanh(mix)
        if prediction_type == "v_prediction":
            return 0.3 * x + 0.8 * torch.tanh(mix)
        return a * x + 0.8 * torch.tanh(mix)
    return fn


# ---- schedule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear"])
def test_schedule_tables_equal_diffusers(beta_schedule):
    ours = make_schedule(N_TRAIN, beta_schedule, beta_start=1e-4, beta_end=0.02)
    ref = DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule=beta_schedule, beta_start=1e-4,
                        beta_end=0.02)
    assert torch.equal(ours.betas, ref.betas)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert ours.betas.dtype == torch.float32
    assert float(ours.betas.max()) <= float(torch.tensor(0.999))  # the cap, in float32
    assert torch.equal(ours.sqrt_alphas_cumprod, ref.alphas_cumprod ** 0.5)


def test_make_schedule_rejects_unknown():
    with pytest.raises(ValueError, match="unknown beta_schedule"):
        make_schedule(10, "cosine")


def test_add_noise_matches_diffusers_and_per_position():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 16, 2, generator=g), torch.randn(5, 16, 2, generator=g)
    t = torch.tensor([0, 10, 50, 98, 99])
    ref = DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="squaredcos_cap_v2")
    ref = ref.add_noise(x0, noise, t)
    ours = add_noise(SCHEDULE, x0, noise, t)
    assert torch.equal(ours, ref)
    per_position = add_noise(SCHEDULE, x0, noise, t[:, None].expand(5, 16))
    assert torch.equal(per_position, ours)
    # a per-position level really is applied per position
    levels = torch.randint(0, N_TRAIN, (5, 16), generator=g)
    mixed = add_noise(SCHEDULE, x0, noise, levels)
    for j in (0, 7, 15):
        assert torch.equal(mixed[:, j], add_noise(SCHEDULE, x0[:, j], noise[:, j], levels[:, j]))
    with pytest.raises(ValueError, match="do not index"):
        add_noise(SCHEDULE, x0, noise, torch.zeros(5, 3, dtype=torch.long))


# ---- spec ------------------------------------------------------------------------------------

def test_spec_parse_and_defaults():
    ddpm = SamplerSpec.parse("ddpm:100")
    assert (ddpm.kind, ddpm.steps, ddpm.clip_sample, ddpm.timestep_spacing) == ("ddpm", 100, True, "leading")
    dpm = SamplerSpec.parse(" DPM:5 ")
    assert (dpm.clip_sample, dpm.timestep_spacing, dpm.solver_order) == (False, "linspace", 2)
    # the defaults are diffusers' own defaults
    assert DPMSolverMultistepScheduler().config.timestep_spacing == dpm.timestep_spacing
    assert DDIMScheduler().config.timestep_spacing == "leading"
    assert SamplerSpec.parse("ddim:10", eta=0.5).eta == 0.5
    assert SamplerSpec.parse("ddim:4").name == "ddim:4"


@pytest.mark.parametrize("bad", ["ddim", "ddim:", "ddim:x", "heun:4", "ddim:0", ":10", "ddim:-3", "ddim:1.5"])
def test_spec_parse_rejects_bad_strings(bad):
    with pytest.raises(ValueError):
        SamplerSpec.parse(bad)


def test_spec_rejects_bad_options():
    with pytest.raises(ValueError, match="prediction_type"):
        SamplerSpec("ddim", 10, prediction_type="v")
    with pytest.raises(ValueError, match="temperature"):
        SamplerSpec("ddpm", 10, temperature=-0.5)
    with pytest.raises(ValueError, match="eta applies to ddim"):
        SamplerSpec("ddpm", 10, eta=1.0)
    with pytest.raises(ValueError, match="timestep_spacing"):
        SamplerSpec("ddim", 10, timestep_spacing="even")
    with pytest.raises(ValueError, match="exceed"):
        make_sampler(SCHEDULE, "ddim:101")


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "dpm"])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 3, 7, 10, 100])
def test_timesteps_equal_diffusers(kind, spacing, steps):
    spec = SamplerSpec(kind, steps, timestep_spacing=spacing)
    ref = reference_scheduler(spec)
    assert inference_timesteps(N_TRAIN, spec).tolist() == ref.timesteps.tolist()


# ---- full loops vs diffusers -----------------------------------------------------------------

LOOPS = ["ddpm:100", "ddpm:10", "ddim:10", "ddim:4", "dpm:5", "dpm:10", "dpm:20"]


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("name", LOOPS + ["ddim:10,spacing=trailing", "ddpm:10,spacing=linspace",
                                          "dpm:10,spacing=leading"])
def test_step_matches_diffusers_every_step(name, prediction_type):
    spec = SamplerSpec.parse(name, prediction_type=prediction_type)
    # the arithmetic is compared wherever diffusers starts, so the start-level guard is off here
    sampler, ref = make_sampler(SCHEDULE, spec, guard=False), reference_scheduler(spec)
    assert torch.equal(sampler.timesteps, ref.timesteps)
    model = fake_model(prediction_type)
    x_T = torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(1))
    g_ours, g_ref = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    x, x_ref, denoised = x_T.clone(), x_T.clone(), None
    for i, t in enumerate(sampler.timesteps):
        tb = t.expand(4)
        out, out_ref = model(x, tb), model(x_ref, tb)
        # same noise stream: diffusers draws only on its stochastic rows, so do we
        noise = sampler.draw_noise(x, g_ours) if sampler.needs_noise[i] else None
        x, denoised = sampler.step(i, x, out, noise=noise, prev_output=denoised)
        extra = {"generator": g_ref} if spec.kind == "ddpm" else {}
        res = ref.step(out_ref, t, x_ref, **extra)
        x_ref = res.prev_sample
        assert (x - x_ref).abs().max().item() <= TOL, f"{name} step {i} (t={int(t)})"
        if spec.kind != "dpm":
            assert (denoised - res.pred_original_sample).abs().max().item() <= TOL
        assert x.abs().max() < 50  # the comparison is on O(1) numbers, not round-off of huge ones
    # sample() runs the same loop with the same generator stream
    x0, nfe = sampler.sample(model, x_T, generator=torch.Generator().manual_seed(2))
    assert nfe == spec.steps
    assert (x0 - x_ref).abs().max().item() <= TOL


def test_ddim_eta_and_alpha_to_one_match_diffusers():
    for spec in (SamplerSpec("ddim", 10, eta=0.7), SamplerSpec("ddim", 5, set_alpha_to_one=False),
                 SamplerSpec("ddim", 10, timestep_spacing="trailing", clip_sample=False)):
        sampler, ref = make_sampler(SCHEDULE, spec, guard=False), reference_scheduler(spec)
        model = fake_model("epsilon")
        gen = torch.Generator().manual_seed(5)
        x = x_ref = torch.randn(3, 8, 3, generator=gen)
        for i, t in enumerate(sampler.timesteps):
            out = model(x, t.expand(3))
            noise = torch.randn(x.shape, generator=gen) if sampler.needs_noise[i] else None
            x, _ = sampler.step(i, x, out, noise=noise)
            out_ref = model(x_ref, t.expand(3))
            x_ref = ref.step(out_ref, t, x_ref, eta=spec.eta, variance_noise=noise).prev_sample
            assert (x - x_ref).abs().max().item() <= TOL, (spec, i)


def test_stochastic_and_second_order_steps_demand_their_inputs():
    x = torch.randn(2, 4, 3)
    ddpm = make_sampler(SCHEDULE, "ddpm:10")
    with pytest.raises(ValueError, match="pass noise"):
        ddpm.step(0, x, x)
    ddpm.step(ddpm.num_steps - 1, x, x)          # t = 0 adds no noise, none needed
    dpm = make_sampler(SCHEDULE, SamplerSpec("dpm", 5, prediction_type="sample"))
    dpm.step(0, x, x)                            # first row is first order
    with pytest.raises(ValueError, match="prev_output"):
        dpm.step(1, x, x)
    assert dpm.needs_prev_output == (False, True, True, True, False)
    ddim = make_sampler(SCHEDULE, "ddim:10")
    assert not any(ddim.needs_noise)


def test_dpm_solver_order_one_equals_ddim_without_clipping():
    # DPM-Solver++ order 1 is DDIM (in sigma parameterisation) on the same timesteps
    dpm = make_sampler(SCHEDULE, SamplerSpec("dpm", 6, solver_order=1), guard=False)
    model = fake_model("epsilon")
    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    ts = dpm.timesteps.tolist() + [-1]
    for i in range(dpm.num_steps):
        out = model(x, dpm.timesteps[i].expand(2))
        x, _ = dpm.step(i, x, out)
        y = ddim_ode_step(SCHEDULE, y, model(y, dpm.timesteps[i].expand(2)), torch.full((2,), ts[i]),
                          torch.full((2,), ts[i + 1]))
    assert (x - y).abs().max().item() <= 1e-4


# ---- ode_step ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_ode_step_matches_one_ddim_step(prediction_type):
    spec = SamplerSpec("ddim", 10, prediction_type=prediction_type)
    sampler, ref = make_sampler(SCHEDULE, spec), reference_scheduler(spec)
    model = fake_model(prediction_type)
    x = torch.randn(3, 16, 3, generator=torch.Generator().manual_seed(4))
    for i, t in enumerate(ref.timesteps):
        out = model(x, t.expand(3))
        expected = ref.step(out, t, x, eta=0.0).prev_sample
        t_to = int(t) - N_TRAIN // spec.steps
        got = sampler.ode_step(x, out, t.expand(3), torch.full((3,), t_to))
        assert (got - expected).abs().max().item() <= TOL
        assert torch.equal(got, sampler.step(i, x, out)[0])
        # per position (B, T) with every position at the same level: same result
        got_pp = sampler.ode_step(x, out, t.expand(3, 16), torch.full((3, 16), t_to))
        assert torch.equal(got_pp, got)


def test_ode_step_per_position_levels_and_clean_end():
    sampler = make_sampler(SCHEDULE, SamplerSpec("ddim", 10, clip_sample=False))
    x, out = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    t_from = torch.tensor([[99, 70, 40, 10], [60, 50, 5, 0]])
    t_to = torch.tensor([[89, 60, 30, -1], [50, 40, -1, -1]])
    got = sampler.ode_step(x, out, t_from, t_to)
    for b in range(2):
        for j in range(4):
            one = sampler.ode_step(x[b:b + 1, j], out[b:b + 1, j], t_from[b:b + 1, j], t_to[b:b + 1, j])
            assert torch.allclose(got[b, j], one[0], atol=1e-6)
    # t_to = -1 is the clean end: with alpha_prod 1 the step returns the x0 prediction itself
    a = SCHEDULE.alphas_cumprod[t_from[1, 3]]
    x0 = (x[1, 3] - (1 - a).sqrt() * out[1, 3]) / a.sqrt()
    assert torch.allclose(got[1, 3], x0, atol=1e-5)


# ---- loop plumbing -----------------------------------------------------------------------------

def test_sample_passes_cond_and_moves_device():
    sampler = make_sampler(SCHEDULE, SamplerSpec("dpm", 5, prediction_type="v_prediction"), device="cpu")
    seen = []

    def model(x, t, cond):
        seen.append((tuple(t.shape), t.dtype, cond))
        return torch.zeros_like(x)
    x0, nfe = sampler.sample(model, torch.randn(2, 4, 3), cond="obs")
    assert nfe == 5 and len(seen) == 5
    assert all(s == ((2,), torch.int64, "obs") for s in seen)
    assert [int(t) for t in sampler.timesteps] == [99, 79, 59, 40, 20]
    moved = sampler.to("cpu")
    assert moved is not sampler and torch.equal(moved.table("c_d0"), sampler.table("c_d0"))
    x = torch.randn(2, 4, 3)
    assert torch.equal(moved.step(0, x, x)[0], sampler.step(0, x, x)[0])


def test_benchmark_script_smoke(tmp_path, run_script):
    # CleanRL-style smoke test: the real script on a tiny budget (in-process: no second torch import)
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "bench_sampling_overhead.py"
    out = tmp_path / "so.json"
    run_script(script, "--quick", "--out", out)
    rows = json.loads(out.read_text())
    kinds = {r["method"] for r in rows}
    assert {"mlp/ddim:10", "mlp/dpm:5", "ddim-step"} <= kinds
    assert all(r["torch_threads"] == 1 for r in rows)


# ---- parametrisations, temperature, spacing from the spec, the start-level guard ----------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_training_target_round_trip(prediction_type):
    # x_t from (x0, noise); the training target fed back through predict_x0_eps recovers both
    from diffusers import DDPMScheduler

    from fastpolicy.diffusion import training_target
    from fastpolicy.diffusion.samplers import predict_x0_eps
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 8, 2, generator=g), torch.randn(6, 8, 2, generator=g)
    t = torch.tensor([0, 5, 30, 60, 90, 98])
    xt = add_noise(SCHEDULE, x0, noise, t)
    target = training_target(SCHEDULE, x0, noise, t, prediction_type)
    if prediction_type == "v_prediction":    # diffusers' own velocity
        ref = DDPMScheduler(num_train_timesteps=N_TRAIN, beta_schedule="squaredcos_cap_v2")
        assert torch.allclose(target, ref.get_velocity(x0, noise, t), atol=1e-6)
    a = SCHEDULE.sqrt_alphas_cumprod[t].view(-1, 1, 1)
    s = SCHEDULE.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1)
    x0_hat, eps_hat = predict_x0_eps(xt, target, a, s, prediction_type)
    # epsilon divides by sqrt(abar): its recovery is only as exact as the amplification allows
    tol = 5e-3 if prediction_type == "epsilon" else 1e-4
    assert torch.allclose(x0_hat, x0, atol=tol) and torch.allclose(eps_hat, noise, atol=tol)


def oracle(prediction_type: str, x0_star: torch.Tensor):
    """The exact denoiser of a one-point data distribution at x0_star, in each parametrisation."""
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.sqrt_alphas_cumprod[t].view(-1, 1, 1)
        s = SCHEDULE.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1)
        eps = (x - a * x0_star) / s
        return {"epsilon": eps, "sample": x0_star.expand_as(x),
                "v_prediction": a * eps - s * x0_star}[prediction_type]
    return fn


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("name", ["ddpm:100", "ddim:10", "ddim:10,spacing=trailing", "dpm:10,spacing=leading",
                                  "ddpm:20,temperature=0.5"])
def test_noise_to_sample_recovers_the_data_point(name, prediction_type):
    x0_star = torch.tensor([0.3, -0.7]).view(1, 1, 2)
    spec = SamplerSpec.parse(name, prediction_type=prediction_type)
    sampler = make_sampler(SCHEDULE, spec, guard=False)
    x_T = sampler.initial_noise((4, 8, 2), torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x0, nfe = sampler.sample(oracle(prediction_type, x0_star), x_T, generator=gen)
    assert nfe == spec.steps
    assert torch.allclose(x0, x0_star.expand_as(x0), atol=2e-3), (x0 - x0_star).abs().max()


def test_spec_options_from_text_round_trip():
    spec = SamplerSpec.parse("ddim:10,spacing=trailing,temperature=0.5")
    assert (spec.timestep_spacing, spec.temperature) == ("trailing", 0.5)
    assert spec.name == "ddim:10,spacing=trailing,temperature=0.5"
    assert SamplerSpec.parse(spec.name) == spec
    assert spec.slug == "ddim10-trailing-temp0.5"
    assert SamplerSpec.parse("ddpm:100,clip=false").clip_sample is False
    assert SamplerSpec.parse("dpm:5,order=1").solver_order == 1
    assert SamplerSpec.parse("ddim:10").name == "ddim:10" and SamplerSpec.parse("ddim:10").slug == "ddim10"
    assert SamplerSpec.parse("dpm:10").slug == "dpmsolver10"  # method ids spell the solver out
    # keyword overrides win over the text
    assert SamplerSpec.parse("ddpm:10,temperature=0.5", temperature=0.0).temperature == 0.0
    for bad in ("ddim:10,spacing", "ddim:10,speed=3", "ddim:10,temperature=hot", "ddim:10,clip=maybe"):
        with pytest.raises(ValueError, match="sampler spec"):
            SamplerSpec.parse(bad)


def test_temperature_scales_noise_and_zero_makes_ddpm_deterministic():
    model = fake_model("sample")
    hot = make_sampler(SCHEDULE, SamplerSpec.parse("ddpm:20", prediction_type="sample"))
    half = make_sampler(SCHEDULE, SamplerSpec.parse("ddpm:20,temperature=0.5", prediction_type="sample"))
    assert torch.allclose(half.table("std"), 0.5 * hot.table("std"))
    g = torch.Generator().manual_seed(3)
    assert torch.allclose(half.initial_noise((2, 4, 3), torch.Generator().manual_seed(3)),
                          0.5 * hot.initial_noise((2, 4, 3), g))
    cold = make_sampler(SCHEDULE, SamplerSpec.parse("ddpm:20,temperature=0", prediction_type="sample"))
    outs = []
    for seed in (0, 1, 2):
        gen = torch.Generator().manual_seed(seed)
        outs.append(cold.sample(model, cold.initial_noise((2, 4, 3), gen), generator=gen)[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    gen = torch.Generator().manual_seed(0)
    warm = hot.sample(model, hot.initial_noise((2, 4, 3), gen), generator=gen)[0]
    assert not torch.allclose(warm, outs[0])


def test_guard_refuses_unbounded_starts_and_warns_under_clipping():
    from fastpolicy.diffusion import clean_estimate_amplification
    assert clean_estimate_amplification(SCHEDULE, 99, "epsilon") > 1000
    assert clean_estimate_amplification(SCHEDULE, 90, "epsilon") < 10
    assert clean_estimate_amplification(SCHEDULE, 99, "v_prediction") <= 1.0
    assert clean_estimate_amplification(SCHEDULE, 99, "sample") == 1.0
    # DPM-Solver++ runs unclipped from t = 99 by default: an ε model there is refused
    with pytest.raises(ValueError, match="2029x"):
        make_sampler(SCHEDULE, SamplerSpec.parse("dpm:5"))
    # a one-call sampler from t = 99 outputs its (clipped) estimate: refused even with clipping
    with pytest.raises(ValueError, match="amplifies"):
        make_sampler(SCHEDULE, SamplerSpec.parse("ddim:1,spacing=trailing"))
    # clipped multi-step: allowed, loudly
    with pytest.warns(UserWarning, match="only see the clip"):
        make_sampler(SCHEDULE, SamplerSpec.parse("ddpm:100"))
    # the bounded parametrisations start anywhere; leading DDIM-10 starts at t = 90 (7x) for ε
    for ptype in ("sample", "v_prediction"):
        make_sampler(SCHEDULE, SamplerSpec.parse("dpm:5", prediction_type=ptype))
        make_sampler(SCHEDULE, SamplerSpec.parse("ddim:1,spacing=trailing", prediction_type=ptype))
    make_sampler(SCHEDULE, SamplerSpec.parse("ddim:10"))
