# Two commands matter: `make demo` (the whole system on the embedded broker) and `make test`.
# Both create .venv if it is missing and install what they need; afterwards .venv/bin/pm25 exists.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test test-fast lint typecheck bench train train-quick eda evaluate dashboard chromium clean help

help:
	@echo "make demo   - embedded broker + worker + replay of 12 Beijing stations, prints forecasts"
	@echo "make test   - install test dependencies and run the whole test suite"
	@echo "make lint   - ruff, mypy, actionlint, hadolint, compose schema, shellcheck"
	@echo "make bench  - benchmark (writes reports/bench.json and a plot)"
	@echo "make train  - default grid search, writes and (if better) promotes a bundle"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.serving: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[serving]'
	@touch $@

$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e '.[serving,training,dev]'
	@touch $@ $(VENV)/.serving

# BROKER=kafka runs the demo on Apache Kafka (from Maven Central: needs java and mvn).
BROKER ?= embedded
demo: $(VENV)/.serving
	$(BIN)/pm25 demo --broker $(BROKER)

# The browser test drives Debian's chromium (no browser download); installed here when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the dashboard browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# promtool checks and unit-tests the alerting rules (monitoring/): taken from Debian's prometheus
# package, unpacked into .cache (nothing installed, no service started).
PROMTOOL := .cache/prometheus/usr/bin/promtool
$(PROMTOOL):
	@echo "fetching Debian's prometheus package for promtool (the alerting rules' tests)"
	@mkdir -p .cache
	@cd .cache && rm -f prometheus_*.deb && { apt-get download prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && apt-get download prometheus >/dev/null 2>&1; }; } \
	  && dpkg-deb -x prometheus_*.deb prometheus && rm -f prometheus_*.deb
	@test -x $@

test: $(VENV)/.all chromium $(PROMTOOL)
	$(BIN)/python -m pytest

test-fast: $(VENV)/.all $(PROMTOOL)
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.all
	.ci/lint

typecheck: $(VENV)/.all
	$(BIN)/mypy

bench: $(VENV)/.all
	$(BIN)/pm25 bench --out reports/bench.json

train: $(VENV)/.all
	$(BIN)/pm25 train --grid default

evaluate: $(VENV)/.all
	$(BIN)/pm25 evaluate

eda: $(VENV)/.all
	$(BIN)/pm25 eda

train-quick: $(VENV)/.all
	$(BIN)/pm25 train --grid quick --no-promote

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
