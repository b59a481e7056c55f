# Two commands do all the set-up on a fresh machine:
#   make quickstart   install, make the demo data, train a small ResNeSt on the CPU (minutes)
#   make test         install, run the whole test suite (what CI runs, with make lint)
# While editing: make test-fast (no slow, multi-process or GPU tests, 2 processes; 1.4 min) and make lint.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# make test and make test-fast spread their tests over this many pytest-xdist processes; make test
# runs the multi-process (dist) tests one at a time on one of them (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: install quickstart test test-fast lint

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/resnest-make-demo-data --out data/demo
	$(BIN)/resnest-train --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow and not dist and not gpu" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
