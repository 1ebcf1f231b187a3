"""The ``fastpolicy`` command: one entry point, subcommands registered by the subpackages.

Each module in ``COMMAND_MODULES`` defines ``register(subparsers)`` and imports only argparse-level
things at import time (heavy imports happen inside the handlers), so ``fastpolicy --help`` is fast.
A command module that cannot be imported is an error naming the module — never a silently missing
command (optional extras are imported inside the handlers, so a failed import here is a bug).

What every command gets from here, so no subcommand has to remember it: an example in its ``--help``
(``EXAMPLES``), defaults shown, docstring markup stripped, and one clear line with a non-zero exit
status for bad input (``ValueError``, ``FileNotFoundError`` and other ``OSError``), unwritable outputs,
Ctrl-C and a closed pipe instead of a traceback. A ``KeyError`` is not bad input: it is a bug and keeps
its traceback (user-facing name lookups raise ``ValueError`` naming the known names).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of spinning. On a busy machine
# (other jobs, the env's numba threads, a server's event loop) spinning teams made training steps ~10×
# slower here (measured 450–640 ms vs 45 ms per MLP step under load). An explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: command → the module whose ``register`` adds it. ``fastpolicy CMD ...`` imports only CMD's module
#: (some import torch at import time); ``fastpolicy --help`` imports them all to list every command.
COMMANDS: dict[str, str] = {
    "tasks": "fastpolicy.envs.cli",
    "data": "fastpolicy.data.cli",  # data make | import | info | verify | export | split | recipes
    "train": "fastpolicy.train.cli",
    "distill": "fastpolicy.train.distill_cli",
    "label": "fastpolicy.train.label_cli",
    "eval": "fastpolicy.eval_cli",
    "bench": "fastpolicy.bench.cli",
    "report": "fastpolicy.bench.cli",
    "demo": "fastpolicy.demo_cli",
    "explore": "fastpolicy.rl.cli",
    "serve": "fastpolicy.serve.cli",
    "control": "fastpolicy.control.cli",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))

#: Exit status for bad input / unusable outputs, an interrupt (128 + SIGINT) and a closed stdout pipe.
EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141

#: ``--help`` examples per command path. Times are measured on a busy 2-core CPU (see README).
EXAMPLES: dict[str, str] = {
    "": """\
  fastpolicy tasks                                      # task cards shipped with the package
  fastpolicy data make maze2d-umaze --size 20000       # ~5 s
  fastpolicy train --store datasets/store/maze2d-umaze --task maze2d-umaze --backbone mlp \\
      --steps 2000 --out runs/maze-mlp                 # ~35 s
  fastpolicy bench --suite smoke --task maze2d-umaze   # ~1 min: dataset, teacher, 6 methods compared
  fastpolicy eval runs/maze-mlp --task maze2d-umaze --sampler ddim:10
  fastpolicy <command> --help                           # options and an example for each command""",
    "tasks": "  fastpolicy tasks\n  fastpolicy tasks --json",
    "data": "  fastpolicy data recipes\n  fastpolicy data make maze2d-umaze --size 20000\n"
            "  fastpolicy data verify datasets/store/maze2d-umaze",
    "data make": "  fastpolicy data make maze2d-umaze --size 20000  # ~5 s → datasets/store/maze2d-umaze\n"
                 "  fastpolicy data make hopper-medium --size 20000 --out /tmp/hopper\n"
                 "  fastpolicy data recipes                           # every NAME",
    "data recipes": "  fastpolicy data recipes",
    "data import": "  fastpolicy data import hopper-medium-v2.hdf5 --out datasets/store/hopper-d4rl\n"
                   "  fastpolicy data import ~/.minari/datasets/mujoco/hopper/medium-v0 --format minari "
                   "--out datasets/store/hopper-minari",
    "data info": "  fastpolicy data info datasets/store/maze2d-umaze\n"
                 "  fastpolicy data info datasets/store/maze2d-umaze --json --no-png",
    "data verify": "  fastpolicy data verify datasets/store/maze2d-umaze",
    "data export": "  fastpolicy data export datasets/store/hopper-medium --out hopper-medium.hdf5",
    "data split": "  fastpolicy data split datasets/store/hopper-medium --labeled 0.1 --from-bottom 0.5 "
                  "--out datasets/store/hopper-medium-split",
    "train": "  fastpolicy train --store datasets/store/maze2d-umaze --task maze2d-umaze --backbone mlp \\\n"
             "      --steps 2000 --out runs/maze-mlp                  # ~35 s on 2 CPU cores\n"
             "  fastpolicy train --store datasets/store/maze2d-umaze --out runs/maze-mlp --steps 4000 "
             "--resume",
    "distill": "  fastpolicy distill --teacher runs/maze-mlp --store datasets/store/maze2d-umaze "
               "--out runs/maze-cm --segments 1 --steps 800",
    "label": "  fastpolicy label datasets/store/hopper-split --train-idm runs/idm "
             "--out datasets/store/hopper-labeled",
    "eval": "  fastpolicy eval runs/maze-mlp --task maze2d-umaze                  # → runs/maze-mlp/eval/\n"
            "  fastpolicy eval runs/maze-mlp --task maze2d-umaze --sampler ddpm:100 ddim:10 ddim:4 "
            "--episodes 5",
    "bench": "  fastpolicy bench --suite smoke --task maze2d-umaze  # ~1 min, from scratch → runs/bench\n"
             "  fastpolicy bench --suite demo --task maze2d-umaze --budget-ms 20\n"
             "  fastpolicy bench --suite quick --task maze2d-umaze --refresh-committed  # → bench/results",
    "report": "  fastpolicy report bench/results/quick_maze2d-umaze.json --png pareto.png --budget-ms 20",
    "demo": "  fastpolicy demo                      # ~6 min on 2 CPU cores; → demo_out/\n"
            "  fastpolicy demo --task agv-simple-static --out demo_agv",
    "explore": "  fastpolicy explore --task agv-sparse-detour --algo rnd-ppo --steps 200000 --out runs/rnd",
    "serve": "  FASTPOLICY_TOKEN=s3cret fastpolicy serve runs/maze-mlp --host 0.0.0.0 --port 8000\n"
             "  fastpolicy serve builtin-mlp --token-file ~/.fastpolicy-token",
    "control": "  fastpolicy control runs/maze-mlp --task maze2d-umaze --hz 20 --steps 400\n"
               "  fastpolicy control --server ws://robot-host:8000 --task maze2d-umaze --token-file token",
}

_MARKUP = [
    (re.compile(r":(?:mod|func|class|meth|attr|data|obj):`~?([^`]+)`"), r"\1"),
    (re.compile(r"``([^`]+)``"), r"\1"),
]


def strip_markup(text: str | None) -> str | None:
    """Docstring reST (``code``, :mod:`x`) → plain text for the terminal."""
    if not text:
        return text
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions and examples as written and appends ``(default: X)`` to options that have a
    default their help does not already mention."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or "%(default)" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
            or isinstance(action, argparse._VersionAction)
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})".lstrip()


def _version() -> str:
    from fastpolicy import __version__

    return f"fastpolicy {__version__} (python {sys.version.split()[0]})"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _polish(parser: argparse.ArgumentParser, path: str) -> None:
    """Formatter, plain-text help and the example epilog for ``parser`` and every subcommand below it."""
    parser.formatter_class = HelpFormatter
    parser.description = strip_markup(parser.description)
    if path in EXAMPLES and not parser.epilog:
        parser.epilog = "examples:\n" + EXAMPLES[path]
    for action in parser._actions:
        action.help = strip_markup(action.help)
    sub = _subparsers(parser)
    if sub is None:
        return
    for choice in sub._choices_actions:
        choice.help = strip_markup(choice.help)
    for name, child in sub.choices.items():
        _polish(child, f"{path} {name}".strip())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or (``command`` given) only the module that registers that command."""
    parser = argparse.ArgumentParser(
        prog="fastpolicy", description="Fast diffusion policies and planners for real-time robot control.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"the commands of {name} cannot be loaded: {exc}") from exc
        module.register(sub)
    _polish(parser, "")
    return parser


def _message(exc: BaseException) -> str:
    """One line for an exception: OSError with its file name."""
    if isinstance(exc, OSError) and exc.strerror and str(exc).startswith("[Errno"):
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """fastpolicy's own warnings as one ``fastpolicy: warning: ...`` line; others as Python prints them."""
    from fastpolicy.utils import FastpolicyWarning

    stream = file or sys.stderr
    if issubclass(category, FastpolicyWarning):
        text = f"fastpolicy: warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    try:
        stream.write(text)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--version"]:  # without importing every command module
        print(_version())
        return 0
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if argv and argv[0] == first else None)
    args = parser.parse_args(argv)
    command = " ".join(x for x in (args.command, getattr(args, "data_command", None)) if x)
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        result = args.func(args)
        sys.stdout.flush()  # a closed pipe (`| head`) surfaces here, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`fastpolicy data info X | head`): what it wanted was written. Point
        # stdout at /dev/null so the interpreter's final flush does not print a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as exc:
        print(f"fastpolicy {command}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:
        # Bad input or an unusable path: one clear line naming the problem, not a traceback.
        print(f"fastpolicy {command}: error: {_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        warnings.showwarning = previous_showwarning
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
