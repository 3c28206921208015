# hyperhive — make run: start a daemon; make test: install what the tests need, lint, test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make run keeps its state beside the checkout, so it works as a normal user.
RUN_STATE ?= $(CURDIR)/.run/state
RUN_DIR ?= $(CURDIR)/.run/run

# The real Claude Code CLI, project-local (never global): the agents of make run and
# make demo use it, and so do the end-to-end tests.
CLAUDE := .tools/node_modules/.bin/claude
# The agents' API settings (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, proxies): .env or
# hyperhive.env in the checkout when present; otherwise the caller's ANTHROPIC_* pass through.
ENV_FILE ?= $(firstword $(wildcard $(CURDIR)/.env $(CURDIR)/hyperhive.env))

# Debian packages the tests drive for real: command -> package. (PostgreSQL's initdb and
# pg_ctl live in /usr/lib/postgresql/<version>/bin, off PATH: its pg_ctlcluster stands for it;
# bench/_pg.py finds the binaries.)
SYSTEM_DEPS := systemd-nspawn:systemd-container git:git nix-instantiate:nix-bin \
	systemd-analyze:systemd setpriv:util-linux chromium:chromium useradd:passwd \
	/usr/bin/python3:python3 pg_ctlcluster:postgresql

.PHONY: run demo test lint check pytest bench clean tools system-deps screenshots

# pyvenv.cfg marks the venv (bin/python may be a link into a directory others cannot stat).
$(VENV)/pyvenv.cfg:
	@if ! $(PYTHON) -m venv $(VENV) 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed: install python3-venv (Debian/Ubuntu)"; exit 1; fi; \
	fi

$(STAMP): pyproject.toml | $(VENV)/pyvenv.cfg
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

run: $(STAMP) $(CLAUDE)
	@mkdir -p $(RUN_STATE) $(RUN_DIR)
	HYPERHIVE_CLAUDE=$(abspath $(CLAUDE)) $(VENV)/bin/hyperhive run --state-dir $(RUN_STATE) \
	  --run-dir $(RUN_DIR) --stop-agents-on-exit $(if $(ENV_FILE),--env-file $(ENV_FILE))

# A short scripted story with the real daemon, containers and claude: no account, no cost.
demo: $(STAMP) $(CLAUDE)
	$(VENV)/bin/hyperhive rehearse --claude $(abspath $(CLAUDE)) $(DEMO_FLAGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check hyperhive hyperhive_harness tests bench scripts
	$(VENV)/bin/ruff format --check hyperhive hyperhive_harness tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

$(CLAUDE):
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq nodejs npm; \
	  else echo "npm is needed to install Claude Code for the tests"; exit 1; fi; \
	fi
	npm install --prefix .tools --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@latest
	@$(CLAUDE) --version

tools: $(CLAUDE)

# As root (CI, a fresh machine), install missing system packages; otherwise just report them.
system-deps:
	@missing=""; for pair in $(SYSTEM_DEPS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing system packages:$$missing (tests needing them are skipped)"; fi; \
	fi

# The suite runs on PYTEST_WORKERS processes (pytest-xdist): most tests wait on real claude
# runs, containers, Chromium and daemons, so more workers than cores pay. The tests marked
# serial assert latencies or rates and run afterwards, alone (docs/development.md).
PYTEST_WORKERS ?= 4
PYTEST_ENV = HYPERHIVE_TEST_CLAUDE=$(CURDIR)/$(CLAUDE)

pytest: $(STAMP) $(CLAUDE) system-deps
	$(PYTEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not serial"
	$(PYTEST_ENV) $(PY) -m pytest -q -m serial

test: lint pytest

bench: $(STAMP)
	@mkdir -p bench/results
	$(PY) -m bench.broker --out bench/results/broker.json
	$(PY) -m bench.postgresql --out bench/results/postgresql.json
	$(PY) -m bench.dashboard --out bench/results/dashboard.json
	$(PY) -m bench.turns --out bench/results/turns.json
	$(PY) -m bench.dashboard --out bench/results/dashboard-1000.json --agents 1000 --history 1000000

screenshots: $(STAMP) system-deps
	$(PY) scripts/screenshots.py --out docs/screenshots

clean:
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache .hypothesis
