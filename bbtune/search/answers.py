"""What a readout reads: a prompt's answers on B examples, as a backend returned them.

The label words' log-probs (B, L; NaN where a server's top-k list did not hold one) and, where the backend gives
it, the top-k of the next-token distribution at the answer position (`bbtune.core.topk.AnswerTopK`). Features are
built from these alone, so a readout never reads a token the backend did not return.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bbtune.core.topk import AnswerTopK

MISSING_GAP = 1.0  # a token or label absent from a top-k list sits this far below the list's last value


@dataclass(frozen=True)
class Answers:
    """One prompt's answers on B examples: label log-probs (B, L) and, optionally, the top-k behind them."""

    labels: np.ndarray
    topk: AnswerTopK | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 2:
            raise ValueError(f"Answers.labels must be (examples, labels), got shape {self.labels.shape}")
        if self.topk is not None and len(self.topk) != len(self.labels):
            raise ValueError(f"Answers: {len(self.labels)} label rows but {len(self.topk)} top-k rows")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows: Sequence[int] | np.ndarray) -> "Answers":
        """The answers of the examples at `rows` (a fold)."""
        rows = [int(r) for r in rows]
        return Answers(self.labels[rows], self.topk.select(rows) if self.topk is not None else None)

    @staticmethod
    def concat(parts: Sequence["Answers"]) -> "Answers":
        """Answers on several batches of examples, one after another."""
        has_topk = {p.topk is not None for p in parts}
        if len(has_topk) != 1:
            raise ValueError("cannot join answers with and without top-k lists")
        topk = AnswerTopK.concat([p.topk for p in parts if p.topk is not None]) if has_topk.pop() else None
        return Answers(np.concatenate([p.labels for p in parts]), topk)

    def floor(self) -> np.ndarray:
        """(B,) the value an unlisted token or a missing label stands for in each row: below everything listed."""
        known = np.where(np.isnan(self.labels), np.inf, self.labels).min(axis=1)
        if self.topk is not None:
            last = np.array([row[-1] if row else np.inf for row in self.topk.logprobs])
            known = np.minimum(known, last)
        return np.where(np.isfinite(known), known, 0.0) - MISSING_GAP

    def filled_labels(self) -> np.ndarray:
        """(B, L) label log-probs with a missing one (NaN) read as `floor`: ranked below every listed one."""
        return np.where(np.isnan(self.labels), self.floor()[:, None], self.labels)
