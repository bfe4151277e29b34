# One virtualenv, made and filled by `make`; every target below uses it.
# TORCH pins the CPU wheel so set-up never pulls the multi-GB CUDA builds.
# GPU users: `make test TORCH=torch` (pip's default build) or a wheel of their choice.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
PYTEST_ARGS ?=

.PHONY: help install test paper openq figures bench lab clean

help:
	@echo "make test    # create $(VENV), install, run the test suite"
	@echo "make paper   # run the paper notebooks 01-05 at PROFILE=$(PROFILE) and index the figures"
	@echo "make openq   # run the open-question notebooks 06-09 (then the report again)"
	@echo "make bench   # performance benchmarks (JSON into benchmarks/results)"
	@echo "make lab     # JupyterLab on the same environment"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

paper: $(STAMP)
	$(VENV)/bin/ddc notebooks run --suite paper --profile $(PROFILE)
	@cat outputs/$(PROFILE)/INDEX.md
	@echo "HTML report to share: outputs/$(PROFILE)/05_report/report.html"

openq: $(STAMP)
	$(VENV)/bin/ddc notebooks run --suite openq --profile $(PROFILE)

figures: $(STAMP)
	$(VENV)/bin/ddc figures --profile $(PROFILE)

bench: $(STAMP)
	$(PY) -m benchmarks.run

lab: $(STAMP)
	$(PY) -m pip install -q -e ".[all,dev,lab]"
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks

clean:
	rm -rf $(VENV) .pytest_cache
