# One command each: `make demo` runs the example pipeline end to end on an embedded
# PostgreSQL; `make test` starts the services and installs the tools the tests need, then
# runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench services tools

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/dj-orchestrate demo

services:
	bash scripts/services.sh

tools:
	bash scripts/tools.sh

test: $(VENV)/.installed services tools
	$(PY) -m pytest -q -ra

bench: $(VENV)/.installed services
	$(PY) bench/bench.py
