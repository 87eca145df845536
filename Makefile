# `make demo` and `make test` each set up .venv themselves (idempotent: a second run installs nothing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo
# the demo's size: 6 latents scored on 10 + 10 held-out examples each, so it ends within minutes on 2 cores
DEMO_OPTIONS ?= --max-latents 6 --n-test 10 --n-negatives 10
# llama.cpp compiled for this CPU (native: AVX-512, VNNI, AMX where present), or `make install
# LLAMA_BUILD=portable` for an image that must run on other CPUs (see scripts/build_llama.py)
LLAMA_BUILD ?= native

.PHONY: install demo test test-fast lint bench clean

# torch goes first, pinned, so every later install keeps that build (CPU here, CUDA where pip picks it);
# then llama-cpp-python, compiled for this CPU once per build key into ~/.cache/autointerp/llama-wheels,
# so the editable install finds it already satisfied and builds no wheel of its own.
$(STAMP): pyproject.toml Makefile scripts/build_llama.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) scripts/build_llama.py --build $(LLAMA_BUILD)
	$(PY) -m pip install --quiet -e ".[embedded,serve,ray,test]"
	touch $(STAMP)

# the llama.cpp build is checked each time (instant when the venv holds this CPU's build of the
# asked kind): another LLAMA_BUILD, or the venv on another CPU, gets its own wheel
install: $(STAMP)
	@$(PY) scripts/build_llama.py --build $(LLAMA_BUILD)

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
