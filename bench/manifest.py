"""The benchmark manifest (``bench/manifest.toml``) as Python values: one list of every study.

``bench/run_all.py`` runs studies from it, ``bench/update_docs.py`` renders docs tables from it and
``tests/test_bench_manifest.py`` smoke-runs it, so a new study is added in one place.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "bench" / "manifest.toml"


@dataclass(frozen=True)
class Table:
    """One ``<!-- table:NAME -->`` block of docs/benchmarks.md and the rows it shows."""

    name: str
    file: str
    layout: str
    task: str | None = None
    split: str | None = None
    """show only the rows of this split (``validation`` / ``test``), for files that hold both"""


@dataclass(frozen=True)
class Study:
    """One benchmark study: its full runs, its quick run, what it writes and the tables it feeds."""

    name: str
    about: str
    commands: list[list[str]]
    quick: list[str] | None = None
    smoke_test: str | None = None
    gpu: bool = False
    results: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    @property
    def scripts(self) -> set[str]:
        """Scripts under bench/ this study runs (full and quick)."""
        argvs = [*self.commands, *([self.quick] if self.quick else [])]
        return {a[0] for a in argvs if a and a[0].endswith(".py")}


def load(path: Path = MANIFEST) -> list[Study]:
    """Every study in ``path``; ValueError naming the study when an entry is malformed."""
    data = tomllib.loads(path.read_text())
    studies = []
    for entry in data.get("study", []):
        name = entry.get("name", "?")
        try:
            tables = [Table(**t) for t in entry.pop("tables", [])]
            study = Study(**entry, tables=tables)
        except TypeError as exc:
            raise ValueError(f"{path}: study {name!r}: {exc}") from None
        if not study.commands or (study.quick is None and study.smoke_test is None):
            raise ValueError(f"{path}: study {name!r} needs commands and a quick run or a smoke_test")
        studies.append(study)
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate study names in {names}")
    return studies


def tables(studies: list[Study] | None = None) -> dict[str, Table]:
    """Every docs table by name, from the studies that feed them."""
    out: dict[str, Table] = {}
    for study in load() if studies is None else studies:
        for table in study.tables:
            if table.name in out:
                raise ValueError(f"docs table {table.name!r} is fed by two studies")
            out[table.name] = table
    return out


def argv(command: list[str], out: str | Path = "") -> list[str]:
    """A runnable argv: ``{out}`` filled in, a ``.py`` script run by this Python from the repository root,
    ``fastpolicy`` by the console script next to this Python."""
    args = [a.replace("{out}", str(out)) for a in command]
    if args[0].endswith(".py"):
        return [sys.executable, str(ROOT / args[0]), *args[1:]]
    if args[0] == "fastpolicy":
        exe = Path(sys.executable).with_name("fastpolicy")
        return [str(exe) if exe.exists() else shutil.which("fastpolicy") or "fastpolicy", *args[1:]]
    return args
