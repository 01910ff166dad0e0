"""Which evaluated prompt a run returns: one rule, used by BBT's tuner and the gradient baselines alike.

Every point scored on dev gets a key (lower wins). With 16 examples per class a dev accuracy moves in steps of
1/32, so the default breaks its ties by dev cross-entropy; the loss rules trade that coarseness for noise.

    >>> from bbtune.search.evaluate import Evaluation
    >>> selection_key(Selection.DEV_ACC, 0.4, 32, Evaluation(0.75, 0.5, 32)) < selection_key(
    ...     Selection.DEV_ACC, 0.3, 32, Evaluation(0.70, 0.4, 32))
    True
"""
from __future__ import annotations

from enum import Enum

from bbtune.search.evaluate import Evaluation


class Selection(str, Enum):
    """How the returned prompt is chosen among the points evaluated on dev (lower key wins)."""

    DEV_ACC = "dev_acc"  # dev accuracy, ties broken by dev cross-entropy
    DEV_LOSS = "dev_loss"  # dev cross-entropy
    TRAIN_DEV_LOSS = "train_dev_loss"  # cross-entropy on train and dev together (more sentences, less noise)


def selection_key(rule: Selection, train_ce: float, n_train: int, dev: Evaluation) -> tuple[float, ...]:
    """A dev-evaluated point's key under `rule` (lower wins), from its training CE and its dev evaluation."""
    if rule is Selection.DEV_ACC:
        return (-dev.accuracy, dev.loss)
    if rule is Selection.DEV_LOSS:
        return (dev.loss,)
    return ((train_ce * n_train + dev.loss * dev.n) / (n_train + dev.n),)
