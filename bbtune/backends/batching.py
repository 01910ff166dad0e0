"""Forward batches sized from a memory budget: how many (candidate, example) rows one forward may hold, cut
evenly, and blocks of examples of similar length (padding costs real work). Every batch is logged, so tests
and benchmarks see what the budget decided."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from bbtune.errors import ConfigError

PAD_SLACK = 1.25  # a (examples x candidates) block may pad its inputs to at most 1.25x their real tokens ...
MIN_ROWS = 64  # ... once it has this many rows (below it, fewer forwards matter more than padding)


class ForwardBatch(NamedTuple):
    """One planned forward batch: its rows, their estimated bytes, and per row the cached and new tokens."""

    rows: int
    nbytes: int
    cached: int
    new: int


class BatchPlanner:
    """Sizes forwards for one model: `config` its text config, `element_size` bytes per activation value,
    `full_logits` whether a forward computes logits at every position (masked LMs, models without
    ``logits_to_keep``) or at the last one only."""

    def __init__(self, config: Any, element_size: int, budget_bytes: int, full_logits: bool):
        self.config, self.element_size, self.budget_bytes, self.full_logits = config, element_size, budget_bytes, full_logits
        self.log: list[ForwardBatch] = []  # every forward batch, as sized by the memory budget

    def _row_parts(self, cached_len: int, new_len: int) -> tuple[int, int, int]:
        """One row's bytes: (KV of all layers, one layer's activations and attention scores, logits)."""
        c, elt = self.config, self.element_size
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        kv_heads = getattr(c, "num_key_value_heads", None) or heads
        total = cached_len + new_len
        kv = 2 * c.num_hidden_layers * kv_heads * head_dim * total * elt
        act = new_len * (12 * c.hidden_size + 4 * getattr(c, "intermediate_size", 4 * c.hidden_size)) * elt
        attn = 2 * heads * new_len * total * 4
        logits = 2 * getattr(c, "vocab_size", 50000) * 4 * (new_len if self.full_logits else 1)
        return kv, act + attn, logits

    def row_bytes(self, cached_len: int, new_len: int) -> int:
        """Conservative bytes one row needs in a forward: KV of all layers, per-layer activations, logits."""
        return sum(self._row_parts(cached_len, new_len))

    def per_row(self, cached_len: int, new_len: int) -> int:
        per_row = self.row_bytes(cached_len, new_len)
        if per_row > self.budget_bytes:
            raise ConfigError(
                f"memory_budget_mb={self.budget_bytes / 2**20:.3g} is too small for one sequence of "
                f"{cached_len + new_len} tokens (needs ~{per_row / 2**20:.3g} MB); raise memory_budget_mb"
            )
        return per_row

    def _log(self, rows: int, per_row: int, cached_len: int, new_len: int) -> None:
        self.log.append(ForwardBatch(rows, rows * per_row, cached_len, new_len))

    def chunks(self, n_rows: int, cached_len: int, new_len: int) -> list[slice]:
        """Slices of rows, each a forward batch within the memory budget, as even as possible (2 x 160, not 314 + 6)."""
        per_row = self.per_row(cached_len, new_len)
        parts = _even(n_rows, self.budget_bytes // per_row)
        for part in parts:
            self._log(part.stop - part.start, per_row, cached_len, new_len)
        return parts

    def train_row_bytes(self, new_len: int, forwards: int = 1) -> int:
        """Bytes one row holds until the backward pass: every layer's activations stay alive for the gradient
        (a forward alone frees each layer's as the next one runs), for each of its `forwards` (the label trie's
        steps), plus the kept logits."""
        kv, layer, logits = self._row_parts(0, new_len)
        return forwards * (kv + self.config.num_hidden_layers * layer + logits)

    def train_chunks(self, n_rows: int, new_len: int, forwards: int = 1) -> list[slice]:
        """Slices of rows whose forward and backward fit the budget together: a gradient step accumulates over
        them instead of holding the whole batch's graph at once."""
        per_row = self.train_row_bytes(new_len, forwards)
        if per_row > self.budget_bytes:
            raise ConfigError(
                f"memory_budget_mb={self.budget_bytes / 2**20:.3g} is too small to train through one sequence of "
                f"{new_len} tokens (needs ~{per_row / 2**20:.3g} MB for its backward pass); raise memory_budget_mb")
        return _even(n_rows, self.budget_bytes // per_row)

    def blocks(self, lengths: list[int], P: int, shape: Callable[[int], tuple[int, int]]) -> list[tuple[slice, slice]]:
        """Forward batches of (examples x candidates) over examples sorted by length (`lengths` ascending).

        A block is cut where the memory budget is full, or where padding its inputs to the longest would waste
        more than `PAD_SLACK` once it has `MIN_ROWS` rows. `shape(longest)` gives a row's (cached, new) tokens.
        """
        blocks, start, budget = [], 0, self.budget_bytes
        while start < len(lengths):
            per_row = self.per_row(*shape(lengths[start]))
            if P * per_row > budget:  # one example's candidates do not fit together: split them
                step = budget // per_row
                blocks += [(slice(start, start + 1), slice(c, min(c + step, P))) for c in range(0, P, step)]
                start += 1
                continue
            end, total = start + 1, lengths[start]
            while end < len(lengths):
                n, longest = end + 1 - start, lengths[end]
                tight = n * longest <= PAD_SLACK * (total + longest) or (n - 1) * P < MIN_ROWS
                if not tight or n * P * self.row_bytes(*shape(longest)) > budget:
                    break
                end, total = end + 1, total + longest
            blocks.append((slice(start, end), slice(0, P)))
            start = end
        for ex, cand in blocks:
            cached, new = shape(lengths[ex.stop - 1])
            self._log((ex.stop - ex.start) * (cand.stop - cand.start), self.row_bytes(cached, new), cached, new)
        return blocks


def _even(n_rows: int, most: int) -> list[slice]:
    """`n_rows` cut into as few slices of at most `most` rows as fit, as even as possible."""
    n_parts = max(1, -(-n_rows // most))
    bounds = [i * n_rows // n_parts for i in range(n_parts + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]
