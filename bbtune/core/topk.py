"""What a model returned at the answer position beyond the label words: the top-k of its next-token distribution.

An API returns at most a top-k of log-probs (OpenAI chat: 20, llama.cpp: ~1,000, vLLM: ``--max-logprobs``); a
local model has the whole distribution and cuts it to the same k, so a readout learned on either reads the same
features. Tokens are keyed by their *text* (what an API returns), not by id: two ids that decode to the same text
(byte-fallback pieces) are one feature, kept at the larger log-prob, on every backend alike.

A top-20 misses most of what separates six classes, so a row may also carry *lifted* tokens: a fixed set of
tokens whose log-probs were read below the list (`Backend.score_lifted`: an API lifts them into its list with
``logit_bias``; a local model reads them off its distribution). They are the same tokens on every row, NaN where a
row's value could not be read, and they never change the list itself (its last value is the row's floor).

    >>> top = AnswerTopK.from_pairs([[(" yes", -0.1), (" no", -2.5), (" yes", -3.0)]], k=2)
    >>> top.tokens, top.logprobs
    (((' yes', ' no'),), ((-0.1, -2.5),))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class AnswerTopK:
    """The top-k at the answer position for B examples under one prompt, best first (a row may hold fewer than
    `k` tokens where the backend returned fewer). `k` is the depth that was asked for."""

    tokens: tuple[tuple[str, ...], ...]
    logprobs: tuple[tuple[float, ...], ...]
    k: int
    lifted: tuple[str, ...] = ()  # tokens read below the list, the same on every row
    lifted_logprobs: tuple[tuple[float, ...], ...] = ()  # (B, len(lifted)), NaN where not read

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.logprobs):
            raise ValueError(f"AnswerTopK has {len(self.tokens)} token rows but {len(self.logprobs)} log-prob rows")
        if any(len(t) != len(v) or len(t) > self.k for t, v in zip(self.tokens, self.logprobs)):
            raise ValueError(f"AnswerTopK rows must pair tokens with log-probs and hold at most k={self.k} each")
        if self.lifted and (len(self.lifted_logprobs) != len(self.tokens)
                            or any(len(v) != len(self.lifted) for v in self.lifted_logprobs)):
            raise ValueError(f"AnswerTopK lifts {len(self.lifted)} tokens: give that many log-probs on every row")

    def with_lifted(self, tokens: Sequence[str], logprobs: Sequence[Sequence[float]]) -> "AnswerTopK":
        """The same lists with `tokens` read below them: (B, len(tokens)) log-probs, NaN where not read."""
        values = tuple(tuple(float(v) for v in row) for row in logprobs)
        return AnswerTopK(self.tokens, self.logprobs, self.k, tuple(tokens), values if tokens else ())

    @classmethod
    def from_pairs(cls, rows: Iterable[Iterable[tuple[str, float]]], k: int) -> "AnswerTopK":
        """Rows of (token text, log-prob) in any order: duplicates merged at their larger log-prob, non-finite
        values dropped, sorted best first and cut to `k`."""
        tokens, values = [], []
        for row in rows:
            best: dict[str, float] = {}
            for token, logprob in row:
                if math.isfinite(logprob) and logprob > best.get(token, -math.inf):
                    best[token] = float(logprob)
            ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            tokens.append(tuple(t for t, _ in ranked))
            values.append(tuple(v for _, v in ranked))
        return cls(tuple(tokens), tuple(values), k)

    def __len__(self) -> int:
        return len(self.tokens)

    def truncated(self, k: int) -> "AnswerTopK":
        """The same rows cut to a shallower top-k (what an API returning only `k` would have given)."""
        if k > self.k:
            raise ValueError(f"cannot deepen a top-{self.k} to {k}")
        return AnswerTopK(tuple(t[:k] for t in self.tokens), tuple(v[:k] for v in self.logprobs), k, self.lifted,
                          self.lifted_logprobs)

    def select(self, rows: Sequence[int]) -> "AnswerTopK":
        """The rows at `rows`, in that order (a fold of the examples)."""
        lifted = tuple(self.lifted_logprobs[i] for i in rows) if self.lifted else ()
        return AnswerTopK(tuple(self.tokens[i] for i in rows), tuple(self.logprobs[i] for i in rows), self.k,
                          self.lifted, lifted)

    @staticmethod
    def concat(parts: Sequence["AnswerTopK"]) -> "AnswerTopK":
        """Rows of several batches of examples, one after another (all of the same depth)."""
        depths = {p.k for p in parts}
        if len(depths) != 1:
            raise ValueError(f"cannot join top-k lists of different depths {sorted(depths)}")
        lifted = {p.lifted for p in parts}
        if len(lifted) != 1:
            raise ValueError("cannot join top-k lists that lift different tokens")
        return AnswerTopK(tuple(t for p in parts for t in p.tokens), tuple(v for p in parts for v in p.logprobs),
                          depths.pop(), lifted.pop(), tuple(v for p in parts for v in p.lifted_logprobs))

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"k": self.k, "tokens": [list(t) for t in self.tokens],
                                  "logprobs": [list(v) for v in self.logprobs]}
        if self.lifted:  # NaN (not read) as null: JSON has no NaN
            out["lifted"] = list(self.lifted)
            out["lifted_logprobs"] = [[v if math.isfinite(v) else None for v in row] for row in self.lifted_logprobs]
        return out

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "AnswerTopK":
        tokens, logprobs = data["tokens"], data["logprobs"]
        assert isinstance(tokens, list) and isinstance(logprobs, list)
        top = cls(tuple(tuple(map(str, t)) for t in tokens), tuple(tuple(map(float, v)) for v in logprobs),
                  int(data["k"]))  # type: ignore[call-overload]
        lifted, values = data.get("lifted", []), data.get("lifted_logprobs", [])
        assert isinstance(lifted, list) and isinstance(values, list)
        return top.with_lifted(lifted, [[math.nan if v is None else v for v in row] for row in values]) if lifted else top
