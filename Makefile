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

.PHONY: setup run test test-fast test-slow notebooks strip quality bench clean kaggle

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[notebooks,tracking,export,eval,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

run: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(PY) -m r1helpers.pipeline --run-dir $(RUN_DIR) --profile $(PROFILE) $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs tests

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow tests

notebooks: setup
	$(PY) tools/build_notebooks.py

strip: setup
	$(VENV)/bin/nbstripout --keep-id notebooks/*.ipynb

bench: setup
	$(PY) -m r1helpers.bench --out $(RUN_DIR)-bench.json $(ARGS)

# build/kaggle/: the r1helpers dataset and one kernel folder per notebook; pushed with the kaggle
# CLI when credentials are set (else it prints what it would push). ARGS="--run 03" runs stages there.
kaggle: setup
	$(PY) -m r1helpers.kaggle push --out build/kaggle $(ARGS)

clean:
	rm -rf runs .pytest_cache
