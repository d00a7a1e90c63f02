# The front door. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install run test test-fast lint bench gpu-check ui clean compile submit-pipeline schedule-pipeline image k8s-validate

# Re-installs only when the package definition or the C generation kernel changes (uv when
# available: minutes -> seconds). The kernel needs a C compiler and Python's headers.
install: $(STAMP)
$(STAMP): pyproject.toml setup.py wavenet/_fastgen.c wavenet/_fastgen_kernels.h
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
	$(VENV)/bin/wavenet bench generate --preset large --json
	$(VENV)/bin/wavenet bench preprocess --json
	$(VENV)/bin/wavenet bench train --json

# On a machine with an NVIDIA GPU (README, Benchmarks): large-preset training (mixed bfloat16, XLA)
# and many-stream generation, in one JSON file; installs TensorFlow's CUDA wheels if needed.
# Without a GPU it says so and fails; ARGS=--quick runs a smoke version on the CPU.
gpu-check: install
	$(PY) -m wavenet.bench.gpu --out gpu-check.json $(ARGS)

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# -- the pipeline, the cluster (README: The Kubeflow pipeline, the cluster and MLflow) --------
# Images of components/images.py (compiled pipelines name these).
IMAGE ?= ghcr.io/wavenet-pipelines/wavenet:0.1.0
GPU_IMAGE ?= ghcr.io/wavenet-pipelines/wavenet-gpu:0.1.0
MLFLOW_IMAGE ?= ghcr.io/wavenet-pipelines/mlflow:3.17.2

# KFP IR YAML, committed beside the pipeline (a test checks it matches the code).
compile: install
	$(PY) -m pipelines.wavenet_train pipelines/wavenet-train.yaml

# KFP_HOST=https://.../pipeline [KFP_TOKEN=...] make submit-pipeline ARGS=run.yaml
submit-pipeline: install
	$(PY) -m pipelines.submit $(if $(KFP_HOST),--host $(KFP_HOST)) $(if $(ARGS),--args $(ARGS))

# make schedule-pipeline CRON="0 0 3 * * 1" [ARGS=run.yaml]
schedule-pipeline: install
	@test -n "$(CRON)" || { echo 'error: set CRON, e.g. make schedule-pipeline CRON="0 0 3 * * 1"' >&2; exit 2; }
	$(PY) -m pipelines.schedule --cron "$(CRON)" $(if $(KFP_HOST),--host $(KFP_HOST)) $(if $(ARGS),--args $(ARGS))

image:
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
	  echo "error: no Docker engine reachable here (docker info failed). On a machine with one run:" >&2; \
	  echo "  docker build -f docker/Dockerfile -t $(IMAGE) ." >&2; \
	  echo "  docker build -f docker/Dockerfile.gpu -t $(GPU_IMAGE) ." >&2; \
	  echo "  docker build -f docker/Dockerfile.mlflow -t $(MLFLOW_IMAGE) ." >&2; \
	  exit 2; fi
	docker build -f docker/Dockerfile -t $(IMAGE) .
	docker build -f docker/Dockerfile.gpu -t $(GPU_IMAGE) .
	docker build -f docker/Dockerfile.mlflow -t $(MLFLOW_IMAGE) .

# Offline: Kubernetes schemas (kubernetes-validate), our TFJob schema, no committed secrets.
k8s-validate: install
	$(PY) -m pipelines.validate_k8s k8s

clean:
	rm -rf build dist *.egg-info .pytest_cache runs
