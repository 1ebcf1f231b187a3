"""Command-line flags from a typed ``Args`` dataclass (the CleanRL style of scripts/ and bench/).

One implementation so every script parses the same way: ``--field-name`` per field; bools become
``--flag/--no-flag``; list fields take one or more values of their elements' type; ``X | None`` fields
parse as X. Works with ``from __future__ import annotations`` (string annotations).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_SCALARS = {"int": int, "float": float, "str": str}


def _scalar_type(annotation: Any, default: Any):
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for part in str(text).replace(" ", "").split("|"):
        if part in _SCALARS:
            return _SCALARS[part]
    return type(default) if default is not None else str


def parse_dataclass_args(cls: type[T], description: str | None = None,
                         argv: Sequence[str] | None = None) -> T:
    """Parse ``argv`` (default: sys.argv) into an instance of the dataclass ``cls``."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = f"--{f.name.replace('_', '-')}"
        annotation = str(f.type)
        if isinstance(default, bool) or annotation == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=bool(default))
        elif isinstance(default, (list, tuple)) or annotation.startswith(("list", "tuple")):
            inner = annotation[annotation.find("[") + 1 : annotation.rfind("]")].split(",")[0].strip()
            elem = _SCALARS.get(inner, type(default[0]) if default else str)
            parser.add_argument(flag, nargs="+", type=elem, default=default)
        else:
            parser.add_argument(flag, type=_scalar_type(f.type, default), default=default)
    return cls(**vars(parser.parse_args(argv)))
