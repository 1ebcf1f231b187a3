"""Noise schedules as precomputed tensor tables and pure-tensor samplers (DDPM, DDIM, DPM-Solver++).

diffusers' schedulers are the reference these are tested against; training and sampling read the same
tables. Typical use::

    schedule = make_schedule(100, "squaredcos_cap_v2")
    sampler = make_sampler(schedule, SamplerSpec.parse("ddim:10"))
    x0, nfe = sampler.sample(lambda x, t: model(x, t, obs_features), torch.randn(B, T, D))
"""

from fastpolicy.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    Sampler,
    SamplerSpec,
    ddim_ode_step,
    inference_timesteps,
    make_sampler,
)
from fastpolicy.diffusion.schedule import NoiseSchedule, add_noise, make_schedule

__all__ = ["DDIMSampler", "DDPMSampler", "DPMSolverSampler", "NoiseSchedule", "Sampler", "SamplerSpec",
           "add_noise", "ddim_ode_step", "inference_timesteps", "make_sampler", "make_schedule"]
