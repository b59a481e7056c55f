# Two commands do all the set-up on a fresh machine:
#   make quickstart   install, make the demo data, train a small ResNeSt on the CPU (minutes)
#   make test         install, run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python -m resnest_train.data.demo --out data/demo
	$(BIN)/python train.py --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q tests
