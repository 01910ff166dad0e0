"""Which readout a run uses: the one with the best accuracy out of fold on the training pool, never test.

Each candidate is fitted on all folds but one and scored on the one left out (`StratifiedKFold`), so a readout
that only memorises its 64 training answers loses here to one that generalises. The floor is the best of ``raw``,
``bias`` (calibration) and, where the backend returns a top-k, ``residual`` out of fold (a tie goes to the simpler):
the residual readout is calibration plus a departure whose size is itself chosen held out, so it is calibration
wherever the lists add nothing. A richer readout replaces the floor only when it is better out of fold *beyond
noise*: an exact one-sided McNemar test on the examples the two classify differently, at `RICHER_ALPHA` (one or two
examples more out of 64 is a lucky fold, not a better readout: on SST-2 such picks lost 1-5 test points to
calibration). Among the richer readouts that pass, the most accurate out of fold wins. The
decision keeps its evidence: every candidate's out-of-fold accuracy, cross-entropy, per-fold accuracies and its
p-value against the floor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from bbtune.search.answers import Answers
from bbtune.search.readouts.estimators import Readout, ReadoutKind, make_readout
from bbtune.search.selection import mcnemar_p_value

DEFAULT_FOLDS = 4
RICHER_ALPHA = 0.1  # level of the paired test a readout richer than the floor must pass
FLOOR = (ReadoutKind.RAW, ReadoutKind.BIAS, ReadoutKind.RESIDUAL)


@dataclass(frozen=True)
class ReadoutScore:
    """One candidate's out-of-fold numbers on the training pool."""

    kind: str
    accuracy: float
    loss: float  # mean cross-entropy of the held-out examples
    fold_accuracies: tuple[float, ...]
    p_value: float = 1.0  # one-sided McNemar test against the floor out of fold (1.0 for the floor itself)


@dataclass(frozen=True)
class ReadoutChoice:
    """The chosen readout and the evidence: every candidate's out-of-fold score, in `ReadoutKind` order."""

    kind: str
    scores: tuple[ReadoutScore, ...]
    folds: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def score_of(self, kind: str) -> ReadoutScore:
        return next(s for s in self.scores if s.kind == kind)


def available(kinds: Sequence[ReadoutKind | str], has_topk: bool) -> list[ReadoutKind]:
    """The candidates a backend can feed, in order (top-k readouts need a backend that returns top-k lists)."""
    wanted = {ReadoutKind(k) for k in kinds}
    return [k for k in ReadoutKind if k in wanted and (has_topk or not k.needs_topk)]


def held_out_log_scores(kind: ReadoutKind, answers: Answers, y: np.ndarray, folds: int, seed: int
                        ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(B, L) class log-probs of every example from `kind` fitted on the other folds, and the held-out rows of
    each fold. Inside the folds a readout fits its settled form (`make_readout(quick=True)`: the logistic
    regression at C = 1 rather than C chosen by a CV of its own, 17 fits per fold instead of one)."""
    log_scores = np.empty((len(y), answers.labels.shape[1]))
    held = []
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        readout = make_readout(kind, quick=True).fit(answers.select(fit_rows), y[fit_rows])
        log_scores[held_rows] = readout.log_scores(answers.select(held_rows))
        held.append(held_rows)
    return log_scores, held


def out_of_fold(kind: ReadoutKind, answers: Answers, y: np.ndarray, folds: int, seed: int
                ) -> tuple[ReadoutScore, np.ndarray]:
    """`kind`'s accuracy and CE on each held-out fold, fitted on the others, and which examples it got right (the
    chosen one is refitted whole)."""
    log_scores, held = held_out_log_scores(kind, answers, y, folds, seed)
    accuracies = [float(np.mean(log_scores[rows].argmax(axis=1) == y[rows])) for rows in held]
    gold = np.maximum(log_scores[np.arange(len(y)), y], -50.0)  # a -inf (unseen class) costs 50 nats, not inf
    right = log_scores.argmax(axis=1) == y
    return ReadoutScore(kind.value, float(np.mean(right)), float(-gold.mean()), tuple(accuracies)), right


def choose_readout(answers: Answers, y: np.ndarray, kinds: Sequence[ReadoutKind | str] = tuple(ReadoutKind),
                   folds: int = DEFAULT_FOLDS, seed: int = 0) -> tuple[Readout, ReadoutChoice]:
    """The floor, or the most accurate richer candidate that beats it out of fold beyond noise (module docstring),
    refitted on all of `answers`.

    With fewer examples of some class than two folds need, there is nothing to hold out: the first candidate
    (the simplest) is used as it is."""
    y = np.asarray(y, dtype=int)
    candidates = available(kinds, answers.topk is not None)
    if not candidates:
        raise ValueError("choose_readout got no candidate the backend can feed")
    folds = min(folds, int(np.bincount(y, minlength=answers.labels.shape[1])[np.unique(y)].min()))
    if folds < 2:
        chosen = candidates[0]
        return (make_readout(chosen).fit(answers, y),
                ReadoutChoice(chosen.value, (), 0, "too few examples per class to hold any out: the simplest readout"))
    fitted = [out_of_fold(k, answers, y, folds, seed) for k in candidates]
    floors = [i for i, k in enumerate(candidates) if k in FLOOR] or [0]
    base = max(floors, key=lambda i: (fitted[i][0].accuracy, -i))
    scores = tuple(score if i == base else replace(score, p_value=_p_against(right, fitted[base][1]))
                   for i, (score, right) in enumerate(fitted))
    richer = [i for i in range(len(scores)) if i not in floors and scores[i].p_value <= RICHER_ALPHA
              and scores[i].accuracy > scores[base].accuracy]
    best = max(richer, key=lambda i: (scores[i].accuracy, -i)) if richer else base
    floor = scores[base]
    reason = (f"{scores[best].kind}: {scores[best].accuracy:.1%} out of fold ({folds} folds) against the floor "
              f"{floor.kind}'s {floor.accuracy:.1%}, McNemar p = {scores[best].p_value:.3f} <= {RICHER_ALPHA}"
              if best != base else
              f"{floor.kind} ({floor.accuracy:.1%} out of fold, {folds} folds): no richer readout beat it beyond noise "
              f"(McNemar p <= {RICHER_ALPHA})")
    return make_readout(candidates[best]).fit(answers, y), ReadoutChoice(scores[best].kind, scores, folds, reason)


def _p_against(right: np.ndarray, floor_right: np.ndarray) -> float:
    """One-sided exact McNemar p-value that a candidate is right more often than the floor (paired examples)."""
    return mcnemar_p_value(int(np.sum(right & ~floor_right)), int(np.sum(floor_right & ~right)))
