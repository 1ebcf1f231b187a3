"""CUDA graphs for whole planning calls: capture a policy's ``predict_chunk`` per batch size, replay it.

Why: on a GPU a diffusion policy's planning call is dominated by kernel-launch overhead (DDPM-100 on a
small U-Net is ~17 000 launches of kernels that each run for microseconds). Captured as one CUDA graph,
the whole call — sampler loop, streaming step, student step — is a single launch.

How, through the public Policy contract only (``predict_chunk`` and ``init_state``), so a policy's
internals can change without touching this module:

1. **Record.** The first call for a *program key* (padded batch size, state signature, generator kind,
   policy method) runs eagerly — its result goes to the caller — under a ``TorchFunctionMode`` that
   records what a graph cannot do by itself: random draws (shape, dtype, device, which generator), host
   → device copies of constants, host reads of device values (``bool(t)``, ``int(t)``) and boolean-mask
   indexing (data-dependent shapes).
2. **Capture.** The same call runs again under a *replay* mode that returns static noise buffers for the
   draws, the recorded device copies for the constants (checked equal on the host), the recorded values
   for host reads and index tensors for masks, and turns device → host copies into graph outputs. After
   two warm-up runs on a side stream it is captured with ``torch.cuda.graph``; then one replay is
   compared with an eager call from the same random state (a *self-check*), and any disagreement drops
   the graph.
3. **Replay.** Noise is drawn on the host with the caller's generator in exactly the eager order (so a
   graph replay equals the eager call for the same generator state), copied with the inputs into the
   static buffers, the graph is launched once and the outputs come back with one synchronisation.

The **state signature** is the batch's integer and bool state rows (a streaming buffer's ``levels``): the
only thing a captured call's control flow may depend on, besides shapes. Batches are grouped by row
signature and padded to the next captured size (:func:`plan_batches`) with copies of their last row;
padded rows are computed and dropped. Every path falls back to the eager call and says why
(:attr:`GraphedPolicy.fallback_reason`, :attr:`GraphedPolicy.failures`, logged once): not on CUDA, not a
torch policy, an unsupported random op, a capture error, a failed self-check, too many graphs.

``dtype`` (bf16 / fp16) runs the call under ``torch.autocast`` (``cache_enabled=False``, as graphs need);
:func:`compare_precision` measures its actions against fp32 eager from the same noise and states.

``dry_run=True`` runs the replay-mode program (every substitution above) instead of a CUDA graph, on any
device: the CPU tests and the GPU check's ``--quick`` mode use it to exercise this logic without a GPU.

Length: recording, capture, replay, padding, self-check and the fallback reasons all work on one recorded
program; apart, each would need the recording's internals.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from fastpolicy.policies.base import ChunkResult, Policy, PolicyState

log = logging.getLogger("fastpolicy.policies.cuda_graphs")

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "float32": None, "bf16": torch.bfloat16,
                                          "bfloat16": torch.bfloat16, "fp16": torch.float16,
                                          "float16": torch.float16}

_RANDOM_FACTORIES = {"randn", "rand", "randint", "randn_like", "rand_like"}
_RANDOM_UNSUPPORTED = {"normal", "normal_", "uniform_", "random_", "bernoulli", "bernoulli_", "exponential_",
                       "geometric_", "cauchy_", "log_normal_", "multinomial", "randperm", "poisson",
                       "randint_like"}
_HOST_READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "equal", "allclose",
               "is_nonzero"}
_INDEX_PRODUCERS = {"nonzero", "argwhere"}


class CaptureError(RuntimeError):
    """A call cannot be captured (or a replay-mode run diverged from its recording)."""


# --------------------------------------------------------------------------- batching


def padded_size(n: int, sizes: Sequence[int]) -> int:
    """The smallest captured size ≥ ``n`` (``n`` must not exceed the largest)."""
    fits = [s for s in sorted(sizes) if s >= n]
    if not fits:
        raise ValueError(f"batch of {n} exceeds the largest captured size {max(sizes)}")
    return fits[0]


def plan_batches(n: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Split ``n`` rows into ``(rows, padded size)`` pieces: full pieces of the largest size, then the
    remainder padded to the next captured size. ``plan_batches(70, (1, 64)) == [(64, 64), (6, 64)]``."""
    if n < 1:
        return []
    largest = max(sizes)
    pieces = [(largest, largest)] * (n // largest)
    if n % largest:
        pieces.append((n % largest, padded_size(n % largest, sizes)))
    return pieces


def parse_batch_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,64"`` or ``[1, 64]`` → ``(1, 64)``: sorted, unique, each ≥ 1."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = tuple(sorted({int(s) for s in items if str(s).strip()}))
    except ValueError:
        raise ValueError(f"batch sizes must be integers like '1,64', got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be ≥ 1 and at least one, got {text!r}")
    return sizes


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"fp16"`` / ``"fp32"`` (or a torch dtype, or None) → the autocast dtype (None: fp32)."""
    if name is None or isinstance(name, torch.dtype):
        return None if name in (None, torch.float32) else name
    if name.lower() not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name.lower()]


# --------------------------------------------------------------------------- the tape


@dataclass
class _Draw:
    kind: str  # randn | rand | randint
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    caller_generator: bool  # False: the global RNG of ``device``
    bounds: tuple[int, int] = (0, 0)  # randint's [low, high)


@dataclass
class _Tape:
    draws: list[_Draw] = field(default_factory=list)
    # (host value, device copy) of every host → device upload
    uploads: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    reads: list[tuple[str, Any]] = field(default_factory=list)
    masks: list[list[tuple[tuple[int, ...], tuple[torch.Tensor, ...]]]] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)
    unsupported: str | None = None


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


def _shape_arg(args: Sequence[Any], kwargs: dict[str, Any], first: int) -> tuple[int, ...]:
    if "size" in kwargs:
        size = kwargs["size"]
    elif len(args) == first + 1 and isinstance(args[first], Sequence):
        size = args[first]
    else:
        size = args[first:]
    return tuple(int(s) for s in size)


def _requested(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, tuple[int, ...]]:
    """(kind, shape) a random factory call asks for, without running it."""
    if name.endswith("_like"):
        return name.removesuffix("_like"), tuple(args[0].shape)
    if name == "randint":
        sizes = [a for a in args if isinstance(a, Sequence)]
        return "randint", tuple(int(s) for s in kwargs.get("size", sizes[0] if sizes else ()))
    return name, _shape_arg(args, kwargs, 0)


def _randint_bounds(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int]:
    ints = [int(a) for a in args if isinstance(a, int)]
    low = int(kwargs.get("low", ints[0] if len(ints) == 2 else 0))
    high = int(kwargs.get("high", ints[-1]))
    return low, high


def _host_to_device(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    """Does this call copy host data to an accelerator (which a graph cannot replay)?"""
    if name in ("to", "cuda") and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
        if name == "cuda":
            return True
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        return device is not None and device.type != "cpu"
    if name in ("as_tensor", "tensor", "asarray"):
        device = kwargs.get("device", args[2] if name == "as_tensor" and len(args) > 2 else None)
        data = args[0] if args else kwargs.get("data")
        on_host = not isinstance(data, torch.Tensor) or data.device.type == "cpu"
        return device is not None and torch.device(device).type != "cpu" and on_host
    if name == "copy_" and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return args[0].device.type != "cpu" and args[1].device.type == "cpu"
    return False


def _host_value(name: str, args: Sequence[Any], kwargs: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """What a host → device call would upload, computed on the host."""
    if name in ("to", "cuda"):
        return args[0].to(dtype=dtype)
    if name == "copy_":
        return args[1].to(dtype=dtype)
    kw = {k: v for k, v in kwargs.items() if k != "device"}
    return getattr(torch, name)(args[0] if args else kwargs["data"], **{**kw, "device": "cpu"}).to(dtype)


def _mask_parts(index: Any) -> tuple[bool, tuple[Any, ...]]:
    parts = index if isinstance(index, tuple) else (index,)
    has = any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)
    return has, parts


class _TapeMode(TorchFunctionMode):
    """Records (``record``) or substitutes (``replay``) what a CUDA graph cannot do, around one call."""

    def __init__(self, mode: str, tape: _Tape, generator: torch.Generator | None,
                 noise: list[torch.Tensor] | None = None, dry_run: bool = False) -> None:
        super().__init__()
        self.mode, self.tape, self.generator = mode, tape, generator
        self.noise = noise or []
        self.dry_run = dry_run
        self.cursor = {"draws": 0, "uploads": 0, "reads": 0, "masks": 0, "indices": 0}
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (device tensor, host placeholder)

    def _next(self, kind: str) -> Any:
        items = getattr(self.tape, kind)
        i = self.cursor[kind]
        if i >= len(items):
            raise CaptureError(f"the call made more {kind} than when it was recorded: control flow depends "
                               "on more than the state signature")
        self.cursor[kind] = i + 1
        return items[i]

    def finish(self) -> None:
        for kind, i in self.cursor.items():
            if i != len(getattr(self.tape, kind)):
                raise CaptureError(f"the call made fewer {kind} ({i}) than when it was recorded "
                                   f"({len(getattr(self.tape, kind))})")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in _RANDOM_UNSUPPORTED:
            return self._unsupported(f"random op {name!r} (only randn/rand/randint can be replayed)",
                                     func, args, kwargs)
        if name in _RANDOM_FACTORIES:
            return self._random(name, func, args, kwargs)
        if name in _HOST_READS:
            return self._read(name, func, args, kwargs)
        if name in ("__getitem__", "__setitem__") and len(args) > 1 and _mask_parts(args[1])[0]:
            return self._masked(func, args, kwargs)
        if name in _INDEX_PRODUCERS:
            return self._index(func, args, kwargs)
        if _host_to_device(name, args, kwargs):
            return self._upload(name, func, args, kwargs)
        if self.mode == "replay" and self._device_to_host(name, args, kwargs):
            src = args[0]
            placeholder = torch.zeros(src.shape, dtype=src.dtype, device="cpu")
            self.outputs.append((src, placeholder))
            return placeholder
        return func(*args, **kwargs)

    def _unsupported(self, reason: str, func, args, kwargs):
        if self.mode == "replay":
            raise CaptureError(reason)
        self.tape.unsupported = self.tape.unsupported or reason
        return func(*args, **kwargs)

    def _random(self, name: str, func, args, kwargs):
        gen = kwargs.get("generator")
        if gen is not None and gen is not self.generator:
            return self._unsupported("a random draw from a generator other than the caller's",
                                     func, args, kwargs)
        kind, shape = _requested(name, args, kwargs)
        if self.mode == "record":
            out = func(*args, **kwargs)
            bounds = _randint_bounds(args, kwargs) if kind == "randint" else (0, 0)
            self.tape.draws.append(_Draw(kind, tuple(out.shape), out.dtype, out.device, gen is not None,
                                         bounds))
            return out
        i = self.cursor["draws"]
        draw = self._next("draws")
        if (draw.kind, draw.shape, draw.caller_generator) != (kind, shape, gen is not None):
            raise CaptureError(f"random draw {i} asks for {kind}{shape}, recorded {draw.kind}{draw.shape}")
        return self.noise[i]

    def _read(self, name: str, func, args, kwargs):
        if self.mode == "record":
            value = func(*args, **kwargs)
            self.tape.reads.append((name, value))
            return value
        recorded_name, value = self._next("reads")
        if recorded_name != name:
            raise CaptureError(f"host read {name} where {recorded_name} was recorded")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if self.dry_run or all(t.device.type == "cpu" for t in tensors):
            actual = func(*args, **kwargs)  # no device sync needed: check the recording still holds
            if actual != value:
                raise CaptureError(f"host read {name} gives {actual!r}, recorded {value!r}: control flow "
                                   "depends on more than the state signature")
        return value

    def _masked(self, func, args, kwargs):
        _, parts = _mask_parts(args[1])
        if self.mode == "record":
            self.tape.masks.append([(tuple(p.shape), tuple(p.nonzero(as_tuple=True))) for p in parts
                                    if isinstance(p, torch.Tensor) and p.dtype == torch.bool])
            return func(*args, **kwargs)
        recorded = iter(self._next("masks"))
        index: list[Any] = []
        for p in parts:
            if isinstance(p, torch.Tensor) and p.dtype == torch.bool:
                shape, rows = next(recorded, ((), ()))
                if shape != tuple(p.shape):
                    raise CaptureError(f"boolean mask of shape {tuple(p.shape)}, recorded {shape}")
                index.extend(r.to(p.device) for r in rows)
            else:
                index.append(p)
        return func(args[0], tuple(index), *args[2:], **kwargs)

    def _index(self, func, args, kwargs):
        if self.mode == "record":
            out = func(*args, **kwargs)
            self.tape.indices.append(out.clone())
            return out
        return self._next("indices").clone()

    def _upload(self, name: str, func, args, kwargs):
        if self.mode == "record":
            out = func(*args, **kwargs)
            dtype = (args[0] if name == "copy_" else out).dtype
            self.tape.uploads.append((_host_value(name, args, kwargs, dtype).clone(),
                                      (args[0] if name == "copy_" else out).clone()))
            return out
        host, device_copy = self._next("uploads")
        now = _host_value(name, args, kwargs, host.dtype)
        if now.shape != host.shape or not torch.equal(now, host):
            raise CaptureError(f"host→device copy ({name}) of a value that changed since it was recorded")
        if name == "copy_":
            return args[0].copy_(device_copy)
        return device_copy.clone()

    def _device_to_host(self, name: str, args, kwargs) -> bool:
        if not args or not isinstance(args[0], torch.Tensor):
            return False
        src = args[0]
        if name == "cpu":
            return src.device.type != "cpu" or self.dry_run
        if name == "to" and src.device.type != "cpu":
            device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            return device is not None and device.type == "cpu"
        return False


# --------------------------------------------------------------------------- one captured program


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def _private_generator(kind: str | None, seed: int) -> torch.Generator | None:
    return None if kind is None else torch.Generator(device=kind).manual_seed(seed)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _actions_tensor(actions: Any) -> torch.Tensor:
    return actions.detach().float().cpu() if isinstance(actions, torch.Tensor) else torch.from_numpy(
        np.asarray(actions, dtype=np.float32))


class _Program:
    """One (padded batch size, state signature, generator kind) call: static buffers, graph, outputs."""

    def __init__(self, owner: GraphedPolicy, tape: _Tape, obs: torch.Tensor, state: PolicyState,
                 generator_kind: str | None) -> None:
        self.owner, self.tape = owner, tape
        self.device = owner.device
        self.generator_kind = generator_kind
        self.static_obs = obs.clone()
        self.static_state = None if state is None else {k: v.clone() for k, v in state.items()}
        self.noise = [torch.empty(d.shape, dtype=d.dtype, device=self.device) for d in tape.draws]
        pin = self.device.type == "cuda"
        self.host_noise = [torch.empty(d.shape, dtype=d.dtype, pin_memory=pin) if d.device.type == "cpu"
                           else None for d in tape.draws]
        self.graph: Any = None
        self.template: ChunkResult | None = None
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- one replay-mode execution of the policy's call
    def _execute(self) -> tuple[ChunkResult, list[tuple[torch.Tensor, torch.Tensor]]]:
        generator = _private_generator(self.generator_kind, 0)
        mode = _TapeMode("replay", self.tape, generator, self.noise, dry_run=self.owner.dry_run)
        state = None if self.static_state is None else dict(self.static_state)
        with torch.inference_mode(), _autocast(self.device, self.owner.dtype), mode:
            result = self.owner.policy.predict_chunk(self.static_obs, state, generator)
        mode.finish()
        return result, mode.outputs

    def capture(self) -> None:
        if self.owner.dry_run:
            self.template, self.outputs = self._execute()
            self._output_map(self.template, self.outputs)
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # first runs allocate workspaces and pick kernels: the capture must not see it
                self._execute()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.template, self.outputs = self._execute()
        self.graph = graph
        self._output_map(self.template, self.outputs)
        self.host_out = {i: torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                         for i, t in enumerate(self._flat_outputs())}

    def _output_map(self, result: ChunkResult, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Which captured tensor each field of the result comes from (checked once, at capture)."""
        self.actions_source = self._source_of(result.actions, outputs, "actions")
        self.state_sources: dict[str, torch.Tensor] | None = None
        if result.state is not None:
            self.state_sources = {k: self._source_of(v, outputs, f"state[{k!r}]")
                                  for k, v in result.state.items()}

    def _source_of(self, value: Any, outputs: list[tuple[torch.Tensor, torch.Tensor]],
                   what: str) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            for src, placeholder in outputs:
                if placeholder.numel() and value.ctypes.data == placeholder.data_ptr() \
                        and value.shape == tuple(placeholder.shape):
                    return src
            raise CaptureError(f"{what} is computed on the host after the device→host copy")
        if isinstance(value, torch.Tensor):
            for src, placeholder in outputs:
                if value is placeholder:
                    return src
            if value.device.type != "cpu" or self.owner.dry_run:
                return value
            raise CaptureError(f"{what} is a host tensor computed outside the graph")
        raise CaptureError(f"{what} has type {type(value).__name__}; a tensor or array is needed")

    def _flat_outputs(self) -> list[torch.Tensor]:
        return [self.actions_source] + list((self.state_sources or {}).values())

    def fill(self, obs: torch.Tensor, state: PolicyState, generator: torch.Generator | None) -> None:
        """Inputs into the static buffers; noise drawn with ``generator`` in the recorded (eager) order."""
        self.static_obs.copy_(obs, non_blocking=True)
        if self.static_state is not None and state is not None:
            for k, v in self.static_state.items():
                v.copy_(state[k], non_blocking=True)
        for draw, dev, host in zip(self.tape.draws, self.noise, self.host_noise):
            g = generator if draw.caller_generator else None
            where = {"generator": g, "dtype": draw.dtype, "device": draw.device}
            if draw.kind == "randint":
                value = torch.randint(*draw.bounds, draw.shape, **where)
            else:
                value = getattr(torch, draw.kind)(draw.shape, **where)
            if host is not None and host is not dev:
                host.copy_(value)
                dev.copy_(host, non_blocking=True)
            else:
                dev.copy_(value)

    def __call__(self, obs: torch.Tensor, state: PolicyState, generator: torch.Generator | None,
                 rows: int) -> ChunkResult:
        self.fill(obs, state, generator)
        if self.graph is None:  # dry run: the replay-mode program itself
            result, outputs = self._execute()
            self._output_map(result, outputs)
            actions = self.actions_source[:rows].float().clone()
            new_state = None if self.state_sources is None else {
                k: v[:rows].clone() for k, v in self.state_sources.items()}
            return ChunkResult(actions.numpy(), int(result.nfe), new_state)
        self.graph.replay()
        flat = self._flat_outputs()
        for i, src in enumerate(flat):
            self.host_out[i].copy_(src, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        actions = self.host_out[0][:rows].float().numpy().copy()
        new_state = None if self.state_sources is None else {
            k: self.host_out[i + 1][:rows].clone() for i, k in enumerate(self.state_sources)}
        assert self.template is not None
        return ChunkResult(actions, int(self.template.nfe), new_state)


# --------------------------------------------------------------------------- the wrapper


def _signature_rows(state: PolicyState, batch: int) -> list[tuple]:
    """Per row: the bytes of its integer/bool state (what control flow may depend on)."""
    if state is None:
        return [()] * batch
    keys = sorted(k for k, v in state.items() if not v.is_floating_point())
    if not keys:
        return [()] * batch
    host = {k: state[k].detach().cpu().contiguous().numpy() for k in keys}
    return [tuple(host[k][i].tobytes() for k in keys) for i in range(batch)]


def _structure(state: PolicyState) -> tuple:
    if state is None:
        return ()
    return tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(state.items()))


def _take(state: PolicyState, idx: torch.Tensor) -> PolicyState:
    return None if state is None else {k: v[idx.to(v.device)] for k, v in state.items()}


class GraphedPolicy(Policy):
    """A policy whose ``predict_chunk`` replays CUDA graphs captured per batch size (eager otherwise).

    Same contract as the wrapped policy: ``predict_chunk(obs_window, state, generator) → ChunkResult``
    with numpy actions; the returned state lives on the host. Attributes it does not define are the
    wrapped policy's. After changing the wrapped policy in ways its ``method`` does not show (new
    weights tensors, ``.to(device)``), call :meth:`reset_graphs`.
    """

    def __init__(self, policy: Policy, batch_sizes: Sequence[int] | str = (1, 64),
                 dtype: str | torch.dtype | None = None, dry_run: bool = False, max_graphs: int = 32,
                 self_check: bool = True) -> None:
        self.policy = policy
        self.batch_sizes = parse_batch_sizes(batch_sizes)
        self.dtype = parse_dtype(dtype)
        self.dry_run = dry_run
        self.max_graphs = max_graphs
        self.self_check = self_check
        self.obs_dim, self.action_dim = policy.obs_dim, policy.action_dim
        self.obs_horizon, self.action_horizon = policy.obs_horizon, policy.action_horizon
        self.failures: dict[tuple, str] = {}
        self._programs: dict[tuple, _Program] = {}
        self._lock = threading.RLock()
        self.device = torch.device("cpu")
        self.fallback_reason: str | None = None
        if not isinstance(policy, torch.nn.Module):
            self.fallback_reason = f"{type(policy).__name__} is not a torch policy: nothing to capture"
        else:
            first = next(iter(policy.parameters()), None)
            self.device = first.device if first is not None else torch.device("cpu")
            if self.device.type != "cuda" and not dry_run:
                self.fallback_reason = (f"policy is on {self.device.type}: CUDA graphs need a CUDA device "
                                        "(running the eager policy unchanged)")
        if self.fallback_reason is not None:
            log.info("cuda graphs off: %s", self.fallback_reason)

    def __getattr__(self, name: str) -> Any:  # only called for attributes this wrapper does not have
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    @property
    def method(self) -> str:  # type: ignore[override]
        return self.policy.method

    @property
    def graph_batch_sizes(self) -> tuple[int, ...]:
        """The captured batch sizes a server should batch into; () when graphs are off."""
        return () if self.fallback_reason is not None else self.batch_sizes

    @property
    def active(self) -> bool:
        return self.fallback_reason is None

    def status(self) -> dict[str, Any]:
        """What is captured and why anything is not (for logs, metadata and benchmark rows)."""
        return {"active": self.active, "fallback_reason": self.fallback_reason,
                "dtype": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
                "batch_sizes": list(self.batch_sizes), "graphs": len(self._programs),
                "dry_run": self.dry_run, "failures": sorted(set(self.failures.values()))}

    def reset_graphs(self) -> None:
        """Drop every captured graph (they are recaptured on the next calls)."""
        with self._lock:
            self._programs.clear()
            self.failures.clear()

    def init_state(self, batch_size: int) -> PolicyState:
        return self.policy.init_state(batch_size)

    # -- eager
    def _eager(self, obs: torch.Tensor, state: PolicyState, generator: torch.Generator | None,
               tape_mode: _TapeMode | None = None) -> ChunkResult:
        with torch.inference_mode(), _autocast(self.device, self.dtype):
            if tape_mode is None:
                return self.policy.predict_chunk(obs, state, generator)
            with tape_mode:
                return self.policy.predict_chunk(obs, state, generator)

    def predict_chunk(self, obs_window: np.ndarray | torch.Tensor, state: PolicyState = None,
                      generator: torch.Generator | None = None) -> ChunkResult:
        if self.fallback_reason is not None:
            return self.policy.predict_chunk(obs_window, state, generator)
        with self._lock, torch.inference_mode():
            obs = torch.as_tensor(np.asarray(obs_window, dtype=np.float32) if not isinstance(
                obs_window, torch.Tensor) else obs_window, dtype=torch.float32).to(self.device)
            batch = obs.shape[0]
            if state is None:
                state = self.policy.init_state(batch)
            rows = _signature_rows(state, batch)
            groups: dict[tuple, list[int]] = {}
            for i, sig in enumerate(rows):
                groups.setdefault(sig, []).append(i)
            pieces: list[tuple[list[int], ChunkResult]] = []
            for sig, members in groups.items():
                start = 0
                for count, size in plan_batches(len(members), self.batch_sizes):
                    idx = members[start:start + count]
                    start += count
                    pieces.append((idx, self._run_piece(obs, state, idx, size, sig, generator)))
            return self._merge(pieces, batch)

    def _run_piece(self, obs: torch.Tensor, state: PolicyState, idx: list[int], size: int, sig: tuple,
                   generator: torch.Generator | None) -> ChunkResult:
        n = len(idx)
        identity = idx == list(range(obs.shape[0]))
        gen_kind = None if generator is None else generator.device.type
        key = (size, sig, gen_kind, _structure(state), self.policy.method)
        if key in self.failures:  # eager, unpadded
            sel = torch.tensor(idx)
            return self._eager(obs if identity else obs[sel.to(obs.device)],
                               state if identity else _take(state, sel), generator)
        if identity and n == size:
            p_obs, p_state = obs, state
        else:
            gather = torch.tensor(idx + [idx[-1]] * (size - n))  # pad with copies of the last row
            p_obs, p_state = obs[gather.to(obs.device)], _take(state, gather)
        program = self._programs.get(key)
        if program is not None:
            return program(p_obs, p_state, generator, n)
        result = self._build(key, p_obs, p_state, generator)
        return _slice(result, n)

    def _build(self, key: tuple, obs: torch.Tensor, state: PolicyState,
               generator: torch.Generator | None) -> ChunkResult:
        """Record the call (its eager result is returned), capture it, self-check the graph."""
        state_dev = None if state is None else {k: v.to(self.device) for k, v in state.items()}
        tape = _Tape()
        result = self._eager(obs, state_dev, generator, _TapeMode("record", tape, generator))
        reason = tape.unsupported
        if reason is None and len(self._programs) >= self.max_graphs:
            reason = f"already {self.max_graphs} graphs captured (max_graphs)"
        if reason is None:
            try:
                program = _Program(self, tape, obs, state_dev, key[2])
                program.capture()
                if self.self_check:
                    self._self_check(program, obs, state_dev, key[2])
            except Exception as exc:  # noqa: BLE001 - any capture problem means: stay eager, say why
                reason = f"capture failed: {type(exc).__name__}: {exc}"
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
            else:
                self._programs[key] = program
                log.info("captured %s batch %d (%d random draws, nfe %d)", self.policy.method, key[0],
                         len(tape.draws), int(result.nfe))
        if reason is not None:
            self.failures[key] = reason
            log.warning("cuda graph for %s batch %d not used, running eagerly: %s", self.policy.method,
                        key[0], reason)
        return result

    def _self_check(self, program: _Program, obs: torch.Tensor, state: PolicyState, kind: str | None) -> None:
        rng = _rng_state(self.device)
        eager = self._eager(obs, state, _private_generator(kind, 1234))
        _set_rng_state(self.device, rng)
        replay = program(obs, state, _private_generator(kind, 1234), obs.shape[0])
        a, b = _actions_tensor(eager.actions), _actions_tensor(replay.actions)
        tol = (1e-4 if self.dtype is None else 2e-2) * (1.0 + float(a.abs().max()))
        diff = float((a - b).abs().max()) if a.shape == b.shape else math.inf
        if not diff <= tol:
            raise CaptureError(f"self-check: the graph's actions differ from the eager call's by {diff:.3g} "
                               f"(tolerance {tol:.3g})")

    def _merge(self, pieces: list[tuple[list[int], ChunkResult]], batch: int) -> ChunkResult:
        if len(pieces) == 1 and pieces[0][0] == list(range(batch)):
            return _on_host(pieces[0][1])
        first = pieces[0][1]
        actions = np.empty((batch,) + np.asarray(first.actions).shape[1:], dtype=np.float32)
        state: dict[str, torch.Tensor] | None = None
        if first.state is not None:
            state = {k: torch.empty((batch,) + tuple(v.shape[1:]), dtype=v.dtype)
                     for k, v in first.state.items()}
        for idx, res in pieces:
            actions[idx] = _actions_tensor(res.actions).numpy()
            if state is not None and res.state is not None:
                for k, v in res.state.items():
                    state[k][torch.tensor(idx)] = v.detach().cpu()
        return ChunkResult(actions, max(int(r.nfe) for _, r in pieces), state)

    def warmup(self, batch_sizes: Sequence[int] | None = None, generator: torch.Generator | None = None,
               steps: int = 4) -> dict[str, Any]:
        """Capture ahead of time: a short rollout from ``init_state`` at each size, so the recurring state
        signatures (a fresh streaming buffer, then its steady state) are captured before real traffic.

        ``generator`` only says which kind (None / cpu / cuda) the real calls will pass; a private one of
        that kind is used. Returns :meth:`status`.
        """
        if self.fallback_reason is not None:
            return self.status()
        kind = None if generator is None else generator.device.type
        for size in parse_batch_sizes(batch_sizes or self.batch_sizes):
            obs = np.zeros((size, self.obs_horizon, self.obs_dim), np.float32)
            state = self.init_state(size)
            seen: set[tuple] = set()
            for _ in range(steps):
                sig = tuple(_signature_rows(state, size))
                if sig in seen:
                    break
                seen.add(sig)
                state = self.predict_chunk(obs, state, _private_generator(kind, 0)).state
        return self.status()


def _slice(result: ChunkResult, n: int) -> ChunkResult:
    actions = result.actions[:n]
    state = None if result.state is None else {k: v[:n] for k, v in result.state.items()}
    return ChunkResult(actions, result.nfe, state)


def _on_host(result: ChunkResult) -> ChunkResult:
    """Actions as a float32 array and state on the host (one convention for graphed and eager pieces)."""
    actions = _actions_tensor(result.actions).numpy()
    state = None if result.state is None else {k: v.detach().cpu() for k, v in result.state.items()}
    return ChunkResult(actions, int(result.nfe), state)


def graphed(policy: Policy, batch_sizes: Sequence[int] | str = (1, 64),
            dtype: str | torch.dtype | None = None, **kwargs: Any) -> GraphedPolicy:
    """``graphed(policy, batch_sizes=(1, 64), dtype="bf16")``: the opt-in. On CPU it is the eager policy."""
    return GraphedPolicy(policy, batch_sizes, dtype, **kwargs)


# --------------------------------------------------------------------------- precision check


@dataclass
class PrecisionReport:
    """Low-precision graphed actions vs fp32 eager, from identical noise and states, over ``calls`` calls."""

    dtype: str
    calls: int
    max_abs_diff: float
    rms_diff: float
    action_std: float
    rel_rms: float  # rms_diff / action_std: the figure ``ok`` is judged on
    tolerance: float
    ok: bool
    status: dict[str, Any] = field(default_factory=dict)


def compare_precision(policy: Policy, dtype: str | torch.dtype = "bf16", batch_size: int = 1, calls: int = 8,
                      seed: int = 0, tolerance: float = 0.05, dry_run: bool = False) -> PrecisionReport:
    """Validate mixed precision: run the fp32 eager policy and a graphed ``dtype`` copy side by side.

    Each call gets the same observation, the same state (the fp32 trajectory's) and a CPU generator with
    the same seed, so the actions differ only by precision (and graph replay). ``ok`` when the RMS
    difference is at most ``tolerance`` of the actions' standard deviation.
    """
    low = GraphedPolicy(policy, (batch_size,), dtype, dry_run=dry_run)
    rng = np.random.default_rng(seed)
    state = policy.init_state(batch_size)
    ref_all, low_all = [], []
    for k in range(calls):
        obs = rng.standard_normal((batch_size, policy.obs_horizon, policy.obs_dim)).astype(np.float32)
        ref = policy.predict_chunk(obs, state, torch.Generator().manual_seed(seed + k))
        test = low.predict_chunk(obs, state, torch.Generator().manual_seed(seed + k))
        ref_all.append(_actions_tensor(ref.actions))
        low_all.append(_actions_tensor(test.actions))
        state = ref.state
    a, b = torch.cat(ref_all), torch.cat(low_all)
    diff = (a - b).abs()
    rms = float(diff.pow(2).mean().sqrt())
    std = float(a.std()) if a.numel() > 1 else 0.0
    rel = rms / std if std > 0 else (0.0 if rms == 0 else math.inf)
    name = str(parse_dtype(dtype) or torch.float32).removeprefix("torch.")
    return PrecisionReport(name, calls, float(diff.max()), rms, std, rel, tolerance, rel <= tolerance,
                           low.status())
