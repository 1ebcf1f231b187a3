#!/usr/bin/env bash
# Create (or check) the peer virtualenv bench/peers/.venv for the d3rlpy baselines. Idempotent: when the
# venv exists, was built from the current requirements.txt and still has torch 2.13.0+cpu, it does nothing.
#
#   bash bench/peers/setup_venv.sh            # create / update
#   bash bench/peers/setup_venv.sh --force    # rebuild from scratch
#
# Why a separate venv: d3rlpy 2.8.1 pins gymnasium==1.0.0 and pulls gym 0.26; fastpolicy uses a newer
# gymnasium, so the two cannot share one environment. Overrides: PEER_VENV (venv path), PEER_BASE_PYTHON
# (interpreter, default: the base python of /work/main/.venv, i.e. python3.11), TORCH_WHEEL.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${PEER_VENV:-$HERE/.venv}"
REQ="$HERE/requirements.txt"
TORCH_WANT="2.13.0+cpu"
TORCH_WHEEL="${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
STAMP="$VENV/.fastpolicy-peer-stamp"

say() { echo "[peer-venv] $*"; }
die() { echo "[peer-venv] ERROR: $*" >&2; exit 1; }

force=0
[[ "${1:-}" == "--force" ]] && force=1

want_stamp="$( (cat "$REQ"; echo "$TORCH_WHEEL") | sha256sum | cut -d' ' -f1)"

torch_version() { "$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || true; }

if [[ $force == 0 && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
    have="$(torch_version)"
    if [[ "$have" == "$TORCH_WANT" ]]; then
        say "up to date: $VENV (torch $have)"
        exit 0
    fi
    say "torch in $VENV is '$have', expected $TORCH_WANT: reinstalling"
fi

if [[ -n "${PEER_BASE_PYTHON:-}" ]]; then
    BASE_PY="$PEER_BASE_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
    BASE_PY="$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
else
    BASE_PY="$(command -v python3.11 || true)"
fi
[[ -n "$BASE_PY" && -x "$BASE_PY" ]] || die "no python3.11 found (set PEER_BASE_PYTHON)"
"$BASE_PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$BASE_PY is not Python 3.11 (the torch wheel is cp311)"
[[ -f "$TORCH_WHEEL" ]] || die "torch wheel not found: $TORCH_WHEEL (set TORCH_WHEEL); refusing to let pip pull CUDA torch"

if [[ $force == 1 && -d "$VENV" ]]; then
    say "removing $VENV (--force)"
    rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $BASE_PY"
    "$BASE_PY" -m venv "$VENV"
fi
rm -f "$STAMP"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
say "installing torch from $TORCH_WHEEL"
"${PIP[@]}" install --quiet "$TORCH_WHEEL"
say "installing $REQ"
"${PIP[@]}" install --quiet -r "$REQ"

have="$(torch_version)"
[[ "$have" == "$TORCH_WANT" ]] || die "torch is '$have' after installing requirements, expected $TORCH_WANT"
"$VENV/bin/python" - <<'EOF' || die "peer venv check failed"
import d3rlpy, gymnasium, mujoco, torch
env = gymnasium.make("Hopper-v5")
env.reset(seed=0)
env.close()
print(f"[peer-venv] ok: d3rlpy {d3rlpy.__version__}, gymnasium {gymnasium.__version__}, "
      f"mujoco {mujoco.__version__}, torch {torch.__version__}")
EOF
echo "$want_stamp" > "$STAMP"
say "ready: $VENV"
