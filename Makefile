# Every target installs what it needs: a virtual environment in .venv, the project in it.
# NETNS=1 runs `make demo` in the lab's own network (namespaces, nftables; docs/network-tests.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STATE  ?= state

.PHONY: install demo console test fmt lint typecheck check bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lab demo --state-dir $(STATE) $(if $(filter 1,$(NETNS)),--netns)

# The lab console: attaches to a `lab up` of $(STATE), or starts a lab there; prints a
# login link for a browser (CONSOLE_ARGS="--port 0" for any free port).
console: $(STAMP)
	$(BIN)/lab console --state-dir $(STATE) $(CONSOLE_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy
	@for dir in tests/*/; do echo "mypy $$dir"; $(BIN)/mypy "$$dir" || exit 1; done

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(STATE) .pytest_cache .mypy_cache .ruff_cache
