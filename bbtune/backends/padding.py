"""Padding for batched forwards: rows of different lengths as one tensor with an attention mask, position ids
that restart at each row's first real token, and cached keys/values stacked to a common length."""
from __future__ import annotations

import torch

from bbtune.backends.kvcache import LayerKV


def left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros(len(seqs), longest, seqs[0].shape[-1])
    mask = left_mask([s.shape[0] for s in seqs], seqs[0].device)
    for i, s in enumerate(seqs):
        if s.shape[0]:
            out[i, longest - s.shape[0]:] = s
    return out, mask


def left_mask(lengths: list[int], device: torch.device) -> torch.Tensor:
    """(rows, longest) attention mask of left-padded rows: 1 on each row's last `length` positions."""
    longest = max(lengths)
    starts = torch.tensor([longest - n for n in lengths], device=device)
    return (torch.arange(longest, device=device)[None] >= starts[:, None]).long()


def right_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros(len(seqs), longest, seqs[0].shape[-1])
    mask = torch.zeros(len(seqs), longest, dtype=torch.long, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
    return out, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def sliding_window(config: object) -> int | None:
    """How far back the model's local-attention layers see (None: every layer sees the whole context).

    transformers builds that window from positions in the padded batch, so left padding *between* cached keys and
    the new tokens counts as distance: a padded row loses keys the model really sees (Gemma 3: 512 positions).
    """
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return int(window)


def unpadded_runs(lengths: list[int], rows: slice) -> list[slice]:
    """`rows` split into runs of consecutive rows of one length: a run needs no padding."""
    runs, start = [], rows.start
    for i in range(rows.start + 1, rows.stop):
        if lengths[i] != lengths[start]:
            runs.append(slice(start, i))
            start = i
    return [*runs, slice(start, rows.stop)]


def common_start(a: list[int], b: list[int]) -> int:
    """How many leading ids two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pad_left_kv(entries: list[LayerKV], longest: int) -> LayerKV:
    """Stack per-example (kv_heads, len, dim) keys and values into (B, kv_heads, longest, dim), zero-padded left."""
    k0 = entries[0][0]
    keys = k0.new_zeros(len(entries), k0.shape[0], longest, k0.shape[2])
    values = keys.clone()
    for i, (k, v) in enumerate(entries):
        keys[i, :, longest - k.shape[1]:] = k
        values[i, :, longest - v.shape[1]:] = v
    return keys, values
