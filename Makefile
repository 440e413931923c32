# pbkfs: the two commands a newcomer needs are `make demo` and `make test`.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint typecheck pytest demo demo-s3 clean

setup:
	@bash tools/setup.sh

lint: setup
	$(BIN)/ruff check pbkfs workers tools tests

typecheck: setup
	$(BIN)/mypy pbkfs workers tools tests

pytest: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup
	$(BIN)/ruff check pbkfs workers tools tests
	$(BIN)/mypy pbkfs workers tools tests
	$(BIN)/pytest $(PYTEST_ARGS)

# The layers without FUSE and PostgreSQL (tests/unit, tests/core), minus the `slow` reads of
# the 3 GB pg15-bigrel set: a quick check while editing. `make test` runs everything.
test-fast: setup
	$(BIN)/pytest tests/unit tests/core -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m tools.demo

# The same demo with the catalog in a local S3 server (SeaweedFS on loopback).
demo-s3: setup
	$(BIN)/python -m tools.demo --s3

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
