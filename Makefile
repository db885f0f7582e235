# One command each: `make demo` runs the example pipeline end to end on an embedded
# PostgreSQL; `make test` starts the services and installs the tools the tests need, then
# checks the layers (`lint-imports`, [tool.importlinter] in pyproject.toml) and runs the
# whole suite (CI prints its 15 slowest tests); `make env` writes the .env of
# docker-compose.yml with random passwords (never over an existing one).
VENV ?= .venv
PY := $(VENV)/bin/python

ENV_FILE ?= .env

.PHONY: demo test bench services tools env

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
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -ra --durations=15

env:
	bash scripts/env.sh $(ENV_FILE)

bench: $(VENV)/.installed services
	$(PY) bench/bench.py
