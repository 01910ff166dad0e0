"""Losses over verbalizer log-probs, as in BBT: cross-entropy, hinge (margin) and negative accuracy.

Scores arrive as label log-probs under the full vocabulary; the losses renormalise them over the label words
(a softmax restricted to the verbalizer), so a prompt is rewarded for ranking the right label first, not for
raising all label words at once.
"""
from __future__ import annotations

from enum import Enum

import numpy as np


class Loss(str, Enum):
    CE = "ce"
    HINGE = "hinge"
    NEG_ACC = "neg_acc"


def label_log_softmax(logp: np.ndarray) -> np.ndarray:
    """Renormalise (..., L) log-probs over the last axis."""
    top = logp.max(axis=-1, keepdims=True)
    return logp - (top + np.log(np.exp(logp - top).sum(axis=-1, keepdims=True)))


def per_prompt_loss(logp: np.ndarray, labels: np.ndarray, kind: Loss | str = Loss.CE, margin: float = 1.0) -> np.ndarray:
    """Mean loss of each prompt: `logp` is (P, B, L), `labels` (B,) label indices; returns (P,).

    >>> per_prompt_loss(np.log([[[0.9, 0.1]]]), np.array([0]), "neg_acc")
    array([-1.])
    """
    kind = Loss(kind)
    B = np.arange(labels.shape[0])
    if kind is Loss.CE:
        return -label_log_softmax(logp)[:, B, labels].mean(axis=1)
    if kind is Loss.NEG_ACC:
        return -(logp.argmax(axis=-1) == labels[None]).mean(axis=1)
    gold = logp[:, B, labels]
    others = logp.copy()
    others[:, B, labels] = -np.inf
    return np.maximum(0.0, margin - (gold - others.max(axis=-1))).mean(axis=1)


def accuracy(logp: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(P,) accuracy of each prompt."""
    return (logp.argmax(axis=-1) == labels[None]).mean(axis=1)
