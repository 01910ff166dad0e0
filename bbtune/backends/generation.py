"""Greedy text generation after each row's input, for local models (`LocalBackend.generate`).

A row's input is what `score` sees: a hard prompt as its whole text tokenized as an API would (`text_ids`), a
soft prompt as its embeddings between the input's and the cue's token embeddings. Rows are left-padded and
decoded together with a key/value cache, one token per step, until every row has written a stop string or
the end-of-sequence token, or `max_tokens`; each text is cut before its first stop string.

Only greedy decoding (temperature 0, n = 1): what a generation task's metric scoring and its evaluation need.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from bbtune.backends.padding import left_pad, position_ids

# (embeds (R, T, H), mask (R, T'), positions (R, T), cache) -> model output with `.logits` at the last position
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], Any]
GENERATE_ROWS = 64  # rows decoded together: bounds the cache's memory on a laptop


def greedy_decode(forward: Forward, embed: Callable[[torch.Tensor], torch.Tensor], rows: Sequence[torch.Tensor],
                  new_cache: Callable[[], Any], decode: Callable[[list[int]], str], *, max_tokens: int,
                  stop: Sequence[str], eos_ids: Sequence[int]) -> list[str]:
    """The greedy continuation of each row (a (length, hidden) embedding), as text cut at the first stop."""
    texts: list[str] = []
    for start in range(0, len(rows), GENERATE_ROWS):
        texts += _decode_batch(forward, embed, rows[start: start + GENERATE_ROWS], new_cache, decode,
                               max_tokens, stop, set(eos_ids))
    return texts


def _decode_batch(forward: Forward, embed: Callable[[torch.Tensor], torch.Tensor], rows: Sequence[torch.Tensor],
                  new_cache: Callable[[], Any], decode: Callable[[list[int]], str], max_tokens: int,
                  stop: Sequence[str], eos_ids: set[int]) -> list[str]:
    embeds, mask = left_pad(list(rows))
    positions = position_ids(mask)
    cache = new_cache()
    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    step_embeds, step_positions = embeds, positions
    for _ in range(max_tokens):
        logits = forward(step_embeds, mask, step_positions, cache).logits[:, -1]
        next_ids = logits.argmax(dim=-1)
        for r, token in enumerate(next_ids.tolist()):
            if done[r]:
                continue
            if token in eos_ids:
                done[r] = True
                continue
            out[r].append(token)
            done[r] = any(s in decode(out[r]) for s in stop)
        if all(done):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_positions = step_positions[:, -1:] + 1
        step_embeds = embed(next_ids)[:, None]
    return [_cut(decode(ids), stop) for ids in out]


def _cut(text: str, stop: Sequence[str]) -> str:
    """`text` before its first stop string."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text
