"""Serving policies over the network: wire protocol, websocket server with micro-batching, clients.

Imports are lazy (websockets and msgpack are the ``serve`` extra): ``from fastpolicy.serve import
PolicyClient`` loads only what it names.
"""

from __future__ import annotations

from fastpolicy.utils.lazy import lazy_exports

_EXPORTS = {
    "PROTOCOL_VERSION": "fastpolicy.serve.protocol",
    "ProtocolError": "fastpolicy.serve.protocol",
    "PolicyServer": "fastpolicy.serve.server",
    "ServerConfig": "fastpolicy.serve.server",
    "BackgroundServer": "fastpolicy.serve.server",
    "run_server": "fastpolicy.serve.server",
    "BuiltinMLPPolicy": "fastpolicy.policies.builtin",
    "MicroBatcher": "fastpolicy.serve.batching",
    "PolicyClient": "fastpolicy.serve.client",
    "AsyncPolicyClient": "fastpolicy.serve.client",
    "ServerError": "fastpolicy.serve.client",
    "AuthenticationError": "fastpolicy.serve.client",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
