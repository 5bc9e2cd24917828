# DataMCP mesh. `make run` starts the mesh, `make test` runs every test;
# both create .venv and install what they need on first use (`make run` only
# the runtime dependencies; `make test` and the checks the dev tools too).
# Server flags go through ARGS: make run ARGS="--listen 127.0.0.1:6000".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
BUF := npx --yes @bufbuild/buf@1.75.0
# Our contracts only: proto/google/rpc is a vendored copy for other languages
# (Python gets google.rpc from googleapis-common-protos).
PROTOS := $(shell find proto/datamcp -name '*.proto' | sort)
PROTO_INCLUDE = $$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
PYTEST_ARGS ?=
ARGS ?=

.PHONY: install run test check lint fmt typecheck imports gen gen-check buf-lint breaking infra-check sam-lint sam-transform lambda-package bench clean

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-runtime

# Runtime dependencies only (no linters, moto, pandas...): what `make run` needs.
$(VENV)/.installed-runtime: pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e .
	touch $@

install: $(VENV)/.installed

# The server in the foreground; `.venv/bin/datamcp` is the command line (or
# `. .venv/bin/activate` to have `datamcp` on PATH). make itself ends with
# 143 when it is sent SIGTERM (after the server stopped gracefully); under a
# supervisor run `.venv/bin/datamcp serve` directly.
run: $(VENV)/.installed-runtime
	@echo "datamcp: the command line is .venv/bin/datamcp (. .venv/bin/activate puts it on PATH)"
	$(BIN)/datamcp serve $(ARGS)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

# Regenerate gen/ from proto/: messages, gRPC stubs and .pyi stubs (mypy-protobuf).
define protoc
	mkdir -p $(1)
	PATH=$(CURDIR)/$(BIN):$$PATH $(PY) -m grpc_tools.protoc -Iproto -I$(PROTO_INCLUDE) \
	  --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) $(PROTOS)
	touch $(1)/datamcp/v1/__init__.py
endef

gen: install
	rm -rf gen/datamcp
	$(call protoc,gen)

gen-check: install
	rm -rf .gen-check && $(call protoc,.gen-check)
	diff -r -x __pycache__ .gen-check/datamcp gen/datamcp || \
	  (echo "gen/ is stale: run 'make gen' and commit the result" && rm -rf .gen-check && exit 1)
	rm -rf .gen-check

lint: install
	$(BIN)/ruff check src handlers tests clients infra
	$(BIN)/ruff format --check src handlers tests clients infra

fmt: install
	$(BIN)/ruff check --fix src handlers tests clients infra
	$(BIN)/ruff format src handlers tests clients infra

typecheck: install
	$(BIN)/mypy src handlers clients/python/datamcp_client infra/sam

# The import rules in pyproject.toml ([tool.importlinter]). datamcp is
# imported first: its __path__ then spans src/ and gen/, so the graph has the
# generated datamcp.v1 too (lint-imports alone would see src/ only).
imports: install
	$(PY) -c 'import sys, datamcp; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-cache --no-logo

buf-lint:
	$(BUF) lint

# Compare proto/ with the main branch (no-op when main has no protos yet).
breaking:
	@if git rev-parse --verify -q main >/dev/null && git ls-tree -r --name-only main | grep -q '^proto/'; then \
	  $(BUF) breaking --against '.git#branch=main'; \
	else echo "breaking: nothing on main to compare with"; fi

# Kubernetes manifests against the API schemas (strict), Dockerfile lint.
infra-check: install
	$(BIN)/kubernetes-validate --strict --quiet infra/k8s/*.yaml
	$(BIN)/hadolint infra/Dockerfile

# The SAM template (Lambda handlers, queues, bus, schedule, IAM) with cfn-lint.
sam-lint: install
	$(BIN)/cfn-lint infra/sam/template.yaml

# AWS's SAM transform run offline on the template (CodeUri as `sam package`
# leaves it), then cfn-lint on what CloudFormation would get.
sam-transform: install
	$(PY) infra/sam/check.py

# The Lambda package for the template's runtime and architecture (manylinux
# wheels, whatever Python builds it) in .build/lambda, the template's CodeUri.
LAMBDA_SOURCES := $(shell find src gen handlers -name '*.py' -not -path '*/__pycache__/*')
lambda-package: .build/lambda.json

.build/lambda.json: $(VENV)/.installed pyproject.toml infra/sam/template.yaml infra/sam/package.py $(LAMBDA_SOURCES)
	$(PY) infra/sam/package.py

check: lint typecheck imports gen-check buf-lint breaking infra-check sam-lint sam-transform

bench: install
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) .gen-check .pytest_cache .mypy_cache .ruff_cache .build
