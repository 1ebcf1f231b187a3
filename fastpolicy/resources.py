"""Where the files fastpolicy reads at run time live: task cards, AGV layouts and behaviour actors.

They are edited at the repository root (``envs/`` and ``envs/agv/``, ``datasets/behavior/``). A wheel
ships copies inside the package (``fastpolicy/_data/envs``, ``fastpolicy/_data/behavior``, copied there
by ``setup.py``'s build step), so an installed fastpolicy needs no checkout. Lookup, first match wins:

1. ``$FASTPOLICY_TASKS_DIR`` (task cards, layouts under ``agv/``) or ``$FASTPOLICY_BEHAVIOR_DIR``
   (behaviour actors): your own folders instead of the shipped ones;
2. the copy inside the installed package (a non-editable install);
3. the source checkout the package was imported from (an editable install, or running from a clone).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: kind → (environment variable, folder inside the package, folder in the source checkout)
_KINDS: dict[str, tuple[str, str, str]] = {
    "tasks": ("FASTPOLICY_TASKS_DIR", "_data/envs", "envs"),
    "behavior": ("FASTPOLICY_BEHAVIOR_DIR", "_data/behavior", "datasets/behavior"),
}


def resource_dir(kind: str) -> Path:
    """The folder holding ``kind`` (``tasks`` or ``behavior``) files; see the module docstring."""
    if kind not in _KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; known: {', '.join(_KINDS)}")
    env_var, packaged, checkout = _KINDS[kind]
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    inside = _PACKAGE / packaged
    if inside.is_dir():
        return inside
    return _PACKAGE.parent / checkout


def describe(kind: str) -> str:
    """One line for error messages: where ``kind`` files were looked for and how to point elsewhere."""
    env_var = _KINDS[kind][0]
    return f"{resource_dir(kind)} (set ${env_var} to use another folder)"
