"""Verbalizer search: choose each label's word from candidates by calibrated train accuracy.

Why: the label word is a lever next to the prompt: a model may separate the classes better through
" wonderful" than through " positive". The search is cheap because one score call can cover every candidate:
a "wide" `TaskFormat` has the task's template and placement and one pseudo-label per candidate word, and a
backend scores each word's log-prob under the full vocabulary, which does not depend on the other words. So it
works through any backend, local or remote (in a remote *chat* mode the instruction names the answer words,
so there the wide format does change the input; prefer completions or prompt_embeds for a search).

Words that cannot be scored are reported, never silently dropped (`CandidateScores.skipped`): a word that is
not one token, a second spelling of an already listed token, a word listed for two labels, and a word a remote
top-k reply leaves out (NaN) on more than `max_missing` of the examples, since its accuracy would then measure
the server's list length and not the word.

Caution: with 16 examples per class the search overfits. On SST-2 with SmolLM2-135M (seed 13, full test,
calibrated) the preset's " negative"/" positive" scored 79.6%, the pair best on train (" stupid"/" wonderful")
67.4%, no better than the mean of all 272 pairs (67.4%), and an ensemble of all words
(`CandidateScores.ensemble`) 79.5%. So nothing turns this search on by default; `benchmarks/studies/verbalizers/`
measures it.

    >>> scores = candidate_scores(backend, MANUAL_PROMPT, task.train, task.format, PRESET_CANDIDATES["sentiment"])  # doctest: +SKIP
    >>> best = rank_verbalizers(scores, task.format.label_ids(task.train))[0]  # doctest: +SKIP
    >>> best.verbalizer, best.accuracy  # doctest: +SKIP
    ({'negative': ' awful', 'positive': ' great'}, 0.84)
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from scipy.special import logsumexp

from bbtune.backends.base import Backend
from bbtune.search.calibration import DEFAULT_L2, fit_label_bias
from bbtune.errors import VerbalizerError
from bbtune.search.evaluate import evaluation
from bbtune.core.prompts import Prompt
from bbtune.tasks import Example, TaskFormat, multi_token_message

DEFAULT_MAX_MISSING = 0.05  # share of examples a word may be missing from a top-k reply and still compete
DEFAULT_PER_LABEL = 4  # words per label kept for the combinations: 4 labels x 4 words = 256 fits


_SENTIMENT: dict[str, tuple[str, ...]] = {
    "negative": (" negative", " terrible", " bad", " awful", " horrible", " boring", " poor", " worst",
                 " disappointing", " stupid", " dull", " weak", " ugly", " waste", " annoying"),
    "positive": (" positive", " great", " good", " excellent", " wonderful", " amazing", " fantastic", " best",
                 " brilliant", " perfect", " beautiful", " fun", " enjoyable", " superb", " nice"),
}
_TOPIC: dict[str, tuple[str, ...]] = {
    "world": (" politics", " world", " international", " government", " war", " election", " news", " global"),
    "sports": (" sports", " sport", " football", " baseball", " soccer", " game", " team", " athletics"),
    "business": (" business", " economy", " finance", " markets", " money", " companies", " stocks", " trade"),
    "science": (" technology", " science", " tech", " computers", " internet", " research", " software", " space"),
}
# Candidates per preset (aliases as in `tasks.PRESETS`); each list holds the preset's own word, so the preset's
# verbalizer is always one of the combinations searched and can be compared on the same scores.
PRESET_CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "sentiment": _SENTIMENT, "sst2": _SENTIMENT, "sentiment-bbt": _SENTIMENT, "sentiment-chat": _SENTIMENT, "topic": _TOPIC, "agnews": _TOPIC,
}


@dataclass(frozen=True)
class CandidateScores:
    """Log-probs of every usable candidate word on a set of examples.

    `logp` is (n_examples, n_words) with column j for `words[j]`, a candidate for task label `label_of[j]`;
    NaN where a remote top-k reply left the word out. `skipped` maps each word not scored to the reason.
    """

    labels: tuple[str, ...]  # the task's labels, in the order of `fmt.label_ids`
    words: tuple[str, ...]
    label_of: tuple[str, ...]
    logp: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def kept(self) -> dict[str, tuple[str, ...]]:
        """label -> its usable words, in candidate order (pass it back as candidates to score another split)."""
        return {lab: tuple(w for w, owner in zip(self.words, self.label_of) if owner == lab) for lab in self.labels}

    def columns(self, verbalizer: Mapping[str, str]) -> np.ndarray:
        """(n_examples, n_labels) scores of one verbalizer (label -> word), labels in task order."""
        missing = [lab for lab in self.labels if verbalizer.get(lab) not in self.words]
        if missing:
            raise VerbalizerError(f"no scores for the word of label(s) {missing} in {dict(verbalizer)}; "
                                  f"scored words: {list(self.words)}")
        return self.logp[:, [self.words.index(verbalizer[lab]) for lab in self.labels]]

    def ensemble(self) -> np.ndarray:
        """(n_examples, n_labels): logsumexp over each label's words, i.e. the log-prob of saying any of them.
        A missing (NaN) word counts as probability zero; a label with all its words missing stays NaN."""
        out = np.full((self.logp.shape[0], len(self.labels)), np.nan)
        for i, words in enumerate(self.kept.values()):
            cols = self.logp[:, [self.words.index(w) for w in words]]
            total = logsumexp(np.where(np.isnan(cols), -np.inf, cols), axis=1)
            out[:, i] = np.where(np.isfinite(total), total, np.nan)
        return out


class RankedVerbalizer(NamedTuple):
    """One combination of words with its train accuracy and cross-entropy after per-label bias calibration."""

    verbalizer: dict[str, str]
    accuracy: float
    loss: float


def candidate_scores(backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat,
                     candidates: Mapping[str, Sequence[str]], max_missing: float = DEFAULT_MAX_MISSING) -> CandidateScores:
    """Score every usable candidate word with ONE `backend.score` call (a wide format, one pseudo-label per word).

    Raises `VerbalizerError` for a candidate label the task lacks, a task label without candidates, or a label
    left with no usable word (the message lists the reasons its words were skipped).
    """
    if not 0.0 <= max_missing <= 1.0:
        raise ValueError(f"max_missing must be a share in [0, 1], got {max_missing}")
    _check_labels(fmt, candidates)
    tokenizer = backend.vocabulary().tokenizer
    words, owners, skipped = _single_tokens(tokenizer, fmt.labels, candidates)
    _require_each_label(fmt.labels, owners, candidates, skipped)
    wide = TaskFormat(fmt.template, {w: w for w in words}, fmt.placement)
    logp = backend.score([prompt], examples, wide)[0]
    missing = np.isnan(logp).mean(axis=0)
    usable = missing <= max_missing
    for j in np.flatnonzero(~usable):
        skipped[words[j]] = f"missing from top-k in {100 * missing[j]:.0f}% of examples"
    owners = [o for o, ok in zip(owners, usable) if ok]
    _require_each_label(fmt.labels, owners, candidates, skipped)
    return CandidateScores(fmt.labels, tuple(w for w, ok in zip(words, usable) if ok), tuple(owners),
                           logp[:, usable], skipped)


def rank_verbalizers(scores: CandidateScores, labels: np.ndarray, *, per_label: int | None = DEFAULT_PER_LABEL,
                     l2: float = DEFAULT_L2) -> list[RankedVerbalizer]:
    """Every combination of one word per label, best first: calibrated accuracy on `labels` (gold label indices
    of the scored examples, as `fmt.label_ids` gives them), ties broken by calibrated cross-entropy.

    Each combination gets its own bias, fitted on the same examples (`fit_label_bias`), since a word's
    constant popularity is what calibration removes. Only the `per_label` words per label with the best
    discriminative score enter (None: all), keeping the product small: score(w) = mean log p(w) on the
    label's examples - mean log p(w) on all examples, i.e. how much more the word is said when it is right.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (scores.logp.shape[0],):
        raise ValueError(f"labels has shape {labels.shape}, expected ({scores.logp.shape[0]},) for the scored examples")
    if per_label is not None and per_label < 1:
        raise ValueError(f"per_label must be >= 1 or None, got {per_label}")
    shortlist = [_shortlist(scores, labels, i, per_label) for i in range(len(scores.labels))]
    ranked = []
    for combo in itertools.product(*shortlist):
        if len(set(combo)) < len(combo):
            continue
        verbalizer = dict(zip(scores.labels, combo))
        logp = scores.columns(verbalizer)
        ev = evaluation(logp[None], labels, fit_label_bias(logp, labels, l2))
        ranked.append(RankedVerbalizer(verbalizer, ev.accuracy, ev.loss))
    return sorted(ranked, key=lambda r: (-r.accuracy, r.loss))


def _shortlist(scores: CandidateScores, labels: np.ndarray, i: int, per_label: int | None) -> list[str]:
    """Label i's words by discriminative score, best first, at most `per_label` of them."""
    label = scores.labels[i]
    cols = [j for j, owner in enumerate(scores.label_of) if owner == label]
    own = scores.logp[labels == i][:, cols]
    if own.shape[0] == 0:
        return [scores.words[j] for j in cols][:per_label]  # no example of this label: nothing to rank by
    gain = _nanmean(own) - _nanmean(scores.logp[:, cols])
    order = np.argsort(-np.nan_to_num(gain, nan=-np.inf), kind="stable")  # a word never listed ranks last
    return [scores.words[cols[k]] for k in order[:per_label]]


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Column means over the listed (non-NaN) rows; NaN for a column with none (without numpy's warning)."""
    n = (~np.isnan(x)).sum(axis=0)
    return np.where(n > 0, np.nansum(x, axis=0) / np.maximum(n, 1), np.nan)


def _check_labels(fmt: TaskFormat, candidates: Mapping[str, Sequence[str]]) -> None:
    unknown = [lab for lab in candidates if lab not in fmt.labels]
    if unknown:
        raise VerbalizerError(f"candidate label(s) {unknown} are not labels of the task; its labels are "
                              f"{list(fmt.labels)}")
    empty = [lab for lab in fmt.labels if not candidates.get(lab)]
    if empty:
        raise VerbalizerError(f"label(s) {empty} have no candidate words; give each label at least one, "
                              "e.g. {'positive': [' great', ' good']}")


def _single_tokens(tokenizer: Any, labels: Sequence[str], candidates: Mapping[str, Sequence[str]]
                   ) -> tuple[list[str], list[str], dict[str, str]]:
    """(words, their labels, skipped): the candidates that are one distinct token, in order."""
    owners_of: dict[str, set[str]] = {}
    for lab in labels:
        for w in candidates[lab]:
            owners_of.setdefault(w, set()).add(lab)
    words: list[str] = []
    owners: list[str] = []
    skipped: dict[str, str] = {}
    token_word: dict[int, str] = {}
    for lab in labels:
        for w in dict.fromkeys(candidates[lab]):  # the same word twice under one label is one candidate
            if len(owners_of[w]) > 1:
                skipped[w] = f"listed for labels {sorted(owners_of[w])}; a word can stand for one label only"
                continue
            pieces = tokenizer.encode(w, add_special_tokens=False)
            if len(pieces) != 1:
                skipped[w] = multi_token_message(tokenizer, lab, w, pieces)
            elif pieces[0] in token_word:
                other = token_word[pieces[0]]
                skipped[w] = f"same token as {other!r} (label {owners[words.index(other)]!r}), scored once"
            else:
                token_word[pieces[0]] = w
                words.append(w)
                owners.append(lab)
    return words, owners, skipped


def _require_each_label(labels: Sequence[str], owners: Sequence[str], candidates: Mapping[str, Sequence[str]],
                        skipped: Mapping[str, str]) -> None:
    for lab in labels:
        if lab not in owners:
            reasons = "; ".join(f"{w!r}: {skipped[w]}" for w in dict.fromkeys(candidates[lab]) if w in skipped)
            raise VerbalizerError(f"label {lab!r} has no usable candidate word left ({reasons}); "
                                  "add single-token words the model lists, e.g. common words with a leading space")
