# The two commands a new machine needs: `make up` runs Pilothouse, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install up test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

up: install
	$(BIN)/pilothouse up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.jobs
	$(BIN)/python -m bench.jobs --only ac --server default
	$(BIN)/python -m bench.runs
	$(BIN)/python -m bench.runs --server default
	$(BIN)/python -m bench.telegram
	$(BIN)/python -m bench.schedules
	$(BIN)/python -m bench.tasks
	$(BIN)/python -m bench.workspaces

clean:
	rm -rf $(VENV) .pilothouse .pytest_cache .mypy_cache .ruff_cache
