"""Datasets: the zarr EpisodeStore, the sequence sampler, normalizers and D4RL / Minari IO.

The names below are loaded lazily (PEP 562 ``__getattr__``) so ``import fastpolicy.data`` costs
nothing: zarr, numba, h5py and torch load only when the object that needs them is first used.
"""

from __future__ import annotations

from fastpolicy.utils.lazy import lazy_exports

_LAZY = {
    "EpisodeStore": "fastpolicy.data.store",
    "EpisodeWriter": "fastpolicy.data.store",
    "SequenceDataset": "fastpolicy.data.sampler",
    "episode_split": "fastpolicy.data.sampler",
    "Normalizer": "fastpolicy.data.normalize",
    "NormalizerSet": "fastpolicy.data.normalize",
    "import_d4rl": "fastpolicy.data.d4rl",
    "export_d4rl": "fastpolicy.data.d4rl",
    "qlearning_dataset": "fastpolicy.data.d4rl",
    "import_minari": "fastpolicy.data.minari_io",
    "export_minari": "fastpolicy.data.minari_io",
    "store_info": "fastpolicy.data.info",
    "plot_returns": "fastpolicy.data.info",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
