"""`Forward`: the model's forward passes behind `LocalBackend`'s scoring paths: the last position's log-softmax,
prefills into the byte-bounded store of context keys/values, and caches that share those keys/values across the
rows of a block (written once into a buffer the forward appends to), within the memory budget's blocks."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from bbtune.backends.base import CallStats
from bbtune.backends.batching import BatchPlanner
from bbtune.backends.kvcache import KVStore, LayerKV, cache_kwarg, cache_layers, new_cache
from bbtune.backends.padding import left_pad, pad_left_kv, position_ids, right_pad, sliding_window, unpadded_runs


class Forward:
    """Runs `model` for a `LocalBackend`, counting in its `stats`; `kv_store` and `planner` are the backend's own
    (one store and one budget whichever path asks)."""

    def __init__(self, model: Any, device: torch.device, stats: CallStats, kv_store: KVStore, planner: BatchPlanner):
        self.model, self.device, self.stats, self.kv_store, self.planner = model, device, stats, kv_store, planner
        self.window = sliding_window(text_config(model))
        self.cache_kw = cache_kwarg(model)
        self.keeps_logits = keeps_logits(model)

    def window_safe(self, tail_lengths: list[int], rows: slice, cached: int) -> list[slice]:
        """`rows` as one block, or, where a sliding window would count the left padding between `cached` keys and
        the rows' tails (`window`: they could leave a window that really holds them), as runs of one tail length,
        which need no padding: slower, and exact."""
        longest = max(tail_lengths[rows])
        if self.window is None or cached + longest <= self.window:
            return [rows]
        return unpadded_runs(tail_lengths, rows)

    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        return self.model.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=self.device))

    def last(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """Log-softmax over the vocabulary at the last position of each row (causal LMs)."""
        self.stats.forward_passes += 1
        self.stats.tokens_processed += int(embeds.shape[0] * embeds.shape[1])
        logits = self.model_forward(embeds, mask, positions, cache).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def model_forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions,
                                  "use_cache": cache is not None}
        if cache is not None:
            kwargs[self.cache_kw] = cache
        if self.keeps_logits:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs)

    def prefill(self, embeds: torch.Tensor, mask: torch.Tensor) -> list[LayerKV]:
        """Keys/values of every layer, (rows, kv_heads, length, head_dim), for left-padded rows."""
        self.stats.forward_passes += 1
        self.stats.tokens_processed += int(mask.numel())
        cache = new_cache(self.model.config)
        result = self.model_forward(embeds, mask, position_ids(mask), cache)
        return cache_layers(getattr(result, "cache", None) or getattr(result, "past_key_values", None) or cache)

    def context_kv(self, contexts: list[list[int]]) -> list[list[LayerKV]]:
        """Keys/values of each context (trimmed to its length), from the store or computed left-padded."""
        keys = [tuple(c) for c in contexts]
        found: dict[tuple[int, ...], Any] = {k: self.kv_store.get(k) for k in dict.fromkeys(keys)}
        todo = sorted((k for k, entry in found.items() if entry is None), key=len)  # similar lengths pad little
        if todo:
            for part, _ in self.planner.blocks([len(k) for k in todo], 1, lambda n: (0, n)):
                batch = todo[part]
                layers = self.prefill(*left_pad([self.embed_ids(list(k)) for k in batch]))
                for row, key in enumerate(batch):
                    entry = [(k[row, :, -len(key):].clone(), v[row, :, -len(key):].clone()) for k, v in layers]
                    self.kv_store.put(key, entry)
                    found[key] = entry
        return [found[k] for k in keys]

    def shared_cache(self, past: list[LayerKV], rows: tuple[int, int], new_len: int) -> Any:
        """A cache for a block of (examples x candidates) rows, whose past keys/values broadcast from `past`:
        per layer (examples or 1, candidates or 1, kv_heads, length, head_dim).

        Each layer is written once into a buffer with room for the `new_len` tokens the forward appends, so
        tiling costs one copy and the forward none (a plain DynamicCache would copy three times).
        """
        past_len = past[0][0].shape[3]

        def tile(x: torch.Tensor) -> torch.Tensor:
            buf = x.new_empty(rows[0] * rows[1], x.shape[2], past_len + new_len, x.shape[4])
            buf[:, :, :past_len].view(*rows, *x.shape[2:]).copy_(x)
            return buf

        return new_cache(self.model.config, [(tile(k), tile(v)) for k, v in past], past_len)

    def blockwise(self, lengths: list[int], order: list[int], P: int, label_ids: list[int],
                   shape: Callable[[int], tuple[int, int]], forward: Callable[[slice, slice], torch.Tensor]) -> torch.Tensor:
        """(P * B, labels) log-probs, row p * B + b, from `forward(examples, candidates)` run over `_blocks`;
        each block's rows are example-major, examples in `order` (sorted by length)."""
        where = torch.tensor(order, device=self.device)
        out = torch.empty(P, len(order), len(label_ids), device=self.device)
        for ex, cand in self.planner.blocks(lengths, P, shape):
            logp = forward(ex, cand)[:, label_ids]
            out[cand, where[ex]] = logp.view(ex.stop - ex.start, cand.stop - cand.start, -1).transpose(0, 1)
        return out.view(P * len(order), -1)

    def padded_contexts(self, contexts: list[list[int]]) -> list[LayerKV]:
        """Per layer, the contexts' keys/values stacked (B, kv_heads, longest, head_dim), zero-padded on the left."""

        def build() -> list[LayerKV]:
            kv, longest = self.context_kv(contexts), max(map(len, contexts))
            return [pad_left_kv([e[layer] for e in kv], longest) for layer in range(len(kv[0]))]

        return self.kv_store.stacked(tuple(map(tuple, contexts)), build)

    def masked_scores(self, seqs: list[torch.Tensor], mask_from_end: int) -> torch.Tensor:
        embeds, mask = right_pad(seqs)
        self.stats.forward_passes += 1
        self.stats.tokens_processed += int(mask.numel())
        logits = self.model(inputs_embeds=embeds, attention_mask=mask).logits
        where = mask.sum(1) - 1 - mask_from_end
        return torch.log_softmax(logits[torch.arange(len(seqs), device=logits.device), where].float(), dim=-1)



def text_config(model: Any) -> Any:
    """The language model's config (a multimodal model nests it)."""
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def keeps_logits(model: Any) -> bool:
    """Whether the forward can compute the last position's logits only (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters
