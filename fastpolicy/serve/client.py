"""Clients for the fastpolicy policy server: a blocking ``PolicyClient`` and an ``AsyncPolicyClient``.

Both speak ``fastpolicy.serve.protocol``: they send the token in the handshake
(``Authorization: Bearer``), read the server's metadata frame first (and refuse another protocol
version), then exchange one request frame for one reply frame. A lost connection is re-established
with exponential backoff (with jitter, bounded by ``reconnect_timeout_s``) and the request is sent
once more; the new connection is a fresh server session, which is why requests carry the observation
window rather than relying on server-side history alone. A wrong token is never retried.

The action-chunk broker that turns replies into on-time actions lives in ``fastpolicy.control.broker``.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import numpy as np

from fastpolicy.serve import protocol as P

PROTOCOL_HEADER = P.PROTOCOL_HEADER


class ServerError(RuntimeError):
    """The server answered with an error frame."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


class AuthenticationError(ConnectionError):
    """The server refused the token (HTTP 401). Not retried."""


def _headers(token: str | None) -> dict[str, str]:
    headers = {PROTOCOL_HEADER: str(P.PROTOCOL_VERSION)}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _check_reply(reply: Any, request_id: int, expected: type) -> Any:
    if isinstance(reply, P.ErrorReply):
        raise ServerError(reply.code, reply.message, reply.request_id)
    if not isinstance(reply, expected):
        raise P.ProtocolError(P.UNKNOWN_MESSAGE, f"expected {expected.__name__}, got {type(reply).__name__}")
    if reply.request_id != request_id:
        raise P.ProtocolError(P.BAD_VALUE, f"reply for request {reply.request_id}, expected {request_id}")
    return reply


class _Backoff:
    """Exponential backoff with full jitter: sleep U(0, min(max, initial · 2^attempt))."""

    def __init__(self, initial_s: float, max_s: float, timeout_s: float) -> None:
        self.initial_s, self.max_s, self.timeout_s = initial_s, max_s, timeout_s
        self.attempt = 0
        self.started = time.monotonic()

    def next_delay(self) -> float | None:
        if time.monotonic() - self.started > self.timeout_s:
            return None
        delay = random.uniform(0.5, 1.0) * min(self.max_s, self.initial_s * 2**self.attempt)
        self.attempt += 1
        return delay


class _ClientBase:
    """Connection settings and per-session bookkeeping shared by the sync and async clients."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        connect_timeout_s: float = 5.0,
        reply_timeout_s: float = 10.0,
        reconnect: bool = True,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        reconnect_timeout_s: float = 30.0,
        max_frame_bytes: int = 64 * P.DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.url, self.token = url, token
        self.connect_timeout_s, self.reply_timeout_s = connect_timeout_s, reply_timeout_s
        self.reconnect_enabled = reconnect
        self.backoff = (backoff_initial_s, backoff_max_s, reconnect_timeout_s)
        self.max_frame_bytes = max_frame_bytes
        self.reconnects = 0
        self._ws: Any = None
        self._metadata: P.Metadata | None = None
        self._next_id = 0

    @property
    def metadata(self) -> P.Metadata:
        assert self._metadata is not None
        return self._metadata

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id


class PolicyClient(_ClientBase):
    """Blocking client: ``PolicyClient(url, token).infer(obs) -> ActionsReply``.

    ``obs`` is (obs_dim,) or (k, obs_dim) with k ≤ the model's obs horizon (oldest first). ``client_time``
    defaults to ``time.monotonic()``; the reply's ``target_times`` are on that clock.
    """

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        super().__init__(url, token, **options)
        self.connect()

    def _connect_once(self) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        try:
            ws = connect(
                self.url,
                additional_headers=_headers(self.token),
                open_timeout=self.connect_timeout_s,
                max_size=self.max_frame_bytes,
                compression=None,
                close_timeout=2,
                proxy=None,
                legacy=True,
            )
        except InvalidStatus as exc:
            if _status_of(exc) == 401:
                raise AuthenticationError(f"{self.url}: server refused the token (HTTP 401)") from None
            raise
        try:
            meta = P.decode_reply(ws.recv(timeout=self.connect_timeout_s), self.max_frame_bytes)
            if not isinstance(meta, P.Metadata):
                raise P.ProtocolError(
                    P.UNKNOWN_MESSAGE, f"first frame must be metadata, got {type(meta).__name__}"
                )
        except BaseException:
            ws.close()
            raise
        self._ws, self._metadata = ws, meta

    def connect(self) -> None:
        """Connect (retrying with backoff when ``reconnect`` is on); raises after the reconnect timeout."""
        from websockets.exceptions import InvalidHandshake, WebSocketException

        backoff = _Backoff(*self.backoff)
        while True:
            try:
                self._connect_once()
                return
            except AuthenticationError:
                raise
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException):
                delay = backoff.next_delay() if self.reconnect_enabled else None
                if delay is None:
                    raise
                time.sleep(delay)

    def _reconnect(self) -> None:
        self._drop()
        self.reconnects += 1
        self.connect()

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None

    def _roundtrip(self, frame: bytes) -> Any:
        from websockets.exceptions import ConnectionClosed

        for attempt in (0, 1):
            try:
                if self._ws is None:
                    self.connect()
                self._ws.send(frame)
                return P.decode_reply(self._ws.recv(timeout=self.reply_timeout_s), self.max_frame_bytes)
            except TimeoutError:
                self._drop()  # a late reply would be mistaken for the next one: start clean
                raise
            except (ConnectionClosed, OSError):
                if not self.reconnect_enabled or attempt == 1:
                    self._drop()
                    raise
                self._reconnect()
        raise AssertionError("unreachable")

    def infer(self, obs: np.ndarray, client_time: float | None = None) -> P.ActionsReply:
        rid = self._new_id()
        t = time.monotonic() if client_time is None else client_time
        return _check_reply(self._roundtrip(P.encode_infer(rid, obs, t)), rid, P.ActionsReply)

    def reset(self) -> None:
        """Clear the server session's history and policy state (a new episode)."""
        rid = self._new_id()
        _check_reply(self._roundtrip(P.encode_reset(rid)), rid, P.ResetRequest)

    def send_raw(self, frame: bytes | str) -> Any:
        """Send an arbitrary frame and decode the reply (for tests and protocol debugging)."""
        self._ws.send(frame)
        return P.decode_reply(self._ws.recv(timeout=self.reply_timeout_s), self.max_frame_bytes)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncPolicyClient(_ClientBase):
    """asyncio client: ``client = await AsyncPolicyClient.open(url, token)``; ``await client.infer(obs)``.

    Requests on one client are serialised (one in flight per session, as the server expects).
    """

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        super().__init__(url, token, **options)
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, token: str | None = None, **kwargs: Any) -> AsyncPolicyClient:
        client = cls(url, token, **kwargs)
        await client.connect()
        return client

    async def _connect_once(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        try:
            ws = await connect(
                self.url,
                additional_headers=_headers(self.token),
                open_timeout=self.connect_timeout_s,
                max_size=self.max_frame_bytes,
                compression=None,
                close_timeout=2,
                proxy=None,
            )
        except InvalidStatus as exc:
            if _status_of(exc) == 401:
                raise AuthenticationError(f"{self.url}: server refused the token (HTTP 401)") from None
            raise
        try:
            raw = await asyncio.wait_for(ws.recv(), self.connect_timeout_s)
            meta = P.decode_reply(raw, self.max_frame_bytes)
            if not isinstance(meta, P.Metadata):
                raise P.ProtocolError(
                    P.UNKNOWN_MESSAGE, f"first frame must be metadata, got {type(meta).__name__}"
                )
        except BaseException:
            await ws.close()
            raise
        self._ws, self._metadata = ws, meta

    async def connect(self) -> None:
        from websockets.exceptions import InvalidHandshake, WebSocketException

        backoff = _Backoff(*self.backoff)
        while True:
            try:
                await self._connect_once()
                return
            except AuthenticationError:
                raise
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException):
                delay = backoff.next_delay() if self.reconnect_enabled else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def _drop(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            try:
                await ws.close()
            except Exception:
                pass

    async def _roundtrip(self, frame: bytes) -> Any:
        from websockets.exceptions import ConnectionClosed

        async with self._lock:
            for attempt in (0, 1):
                try:
                    if self._ws is None:
                        await self.connect()
                    await self._ws.send(frame)
                    raw = await asyncio.wait_for(self._ws.recv(), self.reply_timeout_s)
                    return P.decode_reply(raw, self.max_frame_bytes)
                except TimeoutError:
                    await self._drop()
                    raise
                except (ConnectionClosed, OSError):
                    if not self.reconnect_enabled or attempt == 1:
                        await self._drop()
                        raise
                    await self._drop()
                    self.reconnects += 1
                    await self.connect()
        raise AssertionError("unreachable")

    async def infer(self, obs: np.ndarray, client_time: float | None = None) -> P.ActionsReply:
        rid = self._new_id()
        t = time.monotonic() if client_time is None else client_time
        return _check_reply(await self._roundtrip(P.encode_infer(rid, obs, t)), rid, P.ActionsReply)

    async def reset(self) -> None:
        rid = self._new_id()
        _check_reply(await self._roundtrip(P.encode_reset(rid)), rid, P.ResetRequest)

    async def send_raw(self, frame: bytes | str) -> Any:
        """Send an arbitrary frame and decode the reply (for tests and protocol debugging)."""
        async with self._lock:
            await self._ws.send(frame)
            raw = await asyncio.wait_for(self._ws.recv(), self.reply_timeout_s)
            return P.decode_reply(raw, self.max_frame_bytes)

    async def close(self) -> None:
        await self._drop()

    async def __aenter__(self) -> AsyncPolicyClient:
        if self._ws is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
