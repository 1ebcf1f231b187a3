"""The server's hardening findings, one test each: a finite observation that overflows poisoned a session,
an empty array with a huge dimension was ``malformed_frame``, error replies lost readable request ids,
codes drifted from docs/protocol.md, and ``--token`` sat in the process list without a word."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fastpolicy.policies.builtin import BuiltinMLPPolicy
from fastpolicy.serve import protocol as P
from fastpolicy.serve.client import PolicyClient, ServerError
from fastpolicy.serve.server import BackgroundServer, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
SPEC = P.ObsSpec(obs_dim=4, obs_horizon=2)


def _frame(obs: object, request_id: int = 41) -> bytes:
    return P.pack({"type": "infer", "request_id": request_id, "obs": obs, "client_time": 1.0})


def _raw_ext(dtype: str, shape: list, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(P.EXT_NDARRAY, msgpack.packb([dtype, shape, data], use_bin_type=True))


def test_extreme_observations_never_poison_a_session():
    policy = BuiltinMLPPolicy(obs_dim=4, action_dim=2, obs_horizon=2, action_horizon=4, pred_horizon=8,
                              hidden=32)
    with BackgroundServer(policy, ServerConfig(port=0)) as srv, PolicyClient(srv.url) as client:
        good = np.full(4, 0.5, np.float32)
        client.infer(good)
        with pytest.raises(ServerError) as info:  # finite in float32, NaN inside the policy
            client.infer(np.full(4, 3e38, np.float32))
        assert info.value.code == P.NON_FINITE and info.value.request_id is not None
        reply = client.send_raw(_frame(np.array([1e300, 0, 0, 0], np.float64)))  # inf once cast
        assert isinstance(reply, P.ErrorReply) and reply.code == P.BAD_VALUE and reply.request_id == 41
        assert "overflows float32" in reply.message
        # The session is usable and unchanged: exactly what a session that only saw `good` answers.
        expected = policy.predict_chunk(np.stack([good, good])[None], policy.init_state(1))
        expected = policy.predict_chunk(np.stack([good, good])[None], expected.state)
        got = client.infer(good).actions
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected.actions[0], atol=1e-5)


def test_empty_array_with_a_huge_dimension_is_bad_array_with_its_request_id():
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(_frame(_raw_ext("<f4", [0, 2**63 - 1], b"")), SPEC)
    assert info.value.code == P.BAD_ARRAY and info.value.request_id == 41


@pytest.mark.parametrize("obs", [
    _raw_ext("<f4", [4], b"\0" * 3),  # size ≠ shape: bad_array (inside the msgpack parse)
    _raw_ext("|O", [4], b"\0" * 32),  # bad_dtype
    _raw_ext("<f4", [2**20, 2**20], b""),  # oversized
    msgpack.ExtType(9, b"x"),  # unknown extension
])
def test_errors_raised_while_parsing_still_echo_the_request_id(obs):
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(msgpack.packb({"type": "infer", "request_id": 41, "obs": obs, "client_time": 1.0}),
                         SPEC)
    assert info.value.request_id == 41, info.value.code
    oversized = P.pack({"type": "reset", "request_id": 43, "pad": b"x" * 2048})
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(oversized, SPEC, max_frame_bytes=1024)
    assert info.value.code == P.OVERSIZED and info.value.request_id == 43


def test_error_codes_match_the_protocol_doc():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    section = doc.split("### Error codes", 1)[1].split("\n### ", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert len(documented) == len(set(documented)) and set(documented) == set(P.ERROR_CODES)


def test_serve_takes_the_token_from_a_file_and_warns_about_token_on_the_command_line(tmp_path):
    import argparse

    from fastpolicy.serve.cli import register, resolve_token

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    args = parser.parse_args(["serve", "builtin-mlp", "--token-file", str(token_file)])
    assert resolve_token(args) == "s3cret"
    # Through the CLI, as a user runs it (an invalid port stops it right after the token is read).
    done = subprocess.run([sys.executable, "-m", "fastpolicy.cli", "serve", "builtin-mlp", "--token",
                           "s3cret", "--port", "-1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--token is visible to every user" in done.stderr and "--token-file" in done.stderr
    assert "Traceback" not in done.stderr
