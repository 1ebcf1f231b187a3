"""Dynamic micro-batching: many sessions' requests → one ``predict_chunk`` call on a worker thread.

Why: a diffusion denoiser costs nearly the same for a batch of 64 as for 1 on the hardware that matters
(a small UNet: ~6 ms at batch 1, ~38 ms at batch 64 on this CPU), so a fleet served one request at a
time wastes most of the machine. The batcher collects requests until ``max_batch`` are waiting or the
oldest has waited ``max_wait_ms``, stacks observation windows and per-session states
(``Policy.stack_states``), runs one ``predict_chunk`` in a dedicated worker thread (never on the event
loop) and splits the result back (``Policy.split_state``). While the worker runs, the next batch forms.

A batch that raises is retried one request at a time, so one bad session cannot fail its neighbours.

A policy with CUDA graphs (``fastpolicy.policies.cuda_graphs.GraphedPolicy``) declares its captured
batch sizes (``graph_batch_sizes``): batches are then capped at the largest one, and the policy pads each
batch to the next captured size and slices the result (``padded_sizes`` records what ran).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fastpolicy.policies.base import Policy, PolicyState
from fastpolicy.policies.cuda_graphs import padded_size

log = logging.getLogger("fastpolicy.serve.batching")


@dataclass
class BatchResult:
    """What one session gets back from a batched call."""

    actions: np.ndarray  # (Ta, action_dim) float32
    state: PolicyState  # the session's new state (batch dim 1)
    nfe: int
    queue_s: float  # time from submit to the start of the batch that served it
    inference_s: float  # wall time of the batch's predict_chunk
    batch_size: int


@dataclass
class _Item:
    obs_window: np.ndarray  # (To, obs_dim)
    state: PolicyState
    future: asyncio.Future
    submitted: float


def _pin_torch_threads(n: int) -> None:
    """Apply the caller's torch thread count in the inference thread.

    Why: OpenMP's thread count is per calling thread. ``torch.set_num_threads`` in the main thread leaves a
    new worker thread at the OpenMP default (all cores); its spinning team then fights the event loop
    for the CPU and a 0.5 ms MLP call took ~140 ms on a 2-core machine (measured).
    """
    torch.set_num_threads(n)


def _to_numpy(actions: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(actions, torch.Tensor):
        actions = actions.detach().cpu().numpy()
    return np.asarray(actions, dtype=np.float32)


class MicroBatcher:
    """Collects concurrent ``submit`` calls into batched ``predict_chunk`` calls.

    Use from one asyncio event loop: ``start()``, then ``await submit(window, state)`` from any number of
    session tasks, and ``await close()``. ``calls`` and ``batch_sizes`` record what happened.
    """

    def __init__(
        self,
        policy: Policy,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        generator: torch.Generator | None = None,
        fill_target: Callable[[], int] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be ≥ 0, got {max_wait_ms}")
        self.policy = policy
        # Captured CUDA-graph sizes: never form a batch larger than the largest graph (it would be split).
        self.graph_sizes: tuple[int, ...] = tuple(getattr(policy, "graph_batch_sizes", ()) or ())
        if self.graph_sizes:
            max_batch = min(max_batch, max(self.graph_sizes))
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1e3
        self.generator = generator
        # How many requests can possibly arrive (e.g. the number of connected sessions, each with at most
        # one request in flight): once a batch has that many, waiting longer only adds latency.
        self.fill_target = fill_target
        self.calls = 0
        self.batch_sizes: list[int] = []  # bounded: the last 10k batches
        self.padded_sizes: list[int] = []  # the captured size each batch ran at (graphed policies only)
        self._items: collections.deque[_Item] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1,
            thread_name_prefix="fastpolicy-infer",
            initializer=_pin_torch_threads,
            initargs=(torch.get_num_threads(),),
        )
        self._pending = 0

    @property
    def pending(self) -> int:
        """Requests submitted and not yet answered (0 when idle: nothing leaks)."""
        return self._pending

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fastpolicy-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._items:
            item = self._items.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("batcher closed"))
        self._executor.shutdown(wait=True)

    async def run_in_worker(self, fn, *args):
        """Run ``fn(*args)`` on the inference thread (e.g. warm-up), serialised with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, obs_window: np.ndarray, state: PolicyState) -> BatchResult:
        """Queue one session's (To, obs_dim) window and state; resolves when its batch has run."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        self._pending += 1
        try:
            self._items.append(_Item(obs_window, state, future, time.perf_counter()))
            self._wakeup.set()
            return await future
        finally:
            self._pending -= 1
            if not future.done():
                future.cancel()  # the submitter went away (disconnect / shutdown): skip it in the batch

    async def _next_item(self, timeout: float | None) -> _Item | None:
        """Pop the oldest queued item, waiting up to ``timeout`` seconds (None: forever)."""
        assert self._wakeup is not None
        while not self._items:
            self._wakeup.clear()
            if timeout is None:
                await self._wakeup.wait()
            else:
                if timeout <= 0:
                    return None
                try:
                    # Waiting on an Event (not a Queue) so a timeout can never lose an item.
                    await asyncio.wait_for(self._wakeup.wait(), timeout)
                except TimeoutError:
                    return None
        return self._items.popleft()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next_item(None)
            assert first is not None
            batch = [first]
            deadline = first.submitted + self.max_wait_s
            limit = self.max_batch
            while len(batch) < limit:
                item = self._next_item_nowait()
                if item is None and self.fill_target is not None and len(batch) >= self.fill_target():
                    break
                if item is None:
                    item = await self._next_item(deadline - time.perf_counter())
                if item is None:
                    break
                batch.append(item)
            batch = [it for it in batch if not it.future.done()]  # cancelled while waiting
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._predict_safe, batch)
            except Exception as exc:  # pragma: no cover - _predict_safe catches per item
                results = [exc] * len(batch)
            for item, res in zip(batch, results):
                if item.future.done():
                    continue
                if isinstance(res, BaseException):
                    item.future.set_exception(res)
                else:
                    res.queue_s = started - item.submitted
                    item.future.set_result(res)

    def _next_item_nowait(self) -> _Item | None:
        return self._items.popleft() if self._items else None

    # ---- worker thread

    def _predict_safe(self, batch: list[_Item]) -> list[BatchResult | BaseException]:
        try:
            return self._predict(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.warning("predict_chunk failed", extra={"fields": {"error": repr(exc)}})
                return [exc]
        # Isolate the failure: retry each request alone so healthy sessions still get actions.
        out: list[BatchResult | BaseException] = []
        for item in batch:
            try:
                out.extend(self._predict([item]))
            except Exception as exc:
                log.warning("predict_chunk failed", extra={"fields": {"error": repr(exc)}})
                out.append(exc)
        return out

    def _predict(self, batch: list[_Item]) -> list[BatchResult]:
        n = len(batch)
        windows = np.stack([it.obs_window for it in batch]).astype(np.float32, copy=False)
        state = self.policy.stack_states([it.state for it in batch])
        t0 = time.perf_counter()
        with torch.inference_mode():
            result = self.policy.predict_chunk(windows, state, self.generator)
        elapsed = time.perf_counter() - t0
        actions = _to_numpy(result.actions)
        if actions.ndim != 3 or actions.shape[0] != n:
            raise RuntimeError(f"predict_chunk returned actions of shape {actions.shape} for a batch of {n}")
        states = self.policy.split_state(result.state, [1] * n)
        # Clone: a session must not keep the whole batch's tensor alive through a view.
        states = [None if s is None else {k: v.clone() for k, v in s.items()} for s in states]
        self.calls += 1
        self.batch_sizes.append(n)
        if self.graph_sizes:
            self.padded_sizes.append(padded_size(n, self.graph_sizes))
        if len(self.batch_sizes) > 10_000:
            del self.batch_sizes[:5_000]
        if len(self.padded_sizes) > 10_000:
            del self.padded_sizes[:5_000]
        return [BatchResult(actions[i], states[i], int(result.nfe), 0.0, elapsed, n) for i in range(n)]
