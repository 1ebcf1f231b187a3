"""Real-time control: a fixed-rate loop, the latency-compensating action-chunk broker, CUDA-graph runner.

Imports are lazy (the broker and the loop load torch): ``from fastpolicy.control import ControlLoop``
loads only what it names, and ``fastpolicy control --help`` stays fast.
"""

from __future__ import annotations

from fastpolicy.utils.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _EXPORTS)
