"""A byte-bounded LRU store of per-example keys/values, so an input is encoded once per run, not per candidate.

Entries are (keys, values) per layer, each (kv_heads, length, head_dim), trimmed to the example's real
length. When the byte budget is full the least recently used entry goes; a miss is simply recomputed.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

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

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0
