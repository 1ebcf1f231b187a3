"""Policy server on 127.0.0.1: auth, sessions, micro-batching, limits, faults, shutdown, restart, CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from fastpolicy.policies.base import ChunkResult, Policy
from fastpolicy.policies.builtin import BuiltinMLPPolicy
from fastpolicy.serve import protocol as P
from fastpolicy.serve.batching import MicroBatcher
from fastpolicy.serve.client import AsyncPolicyClient, AuthenticationError, PolicyClient, ServerError
from fastpolicy.serve.server import BackgroundServer, JsonFormatter, ServerConfig

TOKEN = "t0ken"


class CounterPolicy(Policy):
    """Exact, checkable outputs: action[k] = last obs[:A] + 100·calls_so_far + k, per-session call counter.

    ``delay_s`` makes calls slow (so requests pile up); an observation with obs[0] == 666 raises.
    """

    method = "counter"

    def __init__(
        self,
        obs_dim: int = 3,
        action_dim: int = 2,
        obs_horizon: int = 2,
        action_horizon: int = 4,
        delay_s: float = 0.0,
    ) -> None:
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.obs_horizon, self.action_horizon = obs_horizon, action_horizon
        self.delay_s = delay_s
        self.calls = 0
        self.batch_sizes: list[int] = []

    def init_state(self, batch_size: int):
        return {"count": torch.zeros(batch_size, 1)}

    def predict_chunk(self, obs_window, state=None, generator=None) -> ChunkResult:
        obs = np.asarray(obs_window, np.float32)
        if np.any(obs[:, -1, 0] == 666):
            raise RuntimeError("poisoned observation")
        self.calls += 1
        self.batch_sizes.append(len(obs))
        if self.delay_s:
            time.sleep(self.delay_s)
        count = state["count"] if state is not None else torch.zeros(len(obs), 1)
        k = np.arange(self.action_horizon, dtype=np.float32)[None, :, None]
        actions = obs[:, -1:, : self.action_dim] + 100 * count.numpy()[:, :, None] + k
        return ChunkResult(actions.astype(np.float32), 1, {"count": count + 1})


def expected_counter(obs: np.ndarray, calls_before: int, horizon: int = 4, action_dim: int = 2) -> np.ndarray:
    return obs[:action_dim][None] + 100 * calls_before + np.arange(horizon, dtype=np.float32)[:, None]


def _server(policy: Policy | None = None, **cfg) -> BackgroundServer:
    cfg.setdefault("port", 0)
    cfg.setdefault("token", TOKEN)
    return BackgroundServer(policy or CounterPolicy(), ServerConfig(**cfg))


def _wait_for(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback only
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --------------------------------------------------------------------------- auth, health, metadata


def test_auth_health_and_metadata():
    with _server() as srv:
        http_base = srv.url.replace("ws://", "http://")
        assert _http(http_base + "/healthz")[0] == 200
        assert _http(http_base + "/readyz")[0] == 200
        with pytest.raises(AuthenticationError):
            PolicyClient(srv.url, "wrong")
        with pytest.raises(AuthenticationError):
            PolicyClient(srv.url, None)
        with pytest.raises(InvalidStatus) as info:
            connect(srv.url, additional_headers={"Authorization": "Bearer t0ke"}, proxy=None, legacy=True)
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
        # the token in a query parameter works too
        with connect(f"{srv.url}/?token={TOKEN}", proxy=None, legacy=True) as ws:
            meta = P.decode_reply(ws.recv(timeout=5))
        assert isinstance(meta, P.Metadata)
        assert srv.call(lambda: srv.server.stats["rejected_auth"]) == 3
        with PolicyClient(srv.url, TOKEN) as client:
            meta = client.metadata
            assert meta.protocol_version == P.PROTOCOL_VERSION and meta.method == "counter"
            assert meta.model_hash.startswith("sha256:") and meta.action_dim == 2 and meta.obs_horizon == 2
            assert meta.obs_schema[0]["shape"] == [3]
        # a client speaking another protocol version is refused before the upgrade
        with pytest.raises(InvalidStatus) as info:
            connect(
                srv.url,
                additional_headers={"Authorization": f"Bearer {TOKEN}", P.PROTOCOL_HEADER: "99"},
                proxy=None,
                legacy=True,
            )
        assert info.value.response.status_code == 400


def test_actions_have_target_times_and_timing_fields():
    with _server(control_period_s=0.1) as srv, PolicyClient(srv.url, TOKEN) as client:
        obs = np.array([1.0, 2.0, 3.0], np.float32)
        reply = client.infer(obs, client_time=50.0)
        assert np.allclose(reply.actions, expected_counter(obs, 0))
        assert np.allclose(reply.target_times, 50.0 + 0.1 * np.arange(4))
        assert reply.total_ms >= reply.inference_ms >= 0 and reply.queue_ms >= 0 and reply.nfe == 1
        # the server keeps per-session state: the counter advances, reset clears it
        assert np.allclose(client.infer(obs).actions, expected_counter(obs, 1))
        client.reset()
        assert np.allclose(client.infer(obs).actions, expected_counter(obs, 0))


def test_bad_input_gets_error_frame_and_session_lives():
    with _server() as srv, PolicyClient(srv.url, TOKEN) as client:
        with pytest.raises(ServerError) as info:
            client.infer(np.zeros(5, np.float32))
        assert info.value.code == P.BAD_SHAPE and "expects 3" in info.value.message
        reply = client.send_raw(b"\x81\xa4type\xa5infer")
        assert isinstance(reply, P.ErrorReply) and reply.code == P.MISSING_KEY
        reply = client.send_raw(
            P.pack({"type": "infer", "request_id": 4, "obs": np.array([np.nan, 0, 0]), "client_time": 0.0})
        )
        assert reply.code == P.NON_FINITE and reply.request_id == 4
        # an exception inside the policy: an "internal" error frame, the session lives on
        with pytest.raises(ServerError) as info:
            client.infer(np.array([666, 0, 0], np.float32))
        assert info.value.code == P.INTERNAL and "poisoned" in info.value.message
        assert client.infer(np.ones(3, np.float32)).actions.shape == (4, 2)


def test_oversized_frames():
    with _server(max_frame_bytes=4096) as srv:
        with PolicyClient(srv.url, TOKEN) as client:
            # above the protocol limit but under the hard cap: an error frame, the session lives on
            reply = client.send_raw(
                P.pack(
                    {"type": "infer", "request_id": 1, "obs": np.zeros(1500, np.float32), "client_time": 0.0}
                )
            )
            assert isinstance(reply, P.ErrorReply) and reply.code == P.OVERSIZED
            assert client.infer(np.ones(3, np.float32)).actions.shape == (4, 2)
        # above the hard cap (4 × the limit): refused by closing the connection with 1009
        ws = connect(
            srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None, legacy=True
        )
        ws.recv(timeout=5)
        ws.send(b"\x00" * (4 * 4096 + 1))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert _wait_for(lambda: srv.call(lambda: len(srv.server.sessions)) == 0)


# --------------------------------------------------------------------------- batching


def test_micro_batching_batches_and_each_session_gets_its_own_actions():
    policy = CounterPolicy(delay_s=0.02)
    n_sessions, rounds = 8, 4

    async def robot(url: str, i: int) -> list[np.ndarray]:
        out = []
        async with await AsyncPolicyClient.open(url, TOKEN) as client:
            for r in range(rounds):
                obs = np.array([i, r, 0], np.float32)
                reply = await client.infer(obs)
                assert np.allclose(reply.actions, expected_counter(obs, r)), (i, r, reply.actions)
                out.append(reply.batch_size)
        return out

    async def fleet(url: str) -> list[list[int]]:
        return await asyncio.gather(*[robot(url, i) for i in range(n_sessions)])

    with _server(policy, max_batch=8, max_wait_ms=30) as srv:
        batch_sizes = asyncio.run(fleet(srv.url))
    requests = n_sessions * rounds
    calls = policy.calls - 1  # minus the server's warm-up call
    assert calls < requests / 2, (calls, policy.batch_sizes)
    assert max(max(b) for b in batch_sizes) > 1


def test_unbatched_server_calls_once_per_request():
    policy = CounterPolicy()
    with _server(policy, max_batch=1) as srv:
        clients = [PolicyClient(srv.url, TOKEN) for _ in range(3)]
        for c in clients:
            c.infer(np.ones(3, np.float32))
        for c in clients:
            c.close()
    assert set(policy.batch_sizes[1:]) == {1} and policy.calls == 4


def test_batch_failure_is_isolated_to_the_bad_request():
    async def scenario() -> None:
        policy = CounterPolicy()
        batcher = MicroBatcher(policy, max_batch=4, max_wait_ms=50)
        batcher.start()
        good = np.ones((2, 3), np.float32)
        bad = np.full((2, 3), 666, np.float32)
        results = await asyncio.gather(
            batcher.submit(good, policy.init_state(1)),
            batcher.submit(bad, policy.init_state(1)),
            batcher.submit(good, policy.init_state(1)),
            return_exceptions=True,
        )
        assert isinstance(results[1], RuntimeError)
        assert results[0].actions.shape == (4, 2) and results[2].actions.shape == (4, 2)
        assert batcher.pending == 0
        await batcher.close()

    asyncio.run(scenario())


def test_builtin_mlp_batched_equals_unbatched():
    policy = BuiltinMLPPolicy(obs_dim=5, action_dim=2, hidden=32)
    obs = np.random.default_rng(0).standard_normal((3, 2, 5)).astype(np.float32)
    batched = policy.predict_chunk(obs, policy.init_state(3))
    for i in range(3):
        single = policy.predict_chunk(obs[i : i + 1], policy.init_state(1))
        assert np.allclose(single.actions[0], batched.actions[i], atol=1e-5)
        assert torch.allclose(single.state["buffer"], batched.state["buffer"][i : i + 1], atol=1e-5)


# --------------------------------------------------------------------------- faults and lifecycle


def test_disconnect_mid_request_leaks_nothing():
    policy = CounterPolicy(delay_s=0.3)
    with _server(policy) as srv:
        ws = connect(
            srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None, legacy=True
        )
        ws.recv(timeout=5)
        ws.send(P.encode_infer(1, np.ones(3, np.float32), 0.0))
        assert _wait_for(lambda: srv.call(lambda: srv.server.inflight) == 1, 2)
        ws.close()  # gone before the reply
        assert _wait_for(
            lambda: (
                srv.call(lambda: (len(srv.server.sessions), srv.server.inflight, srv.server.batcher.pending))
                == (0, 0, 0)
            )
        )
        # the server is healthy afterwards
        with PolicyClient(srv.url, TOKEN) as client:
            assert client.infer(np.ones(3, np.float32)).actions.shape == (4, 2)


def test_client_reconnects_after_server_restart():
    srv = _server().start()
    port = srv.port
    client = PolicyClient(srv.url, TOKEN, backoff_initial_s=0.02, reconnect_timeout_s=20)
    obs = np.ones(3, np.float32)
    client.infer(obs)
    srv.stop()

    replacement: list[BackgroundServer] = []

    def restart() -> None:
        time.sleep(0.3)
        replacement.append(_server(port=port).start())

    t = threading.Thread(target=restart)
    t.start()
    try:
        reply = client.infer(obs)  # first attempt hits the closed connection, then reconnects with backoff
        assert client.reconnects >= 1
        assert np.allclose(reply.actions, expected_counter(obs, 0))  # a fresh session on the new server
    finally:
        t.join()
        client.close()
        for s in replacement:
            s.stop()


def test_async_client_reconnects_after_server_restart():
    async def scenario() -> None:
        srv = _server().start()
        port = srv.port
        client = await AsyncPolicyClient.open(srv.url, TOKEN, backoff_initial_s=0.02)
        await client.infer(np.ones(3, np.float32))
        await asyncio.to_thread(srv.stop)
        srv2 = await asyncio.to_thread(lambda: _server(port=port).start())
        try:
            reply = await client.infer(np.ones(3, np.float32))
            assert reply.actions.shape == (4, 2) and client.reconnects == 1
        finally:
            await client.close()
            await asyncio.to_thread(srv2.stop)

    asyncio.run(scenario())


def test_graceful_shutdown_drains_in_flight_requests():
    policy = CounterPolicy(delay_s=0.3)
    srv = _server(policy).start()
    client = PolicyClient(srv.url, TOKEN, reconnect=False)
    result: dict = {}

    def call() -> None:
        try:
            result["reply"] = client.infer(np.ones(3, np.float32))
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=call)
    t.start()
    assert _wait_for(lambda: srv.call(lambda: srv.server.inflight) == 1, 2)
    srv.stop("maintenance")
    t.join(5)
    assert "reply" in result, result  # the in-flight request was answered before closing
    with pytest.raises(ConnectionClosed) as info:
        client._ws.recv(timeout=2)
    assert info.value.rcvd.code == 1001 and info.value.rcvd.reason == "maintenance"
    client.close()


def test_idle_sessions_are_closed_and_session_cap_enforced():
    with _server(idle_timeout_s=0.3, max_sessions=1) as srv:
        ws = connect(
            srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None, legacy=True
        )
        ws.recv(timeout=5)
        with pytest.raises(InvalidStatus) as info:
            PolicyClient(srv.url, TOKEN, reconnect=False)
        assert info.value.response.status_code == 503
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.reason == "idle timeout"
        assert _wait_for(lambda: srv.call(lambda: len(srv.server.sessions)) == 0)


def test_json_log_lines():
    record = logging.LogRecord("fastpolicy.serve", logging.INFO, __file__, 1, "connect", None, None)
    record.fields = {"event": "connect", "session": "abc"}
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["event"] == "connect" and data["session"] == "abc" and data["level"] == "info"


def test_serve_cli_end_to_end():
    """`fastpolicy serve builtin-mlp --port 0` in a subprocess: JSON logs, serves, SIGTERM → clean exit."""
    env = {**os.environ, "FASTPOLICY_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpolicy.cli",
            "serve",
            "builtin-mlp",
            "--port",
            "0",
            "--builtin-hidden",
            "32",
            "--threads",
            "1",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            event = json.loads(line)  # every log line is JSON
            if event.get("event") == "listening":
                port = event["port"]
            if event.get("event") == "ready":
                break
        assert port, lines
        with PolicyClient(f"ws://127.0.0.1:{port}", TOKEN) as client:
            assert client.metadata.model_id == "builtin-mlp"
            assert client.infer(np.zeros(16, np.float32)).actions.shape == (8, 4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        rest = [json.loads(x) for x in proc.stderr.read().splitlines() if x.strip()]
        assert any(e.get("event") == "stopped" for e in rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_cli_refuses_public_bind_without_token():
    from fastpolicy.cli import main

    env_token = os.environ.pop("FASTPOLICY_TOKEN", None)
    try:
        assert main(["serve", "builtin-mlp", "--host", "0.0.0.0"]) == 2
        assert main(["serve", "/nonexistent/ckpt"]) == 2
    finally:
        if env_token is not None:
            os.environ["FASTPOLICY_TOKEN"] = env_token
