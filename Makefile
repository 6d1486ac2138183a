# imbalance-bench: every target that runs code depends on `install`, which is idempotent
# and returns at once when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

METHOD ?= mie
DATASET ?= avdigits
SEEDS ?= 0
EPOCHS ?=
LAUNCHER ?= inline
PROFILE ?=
WAIT ?=
SET ?=
RAW ?=
WORKERS ?=
RECIPE ?=
# The committed sweeps' methods (every registered method; `list methods` shows them).
SWEEP_METHODS ?= unimodal joint ogm_ge pmr agm mie mmpareto mmcosine inforeg greedy g_blending relearn reconboost umt mla

# g++: torch.compile's CPU backend builds its kernels with it (compile=true, and a test).
DEBIAN_PACKAGES := espeak-ng dataset-fashion-mnist ffmpeg munge slurmctld slurmd slurm-client slurmdbd mariadb-server g++

BENCH_ARGS := --method $(METHOD) --dataset $(DATASET) --seeds $(SEEDS) --launcher $(LAUNCHER) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(PROFILE),--profile $(PROFILE)) \
	$(if $(strip $(SET)),--set $(SET)) $(if $(WAIT),--wait)

.PHONY: install system-packages bench test lint bench-speed gpu-check figures prepare sweep status slurm-up slurm-down clean

install: system-packages $(STAMP)

# As root on Debian, install the programs the suite calls (espeak-ng for avdigits, ffmpeg
# for `prepare`, Slurm + munge + MariaDB for the single-node test cluster, g++ for
# torch.compile on the CPU, dataset-fashion-mnist for cgfashion). Elsewhere,
# print what is missing and carry on: the Python part still installs.
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing system packages (install them yourself): $$missing"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

bench: install
	$(PY) -m benchmark run $(BENCH_ARGS)

sweep: install
	$(PY) -m benchmark run --method $(SWEEP_METHODS) --dataset $(DATASET) --seeds 0 1 2 \
		--launcher $(LAUNCHER) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(PROFILE),--profile $(PROFILE)) \
		$(if $(WAIT),--wait)

# Per submitted grid (LAUNCHER=slurm|local): runs done, running, pending, failed (with logs).
status: install
	$(PY) -m benchmark status

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check .

bench-speed: install
	$(PY) -m pytest tests/benchmarks --benchmark-enable --benchmark-only -q

# On a machine with one GPU: fake full-size CREMA-D data, `speed` for every method at
# batch 64; table and JSON in results/speed/ (README, "Speed"). No install step: GPU
# machines may have no network; the script takes .venv's python if there is one, else
# python3 (which needs torch, torchvision, numpy, scipy, pillow and tqdm).
gpu-check:
	benchmark/speed/gpu_check.sh

# Tables, figures, and the results blocks of README.md and docs/*.md rewritten from the tables.
figures: install
	$(PY) -m benchmark report

# BENCH_VIA_MAKE: error messages name the make variables (RAW=...) instead of the flags.
prepare: install
	BENCH_VIA_MAKE=1 $(PY) -m benchmark prepare $(DATASET) $(if $(RAW),--raw $(RAW)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(RECIPE),--recipe $(RECIPE)) $(if $(strip $(SET)),--set $(SET))

# A single-node Slurm cluster for trying --launcher slurm --profile local on this machine
# (root; Debian packages from `make install`). Then: export SLURM_CONF=$$PWD/.slurm-test/slurm.conf
slurm-up: install
	slurm/testcluster/start.sh .slurm-test

slurm-down:
	slurm/testcluster/stop.sh .slurm-test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
