# Two commands: `make demo` and `make test`. Each sets itself up from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gridflex demo

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check aggregator adapters optimizer tests
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check aggregator adapters optimizer tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
