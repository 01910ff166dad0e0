"""Nearest-token projection (PEZ, Wen et al. 2023): each continuous prompt vector -> its closest token.

The result is a `HardPrompt` any text API accepts. Special and unprintable tokens are never chosen, and a
user block-list removes more; `round_trip` checks that the decoded text tokenizes back to the same ids
(when it does not, an API would see a different prompt than the one that was scored).

Example:
    >>> vocab_emb = torch.eye(3)
    >>> nearest_ids(torch.tensor([[0.9, 0.1, 0.0]]), vocab_emb, torch.ones(3, dtype=torch.bool)).tolist()
    [0]
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable

import torch

from bbtune.core.prompts import HardPrompt
from bbtune.core.vocab import Vocabulary


class Metric(str, Enum):
    COSINE = "cosine"
    DOT = "dot"


def nearest_ids(embeds: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor, metric: Metric | str = Metric.COSINE) -> torch.Tensor:
    """Index of the allowed row of `table` (V, H) nearest to each row of `embeds` (..., H)."""
    rows = torch.nonzero(allowed).flatten()
    return rows[_nearest_rows(embeds, _prepare(table[rows], Metric(metric)), Metric(metric))]


def _prepare(table: torch.Tensor, metric: Metric) -> torch.Tensor:
    table = table.float()
    return torch.nn.functional.normalize(table, dim=-1) if metric is Metric.COSINE else table


def _nearest_rows(embeds: torch.Tensor, prepared: torch.Tensor, metric: Metric) -> torch.Tensor:
    """Row of a `_prepare`d table nearest to each embedding; the one place the metric is applied."""
    e = embeds.float().to(prepared.device)
    if metric is Metric.COSINE:
        e = torch.nn.functional.normalize(e, dim=-1)
    return (e @ prepared.T).argmax(dim=-1)


@dataclass(frozen=True)
class RoundTrip:
    """Whether `text` re-tokenizes to the prompt's ids; `reencoded` is what an API would really see."""

    ok: bool
    reencoded: tuple[int, ...]


class Discretizer:
    """Projects soft prompts onto a vocabulary, with the allowed-token mask computed once.

    >>> # d = Discretizer(backend.vocabulary(), metric="cosine", vocab_filter="words", block=["hate"])
    >>> # d.project(soft_prompt.embeds).text
    """

    def __init__(self, vocab: Vocabulary, metric: Metric | str = Metric.COSINE, vocab_filter: str = "words",
                 block: Iterable[str] = (), also_allow: Iterable[int] = (), within: torch.Tensor | None = None):
        """`also_allow`: token ids allowed whatever the filter (a start prompt's own tokens, so that p0 projects
        onto itself). `within`: a mask the filter's tokens must also be in (one a model narrowed, e.g.
        `fluency.whole_words`)."""
        self.vocab = vocab
        self.metric = Metric(metric)
        self.allowed = vocab.allowed_mask(vocab_filter, block)
        if within is not None:
            self.allowed &= within
        self.allowed[list(also_allow)] = True
        # keeping only allowed rows, prepared once, makes projection one small matmul per batch
        self._allowed_ids = torch.nonzero(self.allowed).flatten()
        self._table = _prepare(vocab.embeddings[self._allowed_ids], self.metric)

    def ids(self, embeds: torch.Tensor) -> torch.Tensor:
        """(..., n) nearest allowed token ids for (..., n, H) embeddings."""
        return self._allowed_ids[_nearest_rows(embeds, self._table, self.metric)]

    def project(self, embeds: torch.Tensor) -> HardPrompt:
        return self.to_prompt(self.ids(embeds).tolist())

    def to_prompt(self, ids: list[int]) -> HardPrompt:
        tok = self.vocab.tokenizer
        return HardPrompt(tuple(ids), tok.decode(ids), tuple(tok.convert_ids_to_tokens(ids)))

    def random_prompts(self, n: int, tokens: int, seed: int) -> list[HardPrompt]:
        """`n` prompts of `tokens` allowed tokens drawn uniformly: any prompt a hard search may propose, for
        checks that must hold for every one (local scores equal a server's scores of the same text)."""
        gen = torch.Generator().manual_seed(seed)
        picks = torch.randint(0, len(self._allowed_ids), (n, tokens), generator=gen)
        return [self.to_prompt(self._allowed_ids[row].tolist()) for row in picks]

    def round_trip(self, prompt: HardPrompt) -> RoundTrip:
        again = tuple(self.vocab.tokenizer.encode(prompt.text, add_special_tokens=False))
        return RoundTrip(again == prompt.token_ids, again)
