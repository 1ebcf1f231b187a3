"""Run every benchmark script under bench/ in turn (``make bench``); ``--quick`` passes through.

Each script writes its own JSON rows (shared schema) under bench/results/; this runner only sequences
them — one at a time, since timings taken side by side with another benchmark would be meaningless.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Long or server-based ones last; the soak is opt-in (10 minutes by default).
ORDER = [
    "bench_backbones.py",
    "bench_sampling_overhead.py",
    "bench_sampler.py",
    "bench_agv_throughput.py",
    "bench_serve_load.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small runs (smoke test of every benchmark)")
    parser.add_argument("--only", nargs="*", default=None, help="script names to run (default: all)")
    args = parser.parse_args()
    scripts = [s for s in ORDER if args.only is None or s in args.only]
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(HERE / script)] + (["--quick"] if args.quick else [])
        print(f"==> {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"<== {script}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
