"""Dataset recipes: ``fastpolicy data make NAME`` looks NAME up here.

Each module in ``RECIPE_MODULES`` defines ``RECIPES: dict[str, Callable]`` (imported lazily, so the
MuJoCo and AGV recipes cost nothing until used). A recipe is called as
``fn(out: Path, size: int | None, seed: int, overwrite: bool, progress: bool) -> EpisodeStore`` and
must write its store atomically (EpisodeStore.create) with attrs naming source, env id, recipe, seed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

RECIPE_MODULES = [
    "fastpolicy.data.recipes.maze",
    "fastpolicy.data.recipes.agv",
    "fastpolicy.data.recipes.mujoco",
]


def all_recipes() -> dict[str, Callable]:
    found: dict[str, Callable] = {}
    for name in RECIPE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # that recipe family is not built yet
            raise
        found.update(module.RECIPES)
    return found


def make_dataset(name: str, out: str | Path, size: int | None = None, seed: int = 0,
                 overwrite: bool = False, progress: bool = True):
    recipes = all_recipes()
    if name not in recipes:
        raise ValueError(f"unknown dataset recipe {name!r}; known: {', '.join(sorted(recipes))} "
                       "(fastpolicy data recipes)")
    return recipes[name](Path(out), size=size, seed=seed, overwrite=overwrite, progress=progress)
