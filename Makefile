# elaunch: `make demo` runs a real DDP training under elaunch; `make test` runs the test suite.
# Everything is installed into a project virtual environment, $(VENV), made on first use with the
# system's python3 (so a distribution's externally managed Python, PEP 668, is never touched; it sees
# that Python's packages, e.g. a torch already installed). Activate it to type `elaunch`:
#   . .venv/bin/activate
# `make PY=python3 ...` installs into that Python instead.
VENV ?= .venv
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SYSTEM_PY ?= python3
PY ?= $(VENV)/bin/python
PIP ?= $(PY) -m pip
# The CPU build of torch (on this project's machines it is on disk; elsewhere pick your build).
TORCH ?= torch==2.13.0
NPROC ?= 2

.PHONY: install install-dev testbed demo test test-fast lint format bench bench-quick clean

# SLURM examples: make slurm-one / slurm-multi / slurm-elastic (submit with sbatch).
include scripts/slurm/slurm.mk

# The venv, only when PY is the venv's python.
$(VENV)/bin/python:
	$(SYSTEM_PY) -m venv --system-site-packages $(VENV)
	@echo "elaunch: installing into $(VENV) (activate it with: . $(VENV)/bin/activate)"

# numpy: torch warns "Failed to initialize NumPy" in every worker without it.
install: $(filter $(VENV)/bin/python,$(PY))
	$(PIP) install -q $(TORCH) numpy
	$(PIP) install -q -e .

install-dev: install
	$(PIP) install -q -e '.[dev]'

# System packages for the multi-host, etcd and SLURM tests (root; tests skip without them).
testbed:
	bash scripts/testbed/install.sh

demo: install
	$(PY) -m elaunch --standalone --nproc-per-node $(NPROC) examples/ddp_demo.py --epochs 3  # = `elaunch ...`

test: install-dev
	$(PY) -m pytest -q -ra

test-fast: install-dev
	$(PY) -m pytest -q -m "not torch and not netns and not slurm and not etcd"

lint: install-dev
	$(PY) -m ruff check elaunch tests scripts examples
	$(PY) -m ruff format --check elaunch tests scripts examples
	$(PY) -m mypy elaunch

format: install-dev
	$(PY) -m ruff check --fix elaunch tests scripts examples
	$(PY) -m ruff format elaunch tests scripts examples

bench: install-dev
	$(PY) scripts/bench_launch.py
	$(PY) scripts/bench_logs.py
	$(PY) scripts/bench_live.py
	$(PY) scripts/bench_rendezvous.py
	$(PY) scripts/bench_recovery.py
	$(PY) scripts/bench_hangs.py
	$(PY) scripts/bench_health.py
	$(PY) scripts/bench_api.py
	$(PY) scripts/bench_restart.py
	$(PY) scripts/bench_spare.py
	$(PY) scripts/bench_etcd_idle.py

bench-quick: install-dev
	$(PY) scripts/bench_launch.py --quick
	$(PY) scripts/bench_logs.py --quick
	$(PY) scripts/bench_live.py --quick
	$(PY) scripts/bench_rendezvous.py --quick
	$(PY) scripts/bench_recovery.py --quick
	$(PY) scripts/bench_hangs.py --quick
	$(PY) scripts/bench_health.py --quick
	$(PY) scripts/bench_api.py --quick
	$(PY) scripts/bench_restart.py --quick
	$(PY) scripts/bench_spare.py --quick
	$(PY) scripts/bench_etcd_idle.py --window 10

clean:
	rm -rf build dist *.egg-info bench-results .pytest_cache .mypy_cache .ruff_cache $(VENV)
