# The front door. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install run test test-fast lint bench ui clean

# Re-installs only when pyproject.toml changes (uv when available: minutes -> seconds).
install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip uv
	@$(VENV)/bin/uv pip install -q --python $(PY) -e '.[dev]' || $(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: install
	$(PY) -m pipelines.run_local $(if $(DATA),--data $(DATA))

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check wavenet components pipelines tests

# Each benchmark prints one JSON object (see README, Benchmarks).
bench: install
	$(VENV)/bin/wavenet bench generate --json
	$(VENV)/bin/wavenet bench preprocess --json
	$(VENV)/bin/wavenet bench train --json

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf build dist *.egg-info .pytest_cache runs
