"""Script flags from an ``Args`` dataclass (tyro) and command flags from config fields (argparse)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fastpolicy.utils.args import add_config_flags, config_kwargs, parse_dataclass_args


@dataclass
class ScriptArgs:
    tasks: list[str] = field(default_factory=lambda: ["hopper-medium"])
    """task cards"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] | None = None
    quick: bool = False
    progress: bool = True
    out: Path = Path("bench/results")
    budget_ms: float | None = None


def test_script_args_parse_lists_bools_paths_and_optionals():
    assert parse_dataclass_args(ScriptArgs, argv=[]) == ScriptArgs()
    got = parse_dataclass_args(ScriptArgs, argv=["--tasks", "a", "b", "--seeds", "7", "--methods", "m",
                                                 "--quick", "--no-progress", "--out", "/tmp/x",
                                                 "--budget-ms", "2.5"])
    assert got == ScriptArgs(tasks=["a", "b"], seeds=[7], methods=["m"], quick=True, progress=False,
                             out=Path("/tmp/x"), budget_ms=2.5)
    with pytest.raises(SystemExit):
        parse_dataclass_args(ScriptArgs, argv=["--seeds", "one"])
    with pytest.raises(SystemExit):
        parse_dataclass_args(ScriptArgs, argv=["--no-such-flag"])


@dataclass
class RunConfig:
    task: str
    """task card"""
    learning_rate: float = 3e-4
    """step size"""
    progress: bool = True


def test_config_flags_take_type_default_help_and_short_names_from_the_config():
    parser = argparse.ArgumentParser()
    names = ("task", "learning_rate", "progress")
    add_config_flags(parser, RunConfig, names, flags={"learning_rate": "--lr"})
    args = parser.parse_args(["--task", "t", "--lr", "1e-3", "--no-progress"])
    assert RunConfig(**config_kwargs(args, names)) == RunConfig("t", 1e-3, False)
    assert "step size" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args([])  # task has no default: required
