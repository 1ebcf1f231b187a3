"""Control loop, action-chunk broker and CUDA-graph runner."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fastpolicy.control.broker import ActionBroker, Chunk, ChunkQueue, LocalChunkSource, RemoteChunkSource
from fastpolicy.control.cudagraph import CudaGraphRunner
from fastpolicy.control.loop import ControlLoop
from fastpolicy.policies.base import ChunkResult, Policy

SAFE = np.array([-9.0, -9.0], np.float32)


class RampPolicy(Policy):
    """action[k] = [chunk index, k] + 1: every action is positive and distinguishable from SAFE."""

    method = "ramp"

    def __init__(self, action_horizon: int = 4, delay_s: float = 0.0) -> None:
        self.obs_dim, self.action_dim, self.obs_horizon, self.action_horizon = 2, 2, 2, action_horizon
        self.delay_s = delay_s
        self.calls = 0

    def predict_chunk(self, obs_window, state=None, generator=None) -> ChunkResult:
        assert np.asarray(obs_window).shape[1:] == (2, 2)
        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls += 1
        k = np.arange(self.action_horizon, dtype=np.float32)
        actions = np.stack([np.full_like(k, self.calls), k], axis=-1)[None] + 1
        return ChunkResult(actions, 1, None)


def _loop(policy: Policy, hz: float, fallback: str = "safe", low_watermark: int = 1, **kw):
    broker = ActionBroker(LocalChunkSource(policy, 1.0 / hz), low_watermark=low_watermark)
    sent: list[np.ndarray] = []
    loop = ControlLoop(
        broker,
        lambda: np.zeros(2, np.float32),
        lambda a: sent.append(np.array(a)),
        hz=hz,
        fallback=fallback,
        safe_action=SAFE,
        record_ticks=True,
        **kw,
    )
    return loop, broker, sent


# --------------------------------------------------------------------------- ChunkQueue


def test_chunk_queue_drops_due_actions_and_pops_on_time():
    q = ChunkQueue(period_s=0.1)
    chunk = Chunk(np.arange(8, dtype=np.float32).reshape(4, 2), np.array([1.0, 1.1, 1.2, 1.3]))
    assert q.merge(chunk, now=1.12) == 1  # the action for t=1.0 is already due: dropped
    assert q.pop(1.1) is not None and q.remaining(1.1) == 2
    assert q.pop(1.31)[0] == 6  # t=1.2 was skipped (late), t=1.3 is the one for now
    assert q.dropped_due == 2
    assert q.pop(1.4) is None  # nothing left: the loop falls back


def test_chunk_queue_replaces_and_blends_overlap():
    q = ChunkQueue(period_s=0.1)
    q.merge(Chunk(np.zeros((4, 1), np.float32), np.array([0.0, 0.1, 0.2, 0.3])), now=0.0)
    q.merge(Chunk(np.ones((4, 1), np.float32), np.array([0.2, 0.3, 0.4, 0.5])), now=0.15)
    got = [q.pop(t)[0] for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    assert got == [0, 0, 1, 1, 1, 1]  # the new plan replaces the old one from its first action

    b = ChunkQueue(period_s=0.1, blend_steps=2)
    b.merge(Chunk(np.zeros((4, 1), np.float32), np.array([0.0, 0.1, 0.2, 0.3])), now=0.0)
    b.merge(Chunk(np.ones((4, 1), np.float32), np.array([0.2, 0.3, 0.4, 0.5])), now=0.15)
    got = [float(b.pop(t)[0]) for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    assert got == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1])


# --------------------------------------------------------------------------- loop


def test_inference_delay_of_two_periods_every_tick_falls_back():
    """Ta=1 and inference takes 2 periods: every chunk arrives after its only action was due."""
    hz = 50.0
    loop, broker, sent = _loop(RampPolicy(action_horizon=1, delay_s=2 / hz), hz)
    stats = loop.run(steps=25, prime=False)
    broker.close()
    assert stats.ticks == len(loop.ticks) == len(sent)
    assert all(rec.late for rec in loop.ticks)
    assert all(np.array_equal(a, SAFE) for a in sent)
    assert stats.misses == stats.ticks
    assert broker.queue.dropped_due >= 5 and broker.requests >= 5
    assert stats.summary()["inference_ms_p50"] >= 2000 / hz * 0.99


def test_late_ticks_get_the_fallback_and_are_counted():
    """Ta=4, inference 2 periods, prefetch at 1 action left: some ticks are late, each one is a fallback."""
    hz = 50.0
    loop, broker, sent = _loop(RampPolicy(action_horizon=4, delay_s=2 / hz), hz)
    stats = loop.run(steps=40)
    broker.close()
    late = [rec.late for rec in loop.ticks]
    assert 0 < sum(late) < len(late)
    for rec, action in zip(loop.ticks, sent):
        assert np.array_equal(action, SAFE) == rec.late
        if not rec.late:
            assert np.all(action > 0)
    assert stats.misses == sum(late)
    assert stats.summary()["miss_rate"] == pytest.approx(sum(late) / len(late))


def test_hold_fallback_repeats_the_last_action():
    hz = 50.0
    loop, broker, sent = _loop(RampPolicy(action_horizon=2, delay_s=2 / hz), hz, fallback="hold")
    loop.run(steps=30)
    broker.close()
    assert loop.ticks[0].late is False  # primed: tick 0 has an action
    for prev, rec, action in zip(loop.ticks, loop.ticks[1:], sent[1:]):
        if rec.late:
            assert np.array_equal(action, prev.action)
    assert not any(np.array_equal(a, SAFE) for a in sent)


def test_fast_policy_meets_deadlines_and_prefetches():
    hz = 50.0
    loop, broker, sent = _loop(RampPolicy(action_horizon=8), hz, low_watermark=3)
    stats = loop.run(steps=40)
    broker.close()
    assert stats.misses <= 2, stats.summary()  # a loaded shared CPU may cost a tick or two, not more
    assert stats.summary()["chunks"] >= 4  # chunks were prefetched while actions executed
    calls = {int(a[0]) for a in sent if a[0] > 0}
    assert len(calls) >= 4


def test_fixed_rate_without_drift_and_overrun_accounting():
    """Simulated clock: deadlines stay on the t0 + k·period grid; a slow tick skips deadlines, counted."""
    now = [100.0]
    wakes: list[float] = []

    def clock() -> float:
        return now[0]

    def sleep(dt: float) -> None:
        now[0] += dt + 0.003  # every sleep oversleeps by 3 ms; must not accumulate
        wakes.append(now[0])

    applied = [0]

    def apply(action: np.ndarray) -> None:
        applied[0] += 1
        if applied[0] == 10:
            now[0] += 0.25  # one tick takes 2.5 periods

    policy = RampPolicy(action_horizon=1000)
    broker = ActionBroker(LocalChunkSource(policy, 0.1), low_watermark=0, clock=clock)
    loop = ControlLoop(broker, lambda: np.zeros(2, np.float32), apply, hz=10, clock=clock, sleep=sleep)
    stats = loop.run(steps=30)
    broker.close()
    offsets = [(w - 100.0) / 0.1 for w in wakes]
    assert all(abs(o - round(o) - 0.03) < 1e-6 for o in offsets)  # every wake is 3 ms past a grid point
    # deadline 101.0 passed entirely (skipped); 101.1 ran 53 ms late with *its* action, no misses
    assert stats.overruns == 1 and stats.ticks == 29 and stats.misses == 0
    assert broker.queue.dropped_due == 1
    assert sorted(stats.jitter_s)[-2] == pytest.approx(0.003, abs=1e-6)


def test_episode_end_resets_the_broker():
    policy = RampPolicy(action_horizon=4)
    broker = ActionBroker(LocalChunkSource(policy, 0.02), low_watermark=1)
    count = [0]

    def apply(a: np.ndarray) -> bool:
        count[0] += 1
        return count[0] == 5

    loop = ControlLoop(broker, lambda: np.zeros(2, np.float32), apply, hz=50)
    loop.run(steps=10)
    broker.close()
    assert loop.episodes == 1


def test_loop_with_remote_server():
    from fastpolicy.serve.client import PolicyClient
    from fastpolicy.serve.server import BackgroundServer, ServerConfig

    with BackgroundServer(
        RampPolicy(action_horizon=8), ServerConfig(port=0, token="x", control_period_s=0.02)
    ) as srv:
        client = PolicyClient(srv.url, "x")
        broker = ActionBroker(RemoteChunkSource(client), low_watermark=3)
        sent: list[np.ndarray] = []
        loop = ControlLoop(
            broker, lambda: np.zeros(2, np.float32), sent.append, hz=50, fallback="safe", safe_action=SAFE
        )
        stats = loop.run(steps=30)
        broker.close()
        client.close()
    assert stats.misses <= 3, stats.summary()
    assert sum(np.all(a > 0) for a in sent) >= 27


def test_bad_arguments():
    broker = ActionBroker(LocalChunkSource(RampPolicy(), 0.1))
    with pytest.raises(ValueError):
        ControlLoop(broker, lambda: np.zeros(2), lambda a: None, hz=10, fallback="panic")
    with pytest.raises(ValueError):
        ControlLoop(broker, lambda: np.zeros(2), lambda a: None, hz=0)
    broker.close()
    from fastpolicy.cli import main

    assert main(["control", "--task", "nonexistent-task"]) == 2  # neither checkpoint nor --server


# --------------------------------------------------------------------------- CUDA graph runner


def _sampler(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    for i in range(4):
        x = x - 0.1 * torch.tanh(x @ x.T @ x) + 0.01 * i * noise
    return x


def test_cuda_graph_runner_cpu_fallback():
    x, noise = torch.randn(4, 3), torch.randn(4, 3)
    runner = CudaGraphRunner(_sampler, [x, noise])
    assert runner.captured is False
    assert torch.allclose(runner(x, noise), _sampler(x, noise))
    assert torch.allclose(runner(x.numpy(), noise.numpy()), _sampler(x, noise))
    with pytest.raises(ValueError):
        runner(torch.randn(5, 3), noise)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_runner_replays_on_gpu():
    dev = torch.device("cuda")
    x, noise = torch.randn(4, 3, device=dev), torch.randn(4, 3, device=dev)
    runner = CudaGraphRunner(_sampler, [x, noise])
    assert runner.captured is True
    for _ in range(3):
        x2, n2 = torch.randn(4, 3, device=dev), torch.randn(4, 3, device=dev)
        assert torch.allclose(runner(x2, n2), _sampler(x2, n2), atol=1e-5)
    rng = np.random.default_rng(0)
    xh, nh = rng.standard_normal((4, 3), np.float32), rng.standard_normal((4, 3), np.float32)
    out = runner(xh, nh)  # numpy inputs go through pinned host buffers
    assert torch.allclose(out.cpu(), _sampler(torch.from_numpy(xh), torch.from_numpy(nh)), atol=1e-5)
