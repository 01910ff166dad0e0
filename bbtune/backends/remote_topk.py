"""`RemoteBackend.score_topk`: the top-k at the answer position, one strategy per score mode.

A readout learns from the model's *own* next-token distribution, so the top-k always comes from a request without
``logit_bias`` (a biased list is the labels pushed to the top, not what the model says). Every request goes through
the backend's `send`: the cache, retries, limits, ledger and stats see it like any other. Per call (rows = prompts
x examples):

| mode | requests | label scores |
|---|---|---|
| top_logprobs, prompt_embeds, chat | the top-k requests `score` sends without a bias (the same bodies: one cache) | read from those lists, as `score` reads them |
| the same, with logit_bias on | those, plus `score`'s biased requests for the rows whose list lacks a label (any spelling) | the unbiased ones where every label is listed; else the biased ones moved onto the unbiased scale by a label found in both |
| label words of several tokens | the chained requests (the first step's lists are the top-k); with logit_bias on and a label missing anywhere, plus `score`'s biased chain | as above, per row |
| echo | `score`'s echo requests (one text per label word), asking ``logprobs=k`` | exact, as `score` |
| text | refused: a text answer carries no log-probs | |

The bias moves every label of a row by one constant (``+bias - log Z'``), so biased and unbiased scores of a row
differ by that constant only, which no loss sees (they renormalise over the labels).
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from bbtune.backends import wire
from bbtune.backends.wire import ScoreMode
from bbtune.core.prompts import Prompt
from bbtune.errors import CapabilityError
from bbtune.tasks import Example, TaskFormat

Tops = list[dict[str, float]]


class TopKTarget(Protocol):
    """What a strategy needs from a backend (`RemoteBackend` offers it)."""

    logit_bias_: float

    def label_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                       bias: float = 0.0, salt: str = "", strict: bool = False,
                       answer_tops: Tops | None = None) -> np.ndarray: ...
    def label_keys(self, fmt: TaskFormat) -> wire.LabelKeys: ...
    def label_trie(self, fmt: TaskFormat) -> Any: ...
    def shape(self, bias_ids: Sequence[int] = (), bias: float = 0.0) -> wire.Shape: ...
    def inputs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[Any]: ...
    def texts(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[str]: ...
    def requests(self, shape: wire.Shape, items: Sequence[Any], size: int | None = None) -> list[wire.Request]: ...
    def count_tokens(self, text: str) -> int: ...
    def send(self, requests: list[wire.Request], salt: str = "", retries: int | None = None) -> list[Any]: ...


class TopKStrategy(Protocol):
    def collect(self, target: TopKTarget, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                depth: int) -> tuple[np.ndarray, Tops]:
        """(P * B, L) label scores and each row's top-k {token text: log-prob} as the server listed it."""
        ...


class ListTopK:
    """top_logprobs, prompt_embeds and chat: the unbiased top-k requests; biased ones only for the rows whose
    labels the unbiased list lacks."""

    def collect(self, target: TopKTarget, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                depth: int) -> tuple[np.ndarray, Tops]:
        tops: Tops = []
        labels = target.label_keys(fmt)
        bias = target.logit_bias_ if labels.token_ids else 0.0  # no ids to bias: `score` sends no bias either
        plain = target.label_logprobs(prompts, examples, fmt, strict=bool(bias), answer_tops=tops)
        plain = plain.reshape(len(tops), -1)
        short = np.flatnonzero(np.isnan(plain).any(axis=1))
        if not bias or not short.size:
            return plain, tops
        if target.label_trie(fmt) is not None:  # a chain is asked for whole calls: all rows, keep the short ones
            biased = target.label_logprobs(prompts, examples, fmt, bias=bias).reshape(plain.shape)[short]
        else:
            items = target.inputs(prompts, examples, fmt)
            sent = target.send(target.requests(target.shape(labels.token_ids, bias), [items[i] for i in short]))
            biased = np.stack([wire.label_scores(top, labels)[0] for top in sent])
        plain[short] = on_plain_scale(biased, plain[short])
        return plain, tops


class EchoTopK:
    """echo: `score`'s requests asking the top-`depth` per position; a row's top-k is what its words' lists share
    (each also lists its own echoed token)."""

    def collect(self, target: TopKTarget, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                depth: int) -> tuple[np.ndarray, Tops]:
        words = list(fmt.verbalizer.values())
        pairs = [(t + w, w) for t in target.texts(prompts, examples, fmt) for w in words]
        got = target.send(wire.echo_requests(target.shape(), pairs, lambda p: target.count_tokens(p[0]), top_k=depth))
        rows = [got[i: i + len(words)] for i in range(0, len(got), len(words))]
        scores = np.array([[lp for lp, _ in row] for row in rows], dtype=np.float64)
        return scores, [shared_entries([top for _, top in row]) for row in rows]


def shared_entries(tops: Sequence[dict[str, float]]) -> dict[str, float]:
    """The tokens every list holds (the first list's values): lists of one position that differ only by the token
    each request echoed there.

    >>> shared_entries([{" a": -0.1, " x": -5.0}, {" a": -0.1, " y": -6.0}])
    {' a': -0.1}
    """
    if len(tops) < 2:
        return dict(tops[0]) if tops else {}
    return {t: v for t, v in tops[0].items() if all(t in other for other in tops[1:])}


def on_plain_scale(biased: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Biased label log-probs (R, L) moved onto the unbiased scale: the bias shifts a row's labels by one constant,
    read off the labels found in both; a row with none keeps the biased scale (its differences are the same).

    >>> on_plain_scale(np.array([[-0.1, -1.1]]), np.array([[-3.0, np.nan]]))
    array([[-3., -4.]])
    """
    both = ~np.isnan(biased) & ~np.isnan(plain)
    gap = np.where(both, plain - biased, 0.0).sum(axis=1) / np.maximum(both.sum(axis=1), 1)
    return biased + gap[:, None]


_STRATEGIES: dict[ScoreMode, TopKStrategy] = {ScoreMode.TOP_LOGPROBS: ListTopK(), ScoreMode.PROMPT_EMBEDS: ListTopK(),
                                              ScoreMode.CHAT: ListTopK(), ScoreMode.ECHO: EchoTopK()}


def topk_strategy(mode: ScoreMode, backend_name: str) -> TopKStrategy:
    """The mode's strategy, or a `CapabilityError` naming the modes that return a top-k."""
    if mode not in _STRATEGIES:
        raise CapabilityError(f"backend {backend_name} returns no top-k log-probs in {mode.value} mode (its answers "
                              "are text); use --remote-mode chat, top_logprobs, echo or prompt_embeds")
    return _STRATEGIES[mode]
