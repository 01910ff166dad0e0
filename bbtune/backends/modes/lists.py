"""`ListStrategy`: the modes that read label words from the top-k list of the next token (top_logprobs,
prompt_embeds, chat).

A label word of several tokens is *chained*: per step of the words' trie (`bbtune.backends.labeltrie`), each row's
input extended by the step's prefix, the next tokens read from its list (teacher forcing: every step's requests
go out at once). ``logit_bias`` goes on the first step's tokens only: that step's shift is common to every label.

The top-k at the answer position (`collect_topk`) always comes from requests without a bias: the same bodies
`score` sends unbiased (one cache); with a bias on, `score`'s biased requests follow only for the rows whose
unbiased list lacks a label, their scores moved onto the unbiased scale (`on_plain_scale`).

Tokens below the list (`lift`) are read the same way: the same bias on up to k - 1 of them and on an *anchor*, a
token of the row's unbiased list. The bias shifts them all by one constant, and the anchor is the most likely of
them, so it is always listed and its known value puts the others back on the unbiased scale.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Mapping, Sequence

import numpy as np

from bbtune.backends import wire
from bbtune.backends.encoding import single_id
from bbtune.backends.findings import Settings
from bbtune.backends.labeltrie import LabelTrie
from bbtune.backends.modes.base import ProbeContext, Scorer, ScoreStrategy, Tops, bias_map
from bbtune.backends.wire import LabelKeys, Request
from bbtune.core.prompts import Prompt
from bbtune.core.topk import AnswerTopK
from bbtune.errors import CapabilityError, ConfigError
from bbtune.tasks import Example, TaskFormat, verbalizer_token_ids


class ListStrategy(ScoreStrategy):
    """Label scores read from a top-k list; subclasses build the requests for a row's input."""

    missing_hint: str = ""  # the mode's own fix when the probe finds too many labels missing

    @abstractmethod
    def requests(self, scorer: Scorer, settings: Settings, items: Sequence[Any], size: int | None = None,
                 bias: Mapping[int, float] | None = None) -> list[Request]:
        """Top-k requests for rows' inputs, `size` per request (default the settings' list size)."""

    def inputs(self, scorer: Scorer, prompts: Sequence[Prompt], examples: Sequence[Example],
               fmt: TaskFormat) -> list[Any]:
        """What goes over the wire for each row (texts here; input embeddings for prompt_embeds)."""
        return self.texts(scorer.name, prompts, examples, fmt)

    @abstractmethod
    def extend(self, scorer: Scorer, item: Any, prefix: Sequence[int], fmt: TaskFormat) -> Any:
        """A row's input followed by a label word's first tokens `prefix` (chained requests)."""

    # ------------------------------------------------------------------ labels

    def label_trie(self, scorer: Scorer, fmt: TaskFormat) -> LabelTrie | None:
        """The label words' token trie where some word has several tokens (chained requests); None where every word
        is one token or there is no local tokenizer to tell."""
        if scorer.tokenizer is None:
            spaced = [w for w in fmt.verbalizer.values() if len(w.split()) > 1]
            if spaced:
                raise ConfigError(
                    f"label words {spaced} are several words, so several tokens, and RemoteConfig.mode="
                    f"{self.mode.value} reads one token per list; set RemoteConfig.local_model to the same model "
                    "(its tokenizer splits the words, then each token is read by a chained request) or use "
                    "RemoteConfig.mode=echo (exact, where the server supports echo)")
            return None
        trie = LabelTrie.build(scorer.reference().encoder.label_seqs(fmt))
        return None if trie.single else self.chain(trie, fmt)

    def chain(self, trie: LabelTrie, fmt: TaskFormat) -> LabelTrie:
        """The trie to chain requests along (chat refuses)."""
        return trie

    def label_keys(self, scorer: Scorer, fmt: TaskFormat) -> LabelKeys:
        """How the labels appear in a reply: the word's token (chained: what a first request's list must hold)."""
        words, tok = list(fmt.verbalizer.values()), scorer.tokenizer
        trie = self.label_trie(scorer, fmt)
        if tok is None:
            return LabelKeys.build(words, None, None)
        if trie is not None:
            first = trie.steps[0].next_ids
            return LabelKeys.build([tok.decode([i]) for i in first], first, None)
        ids = verbalizer_token_ids(tok, fmt)
        return LabelKeys.build(words, ids, [tok.decode([i]) for i in ids])

    # ------------------------------------------------------------------ scoring

    def label_logprobs(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                       examples: Sequence[Example], fmt: TaskFormat, *, bias: float = 0.0, salt: str = "",
                       strict: bool = False, answer_tops: Tops | None = None) -> np.ndarray:
        """With `strict`, also a label with any spelling unlisted is NaN; `answer_tops`, where given, gets each
        row's list at the answer position (chained words: the first step's)."""
        if self.label_trie(scorer, fmt) is not None:
            return self.chained(scorer, settings, prompts, examples, fmt, bias=bias, salt=salt, strict=strict,
                                answer_tops=answer_tops)
        labels = self.label_keys(scorer, fmt)
        items = self.inputs(scorer, prompts, examples, fmt)
        tops = scorer.send(self.requests(scorer, settings, items, bias=bias_map(labels.token_ids, bias)), salt=salt)
        if answer_tops is not None:
            answer_tops.extend(tops)
        return np.stack([wire.label_scores(top, labels, strict)[0] for top in tops])

    def chained(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt], examples: Sequence[Example],
                fmt: TaskFormat, *, bias: float, salt: str, strict: bool, answer_tops: Tops | None) -> np.ndarray:
        """(P * B, L) scores of multi-token words, one set of requests per trie step, all sent at once."""
        trie, tok = self.label_trie(scorer, fmt), scorer.tokenizer
        assert trie is not None and tok is not None, "chained only where a tokenizer found multi-token words"
        items = self.inputs(scorer, prompts, examples, fmt)
        requests: list[Request] = []
        keys = []
        for i, step in enumerate(trie.steps):
            extended = [self.extend(scorer, item, step.prefix, fmt) for item in items] if step.prefix else items
            requests += self.requests(scorer, settings, extended, bias=bias_map(step.next_ids, bias) if i == 0 else None)
            texts = [tok.decode([t]) for t in step.next_ids]
            keys.append(LabelKeys.build(texts, step.next_ids, texts))
        replies = scorer.send(requests, salt=salt)
        if answer_tops is not None:  # the first step (no prefix) reads the answer position itself
            answer_tops.extend(replies[: len(items)])
        per_step, start = [], 0
        for key in keys:
            tops, start = replies[start: start + len(items)], start + len(items)
            per_step.append(np.stack([wire.label_scores(top, key, strict)[0] for top in tops]))
        return trie.combine(per_step)

    def collect_topk(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                     examples: Sequence[Example], fmt: TaskFormat, depth: int) -> tuple[np.ndarray, Tops]:
        tops: Tops = []
        labels = self.label_keys(scorer, fmt)
        bias = settings.logit_bias if labels.token_ids else 0.0  # no ids to bias: `score` sends no bias either
        plain = self.label_logprobs(scorer, settings, prompts, examples, fmt, strict=bool(bias), answer_tops=tops)
        plain = plain.reshape(len(tops), -1)
        short = np.flatnonzero(np.isnan(plain).any(axis=1))
        if not bias or not short.size:
            return plain, tops
        if self.label_trie(scorer, fmt) is not None:  # a chain is asked for whole calls: all rows, keep the short
            biased = self.label_logprobs(scorer, settings, prompts, examples, fmt, bias=bias)
            biased = biased.reshape(plain.shape)[short]
        else:
            items = self.inputs(scorer, prompts, examples, fmt)
            sent = scorer.send(self.requests(scorer, settings, [items[i] for i in short],
                                             bias=bias_map(labels.token_ids, bias)))
            biased = np.stack([wire.label_scores(top, labels)[0] for top in sent])
        plain[short] = on_plain_scale(biased, plain[short])
        return plain, tops

    def lift(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt], examples: Sequence[Example],
             fmt: TaskFormat, tokens: Sequence[str], tops: Sequence[AnswerTopK]) -> np.ndarray:
        tok, bias = scorer.tokenizer, settings.logit_bias
        if tok is None:
            raise CapabilityError("reading tokens below the top-k list needs their ids: set RemoteConfig.local_model "
                                  "to the served model (its tokenizer), or TuneConfig.readout_lift=0")
        if not bias:
            raise CapabilityError("reading tokens below the top-k list needs logit_bias, which is off here (the probe "
                                  "found the server does not honour it, RemoteConfig.logit_bias=off, or probe off "
                                  "with logit_bias=auto: give it a number); or set TuneConfig.readout_lift=0")
        ids = {j: i for j, text in enumerate(tokens) if (i := single_id(tok, text)) is not None}
        liftable, per_request = list(ids), lifted_per_request(settings.top_k)
        chunks = [liftable[i: i + per_request] for i in range(0, len(liftable), per_request)]
        anchors = [row_anchor(tok, t, v) for top in tops for t, v in zip(top.tokens, top.logprobs)]
        groups = sharing_an_anchor(anchors)
        items = self.inputs(scorer, prompts, examples, fmt)
        requests, plan = [], []
        for chunk in chunks:
            for anchor_id, rows in groups.items():
                biased = bias_map([ids[j] for j in chunk] + [anchor_id], bias)
                requests += self.requests(scorer, settings, [items[r] for r in rows], bias=biased)
                plan += [(r, chunk) for r in rows]
        out = np.full((len(anchors), len(tokens)), np.nan)
        for (r, chunk), top in zip(plan, scorer.send(requests)):
            anchor_id, plain = anchors[r]  # type: ignore[misc]  # rows without an anchor were not sent
            shifted = top.get(tok.decode([anchor_id]))
            for j in chunk if shifted is not None else ():
                if tokens[j] in top:  # unlisted: the server did not apply the bias (NaN, never a guess)
                    out[r, j] = top[tokens[j]] - shifted + plain
        return out

    # ------------------------------------------------------------------ the probe and the price

    def probe_requests(self, scorer: Scorer, settings: Settings, texts: Sequence[str], size: int) -> list[Request]:
        return self.requests(scorer, settings, [self.probe_item(scorer, t) for t in texts], size)

    def probe_item(self, scorer: Scorer, text: str) -> Any:
        return text

    def cross_check(self, ctx: ProbeContext, first: Any) -> None:
        check_distribution(first, ctx)

    def sends(self, topk: bool) -> int:
        """A top-k call may send `score`'s biased requests beside its unbiased ones where a bias may be on ('auto'
        is the probe's to turn on)."""
        cfg = self.config
        biased = cfg.logit_bias != "off" and (cfg.probe or cfg.logit_bias != "auto")
        return 2 if topk and biased else 1

    def priced_groups(self, rows: Sequence[int], label_seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """Each text once per step of the words' trie (once for single-token words), extended by the step's prefix;
        each step's requests are cut apart."""
        return [[n + len(step.prefix) for n in rows] for step in LabelTrie.build(label_seqs).steps]


def check_distribution(top: Mapping[str, float], ctx: ProbeContext) -> None:
    """A top-k list is a distribution: sorted, probabilities summing to at most 1; notes a shorter list."""
    values, tol, report = list(top.values()), ctx.tol, ctx.report
    if any(b > a + tol for a, b in zip(values, values[1:])):
        raise CapabilityError(f"the server's top-k list is not sorted by log-prob ({values[:5]}); "
                              "its logprobs cannot be trusted")
    mass = sum(math.exp(v) for v in values)
    if mass > 1 + tol:
        raise CapabilityError(f"the server's top-k probabilities sum to {mass:.3f} > 1: they are not log-probs "
                              "(raw logits?); its scores cannot be trusted")
    report.top_k_returned = len(values)
    if len(values) < report.top_k:
        report.notes.append(f"asked for {report.top_k} logprobs, the server returned {len(values)}; "
                            "labels outside them are missing")
    report.checks.append("top-k is a sorted distribution")


def on_plain_scale(biased: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Biased label log-probs (R, L) moved onto the unbiased scale: the bias shifts a row's labels by one constant,
    read off the labels found in both; a row with none keeps the biased scale (its differences are the same).

    >>> on_plain_scale(np.array([[-0.1, -1.1]]), np.array([[-3.0, np.nan]]))
    array([[-3., -4.]])
    """
    both = ~np.isnan(biased) & ~np.isnan(plain)
    gap = np.where(both, plain - biased, 0.0).sum(axis=1) / np.maximum(both.sum(axis=1), 1)
    return biased + gap[:, None]


def lifted_per_request(k: int) -> int:
    """Tokens one biased request lifts into a top-`k` list: all but the anchor's place."""
    return max(1, k - 1)


def lift_rounds(n_tokens: int, k: int) -> int:
    """Biased requests per input that read `n_tokens` below a top-`k` list (`ListStrategy.lift`)."""
    return math.ceil(n_tokens / lifted_per_request(k))


def row_anchor(tokenizer: Any, tokens: Sequence[str], values: Sequence[float]) -> tuple[int, float] | None:
    """A row's anchor for `ListStrategy.lift`: its best listed token that is one token id, and its value."""
    return next(((i, v) for t, v in zip(tokens, values) if (i := single_id(tokenizer, t)) is not None), None)


def sharing_an_anchor(anchors: Sequence[tuple[int, float] | None]) -> dict[int, list[int]]:
    """Anchor id -> the rows it anchors: rows that share one can share a request (a list of prompts)."""
    groups: dict[int, list[int]] = {}
    for r, anchor in enumerate(anchors):
        if anchor is not None:
            groups.setdefault(anchor[0], []).append(r)
    return groups
