"""Wire protocol: round trips, the dtype allow-list, and each validation error naming its problem."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fastpolicy.serve import protocol as P

SPEC = P.ObsSpec(obs_dim=3, obs_horizon=2)


def _raw(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _ext(dtype: str, shape: list, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(P.EXT_NDARRAY, msgpack.packb([dtype, shape, data], use_bin_type=True))


def _infer(**override) -> dict:
    msg = {
        "type": "infer",
        "request_id": 1,
        "obs": _ext("<f4", [3], np.ones(3, np.float32).tobytes()),
        "client_time": 1.0,
    }
    msg.update(override)
    return msg


def _code(frame: bytes, spec: P.ObsSpec | None = SPEC) -> str:
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frame, spec)
    return info.value.code


@pytest.mark.parametrize("dtype", sorted(P.ALLOWED_DTYPES))
def test_every_allowed_dtype_round_trips(dtype):
    arr = (np.arange(12) % 2).astype(np.dtype(dtype)).reshape(3, 4)
    out = P.unpack(P.pack({"type": "x", "a": arr}))["a"]
    assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)
    out[0, 0] = 1  # decoded arrays own writable memory


@pytest.mark.parametrize(
    "arr",
    [
        np.array([object()]),
        np.zeros(2, np.complex64),
        np.zeros(2, "V4"),
        np.array(["a"]),
        np.zeros(2, "datetime64[s]"),
    ],
)
def test_encoder_refuses_non_numeric_dtypes(arr):
    with pytest.raises(P.ProtocolError) as info:
        P.pack({"type": "x", "a": arr})
    assert info.value.code == P.BAD_DTYPE


def test_big_endian_is_sent_little_endian():
    arr = np.arange(4, dtype=">f4")
    out = P.unpack(P.pack({"type": "x", "a": arr}))["a"]
    assert out.dtype.str == "<f4" and np.array_equal(out, arr)


def test_infer_round_trip_and_single_frame_obs():
    obs = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    req = P.decode_request(P.encode_infer(5, obs, 3.25), SPEC)
    assert isinstance(req, P.InferRequest) and req.request_id == 5 and req.client_time == 3.25
    assert np.array_equal(req.obs, obs)
    one = P.decode_request(P.encode_infer(6, obs[0], 1.0), SPEC)
    assert one.obs.shape == (1, 3)
    f64 = P.decode_request(P.encode_infer(6, obs[0].astype(np.float64), 1.0), SPEC)
    assert f64.obs.dtype == np.float32
    assert isinstance(P.decode_request(P.encode_reset(9), SPEC), P.ResetRequest)


def test_server_messages_round_trip():
    meta = P.Metadata(
        model_id="m",
        model_hash="sha256:00",
        method="dp",
        obs_schema=SPEC.schema(),
        obs_horizon=2,
        action_dim=4,
        action_horizon=8,
        control_period_s=0.05,
        max_frame_bytes=1024,
        session_id="s",
        extra={"k": 1},
    )
    assert P.decode_reply(P.encode_metadata(meta)) == meta
    reply = P.ActionsReply(
        request_id=3,
        actions=np.ones((8, 4), np.float32),
        target_times=np.arange(8.0),
        client_time=1.0,
        server_time=2.0,
        queue_ms=0.1,
        inference_ms=1.0,
        total_ms=1.5,
        nfe=2,
        batch_size=4,
    )
    out = P.decode_reply(P.encode_actions(reply))
    assert isinstance(out, P.ActionsReply) and out.nfe == 2 and out.batch_size == 4
    assert np.array_equal(out.actions, reply.actions) and out.target_times.dtype == np.float64
    err = P.decode_reply(P.encode_error(P.BAD_SHAPE, "obs wrong", 3))
    assert err == P.ErrorReply(P.BAD_SHAPE, "obs wrong", 3)
    assert P.decode_reply(P.encode_error(P.MALFORMED, "x")).request_id is None


def test_metadata_version_mismatch_is_named():
    frame = _raw({"type": "metadata", "protocol_version": P.PROTOCOL_VERSION + 1, "new_field": 1})
    with pytest.raises(P.ProtocolError) as info:
        P.decode_reply(frame)
    assert info.value.code == P.VERSION_MISMATCH


@pytest.mark.parametrize(
    "frame, code, words",
    [
        (b"", P.MALFORMED, "empty"),
        (b"\xc1", P.MALFORMED, "msgpack"),
        (_raw(_infer())[:-3], P.MALFORMED, "msgpack"),
        (_raw(_infer()) + b"\x00", P.MALFORMED, "trailing"),
        (_raw([1, 2]), P.WRONG_TYPE, "map"),
        (_raw({"request_id": 1}), P.MISSING_KEY, "type"),
        (_raw({"type": 5}), P.WRONG_TYPE, "type"),
        (_raw(_infer(type="explode")), P.UNKNOWN_MESSAGE, "explode"),
        (_raw(_infer(extra=1)), P.UNKNOWN_KEY, "extra"),
        (_raw({"type": "infer", "request_id": 1, "client_time": 1.0}), P.MISSING_KEY, "obs"),
        (_raw(_infer(request_id="1")), P.WRONG_TYPE, "request_id"),
        (_raw(_infer(request_id=-1)), P.BAD_VALUE, "request_id"),
        (_raw(_infer(request_id=True)), P.WRONG_TYPE, "request_id"),
        (_raw(_infer(client_time=math.nan)), P.NON_FINITE, "client_time"),
        (_raw(_infer(client_time="now")), P.WRONG_TYPE, "client_time"),
        (_raw(_infer(obs=[1.0, 2.0, 3.0])), P.WRONG_TYPE, "ndarray"),
        (_raw(_infer(obs=_ext("|O", [3], b"123"))), P.BAD_DTYPE, "|O"),
        (_raw(_infer(obs=_ext("<c8", [3], bytes(24)))), P.BAD_DTYPE, "<c8"),
        (_raw(_infer(obs=_ext(">f4", [3], bytes(12)))), P.BAD_DTYPE, ">f4"),
        (_raw(_infer(obs=_ext("<i4", [3], bytes(12)))), P.BAD_DTYPE, "float"),
        (_raw(_infer(obs=_ext("<f4", [3], bytes(11)))), P.BAD_ARRAY, "needs 12 bytes"),
        (_raw(_infer(obs=_ext("<f4", [2**31, 2**31], bytes(12)))), P.OVERSIZED, "elements"),
        (_raw(_infer(obs=_ext("<f4", [-3], bytes(12)))), P.BAD_ARRAY, "non-negative"),
        (_raw(_infer(obs=msgpack.ExtType(9, b"xx"))), P.BAD_ARRAY, "extension type 9"),
        (_raw(_infer(obs=_ext("<f4", [4], bytes(16)))), P.BAD_SHAPE, "expects 3"),
        (_raw(_infer(obs=_ext("<f4", [3, 3], bytes(36)))), P.BAD_SHAPE, "at most 2"),
        (_raw(_infer(obs=_ext("<f4", [2, 1, 3], bytes(24)))), P.BAD_SHAPE, "(k, obs_dim)"),
        (
            _raw(_infer(obs=_ext("<f4", [3], np.array([1, np.nan, 0], np.float32).tobytes()))),
            P.NON_FINITE,
            "NaN",
        ),
        (_raw(_infer(obs=_ext("<f8", [3], np.array([1, np.inf, 0]).tobytes()))), P.NON_FINITE, "inf"),
        (_raw({"type": "reset"}), P.MISSING_KEY, "request_id"),
        (_raw({1: "infer"}), P.MALFORMED, "msgpack"),  # non-string map keys are refused by the parser
    ],
)
def test_each_problem_is_named(frame, code, words):
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frame, SPEC)
    assert info.value.code == code
    assert words in info.value.message


def test_text_frames_and_oversized_frames():
    assert _code("hello") == P.WRONG_TYPE
    big = P.encode_infer(1, np.zeros((2, 3), np.float32), 1.0)
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(big, SPEC, max_frame_bytes=len(big) - 1)
    assert info.value.code == P.OVERSIZED and str(len(big)) in info.value.message


def test_error_carries_request_id_when_known():
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(_raw(_infer(request_id=42, extra=1)), SPEC)
    assert info.value.request_id == 42


def test_reply_decoder_distrusts_servers():
    bad = P.pack(
        {
            "type": "actions",
            "request_id": 1,
            "actions": np.ones((4, 2), np.float32),
            "target_times": np.arange(3.0),
            "client_time": 0.0,
            "server_time": 0.0,
            "queue_ms": 0.0,
            "inference_ms": 0.0,
            "total_ms": 0.0,
            "nfe": 1,
            "batch_size": 1,
        }
    )
    with pytest.raises(P.ProtocolError) as info:
        P.decode_reply(bad)
    assert info.value.code == P.BAD_SHAPE
    with pytest.raises(P.ProtocolError):
        P.decode_reply(_raw({"type": "infer"}))


def test_no_pickle_in_the_serving_code():
    root = Path(P.__file__).parent
    for path in list(root.glob("*.py")) + list((root.parent / "control").glob("*.py")):
        text = path.read_text()
        assert (
            "import pickle" not in text and "pickle.loads" not in text and "allow_pickle=True" not in text
        ), path
