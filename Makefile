# pbkfs: the two commands a newcomer needs are `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup test lint typecheck pytest demo clean

setup:
	@bash tools/setup.sh

lint: setup
	$(BIN)/ruff check pbkfs workers tools tests

typecheck: setup
	$(BIN)/mypy pbkfs workers tools

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup
	$(BIN)/ruff check pbkfs workers tools tests
	$(BIN)/mypy pbkfs workers tools
	$(BIN)/pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m tools.demo

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
