# `make demo` and `make test` each set up .venv themselves (idempotent: a second run installs nothing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo
# the demo's size: 6 latents scored on 10 + 10 held-out examples each, so it ends within minutes on 2 cores
DEMO_OPTIONS ?= --max-latents 6 --n-test 10 --n-negatives 10

.PHONY: install demo test test-fast lint bench clean

# torch goes first, pinned, so every later install keeps that build (CPU here, CUDA where pip picks it);
# llama-cpp-python compiles from source (a portable build), and pip caches the wheel for next time.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip install --quiet -e ".[embedded,serve,ray,test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/autointerp run --out $(OUT) $(DEMO_OPTIONS)
	@echo "report: $$($(VENV)/bin/autointerp report $(OUT) --quiet)"

# the checks of `lint` first, then the whole suite
test: lint
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check autointerp tests scripts bench
	$(VENV)/bin/ruff format --check autointerp tests scripts bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/cache_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
