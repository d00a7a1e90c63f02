# The front door. `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
, := ,
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install lock run retrain-demo run-containers test test-fast lint bench ui ui-screenshots clean compile submit-pipeline \
	schedule-pipeline image push k8s-validate gpu-check

# Everything installs from uv.lock (one lock for make install, the images and CI). uv itself,
# pinned here and in docker/Dockerfile, lives in .tools/ so that an exact sync of .venv keeps it.
UV_VERSION := 0.13.9
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never

# Re-installs only when pyproject.toml, uv.lock or the C generation kernel change; fails when
# pyproject.toml and uv.lock disagree (make lock). The kernel needs a C compiler and Python's headers.
# The `mlflow-server` group (the MLflow image's basic-auth app, PostgreSQL driver) lets the tests
# run the production server from .venv where no container engine is available.
# --compile-bytecode: every module's .pyc is written once, here. Without it a machine with
# PYTHONDONTWRITEBYTECODE=1 (this project's development and CI machines) compiles TensorFlow's
# and MLflow's sources again in every process: 23 s instead of 12 s to import them, paid by
# each pipeline step, training worker and test subprocess.
install: $(STAMP)
$(STAMP): pyproject.toml uv.lock setup.py wavenet/generation/_fastgen.c wavenet/generation/_fastgen_kernels.h Makefile
	@test -x $(UV) && [ "$$($(UV) --version | cut -d' ' -f2)" = "$(UV_VERSION)" ] || \
	  $(PYTHON) -m pip install -q --disable-pip-version-check --target .tools --upgrade "uv==$(UV_VERSION)"
	@test -x $(PY) || $(UV) venv -q --python $(PYTHON) $(VENV)
	@$(UV) sync -q --locked --extra dev --group mlflow-server --python $(PY) --compile-bytecode
	@touch $(STAMP)

# Re-resolve uv.lock from PyPI after editing pyproject.toml (commit both).
lock:
	@test -x $(UV) || $(PYTHON) -m pip install -q --disable-pip-version-check --target .tools "uv==$(UV_VERSION)"
	$(UV) lock

run: install
	$(PY) -m pipelines.run_local $(if $(DATA),--data $(DATA)) $(if $(FORCE),--force-train)

# Scheduled retraining, end to end: two pipeline runs on one shards_uri with warm_start, new
# tracks (and a new genre) arriving in between (docs/pipeline.md: Scheduled retraining, run here).
retrain-demo: install
	$(PY) -m devtools.retrain_demo

test: install
	$(PY) -m pytest

# The pre-commit loop: tests that need no training, server, container, kfp.local run or
# TensorFlow subprocess (the `unit` mark, added in tests/conftest.py; see docs/contributing.md).
test-fast: install
	$(PY) -m pytest -m unit

lint: install
	$(VENV)/bin/ruff check wavenet components pipelines tests devtools

# Each benchmark prints one JSON object (see docs/benchmarks.md).
bench: install
	$(VENV)/bin/wavenet bench generate --json
	$(VENV)/bin/wavenet bench generate --preset large --json
	$(VENV)/bin/wavenet bench preprocess --json
	$(VENV)/bin/wavenet bench train --json

# The MLflow UI over a local store: ./mlflow.db (make run), or MLFLOW_STORE=<folder> with
# mlflow.db and mlartifacts/ (make run-containers prints its folder).
MLFLOW_STORE ?= $(CURDIR)
# On a machine with an NVIDIA GPU (docs/benchmarks.md): large-preset training (mixed bfloat16, XLA)
# and many-stream generation, in one JSON file; installs TensorFlow's CUDA wheels if needed.
# Without a GPU it says so and fails; ARGS=--quick runs a smoke version on the CPU.
gpu-check: install
	$(PY) -m wavenet.bench.gpu --out gpu-check.json $(ARGS)

ui: install
	@echo "MLflow UI on http://127.0.0.1:5000: open the link make run printed (the 'WaveNet: compare models' view, in the model-training view); MLflow 3.17 opens experiments in its GenAI view otherwise"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(MLFLOW_STORE))/mlflow.db \
	  --artifacts-destination $(abspath $(MLFLOW_STORE))/mlartifacts --host 127.0.0.1 --port 5000

# Screenshots of the MLflow UI (experiment, newest training run, compare view) in headless
# Chromium (Debian's chromium package), for checking what a person sees: make ui-screenshots.
ui-screenshots: install
	$(PY) -m devtools.mlflow_ui --store $(MLFLOW_STORE) --experiment $(or $(EXPERIMENT),wavenet) --out mlflow-screenshots

# -- images and the cluster (docs/containers.md, docs/cluster.md) ---------------------
# One setting names every image: IMAGE_REGISTRY and IMAGE_TAG flow into make image, push,
# compile, submit-pipeline and run-containers (components/images.py reads the same variables).
IMAGE_REGISTRY ?= ghcr.io/wavenet-pipelines
IMAGE_TAG ?= 0.1.0
export IMAGE_REGISTRY IMAGE_TAG
IMAGE_cpu := $(IMAGE_REGISTRY)/wavenet:$(IMAGE_TAG)
IMAGE_gpu := $(IMAGE_REGISTRY)/wavenet-gpu:$(IMAGE_TAG)
IMAGE_mlflow := $(IMAGE_REGISTRY)/mlflow:$(IMAGE_TAG)
# Targets of docker/Dockerfile that `make image` and `make push` build and push.
TARGETS ?= cpu gpu mlflow

# docker where an engine answers and BuildKit (buildx) is there: the Dockerfile mounts the CA
# bundle as a build secret; else podman, else buildah (evaluated once, when needed). A docker
# CLI pointed at podman's socket without buildx builds with podman.
ENGINE ?= $(eval ENGINE := $(shell \
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then echo docker; \
  elif command -v podman >/dev/null 2>&1; then echo podman; \
  elif command -v buildah >/dev/null 2>&1; then echo buildah; fi))$(ENGINE)
# The base: the Dockerfile's pinned upstream image, or the local one that
# scripts/setup-containers.sh bootstraps where nothing can be pulled. BASE_IMAGE=... overrides.
LOCAL_BASE := localhost/wavenet-base/python:3.11-bookworm
BASE_IMAGE ?= $(eval BASE_IMAGE := $(shell \
  $(ENGINE) $(if $(filter buildah,$(ENGINE)),inspect --type image,image inspect) $(LOCAL_BASE) \
  >/dev/null 2>&1 && echo $(LOCAL_BASE)))$(BASE_IMAGE)
# The CA bundle pip and uv need to reach the index on this machine (build secret, never a layer).
CA_BUNDLE ?= $(or $(PIP_CERT),$(SSL_CERT_FILE))
# A plain-HTTP registry is only ever on loopback (the tests' docker-registry).
PUSH_FLAGS ?= $(if $(and $(filter-out docker,$(ENGINE)),$(filter 127.0.0.1:% localhost:%,$(firstword $(subst /, ,$(IMAGE_REGISTRY))))),--tls-verify=false)

# One line per image on the terminal; the engine's build log goes to IMAGE_LOGS/image-<target>.log
# and is printed whole when the build fails.
IMAGE_LOGS ?= build/logs
image: $(addprefix image-,$(TARGETS))
image-%:
	@test -n "$(ENGINE)" || { echo "error: no container engine: install Docker, or run scripts/setup-containers.sh (podman)" >&2; exit 2; }
	@mkdir -p $(IMAGE_LOGS); log=$(IMAGE_LOGS)/image-$*.log; start=$$(date +%s); \
	printf '%s' "$(ENGINE): building $(IMAGE_$*) (target $*, base $(or $(BASE_IMAGE),the Dockerfile's default), log $$log) ... "; \
	{ $(if $(filter buildah,$(ENGINE)),buildah build,$(if $(filter docker,$(ENGINE)),DOCKER_BUILDKIT=1 docker build,podman build)) \
	  -f docker/Dockerfile --target $* -t $(IMAGE_$*) --build-arg UV_VERSION=$(UV_VERSION) \
	  --label org.wavenet-pipelines.source=$$(python3 docker/source_digest.py) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(wildcard $(CA_BUNDLE)),--secret id=ca$(,)src=$(CA_BUNDLE)) $(BUILD_FLAGS) . ; } >$$log 2>&1 || \
	{ s=$$?; echo "failed"; cat $$log >&2; echo "error: building $(IMAGE_$*) failed (exit $$s); its log above and in $$log" >&2; exit $$s; }; \
	echo "built in $$(( $$(date +%s) - start )) s: $$($(ENGINE) image inspect --format '{{.Size}}' $(IMAGE_$*) | awk '{printf "%.0f MB", $$1/1e6}')"

# Every push records the manifest digest the registry got (podman/buildah --digestfile, docker's
# RepoDigests) in IMAGE_DIGESTS; compile and submit-pipeline then name images by that digest, and
# K8S_PINNED gets a kustomization of k8s/ with the pushed images by digest (kubectl apply -k build/k8s).
IMAGE_DIGESTS ?= images.lock.json
K8S_PINNED ?= build/k8s
push: $(addprefix push-,$(TARGETS))
	$(PY) -m pipelines.image_digests overlay --lock $(IMAGE_DIGESTS) --out $(K8S_PINNED)
push-%: install
	@test -n "$(ENGINE)" || { echo "error: no container engine: install Docker, or run scripts/setup-containers.sh (podman)" >&2; exit 2; }
	$(if $(filter docker,$(ENGINE)),docker push $(IMAGE_$*) && \
	  $(PY) -m pipelines.image_digests record $(IMAGE_$*) --lock $(IMAGE_DIGESTS) --engine docker,\
	  d=$$(mktemp) && $(ENGINE) push --digestfile $$d $(PUSH_FLAGS) $(IMAGE_$*) && \
	  $(PY) -m pipelines.image_digests record $(IMAGE_$*) --lock $(IMAGE_DIGESTS) --digest-file $$d; \
	  s=$$?; rm -f $$d; exit $$s)

# The wavenet-train pipeline with every step in its own container of the CPU image (docs/containers.md).
run-containers: install image-cpu image-mlflow
	$(PY) -m devtools.run_containers $(if $(DATA),--data $(DATA))

# KFP IR YAML, committed beside the pipeline with the default image names (a test checks it
# matches the code); with your IMAGE_REGISTRY/IMAGE_TAG, write it elsewhere: COMPILED=my.yaml.
COMPILED ?= pipelines/wavenet-train.yaml
compile: install
	IMAGE_DIGESTS=$(IMAGE_DIGESTS) $(PY) -m pipelines.wavenet_train $(COMPILED)

# KFP_HOST=https://.../pipeline [KFP_TOKEN=...] make submit-pipeline ARGS=run.yaml
submit-pipeline: install
	IMAGE_DIGESTS=$(IMAGE_DIGESTS) $(PY) -m pipelines.submit $(if $(KFP_HOST),--host $(KFP_HOST)) $(if $(ARGS),--args $(ARGS))

# make schedule-pipeline CRON="0 0 3 * * 1" [ARGS=run.yaml]
schedule-pipeline: install
	@test -n "$(CRON)" || { echo 'error: set CRON, e.g. make schedule-pipeline CRON="0 0 3 * * 1"' >&2; exit 2; }
	IMAGE_DIGESTS=$(IMAGE_DIGESTS) $(PY) -m pipelines.schedule --cron "$(CRON)" $(if $(KFP_HOST),--host $(KFP_HOST)) $(if $(ARGS),--args $(ARGS))

# Offline: Kubernetes schemas (kubernetes-validate), our TFJob schema, no committed secrets,
# pod hardening (Python checks), the TFJob admission policy (its CEL run by cel-python) and the
# step pods of the compiled pipelines.
k8s-validate: install
	$(PY) -m devtools.validate_k8s k8s $(wildcard pipelines/*.yaml)

clean:
	rm -rf build dist *.egg-info .pytest_cache runs
