"""Capture a fixed-shape callable (e.g. a whole sampling loop) as one CUDA graph; run it directly on CPU.

Why: a few-step diffusion sampler on GPU is dominated by kernel-launch overhead (dozens of small kernels
per denoiser call). With fixed shapes (fastpolicy's samplers are pure functions of precomputed tensor
tables) the whole loop can be captured once and replayed with a single launch. The runner

* copies inputs into static device buffers (allocated once, reused every call), optionally staged
  through pinned host buffers so host→device copies are asynchronous;
* warms up on a side stream (first calls allocate workspaces and pick kernels; capture must not see
  that), then captures with ``torch.cuda.graph``;
* on CPU, or when CUDA is unavailable, calls the function directly — same interface, same results.

Randomness: draw noise outside and pass it as an input (a captured ``torch.randn`` replays the graph's
own generator offsets, which is correct but hard to seed per request).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, tuple | list) and all(isinstance(o, torch.Tensor) for o in out):
        return tuple(out)
    raise TypeError(f"captured function must return a tensor or a tuple of tensors, got {type(out).__name__}")


class CudaGraphRunner:
    """``runner = CudaGraphRunner(fn, example_inputs)``; ``runner(*inputs)`` → fn's output(s).

    Inputs must keep the example shapes and dtypes on every call (checked). ``captured`` says whether a
    graph is in use. Outputs are cloned by default because the graph overwrites its static outputs on the
    next replay; ``clone_outputs=False`` returns the static buffers themselves (valid until the next call).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        example_inputs: Sequence[torch.Tensor],
        warmup: int = 3,
        device: str | torch.device | None = None,
        enabled: bool = True,
        clone_outputs: bool = True,
        pin_host_buffers: bool = True,
    ) -> None:
        self.fn = fn
        self.clone_outputs = clone_outputs
        if device is None:
            device = example_inputs[0].device if example_inputs else torch.device("cpu")
        self.device = torch.device(device)
        self.shapes = [(tuple(x.shape), x.dtype) for x in example_inputs]
        self.captured = bool(enabled and self.device.type == "cuda" and torch.cuda.is_available())
        self.graph: Any = None
        self._single_output = True
        if not self.captured:
            return
        self.static_inputs = [x.detach().to(self.device).clone() for x in example_inputs]
        self.host_inputs = (
            [torch.empty(s, dtype=d, pin_memory=True) for s, d in self.shapes] if pin_host_buffers else None
        )
        self._copies_done = torch.cuda.Event()  # pinned buffers are reused only after their copy finished
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(max(1, warmup)):
                fn(*self.static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            out = fn(*self.static_inputs)
        self._single_output = isinstance(out, torch.Tensor)
        self.static_outputs = _as_tuple(out)

    def _check(self, inputs: Sequence[Any]) -> None:
        if len(inputs) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} inputs, got {len(inputs)}")
        for i, (x, (shape, dtype)) in enumerate(zip(inputs, self.shapes)):
            if tuple(x.shape) != shape:
                raise ValueError(f"input {i} has shape {tuple(x.shape)}, the runner was built for {shape}")
            if isinstance(x, torch.Tensor) and x.dtype != dtype:
                raise ValueError(f"input {i} has dtype {x.dtype}, the runner was built for {dtype}")

    def __call__(self, *inputs: torch.Tensor | np.ndarray) -> Any:
        self._check(inputs)
        if not self.captured:
            with torch.no_grad():
                return self.fn(*[torch.as_tensor(x) for x in inputs])
        self._copies_done.synchronize()
        for i, x in enumerate(inputs):
            if isinstance(x, np.ndarray) and self.host_inputs is not None:
                # numpy → pinned host buffer → async copy into the static device buffer.
                self.host_inputs[i].numpy()[...] = x
                self.static_inputs[i].copy_(self.host_inputs[i], non_blocking=True)
            else:
                self.static_inputs[i].copy_(torch.as_tensor(x), non_blocking=True)
        self._copies_done.record()
        self.graph.replay()
        outs = tuple(o.clone() for o in self.static_outputs) if self.clone_outputs else self.static_outputs
        return outs[0] if self._single_output else outs
