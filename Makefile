# flatlens: `make reproduce` runs the main job, `make test` runs the tests. Both set up .venv first.
# torch is installed before the package: a bare `torch` requirement with no torch present pulls a
# multi-GB CUDA build. The tests use torch 2.14.1 + torchvision 0.29.1 (the only pair whose torchvision
# works here) so that the DomainBed / ResNet code paths are tested too.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: all install install-test reproduce reproduce-quick test test-fast bench clean

all: test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -c "import torchvision" 2>/dev/null || $(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[test,vision]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

reproduce: install
	$(BIN)/flatlens reproduce --out results/reproduce

reproduce-quick: install
	$(BIN)/flatlens reproduce --quick --out results/reproduce-quick

test: install-test
	$(BIN)/python -m pytest -q

test-fast: install-test
	$(BIN)/python -m pytest -q -m "not slow"

bench: install-test
	$(BIN)/python benchmarks/hessian_vs_pyhessian.py
	$(BIN)/python benchmarks/perturb_throughput.py

clean:
	rm -rf $(VENV) results .pytest_cache
