"""Label words of several tokens, scored exactly: the sum of their tokens' log-probs, teacher forced.

The label words' token sequences form a trie. Each inner node (a prefix of some word, the empty one first) is one
*step*: the scoring path runs once with the input extended by the prefix and reads the log-probs of the tokens
that follow it. A word's score is the sum of its tokens' log-probs over the steps on its path. Single-token words
make one step, read exactly as before; words sharing a prefix (``" very negative"``, ``" very positive"``) share
the steps of that prefix, so SST-5's label names cost two steps, not five words' worth.

>>> trie = LabelTrie.build([(7, 1), (7, 2), (3,)])
>>> [(s.prefix, s.next_ids) for s in trie.steps]
[((), (7, 3)), ((7,), (1, 2))]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Step:
    """One forward's worth of a trie: the tokens after `prefix` whose log-probs are read there."""

    prefix: tuple[int, ...]
    next_ids: tuple[int, ...]


@dataclass(frozen=True)
class LabelTrie:
    """The steps to run and, per label, the (step, column) of each of its tokens."""

    steps: tuple[Step, ...]
    paths: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def build(cls, seqs: Sequence[Sequence[int]]) -> "LabelTrie":
        if any(len(s) == 0 for s in seqs):
            raise ValueError("a label word has no tokens")
        nexts: dict[tuple[int, ...], dict[int, int]] = {}  # prefix -> next token -> its column (insertion order)
        for seq in seqs:
            for t in range(len(seq)):
                after = nexts.setdefault(tuple(seq[:t]), {})
                after.setdefault(seq[t], len(after))
        order = sorted(nexts, key=len)  # the empty prefix first: a failing step fails before deeper ones run
        index = {prefix: i for i, prefix in enumerate(order)}
        steps = tuple(Step(prefix, tuple(nexts[prefix])) for prefix in order)
        paths = tuple(tuple((index[tuple(seq[:t])], nexts[tuple(seq[:t])][seq[t]]) for t in range(len(seq)))
                      for seq in seqs)
        return cls(steps, paths)

    @property
    def single(self) -> bool:
        """Every word one token, distinct: one step whose columns are the labels in order."""
        return len(self.steps) == 1 and len(self.steps[0].next_ids) == len(self.paths)

    @property
    def lengths(self) -> list[int]:
        """Tokens per label word."""
        return [len(p) for p in self.paths]

    def combine(self, parts: Sequence[Any]) -> Any:
        """(rows, labels) word log-probs from each step's (rows, len(next_ids)) token log-probs (torch or numpy;
        NaN, a token a server did not list, makes its word's score NaN)."""
        if self.single:
            return parts[0]
        columns = [sum_of([parts[s][:, c] for s, c in path]) for path in self.paths]
        stack: Callable[..., Any] = np.stack if isinstance(parts[0], np.ndarray) else torch.stack
        return stack(columns, 1)


def sum_of(terms: Sequence[Any]) -> Any:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total

