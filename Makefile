# One entry point per check; .ci/run calls `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup bytecode demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Byte-compile the package: an editable install does not, and where PYTHONDONTWRITEBYTECODE
## is set every node and worker process would compile every module at each start (~0.3 s).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q tamma_actors

## The main job: a node on ./var with local workers runs the example workflow.
demo: bytecode
	$(BIN)/tamma-node demo --data-dir ./var config/workflows/example.yaml --input topic=demo

## The whole test suite with branch coverage.
test: bytecode
	$(BIN)/python -m pytest -q -p no:cacheprovider --cov=tamma_actors --cov-branch \
		--cov-report=term-missing:skip-covered tests

lint: $(STAMP)
	$(BIN)/ruff check tamma_actors tests benchmarks
	$(BIN)/ruff format --check tamma_actors tests benchmarks
	$(BIN)/mypy

bench: bytecode
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) var .coverage .coverage.* htmlcov
