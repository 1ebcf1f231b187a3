"""Lazy package exports (PEP 562): ``from fastpolicy.serve import PolicyClient`` loads only that module.

Packages whose modules pull in heavy optional dependencies (torch, zarr, websockets) name their public
objects here instead of importing them, so importing the package itself costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module path) on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
