"""Pure-tensor diffusion samplers (DDPM, DDIM, DPM-Solver++(2M)) over precomputed coefficient tables.

diffusers' schedulers are the numerical reference (tests check every step against ``DDPMScheduler``,
``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` to 1e-5), but they are stateful and index their
tables with Python scalars on every call, which costs 100-250 µs per step on CPU and cannot be captured
in a CUDA graph. Here a :class:`Sampler` computes, once, every coefficient its K steps need as ``(K,)``
tensors; :meth:`Sampler.step` is a pure function of ``(i, x, model_output, noise, prev_output)`` that
reads row ``i`` of those tables with tensor indexing. Which code path a step takes depends only on ``i``
and the spec (never on tensor values), so a whole loop has fixed shapes and a fixed op sequence.

Step contract (all kinds)::

    x_prev, denoised = sampler.step(i, x, model_output, noise=None, prev_output=None)

``denoised`` is the clean-sample prediction x0 of step i (after clipping, if configured) — diffusers'
``pred_original_sample``. It is also the only state DPM-Solver++(2M) carries: pass the ``denoised`` of
step i-1 as ``prev_output`` to step i (step 0 ignores it). DDPM (and DDIM with eta > 0) need ``noise``
(a standard normal tensor shaped like ``x``) on rows where ``sampler.needs_noise[i]``; passing None there
raises, so a stochastic sampler never silently turns deterministic.

Conventions copied from diffusers (so a model trained with diffusers samples identically here):
Parametrisations (``prediction_type``, diffusers' names): ``epsilon`` (the noise), ``sample`` (the clean
x0) and ``v_prediction`` (v = sqrt(abar) eps - sqrt(1 - abar) x0). They differ in how a network error
reaches the clean estimate: ``sample`` passes it through, ``v_prediction`` scales it by
sqrt(1 - abar) <= 1, ``epsilon`` *amplifies* it by sqrt(1 - abar) / sqrt(abar) — about 2000x at t = 99
of the 100-step squared-cosine schedule. :func:`clean_estimate_amplification` measures that factor and
:func:`check_start_level` refuses a sampler whose output would carry it unbounded.

``temperature`` scales the initial noise (:meth:`Sampler.initial_noise`) and every stochastic step's
noise (it is baked into the ``std`` tables), as CleanDiffuser's ``temperature``; 0 makes DDPM
deterministic, 1 is the plain sampler.

DDPM uses "fixed_small" variance (the posterior variance, clamped at 1e-20) and adds no noise at t=0;
DDIM steps from t to ``t - num_train_timesteps // K`` whatever the spacing, and below 0 it uses
``final_alpha_cumprod`` (1.0 with ``set_alpha_to_one``, else alphas_cumprod[0]); DPM-Solver++ works on
sigmas, goes to sigma 0 at the end and takes first-order steps on its first and last rows.

Length: three samplers on one table-building base and the spec parser they share; each sampler is ~50
lines, tested against its diffusers reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fastpolicy.diffusion.schedule import NoiseSchedule, broadcast_to_sample

SAMPLER_KINDS: tuple[str, ...] = ("ddpm", "ddim", "dpm")
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample", "v_prediction")
MAX_AMPLIFICATION = 100.0
"""Largest clean-estimate amplification a sampler may start from unclipped (t = 98 of the 100-step
cosine schedule is 64x for epsilon, t = 99 is 2000x)."""
_SPEC_OPTION_NAMES: dict[str, str] = {"spacing": "timestep_spacing", "timestep_spacing": "timestep_spacing",
                                      "temperature": "temperature", "temp": "temperature", "eta": "eta",
                                      "clip": "clip_sample", "clip_sample": "clip_sample",
                                      "order": "solver_order", "solver_order": "solver_order"}
TIMESTEP_SPACINGS: tuple[str, ...] = ("leading", "linspace", "trailing")

ModelFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """Which sampler, how many steps, and the diffusers-equivalent options.

    ``None`` for ``clip_sample`` / ``timestep_spacing`` means "diffusers' default for this kind":
    clipping on for DDPM/DDIM (as Diffusion Policy configures them), off for DPM-Solver (diffusers has
    no clipping there; turning it on clamps the data prediction, a fastpolicy extension); spacing
    "leading" for DDPM/DDIM and "linspace" for DPM-Solver (diffusers 0.42 defaults).
    """

    kind: str
    steps: int
    eta: float = 0.0                      # DDIM only: 0 deterministic, 1 DDPM-like
    clip_sample: bool | None = None
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"      # what the model predicts: the noise or the clean sample
    timestep_spacing: str | None = None
    set_alpha_to_one: bool = True         # DDIM / ode_step: alpha_prod below t=0 is 1 (else abar_0)
    steps_offset: int = 0                 # added to "leading" timesteps, as in diffusers
    solver_order: int = 2                 # DPM-Solver++ only: 1 (= DDIM) or 2 (2M)
    temperature: float = 1.0              # scales the initial noise and every stochastic step's noise

    def __post_init__(self) -> None:
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"unknown sampler kind {self.kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"sampler steps must be a positive int, got {self.steps!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; "
                             f"valid: {', '.join(PREDICTION_TYPES)}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.eta and self.kind != "ddim":
            raise ValueError(f"eta applies to ddim only, got eta={self.eta} for {self.kind}")
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {self.solver_order}")
        if self.clip_sample is None:
            object.__setattr__(self, "clip_sample", self.kind != "dpm")
        if self.timestep_spacing is None:
            object.__setattr__(self, "timestep_spacing", "linspace" if self.kind == "dpm" else "leading")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep_spacing {self.timestep_spacing!r}; "
                             f"valid: {', '.join(TIMESTEP_SPACINGS)}")

    @classmethod
    def parse(cls, text: str, **overrides: Any) -> SamplerSpec:
        """``"ddpm:100"``, ``"ddim:10,spacing=trailing"``, ``"ddpm:100,temperature=0.5"``.

        ``kind:steps`` then optional ``,key=value`` options: ``spacing`` (leading / linspace / trailing),
        ``temperature``, ``eta``, ``clip`` (true / false), ``order`` (DPM-Solver). Keyword ``overrides``
        set any field and win over the text (a policy passes its parametrisation this way).
        """
        head, *options = [part.strip() for part in text.strip().lower().split(",")]
        kind, sep, steps = head.partition(":")
        if not sep or not steps.isdigit():
            raise ValueError(f"sampler spec {text!r} must look like 'kind:steps[,option=value...]' with kind "
                             f"in {'/'.join(SAMPLER_KINDS)}, e.g. 'ddim:10' or 'ddpm:100,temperature=0.5'")
        fields: dict[str, Any] = {}
        for option in options:
            key, eq, value = option.partition("=")
            name = _SPEC_OPTION_NAMES.get(key.strip())
            if not eq or name is None:
                raise ValueError(f"sampler spec {text!r}: option {option!r} must be key=value with key in "
                                 f"{', '.join(sorted(set(_SPEC_OPTION_NAMES)))}")
            fields[name] = _parse_option(name, value.strip(), text)
        fields.update(overrides)
        return cls(kind=kind, steps=int(steps), **fields)

    @property
    def name(self) -> str:
        """Canonical text: ``kind:steps`` plus the options that differ from the kind's defaults.

        Parsing the name gives back the same sampling options (the parametrisation is the model's).
        """
        default = SamplerSpec(self.kind, self.steps)
        parts = [f"{self.kind}:{self.steps}"]
        if self.timestep_spacing != default.timestep_spacing:
            parts.append(f"spacing={self.timestep_spacing}")
        if self.temperature != 1.0:
            parts.append(f"temperature={self.temperature:g}")
        if self.eta:
            parts.append(f"eta={self.eta:g}")
        if self.clip_sample != default.clip_sample:
            parts.append(f"clip={str(self.clip_sample).lower()}")
        if self.solver_order != default.solver_order:
            parts.append(f"order={self.solver_order}")
        return ",".join(parts)

    @property
    def slug(self) -> str:
        """The name as a method-id fragment: ``ddim10``, ``ddpm100-temp0.5``, ``ddim10-trailing``,
        ``dpmsolver10`` (DPM-Solver++ spelled out)."""
        parts = [f"{'dpmsolver' if self.kind == 'dpm' else self.kind}{self.steps}"]
        for option in self.name.split(",")[1:]:
            key, _, value = option.partition("=")
            parts.append({"spacing": value, "temperature": f"temp{value}"}.get(key, f"{key}{value}"))
        return "-".join(parts)


def _parse_option(name: str, value: str, text: str) -> Any:
    try:
        if name == "clip_sample":
            if value not in ("true", "false", "1", "0", "on", "off"):
                raise ValueError(value)
            return value in ("true", "1", "on")
        if name == "solver_order":
            return int(value)
        if name in ("temperature", "eta"):
            return float(value)
        return value
    except ValueError:
        raise ValueError(f"sampler spec {text!r}: bad value {value!r} for {name}") from None


def inference_timesteps(num_train_timesteps: int, spec: SamplerSpec) -> np.ndarray:
    """The K descending int64 timesteps diffusers' ``set_timesteps(K)`` picks for this kind and spacing."""
    n, k, spacing = num_train_timesteps, spec.steps, spec.timestep_spacing
    if k > n:
        raise ValueError(f"{spec.name}: {k} steps exceed the {n} training timesteps")
    if spec.kind == "dpm":
        # DPM-Solver picks K+1 points and drops the last (it steps to sigma 0 instead)
        if spacing == "linspace":
            ts = np.linspace(0, n - 1, k + 1).round()[::-1][:-1]
        elif spacing == "leading":
            ts = (np.arange(0, k + 1) * (n // (k + 1))).round()[::-1][:-1] + spec.steps_offset
        else:
            ts = np.arange(n, 0, -n / k).round() - 1
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, k).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, k) * (n // k)).round()[::-1] + spec.steps_offset
    else:
        ts = np.round(np.arange(n, 0, -n / k)) - 1
    ts = ts.astype(np.int64)
    if ts.max() >= n or ts.min() < 0:
        raise ValueError(f"{spec.name}: timesteps {ts.tolist()} fall outside [0, {n}) (steps_offset?)")
    return ts.copy()


def predict_x0_eps(x: torch.Tensor, model_output: torch.Tensor, sqrt_alpha: torch.Tensor,
                   sqrt_one_minus_alpha: torch.Tensor,
                   prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, eps)`` from a model output, unclipped; coefficients broadcast against ``x``.

    The same formulas as diffusers' schedulers, for the three parametrisations.
    """
    if prediction_type == "epsilon":
        return (x - sqrt_one_minus_alpha * model_output) / sqrt_alpha, model_output
    if prediction_type == "v_prediction":
        return (sqrt_alpha * x - sqrt_one_minus_alpha * model_output,
                sqrt_alpha * model_output + sqrt_one_minus_alpha * x)
    x0 = model_output
    return x0, (x - sqrt_alpha * x0) / sqrt_one_minus_alpha


def clean_estimate_amplification(schedule: NoiseSchedule, timestep: int, prediction_type: str) -> float:
    """How much a unit error of the network output moves the clean estimate x0 at ``timestep``.

    ``epsilon``: sqrt(1 - abar) / sqrt(abar) (unbounded as abar → 0); ``v_prediction``: sqrt(1 - abar)
    (≤ 1); ``sample``: 1.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
    abar = float(schedule.alphas_cumprod[int(timestep)])
    if prediction_type == "epsilon":
        return (1.0 - abar) ** 0.5 / max(abar, 1e-30) ** 0.5
    if prediction_type == "v_prediction":
        return (1.0 - abar) ** 0.5
    return 1.0


def check_start_level(schedule: NoiseSchedule, timestep: int, prediction_type: str, clipped: bool,
                      what: str, one_call: bool = False) -> float:
    """Refuse (ValueError) or warn about starting to denoise where the clean estimate is unbounded.

    Refused: amplification above :data:`MAX_AMPLIFICATION` when nothing clips the estimate, or when a
    single call's estimate *is* the output (``one_call``: a 1-step sampler or student — its output would
    be its clip). Warned: the same level under clipping in a multi-step sampler (the first steps then
    carry only the clip; later steps can recover, as Diffusion Policy's DDPM-100 from t = 99 does).
    Returns the amplification.
    """
    amp = clean_estimate_amplification(schedule, timestep, prediction_type)
    if amp <= MAX_AMPLIFICATION:
        return amp
    msg = (f"{what} starts at t = {int(timestep)}, where a {prediction_type!r} model's clean estimate "
           f"amplifies its error {amp:.0f}x (limit {MAX_AMPLIFICATION:g}x)")
    fix = ("; start lower (timestep spacing 'leading' starts DDIM-10 at t = 90) or use a bounded "
           "parametrisation (prediction_type 'sample' or 'v_prediction')")
    if one_call or not clipped:
        raise ValueError(msg + ("" if clipped else " and nothing clips it") + fix)
    import warnings

    warnings.warn(msg + "; the first steps only see the clip" + fix, UserWarning, stacklevel=3)
    return amp


def ddim_ode_step(schedule: NoiseSchedule, x: torch.Tensor, model_output: torch.Tensor, t_from: torch.Tensor,
                  t_to: torch.Tensor, prediction_type: str = "epsilon", clip_sample: bool = False,
                  clip_sample_range: float = 1.0, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """One deterministic DDIM (eta 0) step from ``t_from`` to ``t_to`` (LongTensors, ``(B,)`` or ``(B, T)``).

    ``t_to = -1`` is the clean end (alpha_prod = ``final_alpha_cumprod``); like diffusers, any negative
    level counts as -1. Levels may differ per sample or per position, which is what consistency
    distillation and streaming diffusion need.
    """
    sqrt_a, sqrt_1ma = ode_tables(schedule, final_alpha_cumprod)
    return _ode_step_from_tables(sqrt_a, sqrt_1ma, x, model_output, t_from, t_to, prediction_type,
                                 clip_sample, clip_sample_range)


def ode_tables(schedule: NoiseSchedule, final_alpha_cumprod: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``sqrt(abar)`` and ``sqrt(1 - abar)`` for levels -1..N-1 (row 0 is the clean end t = -1)."""
    final = torch.tensor([final_alpha_cumprod], dtype=schedule.alphas_cumprod.dtype, device=schedule.device)
    alpha = torch.cat([final, schedule.alphas_cumprod])
    # the same float32 ops diffusers applies to a single alpha_prod, so results agree bit for bit
    return alpha ** 0.5, (1 - alpha) ** 0.5


def _ode_step_from_tables(sqrt_a: torch.Tensor, sqrt_1ma: torch.Tensor, x: torch.Tensor,
                          model_output: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
                          prediction_type: str, clip_sample: bool, clip_sample_range: float) -> torch.Tensor:
    rows_from = t_from.to(sqrt_a.device) + 1                     # +1: row 0 is t = -1
    rows_to = t_to.to(sqrt_a.device).clamp(min=-1) + 1

    def pick(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return broadcast_to_sample(table[rows].to(x.device, x.dtype), x)
    x0, eps = predict_x0_eps(x, model_output, pick(sqrt_a, rows_from), pick(sqrt_1ma, rows_from),
                             prediction_type)
    if clip_sample:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
    return pick(sqrt_a, rows_to) * x0 + pick(sqrt_1ma, rows_to) * eps


class Sampler:
    """A sampling loop as tables: ``timesteps (K,)`` plus per-row coefficient tensors.

    Build with :func:`make_sampler`. Subclasses fill ``_tables`` and implement :meth:`step`.
    """

    kind: ClassVar[str] = ""

    def __init__(self, schedule: NoiseSchedule, spec: SamplerSpec, timesteps: np.ndarray,
                 tables: dict[str, torch.Tensor], needs_noise: tuple[bool, ...],
                 needs_prev_output: tuple[bool, ...]) -> None:
        self.schedule = schedule
        self.spec = spec
        self.timesteps = torch.from_numpy(timesteps).to(schedule.device)
        self.num_steps = len(timesteps)
        self.final_alpha_cumprod = 1.0 if spec.set_alpha_to_one else float(schedule.alphas_cumprod[0])
        self._tables = {k: v.to(device=schedule.device, dtype=torch.float32) for k, v in tables.items()}
        self._index_rows()
        # Static per-row structure (depends on i only): which rows consume noise / the previous output.
        self.needs_noise = needs_noise
        self.needs_prev_output = needs_prev_output

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name}, timesteps={self.timesteps.tolist()})"

    def to(self, device: torch.device | str) -> Sampler:
        """A copy whose tables live on ``device``."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.schedule = self.schedule.to(device)
        other.timesteps = self.timesteps.to(device)
        other._tables = {k: v.to(device) for k, v in self._tables.items()}
        other._index_rows()
        return other

    def _index_rows(self) -> None:
        """Cache, per row i, 0-d views into the tables (and the timestep).

        A step then issues no indexing ops: at ~2 µs per tiny op on CPU, five table lookups would cost
        as much as the update math. The views are tensors on the tables' device, so the math never
        sees a Python scalar and a captured graph reads the same memory.
        """
        self._rows = [{k: v[i] for k, v in self._tables.items()} for i in range(self.num_steps)]
        self._t_rows = [self.timesteps[i] for i in range(self.num_steps)]
        self._ode_sqrt_a, self._ode_sqrt_1ma = ode_tables(self.schedule, self.final_alpha_cumprod)

    @property
    def device(self) -> torch.device:
        return self.timesteps.device

    def table(self, name: str) -> torch.Tensor:
        """A ``(K,)`` coefficient table (read-only by convention), e.g. for inspection or graph capture."""
        return self._tables[name]

    def _check_inputs(self, i: int, noise: torch.Tensor | None, prev_output: torch.Tensor | None) -> None:
        if self.needs_noise[i] and noise is None:
            raise ValueError(f"{self.spec.name} step {i} is stochastic: pass noise "
                             "(standard normal, shaped like x)")
        if self.needs_prev_output[i] and prev_output is None:
            raise ValueError(f"{self.spec.name} step {i} is second order: pass prev_output "
                             "(the denoised tensor returned by step i-1)")

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        if self.spec.clip_sample:
            return x0.clamp(-self.spec.clip_sample_range, self.spec.clip_sample_range)
        return x0

    def step(self, i: int, x: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None = None,
             prev_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``i`` of the loop: ``x`` at ``timesteps[i]`` → ``(x at the next level, denoised x0)``."""
        raise NotImplementedError

    def draw_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal like ``x``, drawn on the generator's device (as diffusers' ``randn_tensor``)."""
        device = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                      ) -> torch.Tensor:
        """x_T: standard normal × ``temperature``, drawn on the generator's device, moved to ``device``."""
        x = torch.randn(shape, generator=generator, dtype=dtype,
                        device=generator.device if generator is not None else "cpu")
        if self.spec.temperature != 1.0:
            x = x * self.spec.temperature
        return x.to(device if device is not None else self.device)

    def sample(self, model_fn: ModelFn, x_T: torch.Tensor, generator: torch.Generator | None = None,
               cond: Any = None) -> tuple[torch.Tensor, int]:
        """Run the K steps from ``x_T``; return ``(x0, nfe)``.

        ``model_fn(x, t)`` — or ``model_fn(x, t, cond)`` when ``cond`` is given — gets ``t`` as a
        ``(B,)`` LongTensor. Noise is drawn from ``generator`` only on stochastic rows, in the order
        diffusers draws it, so the same generator seed gives diffusers' result.
        """
        x, denoised = x_T, None
        batch = x_T.shape[0]
        for i in range(self.num_steps):
            t = self._t_rows[i].expand(batch)
            out = model_fn(x, t) if cond is None else model_fn(x, t, cond)
            noise = self.draw_noise(x, generator) if self.needs_noise[i] else None
            x, denoised = self.step(i, x, out, noise=noise, prev_output=denoised)
        return x, self.num_steps

    def ode_step(self, x: torch.Tensor, model_output: torch.Tensor, t_from: torch.Tensor,
                 t_to: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM step between arbitrary levels; ``t_to = -1`` is the clean end.

        See :func:`ddim_ode_step`. Uses this spec's prediction type, clipping and ``final_alpha_cumprod``.
        """
        spec = self.spec
        return _ode_step_from_tables(self._ode_sqrt_a, self._ode_sqrt_1ma, x, model_output, t_from, t_to,
                                     spec.prediction_type, bool(spec.clip_sample), spec.clip_sample_range)


class DDPMSampler(Sampler):
    """Ancestral DDPM with diffusers' "fixed_small" variance."""

    kind = "ddpm"

    @classmethod
    def build(cls, schedule: NoiseSchedule, spec: SamplerSpec) -> DDPMSampler:
        ts = inference_timesteps(schedule.num_train_timesteps, spec)
        ac = schedule.alphas_cumprod.cpu()
        one = torch.tensor(1.0)
        names = ("sqrt_alpha", "sqrt_one_minus_alpha", "coef_x0", "coef_x", "std")
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        for i, t in enumerate(ts):
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            # same float32 operations, in the same order, as DDPMScheduler.step / _get_variance
            a_t = ac[t]
            a_prev = ac[prev] if prev >= 0 else one
            beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
            cur_alpha = a_t / a_prev
            cur_beta = 1 - cur_alpha
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * cur_beta, min=1e-20)
            rows["sqrt_alpha"].append(a_t ** 0.5)
            rows["sqrt_one_minus_alpha"].append(beta_prod_t ** 0.5)
            rows["coef_x0"].append(a_prev ** 0.5 * cur_beta / beta_prod_t)
            rows["coef_x"].append(cur_alpha ** 0.5 * beta_prod_prev / beta_prod_t)
            rows["std"].append(spec.temperature * variance ** 0.5 if t > 0 else torch.tensor(0.0))
        tables = {k: torch.stack(v) for k, v in rows.items()}
        return cls(schedule, spec, ts, tables, needs_noise=tuple(bool(t > 0) for t in ts),
                   needs_prev_output=(False,) * len(ts))

    def step(self, i: int, x: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None = None,
             prev_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(i, noise, prev_output)
        row = self._rows[i]
        x0, _ = predict_x0_eps(x, model_output, row["sqrt_alpha"], row["sqrt_one_minus_alpha"],
                               self.spec.prediction_type)
        x0 = self._clip(x0)
        x_prev = row["coef_x0"] * x0 + row["coef_x"] * x
        if noise is not None:
            x_prev = x_prev + row["std"] * noise
        return x_prev, x0


class DDIMSampler(Sampler):
    """DDIM; deterministic for eta 0 (then each step equals :meth:`Sampler.ode_step`)."""

    kind = "ddim"

    @classmethod
    def build(cls, schedule: NoiseSchedule, spec: SamplerSpec) -> DDIMSampler:
        ts = inference_timesteps(schedule.num_train_timesteps, spec)
        ac = schedule.alphas_cumprod.cpu()
        final = torch.tensor(1.0) if spec.set_alpha_to_one else ac[0]
        stride = schedule.num_train_timesteps // spec.steps   # diffusers' prev_timestep rule
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("sqrt_alpha", "sqrt_one_minus_alpha",
                                                               "sqrt_alpha_prev", "coef_eps", "std")}
        for t in ts:
            prev = t - stride
            a_t = ac[t]
            a_prev = ac[prev] if prev >= 0 else final
            beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
            variance = (beta_prod_prev / beta_prod_t) * (1 - a_t / a_prev)
            std = spec.eta * variance ** 0.5
            rows["sqrt_alpha"].append(a_t ** 0.5)
            rows["sqrt_one_minus_alpha"].append(beta_prod_t ** 0.5)
            rows["sqrt_alpha_prev"].append(a_prev ** 0.5)
            rows["coef_eps"].append((1 - a_prev - std ** 2) ** 0.5)
            rows["std"].append(spec.temperature * std)
        tables = {k: torch.stack(v) for k, v in rows.items()}
        return cls(schedule, spec, ts, tables, needs_noise=(spec.eta > 0,) * len(ts),
                   needs_prev_output=(False,) * len(ts))

    def step(self, i: int, x: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None = None,
             prev_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(i, noise, prev_output)
        row = self._rows[i]
        # eps is taken before clipping x0, as diffusers does with use_clipped_model_output=False
        x0, eps = predict_x0_eps(x, model_output, row["sqrt_alpha"], row["sqrt_one_minus_alpha"],
                                 self.spec.prediction_type)
        x0 = self._clip(x0)
        x_prev = row["sqrt_alpha_prev"] * x0 + row["coef_eps"] * eps
        if self.needs_noise[i]:
            x_prev = x_prev + row["std"] * noise
        return x_prev, x0


class DPMSolverSampler(Sampler):
    """DPM-Solver++ (data prediction), multistep order 2 ("2M"), midpoint form, ending at sigma 0.

    Row i: ``x_next = c_x[i] * x + c_d0[i] * d + c_d1[i] * (d - d_prev)`` with ``d`` the (clipped)
    denoised of row i and ``d_prev`` the one of row i-1; ``c_d1`` is 0 on first-order rows (the first,
    the last, and all rows when ``solver_order`` is 1).
    """

    kind = "dpm"

    @classmethod
    def build(cls, schedule: NoiseSchedule, spec: SamplerSpec) -> DPMSolverSampler:
        ts = inference_timesteps(schedule.num_train_timesteps, spec)
        ac = schedule.alphas_cumprod.cpu()
        all_sigmas = ((1 - ac) / ac) ** 0.5
        sigmas = torch.cat([all_sigmas[torch.from_numpy(ts)], torch.zeros(1)])  # final sigma 0
        # diffusers converts sigma back to (alpha, sigma) VP coefficients this way (not from ac directly)
        alpha = 1 / ((sigmas ** 2 + 1) ** 0.5)
        sigma = sigmas * alpha
        lam = torch.log(alpha) - torch.log(sigma)      # +inf at the final sigma 0
        k = len(ts)
        c_x, c_d0, c_d1 = torch.zeros(k), torch.zeros(k), torch.zeros(k)
        second = []
        for i in range(k):
            h = lam[i + 1] - lam[i]
            phi = alpha[i + 1] * (torch.exp(-h) - 1.0)
            c_x[i] = sigma[i + 1] / sigma[i]
            c_d0[i] = -phi
            is_second = spec.solver_order == 2 and 0 < i < k - 1
            if is_second:
                r0 = (lam[i] - lam[i - 1]) / h
                c_d1[i] = -0.5 * phi * (1.0 / r0)
            second.append(is_second)
        tables = {"sqrt_alpha": alpha[:-1], "sqrt_one_minus_alpha": sigma[:-1], "c_x": c_x, "c_d0": c_d0,
                  "c_d1": c_d1}
        return cls(schedule, spec, ts, tables, needs_noise=(False,) * k, needs_prev_output=tuple(second))

    def step(self, i: int, x: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor | None = None,
             prev_output: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(i, noise, prev_output)
        row = self._rows[i]
        d, _ = predict_x0_eps(x, model_output, row["sqrt_alpha"], row["sqrt_one_minus_alpha"],
                              self.spec.prediction_type)
        d = self._clip(d)
        x_next = row["c_x"] * x + row["c_d0"] * d
        if self.needs_prev_output[i]:
            x_next = x_next + row["c_d1"] * (d - prev_output)
        return x_next, d


_SAMPLERS: dict[str, type[Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "dpm": DPMSolverSampler}


def make_sampler(schedule: NoiseSchedule, spec: SamplerSpec | str,
                 device: torch.device | str | None = None, guard: bool = True) -> Sampler:
    """Precompute the tables of ``spec`` (a SamplerSpec or a string like ``"ddim:10"``) on ``device``.

    ``guard`` runs :func:`check_start_level` on the first timestep (refuse / warn); only numerical
    reference tests, which compare the arithmetic with diffusers wherever it starts, turn it off.
    """
    if isinstance(spec, str):
        spec = SamplerSpec.parse(spec)
    sampler = _SAMPLERS[spec.kind].build(schedule.to("cpu"), spec)  # type: ignore[attr-defined]
    if guard:
        check_start_level(schedule, int(sampler.timesteps[0]), spec.prediction_type, bool(spec.clip_sample),
                          f"sampler {spec.name}", one_call=sampler.num_steps == 1)
    return sampler.to(device if device is not None else schedule.device)


__all__ = ["MAX_AMPLIFICATION", "PREDICTION_TYPES", "SAMPLER_KINDS", "DDIMSampler", "DDPMSampler",
           "DPMSolverSampler", "Sampler", "SamplerSpec", "check_start_level", "clean_estimate_amplification",
           "ddim_ode_step", "inference_timesteps", "make_sampler", "predict_x0_eps"]
