"""Text generation with a local causal LM after given input embeddings: what `LocalBackend.generate` runs.

Rows are left-padded into batches (the planner sizes them for the prompt plus `max_tokens`) and decoded by
`transformers`' ``generate``: greedy at temperature 0, else sampling from the whole softmax(logits / T) (no
top-k or top-p, as the mock server and OpenAI's defaults), seeded so the same call gives the same answers.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from bbtune.backends.base import cut_at_stop
from bbtune.backends.padding import left_pad

GENERATE_SEED = 0  # sampling is seeded: the same rows at the same temperature get the same answers


def generate_texts(model: Any, tokenizer: Any, rows: Sequence[torch.Tensor],
                   chunks: Callable[[int, int], list[slice]], *, max_tokens: int, n: int, temperature: float,
                   stop: Sequence[str]) -> list[list[str]]:
    """Each row's `n` answers (rows: (length, hidden) input embeddings), cut before the first `stop` string.
    `chunks(n_rows, longest)` splits the rows into batches that fit memory."""
    sampling = temperature > 0
    options: dict[str, Any] = {"do_sample": sampling, "max_new_tokens": max_tokens, "num_return_sequences": n,
                               "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id}
    if sampling:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    else:  # a model's generation_config may set sampling defaults; greedy ignores them
        options.update(temperature=None, top_k=None, top_p=None)
    longest = max(len(r) for r in rows) + max_tokens
    out: list[list[str]] = []
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(GENERATE_SEED)
        for part in chunks(len(rows), longest):
            embeds, mask = left_pad(list(rows[part]))
            ids = model.generate(inputs_embeds=embeds, attention_mask=mask, **options)
            texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
            out += [[cut_at_stop(t, stop) for t in texts[i * n : (i + 1) * n]] for i in range(len(texts) // n)]
    return out
