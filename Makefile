# Two entry points: `make run` (the workflow on the embedded default) and `make test` (`make lint`,
# then the whole suite; `make test-fast` leaves out the tests marked slow: subprocesses, workflow
# runs). `make format` rewrites the code as `make lint` wants it.
# Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

.PHONY: run test test-fast dry-run lint format clean-results

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[debias,test]"
	touch $@

run: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

test-fast: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow"

dry-run: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -n --cores $(CORES)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-results:
	rm -rf results/default resources/default
