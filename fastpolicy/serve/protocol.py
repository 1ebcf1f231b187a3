"""The fastpolicy wire protocol: binary msgpack frames with numpy arrays as an explicit extension type.

Why a module of its own: the server, the clients, the fuzz tests and other-language clients must agree
on one definition. Everything that crosses the trust boundary goes through ``decode_*`` here, which
validates structure, types, shapes, dtypes and finiteness and raises ``ProtocolError(code, message)``
naming the problem. There is no pickle anywhere: arrays travel as (dtype string from an allow-list,
shape, raw little-endian bytes) inside msgpack ExtType ``EXT_NDARRAY``. See ``docs/protocol.md``.

Every client frame gets exactly one reply frame (``actions``, ``reset_ok`` or ``error``), so a client
can match replies to requests by order as well as by ``request_id``.

Length: every message's encoder and validating decoder, in one place on purpose: the one definition the
server, the clients and other-language clients follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Fastpolicy-Protocol"  # optional handshake header: the version the client speaks
EXT_NDARRAY = 1  # msgpack ExtType code for numpy arrays
DEFAULT_MAX_FRAME_BYTES = 1 << 20  # protocol limit: larger frames are answered with an "oversized" error
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 24  # no array may declare more elements than this, whatever its bytes say
_MAX_STR = 4096
_MAX_CONTAINER = 4096
_MAX_REQUEST_ID = (1 << 63) - 1

# Numeric dtypes only, little-endian (single-byte types have no byte order: "|").
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {
        "|b1",
        "|i1",
        "|u1",
        "<i2",
        "<u2",
        "<i4",
        "<u4",
        "<i8",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
    }
)

# Error codes (the ``code`` field of an error frame).
MALFORMED = "malformed_frame"  # not msgpack, truncated, trailing bytes, too deep
WRONG_TYPE = "wrong_type"  # a value of the wrong type (including a text frame or non-map frame)
UNKNOWN_MESSAGE = "unknown_message"
UNKNOWN_KEY = "unknown_key"
MISSING_KEY = "missing_key"
BAD_ARRAY = "bad_array"  # ndarray extension payload inconsistent (size vs shape, ndim...)
BAD_DTYPE = "bad_dtype"
BAD_SHAPE = "bad_shape"
NON_FINITE = "non_finite"
OVERSIZED = "oversized"
BAD_VALUE = "bad_value"  # right type, value out of range (e.g. a float64 obs beyond the float32 range)
INTERNAL = "internal"
UNAVAILABLE = "unavailable"  # server draining / shutting down
VERSION_MISMATCH = "version_mismatch"

ERROR_CODES = frozenset(
    {
        MALFORMED,
        WRONG_TYPE,
        UNKNOWN_MESSAGE,
        UNKNOWN_KEY,
        MISSING_KEY,
        BAD_ARRAY,
        BAD_DTYPE,
        BAD_SHAPE,
        NON_FINITE,
        OVERSIZED,
        BAD_VALUE,
        INTERNAL,
        UNAVAILABLE,
        VERSION_MISMATCH,
    }
)


class ProtocolError(ValueError):
    """A frame that does not follow the protocol. ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id  # set when the frame was parsed far enough to name its request


# --------------------------------------------------------------------------- arrays


def _array_ext(arr: np.ndarray) -> Any:
    import msgpack

    dtype = arr.dtype
    if dtype.kind not in "biuf":
        raise ProtocolError(BAD_DTYPE, f"dtype {dtype} is not numeric; allowed: {sorted(ALLOWED_DTYPES)}")
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("<"))
        dtype = arr.dtype
    if dtype.str not in ALLOWED_DTYPES:
        raise ProtocolError(BAD_DTYPE, f"dtype {dtype.str} not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if arr.ndim > MAX_NDIM:
        raise ProtocolError(BAD_SHAPE, f"array has {arr.ndim} dims, at most {MAX_NDIM} allowed")
    payload = msgpack.packb(
        [dtype.str, list(arr.shape), np.ascontiguousarray(arr).tobytes()], use_bin_type=True
    )
    return msgpack.ExtType(EXT_NDARRAY, payload)


def _decode_array(payload: bytes) -> np.ndarray:
    """ExtType payload → read-only-free numpy array, validating dtype, shape and size before allocating."""
    import msgpack

    try:
        parts = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=64,
            max_bin_len=len(payload),
            max_array_len=MAX_NDIM + 3,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:
        raise ProtocolError(BAD_ARRAY, f"ndarray extension payload is not valid msgpack ({exc})") from None
    if not isinstance(parts, list) or len(parts) != 3:
        raise ProtocolError(BAD_ARRAY, "ndarray extension must be [dtype, shape, data]")
    dtype_str, shape, data = parts
    if not isinstance(dtype_str, str):
        raise ProtocolError(BAD_ARRAY, f"ndarray dtype must be a string, got {type(dtype_str).__name__}")
    if dtype_str not in ALLOWED_DTYPES:
        raise ProtocolError(BAD_DTYPE, f"dtype {dtype_str!r} not allowed; allowed: {sorted(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise ProtocolError(BAD_ARRAY, f"ndarray shape must be a list of at most {MAX_NDIM} ints")
    count = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise ProtocolError(BAD_ARRAY, f"ndarray shape {shape!r} must hold non-negative ints")
        count *= d
        if count > MAX_ELEMENTS:
            raise ProtocolError(
                OVERSIZED, f"ndarray shape {shape!r} declares more than {MAX_ELEMENTS} elements"
            )
    # An empty array may still declare an absurd dimension ([0, 2**63 - 1]): numpy cannot hold it.
    if any(d > MAX_ELEMENTS for d in shape):
        raise ProtocolError(BAD_ARRAY, f"ndarray shape {shape!r} has a dimension above {MAX_ELEMENTS}")
    if not isinstance(data, bytes):
        raise ProtocolError(BAD_ARRAY, f"ndarray data must be bytes, got {type(data).__name__}")
    dtype = np.dtype(dtype_str)
    if len(data) != count * dtype.itemsize:
        raise ProtocolError(
            BAD_ARRAY,
            f"ndarray of shape {tuple(shape)} and dtype {dtype_str} needs "
            f"{count * dtype.itemsize} bytes, frame holds {len(data)}",
        )
    try:
        # Copy: the array must own writable memory independent of the frame buffer.
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except ValueError as exc:
        raise ProtocolError(BAD_ARRAY, f"ndarray of shape {shape!r} cannot be built ({exc})") from None


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != EXT_NDARRAY:
        raise ProtocolError(BAD_ARRAY, f"unknown msgpack extension type {code}")
    return _decode_array(payload)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _array_ext(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise ProtocolError(WRONG_TYPE, f"cannot encode value of type {type(obj).__name__}")


# --------------------------------------------------------------------------- frames


def pack(message: dict[str, Any]) -> bytes:
    """Encode a message map (already validated by the caller) into one binary frame."""
    import msgpack

    return msgpack.packb(message, default=_default, use_bin_type=True)


def unpack(frame: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict[str, Any]:
    """Parse one frame into a map with a string ``type``; raise ProtocolError for anything malformed."""
    import msgpack

    if isinstance(frame, str):
        raise ProtocolError(WRONG_TYPE, "text frame received; the protocol uses binary frames only")
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError(WRONG_TYPE, f"frame must be bytes, got {type(frame).__name__}")
    if len(frame) > max_frame_bytes:
        raise ProtocolError(OVERSIZED, f"frame of {len(frame)} bytes exceeds the limit of {max_frame_bytes}")
    if len(frame) == 0:
        raise ProtocolError(MALFORMED, "empty frame")
    try:
        message = msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_ext_hook,
            max_str_len=max(_MAX_STR, 0),
            max_bin_len=max_frame_bytes,
            max_array_len=_MAX_CONTAINER,
            max_map_len=_MAX_CONTAINER,
            max_ext_len=max_frame_bytes,
        )
    except ProtocolError:
        raise
    except msgpack.ExtraData:
        raise ProtocolError(MALFORMED, "trailing bytes after the msgpack message") from None
    except Exception as exc:  # msgpack raises ValueError/FormatError/StackError/UnicodeDecodeError/...
        raise ProtocolError(MALFORMED, f"not a valid msgpack message ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(WRONG_TYPE, f"frame must be a msgpack map, got {_type_name(message)}")
    kind = message.get("type")
    if kind is None:
        raise ProtocolError(MISSING_KEY, "message has no 'type' key")
    if not isinstance(kind, str):
        raise ProtocolError(WRONG_TYPE, f"'type' must be a string, got {_type_name(kind)}")
    return message


def _type_name(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"ndarray{v.shape}"
    return type(v).__name__


def _check_keys(message: dict[str, Any], required: set[str], optional: set[str]) -> None:
    kind = message["type"]
    unknown = set(message) - required - optional - {"type"}
    if unknown:
        raise ProtocolError(UNKNOWN_KEY, f"{kind} message has unknown keys {sorted(map(str, unknown))}")
    missing = required - set(message)
    if missing:
        raise ProtocolError(MISSING_KEY, f"{kind} message is missing key(s) {sorted(missing)}")


def _int(message: dict[str, Any], key: str, lo: int = 0, hi: int = _MAX_REQUEST_ID) -> int:
    v = message[key]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError(WRONG_TYPE, f"{key!r} must be an integer, got {_type_name(v)}")
    if not lo <= v <= hi:
        raise ProtocolError(BAD_VALUE, f"{key!r} = {v} is outside [{lo}, {hi}]")
    return v


def _float(message: dict[str, Any], key: str) -> float:
    v = message[key]
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ProtocolError(WRONG_TYPE, f"{key!r} must be a number, got {_type_name(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise ProtocolError(NON_FINITE, f"{key!r} is {v}")
    return v


def _str(message: dict[str, Any], key: str) -> str:
    v = message[key]
    if not isinstance(v, str):
        raise ProtocolError(WRONG_TYPE, f"{key!r} must be a string, got {_type_name(v)}")
    return v


def _array(message: dict[str, Any], key: str) -> np.ndarray:
    v = message[key]
    if not isinstance(v, np.ndarray):
        raise ProtocolError(
            WRONG_TYPE, f"{key!r} must be an ndarray (msgpack ext {EXT_NDARRAY}), got {_type_name(v)}"
        )
    return v


def _finite(arr: np.ndarray, key: str) -> None:
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ProtocolError(NON_FINITE, f"{key!r} contains NaN or inf")


def _fits(arr: np.ndarray, key: str, dtype: np.dtype) -> np.ndarray:
    """``arr`` cast to the model's float ``dtype``; a finite value that overflows it is ``bad_value``."""
    with np.errstate(over="ignore"):
        cast = arr.astype(dtype, copy=False)
    if not np.all(np.isfinite(cast)):
        i = int(np.argmin(np.isfinite(cast).reshape(-1)))
        index = tuple(int(x) for x in np.unravel_index(i, arr.shape))
        raise ProtocolError(
            BAD_VALUE,
            f"{key!r}{list(index)} = {float(arr.reshape(-1)[i]):.6g} overflows {dtype.name} "
            f"(the model's dtype, largest {float(np.finfo(dtype).max):.6g})",
        )
    return cast


def peek_request_id(frame: Any) -> int | None:
    """The ``request_id`` of a frame that failed validation, when it can still be read.

    Walks the top-level map with a streaming unpacker that skips every other value without building
    it (arrays included), so a frame whose ``obs`` is broken, oversized or of a bad dtype still gets
    its id echoed in the error reply. None when the frame is not a map or the id is not a valid int.
    """
    import msgpack

    if not isinstance(frame, bytes | bytearray | memoryview) or not len(frame):
        return None
    try:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame),
                                    ext_hook=lambda code, data: None)
        unpacker.feed(frame)
        for _ in range(min(unpacker.read_map_header(), _MAX_CONTAINER)):
            key = unpacker.unpack()
            if key != "request_id":
                unpacker.skip()
                continue
            value = unpacker.unpack()
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_REQUEST_ID
            return value if ok else None
    except Exception:  # noqa: BLE001 - any damage means: no readable id
        return None
    return None


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class ObsSpec:
    """What the model accepts: ``obs`` is (obs_dim,) or (k, obs_dim) with 1 ≤ k ≤ obs_horizon."""

    obs_dim: int
    obs_horizon: int
    name: str = "obs"
    dtype: str = "<f4"

    def schema(self) -> list[dict[str, Any]]:
        return [
            {"name": self.name, "shape": [self.obs_dim], "dtype": self.dtype, "max_history": self.obs_horizon}
        ]


@dataclass
class InferRequest:
    request_id: int
    obs: np.ndarray  # (k, obs_dim) float32, oldest first, k ≤ obs_horizon
    client_time: float  # seconds on the client's clock; target times are returned in it


@dataclass
class ResetRequest:
    request_id: int


@dataclass
class Metadata:
    model_id: str
    model_hash: str
    method: str
    obs_schema: list[dict[str, Any]]
    obs_horizon: int
    action_dim: int
    action_horizon: int
    control_period_s: float
    max_frame_bytes: int
    session_id: str
    protocol_version: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionsReply:
    request_id: int
    actions: np.ndarray  # (Ta, action_dim) float32
    target_times: np.ndarray  # (Ta,) float64, client clock: client_time + k · control_period
    client_time: float
    server_time: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    nfe: int
    batch_size: int


@dataclass
class ErrorReply:
    code: str
    message: str
    request_id: int | None = None


def decode_request(
    frame: Any, spec: ObsSpec | None = None, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> InferRequest | ResetRequest:
    """Validate a client frame. With ``spec``, the observation must match the model's schema.

    A ProtocolError carries the frame's ``request_id`` whenever it could be read, even when the rest of
    the frame (an array, the size) is what failed.
    """
    try:
        message = unpack(frame, max_frame_bytes)
    except ProtocolError as exc:
        exc.request_id = peek_request_id(frame)
        raise
    rid = message.get("request_id")
    try:
        return _decode_request(message, spec)
    except ProtocolError as exc:
        if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= _MAX_REQUEST_ID:
            exc.request_id = rid
        raise


def _decode_request(message: dict[str, Any], spec: ObsSpec | None) -> InferRequest | ResetRequest:
    kind = message["type"]
    if kind == "infer":
        _check_keys(message, {"request_id", "obs", "client_time"}, set())
        request_id = _int(message, "request_id")
        client_time = _float(message, "client_time")
        obs = _array(message, "obs")
        if obs.dtype.kind != "f":
            raise ProtocolError(BAD_DTYPE, f"'obs' must be a float array, got dtype {obs.dtype.str}")
        _finite(obs, "obs")
        if obs.ndim == 1:
            obs = obs[None]
        if obs.ndim != 2 or obs.shape[0] < 1:
            raise ProtocolError(BAD_SHAPE, f"'obs' must be (obs_dim,) or (k, obs_dim), got {obs.shape}")
        if spec is not None:
            if obs.shape[1] != spec.obs_dim:
                raise ProtocolError(
                    BAD_SHAPE, f"'obs' has {obs.shape[1]} features, the model expects {spec.obs_dim}"
                )
            if obs.shape[0] > spec.obs_horizon:
                raise ProtocolError(
                    BAD_SHAPE,
                    f"'obs' carries {obs.shape[0]} frames, at most "
                    f"{spec.obs_horizon} (the observation horizon) allowed",
                )
        model_dtype = np.dtype(spec.dtype if spec is not None else "<f4")
        return InferRequest(request_id, _fits(obs, "obs", model_dtype), client_time)
    if kind == "reset":
        _check_keys(message, {"request_id"}, set())
        return ResetRequest(_int(message, "request_id"))
    raise ProtocolError(UNKNOWN_MESSAGE, f"unknown message type {kind!r} (client messages: infer, reset)")


def encode_infer(request_id: int, obs: np.ndarray, client_time: float) -> bytes:
    obs = np.asarray(obs)
    if obs.dtype != np.float32:
        obs = obs.astype(np.float32)
    return pack(
        {"type": "infer", "request_id": int(request_id), "obs": obs, "client_time": float(client_time)}
    )


def encode_reset(request_id: int) -> bytes:
    return pack({"type": "reset", "request_id": int(request_id)})


def encode_metadata(meta: Metadata) -> bytes:
    return pack(
        {
            "type": "metadata",
            "protocol_version": meta.protocol_version,
            "model_id": meta.model_id,
            "model_hash": meta.model_hash,
            "method": meta.method,
            "obs_schema": meta.obs_schema,
            "obs_horizon": meta.obs_horizon,
            "action_dim": meta.action_dim,
            "action_horizon": meta.action_horizon,
            "control_period_s": meta.control_period_s,
            "max_frame_bytes": meta.max_frame_bytes,
            "session_id": meta.session_id,
            "extra": meta.extra,
        }
    )


def encode_actions(reply: ActionsReply) -> bytes:
    """Encode an ``actions`` reply; ValueError if any number in it is not finite (none may leave)."""
    numbers = [reply.client_time, reply.server_time, reply.queue_ms, reply.inference_ms, reply.total_ms]
    if not (np.all(np.isfinite(reply.actions)) and np.all(np.isfinite(reply.target_times))
            and all(math.isfinite(x) for x in numbers)):
        raise ValueError("refusing to encode an actions reply with non-finite values")
    return pack(
        {
            "type": "actions",
            "request_id": reply.request_id,
            "actions": np.asarray(reply.actions, dtype=np.float32),
            "target_times": np.asarray(reply.target_times, dtype=np.float64),
            "client_time": reply.client_time,
            "server_time": reply.server_time,
            "queue_ms": reply.queue_ms,
            "inference_ms": reply.inference_ms,
            "total_ms": reply.total_ms,
            "nfe": int(reply.nfe),
            "batch_size": int(reply.batch_size),
        }
    )


def encode_reset_ok(request_id: int) -> bytes:
    return pack({"type": "reset_ok", "request_id": int(request_id)})


def encode_error(code: str, message: str, request_id: int | None = None) -> bytes:
    return pack({"type": "error", "code": code, "message": message[:1000], "request_id": request_id})


def decode_reply(
    frame: Any, max_frame_bytes: int = 64 * DEFAULT_MAX_FRAME_BYTES
) -> Metadata | ActionsReply | ErrorReply | ResetRequest:
    """Validate a server frame (clients distrust servers too). ``reset_ok`` decodes to ResetRequest."""
    message = unpack(frame, max_frame_bytes)
    kind = message["type"]
    if kind == "actions":
        keys = {
            "request_id",
            "actions",
            "target_times",
            "client_time",
            "server_time",
            "queue_ms",
            "inference_ms",
            "total_ms",
            "nfe",
            "batch_size",
        }
        _check_keys(message, keys, set())
        actions, targets = _array(message, "actions"), _array(message, "target_times")
        if actions.ndim != 2 or targets.shape != (actions.shape[0],):
            raise ProtocolError(BAD_SHAPE, f"actions {actions.shape} / target_times {targets.shape} mismatch")
        _finite(actions, "actions")
        _finite(targets, "target_times")
        return ActionsReply(
            _int(message, "request_id"),
            actions.astype(np.float32, copy=False),
            targets.astype(np.float64, copy=False),
            _float(message, "client_time"),
            _float(message, "server_time"),
            _float(message, "queue_ms"),
            _float(message, "inference_ms"),
            _float(message, "total_ms"),
            _int(message, "nfe"),
            _int(message, "batch_size"),
        )
    if kind == "error":
        _check_keys(message, {"code", "message", "request_id"}, set())
        rid = message["request_id"]
        return ErrorReply(
            _str(message, "code"),
            _str(message, "message"),
            None if rid is None else _int(message, "request_id"),
        )
    if kind == "reset_ok":
        _check_keys(message, {"request_id"}, set())
        return ResetRequest(_int(message, "request_id"))
    if kind == "metadata":
        keys = {
            "protocol_version",
            "model_id",
            "model_hash",
            "method",
            "obs_schema",
            "obs_horizon",
            "action_dim",
            "action_horizon",
            "control_period_s",
            "max_frame_bytes",
            "session_id",
            "extra",
        }
        # Version first: a future server may add keys, and the client should say "version" not "unknown key".
        if "protocol_version" in message and message["protocol_version"] != PROTOCOL_VERSION:
            raise ProtocolError(
                VERSION_MISMATCH,
                f"server speaks protocol {message['protocol_version']!r}, "
                f"this client speaks {PROTOCOL_VERSION}",
            )
        _check_keys(message, keys, set())
        schema = message["obs_schema"]
        if not isinstance(schema, list) or not all(isinstance(s, dict) for s in schema):
            raise ProtocolError(WRONG_TYPE, "'obs_schema' must be a list of maps")
        extra = message["extra"]
        if not isinstance(extra, dict):
            raise ProtocolError(WRONG_TYPE, "'extra' must be a map")
        return Metadata(
            model_id=_str(message, "model_id"),
            model_hash=_str(message, "model_hash"),
            method=_str(message, "method"),
            obs_schema=schema,
            obs_horizon=_int(message, "obs_horizon", 1, 1 << 16),
            action_dim=_int(message, "action_dim", 1, 1 << 16),
            action_horizon=_int(message, "action_horizon", 1, 1 << 16),
            control_period_s=_float(message, "control_period_s"),
            max_frame_bytes=_int(message, "max_frame_bytes"),
            session_id=_str(message, "session_id"),
            protocol_version=_int(message, "protocol_version"),
            extra=extra,
        )
    raise ProtocolError(UNKNOWN_MESSAGE, f"unknown server message type {kind!r}")
