# make run   : set up .venv (first time) and run the six notebooks headless
# make test  : the whole test suite (unit tests and the end-to-end notebook run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch on machines without a GPU; override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/default
PROFILE ?= auto
ARGS ?=
# pipefail: a failing pip fails the target even with its output filtered.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip without its progress, version check or the build backend's notices ("Editable installation"); the
# grep drops the "Location 'file:///...' is ignored" line that a pip config naming a local index folder
# (`pip config list`: extra-index-url = file:///...) prints for every package not in that folder.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip --quiet --disable-pip-version-check
QUIET := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }

.PHONY: setup run test test-fast test-slow lint notebooks strip quality bench bench-series clean kaggle

$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV) (first time: a few minutes)"
	@$(PYTHON) -m venv $(VENV)
	@echo "  pip, then $(TORCH_SPEC)"
	@$(PIP) install --upgrade pip $(QUIET)
	@$(PIP) install "$(TORCH_SPEC)" $(QUIET)
	@echo "  r1helpers and its extras (notebooks, tracking, export, dev)"
	@$(PIP) install -e ".[notebooks,tracking,export,dev]" $(QUIET)
	@$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

setup: $(VENV)/.installed

run: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PY) -m r1helpers.pipeline --run-dir $(RUN_DIR) --profile $(PROFILE) $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs tests

# The package's layers (core -> stages -> orchestration) as import-linter contracts in pyproject.toml.
lint: setup
	$(VENV)/bin/lint-imports

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow tests

notebooks: setup
	$(PY) tools/build_notebooks.py

strip: setup
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

bench: setup
	$(PY) tools/bench.py --out $(RUN_DIR)-bench.json $(ARGS)

# Stages 00-05 of the seed recipe on the 8B shape (random weights), each stage timed (needs a CUDA GPU).
bench-series: setup
	$(PY) tools/bench_series.py --out $(RUN_DIR)-series.json $(ARGS)

# build/kaggle/: the r1helpers dataset (the wheel, notebooks inside), one kernel folder per notebook (each
# asking for a T4, each continuing the previous one) and one kernel for the whole series; pushed with the kaggle
# CLI (2.2.5+) when credentials are set, else it prints what it would push. ARGS="--run 03" runs stages there.
# Needs no torch and no .venv: a throwaway venv with the build tool (setuptools) and pyyaml, made in seconds.
KAGGLE_VENV ?= build/.kaggle-venv
kaggle:
	@test -x $(KAGGLE_VENV)/bin/python || $(PYTHON) -m venv $(KAGGLE_VENV)
	@$(KAGGLE_VENV)/bin/python -m pip --quiet --disable-pip-version-check install "setuptools>=77" pyyaml packaging $(QUIET)
	$(KAGGLE_VENV)/bin/python tools/kaggle_push.py push --out build/kaggle $(ARGS)

clean:
	rm -rf runs .pytest_cache
