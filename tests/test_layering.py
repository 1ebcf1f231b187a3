"""Imports point one way: a module imports only its own package or the layers below it.

Every module under ``fastpolicy/`` is parsed with ``ast`` — imports inside functions and under
``TYPE_CHECKING`` count, because lazy imports are exactly where cycles used to hide, and so does a
string that is exactly a module name (``"fastpolicy.serve.server"`` in a lazy-export table or registry).
A new package must be placed in ``LAYERS`` before the test passes; docs/architecture.md explains each
layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "fastpolicy"

#: Low → high. A module may import from its own package and from any earlier group; packages in the
#: same group are peers and may not import each other. Keys are paths under ``fastpolicy``; the longest
#: matching key wins (``data.recipes`` runs envs and RL agents to write datasets, so it sits above
#: them although it lives under ``data/``). Command-line modules (``cli``, ``*_cli``) and the root
#: package's lazy facade are the top layer, ``CLI``.
LAYERS: list[tuple[str, ...]] = [
    ("utils", "resources"),  # atomic files, seeding, the checkpoint format; package data files
    ("kernels", "nets", "diffusion"),  # numba kernels, backbones, noise tables and samplers
    ("data",),  # EpisodeStore, window sampler, normalisers, dataset import/export
    ("envs",),  # task registry, maze / AGV / MuJoCo environments and experts
    ("rl",),  # SAC and exploration agents that generate datasets
    ("data.recipes",),  # dataset recipes: experts and RL agents run in the environments
    ("policies",),  # Policy / Session contract, the policies, saving and loading them
    ("train",),  # the training loop, distillation, proxy labelling
    ("evaluation",),  # rollouts, scores, the result row, timing
    ("distributed",),  # fan-out over a Ray cluster
    ("serve",),  # wire protocol, server, client
    ("control",),  # real-time control loop and broker (a serve client)
    ("bench",),  # benchmark suites, runner, reports
    ("demo",),  # the end-to-end demo: a benchmark suite on one task
]
CLI = "cli"

#: Known upward edges, (importer prefix, imported prefix) → why it is still here. Each entry is work
#: left to do; remove it with the import it excuses, never add one to make a new import pass.
ALLOWED: dict[tuple[str, str], str] = {}

_RANK = {key: rank for rank, group in enumerate(LAYERS) for key in group}
_MODULE_NAME = re.compile(r"fastpolicy(\.\w+)+(:\w+)?")


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The LAYERS key (or ``CLI``) that ``module`` belongs to; ``KeyError`` names an unplaced package."""
    parts = module.split(".")[1:]
    if not parts or parts[-1] == "cli" or parts[-1].endswith("_cli"):
        return CLI
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in _RANK:
            return key
    raise KeyError(f"{module} is in no layer: add its package to LAYERS in tests/test_layering.py")


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """Every ``fastpolicy`` module ``source`` imports, anywhere in the file, with its line number."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if base == "fastpolicy" and alias.name == "__version__":
                    continue  # a constant of the root package, which imports nothing eagerly
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _MODULE_NAME.fullmatch(node.value):
            # a module named in a string (lazy exports, registries): imported at run time all the same
            name = node.value.partition(":")[0]
            found.append((name if name in known else name.rpartition(".")[0], node.lineno))
    return [(name, line) for name, line in dict.fromkeys(found)
            if name == "fastpolicy" or name.startswith("fastpolicy.")]


def violations(root: Path = PACKAGE_ROOT, allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    allowed = ALLOWED if allowed is None else allowed
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    problems = []
    for file in files:
        module = module_name(file, root)
        source_layer = layer_of(module)
        for target, line in imports_of(file.read_text(), module, file.name == "__init__.py", known):
            target_layer = layer_of(target)
            if target_layer == source_layer or source_layer == CLI:
                continue
            same_package = module.split(".")[:2] == target.split(".")[:2]
            upward = target_layer == CLI or _RANK[target_layer] > _RANK[source_layer]
            peer = _RANK.get(target_layer) == _RANK[source_layer] and not same_package
            if not (upward or peer):
                continue
            if any(module.startswith(a) and target.startswith(b) for a, b in allowed):
                continue
            kind = "upward" if upward else "peer"
            problems.append(f"{file.relative_to(root.parent)}:{line}: {module} ({source_layer}) imports "
                            f"{target} ({target_layer}), {kind}")
    return problems


def test_imports_point_one_way():
    problems = violations()
    assert not problems, "imports against the layering (see docs/architecture.md):\n" + "\n".join(problems)


def test_allowed_upward_edges_are_still_needed():
    """An entry of ALLOWED whose import is gone must go too, so the list only shrinks."""
    files = sorted(PACKAGE_ROOT.rglob("*.py"))
    known = {module_name(f) for f in files}
    edges = {(module_name(f), target) for f in files
             for target, _ in imports_of(f.read_text(), module_name(f), f.name == "__init__.py", known)}
    for a, b in ALLOWED:
        assert any(m.startswith(a) and t.startswith(b) for m, t in edges), f"ALLOWED[{a!r}, {b!r}] is stale"


def test_every_module_has_a_layer():
    for file in PACKAGE_ROOT.rglob("*.py"):
        layer_of(module_name(file))  # raises for a package missing from LAYERS


def command_code_outside_cli(root: Path = PACKAGE_ROOT) -> list[str]:
    """Library modules that register commands (a ``register`` function or ``add_parser`` call)."""
    found = []
    for file in sorted(root.rglob("*.py")):
        module = module_name(file, root)
        if layer_of(module) == CLI:
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "register" or (
                    isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_parser"):
                found.append(f"{file.relative_to(root.parent)}:{node.lineno}: {module}")
    return found


def test_commands_are_registered_only_by_cli_modules():
    """argparse sub-commands live in ``cli`` / ``*_cli`` modules, never in the library."""
    assert command_code_outside_cli() == []


#: Lines above which a module's docstring must say why it is one module (a paragraph ``Length: ...``).
LONG_MODULE_LINES = 400
#: Long modules excused from saying why (none: split a module or give its reason instead).
LONG_WITHOUT_REASON: set[str] = set()


def long_modules_without_reason(root: Path = PACKAGE_ROOT) -> list[str]:
    found = []
    for file in sorted(root.rglob("*.py")):
        source = file.read_text()
        lines = source.count("\n")
        module = module_name(file, root)
        if lines > LONG_MODULE_LINES and module not in LONG_WITHOUT_REASON:
            doc = ast.get_docstring(ast.parse(source)) or ""
            if "\nLength: " not in f"\n{doc}":
                found.append(f"{file.relative_to(root.parent)}: {lines} lines and no 'Length:' reason")
    return found


def test_long_modules_say_why():
    assert long_modules_without_reason() == [], "split them, or say why they are one module"


def _write(root: Path, rel: str, text: str = "") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_an_upward_import_fails(tmp_path):
    """The check can fail: a lazy import from nets up into train, and a peer import, are both named."""
    root = tmp_path / "fastpolicy"
    _write(root, "__init__.py", "__version__ = '0'\n")
    for pkg in ("nets", "train", "diffusion", "utils"):
        _write(root, f"{pkg}/__init__.py")
    _write(root, "train/trainer.py", "from fastpolicy.nets import mlp\nfrom . import loop\n")
    _write(root, "train/loop.py", "from fastpolicy import __version__\n")
    _write(root, "nets/mlp.py", "def fit():\n    from fastpolicy.train.trainer import Trainer\n")
    _write(root, "nets/unet.py", "from ..diffusion import schedule\nfrom fastpolicy.utils import x\n")
    _write(root, "diffusion/schedule.py")
    _write(root, "utils/lazy.py", '"""See fastpolicy.train.trainer."""\n'
                                  'T = {"T": "fastpolicy.train.trainer:T"}\n')
    problems = violations(root, allowed={})
    assert len(problems) == 3, problems
    assert "fastpolicy/utils/lazy.py:2: fastpolicy.utils.lazy (utils) imports fastpolicy.train.trainer" \
        in problems.pop()  # a module named in a string counts; one named inside prose does not
    assert "fastpolicy.nets.mlp (nets) imports fastpolicy.train.trainer (train), upward" in problems[0]
    assert problems[0].startswith("fastpolicy/nets/mlp.py:2:")
    assert "nets.unet (nets) imports fastpolicy.diffusion.schedule (diffusion), peer" in problems[1]
    _write(root, "train/distill.py", "def register(sub):\n    sub.add_parser('distill')\n")
    _write(root, "train/cli.py", "def register(sub):\n    sub.add_parser('train')\n")
    assert command_code_outside_cli(root) == ["fastpolicy/train/distill.py:1: fastpolicy.train.distill",
                                              "fastpolicy/train/distill.py:2: fastpolicy.train.distill"]
    _write(root, "train/long.py", '"""A long module."""\n' + "x = 1\n" * LONG_MODULE_LINES)
    _write(root, "train/reasoned.py", '"""A long module.\n\nLength: one algorithm."""\n' + "x = 1\n" * 500)
    assert long_modules_without_reason(root) == [
        "fastpolicy/train/long.py: 401 lines and no 'Length:' reason"]
    assert violations(root, allowed={("fastpolicy.nets", "fastpolicy.train"): "",
                                     ("fastpolicy.utils", "fastpolicy.train"): "",
                                     ("fastpolicy.nets.unet", "fastpolicy.diffusion"): ""}) == []


def test_an_unplaced_package_fails(tmp_path):
    with pytest.raises(KeyError, match="add its package to LAYERS"):
        layer_of("fastpolicy.newthing.module")
    assert layer_of("fastpolicy.data.recipes.maze") == "data.recipes"
    assert layer_of("fastpolicy.data.store") == "data"
    assert layer_of("fastpolicy.train.cli") == layer_of("fastpolicy.eval_cli") == CLI
    assert layer_of("fastpolicy") == CLI
