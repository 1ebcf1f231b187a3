# The two commands of the README: `make demo` and `make test`. Both set up .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= mujoco,rl,serve,minari,dist,dev
TORCH_PIN := torch==2.13.0
# Idle OpenMP threads sleep rather than spin (see fastpolicy/cli.py); tests and demo inherit it.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup demo test lint bench bench-quick clean

setup: $(STAMP)

# torch goes in first from its pin (a looser spec pulls a multi-GB CUDA build), then the package;
# the last line fails the set-up if anything upgraded torch behind our back.
$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -c "import torch, sys; v = torch.__version__.split('+')[0]; \
	  sys.exit(0 if v == '2.13.0' else f'torch was changed to {torch.__version__}; expected 2.13.0')"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/fastpolicy demo

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not gpu" tests

lint: setup
	$(VENV)/bin/ruff check .

# Every study of bench/manifest.toml (hours; writes the committed results). bench-quick: their smoke
# runs into a temp dir (minutes); tests/test_bench_manifest.py runs the same in `make test`.
bench: setup
	$(PY) bench/run_all.py

bench-quick: setup
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo_out
