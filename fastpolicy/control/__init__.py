"""Real-time control: a fixed-rate loop, the latency-compensating action-chunk broker, CUDA-graph runner."""

from fastpolicy.control.broker import ActionBroker, Chunk, ChunkQueue, LocalChunkSource, RemoteChunkSource
from fastpolicy.control.cudagraph import CudaGraphRunner
from fastpolicy.control.loop import ControlLoop, LoopStats, TickRecord

__all__ = [
    "ActionBroker",
    "Chunk",
    "ChunkQueue",
    "ControlLoop",
    "CudaGraphRunner",
    "LocalChunkSource",
    "LoopStats",
    "RemoteChunkSource",
    "TickRecord",
]
