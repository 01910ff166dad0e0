"""Which models have a sliding window that counts padding, and how a block is split so it needs none."""
from __future__ import annotations

import pytest
from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

from bbtune.backends.padding import sliding_window, unpadded_runs


@pytest.mark.parametrize("config, window", [
    (Gemma3TextConfig(sliding_window=512), 512),  # local layers among global ones
    (MistralConfig(sliding_window=4096), 4096),
    (MistralConfig(sliding_window=None), None),
    (Qwen2Config(sliding_window=4096, use_sliding_window=False), None),  # a window in the config, switched off
    (Gemma3TextConfig(sliding_window=512, layer_types=["full_attention"] * 6, num_hidden_layers=6), None),
    (LlamaConfig(), None),
])
def test_the_window_is_read_only_where_a_layer_uses_it(config, window):
    assert sliding_window(config) == window


def test_runs_of_one_length_cover_the_rows_in_order():
    lengths = [3, 3, 5, 5, 5, 7, 9, 9]
    assert unpadded_runs(lengths, slice(1, 8)) == [slice(1, 2), slice(2, 5), slice(5, 6), slice(6, 8)]
    assert unpadded_runs(lengths, slice(2, 4)) == [slice(2, 4)]
