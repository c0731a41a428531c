# The two commands of the README: `make demo` (the live demo) and `make test` (the test suite).
# Each sets up what it needs first: a virtual environment in .venv with latentwatch installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test bench system-deps clean

$(BIN)/latentwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,report]'
	@touch $@

setup: $(BIN)/latentwatch

# Prometheus, promtool and Alertmanager for the observability tests (Debian packages).
system-deps:
	@bash scripts/install-system-deps

demo: setup
	$(BIN)/latentwatch demo $(ARGS)

test: setup system-deps
	$(BIN)/python -m pytest $(ARGS)

bench: setup
	$(BIN)/python -m latentwatch.bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
