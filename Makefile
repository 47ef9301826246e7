# fleetmon: two commands. `make up` starts the whole stack on the demo fleet; `make test` runs every test.
# Both install what they need (a virtualenv with the project; Prometheus, Alertmanager and Pushgateway
# from the distribution packages when run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FLEETMON := $(PY) -m fleetmon.cli
# Another config file: make up FLEETMON_CONFIG=path/to/fleetmon.yml (make passes it to the commands)

.PHONY: install deps system-deps test test-unit test-e2e test-scale lint help up down status logs restart check-config

help:
	@echo "make up      start the stack on the demo fleet (installs what is missing)"
	@echo "make down    stop every process the stack started"
	@echo "make status  show what runs (component, pid, port, health)"
	@echo "make logs    the last lines of every component's log (var/log/)"
	@echo "make test    run the whole test suite (unit and end-to-end)"
	@echo "make test-unit / make test-e2e   only the fast tests / only the end-to-end tests"
	@echo "make test-scale   the scale mode: shards, VictoriaMetrics, vmalert, two Alertmanagers (docs/scale.md)"
	@echo "make lint    ruff + mypy"

# The virtualenv is brought up to date when pyproject.toml or constraints.txt changes. Every dependency is
# installed at the version pinned in constraints.txt (refresh it with scripts/lock-deps.sh), by uv, which
# installs the ~165 packages in a fraction of pip's time. uv reads no pip.conf: a package mirror is set with
# UV_DEFAULT_INDEX (or UV_INDEX_URL) in the environment.
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) && $(UV) --version | grep -q ' $(UV_VERSION)' || $(PY) -m pip install -qq 'uv==$(UV_VERSION)'
	$(UV) pip install --quiet --python $(PY) --compile-bytecode -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Prometheus, Alertmanager, Pushgateway (and promtool/amtool) from Debian/Ubuntu packages.
system-deps:
	@scripts/install-system-deps.sh

deps: install system-deps

# Two pytest processes side by side: the tests on the session's demo stack (marked `demo_stack` by
# tests/conftest.py; they mostly wait for the demo's incidents to page and resolve) and every other test.
# The first one's output (also in var/log/test-demo-stack.log) follows the second's.
test: deps
	@mkdir -p var/log
	@$(PY) -m pytest -q -m demo_stack -p no:cacheprovider > var/log/test-demo-stack.log 2>&1 & stack=$$!; \
	trap 'kill $$stack 2>/dev/null' INT TERM; \
	echo "$(PY) -m pytest -q -m 'not demo_stack and not scale'   (and -m demo_stack beside it, pid $$stack)"; \
	$(PY) -m pytest -q -m "not demo_stack and not scale"; rest=$$?; \
	wait $$stack; on_stack=$$?; \
	echo "--- the tests on the demo stack (var/log/test-demo-stack.log):"; cat var/log/test-demo-stack.log; \
	exit $$(( rest || on_stack ))

test-unit: deps
	$(PY) -m pytest -q -m "not e2e and not scale"

test-e2e: deps
	$(PY) -m pytest -q -m "e2e and not scale"

# The scale mode (stack.scale): sharded rollups against unsharded ones on real VictoriaMetrics and vmalert,
# and a whole two-shard stack. About 3 minutes; not part of `make test`.
test-scale: deps
	$(PY) -m pytest -q -m scale

# The native stack: every component in the background, pid files in var/run, logs in var/log.
up: deps
	$(FLEETMON) stack up

down:
	@test -x $(PY) || { echo "no $(PY): nothing was started by make up"; exit 0; }
	$(FLEETMON) stack down

status: install
	$(FLEETMON) stack status

logs: install
	$(FLEETMON) stack logs

restart: down up

check-config: install
	$(FLEETMON) check-config

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Regenerate grafana/dashboards/*.json from fleetmon/dashboards/ (commit the result).
.PHONY: dashboards
dashboards: install
	$(FLEETMON) dashboards
