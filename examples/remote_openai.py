"""Tune a hard prompt through a hosted OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, a gateway).

Configured by environment variables; the API key is read from $BBTUNE_API_KEY (or $OPENAI_API_KEY) by the
backend itself and is never printed or written to the results folder.

    export BBTUNE_API_KEY=sk-...                                   # if the server needs one
    export BBTUNE_BASE_URL=https://api.openai.com/v1               # or http://my-vllm:8000/v1 (comma-separate replicas)
    export BBTUNE_MODEL=gpt-3.5-turbo-instruct                     # the name the server knows
    export BBTUNE_MODE=top_logprobs                                # top_logprobs | chat | echo | prompt_embeds
    export BBTUNE_LOCAL_MODEL=smollm2                              # same model locally if you have it (HF dir/.gguf)
    export BBTUNE_MAX_REQUESTS=400 BBTUNE_MAX_COST=0.50            # hard limits the run never crosses
    export BBTUNE_PRICE_PROMPT=1.5 BBTUNE_PRICE_COMPLETION=2.0     # $ per million tokens, for the cost estimate
    python examples/remote_openai.py

`BBTUNE_LOCAL_MODEL` supplies the tokenizer (verbalizer check, token estimates) and the vocabulary the hard
prompt is drawn from. With the remote model's own weights (a vLLM/llama.cpp server of a model you have) the
search vocabulary is the model's; for a closed model any local vocabulary works, because prompts travel as
text. Soft prompts (`mode=prompt_embeds`) need the same model locally and a vLLM started with
`--enable-prompt-embeds`.
"""
from __future__ import annotations

import json
import os
import sys

import bbtune
from bbtune import BBTuneError, RemoteBackend, RemoteConfig, TaskConfig, TuneConfig


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _number(name: str, cast: type = float) -> float | int | None:
    value = _env(name)
    return cast(value) if value else None


def main() -> int:
    mode = _env("BBTUNE_MODE", "top_logprobs")
    remote = RemoteConfig(
        base_url=_env("BBTUNE_BASE_URL", "https://api.openai.com/v1"), model=_env("BBTUNE_MODEL", "gpt-3.5-turbo-instruct"),
        mode=mode, local_model=_env("BBTUNE_LOCAL_MODEL", "smollm2"), top_k=int(_env("BBTUNE_TOP_K", "5")),
        concurrency=int(_env("BBTUNE_CONCURRENCY", "4")), cache_dir=_env("BBTUNE_CACHE", "runs/remote-cache"),
        max_requests=_number("BBTUNE_MAX_REQUESTS", int) or 400, max_cost=_number("BBTUNE_MAX_COST") or 0.50,
        max_tokens=_number("BBTUNE_MAX_TOKENS", int),
        price_prompt_per_mtok=_number("BBTUNE_PRICE_PROMPT") or 0.0,
        price_completion_per_mtok=_number("BBTUNE_PRICE_COMPLETION") or 0.0,
    )
    task = TaskConfig(data=_env("BBTUNE_DATA", "demo"), k=8).load()
    config = TuneConfig(mode="soft" if mode == "prompt_embeds" else "hard", budget_calls=int(_env("BBTUNE_BUDGET", "60")),
                        popsize=6, prompt_tokens=5, intrinsic_dim=50, eval_every=30, seed=7)
    with RemoteBackend(remote) as backend:
        try:
            report = backend.check()
            print("server probe:", json.dumps({"checks": report.checks, "notes": report.notes}, indent=1))
            run = bbtune.tune(task, backend, config=config, run_dir=_env("BBTUNE_RUN_DIR", "runs/remote"))
        except BBTuneError as err:
            print(f"error: {err}", file=sys.stderr)
            print("usage so far:", json.dumps(backend.stats.as_dict()), file=sys.stderr)
            return 1
        print(f"prompt {run.prompt_text!r}: dev acc {run.metrics.dev_acc:.3f}, "
              f"test acc {run.metrics.test_acc or float('nan'):.3f}")
        s = backend.stats
        print(f"{s.requests} requests ({s.retries} retries, {s.cache_hits} cache hits), "
              f"{s.prompt_tokens + s.completion_tokens} tokens, ~${s.cost:.4f}; "
              f"labels outside top-{backend.top_k_}: {s.missing_rate:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
