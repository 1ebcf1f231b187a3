"""Real-time control: a fixed-rate loop, the latency-compensating action-chunk broker, CUDA-graph runner.

Imports are lazy (the broker and the loop load torch): ``from fastpolicy.control import ControlLoop``
loads only what it names, and ``fastpolicy control --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActionBroker": "fastpolicy.control.broker",
    "Chunk": "fastpolicy.control.broker",
    "ChunkQueue": "fastpolicy.control.broker",
    "LocalChunkSource": "fastpolicy.control.broker",
    "RemoteChunkSource": "fastpolicy.control.broker",
    "CudaGraphRunner": "fastpolicy.control.cudagraph",
    "ControlLoop": "fastpolicy.control.loop",
    "LoopStats": "fastpolicy.control.loop",
    "TickRecord": "fastpolicy.control.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastpolicy.control' has no attribute {name!r}")
