# lbtkit developer entry points. Every target creates .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test test-fast lint format clean

$(BIN)/lbtkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/lbtkit  ## create .venv and install lbtkit with its dev extras

test: $(BIN)/lbtkit  ## the whole suite (CPU; a few minutes)
	$(BIN)/pytest -q

test-fast: $(BIN)/lbtkit  ## skip the multi-process and kill/resume integration tests
	$(BIN)/pytest -q -m "not slow"

lint: $(BIN)/lbtkit
	$(BIN)/ruff check .

format: $(BIN)/lbtkit
	$(BIN)/ruff format lbtkit tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
