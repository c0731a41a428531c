# The two commands of the README: `make demo` (the live demo) and `make test` (the test suite);
# `make test-fast` runs only the unit tier (no broker, no external process but our own CLI).
# Each sets up what it needs first: a virtual environment in .venv with latentwatch installed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-fast bench system-deps clean

$(BIN)/latentwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,report,protobuf]'
	@touch $@

setup: $(BIN)/latentwatch

# Prometheus, promtool and Alertmanager for the observability tests (Debian packages).
system-deps:
	@bash scripts/install-system-deps

demo: setup
	$(BIN)/latentwatch demo $(ARGS)

# Everything: unit, integration, system and artifact tiers (CI), on TEST_WORKERS pytest-xdist
# workers: most of the suite waits on brokers and processes, so 3 workers on 2 cores finish in
# about half the time of one (TEST_WORKERS=0: one process).
TEST_WORKERS ?= 3
test: setup system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

# The unit tier: 51-58 s of CPU (user+sys), 46-53 s wall, in one process, measured back to back
# with the tree before issue 24 (120-138 s CPU) on 2 shared cores; the CLI-training and 400k-sensor
# tests moved to tests/system/, one torch thread (tests/support/torch_threads.py). pytest-xdist on
# 2 shared cores measured slower: +40 % CPU for the workers' own start-up, nothing gained without
# an idle core.
test-fast: setup
	$(BIN)/python -m pytest tests/unit $(ARGS)

bench: setup
	$(BIN)/python -m latentwatch.bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
