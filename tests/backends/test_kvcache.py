"""KVStore (byte-bounded LRU of per-example keys/values) and the transformers cache helpers."""
from __future__ import annotations

import pytest
import torch

from bbtune.backends.kvcache import KVStore, cache_kwarg, cache_layers, new_cache
from bbtune.backends.models import build_tiny_model


def entry(length: int, layers: int = 2, fill: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fake per-example entry: (kv_heads=2, length, head_dim=4) fp32 keys and values per layer."""
    return [(torch.full((2, length, 4), fill), torch.full((2, length, 4), fill)) for _ in range(layers)]


ONE = KVStore.size_of(entry(1))  # bytes of a 1-token entry: 2 layers x (K + V) x 2 x 4 floats = 256


def test_size_of_counts_every_tensor_byte():
    assert ONE == 2 * 2 * (2 * 1 * 4) * 4
    assert KVStore.size_of(entry(3)) == 3 * ONE
    assert KVStore.size_of([(torch.zeros(2, 3, 4, dtype=torch.bfloat16),) * 2]) == 2 * 24 * 2


def test_get_counts_hits_and_misses():
    store = KVStore(10 * ONE)
    assert store.get("a") is None
    store.put("a", entry(1, fill=1.0))
    got = store.get("a")
    assert got is not None and float(got[0][0][0, 0, 0]) == 1.0
    assert (store.hits, store.misses, len(store), store.bytes_used) == (1, 1, 1, ONE)


def test_lru_evicts_least_recently_used_within_byte_budget():
    store = KVStore(3 * ONE)
    for key in "abc":
        store.put(key, entry(1))
    store.get("a")  # a is now the most recent; b is the least
    store.put("d", entry(1))
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.evictions == 1 and store.bytes_used == 3 * ONE


def test_bytes_used_never_exceeds_budget():
    store = KVStore(5 * ONE)
    for i, length in enumerate([1, 3, 2, 4, 1, 5, 2]):
        store.put(i, entry(length))
        assert store.bytes_used <= store.max_bytes
        assert store.bytes_used == sum(KVStore.size_of(store._entries[k]) for k in store._entries)
    assert store.get(6) is not None and store.get(5) is None  # 5 tokens filled the budget; 6 pushed it out
    assert len(store) == 1


def test_entry_larger_than_budget_is_not_cached():
    store = KVStore(2 * ONE)
    store.put("small", entry(1))
    store.put("big", entry(3))
    assert store.get("big") is None and store.get("small") is not None and store.evictions == 0


def test_put_same_key_replaces_its_bytes():
    store = KVStore(10 * ONE)
    store.put("a", entry(2))
    store.put("a", entry(3))
    assert (len(store), store.bytes_used) == (1, 3 * ONE)


def test_clear_frees_everything():
    store = KVStore(10 * ONE)
    store.put("a", entry(2))
    store.clear()
    assert (len(store), store.bytes_used, store.get("a")) == (0, 0, None)


# ---------------------------------------------------------------------- transformers caches


@pytest.fixture(scope="module")
def tiny_llama():
    return build_tiny_model()[0]


def test_buffer_cache_gives_the_same_logits_as_a_plain_cache(tiny_llama):
    """The pre-sized buffer (no concatenation) must be a drop-in for DynamicCache."""
    torch.manual_seed(0)
    cfg = tiny_llama.config
    past, new = 5, 3
    kv = [(torch.randn(2, 2, past, 8), torch.randn(2, 2, past, 8)) for _ in range(cfg.num_hidden_layers)]
    embeds = torch.randn(2, new, cfg.hidden_size)
    positions = (past + torch.arange(new))[None].expand(2, -1)
    mask = torch.ones(2, past + new, dtype=torch.long)

    def logits(cache):
        with torch.inference_mode():
            return tiny_llama(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                              **{cache_kwarg(tiny_llama): cache}).logits

    buffers = [(torch.cat([k, torch.zeros(2, 2, new, 8)], 2), torch.cat([v, torch.zeros(2, 2, new, 8)], 2)) for k, v in kv]
    fast = new_cache(cfg, buffers, past_len=past)
    torch.testing.assert_close(logits(fast), logits(new_cache(cfg, kv)), atol=1e-5, rtol=1e-5)
    k0, _ = cache_layers(fast)[0]
    assert k0.shape[2] == past + new and k0.data_ptr() == buffers[0][0].data_ptr()  # written in place, no copy


def test_buffer_cache_grows_when_given_more_tokens_than_planned(tiny_llama):
    cfg = tiny_llama.config
    buffers = [(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)) for _ in range(cfg.num_hidden_layers)]
    cache = new_cache(cfg, buffers, past_len=3)
    with torch.inference_mode():
        tiny_llama(inputs_embeds=torch.randn(1, 2, cfg.hidden_size), **{cache_kwarg(tiny_llama): cache},
                   position_ids=torch.tensor([[3, 4]]), attention_mask=torch.ones(1, 5, dtype=torch.long))
    assert cache_layers(cache)[0][0].shape[2] == 5


def test_stacked_memo_rebuilds_only_when_the_batch_changes():
    store = KVStore(10 * ONE)
    builds = []

    def build(n: int):
        builds.append(n)
        return entry(n)

    assert store.stacked("ab", lambda: build(2)) is store.stacked("ab", lambda: build(2))
    store.stacked("cd", lambda: build(3))
    assert builds == [2, 3] and store.stacked_bytes == 3 * ONE
    store.clear()
    assert store.stacked_bytes == 0
