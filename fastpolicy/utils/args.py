"""Command-line flags from typed dataclasses: tyro for the scripts, argparse for ``fastpolicy`` commands.

Scripts under ``bench/`` and ``scripts/`` describe their options as an ``Args`` dataclass (the CleanRL
style) and parse them with :func:`parse_dataclass_args`, which is tyro (``--field-name`` per field,
``--flag/--no-flag`` for bools, several values for list fields, ``None`` for optional ones, help from
the docstring under each field).

``add_config_flags`` does the same for chosen fields of a config dataclass inside the ``fastpolicy``
command's argparse subparsers, by hand, for a measured reason: tyro builds its own parser, so it cannot
add flags to an existing argparse subcommand, and importing it costs ~50–60 ms against ~7 ms for
argparse (``python -X importtime``, tyro 1.0.17, this machine), paid by every ``fastpolicy --help``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
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
    """Parse ``argv`` (default: sys.argv) into an instance of the dataclass ``cls`` (with tyro)."""
    import tyro

    return tyro.cli(cls, description=description, args=argv)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (the convention tyro and IDEs read)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): flags simply get no help text
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for field_node, doc in zip(body, body[1:]):
        if (isinstance(field_node, ast.AnnAssign) and isinstance(field_node.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)):
            docs[field_node.target.id] = " ".join(doc.value.value.split())
    return docs


def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                     names: Sequence[str], defaults: dict[str, Any] | None = None,
                     helps: dict[str, str] | None = None, flags: dict[str, str] | None = None) -> None:
    """Add ``--field-name`` for each of ``names`` of the dataclass ``cls``: its type and default come
    from the field (``defaults`` may change a default for one command; a field without a default is a
    required flag) and its help from the field's docstring (``helps`` may reword it); ``flags`` gives a
    field a shorter flag (``{"learning_rate": "--lr"}``), parsed into the field's name. A flag is thus
    defined once, in the config it fills."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    docs = field_docs(cls)
    for name in names:
        f = by_name[name]  # a KeyError here is a typo in the caller, a bug
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = (defaults or {}).get(name, default)
        flag = (flags or {}).get(name, f"--{name.replace('_', '-')}")
        text = (helps or {}).get(name, docs.get(name))
        if default is dataclasses.MISSING:
            parser.add_argument(flag, dest=name, type=_scalar_type(f.type, None), required=True, help=text)
        elif isinstance(default, bool) or str(f.type) == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                                help=text)
        else:
            parser.add_argument(flag, dest=name, type=_scalar_type(f.type, default), default=default,
                                help=text)


def config_kwargs(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The parsed values of ``names`` (flags added by :func:`add_config_flags`), ready for ``cls(**…)``."""
    return {name: getattr(args, name) for name in names}
