# `make run` and `make test` are the two entry points (see README.md); both set up .venv first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/generated/*)

.PHONY: setup run test test-slow bench asan clean

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/kiln demo

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

asan: setup
	$(MAKE) -C csrc asan PYTHON=$(abspath $(BIN)/python)

clean:
	rm -rf build kiln/*.so *.egg-info
