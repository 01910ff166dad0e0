"""Which readout a run uses: the one with the best accuracy out of fold on the training pool, never test.

Each candidate is fitted on all folds but one and scored on the one left out (`StratifiedKFold`), so a readout
that only memorises its 64 training answers loses here to one that generalises. Ties go to the simpler readout
(`ReadoutKind`'s order), so ``raw`` and ``bias`` (calibration) are the floor: a richer readout is chosen only
when it is strictly better out of fold. The decision keeps its evidence: every candidate's out-of-fold accuracy,
cross-entropy and per-fold accuracies.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from bbtune.search.readouts.answers import Answers
from bbtune.search.readouts.estimators import Readout, ReadoutKind, make_readout

DEFAULT_FOLDS = 4


@dataclass(frozen=True)
class ReadoutScore:
    """One candidate's out-of-fold numbers on the training pool."""

    kind: str
    accuracy: float
    loss: float  # mean cross-entropy of the held-out examples
    fold_accuracies: tuple[float, ...]


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


def out_of_fold(kind: ReadoutKind, answers: Answers, y: np.ndarray, folds: int, seed: int) -> ReadoutScore:
    """`kind`'s accuracy and CE on each held-out fold, fitted on the others."""
    log_scores = np.empty((len(y), answers.labels.shape[1]))
    accuracies = []
    for fit_rows, held_rows in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        readout = make_readout(kind).fit(answers.select(fit_rows), y[fit_rows])
        log_scores[held_rows] = readout.log_scores(answers.select(held_rows))
        accuracies.append(float(np.mean(log_scores[held_rows].argmax(axis=1) == y[held_rows])))
    gold = np.maximum(log_scores[np.arange(len(y)), y], -50.0)  # a -inf (unseen class) costs 50 nats, not inf
    return ReadoutScore(kind.value, float(np.mean(log_scores.argmax(axis=1) == y)), float(-gold.mean()),
                        tuple(accuracies))


def choose_readout(answers: Answers, y: np.ndarray, kinds: Sequence[ReadoutKind | str] = tuple(ReadoutKind),
                   folds: int = DEFAULT_FOLDS, seed: int = 0) -> tuple[Readout, ReadoutChoice]:
    """The candidate with the best out-of-fold accuracy (ties: the simpler), refitted on all of `answers`.

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
    scores = tuple(out_of_fold(k, answers, y, folds, seed) for k in candidates)
    best = max(range(len(scores)), key=lambda i: (scores[i].accuracy, -i))
    floor = scores[0]
    reason = (f"{scores[best].kind}: {scores[best].accuracy:.1%} out of fold ({folds} folds) against "
              f"{floor.kind}'s {floor.accuracy:.1%}" if best else
              f"{floor.kind}: no richer readout was better out of fold ({folds} folds)")
    return make_readout(candidates[best]).fit(answers, y), ReadoutChoice(scores[best].kind, scores, folds, reason)
