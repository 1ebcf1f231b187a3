"""Run every benchmark study of bench/manifest.toml in turn (``make bench``); ``--quick``: their smoke runs.

Full runs write the committed results under bench/results/ (and docs/ plots); quick runs write into a
temporary folder (or ``--out``) and never touch them. Studies run one at a time: timings taken side by
side with another benchmark would be meaningless. A study whose full run needs CUDA is skipped on a
machine without it (its quick form runs anywhere).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import manifest  # bench/manifest.py, beside this script


def main(argv: list[str] | None = None) -> int:
    studies = manifest.load()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each study's smoke run (seconds), into --out")
    parser.add_argument("--only", nargs="*", default=None, choices=[s.name for s in studies], metavar="STUDY",
                        help="studies to run (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], metavar="STUDY", help="studies to leave out")
    parser.add_argument("--out", type=Path, default=None,
                        help="--quick: where outputs go (default: a temp dir)")
    parser.add_argument("--list", action="store_true",
                        help="print the studies and their commands, run nothing")
    args = parser.parse_args(argv)

    chosen = [s for s in studies if (args.only is None or s.name in args.only) and s.name not in args.skip]
    out = args.out or Path(tempfile.mkdtemp(prefix="fastpolicy-bench-quick-") if args.quick else ".")
    has_cuda = _has_cuda() if not args.quick and any(s.gpu for s in chosen) else False
    failed: list[str] = []
    for study in chosen:
        if args.quick:
            if study.quick is None:
                print(f"--- {study.name}: no quick run here; smoke-tested by {study.smoke_test}", flush=True)
                continue
            if not args.list:
                (out / study.name).mkdir(parents=True, exist_ok=True)
            commands = [manifest.argv(study.quick, out / study.name)]
        elif study.gpu and not has_cuda:
            print(f"--- {study.name}: needs CUDA, skipped on this machine", flush=True)
            continue
        else:
            commands = [manifest.argv(c) for c in study.commands]
        for cmd in commands:
            print(f"==> {study.name}: {' '.join(cmd)}", flush=True)
            if args.list:
                continue
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, cwd=manifest.ROOT)
            print(f"<== {study.name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
            if rc:
                failed.append(study.name)
                break
    if args.quick and not args.list:
        print(f"quick outputs in {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
