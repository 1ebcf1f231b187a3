"""The fleet policy server: websockets + msgpack, one session per connection, micro-batched inference.

Why this shape (compare openpi's websocket server, which serves one client at a time and never checks
the API key its client sends, and LeRobot's gRPC async inference, which ships pickled payloads):

* every connection is a ``ServerSession`` holding that robot's observation history and policy state
  (e.g. a streaming buffer) outside the model, so one model serves many robots;
* requests from all sessions go through one ``MicroBatcher``: inference runs on a worker thread, never
  on the event loop, in batches bounded by ``max_batch`` and ``max_wait_ms``;
* the token is checked in the HTTP handshake (``Authorization: Bearer <token>`` or ``?token=``,
  constant-time compare) and a bad one gets HTTP 401 before any websocket exists;
* every bad frame is answered with an ``error`` frame naming the problem (and its ``request_id`` whenever
  it can be read), and the session lives on;
* no non-finite number leaves the server or enters a session: an observation that drives the policy
  to NaN/inf (a finite but huge value) is answered with ``non_finite`` and the session's history and
  state stay as they were before the request;
  frames beyond a hard cap (4× the protocol limit) close the connection with 1009 so memory is bounded;
* ``/healthz`` (process alive) and ``/readyz`` (model warm, not draining) for orchestrators; idle
  sessions are closed; shutdown stops accepting, drains in-flight requests, then closes with a reason;
* logs are one JSON object per line.

Length: sessions, connection handling, health endpoints, draining shutdown and the background runner of
one server. The dependency-free ``builtin-mlp`` policy it can serve lives in
``fastpolicy.policies.builtin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import torch

from fastpolicy.policies.base import Policy, PolicyState
from fastpolicy.policies.history import ObservationHistory, all_finite
from fastpolicy.serve import protocol as P
from fastpolicy.serve.batching import MicroBatcher

log = logging.getLogger("fastpolicy.serve")

PROTOCOL_HEADER = P.PROTOCOL_HEADER


# --------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str | int = "INFO") -> None:
    """Route fastpolicy.* logs to stderr as JSON lines (the CLI calls this; libraries never do)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("fastpolicy", "websockets"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level if name == "fastpolicy" else logging.WARNING)
        lg.propagate = False


def _fields(**kw: Any) -> dict[str, Any]:
    return {"fields": kw}


# --------------------------------------------------------------------------- fingerprints


def policy_fingerprint(policy: Policy) -> str:
    """sha256 over the policy's tensors (its own ``state_dict`` or those of its nn.Module attributes)."""
    h = hashlib.sha256(type(policy).__qualname__.encode())
    modules: list[tuple[str, Any]] = []
    if hasattr(policy, "state_dict") and callable(policy.state_dict):
        modules.append(("", policy))
    else:
        modules.extend(sorted((k, v) for k, v in vars(policy).items() if isinstance(v, torch.nn.Module)))
    for prefix, mod in modules:
        for key, tensor in sorted(mod.state_dict().items()):
            h.update(f"{prefix}.{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for attr in ("obs_dim", "action_dim", "obs_horizon", "action_horizon", "method"):
        h.update(f"{attr}={getattr(policy, attr, None)}".encode())
    return "sha256:" + h.hexdigest()


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over a checkpoint file or directory (relative names + contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- sessions


@dataclass
class ServerConfig:
    """Everything the server needs besides the policy. Defaults suit a loopback test server."""

    host: str = "127.0.0.1"
    port: int = 8000  # 0: pick a free port (read it from ``PolicyServer.port``)
    token: str | None = None  # None: no auth (refused by the CLI on non-loopback hosts)
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_frame_bytes: int = P.DEFAULT_MAX_FRAME_BYTES
    idle_timeout_s: float = 300.0
    max_sessions: int = 256
    control_period_s: float = 0.05
    drain_timeout_s: float = 10.0
    model_id: str | None = None
    model_hash: str | None = None
    seed: int | None = 0

    @property
    def hard_frame_bytes(self) -> int:
        """Frames above this close the connection (1009); between the two limits: an error frame."""
        return 4 * self.max_frame_bytes


@dataclass
class ServerSession:
    """One connection's state, kept outside the model: observation history and policy state.

    The history is the ``ObservationHistory`` the local ``Session`` and the control broker use, so a
    served robot's window is padded and reset exactly as a local one's.
    """

    policy: Policy
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    requests: int = 0
    errors: int = 0
    created: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.history = ObservationHistory(self.policy.obs_horizon, batch_size=1)
        self.state: PolicyState = self.policy.init_state(1)

    def observe(self, frames: np.ndarray) -> None:
        """Append a request's (k, obs_dim) frames in order (NaN / inf refused with ``ValueError``)."""
        self.history.extend(frames)

    def snapshot(self) -> list[np.ndarray]:
        return self.history.snapshot()

    def restore(self, frames: list[np.ndarray]) -> None:
        """Undo :meth:`observe` of a request whose result was refused."""
        self.history.restore(frames)

    def window(self) -> np.ndarray:
        """(To, obs_dim), left-padded with the oldest frame as the training sampler pads."""
        return self.history.window()[0]


# --------------------------------------------------------------------------- server


class PolicyServer:
    """Serve ``policy`` over websockets. ``await start()``, ``await shutdown()``; or ``run_server``."""

    def __init__(self, policy: Policy, config: ServerConfig | None = None) -> None:
        self.policy = policy
        self.config = config or ServerConfig()
        self.spec = P.ObsSpec(obs_dim=policy.obs_dim, obs_horizon=policy.obs_horizon)
        self.sessions: dict[str, ServerSession] = {}
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.draining = False
        self.inflight = 0
        self.stats = {"connections": 0, "rejected_auth": 0, "requests": 0, "errors": 0}
        self._ws_server: Any = None
        self._closed: asyncio.Event | None = None
        self._model_id = self.config.model_id or getattr(policy, "method", type(policy).__name__)
        self._model_hash = self.config.model_hash or policy_fingerprint(policy)

    @property
    def port(self) -> int:
        if self._ws_server is None:
            raise RuntimeError("server not started")
        return self._ws_server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    def metadata(self, session_id: str) -> P.Metadata:
        return P.Metadata(
            model_id=self._model_id,
            model_hash=self._model_hash,
            method=str(getattr(self.policy, "method", "policy")),
            obs_schema=self.spec.schema(),
            obs_horizon=self.policy.obs_horizon,
            action_dim=self.policy.action_dim,
            action_horizon=self.policy.action_horizon,
            control_period_s=self.config.control_period_s,
            max_frame_bytes=self.config.max_frame_bytes,
            session_id=session_id,
            extra=self._metadata_extra(),
        )

    def _metadata_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms}
        sizes = tuple(getattr(self.policy, "graph_batch_sizes", ()) or ())
        if sizes:  # a graphed policy: the batch sizes it replays CUDA graphs at
            extra["graph_batch_sizes"] = list(sizes)
        return extra

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        cfg = self.config
        self._closed = asyncio.Event()
        self.batcher = MicroBatcher(
            self.policy,
            cfg.max_batch,
            cfg.max_wait_ms,
            None if cfg.seed is None else torch.Generator().manual_seed(cfg.seed),
            fill_target=lambda: len(self.sessions),
        )
        self.batcher.start()
        self._ws_server = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            max_size=cfg.hard_frame_bytes,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=5,
            server_header="fastpolicy",
        )
        log.info(
            "listening",
            extra=_fields(
                event="listening",
                host=cfg.host,
                port=self.port,
                model_id=self._model_id,
                model_hash=self._model_hash,
                max_batch=cfg.max_batch,
                max_wait_ms=cfg.max_wait_ms,
                auth=cfg.token is not None,
            ),
        )
        # Warm-up on the inference thread (first calls allocate); /readyz says 503 until it is done.
        window = np.zeros((1, self.policy.obs_horizon, self.policy.obs_dim), np.float32)
        await self.batcher.run_in_worker(self.policy.predict_chunk, window, self.policy.init_state(1), None)
        warmup = getattr(self.policy, "warmup", None)
        if callable(warmup) and getattr(self.policy, "graph_batch_sizes", ()):
            # capture every batch size's graphs (fresh and steady states) before the first session
            status = await self.batcher.run_in_worker(warmup, None, self.batcher.generator)
            log.info("cuda graphs", extra=_fields(event="cuda_graphs", **status))
        self.ready = True
        log.info("ready", extra=_fields(event="ready"))

    async def wait_closed(self) -> None:
        assert self._closed is not None
        await self._closed.wait()

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Stop accepting, let in-flight requests finish (≤ drain_timeout_s), close every session, stop."""
        if self.draining:
            await self.wait_closed()
            return
        self.draining = True
        log.info(
            "draining", extra=_fields(event="draining", sessions=len(self.sessions), inflight=self.inflight)
        )
        self._ws_server.server.close()  # stop listening; open connections are unaffected
        deadline = time.monotonic() + self.config.drain_timeout_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        from websockets.frames import CloseCode

        self._ws_server.close(code=CloseCode.GOING_AWAY, reason=reason)
        await self._ws_server.wait_closed()
        if self.batcher is not None:
            await self.batcher.close()
        log.info("stopped", extra=_fields(event="stopped", **self.stats))
        assert self._closed is not None
        self._closed.set()

    # ---- handshake

    def _authorized(self, request: Any) -> bool:
        expected = self.config.token
        if expected is None:
            return True
        header = request.headers.get("Authorization", "")
        given = ""
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :].strip()
        else:
            _, _, query = request.path.partition("?")
            values = parse_qs(query).get("token", [])
            given = values[0] if values else ""
        return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))

    def _process_request(self, connection: Any, request: Any) -> Any:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.ready and not self.draining:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        if self.draining or not self.ready:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "not accepting sessions\n")
        if not self._authorized(request):
            self.stats["rejected_auth"] += 1
            log.warning(
                "unauthorized", extra=_fields(event="unauthorized", peer=str(connection.remote_address))
            )
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="fastpolicy"'
            return response
        version = request.headers.get(PROTOCOL_HEADER)
        if version is not None and version != str(P.PROTOCOL_VERSION):
            return connection.respond(
                http.HTTPStatus.BAD_REQUEST,
                f"protocol {version} not supported; server speaks {P.PROTOCOL_VERSION}\n",
            )
        if len(self.sessions) >= self.config.max_sessions:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many sessions\n")
        return None

    # ---- sessions

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        session = ServerSession(self.policy)
        self.sessions[session.session_id] = session
        self.stats["connections"] += 1
        log.info(
            "connect",
            extra=_fields(
                event="connect",
                session=session.session_id,
                peer=str(ws.remote_address),
                sessions=len(self.sessions),
            ),
        )
        reason = "client closed"
        try:
            await ws.send(P.encode_metadata(self.metadata(session.session_id)))
            while True:
                try:
                    frame = await _with_timeout(ws.recv(), self.config.idle_timeout_s)
                except TimeoutError:
                    reason = "idle timeout"
                    await ws.close(1000, "idle timeout")
                    break
                reply = await self._handle_frame(session, frame)
                await ws.send(reply)
        except ConnectionClosed as exc:
            if exc.rcvd is None and exc.sent is not None:
                reason = f"closed by server ({exc.sent.code})"
            elif exc.rcvd is not None:
                reason = f"client closed ({exc.rcvd.code})"
            else:
                reason = "connection lost"
        finally:
            self.sessions.pop(session.session_id, None)
            log.info(
                "disconnect",
                extra=_fields(
                    event="disconnect",
                    session=session.session_id,
                    reason=reason,
                    requests=session.requests,
                    errors=session.errors,
                    sessions=len(self.sessions),
                ),
            )

    async def _handle_frame(self, session: ServerSession, frame: Any) -> bytes:
        t_recv = time.perf_counter()
        session.requests += 1
        self.stats["requests"] += 1
        try:
            request = P.decode_request(frame, self.spec, self.config.max_frame_bytes)
        except P.ProtocolError as exc:
            return self._error(session, exc.code, exc.message, exc.request_id)
        if self.draining:
            return self._error(session, P.UNAVAILABLE, "server is shutting down", request.request_id)
        if isinstance(request, P.ResetRequest):
            session.reset()
            return P.encode_reset_ok(request.request_id)
        before = session.snapshot()
        session.observe(request.obs)
        assert self.batcher is not None
        self.inflight += 1
        try:
            result = await self.batcher.submit(session.window(), session.state)
        except Exception as exc:
            session.restore(before)
            return self._error(
                session, P.INTERNAL, f"inference failed: {type(exc).__name__}: {exc}", request.request_id
            )
        finally:
            self.inflight -= 1
        n = result.actions.shape[0]
        period = self.config.control_period_s
        target_times = request.client_time + period * np.arange(n, dtype=np.float64)
        if not (all_finite(result.actions) and all_finite(result.state) and all_finite(target_times)):
            # Keep NaN out of the reply and out of the session: the next request sees the state from before.
            session.restore(before)
            return self._error(
                session,
                P.NON_FINITE,
                "the policy produced non-finite actions or state for this observation (values too large "
                "for the model?); the session's history and state are unchanged",
                request.request_id,
            )
        session.state = result.state
        reply = P.ActionsReply(
            request_id=request.request_id,
            actions=result.actions,
            target_times=target_times,
            client_time=request.client_time,
            server_time=time.time(),
            queue_ms=result.queue_s * 1e3,
            inference_ms=result.inference_s * 1e3,
            total_ms=(time.perf_counter() - t_recv) * 1e3,
            nfe=result.nfe,
            batch_size=result.batch_size,
        )
        return P.encode_actions(reply)

    def _error(self, session: ServerSession, code: str, message: str, request_id: int | None) -> bytes:
        session.errors += 1
        self.stats["errors"] += 1
        log.debug(
            "bad request",
            extra=_fields(
                event="error_reply",
                session=session.session_id,
                code=code,
                detail=message,
                request_id=request_id,
            ),
        )
        return P.encode_error(code, message, request_id)


async def _with_timeout(awaitable: Any, timeout_s: float) -> Any:
    """``asyncio.timeout`` where available (3.11+: no extra task per message), else ``wait_for``."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout_s):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout_s)


# --------------------------------------------------------------------------- running


def run_server(policy: Policy, config: ServerConfig) -> None:
    """Blocking: serve until SIGINT/SIGTERM, then shut down gracefully."""

    async def main() -> None:
        server = PolicyServer(policy, config)
        await server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(
                sig,
                lambda s=sig: loop.create_task(
                    server.shutdown(f"server shutting down ({signal.Signals(s).name})")
                ),
            )
        await server.wait_closed()

    asyncio.run(main())


class BackgroundServer:
    """Run a PolicyServer on its own event loop in a daemon thread (tests, benchmarks, notebooks).

    ``with BackgroundServer(policy, config) as srv: PolicyClient(srv.url, token)...``
    """

    def __init__(self, policy: Policy, config: ServerConfig | None = None) -> None:
        self.server = PolicyServer(policy, config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fastpolicy-server", daemon=True)
        self._started = False

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Any, timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the server's loop (thread-safe peek at server state)."""

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def start(self) -> BackgroundServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(60)
        self._started = True
        return self

    def stop(self, reason: str = "server shutting down") -> None:
        if self._started:
            asyncio.run_coroutine_threadsafe(self.server.shutdown(reason), self._loop).result(60)
            self._started = False
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
