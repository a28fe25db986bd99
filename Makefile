# flatlens: `make reproduce` runs the main job, `make test` runs the tests. Each sets up its own environment.
# torch is installed before the package: a bare `torch` requirement with no torch present pulls a
# multi-GB CUDA build.
#   .venv       the main job: torch 2.13.0 (CPU build); the reference run in figures/ was made with it.
#   .venv-test  the tests: torch 2.14.1 + torchvision 0.29.1 (the only pair whose torchvision works here), so
#               that the DomainBed / ResNet code paths are tested too. Separate, so `make test` never swaps
#               the torch build under the main job.
PY ?= python3
VENV ?= .venv
TVENV ?= .venv-test
BIN := $(VENV)/bin
TBIN := $(TVENV)/bin

.PHONY: all install install-test reproduce reproduce-quick test test-fast bench clean

all: test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(TBIN)/python:
	$(PY) -m venv $(TVENV)
	$(TBIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || \
		$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e .
	touch $@

$(TVENV)/.installed: $(TBIN)/python pyproject.toml
	$(TBIN)/python -c "import torchvision" 2>/dev/null || $(TBIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(TBIN)/python -m pip install -e '.[test,vision]' $$($(TBIN)/python -c "import torch, torchvision; \
		print(' '.join(f'{m.__name__}=={m.__version__.split(\"+\")[0]}' for m in (torch, torchvision)))")
	touch $@

install: $(VENV)/.installed

install-test: $(TVENV)/.installed

reproduce: install
	$(BIN)/flatlens reproduce --out results/reproduce

reproduce-quick: install
	$(BIN)/flatlens reproduce --quick --out results/reproduce-quick

test: install-test
	$(TBIN)/python -m pytest -q

test-fast: install-test
	$(TBIN)/python -m pytest -q -m "not slow"

bench: install-test
	$(TBIN)/python benchmarks/hessian_vs_pyhessian.py
	$(TBIN)/python benchmarks/perturb_throughput.py
	$(TBIN)/python benchmarks/everyday_commands.py
	$(TBIN)/python -c "import curvlinops" 2>/dev/null || $(TBIN)/python -m pip install -e '.[bench]'
	$(TBIN)/python benchmarks/ggn_vs_curvlinops.py

clean:
	rm -rf $(VENV) $(TVENV) results .pytest_cache
