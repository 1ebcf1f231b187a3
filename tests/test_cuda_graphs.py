"""fastpolicy.policies.cuda_graphs: graph replay equals the eager call; every fallback is eager and says why.

Without a GPU the capture logic runs in dry-run mode (the replay-mode program with every substitution a
graph uses: static noise, recorded host reads, mask indices, outputs); tests marked ``gpu`` capture real
CUDA graphs and are skipped without CUDA.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpolicy.policies.base import ChunkResult, Policy
from fastpolicy.policies.consistency import ConsistencyPolicy, ConsistencyPolicyConfig
from fastpolicy.policies.cuda_graphs import (
    GraphedPolicy,
    compare_precision,
    graphed,
    padded_size,
    parse_batch_sizes,
    plan_batches,
)
from fastpolicy.policies.diffusion_policy import DiffusionPolicy
from fastpolicy.policies.streaming import StreamingPolicy

ROOT = Path(__file__).resolve().parents[1]
TINY = {"obs_dim": 3, "action_dim": 2, "backbone": "unet-small", "backbone_kwargs": {"down_dims": [16, 32]}}
CUDA = torch.cuda.is_available()


def _consistency(**kw) -> ConsistencyPolicy:
    cfg = {**TINY, **kw}
    names = {f.name for f in dataclasses.fields(ConsistencyPolicyConfig)}
    if kw.get("streaming") and "teacher_sampler" in names:
        cfg["teacher_sampler"] = "ode:6"  # the student's grid is its SDP teacher's stream
    return ConsistencyPolicy.from_config(cfg)


def make(name: str, device: str = "cpu"):
    torch.manual_seed(0)
    policy = {
        "ddim10": lambda: DiffusionPolicy.from_config({**TINY, "sampler": "ddim:10"}),
        "ddpm10": lambda: DiffusionPolicy.from_config({**TINY, "sampler": "ddpm:10"}),
        "ddim-t0": lambda: DiffusionPolicy.from_config({**TINY, "sampler": "ddim:4,temperature=0"}),
        "student-1call": lambda: _consistency(steps=1),
        "student-2calls": lambda: _consistency(steps=2),
        "streaming-student-1call": lambda: _consistency(streaming=True, segments=3, action_horizon=4),
        "streaming-ode6": lambda: StreamingPolicy.from_config({**TINY, "stream": "ode:6"}),
    }[name]()
    return policy.to(device).eval()


def _obs(policy, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, policy.obs_horizon, policy.obs_dim)).astype(np.float32)


def _host(state):
    return None if state is None else {k: v.detach().cpu() for k, v in state.items()}


def _assert_same(eager: ChunkResult, other: ChunkResult, atol: float = 0.0) -> None:
    np.testing.assert_allclose(other.actions, eager.actions, rtol=0, atol=atol)
    assert other.nfe == eager.nfe
    if eager.state is None:
        assert other.state is None
        return
    for k, v in _host(eager.state).items():
        torch.testing.assert_close(other.state[k].cpu(), v, rtol=0, atol=atol)


# --------------------------------------------------------------------------- batching helpers


def test_plan_batches_pads_the_remainder_to_the_next_captured_size():
    assert plan_batches(1, (1, 64)) == [(1, 1)]
    assert plan_batches(5, (1, 8, 64)) == [(5, 8)]
    assert plan_batches(70, (1, 64)) == [(64, 64), (6, 64)]
    assert plan_batches(128, (1, 64)) == [(64, 64), (64, 64)]
    assert plan_batches(0, (1, 64)) == []
    assert padded_size(2, (1, 4)) == 4
    with pytest.raises(ValueError, match="exceeds"):
        padded_size(5, (1, 4))
    assert parse_batch_sizes("64, 1,1") == (1, 64)
    for bad in ("", "0,4", "a"):
        with pytest.raises(ValueError):
            parse_batch_sizes(bad)


# --------------------------------------------------------------------------- fallbacks (CPU)


@pytest.mark.parametrize("name", ["ddim10", "streaming-student-1call"])
def test_on_cpu_the_wrapper_is_the_eager_policy_and_says_why(name, caplog):
    policy = make(name)
    with caplog.at_level(logging.INFO, logger="fastpolicy.policies.cuda_graphs"):
        wrapped = graphed(policy, batch_sizes=(1, 4), dtype="bf16")
    assert not wrapped.active and wrapped.graph_batch_sizes == ()
    assert "CUDA graphs need a CUDA device" in wrapped.fallback_reason
    assert "CUDA graphs need a CUDA device" in caplog.text
    state_e, state_w = policy.init_state(3), wrapped.init_state(3)
    for k in range(3):  # streaming: fresh, then steady steps
        eager = policy.predict_chunk(_obs(policy, 3, k), state_e, torch.Generator().manual_seed(k))
        mine = wrapped.predict_chunk(_obs(policy, 3, k), state_w, torch.Generator().manual_seed(k))
        _assert_same(eager, mine)  # bit for bit: fp32 eager, the dtype does not apply off the graph path
        state_e, state_w = eager.state, mine.state
    assert wrapped.warmup()["active"] is False


def test_a_policy_that_is_not_a_torch_module_is_served_eagerly():
    class Plain(Policy):
        obs_dim, action_dim, obs_horizon, action_horizon = 3, 2, 1, 2

        def predict_chunk(self, obs_window, state=None, generator=None):
            return ChunkResult(np.zeros((len(obs_window), 2, 2), np.float32), 0, state)

    wrapped = GraphedPolicy(Plain(), dry_run=True)
    assert "not a torch policy" in wrapped.fallback_reason
    assert wrapped.predict_chunk(np.zeros((2, 1, 3), np.float32)).actions.shape == (2, 2, 2)


class _RandpermPolicy(DiffusionPolicy):
    """Draws with an op a replay cannot reproduce (randperm): capture must refuse, not guess."""

    def predict_chunk(self, obs_window, state=None, generator=None):
        result = super().predict_chunk(obs_window, state, generator)
        order = torch.randperm(result.actions.shape[0], generator=generator).numpy()
        return ChunkResult(result.actions[order], result.nfe, result.state)


class _HostPostprocessPolicy(DiffusionPolicy):
    """Computes on the host after the device→host copy: a graph would replay a stale value."""

    def predict_chunk(self, obs_window, state=None, generator=None):
        result = super().predict_chunk(obs_window, state, generator)
        return ChunkResult(result.actions * 2.0, result.nfe, result.state)


@pytest.mark.parametrize("cls, reason", [(_RandpermPolicy, "randperm"),
                                         (_HostPostprocessPolicy, "computed on the host")])
def test_an_uncapturable_call_runs_eagerly_and_says_why(cls, reason, caplog):
    torch.manual_seed(0)
    policy = cls.from_config({**TINY, "sampler": "ddim:4"}).eval()
    wrapped = GraphedPolicy(policy, (2,), dry_run=True)
    with caplog.at_level(logging.WARNING, logger="fastpolicy.policies.cuda_graphs"):
        for k in range(2):
            eager = policy.predict_chunk(_obs(policy, 2, k), None, torch.Generator().manual_seed(k))
            mine = wrapped.predict_chunk(_obs(policy, 2, k), None, torch.Generator().manual_seed(k))
            _assert_same(eager, mine)
    assert reason in " ".join(wrapped.status()["failures"])
    assert "running eagerly" in caplog.text and reason in caplog.text


# --------------------------------------------------------------------------- the capture logic (dry run)


@pytest.mark.parametrize("name", ["ddim10", "ddpm10", "student-1call", "student-2calls",
                                  "streaming-student-1call", "streaming-ode6"])
def test_dry_run_replay_equals_the_eager_call_for_the_same_generator(name):
    policy = make(name)
    wrapped = GraphedPolicy(policy, (1, 4), dry_run=True)
    state_e, state_w = policy.init_state(4), wrapped.init_state(4)
    for k in range(4):  # record+capture, then replays; streaming: the fresh and the steady programs
        eager = policy.predict_chunk(_obs(policy, 4, k), state_e, torch.Generator().manual_seed(k))
        mine = wrapped.predict_chunk(_obs(policy, 4, k), state_w, torch.Generator().manual_seed(k))
        _assert_same(eager, mine)
        state_e, state_w = eager.state, mine.state
    status = wrapped.status()
    assert status["active"] and not status["failures"]
    assert status["graphs"] == (2 if name.startswith("streaming") else 1)


class _SpyPolicy(DiffusionPolicy):
    seen: list[int]

    def predict_chunk(self, obs_window, state=None, generator=None):
        self.seen.append(len(obs_window))
        return super().predict_chunk(obs_window, state, generator)


def _spy() -> _SpyPolicy:
    torch.manual_seed(0)
    policy = _SpyPolicy.from_config({**TINY, "sampler": "ddim:4,temperature=0"}).eval()
    policy.seen = []
    return policy


def test_batches_are_padded_to_captured_sizes_and_sliced():
    # temperature 0: each row's actions depend on its observation only, so padding must not show
    policy = _spy()
    wrapped = GraphedPolicy(policy, (1, 4), dry_run=True)
    for batch in (3, 1, 6, 4):
        obs = _obs(policy, batch, batch)
        eager = DiffusionPolicy.predict_chunk(policy, obs, None, None)
        mine = wrapped.predict_chunk(obs, None, torch.Generator().manual_seed(0))
        np.testing.assert_allclose(mine.actions, eager.actions, rtol=0, atol=1e-4)  # batch-size rounding
    assert set(policy.seen) <= {1, 4}  # the wrapped policy only ever ran at captured sizes
    assert wrapped.status()["graphs"] == 2


def test_mixed_streaming_states_are_grouped_by_signature():
    policy = make("streaming-ode6")
    wrapped = GraphedPolicy(policy, (1, 4), dry_run=True)
    state = wrapped.predict_chunk(_obs(policy, 3, 0), None, torch.Generator().manual_seed(0)).state
    fresh = wrapped.init_state(1)
    mixed = {k: v.clone() for k, v in state.items()}
    for k in mixed:
        mixed[k][1] = fresh[k][0]  # row 1 starts a new episode, rows 0 and 2 are steady
    out = wrapped.predict_chunk(_obs(policy, 3, 1), mixed, torch.Generator().manual_seed(1))
    assert out.actions.shape == (3, policy.action_horizon, 2) and np.isfinite(out.actions).all()
    steady = wrapped.predict_chunk(_obs(policy, 3, 1), state, torch.Generator().manual_seed(1))
    # the steady rows ran the steady program; the fresh row the warm-up one (more calls)
    assert out.nfe > steady.nfe
    torch.testing.assert_close(out.state["levels"][[0, 2]], steady.state["levels"][[0, 2]])
    assert wrapped.status()["failures"] == []


def test_warmup_captures_the_recurring_signatures():
    wrapped = GraphedPolicy(make("streaming-student-1call"), (1, 2), dry_run=True)
    status = wrapped.warmup(generator=torch.Generator())
    assert status["graphs"] == 4  # fresh and steady, at each size


def test_compare_precision_bf16_is_close_to_fp32():
    report = compare_precision(make("student-1call"), "bf16", batch_size=2, calls=2, dry_run=True)
    assert report.ok and report.rel_rms < report.tolerance
    assert report.status["dtype"] == "bfloat16" and report.status["active"]


# --------------------------------------------------------------------------- server


def test_server_batches_sessions_into_captured_sizes():
    pytest.importorskip("websockets")
    from fastpolicy.serve.client import AsyncPolicyClient
    from fastpolicy.serve.server import BackgroundServer, ServerConfig

    policy = _spy()
    wrapped = GraphedPolicy(policy, (1, 4), dry_run=True)
    windows = [_obs(policy, 1, i)[0] for i in range(3)]
    expected = [DiffusionPolicy.predict_chunk(policy, w[None], None, None).actions[0] for w in windows]
    policy.seen.clear()
    config = ServerConfig(port=0, token="t", max_batch=64, max_wait_ms=50.0)

    async def fleet(url: str):
        clients = [await AsyncPolicyClient.open(url, "t") for _ in windows]
        try:
            assert clients[0].metadata.extra["graph_batch_sizes"] == [1, 4]
            # each client sends its whole window (To frames) as one observation history
            replies = await asyncio.gather(*[c.infer(w) for c, w in zip(clients, windows)])
        finally:
            for c in clients:
                await c.close()
        return replies

    with BackgroundServer(wrapped, config) as srv:
        replies = asyncio.run(fleet(srv.url))
        batcher = srv.server.batcher
        assert batcher.max_batch == 4  # capped at the largest captured size
        padded = srv.call(lambda: list(batcher.padded_sizes))
    for reply, want in zip(replies, expected):
        np.testing.assert_allclose(reply.actions, want, rtol=0, atol=1e-4)
    assert padded and set(padded) <= {1, 4}
    assert set(policy.seen) <= {1, 4}  # warm-up and serving alike


# --------------------------------------------------------------------------- the GPU check script


def _bench_gpu():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return bench_gpu


@pytest.mark.skipif(CUDA, reason="checks the message a machine without CUDA prints")
def test_gpu_check_without_cuda_exits_with_one_line(capsys):
    assert _bench_gpu().main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


def test_gpu_check_quick_dry_run_writes_valid_rows(tmp_path):
    from fastpolicy.evaluation.results import read_results

    # cm-1step: an older id, accepted as student-1call
    code = _bench_gpu().main(["--quick", "--out-dir", str(tmp_path), "--methods", "cm-1step",
                              "streaming-student-1call", "--samples", "2", "--warmup", "1",
                              "--server-sessions", "2", "--server-duration-s", "1"])
    assert code == 0
    rows = read_results(tmp_path / "gpu_latency.json")
    assert {(r["method"], r["batch_size"], r["variant"]) for r in rows} == {
        (m, b, v) for m in ("student-1call", "streaming-student-1call") for b in (1, 4)
        for v in ("eager", "graph", "graph-bf16")}
    assert all(r["status"] == "ok" and r["samples"] == 2 and r["dry_run"] for r in rows)
    assert all(r["graph_status"]["active"] for r in rows if r["variant"] != "eager")
    assert all(r["bf16_ok"] for r in rows if r["variant"] == "graph-bf16" and r["batch_size"] == 1)
    (serve,) = read_results(tmp_path / "gpu_serve.json")
    assert serve["status"] == "ok" and serve["sessions"] == 2 and serve["requests"] > 0


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", ["ddim10", "ddpm10", "student-1call", "student-2calls",
                                  "streaming-student-1call", "streaming-ode6"])
def test_cuda_graph_replay_equals_eager(name):
    policy = make(name, "cuda")
    wrapped = GraphedPolicy(policy, (1, 4))
    state_e, state_w = policy.init_state(4), wrapped.init_state(4)
    for k in range(4):
        eager = policy.predict_chunk(_obs(policy, 4, k), state_e, torch.Generator().manual_seed(k))
        mine = wrapped.predict_chunk(_obs(policy, 4, k), state_w, torch.Generator().manual_seed(k))
        _assert_same(eager, mine, atol=1e-5)
        state_e, state_w = eager.state, mine.state
    status = wrapped.status()
    assert status["active"] and not status["failures"], status
    assert status["graphs"] == (2 if name.startswith("streaming") else 1)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graph_bf16_is_validated_against_fp32():
    report = compare_precision(make("student-1call", "cuda"), "bf16", batch_size=4, calls=4)
    assert report.ok and report.status["active"] and not report.status["failures"], report
