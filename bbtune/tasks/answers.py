"""Text answers to labels, and labels to scores: how a server that returns only text (no log-probs) still
gives the search a number per label (``--remote-mode text``).

**Answer -> label** (`AnswerRules`, rules a user can read and change): the answer and every label's words are
normalized alike (case folded, punctuation turned into spaces, whitespace collapsed; each rule can be turned
off), then the label whose word appears *first* in the answer, as a whole word, wins ("Great, not terrible"
is great). Two words starting at the same place: the longer wins ("very good" over "very"). A label's words are
its verbalizer word and any synonyms given for it. No word found: the answer is *unparsed* (None), counted and
reported like a missing label.

**Labels -> scores** (`answer_scores`): the n answers to one input become, per label, the log of its smoothed
share, ``log((count + a) / (n + a L))`` (L labels, ``a`` = `smoothing`, add-a as in Laplace's rule). The losses
see only these numbers. With n = 1 at temperature 0 a prompt's cross-entropy is a soft error rate: a right
answer costs ``-log((1 + a) / (1 + a L))``, a wrong one ``-log(a / (1 + a L))``; n > 1 sampled answers make it
smoother (the share of right answers moves in steps of 1/n). An input whose n answers are *all* unparsed gets
NaN for every label (nothing was said about it): the loss treats it as a missing gold label (a fixed high cost,
`bbtune.search.losses`), so the search never gains by making the model ramble.

    >>> rules = AnswerRules.build({"neg": " terrible", "pos": " great"}, {"pos": ("fine",)})
    >>> [rules.label(a) for a in ("Great!", "It was fine, not terrible.", "no idea")]
    ['pos', 'pos', None]
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from bbtune.constants import DEFAULT_SMOOTHING
from bbtune.errors import ConfigError


@dataclass(frozen=True)
class AnswerRules:
    """How an answer names a label: normalization switches, and per label the words that name it."""

    words: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # label -> its words (verbalizer + synonyms)
    fold_case: bool = True  # "Great" names great
    strip_punctuation: bool = True  # punctuation becomes a space: "so-so" is "so so"
    collapse_whitespace: bool = True  # runs of spaces and newlines are one space: "very\n good" is "very good"
    _owner: dict[str, str] = field(init=False, repr=False, compare=False)  # normalized word -> its label
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", {k: tuple(v) for k, v in self.words.items()})
        if not self.words:
            raise ConfigError("AnswerRules.words is empty; give every label at least one word")
        owner: dict[str, str] = {}
        for label, words in self.words.items():
            if not any(self.normalize(w) for w in words):
                raise ConfigError(f"label {label!r} has no word an answer could contain (got {list(words)}); "
                                  "give it a synonym with RemoteConfig.answer_synonyms LABEL=WORD")
            for w in filter(None, map(self.normalize, words)):
                if owner.setdefault(w, label) != label:
                    raise ConfigError(f"the word {w!r} names two labels ({owner[w]!r} and {label!r}); an answer "
                                      "containing it could not be mapped: give each label its own words")
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_regex", self._pattern(owner))

    @classmethod
    def build(cls, verbalizer: Mapping[str, str], synonyms: Mapping[str, Sequence[str]] | None = None,
              **switches: bool) -> "AnswerRules":
        """Rules from a verbalizer (label -> word) plus `synonyms` (label -> more words)."""
        synonyms = dict(synonyms or {})
        unknown = set(synonyms) - set(verbalizer)
        if unknown:
            raise ConfigError(f"synonyms for unknown label(s) {sorted(unknown)}; the labels are {list(verbalizer)}")
        words = {label: (word.strip(), *synonyms.get(label, ())) for label, word in verbalizer.items()}
        return cls(words, **switches)

    def normalize(self, text: str) -> str:
        if self.fold_case:
            text = text.casefold()
        if self.strip_punctuation:
            text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
        if self.collapse_whitespace:
            text = " ".join(text.split())
        return text

    @staticmethod
    def _pattern(owner: Mapping[str, str]) -> re.Pattern[str]:
        """One alternation of every word, longest first (so at one position the longer word wins), each
        bounded by non-word characters (so "great" is not found in "greatest")."""
        words = sorted(owner, key=lambda w: (-len(w), w))
        return re.compile("|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in words))

    def label(self, answer: str) -> str | None:
        """The label `answer` names first, or None (unparsed)."""
        found = self._regex.search(self.normalize(answer))
        return self._owner[found.group(0)] if found else None


def parse_synonyms(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``['positive=good|fine', 'negative=bad']`` (the command line's form) -> {label: words}."""
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        label, sep, words = item.partition("=")
        found = tuple(w for w in (w.strip() for w in words.split("|")) if w)
        if not sep or not label.strip() or not found:
            raise ConfigError(f"answer synonym {item!r} is not 'LABEL=word|word' (e.g. 'positive=good|fine')")
        out[label.strip()] = out.get(label.strip(), ()) + found
    return out


@dataclass(frozen=True)
class AnswerScores:
    """Scores (P, B, L) from answers, and how many answers named no label."""

    scores: np.ndarray
    answers: int
    unparsed: int


def answer_scores(answers: Sequence[Sequence[Sequence[str]]], labels: Sequence[str], rules: AnswerRules,
                  smoothing: float = DEFAULT_SMOOTHING) -> AnswerScores:
    """(P, B, L) log smoothed shares from P x B x n answers (see the module docstring).

    >>> rules = AnswerRules.build({"neg": "bad", "pos": "great"})
    >>> np.exp(answer_scores([[["great", "Great!"]]], ["neg", "pos"], rules).scores).round(3)  # (0+.5)/3, (2+.5)/3
    array([[[0.167, 0.833]]])
    """
    if smoothing <= 0:
        raise ConfigError(f"smoothing must be > 0 (a label no answer named would score log 0), got {smoothing}")
    index = {label: j for j, label in enumerate(labels)}
    P, B = len(answers), len(answers[0]) if answers else 0
    counts = np.zeros((P, B, len(labels)))
    n = np.zeros((P, B))
    unparsed = total = 0
    for p, row in enumerate(answers):
        for b, texts in enumerate(row):
            n[p, b] = len(texts)
            for text in texts:
                named = rules.label(text)
                total += 1
                if named is None:
                    unparsed += 1
                else:
                    counts[p, b, index[named]] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.log((counts + smoothing) / (n[..., None] + smoothing * len(labels)))
    scores[counts.sum(axis=-1) == 0] = np.nan  # nothing named: missing, not a uniform vote
    return AnswerScores(scores, total, unparsed)
