"""Noise schedules as precomputed tensor tables and pure-tensor samplers (DDPM, DDIM, DPM-Solver++).

diffusers' schedulers are the reference these are tested against; training and sampling read the same
tables. Typical use::

    schedule = make_schedule(100, "squaredcos_cap_v2")
    sampler = make_sampler(schedule, SamplerSpec.parse("ddim:10"))
    x_T = sampler.initial_noise((B, T, D))          # × the spec's temperature
    x0, nfe = sampler.sample(lambda x, t: model(x, t, obs_features), x_T)
"""

from fastpolicy.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    Sampler,
    SamplerSpec,
    check_start_level,
    clean_estimate_amplification,
    ddim_ode_step,
    inference_timesteps,
    make_sampler,
)
from fastpolicy.diffusion.schedule import NoiseSchedule, add_noise, make_schedule, training_target

__all__ = ["DDIMSampler", "DDPMSampler", "DPMSolverSampler", "NoiseSchedule", "Sampler", "SamplerSpec",
           "add_noise", "check_start_level", "clean_estimate_amplification", "ddim_ode_step",
           "inference_timesteps", "make_sampler", "make_schedule", "training_target"]
