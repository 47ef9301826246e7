# fleetmon: two commands. `make up` starts the whole stack on the demo fleet; `make test` runs every test.
# Both install what they need (a virtualenv with the project; Prometheus, Alertmanager and Pushgateway
# from the distribution packages when run as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install deps system-deps test lint help

help:
	@echo "make up      start the stack on the demo fleet (installs what is missing)"
	@echo "make down    stop every process the stack started"
	@echo "make status  show what runs"
	@echo "make test    run the whole test suite (unit and end-to-end)"
	@echo "make lint    ruff + mypy"

# The virtualenv is rebuilt when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Prometheus, Alertmanager, Pushgateway (and promtool/amtool) from Debian/Ubuntu packages.
system-deps:
	@scripts/install-system-deps.sh

deps: install system-deps

test: deps
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
