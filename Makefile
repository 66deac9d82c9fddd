# Autopack Fleet. `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install sandbox browser demo test test-fast lint bench bench-dashboard chaos env-example clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with its dev tools

demo: $(STAMP) sandbox ## Run a sample campaign on the embedded fleet (SQLite, in-process broker and workers)
	$(BIN)/autopack demo

sandbox: ## Install bubblewrap (phase commands run in its box) when it is missing and we are root
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -q && apt-get install -y -q bubblewrap; } \
	  || { echo "bubblewrap is missing: install it (apt-get install bubblewrap), or set AUTOPACK_SANDBOX=none to run phase commands unboxed"; exit 1; }

browser: ## Install Debian's Chromium (the dashboard's browser tests drive it) when it is missing and we are root
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -q && apt-get install -y -q chromium; } \
	  || { echo "chromium is missing: install it (apt-get install chromium) for tests/test_dashboard_browser.py"; exit 1; }

# Test sessions in parallel: each takes its own Postgres database, Redis database (1..15), Celery
# queue and subnet (tests/conftest.py). The `exclusive` tests restart Redis or Postgres, which every
# session shares, so they run alone afterwards.
TEST_PROCS ?= 2

test: $(STAMP) sandbox browser ## Lint, type-check, then the whole suite (needs local Postgres and Redis)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_PROCS) -m 'not exclusive'
	$(BIN)/pytest -m exclusive

test-fast: $(STAMP) ## The suite without the tests that start worker processes
	$(BIN)/pytest -n $(TEST_PROCS) -m 'not fleet'

lint: $(STAMP) ## ruff and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP) ## Benchmarks against a same-run baseline (needs Postgres and Redis; never fails on timing)
	$(PY) -m tests.bench.run

bench-dashboard: $(STAMP) ## Dashboard pages and JSON routes over 100,000 generated runs (keeps the database for reruns)
	$(PY) -m tests.bench.run --only dashboard --dashboard-keep

chaos: $(STAMP) ## Chaos batch: kills (also inside git steps), SIGSTOP fencing, Redis/Postgres restarts, full disk, invariants table (needs root, Postgres, Redis)
	$(PY) -m tests.chaos.run

env-example: $(STAMP) ## Rewrite .env.example from the Settings model
	$(PY) -c "from shared.settings import render_env_example as r; open('.env.example','w').write(r())"

clean: ## Remove the venv and local state
	rm -rf $(VENV) .autopack
