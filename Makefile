# elaunch: `make demo` runs a real DDP training under elaunch; `make test` runs the test suite.
PY ?= python3
PIP ?= $(PY) -m pip
# The CPU build of torch (on this project's machines it is on disk; elsewhere pick your build).
TORCH ?= torch==2.13.0
NPROC ?= 2

.PHONY: install install-dev testbed demo test test-fast lint format bench bench-quick clean

# SLURM examples: make slurm-one / slurm-multi / slurm-elastic (submit with sbatch).
include scripts/slurm/slurm.mk

install:
	$(PIP) install -q $(TORCH)
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

lint:
	ruff check elaunch tests scripts examples
	ruff format --check elaunch tests scripts examples
	mypy elaunch

format:
	ruff check --fix elaunch tests scripts examples
	ruff format elaunch tests scripts examples

bench: install-dev
	$(PY) scripts/bench_launch.py
	$(PY) scripts/bench_logs.py
	$(PY) scripts/bench_rendezvous.py
	$(PY) scripts/bench_recovery.py
	$(PY) scripts/bench_restart.py
	$(PY) scripts/bench_spare.py

bench-quick: install-dev
	$(PY) scripts/bench_launch.py --quick
	$(PY) scripts/bench_logs.py --quick
	$(PY) scripts/bench_rendezvous.py --quick
	$(PY) scripts/bench_recovery.py --quick
	$(PY) scripts/bench_restart.py --quick
	$(PY) scripts/bench_spare.py --quick

clean:
	rm -rf build dist *.egg-info bench-results .pytest_cache .mypy_cache .ruff_cache
