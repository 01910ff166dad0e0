"""Sparse features from top-k lists: one column per token seen in the training lists, plus the row's floor.

An example's value for a token is its log-prob where the list holds it and, where it does not, the row's floor:
the list's last (k-th) value minus `MISSING_GAP` (the token is known only to be below the list). Stored sparse as the
gap above the floor (absent = 0) with the floor itself as a last column, which a linear model reads exactly as the
dense table (``w . x_dense = w . gap + floor * sum(w)``, and the floor column has its own weight). A token the
row's list lacks but that was *lifted* (read below the list, `AnswerTopK.lifted`) has its read value instead of
the floor: which tokens to lift is chosen from the training lists alone (`lift_candidates`).

    >>> from bbtune.core.topk import AnswerTopK
    >>> top = AnswerTopK.from_pairs([[("a", -0.5), ("b", -1.0)], [("b", -0.2), ("c", -3.0)]], k=2)
    >>> cols = TokenColumns.fit(top)
    >>> cols.tokens
    ('a', 'b', 'c')
    >>> cols.dense(top).round(1).tolist()
    [[-0.5, -1.0, -2.0], [-4.0, -0.2, -3.0]]
    >>> TokenColumns.fit(top).dense(top.with_lifted(["c"], [[-6.0], [-3.0]])).round(1).tolist()
    [[-0.5, -1.0, -6.0], [-4.0, -0.2, -3.0]]
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from bbtune.core.topk import AnswerTopK
from bbtune.search.answers import MISSING_GAP


@dataclass(frozen=True)
class TokenColumns:
    """The token -> column map learned from training lists; tokens never seen in training are not features."""

    tokens: tuple[str, ...]

    @classmethod
    def fit(cls, topk: AnswerTopK) -> "TokenColumns":
        seen = dict.fromkeys(t for row in topk.tokens for t in row)
        seen.update(dict.fromkeys(topk.lifted))
        return cls(tuple(sorted(seen)))

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def gaps(self, topk: AnswerTopK) -> tuple[sparse.csr_matrix, np.ndarray]:
        """(B, V) log-prob minus the row's floor for listed known tokens (0 elsewhere), and (B,) the floors."""
        index, rows, cols, vals = self.index, [], [], []
        floors = np.array([(row[-1] if row else 0.0) - MISSING_GAP for row in topk.logprobs])
        lifted = [j for j, t in enumerate(topk.lifted) if t in index]
        for r, (tokens, values) in enumerate(zip(topk.tokens, topk.logprobs)):
            listed = dict(zip(tokens, values))
            if lifted:  # a lifted value where the list lacks the token (where it has it, the two agree)
                read = topk.lifted_logprobs[r]
                listed = {**{topk.lifted[j]: read[j] for j in lifted if np.isfinite(read[j])}, **listed}
            for token, value in listed.items():
                if token in index:
                    rows.append(r)
                    cols.append(index[token])
                    vals.append(value - floors[r])
        shape = (len(topk), len(self.tokens))
        return sparse.csr_matrix((vals, (rows, cols)), shape=shape, dtype=float), floors

    def linear(self, topk: AnswerTopK) -> sparse.csr_matrix:
        """Gaps with the floor as a last column: what a linear readout reads."""
        gaps, floors = self.gaps(topk)
        return sparse.hstack([gaps, sparse.csr_matrix(floors[:, None])], format="csr")

    def dense(self, topk: AnswerTopK) -> np.ndarray:
        """(B, V) log-probs with unlisted tokens at the row's floor."""
        gaps, floors = self.gaps(topk)
        return gaps.toarray() + floors[:, None]

    def probabilities(self, topk: AnswerTopK) -> sparse.csr_matrix:
        """(B, V) probabilities of the listed known tokens, unlisted ones 0: a distribution to compare rows by."""
        gaps, floors = self.gaps(topk)
        out = gaps.copy()
        out.data = np.exp(out.data + np.repeat(floors, np.diff(out.indptr)))
        return out


def lift_candidates(topk: AnswerTopK, n: int) -> tuple[str, ...]:
    """The `n` tokens listed most often across the training rows (ties: the better mean rank first): those whose
    value varies from one example to the next, and whose value is unknown wherever the list cuts them off.

    >>> top = AnswerTopK.from_pairs([[("a", -0.5), ("b", -1.0)], [("b", -0.2), ("c", -3.0)]], k=2)
    >>> lift_candidates(top, 2)
    ('b', 'a')
    """
    counts: Counter[str] = Counter()
    ranks: Counter[str] = Counter()
    for row in topk.tokens:
        for rank, token in enumerate(row):
            counts[token] += 1
            ranks[token] += rank
    return tuple(sorted(counts, key=lambda t: (-counts[t], ranks[t] / counts[t], t))[:n])
