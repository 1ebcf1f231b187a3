"""Property-based fuzzing of the wire protocol: ≥ 10k malformed frames against the decoder, ≥ 1k through a
live server on 127.0.0.1 while a well-behaved session keeps getting correct actions.

Every malformed frame must be answered with ProtocolError (decoder) / an error frame (server) whose
code is the decoder's; nothing else may escape, and the server and the good session must live on.
Every reply frame's arrays are finite, also for finite-but-extreme observations (3e38 in float32, 1e300
in float64), which may only be answered with finite actions or ``non_finite`` / ``bad_value`` — after
which the session answers exactly as if the refused request had never been sent.
"""

from __future__ import annotations

import math
import threading
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpolicy.policies.builtin import BuiltinMLPPolicy
from fastpolicy.serve import protocol as P
from fastpolicy.serve.client import PolicyClient
from fastpolicy.serve.server import BackgroundServer, ServerConfig

OBS_DIM, OBS_HORIZON = 6, 2
SPEC = P.ObsSpec(obs_dim=OBS_DIM, obs_horizon=OBS_HORIZON)


def raw_array_ext(dtype: str, shape: list, data: bytes, code: int = P.EXT_NDARRAY) -> msgpack.ExtType:
    """An ndarray extension built by hand, so tests can lie about dtype, shape and size."""
    return msgpack.ExtType(code, msgpack.packb([dtype, shape, data], use_bin_type=True))


def good_infer(rng: np.random.Generator | None = None, frames: int = 1) -> dict:
    rng = rng or np.random.default_rng(0)
    obs = rng.standard_normal((frames, OBS_DIM)).astype(np.float32)
    return {"type": "infer", "request_id": 7, "obs": obs, "client_time": 12.5}


def pack_raw(message: object) -> bytes:
    def default(o: object) -> object:
        if isinstance(o, np.ndarray):
            return raw_array_ext(o.dtype.str, list(o.shape), o.tobytes())
        raise TypeError(type(o))

    return msgpack.packb(message, default=default, use_bin_type=True)


# Plain msgpack values (any type), used to replace fields with the wrong type.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

BAD_DTYPES = [
    "|O",
    "|V8",
    "<c8",
    "<c16",
    ">f4",
    "<M8[s]",
    "<m8[s]",
    "<U4",
    "|S4",
    "float32",
    "f4",
    "",
    "<f16",
    "<f4\x00",
    "|b2",
]


@st.composite
def wrong_field_type(draw: st.DrawFn) -> bytes:
    msg = good_infer()
    key = draw(st.sampled_from(["request_id", "obs", "client_time", "type"]))
    v = draw(values)
    # Skip replacements that happen to be valid.
    if key == "request_id" and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63:
        v = "7"
    if key == "client_time" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        v = [v]
    if key == "type" and v in ("infer", "reset"):
        v = 3
    msg[key] = v
    return pack_raw(msg)


@st.composite
def missing_or_unknown_key(draw: st.DrawFn) -> bytes:
    msg = good_infer()
    if draw(st.booleans()):
        del msg[draw(st.sampled_from(["request_id", "obs", "client_time", "type"]))]
    else:
        name = draw(st.text(min_size=1, max_size=10).filter(lambda s: s not in msg))
        msg[name] = draw(values)
    return pack_raw(msg)


@st.composite
def unknown_message_type(draw: st.DrawFn) -> bytes:
    kind = draw(st.text(max_size=16).filter(lambda s: s not in ("infer", "reset")))
    msg = good_infer()
    msg["type"] = kind
    return pack_raw(msg)


@st.composite
def bad_obs_shape(draw: st.DrawFn) -> bytes:
    shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=4))
    ok = (len(shape) == 1 and shape[0] == OBS_DIM) or (
        len(shape) == 2 and 1 <= shape[0] <= OBS_HORIZON and shape[1] == OBS_DIM
    )
    if ok:
        shape = [OBS_HORIZON + 1, OBS_DIM]
    msg = good_infer()
    msg["obs"] = np.zeros(shape, np.float32)
    return pack_raw(msg)


@st.composite
def bad_obs_dtype(draw: st.DrawFn) -> bytes:
    msg = good_infer()
    if draw(st.booleans()):
        dtype = draw(st.sampled_from(BAD_DTYPES))
        size = draw(st.integers(0, 64))
        msg["obs"] = raw_array_ext(dtype, [OBS_DIM], bytes(size))
    else:  # allowed on the wire, but not a float observation
        dtype = draw(st.sampled_from(["|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8"]))
        msg["obs"] = np.zeros(OBS_DIM, dtype=np.dtype(dtype))
    return pack_raw(msg)


@st.composite
def non_finite_obs(draw: st.DrawFn) -> bytes:
    msg = good_infer()
    obs = msg["obs"].copy()
    idx = draw(st.integers(0, obs.size - 1))
    obs.flat[idx] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    dtype = draw(st.sampled_from(["<f2", "<f4", "<f8"]))
    msg["obs"] = obs.astype(dtype)
    if draw(st.booleans()):
        msg["obs"] = msg["obs"].astype(np.float32)
        msg["client_time"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        msg["obs"][...] = 0
    return pack_raw(msg)


@st.composite
def inconsistent_array(draw: st.DrawFn) -> bytes:
    """Declared shape × itemsize ≠ data length, huge declared sizes, bad shapes, bad ext codes."""
    msg = good_infer()
    kind = draw(st.sampled_from(["size", "huge", "negative", "ndim", "code", "payload", "fields"]))
    if kind == "size":
        n = draw(st.integers(0, 200).filter(lambda n: n != OBS_DIM * 4))
        msg["obs"] = raw_array_ext("<f4", [OBS_DIM], bytes(n))
    elif kind == "huge":
        dims = draw(st.lists(st.integers(2**10, 2**40), min_size=1, max_size=4))
        msg["obs"] = raw_array_ext("<f4", dims, bytes(16))
    elif kind == "negative":
        msg["obs"] = raw_array_ext("<f4", [draw(st.integers(-(2**31), -1)), OBS_DIM], bytes(16))
    elif kind == "ndim":
        msg["obs"] = raw_array_ext("<f4", [1] * draw(st.integers(9, 30)), bytes(4))
    elif kind == "code":
        code = draw(st.integers(-1, 127).filter(lambda c: c != P.EXT_NDARRAY))
        if code == -1:  # msgpack's reserved timestamp extension
            msg["obs"] = msgpack.Timestamp(draw(st.integers(0, 2**32 - 1)), 0)
        else:
            msg["obs"] = raw_array_ext("<f4", [OBS_DIM], bytes(OBS_DIM * 4), code=code)
    elif kind == "payload":
        msg["obs"] = msgpack.ExtType(P.EXT_NDARRAY, draw(st.binary(max_size=40)))
    else:
        parts = draw(st.lists(values, max_size=5))
        msg["obs"] = msgpack.ExtType(P.EXT_NDARRAY, msgpack.packb(parts, use_bin_type=True))
    return pack_raw(msg)


@st.composite
def truncated_frame(draw: st.DrawFn) -> bytes:
    frame = pack_raw(good_infer(frames=draw(st.integers(1, OBS_HORIZON))))
    cut = draw(st.integers(0, len(frame) - 1))
    return frame[:cut]


@st.composite
def trailing_or_wrapped(draw: st.DrawFn) -> bytes:
    frame = pack_raw(good_infer())
    if draw(st.booleans()):
        return frame + draw(st.binary(min_size=1, max_size=8))
    return msgpack.packb(draw(st.one_of(scalars, st.lists(scalars, max_size=3))), use_bin_type=True)


EXTREMES = {
    "<f2": [65504.0, -65504.0],
    "<f4": [3e38, -3e38, float(np.finfo(np.float32).max), 1e30, -1e20],
    "<f8": [1e300, -1e300, 1e39, 3.5e38, 3e38, 1e30, float(np.finfo(np.float64).max)],
}


@st.composite
def extreme_finite_obs(draw: st.DrawFn) -> bytes:
    """Finite on the wire, but huge: in range of float32, beyond it, or driving the policy to inf."""
    msg = good_infer(frames=draw(st.integers(1, OBS_HORIZON)))
    dtype = draw(st.sampled_from(sorted(EXTREMES)))
    obs = msg["obs"].astype(dtype)
    for _ in range(draw(st.integers(1, 3))):
        obs.flat[draw(st.integers(0, obs.size - 1))] = draw(st.sampled_from(EXTREMES[dtype]))
    msg["obs"] = obs
    msg["request_id"] = draw(st.integers(0, 2**63 - 1))
    return pack_raw(msg)


def reply_arrays(raw: bytes) -> list[np.ndarray]:
    """Every ndarray in a reply frame, decoded without the client's own checks (finiteness included)."""
    found: list[np.ndarray] = []

    def hook(code: int, payload: bytes) -> None:
        dtype, shape, data = msgpack.unpackb(payload, raw=False)
        found.append(np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape))

    msgpack.unpackb(raw, raw=False, ext_hook=hook)
    return found


def send_raw_checked(client: PolicyClient, frame: bytes):
    """Send a frame, assert the raw reply's arrays and numbers are finite, return the decoded reply."""
    client._ws.send(frame)
    raw = client._ws.recv(timeout=client.reply_timeout_s)
    for arr in reply_arrays(raw):
        assert arr.dtype.kind != "f" or np.isfinite(arr).all(), "a non-finite array left the server"
    message = msgpack.unpackb(raw, raw=False, ext_hook=lambda code, data: None)
    assert all(math.isfinite(v) for v in message.values() if isinstance(v, float)), message
    return P.decode_reply(raw, client.max_frame_bytes)


# Strategies whose frames are invalid by construction.
invalid_frames = st.one_of(
    wrong_field_type(),
    missing_or_unknown_key(),
    unknown_message_type(),
    bad_obs_shape(),
    bad_obs_dtype(),
    non_finite_obs(),
    inconsistent_array(),
    truncated_frame(),
    trailing_or_wrapped(),
)
# Anything at all: random bytes and random msgpack documents (almost always invalid; the decoder decides).
arbitrary_frames = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(
        st.sampled_from(["type", "request_id", "obs", "client_time", "x"]), values, max_size=5
    ).map(lambda v: msgpack.packb(v, use_bin_type=True)),
)


# --------------------------------------------------------------------------- decoder (fast, most frames)

FUZZ_COUNT = {"decoder": 0, "live": 0}
DECODER_SETTINGS = settings(
    max_examples=2500, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@DECODER_SETTINGS
@given(frame=invalid_frames)
def test_invalid_frames_raise_protocol_error(frame: bytes) -> None:
    FUZZ_COUNT["decoder"] += 1
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frame, SPEC)
    assert info.value.code in P.ERROR_CODES
    assert info.value.message


@DECODER_SETTINGS
@given(frame=arbitrary_frames)
def test_arbitrary_frames_never_escape(frame: bytes) -> None:
    FUZZ_COUNT["decoder"] += 1
    try:
        request = P.decode_request(frame, SPEC)
    except P.ProtocolError as exc:
        assert exc.code in P.ERROR_CODES
    else:  # astronomically unlikely, but then it must really be valid
        assert isinstance(request, P.InferRequest | P.ResetRequest)


@settings(max_examples=2500, deadline=None, derandomize=True, database=None)
@given(frame=st.one_of(truncated_frame(), inconsistent_array(), bad_obs_dtype()))
def test_structural_damage_is_named(frame: bytes) -> None:
    FUZZ_COUNT["decoder"] += 1
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frame, SPEC)
    assert info.value.code in {P.MALFORMED, P.BAD_ARRAY, P.BAD_DTYPE, P.OVERSIZED, P.WRONG_TYPE}


@settings(max_examples=2500, deadline=None, derandomize=True, database=None)
@given(frame=st.one_of(non_finite_obs(), bad_obs_shape(), missing_or_unknown_key(), unknown_message_type()))
def test_semantic_damage_is_named(frame: bytes) -> None:
    FUZZ_COUNT["decoder"] += 1
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frame, SPEC)
    assert info.value.code in {P.NON_FINITE, P.BAD_SHAPE, P.MISSING_KEY, P.UNKNOWN_KEY, P.UNKNOWN_MESSAGE}


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(frame=st.one_of(bad_obs_dtype(), inconsistent_array(), non_finite_obs(), bad_obs_shape(),
                       extreme_finite_obs()))
def test_errors_echo_a_readable_request_id(frame: bytes) -> None:
    """The frame's request_id is readable in all these (only its obs is bad): the error carries it."""
    FUZZ_COUNT["decoder"] += 1
    rid = msgpack.unpackb(frame, raw=False, ext_hook=lambda code, data: None)["request_id"]
    try:
        P.decode_request(frame, SPEC)
    except P.ProtocolError as exc:
        assert exc.request_id == rid, (exc.code, exc.message)


def test_decoder_fuzz_volume() -> None:
    """Runs after the four property tests above (file order): together they fed ≥ 10k frames."""
    if FUZZ_COUNT["decoder"] == 0:
        pytest.skip("run with the property tests of this module")
    assert FUZZ_COUNT["decoder"] >= 10_000, FUZZ_COUNT


# --------------------------------------------------------------------------- live server


@pytest.fixture(scope="module")
def live_server():
    policy = BuiltinMLPPolicy(
        obs_dim=OBS_DIM,
        action_dim=2,
        obs_horizon=OBS_HORIZON,
        action_horizon=4,
        pred_horizon=8,
        hidden=32,
        nfe=2,
    )
    config = ServerConfig(port=0, token="fuzz-token", max_batch=8, max_wait_ms=1.0)
    with BackgroundServer(policy, config) as srv:
        yield srv, policy


class GoodSession(threading.Thread):
    """A well-behaved robot: sends valid requests and checks every reply against a local replay."""

    def __init__(self, url: str, policy: BuiltinMLPPolicy) -> None:
        super().__init__(daemon=True)
        self.url, self.policy = url, policy
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(1)
        state = self.policy.init_state(1)
        history: list[np.ndarray] = []
        try:
            with PolicyClient(self.url, "fuzz-token") as client:
                while not self.stop.is_set():
                    obs = rng.standard_normal(OBS_DIM).astype(np.float32)
                    reply = client.infer(obs)
                    history = (history + [obs])[-OBS_HORIZON:]
                    window = np.stack([history[0]] * (OBS_HORIZON - len(history)) + history)[None]
                    expected = self.policy.predict_chunk(window, state)
                    state = expected.state
                    if not np.allclose(reply.actions, expected.actions[0], atol=1e-5):
                        self.failures.append(f"reply {self.ok}: actions differ from the local replay")
                        return
                    self.ok += 1
                    time.sleep(0.002)
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            self.failures.append(repr(exc))


@pytest.fixture(scope="module")
def fuzz_connection(live_server):
    srv, policy = live_server
    good = GoodSession(srv.url, policy)
    good.start()
    client = PolicyClient(srv.url, "fuzz-token", reconnect=False)
    yield client
    client.close()
    good.stop.set()
    good.join(10)
    assert not good.failures, good.failures
    assert good.ok >= 20, f"the well-behaved session got only {good.ok} replies"


@settings(
    max_examples=1100, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(frame=st.one_of(invalid_frames, arbitrary_frames))
def test_live_server_answers_every_malformed_frame(fuzz_connection, frame: bytes) -> None:
    FUZZ_COUNT["live"] += 1
    try:
        P.decode_request(frame, SPEC)
        expected_code = None
    except P.ProtocolError as exc:
        expected_code = exc.code
    reply = send_raw_checked(fuzz_connection, frame)
    if expected_code is None:
        assert isinstance(reply, P.ActionsReply)
    else:
        assert isinstance(reply, P.ErrorReply), reply
        assert reply.code == expected_code


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(frame=extreme_finite_obs())
def test_live_server_extreme_values_never_poison_a_session(live_server, frame: bytes) -> None:
    """Finite-but-extreme observations: finite actions, or non_finite / bad_value with the request's id;
    either way the session then answers a normal request exactly as a session that never saw it."""
    srv, policy = live_server
    rng = np.random.default_rng(len(frame))
    first, after = (rng.standard_normal(OBS_DIM).astype(np.float32) for _ in range(2))
    with PolicyClient(srv.url, "fuzz-token", reconnect=False) as client:
        client.infer(first)
        reply = send_raw_checked(client, frame)
        rid = msgpack.unpackb(frame, raw=False, ext_hook=lambda code, data: None)["request_id"]
        assert reply.request_id == rid
        if isinstance(reply, P.ErrorReply):
            assert reply.code in (P.NON_FINITE, P.BAD_VALUE), reply
            # Replay without the refused request: the session must not have kept any of it.
            state = policy.init_state(1)
            expected = policy.predict_chunk(np.stack([first, first])[None], state)
            expected = policy.predict_chunk(np.stack([first, after])[None], expected.state)
            got = send_raw_checked(client, P.encode_infer(99, after, 1.0))
            assert isinstance(got, P.ActionsReply)
            np.testing.assert_allclose(got.actions, expected.actions[0], atol=1e-5)
        else:
            assert isinstance(reply, P.ActionsReply)
            got = send_raw_checked(client, P.encode_infer(99, after, 1.0))
            assert isinstance(got, P.ActionsReply)


def test_live_fuzz_volume_and_server_alive(live_server) -> None:
    srv, _ = live_server
    if FUZZ_COUNT["live"] == 0:
        pytest.skip("run with the live property test of this module")
    assert FUZZ_COUNT["live"] >= 1000, FUZZ_COUNT
    assert srv.call(lambda: srv.server.stats["errors"]) >= 1000
    # A fresh session still works after the barrage.
    with PolicyClient(srv.url, "fuzz-token") as client:
        assert client.infer(np.zeros(OBS_DIM, np.float32)).actions.shape == (4, 2)
