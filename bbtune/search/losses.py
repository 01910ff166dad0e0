"""Losses over verbalizer log-probs, as in BBT: cross-entropy, hinge (margin) and negative accuracy.

Scores arrive as label log-probs under the full vocabulary; the losses renormalise them over the label words
(a softmax restricted to the verbalizer), so a prompt is rewarded for ranking the right label first, not for
raising all label words at once.

**Missing labels** (NaN: a server's top-k list did not hold the label word, see `bbtune.backends.wire`). A
missing label's log-prob is unknown but below the k-th listed value, so below every label that *is* listed.
The rule, the same for every loss:

- ranking (accuracy, argmax): a missing label ranks below every listed one, so an example is right when its
  gold label is listed and beats the other listed labels; one whose gold label is missing is wrong;
- cross-entropy and hinge: over the listed labels, and an example whose gold label is missing costs the fixed
  `MISSING_LABEL_LOSS` (10 nats, a probability of ~5e-5 for the gold label), worse than almost any scored
  example, so a search never gains by pushing labels out of the list (a bound would reward it).
"""
from __future__ import annotations

from enum import Enum

import numpy as np


MISSING_LABEL_LOSS = 10.0  # CE / hinge of an example whose gold label's score is missing (NaN)


class Loss(str, Enum):
    CE = "ce"
    HINGE = "hinge"
    NEG_ACC = "neg_acc"


def label_log_softmax(logp: np.ndarray) -> np.ndarray:
    """Renormalise (..., L) log-probs over the last axis."""
    top = logp.max(axis=-1, keepdims=True)
    return logp - (top + np.log(np.exp(logp - top).sum(axis=-1, keepdims=True)))


def per_prompt_loss(logp: np.ndarray, labels: np.ndarray, kind: Loss | str = Loss.CE, margin: float = 1.0) -> np.ndarray:
    """Mean loss of each prompt: `logp` is (P, B, L) with NaN for a missing label (see the module docstring),
    `labels` (B,) label indices; returns (P,).

    >>> per_prompt_loss(np.log([[[0.9, 0.1]]]), np.array([0]), "neg_acc")
    array([-1.])
    >>> per_prompt_loss(np.array([[[np.nan, -1.0]]]), np.array([0]))
    array([10.])
    """
    if Loss(kind) is Loss.NEG_ACC:
        return -accuracy(logp, labels)
    return per_example_loss(logp, labels, kind, margin).mean(axis=1)


def per_example_loss(logp: np.ndarray, labels: np.ndarray, kind: Loss | str = Loss.CE, margin: float = 1.0) -> np.ndarray:
    """(P, B) loss of every prompt on every example (CE or hinge; `neg_acc` is minus correctness)."""
    kind = Loss(kind)
    if kind is Loss.NEG_ACC:
        return -correct(logp, labels).astype(float)
    B = np.arange(labels.shape[0])
    listed = np.where(np.isnan(logp), -np.inf, logp)  # a missing label ranks below every listed one
    gold = listed[:, B, labels]
    with np.errstate(invalid="ignore"):
        if kind is Loss.CE:
            each = -label_log_softmax(listed)[:, B, labels]
        else:
            others = listed.copy()
            others[:, B, labels] = -np.inf
            each = np.maximum(0.0, margin - (gold - others.max(axis=-1)))
    return np.where(np.isneginf(gold), MISSING_LABEL_LOSS, each)


def accuracy(logp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(P,) accuracy of each prompt; an example whose gold label is missing (NaN) is wrong."""
    return correct(logp, labels).mean(axis=1)


def correct(logp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(P, B) whether each prompt ranks each example's gold label first (a missing gold label is wrong)."""
    listed = np.where(np.isnan(logp), -np.inf, logp)
    gold = listed[:, np.arange(labels.shape[0]), labels]
    return (listed.argmax(axis=-1) == labels[None]) & ~np.isneginf(gold)


def missing_rate(logp: np.ndarray) -> float:
    """Share of label scores that are missing (NaN)."""
    return float(np.isnan(logp).mean()) if logp.size else 0.0
