"""Scoring a fixed prompt on a set of examples (dev, test, transfer), in chunks so big sets fit memory."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bbtune.constants import EVAL_BATCH
from bbtune.backends.base import Backend
from bbtune.search.calibration import apply_bias, fit_label_bias
from bbtune.search.losses import correct, per_example_loss
from bbtune.search.answers import Answers
from bbtune.core.prompts import Prompt
from bbtune.tasks import Example, TaskFormat


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float  # cross-entropy over the label words
    n: int
    example_losses: tuple[float, ...] = field(default=(), repr=False, compare=False)  # per example, same order
    example_correct: tuple[bool, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_acc": self.accuracy, f"{prefix}_loss": self.loss, f"{prefix}_n": self.n}


def evaluate(backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat, chunk: int = EVAL_BATCH,
             label_bias: np.ndarray | None = None) -> Evaluation:
    """Accuracy and CE of one prompt on `examples` (with a calibration bias per label, if given);
    counts as len(examples)/chunk model calls."""
    return evaluation(score_examples(backend, prompt, examples, fmt, chunk), fmt.label_ids(examples), label_bias)


def fitted_bias(backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
    """The per-label bias of `prompt` fitted on `examples` (the training split), as BBT calibrates a candidate."""
    return fit_label_bias(score_examples(backend, prompt, examples, fmt)[0], fmt.label_ids(examples))


def score_examples(backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat,
                   chunk: int = EVAL_BATCH) -> np.ndarray:
    """(1, B, L) label scores of one prompt, in chunks of `chunk` examples (one model call each)."""
    if not examples:
        raise ValueError("evaluate() got no examples")
    return np.concatenate(
        [backend.score([prompt], examples[i : i + chunk], fmt) for i in range(0, len(examples), chunk)], axis=1
    )


def evaluation(scores: np.ndarray, labels: np.ndarray, label_bias: np.ndarray | None = None) -> Evaluation:
    """Accuracy and CE of (1, B, L) scores; one set of scores serves raw and calibrated numbers alike. A missing
    label score (NaN, from a remote top-k list) follows `bbtune.search.losses`' rule: an example whose gold label is
    missing counts wrong and costs `MISSING_LABEL_LOSS`."""
    scores = apply_bias(scores, label_bias)
    losses, right = per_example_loss(scores, labels)[0], correct(scores, labels)[0]
    return Evaluation(float(right.mean()), float(losses.mean()), scores.shape[1], tuple(map(float, losses)),
                      tuple(map(bool, right)))


def answers_on(backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat, k: int,
               chunk: int = EVAL_BATCH, lift: Sequence[str] = ()) -> Answers:
    """One prompt's label scores and top-`k` lists on `examples` (what a readout reads), in chunks of `chunk`
    examples (one model call each); `k` = 0 reads the label scores alone. `lift`: tokens read below the lists too
    (`Backend.score_lifted`)."""
    if not examples:
        raise ValueError("answers_on() got no examples")
    parts = []
    for i in range(0, len(examples), chunk):
        part = examples[i : i + chunk]
        if k:
            labels, tops = backend.score_topk([prompt], part, fmt, k)
            top = tops[0]
            if lift:
                top = top.with_lifted(lift, backend.score_lifted([prompt], part, fmt, lift, tops)[0])
            parts.append(Answers(labels[0], top))
        else:
            parts.append(Answers(backend.score([prompt], part, fmt)[0]))
    return Answers.concat(parts)
