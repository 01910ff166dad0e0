"""A byte-bounded LRU store of per-example keys/values, so an input is encoded once per run, not per candidate.

Entries are (keys, values) per layer, each (kv_heads, length, head_dim), trimmed to the example's real
length. When the byte budget is full the least recently used entry goes; a miss is simply recomputed.
Also here: building transformers caches from such tensors without extra copies (`new_cache`).
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]


class KVStore:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, list[LayerKV]] = OrderedDict()
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._stacked: tuple[Hashable, list[LayerKV]] | None = None

    @staticmethod
    def size_of(entry: list[LayerKV]) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in entry)

    def get(self, key: Hashable) -> list[LayerKV] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: Hashable, entry: list[LayerKV]) -> None:
        size = self.size_of(entry)
        if size > self.max_bytes:
            return  # larger than the whole budget: never cached, always recomputed
        if key in self._entries:
            self.bytes_used -= self.size_of(self._entries.pop(key))
        while self._entries and self.bytes_used + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes_used -= self.size_of(old)
            self.evictions += 1
        self._entries[key] = entry
        self.bytes_used += size

    def __len__(self) -> int:
        return len(self._entries)

    def stacked(self, key: Hashable, build: Callable[[], list[LayerKV]]) -> list[LayerKV]:
        """A one-slot memo for the current batch's entries stacked and padded, which a tuner asks for again
        every generation; `build` runs only when the batch changes. Held outside `max_bytes`."""
        if self._stacked is None or self._stacked[0] != key:
            self._stacked = None  # let the old stack go before the new one is built
            self._stacked = (key, build())
        return self._stacked[1]

    @property
    def stacked_bytes(self) -> int:
        return self.size_of(self._stacked[1]) if self._stacked else 0

    def clear(self) -> None:
        self._entries.clear()
        self._stacked = None
        self.bytes_used = 0


# ---------------------------------------------------------------------- transformers caches


def new_cache(config: Any, layers: list[LayerKV] | None = None, past_len: int = 0) -> Any:
    """A transformers `DynamicCache`, empty or holding `layers`.

    With `past_len`, each layer's tensors are buffers (rows, kv_heads, past_len + new, head_dim) whose first
    `past_len` positions hold the past; the forward writes its new keys/values into the rest instead of
    concatenating (which would copy the whole past once per layer per forward).
    """
    from transformers import DynamicCache

    if not layers:
        return DynamicCache(config=config)
    cache = DynamicCache(config=config)
    slots = getattr(cache, "layers", None)
    if past_len and slots is not None and len(slots) == len(layers) and all(type(s) is DynamicLayer for s in slots):
        cache.layers = [_BufferLayer(k, v, past_len) for k, v in layers]
        return cache
    trimmed = [(k[:, :, :past_len], v[:, :, :past_len]) for k, v in layers] if past_len else layers
    return DynamicCache(ddp_cache_data=trimmed, config=config)


def cache_kwarg(model: Any) -> str:
    """The name `model.forward` takes its cache under (`past_key_values` became `cache` in transformers 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_layers(cache: Any) -> list[LayerKV]:
    """Per layer (keys, values) of a transformers cache, old (legacy tuples) or new (`.layers`) style."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache.to_legacy_cache()]


try:
    from transformers.cache_utils import DynamicLayer
except ImportError:  # transformers < 4.56 has no per-layer cache objects; new_cache falls back to DynamicCache
    DynamicLayer = None  # type: ignore[assignment,misc]
else:

    class _BufferLayer(DynamicLayer):  # type: ignore[no-redef]
        """A full-attention cache layer whose past already sits at the front of a buffer with room for the new tokens."""

        _layer_type = None  # do not register in transformers' layer-type table

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, past_len: int):
            super().__init__()
            self._buffers = (keys, values)
            self.keys, self.values = keys[:, :, :past_len], values[:, :, :past_len]
            self.device, self.is_initialized = keys.device, True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> LayerKV:
            assert self.keys is not None and self.values is not None, "a buffer layer is made with its past"
            start, end = self.keys.shape[2], self.keys.shape[2] + key_states.shape[2]
            keys, values = self._buffers
            if end > keys.shape[2]:  # more tokens than planned: grow like a DynamicLayer
                return super().update(key_states, value_states, *args, **kwargs)
            keys[:, :, start:end] = key_states
            values[:, :, start:end] = value_states
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            return self.keys, self.values
