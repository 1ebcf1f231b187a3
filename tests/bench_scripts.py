"""Import a script of bench/ in tests: bench/ is not a package (its scripts import each other from their
own folder, e.g. ``import manifest``), so each is loaded from its file with bench/ on the path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(name: str) -> ModuleType:
    """The module ``bench/<name>.py``, registered under ``name`` (dataclasses look their module up while
    being defined)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))
