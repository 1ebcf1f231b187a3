#!/usr/bin/env bash
# The GPU check of the real-time path (CUDA graphs and the server): ≤ 5 min on one GPU,
# rows → bench/results/gpu_*.json.
#
#   bash bench/gpu_check.sh              # everything (bench/bench_gpu.py's defaults)
#   bash bench/gpu_check.sh --quick      # CPU dry run of the same logic, rows to a temp dir
#
# Python: $PYTHON if set, else the first of .venv/bin/python and python3 whose torch sees CUDA (the
# checkout's .venv holds a CPU torch on CPU machines). Without CUDA, bench_gpu.py says so on one line
# and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ -z "${PYTHON:-}" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# hard stop a little above the 5-minute target; the script's own --budget-s skips jobs before that
exec timeout 330 "$PYTHON" bench/bench_gpu.py "$@"
